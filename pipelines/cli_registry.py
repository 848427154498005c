"""`longrl registry show|promote|gate`: the MLflow model registry from the command line.

The tracking server comes from `MLFLOW_TRACKING_URI` (or --tracking-uri); its credentials, if any,
from the environment variables MLflow reads (`MLFLOW_TRACKING_TOKEN`, ...), never from options.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import typer

from pipelines.cli_common import console, fail

app = typer.Typer(help="Show registered model versions and move the champion/challenger aliases.",
                  no_args_is_help=True)  # fmt: skip

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI)."


def _tracking(uri: str | None) -> None:
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        fail("no MLflow server: set MLFLOW_TRACKING_URI or pass --tracking-uri", code=2)


@contextmanager
def _server_errors(what: str):
    """An unknown model name or version (MLflow's RESOURCE_DOES_NOT_EXIST) and other server
    refusals as one line, not a traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        msg = str(getattr(exc, "message", "") or exc).split(": ", 1)[-1].strip().splitlines()[0]
        hint = "; `longrl registry show` lists the models and versions" if "not found" in msg else ""
        fail(f"{what}: {msg}{hint}", 2 if "not found" in msg else 1)


@app.command()
def show(
    name: str | None = typer.Option(None, "--name", help="Registered model name (default: all models)."),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Print every version with its aliases, evaluation status and metrics, and the last
    promotion decision with its reason."""
    _tracking(tracking_uri)
    from rich.console import Console
    from rich.table import Table

    from common import registry

    with _server_errors(f"registry show --name {name}" if name else "registry show"):
        rows = registry.describe(name)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        console.print("no registered model versions" + (f" for {name}" if name else ""))
        return
    table = Table(title="MLflow model registry")
    for col in ("model", "version", "aliases", "eval", "metrics", "decision", "reason", "base model", "created"):
        table.add_column(col)
    for r in rows:
        headline = {k: v for k, v in r["metrics"].items() if k.endswith(("/score", "/accuracy")) and k.count("/") == 1}
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(headline.items())[:4])
        table.add_row(r["name"], str(r["version"]), ",".join(r["aliases"]), r["eval_status"], metrics,
                      r["decision"], r["reason"], r["base_model"], r["created"])  # fmt: skip
    Console().print(table)


@app.command()
def promote(
    name: str = typer.Option(..., "--name", help="Registered model name."),
    version: str = typer.Option(..., "--version", help="Version number to point the alias at."),
    alias: str = typer.Option("champion", "--alias", help="Alias to move (champion or challenger)."),
    force: bool = typer.Option(False, help="Promote even if the version's evaluation failed."),
    reason: str = typer.Option("manual", help="Why (recorded on the version)."),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
) -> None:
    """Point an alias at a version by hand; the move is recorded as tags on the version and in
    the model's decision history."""
    _tracking(tracking_uri)
    from common import registry

    try:
        with _server_errors(f"registry promote --name {name} --version {version}"):
            mv = registry.promote(name, version, alias=alias, force=force, reason=reason, actor="cli")
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{mv.version} is now @{alias}")


@app.command()
def gate(
    name: str = typer.Option(..., "--name", help="Registered model name."),
    version: str = typer.Option(..., "--version", help="Candidate version."),
    metric: str = typer.Option("accuracy", help="Eval metric compared (an eval.<metric> tag)."),
    min_margin: float = typer.Option(0.0, help="The candidate must beat the champion by more than this."),
    lower_is_better: bool = typer.Option(False, help="The metric is an error (lower wins)."),
    fail_if_not_promoted: bool = typer.Option(
        False, "--fail-if-not-promoted",
        help="Exit 3 when the candidate is not promoted (for scripts; default: exit 0 either way)."),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
) -> None:
    """Apply the promotion gate to a version using the eval.* tags of it and of the champion;
    moves @champion only if it passes. The decision is recorded either way."""
    _tracking(tracking_uri)
    from common import registry

    cfg = registry.GateConfig(metric=metric, min_margin=min_margin, higher_is_better=not lower_is_better)
    with _server_errors(f"registry gate --name {name} --version {version}"):
        decision = registry.gate_and_promote(name, version, cfg, actor="cli")
    verdict = "promoted to @champion" if decision.promote else "not promoted"
    console.print(f"{name} v{version}: {verdict} ({decision.reason})")
    if fail_if_not_promoted and not decision.promote:
        raise typer.Exit(3)
