"""`longrl pipeline run-local`: the whole long-video-reasoning pipeline on this machine.

kfp.local runs every component as a subprocess of this Python (no Docker, no Kubernetes); a
local `mlflow server` (sqlite + local artifacts under OUT/mlflow) takes the lineage and the
registry; the model is a tiny random Qwen2.5-VL and the videos are procedural (`longrl synth`),
so the run needs no download and finishes in minutes on 2 CPU cores. The pipeline and
components are the ones a cluster runs; only the sizes differ (DEMO_PARAMS).

The parent MLflow run is created here and handed to every step as MLFLOW_RUN_ID (the convention
Kubeflow's MLflow integration uses), so all stage runs nest under it.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# The demo is the learning run of issue 11.4 (docs/grpo.md "Learning", bench/bench_learning.py)
# through the real pipeline, sized for 2 CPU cores: one rung of the synthetic task ladder (one
# large object that keeps its colour, colour options in palette order), the "learn" tiny model,
# CoT-SFT with the vision tower frozen, GRPO at T 0.7 with KL to the SFT model, and a benchmark of
# held-out videos (their own seed; any equal to a training video left out) on which base, SFT
# and GRPO are compared with paired tests.
DEMO_LADDER = ["task_types=[state_change]", "min_objects=1", "max_objects=1", "num_slots=8", "reasoning=brief",
               "width=168", "height=112", "object_scale=6.0", "max_recolours=0", "canonical_options=true",
               "questions_per_video=4"]  # fmt: skip
DEMO_FRAMES, DEMO_MAX_PIXELS = 8, 4704  # one merged token per region of the 2x3 grid, 4 temporal patches
DEMO_PARAMS: dict[str, Any] = {
    "base_model": "tiny-learn:1",
    "registered_model": "longrl-demo",
    "video_source": "synth",
    "synth_videos": 600,  # sft 360 videos (1440 questions: one epoch of SFT), rl 240
    "synth_minutes": 0.5,
    "synth_fps": 4.0,
    "synth_seed": 0,
    "synth_overrides": DEMO_LADDER,
    "data_annotator": "groundtruth",
    "captioner_url": "",
    "captioner_model": "",
    "reasoner_url": "",
    "reasoner_model": "",
    # The benchmark is its own held-out set (eval_synth_*): no eval split from the training videos.
    "data_overrides": ["groundtruth_questions=4", "splits.sft=0.6", "splits.rl=0.4", "splits.eval=0"],
    "frames": DEMO_FRAMES,
    "run_sft": True,
    "sft_max_steps": 180,  # short on purpose: SFT teaches perception and leaves room for GRPO
    "sft_lr": 1e-3,
    "sft_overrides": ["video.fps=0", f"video.max_pixels={DEMO_MAX_PIXELS}", "micro_batch_size=8", "epochs=100",
                      "freeze_vision_tower=true", "eval_generate=0", "save_every=0", "log_every=50", "seed=1",
                      "scan_decode=false"],  # fmt: skip
    "run_grpo": True,
    # bench_learning's default; at 30 steps the demo's data gave GRPO vs SFT +2.5 pp, p = 0.49.
    "grpo_max_steps": 60,
    "grpo_lr": 5e-5,
    "grpo_group_size": 6,
    "grpo_kl_coef": 0.02,
    # T 0.7: at T 1 most of the tiny model's samples are broken text, far from the greedy answers
    # that are graded.
    "grpo_overrides": ["rollout.prompts_per_step=8", "rollout.max_new_tokens=40", "rollout.temperature=0.7",
                       "video.fps=0", f"video.max_pixels={DEMO_MAX_PIXELS}", "save_every=0", "plots=true",
                       "progress=false", "seed=1"],  # fmt: skip
    "ray_workers": 0,
    "gpus_per_worker": 1,
    "eval_benchmarks": "synth",
    "eval_synth_videos": 60,  # 240 questions, graded exactly (numbers, short names, letters)
    "eval_synth_seed": 1_000_001,
    "eval_limit": 0,
    "eval_overrides": [f"max_pixels={DEMO_MAX_PIXELS}", "max_new_tokens=40", "batch_size=16", "bootstrap=500"],
    # Real failures (undecodable video, engine error) count: at most 5 % may fail, as on clusters.
    "eval_max_error_rate": 0.05,
    "gate_metric": "synth/score",
    "gate_min_margin": 0.0,
    "gate_max_p": 0.05,  # promoted only on a significant gain over the base model
    "auto_promote": True,
    "mlflow_experiment": "longrl-demo",
    "runs_root": "",
}


def _latest(root: Path, pattern: str) -> Path | None:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_local(out: str | Path, param_items: list[str], keep_server: bool = False,
              tracking_uri: str | None = None, verbose: bool = False) -> int:  # fmt: skip
    """Run the pipeline; returns the process exit code (0: the pipeline succeeded). With
    `tracking_uri` the runs and the registered version go to that existing MLflow server
    (credentials from MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN) instead of a local one.
    The console gets one line per task; the full output is in OUT/pipeline.log and each task's in
    OUT/logs/TASK.log (`verbose`: the full output on the console too)."""
    from kfp import local
    from rich.console import Console

    from common import tracking
    from pipelines.local_log import TaskConsole, plain
    from pipelines.local_mlflow import start_mlflow_server, stop_mlflow_server
    from pipelines.long_video_reasoning import build_pipeline
    from pipelines.submit import parse_params

    # The stream of now, not sys.stdout at print time: TaskConsole swaps sys.stdout for its router.
    console = Console(file=sys.stdout)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from pipelines.cluster import ClusterConfig

    # kfp.local honours the retry policy (60 s backoff, doubling): a local failure is reported
    # at once instead of after minutes of retries.
    pipeline = build_pipeline(ClusterConfig(light_retries=0, data_retries=0, train_retries=0, eval_retries=0))
    declared = {name: {"type": _ir_type(spec.type)} for name, spec in pipeline.component_spec.inputs.items()}
    params = dict(DEMO_PARAMS)
    params.update(parse_params(param_items, declared))

    t0 = time.monotonic()
    if tracking_uri:
        server, uri = None, tracking_uri
        console.print(f"using the MLflow server at {uri}")
    else:
        console.print(f"starting MLflow server (state in {out / 'mlflow'}) ...")
        server, uri = start_mlflow_server(out / "mlflow")
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")}
    status = "FAILED"
    parent = None
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        params["mlflow_tracking_uri"] = uri
        kfp_run = f"local-{uuid.uuid4().hex[:8]}"
        parent = tracking.pipeline_run(kfp_run, experiment=params["mlflow_experiment"],
                                       params={k: str(v) for k, v in params.items()}, run_name=kfp_run)  # fmt: skip
        os.environ["MLFLOW_RUN_ID"] = parent or ""
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"),
                   raise_on_error=True)  # fmt: skip
        console.print(f"running pipeline long-video-reasoning locally (MLflow {uri}, parent run {parent}); "
                      f"full log: {out / 'pipeline.log'}", soft_wrap=True)  # fmt: skip
        with TaskConsole(out, console, verbose=verbose):
            pipeline(**params)
        status = "FINISHED"
    except Exception as exc:
        console.print(f"[red]pipeline failed:[/red] {type(exc).__name__}: {plain(str(exc))}", soft_wrap=True)
    finally:
        os.environ.pop("MLFLOW_RUN_ID", None)
        tracking.end_pipeline_run(parent, status)
        if status == "FINISHED":
            _print_results(console, out, params["registered_model"], uri, time.monotonic() - t0, local=server is not None)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if server is None:
            pass  # not ours
        elif keep_server:
            console.print(f"MLflow server left running at {uri} (pid {server.pid})")
        else:
            stop_mlflow_server(server)
    return 0 if status == "FINISHED" else 1


def _ir_type(kfp_type: str) -> str:
    """kfp component-spec parameter types -> the IR names parse_params checks against."""
    return {"String": "STRING", "Integer": "NUMBER_INTEGER", "Float": "NUMBER_DOUBLE", "Boolean": "BOOLEAN",
            "List": "LIST", "Dict": "STRUCT"}.get(kfp_type, "STRING")  # fmt: skip


def _print_results(console: Any, out: Path, model_name: str, uri: str, seconds: float, local: bool = True) -> None:
    from rich.markdown import Markdown

    from common import registry

    kfp_root = out / "kfp"
    report = _latest(kfp_root, "*/evaluate-models*/report")
    decision = _latest(kfp_root, "*/register-and-promote*/decision")
    try:
        rows = registry.describe(model_name)
    except Exception:  # noqa: BLE001 - nothing registered (e.g. run_sft=false run_grpo=false): no row
        rows = []
    console.rule("long-video-reasoning: local run finished")
    console.print(f"wall time {seconds / 60:.1f} min; everything is under {out}")
    if report is not None:
        console.print("[bold]evaluation (candidate vs base, SFT and champion):[/bold]")
        console.print(Markdown(report.read_text()))
    plot = _latest(kfp_root, "*/evaluate-models*/comparison/comparison.png")
    if plot is not None:
        console.print(f"plot (candidate vs base, SFT and champion, 95 % intervals): {plot}", soft_wrap=True)
    if decision is not None:
        console.print(Markdown(decision.read_text()))
    if rows:
        last = rows[-1]
        console.print(f"registered model: [bold]{model_name} v{last['version']}[/bold] "
                      f"aliases={last['aliases'] or '-'} source={last['source']}")  # fmt: skip
    if not local:
        console.print(f"MLflow UI: {uri}\nregistry: MLFLOW_TRACKING_URI={uri} .venv/bin/longrl registry show --name {model_name}")
        _print_learning_line(console, kfp_root)
        return
    db, art = out / "mlflow" / "mlflow.db", out / "mlflow" / "artifacts"
    console.print("MLflow UI (runs, metrics, plots, registry):\n"
                  f"  .venv/bin/mlflow server --backend-store-uri sqlite:///{db} --artifacts-destination {art} "
                  "--host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000", soft_wrap=True)  # fmt: skip
    # soft_wrap: commands are printed whole on one line (a hard wrap broke pasting them)
    console.print(f"registry: MLFLOW_TRACKING_URI=<that server> .venv/bin/longrl registry show --name {model_name}",
                  soft_wrap=True)
    _print_learning_line(console, kfp_root)


def _print_learning_line(console: Any, kfp_root: Path) -> None:
    """Last line of the run: base, SFT and GRPO accuracy and the two paired tests, as
    bench/bench_learning.py ends (only when the run trained and evaluated both stages)."""
    import json

    from components.eval_launch import learning_line

    found = _latest(kfp_root, "*/evaluate-models*/comparison/comparison.json")
    line = learning_line(json.loads(found.read_text())) if found is not None else ""
    if line:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
