"""The `longrl` command line: one sub-command group per pipeline stage.

Each stage's commands live in a small module beside this one (cli_<stage>.py) and import their
library lazily inside the command, so `longrl --help` stays fast and never loads torch.
"""

from __future__ import annotations

import os
import sys

import typer

from pipelines import (
    cli_data,
    cli_embed_cache,
    cli_eval,
    cli_model,
    cli_pipeline,
    cli_registry,
    cli_synth,
    cli_train,
)

app = typer.Typer(
    name="longrl",
    help="Teach video language models to reason over long videos with RL: "
    "data generation -> CoT-SFT -> MR-SP GRPO -> evaluation -> MLflow registry.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# Off a terminal (pod logs, CI, `tee`, a pipe) rich would draw for 80 columns: tables cut,
# commands hard-wrapped mid-option. Give it room there, for the command only.
WIDE_COLUMNS = "200"


def _any_terminal() -> bool:
    return any(getattr(s, "isatty", lambda: False)() for s in (sys.stdin, sys.stdout, sys.stderr))


@app.callback()
def _root(ctx: typer.Context) -> None:
    if "COLUMNS" in os.environ or _any_terminal():
        return
    os.environ["COLUMNS"] = WIDE_COLUMNS
    ctx.call_on_close(lambda: os.environ.pop("COLUMNS", None))


app.add_typer(cli_model.app, name="model")
app.command("synth")(cli_synth.synth)
app.add_typer(cli_data.app, name="data")
app.add_typer(cli_registry.app, name="registry")
app.add_typer(cli_pipeline.app, name="pipeline")
app.add_typer(cli_eval.app, name="eval")
app.add_typer(cli_train.app, name="train")
app.add_typer(cli_embed_cache.app, name="embed-cache")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
