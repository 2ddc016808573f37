"""What every benchmark shares: where results go, the machine they ran on, the command line."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}


def run_cli(description: str | None, default_events: int, result_name: str,
            run: Callable[[argparse.Namespace], dict[str, Any]],
            extra: Callable[[argparse.ArgumentParser], Any] | None = None) -> None:
    """``--events N --json OUT`` (plus ``extra`` options): run, write the JSON result, print it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--events", type=int, default=default_events)
    parser.add_argument("--json", default=str(RESULTS / result_name))
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    result = {**run(args), "machine": machine()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
