"""Fetch Scalar's browser bundle from the npm registry, so /scalar works without a CDN.

`make` runs `python -m backend.scalar_bundle`: plain HTTPS and Python's own tar, no npm needed.
The tarball is checked against the registry's published sha512 for the pinned version before
anything is unpacked. The bundle is never committed (.gitignore).
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.72.1"
TARBALL = f"https://registry.npmjs.org/@scalar/api-reference/-/api-reference-{VERSION}.tgz"
# `dist.integrity` of the version in the registry's metadata.
INTEGRITY = (
    "sha512-XpEJ0rfc/cXbCrR+iC4kK0o/WwX2dTtGQbT049OlPKAH"
    "D6IMIFdTeGz2r+M27P2EDWKyUITRm/NzlP8z2pw/Ow=="
)
MEMBER = "package/dist/browser/standalone.js"
DESTINATION = Path(__file__).parent / "static" / "scalar" / "standalone.js"


def fetch(destination: Path = DESTINATION) -> None:
    with urllib.request.urlopen(TARBALL, timeout=60) as response:
        tarball: bytes = response.read()
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if f"sha512-{digest}" != INTEGRITY:
        raise SystemExit(f"{TARBALL} does not match its published sha512; not installed")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise SystemExit(f"{MEMBER} is missing from {TARBALL}")
        bundle = member.read()
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(bundle)


def main() -> None:
    if DESTINATION.is_file():
        return
    try:
        fetch()
    except OSError as error:
        # Offline is not fatal: /scalar then loads the bundle from the CDN.
        sys.stderr.write(f"Scalar bundle not fetched ({error}); /scalar will use the CDN\n")
        return
    sys.stdout.write(f"Scalar {VERSION} bundle installed for offline /scalar\n")


if __name__ == "__main__":
    main()
