"""The AWS CLI (PyPI `awscli`, its own botocore) against kvtier's S3 endpoint, as a user
types it: `aws s3 cp` in and out (a file large enough for its multipart upload and ranged
download), `ls`, `sync` twice (the second uploads nothing), `rm --recursive`, and `s3api`
calls: head-object (the ETag is the MD5 the CLI's own checks compare), put-object-acl
(answered 501 and changing nothing: it once truncated the object), get-object with a part.
Prints "ok" when every check passed; an assertion names what did not."""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

aws, endpoint = os.environ["AWS"], os.environ["S3_ENDPOINT"]
env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["S3_KEY"], AWS_SECRET_ACCESS_KEY=os.environ["S3_SECRET"],
           AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")


def run(*args, ok=True):
    """`aws --endpoint-url E <args>`: its stdout (`ok`), or its exit status and stderr."""
    p = subprocess.run([aws, "--endpoint-url", endpoint, *args], env=env, capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, f"aws {' '.join(args)}: {p.returncode}\n{p.stderr}"
        return p.stdout
    assert p.returncode != 0, f"aws {' '.join(args)} succeeded"
    return p.returncode, p.stderr


work = tempfile.mkdtemp()
big = os.path.join(work, "big.bin")
data = os.urandom((9 << 20) + 123)  # past the CLI's 8 MiB multipart threshold
open(big, "wb").write(data)

run("s3", "mb", "s3://cli")
run("s3", "cp", big, "s3://cli/ckpt/big.bin")
back = os.path.join(work, "back.bin")
run("s3", "cp", "s3://cli/ckpt/big.bin", back)
assert open(back, "rb").read() == data, "the multipart upload read back through ranged GETs"
head = json.loads(run("s3api", "head-object", "--bucket", "cli", "--key", "ckpt/big.bin"))
assert head["ContentLength"] == len(data) and head["ETag"].endswith('-2"'), head

small = os.path.join(work, "tree")
os.makedirs(os.path.join(small, "a"))
for name, body in [("a/one.txt", b"one"), ("two.txt", b"two"), ("a/three.txt", b"three")]:
    open(os.path.join(small, name), "wb").write(body)
    # Written a minute ago: sync compares the file's time with LastModified, which S3 gives
    # in whole seconds (a file written in the second of its upload would look newer).
    os.utime(os.path.join(small, name), (time.time() - 60, time.time() - 60))
run("s3", "sync", small, "s3://cli/tree")
listed = run("s3", "ls", "--recursive", "s3://cli/tree/")
assert sorted(line.split()[-1] for line in listed.splitlines()) == ["tree/a/one.txt", "tree/a/three.txt", "tree/two.txt"], listed
again = run("s3", "sync", small, "s3://cli/tree")
assert "upload:" not in again, f"a second sync uploaded again:\n{again}"
one = json.loads(run("s3api", "head-object", "--bucket", "cli", "--key", "tree/two.txt"))
assert one["ETag"] == f'"{hashlib.md5(b"two").hexdigest()}"', one

# An operation kvtier does not implement is refused and changes nothing.
status, err = run("s3api", "put-object-acl", "--bucket", "cli", "--key", "tree/two.txt", "--acl", "private", ok=False)
assert "NotImplemented" in err, err
run("s3", "cp", "s3://cli/tree/two.txt", os.path.join(work, "two.back"))
assert open(os.path.join(work, "two.back"), "rb").read() == b"two", "the object kept its bytes"

part = os.path.join(work, "part.bin")
run("s3api", "get-object", "--bucket", "cli", "--key", "ckpt/big.bin", "--part-number", "2", part)
assert open(part, "rb").read() == data[8 << 20:], "part 2 of the CLI's upload (8 MiB parts)"

run("s3", "rm", "--recursive", "s3://cli/")
assert run("s3", "ls", "--recursive", "s3://cli/") == ""
run("s3", "rb", "s3://cli")
print("ok")
sys.stdout.flush()
