"""The layout the project card fixes: ``operators/`` is pure logic, so it imports neither PyFlink, the
Kafka and Redis connectors, nor the state codecs (``state/``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_OPERATORS = ("pyflink", "connectors", "state", "jobs")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def test_operators_import_no_flink_connector_codec_or_job_module() -> None:
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / "operators").rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN_IN_OPERATORS
    }
    assert sorted(offending) == []
