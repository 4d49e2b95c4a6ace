"""S3's conditional requests through boto3, each checked for what it answers and for what it
leaves: PutObject with If-Match (Dynamo KVBM's G4 lock take-over) and If-None-Match: *,
GetObject and HeadObject with If-Match, If-None-Match, If-Modified-Since and
If-Unmodified-Since (412, 304), CopyObject and UploadPartCopy with the
x-amz-copy-source-if-* conditions, CompleteMultipartUpload with If-None-Match: * and
If-Match, DeleteObject with If-Match and DeleteObjects with an ETag per object. They were all
ignored once: a stale If-Match overwrote the object. Prints "ok"
when every check passed; an assertion names what did not."""

import datetime
import os

import boto3
from botocore.config import Config
from reference import differs, fails  # run against moto as a reference: S3_REFERENCE=moto

endpoint, ak, sk = os.environ["S3_ENDPOINT"], os.environ["S3_KEY"], os.environ["S3_SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1", config=cfg)


def body(key):
    return s3.get_object(Bucket=B, Key=key)["Body"].read()


B = "conds"
s3.create_bucket(Bucket=B)

# PutObject If-Match: a compare-and-swap on the ETag.
first = s3.put_object(Bucket=B, Key="lock", Body=b"owner-1")["ETag"]
second = s3.put_object(Bucket=B, Key="lock", Body=b"owner-2", IfMatch=first)["ETag"]
assert second != first and body("lock") == b"owner-2"
assert fails(s3.put_object, Bucket=B, Key="lock", Body=b"owner-3", IfMatch=first) == (412, "PreconditionFailed")
assert body("lock") == b"owner-2", "a stale If-Match left the object as it was"
assert fails(s3.put_object, Bucket=B, Key="lock", Body=b"x", IfMatch='"not-an-etag"') == (412, "PreconditionFailed")
assert fails(s3.put_object, Bucket=B, Key="absent", Body=b"x", IfMatch=first) == (404, "NoSuchKey")
assert fails(s3.get_object, Bucket=B, Key="absent")[0] == 404, "If-Match on no object created nothing"
assert fails(s3.put_object, Bucket=B, Key="lock", Body=b"x", IfNoneMatch="*") == (412, "PreconditionFailed")
assert body("lock") == b"owner-2"

# GetObject and HeadObject conditions.
head = s3.head_object(Bucket=B, Key="lock")
etag, modified = head["ETag"], head["LastModified"]
later, earlier = modified + datetime.timedelta(hours=1), modified - datetime.timedelta(hours=1)
assert s3.get_object(Bucket=B, Key="lock", IfMatch=etag)["Body"].read() == b"owner-2"
assert fails(s3.get_object, Bucket=B, Key="lock", IfMatch=first) == (412, "PreconditionFailed")
assert fails(s3.head_object, Bucket=B, Key="lock", IfMatch=first)[0] == 412
assert fails(s3.get_object, Bucket=B, Key="lock", IfNoneMatch=etag)[0] == 304
assert fails(s3.head_object, Bucket=B, Key="lock", IfNoneMatch=etag)[0] == 304
assert s3.get_object(Bucket=B, Key="lock", IfNoneMatch=first)["Body"].read() == b"owner-2"
assert fails(s3.get_object, Bucket=B, Key="lock", IfModifiedSince=later)[0] == 304
assert s3.get_object(Bucket=B, Key="lock", IfModifiedSince=earlier)["Body"].read() == b"owner-2"
assert fails(s3.get_object, Bucket=B, Key="lock", IfUnmodifiedSince=earlier) == (412, "PreconditionFailed")
assert s3.get_object(Bucket=B, Key="lock", IfUnmodifiedSince=later)["Body"].read() == b"owner-2"
# If-Match true wins over If-Unmodified-Since false; If-None-Match false over If-Modified-Since.
if not differs("GetObject: If-Match true and If-Unmodified-Since false answer 200, not 412"):
    assert s3.get_object(Bucket=B, Key="lock", IfMatch=etag, IfUnmodifiedSince=earlier)["ContentLength"] == 7
if not differs("GetObject: If-Modified-Since is ignored when If-None-Match is present (RFC 9110 13.2.2)"):
    assert s3.get_object(Bucket=B, Key="lock", IfNoneMatch=first, IfModifiedSince=later)["ContentLength"] == 7

# CopyObject's source conditions: a failing one copies nothing.
cond = dict(Bucket=B, Key="copy", CopySource={"Bucket": B, "Key": "lock"})
if not differs("CopyObject: the x-amz-copy-source-if-* conditions are not ignored"):
    assert fails(s3.copy_object, **cond, CopySourceIfMatch=first) == (412, "PreconditionFailed")
    assert fails(s3.copy_object, **cond, CopySourceIfNoneMatch=etag) == (412, "PreconditionFailed")
    assert fails(s3.copy_object, **cond, CopySourceIfModifiedSince=later) == (412, "PreconditionFailed")
    assert fails(s3.copy_object, **cond, CopySourceIfUnmodifiedSince=earlier) == (412, "PreconditionFailed")
    assert fails(s3.get_object, Bucket=B, Key="copy")[0] == 404, "a refused copy created nothing"
s3.copy_object(**cond, CopySourceIfMatch=etag, CopySourceIfModifiedSince=earlier)
assert body("copy") == b"owner-2"

# Multipart: UploadPartCopy's source conditions, Complete's write conditions.
PART = 5 << 20
s3.put_object(Bucket=B, Key="big-source", Body=os.urandom(PART))
src_etag = s3.head_object(Bucket=B, Key="big-source")["ETag"]
up = s3.create_multipart_upload(Bucket=B, Key="lock")["UploadId"]
copy_part = dict(Bucket=B, Key="lock", UploadId=up, PartNumber=1, CopySource={"Bucket": B, "Key": "big-source"})
if not differs("UploadPartCopy: the x-amz-copy-source-if-* conditions are not ignored"):
    assert fails(s3.upload_part_copy, **copy_part, CopySourceIfMatch=first) == (412, "PreconditionFailed")
    assert s3.list_parts(Bucket=B, Key="lock", UploadId=up).get("Parts", []) == [], "a refused part copy stored nothing"
p1 = s3.upload_part_copy(**copy_part, CopySourceIfMatch=src_etag)["CopyPartResult"]["ETag"]
p2 = s3.upload_part(Bucket=B, Key="lock", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
parts = {"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]}
complete = dict(Bucket=B, Key="lock", UploadId=up, MultipartUpload=parts)
assert fails(s3.complete_multipart_upload, **complete, IfNoneMatch="*") == (412, "PreconditionFailed")
if not differs("CompleteMultipartUpload: If-Match is not ignored"):
    assert fails(s3.complete_multipart_upload, **complete, IfMatch=first) == (412, "PreconditionFailed")
assert body("lock") == b"owner-2", "a refused completion left the object as it was"
# Refused before it was claimed, the upload is still there to complete.
done = s3.complete_multipart_upload(**complete, IfMatch=etag)
assert len(body("lock")) == PART + 4 and done["ETag"] != etag
up = s3.create_multipart_upload(Bucket=B, Key="fresh")["UploadId"]
p = s3.upload_part(Bucket=B, Key="fresh", UploadId=up, PartNumber=1, Body=b"only part")["ETag"]
s3.complete_multipart_upload(Bucket=B, Key="fresh", UploadId=up, IfNoneMatch="*",
                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p}]})
assert body("fresh") == b"only part"
# Conditional deletes: DeleteObject's If-Match, DeleteObjects' ETag per object.
now = s3.put_object(Bucket=B, Key="del", Body=b"d")["ETag"]
assert fails(s3.delete_object, Bucket=B, Key="del", IfMatch=first) == (412, "PreconditionFailed")
assert body("del") == b"d", "a refused delete left the object"
s3.delete_object(Bucket=B, Key="del", IfMatch=now)
assert fails(s3.get_object, Bucket=B, Key="del")[0] == 404
assert fails(s3.delete_object, Bucket=B, Key="del", IfMatch=now) == (404, "NoSuchKey")
if not differs("DeleteObject: If-Match: * checks that the object exists (none: refused)"):
    assert fails(s3.delete_object, Bucket=B, Key="del", IfMatch="*") == (404, "NoSuchKey")
s3.delete_object(Bucket=B, Key="del")  # unconditional: no object is no error
s3.put_object(Bucket=B, Key="del", Body=b"d2")
s3.delete_object(Bucket=B, Key="del", IfMatch="*")
assert fails(s3.get_object, Bucket=B, Key="del")[0] == 404
tags = {k: s3.put_object(Bucket=B, Key=k, Body=k.encode())["ETag"] for k in ("m1", "m2", "m3")}
objects = [{"Key": "m1", "ETag": first}, {"Key": "m2", "ETag": tags["m2"]}]
versions = not differs("DeleteObjects: a version the bucket lacks is an error, not reported deleted (kvtier: 501)")
if versions:
    objects.append({"Key": "m3", "VersionId": "3HL4kqtJlcpXroDT"})
many = s3.delete_objects(Bucket=B, Delete={"Objects": objects})
assert [d["Key"] for d in many["Deleted"]] == ["m2"], many
refused = [("m1", "PreconditionFailed")] + ([("m3", "NotImplemented")] if versions else [])
assert sorted((e["Key"], e["Code"]) for e in many["Errors"]) == refused, many
assert body("m1") == b"m1" and body("m3") == b"m3" and fails(s3.get_object, Bucket=B, Key="m2")[0] == 404
print("ok")
