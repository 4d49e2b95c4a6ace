"""Listings as boto3 pages through them: ListObjects (V1, marker/NextMarker) and
ListObjectsV2 with page sizes from 1 up, with and without a delimiter, keys that need URL
encoding (botocore asks for EncodingType=url and decodes the answer), MaxKeys=0, FetchOwner,
and ListBuckets a page at a time. V1's marker was once ignored: every page was the first.
Prints "ok" when every check passed; an assertion names what did not."""

import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from reference import differs  # run against moto as a reference: S3_REFERENCE=moto

endpoint, ak, sk = os.environ["S3_ENDPOINT"], os.environ["S3_KEY"], os.environ["S3_SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1", config=cfg)

B = "listing"
s3.create_bucket(Bucket=B)
keys = sorted(
    [f"flat-{i:02d}" for i in range(7)]
    + [f"dir-{d}/obj-{i}" for d in range(4) for i in range(3)]
    + ["odd/a b+c=d&e.txt", "odd/ünïcødé %2F.bin", "odd/percent%20literal"]
)
for k in keys:
    s3.put_object(Bucket=B, Key=k, Body=k.encode())


def pages(op, size, **kw):
    """(keys, common prefixes) over every page of `op` at page size `size`."""
    got, prefixes = [], []
    for page in s3.get_paginator(op).paginate(Bucket=B, PaginationConfig={"PageSize": size}, **kw):
        got += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return got, prefixes


rolled = sorted([k for k in keys if "/" not in k])
tops = sorted({k.split("/")[0] + "/" for k in keys if "/" in k})
for op in ("list_objects", "list_objects_v2"):
    for size in (1, 2, 3, 1000):
        assert pages(op, size) == (keys, []), f"{op} at {size}: {pages(op, size)}"
        got = pages(op, size, Delimiter="/")
        v1_paged = op == "list_objects" and size < len(rolled) + len(tops)
        if not (v1_paged and differs("ListObjects V1: a common prefix is listed once across pages (NextMarker)")):
            assert got == (rolled, tops), f"{op} with a delimiter at {size}: {got}"
        got = pages(op, size, Prefix="dir-1/")
        assert got == ([k for k in keys if k.startswith("dir-1/")], []), f"{op} under a prefix at {size}: {got}"

# V1 by hand: Marker, IsTruncated, NextMarker.
first = s3.list_objects(Bucket=B, MaxKeys=2, Delimiter="/")
assert first["IsTruncated"] and [o["Key"] for o in first.get("Contents", [])] + [p["Prefix"] for p in first.get("CommonPrefixes", [])]
after = s3.list_objects(Bucket=B, Marker=keys[4])
assert [o["Key"] for o in after["Contents"]] == keys[5:] and not after["IsTruncated"], after
if not differs("ListObjects V1 answers the Marker it was given"):
    assert after["Marker"] == keys[4], after
assert "Owner" in after["Contents"][0], "V1 names each object's owner"

# MaxKeys=0: nothing, and not truncated.
none = s3.list_objects_v2(Bucket=B, MaxKeys=0)
assert none["KeyCount"] == 0 and not none["IsTruncated"] and "NextContinuationToken" not in none, none
# FetchOwner (V2 names owners only when asked), StartAfter.
assert "Owner" not in s3.list_objects_v2(Bucket=B)["Contents"][0]
assert "Owner" in s3.list_objects_v2(Bucket=B, FetchOwner=True)["Contents"][0]
assert [o["Key"] for o in s3.list_objects_v2(Bucket=B, StartAfter=keys[-2])["Contents"]] == keys[-1:]
# A token this endpoint never gave is refused.
if not differs("ListObjectsV2: a continuation token it never gave is InvalidArgument (400), not a 500"):
    try:
        s3.list_objects_v2(Bucket=B, ContinuationToken="!!")
        raise AssertionError("a bad continuation token was taken")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidArgument", e

# ListBuckets a page at a time, and by prefix.
for name in ("listing-b", "listing-c", "other-d"):
    s3.create_bucket(Bucket=name)
every = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
seen, token = [], None
while True:
    page = s3.list_buckets(MaxBuckets=1, **({"ContinuationToken": token} if token else {}))
    seen += [b["Name"] for b in page["Buckets"]]
    token = page.get("ContinuationToken")
    if not token:
        break
if not differs("ListBuckets with MaxBuckets answers a ContinuationToken for the next page"):
    assert seen == every, (seen, every)
assert [b["Name"] for b in s3.list_buckets(Prefix="listing")["Buckets"]] == ["listing", "listing-b", "listing-c"]
print("ok")
