"""Test-wide setup: keep every tool's leftovers inside the repo's ignored .tmp, and load the
shared fixtures of each area from tests/fixtures/*.py."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_TMP = _ROOT / ".tmp"
_TMP.mkdir(exist_ok=True)
os.environ.setdefault("TMPDIR", str(_TMP))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)
