"""kvtier's S3 endpoint through Python's S3 clients: s3fs (aiobotocore) for files, and
PyTorch DCP saving and loading a checkpoint over s3fs, against a real `kvtier serve`."""

import fsspec
import pytest

from conftest import s3_table
from test_fsspec import run_ranks

s3fs = pytest.importorskip("s3fs", reason="the test venv (scripts/python-env.sh) has no s3fs")

KEY, SECRET = "AKIDTEST", "test-secret"
S3 = s3_table(KEY, SECRET)


@pytest.fixture
def s3_server(make_server, monkeypatch):
    server = make_server(S3)
    assert server.s3, "kvtier serve listens for S3"
    # What every boto3/s3fs in this process and its children reads.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{server.s3}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return server


def nixl_api():
    """NIXL's Python API as `nixl._api`, the name vLLM imports. PyPI's `nixl` meta package
    would bind that name to nixl-cu13 here (vLLM's torch is built for CUDA 13), whose OBJ
    plugin needs NVIDIA's libcuobjclient, which is not on PyPI; the venv has nixl-cu12, bound
    the way the meta package binds it on a CUDA 12 stack."""
    import sys

    api = pytest.importorskip("nixl_cu12._api", reason="the test venv has no nixl-cu12")
    sys.modules.setdefault("nixl", sys.modules["nixl_cu12"])
    sys.modules.setdefault("nixl._api", api)
    return api


def fs():
    return s3fs.S3FileSystem(anon=False, skip_instance_cache=True, use_listings_cache=False)


def test_s3fs_files_round_trip_with_ranges_listing_copies_and_deletes(s3_server):
    f = fs()
    f.mkdir("data")  # creates the bucket
    payload = bytes(range(256)) * 40_000  # 10 MB: s3fs uploads it in parts
    with f.open("data/run1/blob.bin", "wb", block_size=5 * 2**20) as out:
        out.write(payload)
    assert f.cat("data/run1/blob.bin") == payload
    with f.open("data/run1/blob.bin", "rb") as src:
        src.seek(1_000_000)
        assert src.read(100) == payload[1_000_000:1_000_100]
    f.pipe("data/run1/small.txt", b"hello")
    assert f.info("data/run1/small.txt")["size"] == 5
    assert sorted(f.ls("data/run1", detail=False)) == ["data/run1/blob.bin", "data/run1/small.txt"]
    assert f.isdir("data/run1") and not f.exists("data/run2")
    f.mv("data/run1/small.txt", "data/run2/small.txt")
    assert f.cat("data/run2/small.txt") == b"hello" and not f.exists("data/run1/small.txt")
    f.rm("data/run1", recursive=True)
    assert f.ls("data", detail=False) == ["data/run2"]
    # The object is the named object kvtier's own client sees.
    import kvtier

    c = kvtier.Client(s3_server.grpc)
    assert c.read_object("s3/data", "o/run2/small.txt") == b"hello"


def test_pytorch_dcp_saves_and_loads_through_s3fs(s3_server, tmp_path):
    pytest.importorskip("torch")
    fs().mkdir("ckpt")
    url = "s3://ckpt/run1/step-100"
    run_ranks(tmp_path, 2, s3_server.grpc, url, "save")
    names = sorted(p.rsplit("/", 1)[1] for p in fsspec.filesystem("s3").find(url))
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"], names
    s3_server.kill9()  # local_disk objects: the checkpoint survives
    s3_server.start()
    import os

    os.environ["AWS_ENDPOINT_URL"] = f"http://{s3_server.s3}"
    outs = run_ranks(tmp_path, 2, s3_server.grpc, url, "load")
    assert [o.strip() for o in outs] == [f"rank {r} loaded" for r in range(2)]


def test_nixl_obj_plugin_moves_dram_to_kvtier_and_back(s3_server):
    """NIXL's OBJ backend (nixl 1.5.1: aws-sdk-cpp, aws-chunked uploads with a trailing
    checksum), as vLLM's `obj` tier and Dynamo's G4 use it: DRAM -> object -> DRAM, no GPU."""
    nixl = nixl_api()
    import time

    import boto3
    import numpy as np

    boto3.client("s3").create_bucket(Bucket="g4-blocks")
    agent = nixl.nixl_agent("kvtier-test", nixl.nixl_agent_config(backends=[]))
    assert "OBJ" in agent.get_plugin_list()
    agent.create_backend(
        "OBJ",
        {
            "access_key": KEY,
            "secret_key": SECRET,
            "bucket": "g4-blocks",
            "endpoint_override": f"http://{s3_server.s3}",
            "scheme": "http",
            "region": "us-east-1",
            "use_virtual_addressing": "false",
        },
    )
    size = 3 << 20
    src = np.frombuffer(np.random.default_rng(7).bytes(size), dtype=np.uint8).copy()
    dst = np.zeros(size, dtype=np.uint8)
    part = np.zeros(1000, dtype=np.uint8)
    agent.register_memory([(a.ctypes.data, a.nbytes, 0, "") for a in (src, dst, part)], "DRAM")
    agent.register_memory([(0, size, 11, "blocks/seq-11")], "OBJ")

    def run(op, buf, offset=0):
        local = agent.get_xfer_descs([(buf.ctypes.data, buf.nbytes, 0)], "DRAM")
        remote = agent.get_xfer_descs([(offset, buf.nbytes, 11)], "OBJ")
        xfer = agent.initialize_xfer(op, local, remote, "kvtier-test")
        state, deadline = agent.transfer(xfer), time.time() + 60
        while state not in ("DONE", "ERR") and time.time() < deadline:
            state = agent.check_xfer_state(xfer)
            time.sleep(0.005)
        agent.release_xfer_handle(xfer)
        return state

    assert run("WRITE", src) == "DONE"
    assert boto3.client("s3").head_object(Bucket="g4-blocks", Key="blocks/seq-11")["ContentLength"] == size
    assert run("READ", dst) == "DONE" and (dst == src).all()
    assert run("READ", part, offset=123_456) == "DONE" and (part == src[123_456:124_456]).all()


def test_vllms_own_obj_tier_offloads_to_kvtier_and_promotes_back(s3_server, monkeypatch, tmp_path):
    """vLLM 0.32's native object tier (TieringOffloadingSpec, secondary tier `obj`: NIXL's OBJ
    plugin with `endpoint_override`) pointed at kvtier's S3 endpoint, driven by vLLM's own
    tiering manager: chunks cascade from the host tier to kvtier and come back byte-exact after
    the host cache is reset. No GPU: a worker's GPU->host copy is a write into the primary."""
    pytest.importorskip("vllm", reason="the vLLM venv (scripts/python-env.sh) is not active")
    nixl_api()
    import boto3
    import numpy as np
    from vllm.v1.kv_offload.base import LookupResult
    from vllm.v1.kv_offload.factory import OffloadingSpecFactory
    from vllm.v1.kv_offload.tiering.obj.manager import ObjectStoreSecondaryTierManager

    import kvtier
    from test_vllm import key, load, offloading_config, store

    boto3.client("s3").create_bucket(Bucket="vllm-kv")
    # vLLM 0.32's obj tier reads each finished transfer's NIXL telemetry but does not ask its
    # agent to capture any; NIXL 1.5.1 then raises on every completed transfer unless telemetry
    # is on for the process (docs/connectors.md says so too).
    monkeypatch.setenv("NIXL_TELEMETRY_ENABLE", "y")
    monkeypatch.setenv("NIXL_TELEMETRY_DIR", str(tmp_path))
    extra = {
        "spec_name": "TieringOffloadingSpec",
        "secondary_tiers": [
            {
                "type": "obj",
                "prefix": "llama",
                "store_config": {
                    "bucket": "vllm-kv",
                    "endpoint_override": s3_server.s3,
                    "scheme": "http",
                    "access_key": KEY,
                    "secret_key": SECRET,
                    "region": "us-east-1",
                },
            }
        ],
    }
    spec = OffloadingSpecFactory.create_spec(offloading_config(extra))
    mgr = spec.get_manager()
    (tier,) = mgr.secondary_tiers
    assert isinstance(tier, ObjectStoreSecondaryTierManager)
    primary = np.asarray(mgr.primary_tier.get_kv_memoryview())
    keys = [key(900 + i) for i in range(4)]
    payload = store(mgr, tier, primary, keys, seed=9)

    # Each chunk is an S3 object of its own, and a kvtier named object: the same bytes.
    listed = boto3.client("s3").list_objects_v2(Bucket="vllm-kv", Prefix="llama/")["Contents"]
    assert len(listed) == len(keys) and all(o["Size"] == primary.shape[1] for o in listed), listed
    client = kvtier.Client(s3_server.grpc)
    stored = {client.read_object("s3/vllm-kv", "o/" + o["Key"]) for o in listed}
    assert stored == {p.tobytes() for p in payload}

    mgr.reset_cache()  # the host tier forgets; the lookup goes to kvtier through NIXL
    primary[:] = 0
    res, got = load(mgr, tier, primary, keys)
    assert all(r is LookupResult.HIT for r in res), res
    assert np.array_equal(got, payload), "promoted bytes differ from what vLLM offloaded"
    # A chunk kvtier never had is a miss, not an error.
    res, _ = load(mgr, tier, primary, [key(999)])
    assert res == [LookupResult.MISS], res
    mgr.shutdown()
