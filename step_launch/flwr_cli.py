"""Reading the ``flwr`` CLI's answers (``--format json``), shared by step-sim and step-coord."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from step_launch.processes import MARKER_ENV

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TAIL_LINES = 40


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def parse_json_stdout(out: str) -> dict[str, Any] | None:
    """The first JSON object in ``out`` (flwr prints banners before it), or None."""
    start = out.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(out[start:])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def log_tail(
    log_path: Path, start: int = 0, end: int | None = None, lines: int = TAIL_LINES
) -> str:
    """The last ``lines`` meaningful lines of bytes ``start:end`` of a log: colour codes and
    per-request HTTP access lines removed."""
    try:
        with log_path.open("rb") as f:
            f.seek(start)
            raw = f.read() if end is None else f.read(max(0, end - start))
        text = raw.decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [
        strip_ansi(line).rstrip()
        for line in text.splitlines()
        if "[uvicorn.access]" not in line and line.strip()
    ]
    return "\n".join(kept[-lines:])


def flower_env(flwr_home: Path, marker: str | None = None) -> dict[str, str]:
    """The environment of a Flower process started by step-coord or step-node: Flower's home
    in the operator's folder, no telemetry or update check (no internet), this environment's
    scripts first on PATH (Flower starts flower-superexec, flwr-serverapp, flwr-clientapp by
    name), and the launch marker that lets the launcher find every descendant."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        }
    )
    if marker:
        env[MARKER_ENV] = marker
    return env
