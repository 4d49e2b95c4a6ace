"""``kvtier://``: kvtier's named objects as an fsspec filesystem.

>>> import fsspec
>>> fs = fsspec.filesystem("kvtier", address="unix:///var/lib/kvtier/kvtier.sock")
>>> with fs.open("kvtier://ckpt/run1/step-100/rank-0.distcp", "wb") as f:
...     f.write(shard_bytes)
>>> fs.ls("kvtier://ckpt/run1/step-100")

A URL is ``kvtier://NAMESPACE/PATH``: the first segment is the namespace, the rest the
object's path in it. A namespace with ``/`` in it is written with ``%2F``
(``kvtier://acme%2Fckpt/step-100/x``). Directories are implied by paths, as in S3: ``mkdir``
makes nothing, and a directory exists while an object is under it.

Each file written is one object version: it becomes visible, whole, when the file is closed
without an exception (an exception inside ``with fs.open(...)`` drops it, and the object
stays as it was). A file opened for reading reads the version current when it was opened;
if that version is replaced meanwhile, reads fail rather than mix versions.

Storage options: ``address`` (default ``$KVTIER_SERVER`` or ``127.0.0.1:50051``),
``durability`` of written objects (``"local_disk"``, default; ``"write_back"`` to have
them flushed to Blob; ``"cache"`` for evictable copies), and for a node that speaks TLS
``tls_ca`` (plus ``tls_cert`` and ``tls_key`` where it requires client certificates),
PEM file paths, by default ``$KVTIER_TLS_CA``, ``$KVTIER_TLS_CERT``, ``$KVTIER_TLS_KEY``. PyTorch Distributed Checkpoint
takes ``kvtier://`` paths through its ``FsspecWriter``/``FsspecReader``.
"""

from __future__ import annotations

import datetime
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from ._native import Client, KvtierError

#: Bytes buffered per write and fetched per read: one object chunk.
BLOCK_SIZE = 16 << 20

__all__ = ["KvtierFileSystem", "KvtierFile"]


class KvtierFileSystem(AbstractFileSystem):
    """kvtier's named objects, one namespace per URL host (see the module's doc)."""

    protocol = "kvtier"
    root_marker = ""

    def __init__(
        self,
        address: str | None = None,
        durability: str = "local_disk",
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.address = address or os.environ.get("KVTIER_SERVER", "127.0.0.1:50051")
        self.durability = durability
        self.tls = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
        self._client: Client | None = None
        self._pid = None

    @property
    def client(self) -> Client:
        # One client per process: a forked child must not use its parent's connection.
        if self._client is None or self._pid != os.getpid():
            self._client = Client(self.address, **self.tls)
            self._pid = os.getpid()
        return self._client

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path)
        if path.startswith("kvtier://"):
            path = path[len("kvtier://") :]
            if path.startswith("/"):
                raise ValueError(f"kvtier://{path}: a kvtier:// URL names a namespace first: kvtier://NAMESPACE/PATH")
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return "kvtier://" + self._strip_protocol(name)

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        """(namespace, object path) of a stripped path; the object path may be ""."""
        head, _, rest = path.partition("/")
        if not head:
            raise ValueError(f"{path!r}: a kvtier:// URL names a namespace first: kvtier://NAMESPACE/PATH")
        return urllib.parse.unquote(head), rest

    def _entry(self, ns_part: str, meta: Mapping[str, Any]) -> dict:
        return {
            "name": f"{ns_part}/{meta['path']}",
            "size": meta["size"],
            "type": "file",
            "generation": meta["generation"],
            "crc32c": meta["crc32c"],
            "created": meta["created_unix"],
        }

    @staticmethod
    def _dir(name: str) -> dict:
        return {"name": name, "size": 0, "type": "directory"}

    def _under(self, path: str) -> tuple[str, list[dict]]:
        """The objects under directory `path` (recursively), as entries."""
        path = self._strip_protocol(path)
        ns, key = self.split(path)
        ns_part = path.partition("/")[0]
        prefix = f"{key}/" if key else ""
        return ns_part, [self._entry(ns_part, m) for m in self.client.list_objects(ns, prefix)]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        ns, key = self.split(path)
        if not key:
            return self._dir(path)  # a namespace, like a bucket, always exists
        meta = self.client.stat_object(ns, key)
        if meta is not None:
            return self._entry(path.partition("/")[0], meta)
        if self._under(path)[1]:
            return self._dir(path)
        raise FileNotFoundError(f"kvtier://{path}")

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        ns, key = self.split(path)
        if key and (meta := self.client.stat_object(ns, key)) is not None:
            entries = [self._entry(path.partition("/")[0], meta)]
        else:
            entries, dirs = [], set()
            for e in self._under(path)[1]:
                child = e["name"][len(path) + 1 :]
                if "/" in child:
                    dirs.add(f"{path}/{child.partition('/')[0]}")
                else:
                    entries.append(e)
            entries += [self._dir(d) for d in sorted(dirs)]
            if not entries and key:
                raise FileNotFoundError(f"kvtier://{path}")
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        path = self._strip_protocol(path)
        ns, key = self.split(path)
        found = {}
        if key and (meta := self.client.stat_object(ns, key)) is not None:
            found[path] = self._entry(path.partition("/")[0], meta)
        else:
            for e in self._under(path)[1]:
                depth = e["name"][len(path) + 1 :].count("/") + 1
                if maxdepth is not None and depth > maxdepth:
                    continue
                found[e["name"]] = e
                if withdirs:
                    parent = e["name"].rpartition("/")[0]
                    while len(parent) > len(path):
                        found.setdefault(parent, self._dir(parent))
                        parent = parent.rpartition("/")[0]
        found = dict(sorted(found.items()))
        return found if detail else list(found)

    def mkdir(self, path, create_parents=True, **kwargs):
        """Directories are implied by object paths: nothing to make."""

    def makedirs(self, path, exist_ok=False):
        """Directories are implied by object paths: nothing to make."""

    def rmdir(self, path):
        """A directory goes away with its last object."""

    def rm_file(self, path):
        ns, key = self.split(self._strip_protocol(path))
        if not key or not self.client.delete_object(ns, key):
            raise FileNotFoundError(f"kvtier://{self._strip_protocol(path)}")

    def rm(self, path, recursive=False, maxdepth=None):
        for p in self.expand_path(path, recursive=recursive, maxdepth=maxdepth):
            ns, key = self.split(p)
            if key:
                self.client.delete_object(ns, key)  # a directory is no object: False
        self.invalidate_cache()

    def cp_file(self, path1, path2, **kwargs):
        """Copies through this client (no server-side copy yet), chunk by chunk, of the one
        version current when the copy started."""
        src = self.info(path1)
        if src["type"] != "file":
            return  # a directory is made by its files
        ns, key = self.split(self._strip_protocol(path1))
        with self.open(path2, "wb") as out:
            for at in range(0, src["size"], BLOCK_SIZE):
                data = self.client.read_object(ns, key, at, BLOCK_SIZE, generation=src["generation"])
                if data is None:
                    raise FileNotFoundError(f"kvtier://{self._strip_protocol(path1)}")
                out.write(data)

    def created(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["created"], tz=datetime.UTC)

    modified = created

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode not in ("rb", "wb"):
            raise ValueError(f"kvtier:// files open as 'rb' or 'wb', not {mode!r} (objects are written whole)")
        return KvtierFile(self, path, mode, block_size or BLOCK_SIZE, autocommit, cache_options=cache_options, **kwargs)


class KvtierFile(AbstractBufferedFile):
    """One object, read by ranges of the version current at open, or written as a new
    version made visible at close (or at ``commit``, inside an fsspec transaction)."""

    def __init__(self, fs: KvtierFileSystem, path, mode, block_size, autocommit, **kwargs):
        path = fs._strip_protocol(path)
        self.namespace, self.key = fs.split(path)
        if not self.key:
            raise IsADirectoryError(f"kvtier://{path} is a namespace, not an object")
        self._upload = None
        super().__init__(fs, path, mode, block_size, autocommit, **kwargs)
        if mode == "rb":
            if self.details["type"] != "file":
                raise IsADirectoryError(f"kvtier://{path}")
            self.generation = self.details["generation"]

    def _fetch_range(self, start, end):
        if start >= end:
            return b""
        try:
            data = self.fs.client.read_object(self.namespace, self.key, start, end - start, generation=self.generation)
        except KvtierError as e:
            raise OSError(f"kvtier://{self.path}: {e}") from e
        if data is None:
            raise FileNotFoundError(f"kvtier://{self.path} was deleted while open")
        return data

    def _initiate_upload(self):
        self._upload = self.fs.client.open_object(self.namespace, self.key, durability=self.fs.durability)

    def _upload_chunk(self, final=False):
        self._upload.write(self.buffer.getbuffer())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self):
        if self._upload is None:
            self._initiate_upload()  # nothing was ever written: an empty object
        self._upload.commit()
        self._upload = None

    def discard(self):
        if self._upload is not None:
            self._upload.abort()
            self._upload = None

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.writable() and not self.closed:
            # A writer that failed part way: keep nothing of it.
            self.discard()
            self.closed = True
            return
        self.close()
