"""Where the project's data files, caches and run directories live.

From a source checkout everything is relative to the checkout. From an installed wheel the
configuration files are package data (``personalize/config/``, read through ``importlib.resources``)
and the writable directories (``.cache``, ``.run``) are relative to ``PERSONALIZE_HOME``, else the
current directory: site-packages is neither writable nor per-deployment.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path

HOME_ENV = "PERSONALIZE_HOME"
#: The directory holding the top-level packages: the checkout, or site-packages when installed.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: The wheel ships ``config/`` inside the package (pyproject.toml); a checkout has it at the top.
_PACKAGED_CONFIG = Path(str(resources.files("personalize").joinpath("config")))
SOURCE_CHECKOUT = not _PACKAGED_CONFIG.is_dir()
CONFIG_DIR = PACKAGE_ROOT / "config" if SOURCE_CHECKOUT else _PACKAGED_CONFIG
ROOT = PACKAGE_ROOT if SOURCE_CHECKOUT else Path(os.environ.get(HOME_ENV) or Path.cwd()).resolve()
CACHE_DIR = ROOT / ".cache"
JARS_DIR = CACHE_DIR / "jars"
BIN_DIR = CACHE_DIR / "bin"
SHARED_DATA_DIR = ROOT.parent / "shared" / "data"


def resolve(path: str | Path) -> Path:
    """Resolve a configured path: relative paths are relative to the project root, not the CWD, and
    ``config/...`` names the project's configuration files wherever they are installed."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    if candidate.parts[:1] == ("config",) and not (ROOT / candidate).exists():
        return CONFIG_DIR.joinpath(*candidate.parts[1:])
    return ROOT / candidate


def write_json_report(path: str, report: object, command: str) -> bool:
    """Write a command's ``--json`` report; on failure say so in one line on stderr and return False."""
    try:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(f"personalize {command}: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True
