"""What a run leaves behind besides predictions: metrics.json, PNG charts, a console summary,
and an MLflow run when a tracking server is configured (common.tracking)."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.metrics import sorted_values

PLOT = "accuracy.png"
SUMMARY = "summary.json"
SUMMARY_PLOT = "summary.png"


def write_json(path: Path, data: Any) -> None:
    # one temporary name per process: shard processes write the same run_info.json at once
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)


def _fmt(acc: float | None, ci: list[float] | None) -> str:
    if acc is None:
        return "n/a"
    text = f"{100 * acc:.1f}"
    if ci and all(c == c for c in ci):  # not NaN
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def evaluation_notes(evaluated: Mapping[str, Any], coverage: Mapping[str, Any] | None) -> list[str]:
    """What the score covers, when it is not the whole benchmark (printed and in metrics.json)."""
    notes = []
    if evaluated["limit"]:
        unit = "whole 4-try groups" if evaluated["unit"] == "group" else "questions"
        text = (
            f"--limit {evaluated['limit']:g}: {evaluated['questions']} of "
            f"{evaluated['of_questions']} questions ({evaluated['units']} of "
            f"{evaluated['of_units']} {unit})"
        )
        if evaluated.get("per_value"):
            text += f"; by {evaluated['by']}: " + ", ".join(
                f"{v} {c['questions']}/{c['of']}" for v, c in evaluated["per_value"].items()
            )
        notes.append(text)
    if coverage and coverage["missing"]:
        notes.append(
            f"{len(coverage['missing'])} of {len(coverage['present']) + len(coverage['missing'])} "
            f"{coverage['parts']} missing ({', '.join(coverage['missing'])}): the headline is over "
            f"the {len(coverage['present'])} present ({', '.join(coverage['present'])}) only"
        )
    return notes


def breakdown_panels(metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(breakdown key, {value: summary}) in display order: the values of a key numerically when
    all are numbers (duration groups 15, 60, 600, 3600 - not "15", "3600", "60", "600"), as text
    otherwise; the overall numbers alone when there is no breakdown."""
    breakdown = metrics.get("breakdown") or {}
    panels = [(k, {n: v[n] for n in sorted_values(v)}) for k, v in breakdown.items() if v]
    return panels or [("overall", {"all": metrics["overall"]})]


def plot_benchmark(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """Bar chart of accuracy by each breakdown key (one panel per key) with 95 % intervals."""
    panels = breakdown_panels(metrics)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = sum(max(1.2, 0.32 * len(v) + 0.8) for _, v in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, height), squeeze=False)
    for ax, (key, values) in zip(axes[:, 0], panels, strict=True):
        names = list(values)
        acc = [100 * (values[n]["accuracy"] or 0.0) for n in names]
        lo = [
            a - 100 * (values[n]["ci95"] or [0, 0])[0] if values[n]["ci95"] else 0
            for a, n in zip(acc, names, strict=True)
        ]
        hi = [
            100 * (values[n]["ci95"] or [0, 0])[1] - a if values[n]["ci95"] else 0
            for a, n in zip(acc, names, strict=True)
        ]
        ax.barh(range(len(names)), acc, xerr=[lo, hi], color="#4C72B0", capsize=3)
        for y, n in enumerate(names):
            a = values[n]["accuracy"]
            ax.text(
                1,
                y,
                "n/a" if a is None else f"{100 * a:.1f}",
                va="center",
                fontsize=7,
                color="black",
            )
        ax.set_yticks(
            range(len(names)), [f"{n} (n={values[n]['scored']})" for n in names], fontsize=8
        )
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.set_title(f"{metrics['benchmark']}: accuracy by {key} (%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def no_score_reason(entry: Mapping[str, Any]) -> str:
    """Why a benchmark of the summary has no score (shown in its place on summary.png)."""
    o = entry.get("overall") or {}
    if o.get("ungraded"):
        return f"ungraded ({o['ungraded']} open-ended, no judge)"
    if o.get("errors") or o.get("judge_errors"):
        return f"no score ({o.get('errors', 0) + o.get('judge_errors', 0)} errors)"
    return "no score"


def summary_figure(summary: Mapping[str, Any]) -> Any:
    """The summary chart: one bar per benchmark with its score written beside it (95 % interval
    as error bar); a benchmark without a score (ungraded open-ended, all failed) keeps its row,
    marked with the reason, so the chart never hides that it was run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary["benchmarks"].items())
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    for y, (_, s) in enumerate(rows):
        if s.get("score") is None:
            ax.text(1, y, no_score_reason(s), va="center", fontsize=8, color="#C44E52",
                    style="italic")  # fmt: skip
            continue
        sc = 100 * s["score"]
        ci = s.get("score_ci95") or [s["score"], s["score"]]
        if all(c == c for c in ci):  # not NaN
            err = [[max(0.0, sc - 100 * ci[0])], [max(0.0, 100 * ci[1] - sc)]]
        else:
            err, ci = None, [s["score"], s["score"]]
        ax.barh([y], [sc], xerr=err, color="#55A868", capsize=3)
        ax.text(min(100 * ci[1], 100) + 1, y, f"{sc:.1f}", va="center", fontsize=8)
    labels = [f"{n} (not scored)" if s.get("score") is None else n for n, s in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlim(0, 108)  # room for the label of a bar at 100
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first benchmark on top
    ax.set_title(f"{model_label(summary.get('model', ''))}: score by benchmark (%)", fontsize=9)
    fig.tight_layout()
    return fig


def model_label(model: str) -> str:
    """A short name for a model in titles: the folder name, with its parent when the folder is a
    stage's generic `model/` or a `step-N` checkpoint (`runs/grpo/model` -> `grpo/model`); the
    absolute path filled the title. Several models (", "-joined) are shortened each."""
    parts = []
    for m in [x for x in str(model).split(", ") if x] or [""]:
        p = Path(m)
        generic = p.name == "model" or p.name.startswith("step-") or p.parent.name == "checkpoints"
        parts.append(f"{p.parent.name}/{p.name}" if generic and p.parent.name else p.name or m)
    return ", ".join(parts)


def comparison_figure(result: Mapping[str, Any], label_a: str = "A", label_b: str = "B") -> Any:
    """Candidate vs base (eval compare): per benchmark, both runs' headline score on the shared
    questions side by side, and A - B with its 95 % interval and the test's p-value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(n, r) for n, r in result["benchmarks"].items() if r.get("n")]
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(10, 0.55 * max(1, len(rows)) + 1.4), sharey=True,
                                 gridspec_kw={"width_ratios": [3, 2]})
    ys = np.arange(len(rows))
    for off, key, label, colour in ((-0.2, "accuracy_a", label_a, "#4C72B0"), (0.2, "accuracy_b", label_b, "#DD8452")):
        vals = [100 * r[key] for _, r in rows]
        ax.barh(ys + off, vals, height=0.38, color=colour, label=label)
        for y, v in zip(ys + off, vals, strict=True):
            ax.text(v + 1, y, f"{v:.1f}", va="center", fontsize=7)
    ax.set_yticks(ys, [f"{n} (n={r['n']})" for n, r in rows])
    ax.set_xlim(0, 110)
    ax.set_xlabel("headline score on shared questions (%)")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.legend(fontsize=7, loc="lower right")
    for y, (_, r) in zip(ys, rows, strict=True):
        d = 100 * r["difference"]
        lo, hi = (100 * c for c in (r.get("difference_ci95") or [r["difference"]] * 2))
        dx.errorbar([d], [y], xerr=[[max(0.0, d - lo)], [max(0.0, hi - d)]], fmt="o",
                    color="#55A868" if lo > 0 else "#C44E52" if hi < 0 else "#555555", capsize=3)
        dx.text(hi + 1, y, f"{d:+.1f}, p={r.get('p_value', float('nan')):.2g}", va="center", fontsize=7)
    dx.axvline(0, color="#999999", linewidth=0.8)
    dx.set_xlabel(f"{label_a} - {label_b} (points, 95 % CI)")
    fig.suptitle(f"{label_a} vs {label_b}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_comparison(result: Mapping[str, Any], path: Path, label_a: str = "A", label_b: str = "B") -> Path:
    import matplotlib.pyplot as plt

    fig = comparison_figure(result, label_a, label_b)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_summary(summary: Mapping[str, Any], path: Path) -> Path | None:
    if not summary.get("benchmarks"):
        return None
    import matplotlib.pyplot as plt

    fig = summary_figure(summary)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge_summary(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any], out_dir: Path | None = None
) -> dict[str, Any]:
    """The summary of an --out folder after a run: the benchmarks of `previous` (what
    summary.json held) are kept, in their order, those `current` ran replace theirs in place,
    new ones come after. With `out_dir`, a kept benchmark whose OUT/<name>/metrics.json is gone
    is dropped. Each entry names the model that produced it (`model`); the top-level `model` is
    that model, or every model joined by ", " when the benchmarks come from several."""
    cur_model = current.get("model", "")
    merged: dict[str, Any] = {}
    if previous and isinstance(previous.get("benchmarks"), Mapping):
        for name, entry in previous["benchmarks"].items():
            if out_dir is not None and not (Path(out_dir) / name / "metrics.json").is_file():
                continue
            merged[name] = {"model": previous.get("model", ""), **entry}
    for name, entry in current["benchmarks"].items():
        merged[name] = {"model": cur_model, **entry}
    models = list(dict.fromkeys(e["model"] for e in merged.values())) or [cur_model]
    return {
        **{k: v for k, v in current.items() if k != "benchmarks"},
        "model": ", ".join(str(m) for m in models),
        "benchmarks": merged,
    }


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `summary` into OUT/summary.json (see `merge_summary`; an unreadable old file is
    replaced), write it and summary.png, and return the merged summary."""
    out_dir = Path(out_dir)
    previous = None
    if (out_dir / SUMMARY).is_file():
        try:
            previous = json.loads((out_dir / SUMMARY).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, Mapping):
            previous = None
    merged = merge_summary(previous, summary, out_dir)
    write_json(out_dir / SUMMARY, merged)
    if plot_summary(merged, out_dir / SUMMARY_PLOT) is None:
        (out_dir / SUMMARY_PLOT).unlink(missing_ok=True)  # no benchmark left: no stale chart
    return merged


def console_table(summary: Mapping[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"eval: {summary.get('model', '')}")
    for col in (
        "benchmark",
        "score (95% CI)",
        "n",
        "scored",
        "unanswered",
        "errors",
        "judge errors",
        "ungraded",
    ):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for name, s in summary["benchmarks"].items():
        o = s["overall"]
        table.add_row(
            name,
            _fmt(s.get("score"), s.get("score_ci95")),
            str(o["n"]),
            str(o["scored"]),
            str(o["unanswered"]),
            str(o["errors"]),
            str(o["judge_errors"]),
            str(o.get("ungraded", 0)),
        )
    return table


_BAD_METRIC_CHARS = re.compile(r"[^0-9A-Za-z_\-\./ ]")


def metric_name(*parts: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and space ("Goal & Purpose" -> "Goal _ Purpose")."""
    return "/".join(_BAD_METRIC_CHARS.sub("_", str(p)) for p in parts)


def mlflow_metrics(name: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    o = metrics["overall"]
    for key in ("accuracy", "accuracy_answered"):
        if o.get(key) is not None:
            out[metric_name(name, key)] = float(o[key])
    if metrics.get("score") is not None:
        out[metric_name(name, "score")] = float(metrics["score"])
        if metrics.get("score_ci95"):
            out[metric_name(name, "score_ci95_low")] = float(metrics["score_ci95"][0])
            out[metric_name(name, "score_ci95_high")] = float(metrics["score_ci95"][1])
    for key in ("n", "scored", "unanswered", "errors", "judge_errors", "ungraded"):
        out[metric_name(name, key)] = float(o.get(key, 0))
    for key, values in (metrics.get("breakdown") or {}).items():
        for value, s in values.items():
            if s.get("accuracy") is not None:
                out[metric_name(name, key, value)] = float(s["accuracy"])
    return out


def log_to_mlflow(
    run: Any,
    out_dir: Path,
    summary: Mapping[str, Any],
    per_benchmark: Mapping[str, Mapping[str, Any]],
) -> None:
    """Metrics, plots, metrics.json and predictions of every benchmark into the stage's run
    (a no-op when MLflow is off: `run` is then inactive)."""
    if not getattr(run, "active", False):
        return
    metrics: dict[str, float] = {}
    for name, m in per_benchmark.items():
        metrics.update(mlflow_metrics(name, m))
    run.log_metrics(metrics)
    run.set_tags(
        {"eval.model": summary.get("model", ""), "eval.benchmarks": ",".join(per_benchmark)}
    )
    for name in per_benchmark:
        bench_dir = out_dir / name
        for fname in ("metrics.json", PLOT, "predictions.jsonl", "run_info.json"):
            if (bench_dir / fname).is_file():
                run.log_artifact(bench_dir / fname, f"eval/{name}")
    for fname in (SUMMARY, "summary.png"):
        if (out_dir / fname).is_file():
            run.log_artifact(out_dir / fname, "eval")
