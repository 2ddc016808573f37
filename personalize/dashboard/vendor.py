"""The dashboard's charting library, uPlot from npm, vendored: committed under ``static/vendor/uplot/``.

The page must work offline and the wheel must carry everything it serves, so the minified script, its
stylesheet and its license are files of the package, not a CDN link. ``VERSION`` pins the exact npm
version and ``sha256sums`` every file. ``python -m personalize.dashboard.vendor`` (``make vendor-uplot``)
fetches the pinned version again with ``npm pack`` and checks the fetch and the committed files against
the pins; ``--update VERSION`` moves the pin (writes the files, ``VERSION`` and ``sha256sums``: review
the diff). Where npm fetches from is npm's own configuration; the project names no registry.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

from personalize.bootstrap import read_sha256sums

PACKAGE = "uplot"
VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor" / "uplot"
MEMBERS = {"package/dist/uPlot.iife.min.js": "uPlot.iife.min.js", "package/dist/uPlot.min.css": "uPlot.min.css",
           "package/LICENSE": "LICENSE"}
"""npm tarball member -> file under ``VENDOR_DIR``."""
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")


class VendorError(RuntimeError):
    """The library could not be fetched, or differs from its pins; the message says what to do."""


def pinned_version() -> str:
    return (VENDOR_DIR / "VERSION").read_text().strip()


def digests(files: Mapping[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def mismatches(files: Mapping[str, bytes], expected: Mapping[str, str]) -> list[str]:
    """Names whose sha256 differs from its pin, or that only one side has."""
    got = digests(files)
    return sorted(name for name in got.keys() | expected.keys() if got.get(name) != expected.get(name))


def committed() -> dict[str, bytes]:
    return {name: (VENDOR_DIR / name).read_bytes() for name in MEMBERS.values() if (VENDOR_DIR / name).is_file()}


def unpack(tarball: Path) -> dict[str, bytes]:
    """The vendored files out of an npm tarball, read by member name: nothing else is extracted."""
    files = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member, name in MEMBERS.items():
            try:
                info = archive.getmember(member)
            except KeyError:
                raise VendorError(f"{tarball.name} has no {member}: the package's layout changed") from None
            handle = archive.extractfile(info) if info.isfile() else None
            if handle is None:
                raise VendorError(f"{member} in {tarball.name} is not a regular file")
            files[name] = handle.read()
    return files


def fetch(version: str) -> dict[str, bytes]:
    """``npm pack uplot@VERSION`` into a temporary directory (npm checks the registry's integrity hash)."""
    if not EXACT_VERSION.fullmatch(version):
        raise VendorError(f"{version!r} is not an exact version such as 1.6.32: the pin is never a range")
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("`npm` not found on PATH: it fetches the pinned package (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix=f"{PACKAGE}-") as tmp:
        try:
            result = subprocess.run([npm, "pack", f"{PACKAGE}@{version}", "--ignore-scripts", "--silent"],
                                    cwd=tmp, capture_output=True, text=True, check=False, timeout=300)
        except subprocess.TimeoutExpired:
            raise VendorError(f"npm did not fetch {PACKAGE}@{version} within 5 minutes") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            reason = (result.stderr.strip().splitlines() or ["no tarball written"])[-1][:300]
            raise VendorError(f"npm pack {PACKAGE}@{version} failed (offline, or no registry access?): {reason}")
        return unpack(tarballs[0])


def verify() -> str:
    """Check the committed files and a fresh fetch of the pinned version against ``sha256sums``."""
    version, pinned = pinned_version(), read_sha256sums(VENDOR_DIR / "sha256sums")
    if wrong := mismatches(committed(), pinned):
        raise VendorError(f"the committed files differ from sha256sums: {', '.join(wrong)}")
    if wrong := mismatches(fetch(version), pinned):
        raise VendorError(f"npm's {PACKAGE}@{version} differs from sha256sums ({', '.join(wrong)}): a changed "
                          "package is refused; a new version needs --update")
    return f"ok {PACKAGE}@{version}: npm's files and the committed ones match sha256sums"


def update(version: str) -> str:
    """Move the pin: the files of ``version``, its ``VERSION`` and ``sha256sums``."""
    files = fetch(version)
    for name, data in files.items():
        (VENDOR_DIR / name).write_bytes(data)
    (VENDOR_DIR / "sha256sums").write_text("".join(f"{digest}  {name}\n"
                                                   for name, digest in sorted(digests(files).items())))
    (VENDOR_DIR / "VERSION").write_text(f"{version}\n")
    return f"pinned {PACKAGE}@{version} in {VENDOR_DIR}: review the diff and commit it"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalize.dashboard.vendor", description=__doc__)
    parser.add_argument("--update", metavar="VERSION", help="move the pin to this exact npm version")
    args = parser.parse_args(argv)
    try:
        print(update(args.update) if args.update else verify())
    except VendorError as exc:
        print(f"vendor-uplot failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
