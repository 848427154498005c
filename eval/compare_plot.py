"""The pipeline's evaluation plot (issue 16.14): the candidate against every model it was compared
with (the base model, the current champion), from the paired comparisons eval.compare makes.

`eval compare --plot` draws one pair (eval.report.comparison_figure); the pipeline compares the
candidate with two models, and the gate's question is "candidate vs champion", so both pairs go on
one figure: per benchmark the three headline scores, and each difference with its 95 % interval
and p-value, as the A - B plot shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLOURS = {"candidate": "#4C72B0", "base": "#DD8452", "champion": "#8172B3"}
FALLBACK = ("#937860", "#DA8BC3", "#8C8C8C")


def _colour(role: str, i: int) -> str:
    return COLOURS.get(role, FALLBACK[i % len(FALLBACK)])


def roles_series(paired: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 candidate: str = "candidate") -> dict[str, Any]:  # fmt: skip
    """The numbers the figure draws, as data (what a test checks, and what is logged beside it).

    `paired` is {other role: {benchmark: compare_benchmark result with candidate as A}}. Per
    benchmark (present in any pair, first pair's order first): `scores` {role: headline in %},
    the candidate's taken from its first pair (the pairs share the questions when the runs used
    the same settings; `n` per pair says on how many each was scored), and `differences` {other:
    (points, [lo, hi], p)} for candidate - other."""
    others = list(paired)
    benches = list(dict.fromkeys(b for o in others for b, r in paired[o].items() if r.get("n")))
    rows = []
    for bench in benches:
        pairs = {o: paired[o][bench] for o in others if paired[o].get(bench, {}).get("n")}
        first = next(iter(pairs.values()))
        scores = {candidate: 100 * first["accuracy_a"]}
        diffs = {}
        for o, r in pairs.items():
            scores[o] = 100 * r["accuracy_b"]
            ci = r.get("difference_ci95") or [r["difference"], r["difference"]]
            diffs[o] = (
                100 * r["difference"],
                [100 * ci[0], 100 * ci[1]],
                r.get("p_value", float("nan")),
            )
        rows.append({"benchmark": bench, "n": {o: r["n"] for o, r in pairs.items()}, "scores": scores,
                     "differences": diffs})  # fmt: skip
    return {"roles": [candidate, *others], "rows": rows}


def roles_figure(
    paired: Mapping[str, Mapping[str, Mapping[str, Any]]], candidate: str = "candidate"
) -> Any:
    """Left: per benchmark one bar per role (candidate, base, champion). Right: candidate - each
    other role, a point with its 95 % interval and p (one row per pair, coloured as the other
    role's bar); a pair whose interval excludes 0 and whose p is below 0.05 is drawn filled,
    otherwise hollow (a bootstrap over one video cluster gives a zero-width interval at p = 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = roles_series(paired, candidate)
    roles, rows = data["roles"], data["rows"]
    others = roles[1:]
    height = 0.8 / len(roles)
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 0.75 * max(1, len(rows)) * len(roles) / 2 + 1.6),
                                 sharey=True, gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    for i, role in enumerate(roles):
        off = (i - (len(roles) - 1) / 2) * height
        ys = [y + off for y in range(len(rows))]
        vals = [r["scores"].get(role, float("nan")) for r in rows]
        ax.barh(ys, vals, height=height * 0.95, color=_colour(role, i), label=role)
        for y, v in zip(ys, vals, strict=True):
            if v == v:  # not NaN: this role was compared on this benchmark
                ax.text(v + 1, y, f"{v:.1f}", va="center", fontsize=7)
    labels = [
        f"{r['benchmark']} (n={'/'.join(str(n) for n in dict.fromkeys(r['n'].values()))})"
        for r in rows
    ]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlim(0, 110)
    ax.set_xlabel("headline score on shared questions (%)")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.legend(fontsize=7, loc="lower right")
    dheight = 0.6 / max(1, len(others))
    for j, other in enumerate(others):
        off = (j - (len(others) - 1) / 2) * dheight
        colour = _colour(other, j + 1)
        for y, r in enumerate(rows):
            if other not in r["differences"]:
                continue
            d, (lo, hi), p = r["differences"][other]
            significant = (lo > 0 or hi < 0) and p < 0.05
            dx.errorbar([d], [y + off], xerr=[[max(0.0, d - lo)], [max(0.0, hi - d)]], fmt="o", color=colour,
                        markerfacecolor=colour if significant else "white", capsize=3,
                        label=f"{candidate} - {other}" if y == 0 else None)  # fmt: skip
            dx.text(hi + 1, y + off, f"{d:+.1f}, p={p:.2g}", va="center", fontsize=7)
    dx.axvline(0, color="#999999", linewidth=0.8)
    dx.set_xlabel(f"{candidate} - other (points, 95 % CI)")
    if others:
        dx.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{candidate} vs {', '.join(others)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_roles(paired: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path,
               candidate: str = "candidate") -> Path | None:  # fmt: skip
    """Write roles_figure as PNG; None (nothing written) when no pair has a scored benchmark."""
    if not roles_series(paired, candidate)["rows"]:
        return None
    import matplotlib.pyplot as plt

    fig = roles_figure(paired, candidate)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
