"""`longrl model ...`: model folders (the tiny test model kit)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.cli_common import console, fail

app = typer.Typer(help="Model folders: build tiny random models of every supported family for tests and demos.",
                  no_args_is_help=True)


@app.command("tiny")
def tiny(
    out: Path = typer.Option(..., "--out", help="Folder to write the model into."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights (the folder is deterministic given it)."),
    hidden_size: int = typer.Option(None, help="Text hidden size [default 64]."),
    layers: int = typer.Option(None, help="Text decoder layers [default 2]."),
    vision_depth: int = typer.Option(None, help="Vision transformer blocks [default 2]."),
    preset: str = typer.Option("", "--preset", help="Named sizes instead of the three above: test (the "
                               "defaults) or learn (~1 M parameters, learns the synthetic ladder; docs/grpo.md)."),
    arch: str = typer.Option("qwen2_5_vl", "--arch", help="Model family: qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_vl_moe, or qwen2 / qwen3 (text-only) (docs/models.md)."),
) -> None:
    """Write a randomly initialised model folder of a family (default Qwen2.5-VL:
    transformers' Qwen2_5_VLForConditionalGeneration; qwen2/qwen3: a text-only causal LM), a BPE
    tokenizer trained on the spot with Qwen's special tokens and chat template, and (for the
    vision families) processor configs. Every stage loads it exactly like a downloaded folder."""
    from training.tiny_model import TinyModelSpec, preset_spec, write_tiny_model_folder

    sizes = {"--hidden-size": hidden_size, "--layers": layers, "--vision-depth": vision_depth}
    if preset:
        if given := [k for k, v in sizes.items() if v is not None]:
            fail(f"{', '.join(given)}: the preset sets the sizes; give one or the other", 2)
        try:
            spec = preset_spec(preset, seed, arch)
        except ValueError as exc:
            fail(str(exc), 2)
    else:
        hidden_size, layers, vision_depth = hidden_size or 64, layers or 2, vision_depth or 2
        spec = TinyModelSpec(seed=seed, arch=arch, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                             num_layers=layers, vision_depth=vision_depth,
                             vision_fullatt_blocks=[vision_depth - 1])
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder to write the model into (new or a model folder)", 2)
    try:
        path = write_tiny_model_folder(out, spec)
    except ValueError as exc:  # an unknown --arch or impossible sizes, named by the model kit
        fail(str(exc), 2)
    except OSError as exc:  # a read-only or full disk, a parent that is a file
        fail(f"--out {out}: cannot write the model ({exc.strerror or exc})", 1)
    n = sum(f.stat().st_size for f in path.iterdir())
    console.print(f"[green]wrote[/green] tiny {arch} model to {path} ({n / 1e6:.1f} MB, seed {seed})")
