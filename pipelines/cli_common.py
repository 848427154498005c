"""Helpers shared by the CLI modules: config loading with overrides, --print-config, model
resolution (a folder or a Hugging Face hub id), error reporting.

One convention for every command: `--config FILE` (YAML), then positional `key.sub=value`
overrides, then the command's own options. `--print-config` prints the resolved config (YAML
with each field's comment) and exits without running anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from common.config import ConfigError, describe_config, load_config

T = TypeVar("T")
console = Console(stderr=True)

OVERRIDES_HELP = "Config overrides as key.sub=value (applied after --config)."
CONFIG_HELP = "YAML config file; its keys override the defaults."
PRINT_CONFIG_HELP = "Print the resolved config (YAML, each key with its meaning) and exit."
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_config(cls: type[T], config: Path | None, overrides: list[str] | None,
                   print_config: bool = False, **fixed: Any) -> T:
    """Load `cls` from defaults + file + overrides, then set the values given as CLI options.
    With `print_config`, print it (stdout, loadable back with --config) and exit 0."""
    try:
        cfg = load_config(cls, config, overrides or [], values=fixed)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from exc
    if print_config:
        typer.echo(describe_config(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


def resolve_model(model: Path) -> Path:
    """A model folder as given, or a Hugging Face hub id (`Qwen/Qwen2.5-VL-7B-Instruct`)
    downloaded to the hub cache with huggingface_hub; offline, one line saying how to get it."""
    if model.exists() or not HUB_ID.match(str(model)):
        return model
    repo = str(model)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    how = (f"download it where there is network (`hf download {repo} --local-dir DIR`), "
           "copy DIR here and pass --model DIR")
    if offline:
        fail(f"--model {repo}: no such folder, and it cannot be downloaded as a Hugging Face hub id "
             f"because HF_HUB_OFFLINE=1; {how}", 2)
    from huggingface_hub import snapshot_download

    console.print(f"--model {repo}: not a folder here, downloading it from the Hugging Face hub")
    try:
        return Path(snapshot_download(repo_id=repo))
    except Exception as exc:  # network, auth (gated repo: set HF_TOKEN), unknown repo
        fail(f"--model {repo}: download from the Hugging Face hub failed ({type(exc).__name__}: "
             f"{str(exc).splitlines()[0] if str(exc) else ''}); {how}, or set HF_TOKEN for a gated model", 2)
    raise AssertionError  # fail() raised


def fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)
