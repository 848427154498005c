"""The pipeline's evaluation: the new model, the base model and the current champion on the same
benchmarks with the same settings (`longrl eval` each), then one comparison: scores, deltas and
paired tests (eval.compare), written as JSON, a Markdown table and a plot of the candidate against
the base model and the champion (comparison.png, also on the pipeline's MLflow run)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from components.launch import longrl_argv, mlflow_env, run_step

# The SFT model is evaluated too when a run trains both stages (the candidate is then the GRPO
# model): the learning table shows base -> SFT -> GRPO with the paired tests of each step.
ROLES = ("candidate", "sft", "base", "champion")


def eval_argv(model: Path, data: Path, out: Path, benchmarks: str, frames: int, limit: int,
              overrides: list[str]) -> list[str]:  # fmt: skip
    argv = ["eval", "--model", str(model), "--benchmark", benchmarks, "--data", str(data), "--out", str(out)]
    if frames > 0:
        argv += ["--frames", str(frames)]
    if limit > 0:
        argv += ["--limit", str(limit)]
    for o in overrides:
        argv += ["--set", o]
    return longrl_argv(*argv)


def role_metrics(out: Path) -> dict[str, float]:
    """Flat metrics of one eval run (`<benchmark>/score`, `<benchmark>/accuracy`, ...), named as
    the eval stage logs them to MLflow."""
    from eval.report import mlflow_metrics

    metrics: dict[str, float] = {}
    for path in sorted(out.glob("*/metrics.json")):
        metrics.update(mlflow_metrics(path.parent.name, json.loads(path.read_text())))
    return metrics


def output_names(benchmarks: str, overrides: list[str]) -> list[str]:
    """The OUT/<name>/ folders `longrl eval` writes for these benchmarks and `--set` overrides
    (e.g. `subtitles=true` adds "_subtitles"), named by eval itself; an unknown benchmark or a
    bad override is an error here, before any model is evaluated."""
    from common.config import load_config
    from eval.config import EvalConfig, output_dir_names

    names = [b.strip() for b in benchmarks.split(",") if b.strip()]
    return output_dir_names(load_config(EvalConfig, None, overrides, values={"benchmarks": names}))


def eval_succeeded(out: Path, benchmarks: list[str], max_error_rate: float) -> tuple[bool, str]:
    """An evaluation counts only if every benchmark (OUT/<name>/) produced metrics, scored
    something, and had at most `max_error_rate` of its questions fail: undecodable videos,
    engine errors and failed judge calls. Open-ended questions left ungraded by design (no judge
    configured) are not failures: the score is the accuracy over the graded questions."""
    for name in benchmarks:
        path = out / name / "metrics.json"
        if not path.is_file():
            return False, f"{name}: no metrics.json"
        o = json.loads(path.read_text())["overall"]
        if not o["n"] or not o["scored"]:
            return False, f"{name}: nothing scored ({o['n']} questions)"
        rate = (o["errors"] + o["judge_errors"]) / o["n"]
        if rate > max_error_rate:
            return False, f"{name}: {rate:.1%} of questions failed (> {max_error_rate:.1%})"
    return True, "ok"


def compare(outs: dict[str, Path], benchmarks: list[str], max_error_rate: float) -> dict[str, Any]:
    from eval.compare import compare_runs

    result: dict[str, Any] = {"benchmarks": benchmarks, "roles": {}, "paired": {}}
    for role, out in outs.items():
        ok, why = eval_succeeded(out, benchmarks, max_error_rate)
        result["roles"][role] = {"out": str(out), "succeeded": ok, "reason": why, "metrics": role_metrics(out)}
    ok = {role: info["succeeded"] for role, info in result["roles"].items()}
    if ok["candidate"]:
        for other in ("base", "champion", "sft"):
            if ok.get(other):
                result["paired"][other] = compare_runs(outs["candidate"], outs[other])["benchmarks"]
    if ok.get("sft") and ok.get("base"):
        result["learning"] = learning(outs, benchmarks, compare_runs(outs["sft"], outs["base"])["benchmarks"],
                                      result["paired"].get("sft", {}))  # fmt: skip
    return result


def learning(outs: dict[str, Path], benchmarks: list[str], sft_vs_base: dict[str, Any],
             grpo_vs_sft: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Per benchmark: base, SFT and candidate (GRPO) accuracy by answer type, MC chance, the
    paired tests sft-vs-base and grpo-vs-sft (eval.compare_learning)."""
    from eval.compare_learning import answer_type_counts, learning_result

    out = {}
    for bench in benchmarks:
        counts = {role: answer_type_counts(outs[role] / bench) for role in ("base", "sft", "candidate")
                  if role in outs and (outs[role] / bench / "predictions.jsonl").is_file()}  # fmt: skip
        out[bench] = {"counts": counts, **learning_result(counts, sft_vs_base.get(bench), grpo_vs_sft.get(bench))}
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def markdown(result: dict[str, Any]) -> str:
    roles = [r for r in ROLES if r in result["roles"]]
    versus = ["base", "champion"] + (["sft"] if "sft" in roles else [])
    lines = ["| benchmark | " + " | ".join(roles) + " | " + " | ".join(f"vs {v}" for v in versus) + " |",
             "|---" * (len(roles) + len(versus) + 1) + "|"]  # fmt: skip
    for bench in result["benchmarks"]:
        key = f"{bench}/score"
        row = [_pct(result["roles"][r]["metrics"].get(key)) for r in roles]
        deltas = []
        for other in versus:
            p = result["paired"].get(other, {}).get(bench)
            if not p or p["difference"] is None:
                deltas.append("n/a")
            else:
                deltas.append(f"{100 * p['difference']:+.1f} (n={p['n']}, p={p['p_value']:.3g})")
        lines.append(f"| {bench} | " + " | ".join(row) + " | " + " | ".join(deltas) + " |")
    lines.append("")
    for role in roles:
        info, m = result["roles"][role], result["roles"][role]["metrics"]
        counts = []
        for bench in result["benchmarks"]:
            n, scored = m.get(f"{bench}/n"), m.get(f"{bench}/scored")
            if n is not None:
                counts.append(f"{bench}: {int(n)} questions, {int(scored or 0)} graded, "
                              f"{int(m.get(f'{bench}/ungraded', 0))} ungraded (no judge), "
                              f"{int(m.get(f'{bench}/judge_errors', 0))} judge errors, "
                              f"{int(m.get(f'{bench}/errors', 0))} errors")  # fmt: skip
        status = "ok" if info["succeeded"] else f"**did not succeed**: {info['reason']}"
        lines.append(f"- {role}: {'; '.join(counts) or 'no results'} - {status}")
    if result.get("learning"):
        from eval.compare_learning import learning_markdown

        for bench, info in result["learning"].items():
            lines += ["", learning_markdown(bench, info["counts"], info).rstrip("\n")]
    return "\n".join(lines) + "\n"


def learning_line(result: dict[str, Any]) -> str:
    """The one-line summary of the first benchmark's learning table ("" without an SFT role)."""
    info = result.get("learning") or {}
    return next((v["line"] for v in info.values()), "")


def plot_comparison(result: dict[str, Any], work: Path, mlflow_tracking_uri: str = "",
                    mlflow_parent_run_id: str = "") -> Path | None:  # fmt: skip
    """work/comparison.png: candidate, base and champion (when evaluated) per benchmark, and
    candidate - base / candidate - champion with their 95 % intervals and p (eval.compare_plot);
    logged to the pipeline's MLflow run as eval/comparison.png. None when nothing was compared
    (the candidate's evaluation failed). A failed upload is said, not raised: the plot is a view
    of comparison.json, which decides the gate."""
    from eval.compare_plot import plot_roles

    path = plot_roles(result["paired"], work / "comparison.png")
    if path is None:
        return None
    if mlflow_tracking_uri and mlflow_parent_run_id:
        try:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=mlflow_tracking_uri).log_artifact(mlflow_parent_run_id, str(path), "eval")
        except Exception as exc:  # noqa: BLE001 - see above
            print(f"comparison plot not logged to MLflow: {type(exc).__name__}: {exc}", flush=True)
    return path


def settings_digest(names: list[str], frames: int, limit: int, overrides: list[str]) -> str:
    """What makes two evaluations comparable: benchmarks (output names) and settings. Stored on
    each registered version, so the gate can tell whether a champion's recorded score was measured
    the way this candidate's was (issue 15.12)."""
    text = json.dumps({"benchmarks": sorted(names), "frames": frames, "limit": limit,
                       "overrides": sorted(overrides)}, sort_keys=True)  # fmt: skip
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluate_all(models: dict[str, Path], data: Path, work: Path, benchmarks: str, frames: int, limit: int,
                 overrides: list[str], max_error_rate: float, mlflow_tracking_uri: str,
                 mlflow_parent_run_id: str, champion_uri: str = "") -> dict[str, Any]:  # fmt: skip
    """Evaluate each model (candidate, base, champion when there is one) into work/<role>.
    `champion_uri` (`models:/name/7`, "" for none) is recorded: the gate checks that @champion is
    still the version evaluated here."""
    names = output_names(benchmarks, overrides)
    env = mlflow_env(mlflow_tracking_uri, mlflow_parent_run_id)
    outs = {}
    for role, model in models.items():
        outs[role] = work / role
        # One named run per model (was "eval" three times under the parent).
        role_env = dict(env, LONGRL_RUN_NAME=f"eval-{role}", LONGRL_RUN_TAGS=json.dumps({"eval.role": role}))
        try:
            run_step(eval_argv(model, data, outs[role], benchmarks, frames, limit, overrides), env=role_env)
        except Exception as exc:  # recorded: a failed eval blocks promotion, it does not hide
            print(f"{role} evaluation failed: {exc}", flush=True)
    result = compare(outs, names, max_error_rate)
    result["champion_uri"] = champion_uri
    result["settings_digest"] = settings_digest(names, frames, limit, overrides)
    plot = plot_comparison(result, work, mlflow_tracking_uri, mlflow_parent_run_id)
    result["plot"] = plot.name if plot is not None else ""
    (work / "comparison.json").write_text(json.dumps(result, indent=1))
    return result
