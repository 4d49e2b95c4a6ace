"""What the suites share: how a refusal is read, and what they do when they run against a
reference server instead of kvtier (S3_REFERENCE=moto): where that server is known to differ
from S3's documentation, a check is skipped and the difference printed, so the test says
which."""

import os
import sys

from botocore.exceptions import ClientError

REFERENCE = os.environ.get("S3_REFERENCE")


def differs(why):
    """Whether the reference server is known to differ from S3's documentation here."""
    if REFERENCE == "moto":
        print(f"moto differs from S3's documentation: {why}", file=sys.stderr)
        return True
    return False


def fails(fn, **kw):
    """The (status, code) a call is refused with."""
    try:
        fn(**kw)
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    raise AssertionError(f"{fn.__name__}({kw}) was served")
