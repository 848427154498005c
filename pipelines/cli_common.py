"""Helpers shared by the CLI modules: config loading with overrides, error reporting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from common.config import ConfigError, load_config

T = TypeVar("T")
console = Console(stderr=True)

OVERRIDES_HELP = "Config overrides as key.sub=value (applied after --config)."
CONFIG_HELP = "YAML config file; its keys override the defaults."


def resolve_config(cls: type[T], config: Path | None, overrides: list[str] | None, **fixed: Any) -> T:
    """Load `cls` from defaults + file + overrides, then set the values given as CLI options."""
    try:
        return load_config(cls, config, overrides or [], values=fixed)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc


def fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)
