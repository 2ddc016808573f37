"""Where the project's data files, caches and run directories live."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
CACHE_DIR = ROOT / ".cache"
JARS_DIR = CACHE_DIR / "jars"
BIN_DIR = CACHE_DIR / "bin"
SHARED_DATA_DIR = ROOT.parent / "shared" / "data"


def resolve(path: str | Path) -> Path:
    """Resolve a configured path: relative paths are relative to the project root, not the CWD."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else ROOT / candidate
