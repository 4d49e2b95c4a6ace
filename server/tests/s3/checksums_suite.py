"""Multipart uploads' checksums through boto3, as S3 documents them: CreateMultipartUpload's
ChecksumAlgorithm and ChecksumType (with S3's defaults and refusals), each part's checksum
(sent by boto3, or computed by the server when a request sends none), ListParts and the
completion answering them, a completion listing a wrong part checksum (InvalidPart) or none
for a composite upload (InvalidRequest), a wrong whole-object checksum (BadDigest), and
HeadObject/GetObject with ChecksumMode answering the object's checksum: COMPOSITE (the
checksum of the parts' checksums, "-N") or FULL_OBJECT (the whole object's CRC). Each refused
completion leaves the upload to be completed. Prints "ok" when every check passed; an
assertion names what did not."""

import base64
import hashlib
import os
import zlib

import boto3
from awscrt import checksums
from botocore.config import Config
from reference import differs, fails  # run against moto as a reference: S3_REFERENCE=moto

endpoint, ak, sk = os.environ["S3_ENDPOINT"], os.environ["S3_KEY"], os.environ["S3_SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1", config=cfg)
# A client that sends and checks a checksum only where S3 requires one: parts arrive
# without any, and reads are not checked.
bare_cfg = Config(
    s3={"addressing_style": "path"},
    retries={"max_attempts": 1},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
bare = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1", config=bare_cfg)

B = "sums"
s3.create_bucket(Bucket=B)


def b64(raw):
    return base64.b64encode(raw).decode()


CRC = {
    "CRC32": lambda d: b64(zlib.crc32(d).to_bytes(4, "big")),
    "CRC32C": lambda d: b64(checksums.crc32c(d).to_bytes(4, "big")),
    "CRC64NVME": lambda d: b64(checksums.crc64nvme(d).to_bytes(8, "big")),
    "SHA1": lambda d: b64(hashlib.sha1(d).digest()),
    "SHA256": lambda d: b64(hashlib.sha256(d).digest()),
}


def composite(algorithm, parts):
    raw = b"".join(base64.b64decode(CRC[algorithm](p)) for p in parts)
    return f"{CRC[algorithm](raw)}-{len(parts)}"


PARTS = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(1234)]
WHOLE = b"".join(PARTS)


def upload(client, key, algorithm, kind=None, send_part_sums=True):
    """An upload of PARTS: its id, and each part's (number, ETag, checksum answered)."""
    extra = {"ChecksumType": kind} if kind else {}
    created = s3.create_multipart_upload(Bucket=B, Key=key, ChecksumAlgorithm=algorithm, **extra)
    assert created["ChecksumAlgorithm"] == algorithm, created
    want_kind = kind or ("FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE")
    if not differs("CreateMultipartUpload answers no x-amz-checksum-type"):
        assert created.get("ChecksumType") == want_kind, created
    uid, done = created["UploadId"], []
    for n, body in enumerate(PARTS, 1):
        sums = {"ChecksumAlgorithm": algorithm} if send_part_sums else {}
        answer = client.upload_part(Bucket=B, Key=key, UploadId=uid, PartNumber=n, Body=body, **sums)
        done.append((n, answer["ETag"], answer.get(f"Checksum{algorithm}")))
    return uid, done


def listed(algorithm, done, drop=None, wrong=None):
    parts = []
    for n, etag, _ in done:
        part = {"PartNumber": n, "ETag": etag}
        if n != drop:
            part[f"Checksum{algorithm}"] = CRC[algorithm](b"wrong") if n == wrong else CRC[algorithm](PARTS[n - 1])
        parts.append(part)
    return {"Parts": parts}


for algorithm, kind in [("CRC32", None), ("CRC32C", "FULL_OBJECT"), ("CRC64NVME", None), ("SHA256", "COMPOSITE"), ("CRC32", "FULL_OBJECT")]:
    key = f"{algorithm}-{kind}"
    full = kind == "FULL_OBJECT" or algorithm == "CRC64NVME"
    uid, done = upload(s3, key, algorithm, kind)
    for n, _, answered in done:
        assert answered == CRC[algorithm](PARTS[n - 1]), (key, n, answered)
    parts = s3.list_parts(Bucket=B, Key=key, UploadId=uid)
    if not differs("ListParts answers no ChecksumAlgorithm or part checksums"):
        assert parts["ChecksumAlgorithm"] == algorithm, parts
        assert [p.get(f"Checksum{algorithm}") for p in parts["Parts"]] == [CRC[algorithm](p) for p in PARTS], parts

    # A wrong part checksum listed: InvalidPart; a composite completion without one: InvalidRequest.
    if not differs("a completion listing a wrong part checksum is served"):
        assert fails(s3.complete_multipart_upload, Bucket=B, Key=key, UploadId=uid, MultipartUpload=listed(algorithm, done, wrong=2)) == (400, "InvalidPart"), key
    if not full and not differs("a composite completion without the parts' checksums is served"):
        assert fails(s3.complete_multipart_upload, Bucket=B, Key=key, UploadId=uid, MultipartUpload=listed(algorithm, done, drop=1)) == (400, "InvalidRequest"), key
    want = CRC[algorithm](WHOLE) if full else composite(algorithm, PARTS)
    if full and not differs("a completion's wrong whole-object checksum is served"):
        wrong = {f"Checksum{algorithm}": CRC[algorithm](b"not the object"), "ChecksumType": "FULL_OBJECT"}
        got = fails(s3.complete_multipart_upload, Bucket=B, Key=key, UploadId=uid, MultipartUpload=listed(algorithm, done), **wrong)
        assert got == (400, "BadDigest"), (key, got)
    assert fails(s3.get_object, Bucket=B, Key=key) == (404, "NoSuchKey"), "a refused completion made no object"

    # Full-object completions may list the parts' checksums or not; composite ones must.
    listing = listed(algorithm, done, drop=1 if full else None)
    whole = {f"Checksum{algorithm}": want, "ChecksumType": "FULL_OBJECT"} if full else {}
    completed = s3.complete_multipart_upload(Bucket=B, Key=key, UploadId=uid, MultipartUpload=listing, **whole)
    if not differs("CompleteMultipartUpload answers no object checksum"):
        assert completed.get(f"Checksum{algorithm}") == want, (key, completed)
        assert completed.get("ChecksumType") == ("FULL_OBJECT" if full else "COMPOSITE"), completed
    head = s3.head_object(Bucket=B, Key=key, ChecksumMode="ENABLED")
    if not differs("HeadObject answers no multipart checksum"):
        assert head.get(f"Checksum{algorithm}") == want, (key, head)
        assert head.get("ChecksumType") == ("FULL_OBJECT" if full else "COMPOSITE"), (key, head)
    # botocore checks a full-object checksum against the body it reads (a composite one not).
    reader = bare if differs("GetObject answers a checksum that is not the multipart object's") else s3
    assert reader.get_object(Bucket=B, Key=key)["Body"].read() == WHOLE, key

# ListMultipartUploads names an upload's checksum (every upload above is completed).
listed_upload = s3.create_multipart_upload(Bucket=B, Key="listed", ChecksumAlgorithm="SHA1")["UploadId"]
uploads = s3.list_multipart_uploads(Bucket=B)["Uploads"]
assert [u["UploadId"] for u in uploads] == [listed_upload], uploads
if not differs("ListMultipartUploads answers no ChecksumAlgorithm"):
    assert (uploads[0].get("ChecksumAlgorithm"), uploads[0].get("ChecksumType")) == ("SHA1", "COMPOSITE"), uploads
s3.abort_multipart_upload(Bucket=B, Key="listed", UploadId=listed_upload)

# A client that sends no part checksums: the server computes each with the upload's algorithm
# (S3 does), so the composite completion boto3 then lists still matches.
uid, done = upload(bare, "bare", "CRC32C", send_part_sums=False)
if not differs("a part sent without a checksum is answered none"):
    assert [a for _, _, a in done] == [CRC["CRC32C"](p) for p in PARTS], done
    s3.complete_multipart_upload(Bucket=B, Key="bare", UploadId=uid, MultipartUpload=listed("CRC32C", done))
    head = s3.head_object(Bucket=B, Key="bare", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32C"] == composite("CRC32C", PARTS), head

# A part whose checksum is of another algorithm than the upload's is refused, and stored not.
created = s3.create_multipart_upload(Bucket=B, Key="mismatch", ChecksumAlgorithm="CRC32")
if not differs("a part of another checksum algorithm than its upload's is stored"):
    got = fails(s3.upload_part, Bucket=B, Key="mismatch", UploadId=created["UploadId"], PartNumber=1, Body=b"x", ChecksumAlgorithm="SHA1")
    assert got == (400, "InvalidRequest"), got
    assert s3.list_parts(Bucket=B, Key="mismatch", UploadId=created["UploadId"]).get("Parts", []) == []

# UploadPartCopy into an upload with an algorithm: the copied part gets its checksum too.
s3.put_object(Bucket=B, Key="source", Body=PARTS[2])
created = s3.create_multipart_upload(Bucket=B, Key="copied", ChecksumAlgorithm="CRC32")
copied = s3.upload_part_copy(Bucket=B, Key="copied", UploadId=created["UploadId"], PartNumber=1, CopySource={"Bucket": B, "Key": "source"}, CopySourceRange="bytes=0-99")
if not differs("UploadPartCopy answers no checksum"):
    assert copied["CopyPartResult"].get("ChecksumCRC32") == CRC["CRC32"](PARTS[2][:100]), copied

# S3's refusals of CreateMultipartUpload: a type without an algorithm, a SHA of the full
# object, a composite CRC-64/NVME.
for kw in ({"ChecksumType": "COMPOSITE"}, {"ChecksumAlgorithm": "SHA1", "ChecksumType": "FULL_OBJECT"}, {"ChecksumAlgorithm": "CRC64NVME", "ChecksumType": "COMPOSITE"}):
    if not differs(f"CreateMultipartUpload with {kw} is served"):
        assert fails(s3.create_multipart_upload, Bucket=B, Key="refused", **kw) == (400, "InvalidRequest"), kw

# An object put in one piece answers its checksum as of the full object.
s3.put_object(Bucket=B, Key="single", Body=b"single", ChecksumAlgorithm="CRC32")
head = s3.head_object(Bucket=B, Key="single", ChecksumMode="ENABLED")
assert head["ChecksumCRC32"] == CRC["CRC32"](b"single"), head
if not differs("HeadObject answers no ChecksumType"):
    assert head.get("ChecksumType") == "FULL_OBJECT", head

print("ok")
