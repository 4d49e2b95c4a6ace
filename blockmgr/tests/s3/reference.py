"""What the suites share when they run against a reference server instead of kvtier
(S3_REFERENCE=moto): where that server is known to differ from S3's documentation, a check
is skipped and the difference printed, so the test says which."""

import os
import sys

REFERENCE = os.environ.get("S3_REFERENCE")


def differs(why):
    """Whether the reference server is known to differ from S3's documentation here."""
    if REFERENCE == "moto":
        print(f"moto differs from S3's documentation: {why}", file=sys.stderr)
        return True
    return False
