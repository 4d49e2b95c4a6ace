"""The Python side of `kvtier-bench s3`: objects PUT and GET with boto3 through kvtier's S3
endpoint, and with Azure's own Python SDK (azure-storage-blob) against Azurite's Blob endpoint,
the baseline, each with the same number of requests in flight (threads, as both SDKs are
synchronous). Prints one JSON object per side and phase: {"side", "op", "mib_s", "p99_us"}.
Every object read is compared with what was put; a wrong byte fails the run."""

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def payload(i: int, size: int) -> bytes:
    """Object i's bytes: distinct per object, cheap to rebuild for the check."""
    seed = hashlib.sha256(i.to_bytes(8, "little")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6


def run_phase(side: str, op: str, fn, a) -> None:
    def timed(i):
        t = time.perf_counter()
        fn(i)
        return time.perf_counter() - t

    started = time.perf_counter()
    with ThreadPoolExecutor(a.in_flight) as pool:
        latencies = list(pool.map(timed, range(a.count)))
    secs = time.perf_counter() - started
    print(
        json.dumps({"side": side, "op": op, "mib_s": a.count * a.size / secs / 2**20, "p99_us": p99(latencies)}),
        flush=True,
    )


def boto3_side(a) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=a.endpoint,
        aws_access_key_id=a.key,
        aws_secret_access_key=a.secret,
        region_name="us-east-1",
        config=Config(max_pool_connections=a.in_flight, s3={"addressing_style": "path"}),
    )
    bodies = [payload(i, a.size) for i in range(a.count)]

    def put(i):
        s3.put_object(Bucket=a.bucket, Key=f"bench/obj-{i}", Body=bodies[i])

    def get(i):
        got = s3.get_object(Bucket=a.bucket, Key=f"bench/obj-{i}")["Body"].read()
        if got != bodies[i]:
            sys.exit(f"object {i} read through kvtier's S3 endpoint is not what was put")

    run_phase("kvtier", "put", put, a)
    run_phase("kvtier", "get", get, a)


def azure_side(a) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(a.azure)
    container = service.get_container_client(a.container)
    if not container.exists():
        container.create_container()
    bodies = [payload(i, a.size) for i in range(a.count)]

    def put(i):
        container.upload_blob(f"bench/obj-{i}", bodies[i], overwrite=True, max_concurrency=1)

    def get(i):
        if container.download_blob(f"bench/obj-{i}", max_concurrency=1).readall() != bodies[i]:
            sys.exit(f"blob {i} read from Azurite is not what was put")

    run_phase("azurite", "put", put, a)
    run_phase("azurite", "get", get, a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoint", required=True, help="kvtier's S3 endpoint, http://host:port")
    p.add_argument("--key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--azure", required=True, help="Azurite's connection string")
    p.add_argument("--container", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--in-flight", type=int, default=8)
    a = p.parse_args()
    boto3_side(a)
    azure_side(a)


if __name__ == "__main__":
    main()
