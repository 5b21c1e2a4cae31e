"""The API reference pages' browser assets: Scalar's bundle and Swagger UI's, pinned.

`make` runs `python -m backend.reference_assets`: each pinned package's tarball comes from the
npm registry (plain HTTPS and Python's own tar, no npm needed), is checked against the
registry's published sha512 before anything is unpacked, and the files the pages load are
written under backend/static/ (never committed). Without them the pages load the same files
from a CDN, at the pinned version and with Subresource Integrity, so a CDN can serve nothing
else.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

STATIC = Path(__file__).parent / "static"
CDN = "https://cdn.jsdelivr.net/npm"


@dataclass(frozen=True, slots=True)
class NpmFile:
    """One file of a pinned npm package version."""

    package: str
    version: str
    # `dist.integrity` of the version in the registry's metadata: the tarball's sha512.
    tarball_integrity: str
    # Path inside the package, and where `make` puts it (relative to backend/static/).
    path: str
    installed_as: str
    # The file's own sha384, for the `integrity` attribute of the CDN fallback.
    sri: str

    @property
    def tarball_url(self) -> str:
        name = self.package.rsplit("/", 1)[-1]
        return f"https://registry.npmjs.org/{self.package}/-/{name}-{self.version}.tgz"

    @property
    def cdn_url(self) -> str:
        return f"{CDN}/{self.package}@{self.version}/{self.path}"


SCALAR_JS = NpmFile(
    package="@scalar/api-reference",
    version="1.72.1",
    tarball_integrity=(
        "sha512-XpEJ0rfc/cXbCrR+iC4kK0o/WwX2dTtGQbT049OlPKAH"
        "D6IMIFdTeGz2r+M27P2EDWKyUITRm/NzlP8z2pw/Ow=="
    ),
    path="dist/browser/standalone.js",
    installed_as="scalar/standalone.js",
    sri="sha384-U11tb2XnKvmwt8RlTvnwUnYgrN+ur4Xyh9htLhjajWNR/Oyl5AX5DEz00qRmlrmK",
)
_SWAGGER_UI = {
    "package": "swagger-ui-dist",
    "version": "5.36.0",
    "tarball_integrity": (
        "sha512-Lt6/Kb0gXmLdiabLhvso4VdJP9V7qJWB0zh0gzeXUV3+"
        "CMOTzMmvpJRSXN7EAjfwixwmoi9ezDbLHiexC7lA9A=="
    ),
}
SWAGGER_JS = NpmFile(
    **_SWAGGER_UI,
    path="swagger-ui-bundle.js",
    installed_as="swagger-ui/swagger-ui-bundle.js",
    sri="sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+",
)
SWAGGER_CSS = NpmFile(
    **_SWAGGER_UI,
    path="swagger-ui.css",
    installed_as="swagger-ui/swagger-ui.css",
    sri="sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc",
)
ALL_FILES = (SCALAR_JS, SWAGGER_JS, SWAGGER_CSS)


def digest(algorithm: str, content: bytes) -> str:
    """`<algorithm>-<base64 digest>`, as npm's integrity and the HTML integrity attribute."""
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, content).digest()).decode()}"


def fetch(files: tuple[NpmFile, ...] = ALL_FILES, root: Path = STATIC) -> None:
    """Download each package once, check it, and write the files under `root`."""
    for url, same_tarball in groupby(files, key=lambda file: file.tarball_url):
        wanted = list(same_tarball)
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a fixed https URL
            tarball: bytes = response.read()
        if digest("sha512", tarball) != wanted[0].tarball_integrity:
            raise SystemExit(f"{url} does not match its published sha512; not installed")
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for file in wanted:
                _install(archive, file, root)


def _install(archive: tarfile.TarFile, file: NpmFile, root: Path) -> None:
    member = archive.extractfile(f"package/{file.path}")
    if member is None:
        raise SystemExit(f"{file.path} is missing from {file.tarball_url}")
    content = member.read()
    if digest("sha384", content) != file.sri:
        raise SystemExit(f"{file.path} of {file.tarball_url} does not match its pinned sha384")
    destination = root / file.installed_as
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(content)


def main() -> None:
    missing = tuple(file for file in ALL_FILES if not (STATIC / file.installed_as).is_file())
    if not missing:
        return
    try:
        fetch(missing)
    except OSError as error:
        # Offline is not fatal: the pages then load the pinned files from the CDN.
        sys.stderr.write(f"Reference assets not fetched ({error}); /scalar and /docs use the CDN\n")
        return
    sys.stdout.write("Scalar and Swagger UI assets installed for offline /scalar and /docs\n")


if __name__ == "__main__":
    main()
