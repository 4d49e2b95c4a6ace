"""boto3 (botocore's own signing and parsing) against kvtier's S3 endpoint. Prints "ok" when
every check passed; an assertion names what did not."""

import base64
import hashlib
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, ak, sk = os.environ["S3_ENDPOINT"], os.environ["S3_KEY"], os.environ["S3_SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1", config=cfg)


def code(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} did not fail")


s3.create_bucket(Bucket="ckpt")
# Again: S3 in us-east-1 (kvtier's region) answers 200 for legacy compatibility, which clients
# racing to create one bucket rely on (Dynamo KVBM's workers); naming another region, 409.
assert s3.create_bucket(Bucket="ckpt")["ResponseMetadata"]["HTTPStatusCode"] == 200
elsewhere = {"LocationConstraint": "eu-west-1"}
assert code(s3.create_bucket, Bucket="ckpt", CreateBucketConfiguration=elsewhere) == ("BucketAlreadyOwnedByYou", 409)
assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["ckpt"]
s3.head_bucket(Bucket="ckpt")
assert code(s3.head_bucket, Bucket="nothere")[1] == 404
assert s3.get_bucket_location(Bucket="ckpt")["LocationConstraint"] == "us-east-1"
assert code(s3.get_bucket_location, Bucket="nothere")[0] == "NoSuchBucket"
assert code(s3.put_object, Bucket="nothere", Key="k", Body=b"x")[0] == "NoSuchBucket"

data = os.urandom(3 << 20) + b"tail"
put = s3.put_object(Bucket="ckpt", Key="run1/step-1/shard-0.bin", Body=data)
got = s3.get_object(Bucket="ckpt", Key="run1/step-1/shard-0.bin")
assert got["Body"].read() == data and got["ContentLength"] == len(data)
assert got["ETag"] == put["ETag"]
part = s3.get_object(Bucket="ckpt", Key="run1/step-1/shard-0.bin", Range="bytes=100-199")
assert part["Body"].read() == data[100:200] and part["ContentRange"] == f"bytes 100-199/{len(data)}"
tail = s3.get_object(Bucket="ckpt", Key="run1/step-1/shard-0.bin", Range="bytes=-4")["Body"].read()
assert tail == b"tail"
assert code(s3.get_object, Bucket="ckpt", Key="run1/step-1/shard-0.bin", Range=f"bytes={len(data)}-")[0] == "InvalidRange"
head = s3.head_object(Bucket="ckpt", Key="run1/step-1/shard-0.bin")
assert head["ContentLength"] == len(data) and head["ETag"] == put["ETag"]
assert code(s3.get_object, Bucket="ckpt", Key="absent")[0] == "NoSuchKey"
assert code(s3.head_object, Bucket="ckpt", Key="absent")[1] == 404

# Keys with spaces, unicode and characters that need encoding.
odd = "dir with space/ünïcødé+plus=eq&amp.txt"
s3.put_object(Bucket="ckpt", Key=odd, Body=b"odd")
assert s3.get_object(Bucket="ckpt", Key=odd)["Body"].read() == b"odd"

# CopyObject (what s3fs and DCP's rename do), within and across buckets.
s3.copy_object(Bucket="ckpt", Key="copy/of/odd", CopySource={"Bucket": "ckpt", "Key": odd})
assert s3.get_object(Bucket="ckpt", Key="copy/of/odd")["Body"].read() == b"odd"
assert code(s3.copy_object, Bucket="ckpt", Key="c2", CopySource={"Bucket": "ckpt", "Key": "absent"})[0] == "NoSuchKey"

# Conditional create: the second If-None-Match: * put fails, the object keeps its bytes.
s3.put_object(Bucket="ckpt", Key="lock", Body=b"first", IfNoneMatch="*")
assert code(s3.put_object, Bucket="ckpt", Key="lock", Body=b"second", IfNoneMatch="*") == ("PreconditionFailed", 412)
assert s3.get_object(Bucket="ckpt", Key="lock")["Body"].read() == b"first"

# Additional checksums: boto3 sends one with every put (CRC32 by default), and each is checked
# (CRC32C and CRC64NVME need awscrt in boto3; NIXL's uploads send CRC64NVME trailers).
for algorithm in ("CRC32", "SHA1", "SHA256"):
    s3.put_object(Bucket="ckpt", Key=f"sum/{algorithm}", Body=b"summed", ChecksumAlgorithm=algorithm)
    assert s3.get_object(Bucket="ckpt", Key=f"sum/{algorithm}")["Body"].read() == b"summed"
assert code(s3.put_object, Bucket="ckpt", Key="sum/bad", Body=b"summed", ChecksumCRC32="AAAAAA==") == ("BadDigest", 400)
assert code(s3.put_object, Bucket="ckpt", Key="sum/bad", Body=b"x", ChecksumSHA256="47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")[0] == "BadDigest"
assert code(s3.get_object, Bucket="ckpt", Key="sum/bad")[0] == "NoSuchKey"

# Listing: prefix, delimiter, pages.
for i in range(5):
    s3.put_object(Bucket="ckpt", Key=f"run1/step-2/shard-{i}.bin", Body=b"s%d" % i)
listed = s3.list_objects_v2(Bucket="ckpt", Prefix="run1/", Delimiter="/")
assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["run1/step-1/", "run1/step-2/"], listed
assert listed.get("Contents", []) == []
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="ckpt", Prefix="run1/step-2/", PaginationConfig={"PageSize": 2})
keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
assert keys == [f"run1/step-2/shard-{i}.bin" for i in range(5)], keys
every = [o["Key"] for o in s3.list_objects_v2(Bucket="ckpt")["Contents"]]
assert every == sorted(every) and "lock" in every and odd in every

# Multipart: boto3's transfer manager splits a 12 MiB file in 5 MiB parts.
from boto3.s3.transfer import TransferConfig  # noqa: E402
import io  # noqa: E402

big_data = os.urandom(12 << 20)
tc = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=2)
s3.upload_fileobj(io.BytesIO(big_data), "ckpt", "model/weights.safetensors", Config=tc)
assert s3.get_object(Bucket="ckpt", Key="model/weights.safetensors")["Body"].read() == big_data
out = io.BytesIO()
s3.download_fileobj("ckpt", "model/weights.safetensors", out, Config=tc)  # ranged GETs in parallel
assert out.getvalue() == big_data
# By hand: parts out of order, a wrong ETag, an unknown upload, an abort.
up = s3.create_multipart_upload(Bucket="ckpt", Key="mp")["UploadId"]
e1 = s3.upload_part(Bucket="ckpt", Key="mp", UploadId=up, PartNumber=1, Body=b"a" * 100)["ETag"]
e2 = s3.upload_part(Bucket="ckpt", Key="mp", UploadId=up, PartNumber=2, Body=b"b" * 50)["ETag"]
parts = lambda *p: {"Parts": [{"PartNumber": n, "ETag": e} for n, e in p]}  # noqa: E731
assert code(s3.complete_multipart_upload, Bucket="ckpt", Key="mp", UploadId=up, MultipartUpload=parts((2, e2), (1, e1)))[0] == "InvalidPartOrder"
assert code(s3.complete_multipart_upload, Bucket="ckpt", Key="mp", UploadId=up, MultipartUpload=parts((1, e2)))[0] == "InvalidPart"
assert code(s3.upload_part, Bucket="ckpt", Key="mp", UploadId="00ff", PartNumber=1, Body=b"x")[0] == "NoSuchUpload"
assert code(s3.upload_part, Bucket="ckpt", Key="other", UploadId=up, PartNumber=1, Body=b"x")[0] == "NoSuchUpload"
# Every part but the last is at least 5 MiB (S3's rule): nothing is joined, the upload stays.
assert code(s3.complete_multipart_upload, Bucket="ckpt", Key="mp", UploadId=up, MultipartUpload=parts((1, e1), (2, e2)))[0] == "EntityTooSmall"
p1 = os.urandom(5 << 20)
e1 = s3.upload_part(Bucket="ckpt", Key="mp", UploadId=up, PartNumber=1, Body=p1)["ETag"]  # replaces part 1
e3 = s3.upload_part(Bucket="ckpt", Key="mp", UploadId=up, PartNumber=3, Body=b"never listed")["ETag"]
s3.complete_multipart_upload(Bucket="ckpt", Key="mp", UploadId=up, MultipartUpload=parts((1, e1), (2, e2)))
assert s3.get_object(Bucket="ckpt", Key="mp")["Body"].read() == p1 + b"b" * 50
assert s3.get_object(Bucket="ckpt", Key="mp", Range="bytes=5242870-5242889")["Body"].read() == p1[-10:] + b"b" * 10
# A completion retried (its answer lost) is answered again, as S3 does; otherwise a completed
# upload is gone: an abort, a part, a completion once the object changed find no upload.
mp_etag = s3.head_object(Bucket="ckpt", Key="mp")["ETag"]
again = s3.complete_multipart_upload(Bucket="ckpt", Key="mp", UploadId=up, MultipartUpload=parts((1, e1), (2, e2)))
assert again["ETag"] == mp_etag and s3.get_object(Bucket="ckpt", Key="mp")["Body"].read() == p1 + b"b" * 50
assert code(s3.abort_multipart_upload, Bucket="ckpt", Key="mp", UploadId=up)[0] == "NoSuchUpload"
assert code(s3.upload_part, Bucket="ckpt", Key="mp", UploadId=up, PartNumber=4, Body=b"late")[0] == "NoSuchUpload"
# Overwriting and deleting the joined object leave other objects whole.
s3.put_object(Bucket="ckpt", Key="mp", Body=b"small now")
assert s3.get_object(Bucket="ckpt", Key="mp")["Body"].read() == b"small now"
assert code(s3.complete_multipart_upload, Bucket="ckpt", Key="mp", UploadId=up, MultipartUpload=parts((1, e1), (2, e2)))[0] == "NoSuchUpload"
assert s3.get_object(Bucket="ckpt", Key="model/weights.safetensors")["Body"].read() == big_data
# ListMultipartUploads, ListParts, UploadPartCopy (boto3's managed copy of a large object).
up4 = s3.create_multipart_upload(Bucket="ckpt", Key="listed/a")["UploadId"]
up5 = s3.create_multipart_upload(Bucket="ckpt", Key="listed/b")["UploadId"]
s3.upload_part(Bucket="ckpt", Key="listed/a", UploadId=up4, PartNumber=2, Body=b"two")
s3.upload_part(Bucket="ckpt", Key="listed/a", UploadId=up4, PartNumber=1, Body=b"one!")
listed = s3.list_multipart_uploads(Bucket="ckpt", Prefix="listed/")["Uploads"]
assert [(u["Key"], u["UploadId"]) for u in listed] == [("listed/a", up4), ("listed/b", up5)], listed
after = s3.list_multipart_uploads(Bucket="ckpt", Prefix="listed/", KeyMarker="listed/a").get("Uploads", [])
assert [u["Key"] for u in after] == ["listed/b"], after
got = s3.list_parts(Bucket="ckpt", Key="listed/a", UploadId=up4)
assert [(p["PartNumber"], p["Size"]) for p in got["Parts"]] == [(1, 4), (2, 3)] and not got["IsTruncated"], got
page = s3.list_parts(Bucket="ckpt", Key="listed/a", UploadId=up4, MaxParts=1)
assert [p["PartNumber"] for p in page["Parts"]] == [1] and page["IsTruncated"] and page["NextPartNumberMarker"] == 1
assert code(s3.list_parts, Bucket="ckpt", Key="listed/b", UploadId=up4)[0] == "NoSuchUpload"
for u, k in ((up4, "listed/a"), (up5, "listed/b")):
    s3.abort_multipart_upload(Bucket="ckpt", Key=k, UploadId=u)
assert s3.list_multipart_uploads(Bucket="ckpt", Prefix="listed/").get("Uploads", []) == []
copy_tc = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
s3.copy({"Bucket": "ckpt", "Key": "model/weights.safetensors"}, "ckpt", "model/copy.safetensors", Config=copy_tc)
assert s3.get_object(Bucket="ckpt", Key="model/copy.safetensors")["Body"].read() == big_data
up6 = s3.create_multipart_upload(Bucket="ckpt", Key="ranged")["UploadId"]
e6 = s3.upload_part_copy(Bucket="ckpt", Key="ranged", UploadId=up6, PartNumber=1, CopySource={"Bucket": "ckpt", "Key": "model/weights.safetensors"}, CopySourceRange="bytes=100-199")["CopyPartResult"]["ETag"]
# A copy range must lie within the source (S3: InvalidRange), not be cut short to fit.
for bad in (f"bytes=100-{len(big_data)}", "bytes=100-", f"bytes={len(big_data)}-{len(big_data) + 5}"):
    assert code(s3.upload_part_copy, Bucket="ckpt", Key="ranged", UploadId=up6, PartNumber=2, CopySource={"Bucket": "ckpt", "Key": "model/weights.safetensors"}, CopySourceRange=bad)[0] == "InvalidRange", bad
s3.complete_multipart_upload(Bucket="ckpt", Key="ranged", UploadId=up6, MultipartUpload=parts((1, e6)))
assert s3.get_object(Bucket="ckpt", Key="ranged")["Body"].read() == big_data[100:200]
up2 = s3.create_multipart_upload(Bucket="ckpt", Key="gone")["UploadId"]
s3.upload_part(Bucket="ckpt", Key="gone", UploadId=up2, PartNumber=1, Body=b"x")
s3.abort_multipart_upload(Bucket="ckpt", Key="gone", UploadId=up2)
assert code(s3.upload_part, Bucket="ckpt", Key="gone", UploadId=up2, PartNumber=2, Body=b"x")[0] == "NoSuchUpload"
assert code(s3.get_object, Bucket="ckpt", Key="gone")[0] == "NoSuchKey"
# Malformed XML in a complete (the garbage is what gets signed).
up3 = s3.create_multipart_upload(Bucket="ckpt", Key="mx")["UploadId"]
e3 = s3.upload_part(Bucket="ckpt", Key="mx", UploadId=up3, PartNumber=1, Body=b"m")["ETag"]


def garbage(request, **kwargs):
    request.data = b"<CompleteMultipartUpload><Part><PartNumber>one"
    del request.headers["Content-Length"]
    request.headers["Content-Length"] = str(len(request.data))
    for h in [h for h in request.headers.keys() if h.lower() == "content-md5" or h.lower().startswith("x-amz-checksum")]:
        del request.headers[h]


s3.meta.events.register("before-sign.s3.CompleteMultipartUpload", garbage)
assert code(s3.complete_multipart_upload, Bucket="ckpt", Key="mx", UploadId=up3, MultipartUpload=parts((1, e3)))[0] == "MalformedXML"
s3.meta.events.unregister("before-sign.s3.CompleteMultipartUpload", garbage)

# A body that does not hash to what was signed stores nothing.


def tamper(request, **kwargs):
    request.body = b"BYTES"  # after signing: same length, other bytes


s3.meta.events.register("before-send.s3.PutObject", tamper)
assert code(s3.put_object, Bucket="ckpt", Key="tampered", Body=b"bytes")[0] == "XAmzContentSHA256Mismatch"
s3.meta.events.unregister("before-send.s3.PutObject", tamper)
assert code(s3.head_object, Bucket="ckpt", Key="tampered")[1] == 404

# Slow loris: a signed PUT that sends 10 of its 1000 bytes and stalls is cut off after the
# node's idle timeout (2 s here) with RequestTimeout; nothing is stored, the node serves on.
import socket  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

body = b"s" * 1000
req = AWSRequest(method="PUT", url=f"{endpoint}/ckpt/slow", data=body)
S3SigV4Auth(Credentials(ak, sk), "s3", "us-east-1").add_auth(req)
host = urlsplit(endpoint)
sock = socket.create_connection((host.hostname, host.port))
head = f"PUT /ckpt/slow HTTP/1.1\r\nHost: {host.netloc}\r\nContent-Length: 1000\r\n"
head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host")
sock.sendall(head.encode() + b"\r\n" + body[:10])
started = time.time()
sock.settimeout(30)
answer = sock.recv(65536)
assert b"RequestTimeout" in answer and time.time() - started < 20, answer
sock.close()
assert code(s3.head_object, Bucket="ckpt", Key="slow")[1] == 404

# Bad input: path traversal, a wrong secret, an unknown key, an unsigned request, too large.
assert code(s3.put_object, Bucket="ckpt", Key="a/../../etc/passwd", Body=b"x")[0] == "InvalidArgument"
bad = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key="wrong", region_name="us-east-1", config=cfg)
assert code(bad.get_object, Bucket="ckpt", Key="lock") == ("SignatureDoesNotMatch", 403)
nobody = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="AKIDNOBODY", aws_secret_access_key="x", region_name="us-east-1", config=cfg)
assert code(nobody.list_buckets) == ("InvalidAccessKeyId", 403)
import urllib.request, urllib.error  # noqa: E401,E402

try:
    urllib.request.urlopen(f"{endpoint}/ckpt/lock")
    raise AssertionError("an unsigned GET was served")
except urllib.error.HTTPError as e:
    assert e.code == 403 and b"<Code>AccessDenied</Code>" in e.read()
# Presigned URLs (query-string signatures): a GET and a PUT by a client with no keys, V4
# (signature_version="s3v4") and V2 (what boto3 presigns by default).
v2_url = s3.generate_presigned_url("get_object", Params={"Bucket": "ckpt", "Key": "lock"}, ExpiresIn=600)
assert "AWSAccessKeyId=" in v2_url and urllib.request.urlopen(v2_url).read() == b"first"
s3v4 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1",
                    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
url = s3v4.generate_presigned_url("get_object", Params={"Bucket": "ckpt", "Key": "lock"}, ExpiresIn=600)
assert "X-Amz-Signature=" in url and urllib.request.urlopen(url).read() == b"first"
put_url = s3v4.generate_presigned_url("put_object", Params={"Bucket": "ckpt", "Key": "presigned/upload.bin"}, ExpiresIn=600)
urllib.request.urlopen(urllib.request.Request(put_url, data=b"via a presigned PUT", method="PUT"))
assert s3.get_object(Bucket="ckpt", Key="presigned/upload.bin")["Body"].read() == b"via a presigned PUT"


def refused(url, method="GET"):
    try:
        urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"x" if method == "PUT" else None))
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, body.split(b"<Code>")[1].split(b"</Code>")[0].decode()
    raise AssertionError(f"{url} was served")


assert refused(url.replace("Signature=", "Signature=0")[:-1]) == (403, "SignatureDoesNotMatch")
assert refused(url.replace("/ckpt/lock", "/ckpt/lock2")) == (403, "SignatureDoesNotMatch")
assert refused(put_url, "GET") == (403, "SignatureDoesNotMatch"), "a PUT's URL does not GET"
short = s3v4.generate_presigned_url("get_object", Params={"Bucket": "ckpt", "Key": "lock"}, ExpiresIn=1)
short_v2 = s3.generate_presigned_url("get_object", Params={"Bucket": "ckpt", "Key": "lock"}, ExpiresIn=1)
assert refused(v2_url.replace("/ckpt/lock", "/ckpt/lock2")) == (403, "SignatureDoesNotMatch")
time.sleep(2.1)
assert refused(short) == (403, "AccessDenied"), "an expired URL"
assert refused(short_v2) == (403, "AccessDenied"), "an expired V2 URL"
big = int(os.environ["S3_MAX_OBJECT"]) + 1
assert code(s3.put_object, Bucket="ckpt", Key="big", Body=b"z" * big)[0] == "EntityTooLarge"
# A key restricted to other buckets.
other = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="AKIDREADER", aws_secret_access_key="reader-secret", region_name="us-east-1", config=cfg)
assert code(other.get_object, Bucket="ckpt", Key="lock") == ("AccessDenied", 403)
assert other.list_buckets()["Buckets"] == []

# DeleteObjects: several keys at once, one of them refused.
gone = s3.delete_objects(Bucket="ckpt", Delete={"Objects": [{"Key": "copy/of/odd"}, {"Key": "mp"}, {"Key": "a/../b"}]})
assert sorted(d["Key"] for d in gone["Deleted"]) == ["copy/of/odd", "mp"], gone
assert [e["Code"] for e in gone["Errors"]] == ["InvalidArgument"], gone
assert code(s3.head_object, Bucket="ckpt", Key="mp")[1] == 404

# Virtual-host style: Host "ckpt.s3.test" (the node's s3.domain) names the bucket.
vreq = AWSRequest(method="GET", url=f"http://ckpt.s3.test:{host.port}/run1/step-2/shard-4.bin")
S3SigV4Auth(Credentials(ak, sk), "s3", "us-east-1").add_auth(vreq)
sock = socket.create_connection((host.hostname, host.port))
vhead = f"GET /run1/step-2/shard-4.bin HTTP/1.1\r\nConnection: close\r\n"
vhead += "".join(f"{k}: {v}\r\n" for k, v in vreq.headers.items()) + f"Host: ckpt.s3.test:{host.port}\r\n"
sock.sendall(vhead.encode() + b"\r\n")
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"s4"), answer[:300]

# Metadata: the standard headers and x-amz-meta-* are kept and answered, a GET's response-*
# overrides them, the declared checksum is answered with ChecksumMode, a copy keeps or
# replaces them, a multipart upload's are its object's.
std = dict(ContentType="text/csv", CacheControl="no-cache", ContentDisposition="attachment; filename=m.csv",
           ContentEncoding="identity", ContentLanguage="en")
put = s3.put_object(Bucket="ckpt", Key="meta", Body=b"a,b\n", Metadata={"run": "7", "Step": "x"}, ChecksumAlgorithm="SHA256", **std)
h = s3.head_object(Bucket="ckpt", Key="meta")
assert all(h[k] == v for k, v in std.items()) and h["Metadata"] == {"run": "7", "step": "x"}, h
assert "ChecksumSHA256" not in h and s3.head_object(Bucket="ckpt", Key="meta", ChecksumMode="ENABLED")["ChecksumSHA256"] == put["ChecksumSHA256"]
g = s3.get_object(Bucket="ckpt", Key="meta", ResponseContentType="application/json", ResponseCacheControl="max-age=5")
assert g["ContentType"] == "application/json" and g["CacheControl"] == "max-age=5" and g["ContentLanguage"] == "en"
assert s3.get_object(Bucket="ckpt", Key="lock")["ContentType"] == "binary/octet-stream", "none given"
s3.copy_object(Bucket="ckpt", Key="meta-copy", CopySource={"Bucket": "ckpt", "Key": "meta"})
assert s3.head_object(Bucket="ckpt", Key="meta-copy")["Metadata"] == {"run": "7", "step": "x"}
s3.copy_object(Bucket="ckpt", Key="meta-copy", CopySource={"Bucket": "ckpt", "Key": "meta"}, MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"new": "1"})
h = s3.head_object(Bucket="ckpt", Key="meta-copy")
assert h["ContentType"] == "text/plain" and h["Metadata"] == {"new": "1"} and "CacheControl" not in h, h
mu = s3.create_multipart_upload(Bucket="ckpt", Key="meta-mp", ContentType="application/x-tar", Metadata={"parts": "1"})["UploadId"]
me = s3.upload_part(Bucket="ckpt", Key="meta-mp", UploadId=mu, PartNumber=1, Body=b"tar")["ETag"]
s3.complete_multipart_upload(Bucket="ckpt", Key="meta-mp", UploadId=mu, MultipartUpload=parts((1, me)))
h = s3.head_object(Bucket="ckpt", Key="meta-mp")
assert h["ContentType"] == "application/x-tar" and h["Metadata"] == {"parts": "1"}, h
assert code(s3.put_object, Bucket="ckpt", Key="meta", Body=b"x", Metadata={"big": "v" * 2100}) == ("MetadataTooLarge", 400)
assert s3.head_object(Bucket="ckpt", Key="meta")["Metadata"] == {"run": "7", "step": "x"}

# ETags as S3 computes them: the MD5 of the bytes; of the parts' MD5s with -N for a
# multipart object; a part's the same for the same bytes, so a completion naming the first
# upload of a part re-sent with the same bytes goes through.
hexmd5 = lambda b: hashlib.md5(b).hexdigest()  # noqa: E731
assert s3.put_object(Bucket="ckpt", Key="etag", Body=b"bytes")["ETag"] == f'"{hexmd5(b"bytes")}"'
assert s3.head_object(Bucket="ckpt", Key="etag")["ETag"] == f'"{hexmd5(b"bytes")}"'
assert s3.copy_object(Bucket="ckpt", Key="etag-copy", CopySource={"Bucket": "ckpt", "Key": "etag"})["CopyObjectResult"]["ETag"] == f'"{hexmd5(b"bytes")}"'
eu = s3.create_multipart_upload(Bucket="ckpt", Key="etag-mp")["UploadId"]
first_part, last_part = os.urandom(5 << 20), b"last"
sent = s3.upload_part(Bucket="ckpt", Key="etag-mp", UploadId=eu, PartNumber=1, Body=first_part, ChecksumAlgorithm="SHA256")
ea = sent["ETag"]
assert sent["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(first_part).digest()).decode(), "a part's checksum confirmed"
assert ea == f'"{hexmd5(first_part)}"'
assert s3.upload_part(Bucket="ckpt", Key="etag-mp", UploadId=eu, PartNumber=1, Body=first_part)["ETag"] == ea, "the same bytes again"
eb = s3.upload_part(Bucket="ckpt", Key="etag-mp", UploadId=eu, PartNumber=2, Body=last_part)["ETag"]
done = s3.complete_multipart_upload(Bucket="ckpt", Key="etag-mp", UploadId=eu, MultipartUpload=parts((1, ea), (2, eb)))
whole = hashlib.md5(hashlib.md5(first_part).digest() + hashlib.md5(last_part).digest()).hexdigest()
assert done["ETag"] == f'"{whole}-2"' == s3.head_object(Bucket="ckpt", Key="etag-mp")["ETag"], done["ETag"]
# partNumber reads: each part of a multipart object as uploaded; an object in one piece is
# its one part.
got = s3.get_object(Bucket="ckpt", Key="etag-mp", PartNumber=1)
assert got["Body"].read() == first_part and got["PartsCount"] == 2, got
assert got["ContentRange"] == f"bytes 0-{len(first_part) - 1}/{len(first_part) + 4}", got["ContentRange"]
assert s3.get_object(Bucket="ckpt", Key="etag-mp", PartNumber=2)["Body"].read() == last_part
assert s3.head_object(Bucket="ckpt", Key="etag-mp", PartNumber=2)["ContentLength"] == 4
assert code(s3.get_object, Bucket="ckpt", Key="etag-mp", PartNumber=3) == ("InvalidPartNumber", 416)
assert s3.get_object(Bucket="ckpt", Key="etag", PartNumber=1)["Body"].read() == b"bytes"
assert code(s3.get_object, Bucket="ckpt", Key="etag", PartNumber=2) == ("InvalidPartNumber", 416)
assert code(s3.get_object, Bucket="ckpt", Key="etag", PartNumber=1, Range="bytes=0-1")[0] == "InvalidRequest"

# Content-MD5 (the only body check of an unsigned payload): a wrong one stores nothing.
md5 = lambda b: base64.b64encode(hashlib.md5(b).digest()).decode()  # noqa: E731
s3.put_object(Bucket="ckpt", Key="md5", Body=b"checked", ContentMD5=md5(b"checked"))
assert code(s3.put_object, Bucket="ckpt", Key="md5", Body=b"changed", ContentMD5=md5(b"other")) == ("BadDigest", 400)
assert code(s3.put_object, Bucket="ckpt", Key="md5", Body=b"changed", ContentMD5="bm90IGFuIG1kNQ==") == ("InvalidDigest", 400)
assert s3.get_object(Bucket="ckpt", Key="md5")["Body"].read() == b"checked"
# Bucket names S3 refuses; every error names its request, in the header and the document.
for bad in ("192.168.5.4", "foo.-bar", "xn--abc", "sthree-b", "b--ol-s3"):
    assert code(s3.create_bucket, Bucket=bad) == ("InvalidBucketName", 400), bad
try:
    s3.get_object(Bucket="ckpt", Key="absent")
except ClientError as e:
    meta = e.response["ResponseMetadata"]
    assert len(meta["RequestId"]) == 16 and meta["HTTPHeaders"]["x-amz-request-id"] == meta["RequestId"], meta
assert len(s3.head_bucket(Bucket="ckpt")["ResponseMetadata"]["RequestId"]) == 16

# Deletes; a bucket with objects is not deleted.
assert code(s3.delete_bucket, Bucket="ckpt")[0] == "BucketNotEmpty"
s3.delete_object(Bucket="ckpt", Key="lock")
assert code(s3.get_object, Bucket="ckpt", Key="lock")[0] == "NoSuchKey"
print("ok")
sys.stdout.flush()
