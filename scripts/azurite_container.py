"""Creates a container in Azurite (the emulator's account and key, Shared Key auth): what
`az storage container create` does, with the standard library only. Exit 0 when the
container exists afterwards (created now or before)."""

import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

endpoint, container = sys.argv[1], sys.argv[2]
date, version = formatdate(usegmt=True), "2021-08-06"
resource = f"/{ACCOUNT}{urllib.parse.urlparse(endpoint).path}/{container}\nrestype:container"
to_sign = "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + resource
signature = base64.b64encode(hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(
    f"{endpoint}/{container}?restype=container",
    method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {ACCOUNT}:{signature}"},
)
try:
    urllib.request.urlopen(request, timeout=2)
except urllib.error.HTTPError as e:
    if e.code != 409:  # 409: it already exists
        sys.exit(f"create container: HTTP {e.code}: {e.read()[:300]!r}")
