"""`kvtier://` through fsspec, and PyTorch Distributed Checkpoint saving and loading a model
through it with several gloo ranks, against a real `kvtier serve`."""

import os
import subprocess
import sys
import textwrap

import fsspec
import numpy as np
import pytest

import kvtier
from kvtier.fsspec import KvtierFileSystem


@pytest.fixture
def fs(server):
    # fsspec caches instances by their options; each test has its own server address.
    return fsspec.filesystem("kvtier", address=server.grpc, durability="local_disk")


def test_the_protocol_is_registered_by_the_package():
    assert fsspec.get_filesystem_class("kvtier") is KvtierFileSystem


def test_files_round_trip_with_ranges_listing_and_deletes(fs, server):
    data = np.random.default_rng(1).integers(0, 255, 20_000_000, dtype=np.uint8).tobytes()
    with fs.open("kvtier://acme%2Fckpt/run1/step-100/rank-0.distcp", "wb") as f:
        for at in range(0, len(data), 3_000_000):
            f.write(data[at : at + 3_000_000])
    fs.pipe("kvtier://acme%2Fckpt/run1/step-100/.metadata", b"meta")
    fs.pipe("kvtier://acme%2Fckpt/run1/step-200/rank-0.distcp", b"x" * 10)
    # The namespace is the URL's first segment, %2F-decoded: the objects API sees the same.
    c = kvtier.Client(server.grpc)
    assert c.stat_object("acme/ckpt", "run1/step-100/rank-0.distcp")["size"] == len(data)

    with fs.open("kvtier://acme%2Fckpt/run1/step-100/rank-0.distcp", "rb") as f:
        assert f.read() == data
        f.seek(16_777_200)  # across the 16 MiB chunk boundary
        assert f.read(100) == data[16_777_200:16_777_300]
    assert fs.cat_file("kvtier://acme%2Fckpt/run1/step-100/rank-0.distcp", start=5, end=9) == data[5:9]

    assert fs.ls("kvtier://acme%2Fckpt/run1", detail=False) == [
        "acme%2Fckpt/run1/step-100",
        "acme%2Fckpt/run1/step-200",
    ]
    listed = fs.ls("acme%2Fckpt/run1/step-100")
    assert [(e["name"], e["type"], e["size"]) for e in listed] == [
        ("acme%2Fckpt/run1/step-100/.metadata", "file", 4),
        ("acme%2Fckpt/run1/step-100/rank-0.distcp", "file", len(data)),
    ]
    assert fs.isdir("kvtier://acme%2Fckpt/run1") and fs.isfile("kvtier://acme%2Fckpt/run1/step-100/.metadata")
    assert not fs.exists("kvtier://acme%2Fckpt/run2")
    with pytest.raises(FileNotFoundError):
        fs.open("kvtier://acme%2Fckpt/nothing", "rb")
    assert fs.find("kvtier://acme%2Fckpt/run1") == [
        "acme%2Fckpt/run1/step-100/.metadata",
        "acme%2Fckpt/run1/step-100/rank-0.distcp",
        "acme%2Fckpt/run1/step-200/rank-0.distcp",
    ]

    # A rename (PyTorch DCP renames .metadata.tmp) and a recursive delete.
    fs.mv("kvtier://acme%2Fckpt/run1/step-100/.metadata", "kvtier://acme%2Fckpt/run1/step-100/.metadata2")
    assert fs.cat("kvtier://acme%2Fckpt/run1/step-100/.metadata2") == b"meta"
    assert not fs.exists("kvtier://acme%2Fckpt/run1/step-100/.metadata")
    fs.rm("kvtier://acme%2Fckpt/run1/step-100", recursive=True)
    assert fs.find("kvtier://acme%2Fckpt/run1") == ["acme%2Fckpt/run1/step-200/rank-0.distcp"]


def test_a_failed_writer_or_a_replaced_version_never_shows_mixed_bytes(fs):
    fs.pipe("kvtier://ckpt/a.bin", b"old" * 1000)
    with pytest.raises(RuntimeError):
        with fs.open("kvtier://ckpt/a.bin", "wb", block_size=1 << 20) as f:
            f.write(b"n" * (3 << 20))  # past the block size: already streaming to the node
            raise RuntimeError("rank died")
    assert fs.cat("kvtier://ckpt/a.bin") == b"old" * 1000

    # A reader keeps the version it opened; once replaced, its next fetch fails.
    reader = fs.open("kvtier://ckpt/a.bin", "rb", block_size=100, cache_type="none")
    assert reader.read(10) == b"oldoldoldo"
    fs.pipe("kvtier://ckpt/a.bin", b"new" * 1000)
    with pytest.raises(OSError, match="was replaced"):
        reader.read(10)
    with pytest.raises(ValueError, match="'rb' or 'wb'"):
        fs.open("kvtier://ckpt/a.bin", "ab")
    with pytest.raises(ValueError, match="names a namespace first"):
        fs.info("kvtier:///a.bin")


def test_a_dead_node_is_a_clear_error(server):
    fs = fsspec.filesystem("kvtier", address=server.grpc, skip_instance_cache=True)
    fs.pipe("kvtier://ckpt/x", b"1")
    server.kill9()
    with pytest.raises(kvtier.UnavailableError):
        fs.cat("kvtier://ckpt/x")


DCP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    rank, world, port, address, url, phase = sys.argv[1:]
    rank, world = int(rank), int(world)
    os.environ["KVTIER_SERVER"] = address
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    if phase == "save":
        # Each rank holds its own shard of a per-rank tensor, plus the replicated model.
        state = {"model": model.state_dict(), f"opt_rank{rank}": torch.full((1000,), float(rank + 1))}
        dcp.save(state, storage_writer=FsspecWriter(url, sync_files=False))
    else:
        for p in model.parameters():
            torch.nn.init.zeros_(p)
        state = {"model": model.state_dict(), f"opt_rank{rank}": torch.zeros(1000)}
        dcp.load(state, storage_reader=FsspecReader(url))
        torch.manual_seed(0)
        want = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        for k, v in want.state_dict().items():
            assert torch.equal(state["model"][k], v), k
        assert torch.equal(state[f"opt_rank{rank}"], torch.full((1000,), float(rank + 1)))
        print(f"rank {rank} loaded", flush=True)
    dist.destroy_process_group()
    """
)


def run_ranks(tmp_path, world: int, address: str, url: str, phase: str) -> list[str]:
    script = tmp_path / "dcp_ranks.py"
    script.write_text(DCP_SCRIPT)
    import random
    import socket

    # Below Linux's ephemeral range (32768+), where the OS puts `:0` listeners and outgoing
    # connections: a port the OS handed out could be taken again before rank 0 binds it.
    while True:
        port = random.randrange(20000, 32000)
        try:
            socket.create_server(("127.0.0.1", port)).close()
            break
        except OSError:
            pass
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world), str(port), address, url, phase],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def test_pytorch_dcp_saves_and_loads_a_model_with_three_gloo_ranks(server, tmp_path):
    pytest.importorskip("torch")
    url = "kvtier://ckpt/run1/step-100"
    run_ranks(tmp_path, 3, server.grpc, url, "save")
    fs = fsspec.filesystem("kvtier", address=server.grpc)
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find(url))
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp"], names
    # The checkpoint survives the node's kill -9 (local_disk objects) and loads on 3 ranks.
    server.kill9()
    server.start()
    outs = run_ranks(tmp_path, 3, server.grpc, url, "load")
    assert [o.strip() for o in outs] == [f"rank {r} loaded" for r in range(3)]
