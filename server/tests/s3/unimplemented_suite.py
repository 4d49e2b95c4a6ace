"""Every S3 operation kvtier does not implement, sent by boto3 as a client sends it: each must
be answered 501 NotImplemented and change nothing (the object keeps its bytes, the buckets
stay, the listing is the same). The router once ran a different operation instead: PUT
?tagging overwrote the object with the tagging XML, PUT ?acl with an empty body truncated
it, DELETE ?tagging or ?versionId deleted it, DELETE /bucket?tagging deleted the bucket,
GET ?acl answered the object's body. Prints "ok" when every check passed, else the calls
that were not refused as they must be."""

import datetime
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, ak, sk = os.environ["S3_ENDPOINT"], os.environ["S3_KEY"], os.environ["S3_SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1", config=cfg)

B, EMPTY, K, BODY = "ops", "ops-empty", "run1/k.bin", b"the original bytes"
s3.create_bucket(Bucket=B)
s3.create_bucket(Bucket=EMPTY)
s3.put_object(Bucket=B, Key=K, Body=BODY)

obj = {"Bucket": B, "Key": K}
until = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
csv = {"CSV": {}}
CALLS = [
    # On an object.
    ("PutObjectTagging", s3.put_object_tagging, dict(obj, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})),
    ("GetObjectTagging", s3.get_object_tagging, obj),
    ("DeleteObjectTagging", s3.delete_object_tagging, obj),
    ("PutObjectAcl", s3.put_object_acl, dict(obj, ACL="private")),
    ("GetObjectAcl", s3.get_object_acl, obj),
    ("GetObjectAttributes", s3.get_object_attributes, dict(obj, ObjectAttributes=["ETag", "ObjectSize"])),
    ("PutObjectLegalHold", s3.put_object_legal_hold, dict(obj, LegalHold={"Status": "ON"})),
    ("GetObjectLegalHold", s3.get_object_legal_hold, obj),
    ("PutObjectRetention", s3.put_object_retention, dict(obj, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})),
    ("GetObjectRetention", s3.get_object_retention, obj),
    ("GetObjectTorrent", s3.get_object_torrent, obj),
    ("RestoreObject", s3.restore_object, dict(obj, RestoreRequest={"Days": 1})),
    ("SelectObjectContent", s3.select_object_content,
     dict(obj, Expression="select * from s3object", ExpressionType="SQL", InputSerialization=csv, OutputSerialization=csv)),
    ("GetObject of a version", s3.get_object, dict(obj, VersionId="3HL4kqtJlcpXroDTDmJ")),
    ("HeadObject of a version", s3.head_object, dict(obj, VersionId="3HL4kqtJlcpXroDTDmJ")),
    ("DeleteObject of a version", s3.delete_object, dict(obj, VersionId="3HL4kqtJlcpXroDTDmJ")),
]
for bucket in (B, EMPTY):
    b = {"Bucket": bucket}
    rule = {"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}
    CALLS += [
        ("PutBucketTagging", s3.put_bucket_tagging, dict(b, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})),
        ("GetBucketTagging", s3.get_bucket_tagging, b),
        ("DeleteBucketTagging", s3.delete_bucket_tagging, b),
        ("PutBucketCors", s3.put_bucket_cors,
         dict(b, CORSConfiguration={"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]})),
        ("GetBucketCors", s3.get_bucket_cors, b),
        ("DeleteBucketCors", s3.delete_bucket_cors, b),
        ("PutBucketPolicy", s3.put_bucket_policy, dict(b, Policy='{"Version": "2012-10-17", "Statement": []}')),
        ("GetBucketPolicy", s3.get_bucket_policy, b),
        ("DeleteBucketPolicy", s3.delete_bucket_policy, b),
        ("GetBucketPolicyStatus", s3.get_bucket_policy_status, b),
        ("PutBucketLifecycleConfiguration", s3.put_bucket_lifecycle_configuration,
         dict(b, LifecycleConfiguration={"Rules": [rule]})),
        ("GetBucketLifecycleConfiguration", s3.get_bucket_lifecycle_configuration, b),
        ("DeleteBucketLifecycle", s3.delete_bucket_lifecycle, b),
        ("PutBucketVersioning", s3.put_bucket_versioning, dict(b, VersioningConfiguration={"Status": "Enabled"})),
        ("GetBucketVersioning", s3.get_bucket_versioning, b),
        ("ListObjectVersions", s3.list_object_versions, b),
        ("PutBucketAcl", s3.put_bucket_acl, dict(b, ACL="private")),
        ("GetBucketAcl", s3.get_bucket_acl, b),
        ("PutBucketEncryption", s3.put_bucket_encryption,
         dict(b, ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})),
        ("GetBucketEncryption", s3.get_bucket_encryption, b),
        ("DeleteBucketEncryption", s3.delete_bucket_encryption, b),
        ("PutBucketWebsite", s3.put_bucket_website, dict(b, WebsiteConfiguration={"IndexDocument": {"Suffix": "i.html"}})),
        ("GetBucketWebsite", s3.get_bucket_website, b),
        ("DeleteBucketWebsite", s3.delete_bucket_website, b),
        ("PutPublicAccessBlock", s3.put_public_access_block,
         dict(b, PublicAccessBlockConfiguration={"BlockPublicAcls": True})),
        ("GetPublicAccessBlock", s3.get_public_access_block, b),
        ("DeletePublicAccessBlock", s3.delete_public_access_block, b),
        ("PutBucketOwnershipControls", s3.put_bucket_ownership_controls,
         dict(b, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})),
        ("GetBucketOwnershipControls", s3.get_bucket_ownership_controls, b),
        ("DeleteBucketOwnershipControls", s3.delete_bucket_ownership_controls, b),
        ("PutBucketLogging", s3.put_bucket_logging, dict(b, BucketLoggingStatus={})),
        ("GetBucketLogging", s3.get_bucket_logging, b),
        ("PutBucketNotificationConfiguration", s3.put_bucket_notification_configuration,
         dict(b, NotificationConfiguration={})),
        ("GetBucketNotificationConfiguration", s3.get_bucket_notification_configuration, b),
        ("PutBucketRequestPayment", s3.put_bucket_request_payment,
         dict(b, RequestPaymentConfiguration={"Payer": "Requester"})),
        ("GetBucketRequestPayment", s3.get_bucket_request_payment, b),
        ("PutBucketAccelerateConfiguration", s3.put_bucket_accelerate_configuration,
         dict(b, AccelerateConfiguration={"Status": "Enabled"})),
        ("GetBucketAccelerateConfiguration", s3.get_bucket_accelerate_configuration, b),
        ("PutObjectLockConfiguration", s3.put_object_lock_configuration,
         dict(b, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})),
        ("GetObjectLockConfiguration", s3.get_object_lock_configuration, b),
        ("GetBucketReplication", s3.get_bucket_replication, b),
        ("DeleteBucketReplication", s3.delete_bucket_replication, b),
        ("GetBucketAnalyticsConfiguration", s3.get_bucket_analytics_configuration, dict(b, Id="a")),
        ("DeleteBucketAnalyticsConfiguration", s3.delete_bucket_analytics_configuration, dict(b, Id="a")),
        ("GetBucketMetricsConfiguration", s3.get_bucket_metrics_configuration, dict(b, Id="m")),
        ("DeleteBucketMetricsConfiguration", s3.delete_bucket_metrics_configuration, dict(b, Id="m")),
        ("GetBucketInventoryConfiguration", s3.get_bucket_inventory_configuration, dict(b, Id="i")),
        ("DeleteBucketInventoryConfiguration", s3.delete_bucket_inventory_configuration, dict(b, Id="i")),
        ("GetBucketIntelligentTieringConfiguration", s3.get_bucket_intelligent_tiering_configuration, dict(b, Id="t")),
        ("DeleteBucketIntelligentTieringConfiguration", s3.delete_bucket_intelligent_tiering_configuration,
         dict(b, Id="t")),
    ]


def untouched():
    """What must hold after each refused call: None, or what changed."""
    got = s3.get_object(Bucket=B, Key=K)["Body"].read()
    if got != BODY:
        return f"the object now holds {got[:60]!r}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=B).get("Contents", [])]
    if keys != [K]:
        return f"the bucket lists {keys}"
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    if buckets != [B, EMPTY]:
        return f"the buckets are {buckets}"
    return None


wrong = []
for name, call, params in CALLS:
    try:
        call(**params)
        wrong.append(f"{name} on {params['Bucket']}: served")
    except ClientError as e:
        status, code = e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
        # A HEAD's answer has no body: botocore names the error by its status.
        if status != 501 or code not in ("NotImplemented", "501"):
            wrong.append(f"{name} on {params['Bucket']}: {status} {code}")
    changed = untouched()
    if changed:
        wrong.append(f"{name} on {params['Bucket']}: {changed}")
        break

# What kvtier implements still works beside them: an unversioned bucket's "null" version
# is the object itself.
if not wrong and s3.get_object(Bucket=B, Key=K, VersionId="null")["Body"].read() != BODY:
    wrong.append("GetObject of version null: not the object")
print(f"{len(CALLS)} calls of unimplemented operations sent", file=sys.stderr)
if wrong:
    print("\n".join(wrong))
    sys.exit(1)
print("ok")
