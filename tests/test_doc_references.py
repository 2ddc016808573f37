"""Every documentation page the code, the configuration and the docs point to exists (a reference to
a page that was never written sends a reader nowhere)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where references are looked for; tests/ and benchmarks/ are tools for developers, not readers.
SOURCES = ("config", "personalize", "jobs", "operators", "state", "connectors", "docs", "deploy", "docker", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".txt", ".html", ".js"}
DOC_PATH = re.compile(r"\bdocs/[\w./-]+?\.md\b")
#: A relative Markdown link to a page: ``[text](page.md)`` or ``(../docs/page.md#anchor)``.
MD_LINK = re.compile(r"\]\(([^)#\s:]+\.md)(?:#[^)]*)?\)")


def referring_files() -> list[Path]:
    files: list[Path] = []
    for source in SOURCES:
        path = ROOT / source
        files += [path] if path.is_file() else [f for f in path.rglob("*") if f.suffix in SUFFIXES]
    return files


def test_every_referenced_docs_page_exists() -> None:
    missing = set()
    for path in referring_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        missing |= {(str(path.relative_to(ROOT)), ref) for ref in DOC_PATH.findall(text) if not (ROOT / ref).is_file()}
        if path.suffix == ".md":
            missing |= {(str(path.relative_to(ROOT)), link) for link in MD_LINK.findall(text)
                        if not (path.parent / link).resolve().is_file()}
    assert not missing, sorted(missing)
