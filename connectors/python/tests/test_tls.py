"""TLS from Python: a client, and the kvtier:// filesystem, that trust the node's CA, and
that present their own certificate where the node requires one (mTLS), against a real
`kvtier serve` whose certificates openssl makes for the test."""

import pathlib
import subprocess

import fsspec
import pytest

import kvtier

NS = "acme/ckpt"


class Pki:
    """A test CA (openssl) that issues certificates with the given subjectAltNames."""

    def __init__(self, root: pathlib.Path, name: str = "ca"):
        self.root = root
        self.name = name
        root.mkdir(exist_ok=True)
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=kvtier test {name}",
        )
        self.ca = root / f"{name}.pem"

    def _openssl(self, *args):
        subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True)

    def issue(self, cn: str, sans: str):
        """A certificate and key for `cn`, with `sans` (e.g. "IP:127.0.0.1,DNS:localhost")."""
        stem = f"{self.name}-{cn}"
        self._openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{stem}.key",
            "-out",
            f"{stem}.csr",
            "-subj",
            f"/CN={cn}",
        )
        (self.root / f"{stem}.ext").write_text(f"subjectAltName={sans}\n")
        self._openssl(
            "x509",
            "-req",
            "-in",
            f"{stem}.csr",
            "-CA",
            f"{self.name}.pem",
            "-CAkey",
            f"{self.name}.key",
            "-CAcreateserial",
            "-out",
            f"{stem}.pem",
            "-days",
            "2",
            "-extfile",
            f"{stem}.ext",
        )
        return str(self.root / f"{stem}.pem"), str(self.root / f"{stem}.key")


def tls_node(make_server, pki: Pki, require_client_cert: bool):
    cert, key = pki.issue("node", "IP:127.0.0.1,DNS:localhost")
    return make_server(
        f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki.ca}"\n'
        f"require_client_cert = {str(require_client_cert).lower()}\n"
    )


def test_a_client_that_trusts_the_ca_speaks_tls_and_others_are_refused(make_server, tmp_path, monkeypatch):
    pki = Pki(tmp_path / "pki")
    node = tls_node(make_server, pki, require_client_cert=False)
    c = kvtier.Client(node.grpc, tls_ca=str(pki.ca))
    c.put_object(NS, "a.bin", b"over tls")
    assert c.read_object(NS, "a.bin") == b"over tls"

    # Plaintext to the TLS port, and a client trusting another CA: refused, by name.
    with pytest.raises(kvtier.KvtierError):
        kvtier.Client(node.grpc).read_object(NS, "a.bin")
    other = Pki(tmp_path / "pki", "other")
    with pytest.raises(kvtier.KvtierError, match="(?i)certificate|tls|handshake|transport"):
        kvtier.Client(node.grpc, tls_ca=str(other.ca)).read_object(NS, "a.bin")
    with pytest.raises(kvtier.KvtierError, match="no-such-ca.pem"):
        kvtier.Client(node.grpc, tls_ca=str(tmp_path / "no-such-ca.pem"))

    # The same settings from the environment, as the CLI takes them, and through kvtier://.
    monkeypatch.setenv("KVTIER_TLS_CA", str(pki.ca))
    assert kvtier.Client(node.grpc).read_object(NS, "a.bin") == b"over tls"
    monkeypatch.delenv("KVTIER_TLS_CA")
    fs = fsspec.filesystem("kvtier", address=node.grpc, tls_ca=str(pki.ca), skip_instance_cache=True)
    with fs.open(f"kvtier://{NS.replace('/', '%2F')}/b.bin", "wb") as f:
        f.write(b"through fsspec")
    assert c.read_object(NS, "b.bin") == b"through fsspec"


def test_a_node_that_requires_client_certificates_serves_only_clients_with_one(make_server, tmp_path):
    pki = Pki(tmp_path / "pki")
    node = tls_node(make_server, pki, require_client_cert=True)
    with pytest.raises(kvtier.KvtierError):
        kvtier.Client(node.grpc, tls_ca=str(pki.ca)).put_object(NS, "a.bin", b"x")
    other = Pki(tmp_path / "pki", "other")
    foreign_cert, foreign_key = other.issue("intruder", "DNS:intruder")
    with pytest.raises(kvtier.KvtierError):
        kvtier.Client(node.grpc, tls_ca=str(pki.ca), tls_cert=foreign_cert, tls_key=foreign_key).put_object(
            NS, "a.bin", b"x"
        )
    cert, key = pki.issue("trainer-0", "DNS:trainer-0")
    c = kvtier.Client(node.grpc, tls_ca=str(pki.ca), tls_cert=cert, tls_key=key)
    c.put_object(NS, "a.bin", b"mutual")
    assert c.read_object(NS, "a.bin") == b"mutual"
    # A certificate without its key (or the reverse) is a mistake named as one.
    with pytest.raises(kvtier.InvalidArgumentError, match="tls_cert and tls_key"):
        kvtier.Client(node.grpc, tls_ca=str(pki.ca), tls_cert=cert)
