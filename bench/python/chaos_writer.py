"""A writer of `kvtier-bench chaos`: uploads local files as a user would, through the
`kvtier://` fsspec filesystem or through S3 (boto3), one job at a time.

Jobs come as JSON lines on stdin: {"id", "via": "fsspec" | "s3", "address", "namespace" or
"bucket", "path", "file"}; each answers one JSON line on stdout: {"id", "outcome":
"acked" | "failed" | "unknown", "error"}. "failed" means the write definitely did not happen
(kvtier said so, or no request reached it); "unknown" that it may have (kvtier's
OutcomeUnknownError, S3's 500, a connection broken mid-request). Nothing is retried here:
the bench decides.
"""

import json
import sys

import boto3
import botocore.config
import botocore.exceptions
import fsspec

import kvtier

S3_KEY, S3_SECRET = sys.argv[1], sys.argv[2]
# No retries: every attempt's outcome is the bench's to see. Timeouts long enough for a
# node stopped past its lease to come back.
S3_CONFIG = botocore.config.Config(
    retries={"total_max_attempts": 1},
    connect_timeout=5,
    read_timeout=60,
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
)
PIECE = 4 << 20


def via_fsspec(job):
    fs = fsspec.filesystem("kvtier", address=job["address"], durability="write_back", skip_instance_cache=True)
    url = "kvtier://" + job["namespace"].replace("/", "%2F") + "/" + job["path"]
    with open(job["file"], "rb") as src, fs.open(url, "wb") as dst:
        while piece := src.read(PIECE):
            dst.write(piece)


def via_s3(job):
    s3 = boto3.client(
        "s3",
        endpoint_url="http://" + job["address"],
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
        config=S3_CONFIG,
    )
    with open(job["file"], "rb") as body:
        try:
            s3.put_object(Bucket=job["bucket"], Key=job["path"], Body=body)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise
            s3.create_bucket(Bucket=job["bucket"])  # the first write makes it
            body.seek(0)
            s3.put_object(Bucket=job["bucket"], Key=job["path"], Body=body)


def outcome(job):
    try:
        (via_fsspec if job["via"] == "fsspec" else via_s3)(job)
        return "acked", ""
    except kvtier.OutcomeUnknownError as e:
        return "unknown", str(e)
    except kvtier.KvtierError as e:
        return "failed", str(e)
    except botocore.exceptions.ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        # S3's 500 may have written the object; a 503 or a 4xx did not.
        return ("unknown" if status == 500 else "failed"), str(e)
    except botocore.exceptions.EndpointConnectionError as e:
        return "failed", str(e)  # no connection: nothing was sent
    except Exception as e:  # a connection broken mid-request, a timeout: it may have landed
        return "unknown", f"{type(e).__name__}: {e}"


for line in sys.stdin:
    job = json.loads(line)
    result, error = outcome(job)
    print(json.dumps({"id": job["id"], "outcome": result, "error": error[-500:]}), flush=True)
