"""Every Python door with the default config (blocks up to 64 MiB, objects in 16 MiB chunks,
gRPC messages of at most 16 MiB): blocks of `max_block_size` over gRPC and shared memory,
files from 0 B to past several chunks through `kvtier://` and the objects API, and S3
objects through boto3. A 16 MiB chunk once travelled as one gRPC message too large to read."""

import boto3
import fsspec
import numpy as np
import pytest

import kvtier
from conftest import Server, s3_table

MIB = 1 << 20
KEY, SECRET = "AKIDSIZES", "sizes-secret"
S3 = s3_table(KEY, SECRET)
SIZES = [0, 1, 16 * MIB - 1, 16 * MIB + 1, 40_000_000, 64 * MIB + 3]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for the module: the defaults but for its SSD (8 GiB by default, of disk the
    sizes under test do not need)."""
    server = Server(tmp_path_factory.mktemp("sizes"), '[ssd]\ncapacity = "1GiB"\n' + S3, defaults=True)
    yield server
    server.stop()


def payload(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes()


def test_blocks_of_max_block_size_over_grpc_and_shared_memory(node):
    big, almost = payload(1, 64 * MIB), payload(2, 64 * MIB - 1)
    grpc = kvtier.Client(node.grpc)
    assert all(r.ok for r in grpc.put("kv/sizes", [b"max", b"max-1"], [big, almost]))
    assert grpc.get("kv/sizes", [b"max", b"max-1"]) == [big, almost]
    [over] = grpc.put("kv/sizes", [b"over"], [payload(3, 64 * MIB + 1)])
    assert not over.ok and "67108865" in over.error, over
    assert grpc.get("kv/sizes", [b"over"]) == [None]
    shm = kvtier.Client(node.unix, shm_socket=node.shm, namespaces=["kv/shm"])
    assert all(r.ok for r in shm.put("kv/shm", [b"max"], [big]))
    assert shm.get("kv/shm", [b"max"]) == [big]
    assert grpc.get("kv/shm", [b"max"]) == [big]


def test_files_of_every_size_through_kvtier_fsspec_and_the_objects_api(node):
    fs = fsspec.filesystem("kvtier", address=node.grpc, durability="local_disk", skip_instance_cache=True)
    client = kvtier.Client(node.grpc)
    for i, size in enumerate(SIZES):
        data = payload(10 + i, size)
        url = f"kvtier://ckpt%2Fsizes/run/file-{size}"
        with fs.open(url, "wb") as f:
            for at in range(0, size, 5 * MIB):
                f.write(data[at : at + 5 * MIB])
        with fs.open(url, "rb") as f:
            assert f.read() == data, size
            if size > 16 * MIB:
                f.seek(16 * MIB - 10)  # across the first chunk boundary
                assert f.read(20) == data[16 * MIB - 10 : 16 * MIB + 10]
        assert client.read_object("ckpt/sizes", f"run/file-{size}") == data, size


def test_s3_objects_of_every_size_through_boto3(node):
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{node.s3}",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="sizes")
    for i, size in enumerate(SIZES):
        data = payload(20 + i, size)
        s3.put_object(Bucket="sizes", Key=f"obj-{size}", Body=data)
        assert s3.get_object(Bucket="sizes", Key=f"obj-{size}")["Body"].read() == data, size
        if size > 16 * MIB:
            got = s3.get_object(Bucket="sizes", Key=f"obj-{size}", Range=f"bytes={16 * MIB - 10}-{16 * MIB + 9}")
            assert got["Body"].read() == data[16 * MIB - 10 : 16 * MIB + 10]
