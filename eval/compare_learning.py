"""The learning table of a base -> SFT -> GRPO run (issue 11.4): each model's accuracy overall,
on multiple choice (beside its chance level) and open-ended, from the eval folders' predictions,
and the two paired tests that make the learning bar - SFT vs base and GRPO vs SFT (McNemar exact
over questions, eval.compare). Ends with the one line bench/bench_learning.py prints too:

    learning: base A sft B grpo C; sft-vs-base p=P1; grpo-vs-sft p=P2
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from eval.compare import PREDICTIONS, read_predictions

ANSWER_TYPES = ("multiple_choice", "open_ended", "numeric")
# The table's models in training order, with their pipeline role (the candidate is the GRPO model).
LEARNING_ROLES = (("base", "base"), ("sft", "sft"), ("grpo", "candidate"))


def answer_type_counts(bench_dir: Path) -> dict[str, Any]:
    """{"all": [correct, n], <answer type>: [correct, n], "mc_chance": mean 1/options} of one
    benchmark's predictions. Every question counts in n (an error or unanswered one is wrong),
    so two models on one benchmark are scored on the same items."""
    rows = read_predictions(bench_dir / PREDICTIONS)
    out: dict[str, Any] = {"all": [sum(bool(r.get("correct")) for r in rows), len(rows)]}
    for kind in ANSWER_TYPES:
        sel = [r for r in rows if r.get("answer_type") == kind]
        if sel:
            out[kind] = [sum(bool(r.get("correct")) for r in sel), len(sel)]
    options = [len(r["options"]) for r in rows if r.get("answer_type") == "multiple_choice" and r.get("options")]
    out["mc_chance"] = sum(1 / n for n in options) / len(options) if options else None
    return out


def _cell(counts: list[int] | None) -> str:
    if not counts:
        return "-"
    c, n = counts
    return f"{100 * c / n:.1f} % ({c}/{n})" if n else "-"


def _p(pair: dict[str, Any] | None) -> float:
    return float(pair["p_value"]) if pair and pair.get("p_value") is not None else math.nan


def learning_result(counts: dict[str, dict[str, Any]], sft_vs_base: dict[str, Any] | None,
                    grpo_vs_sft: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The table's numbers for one benchmark: `counts` {role: answer_type_counts}, the two
    compare_benchmark results (A = the later model)."""
    score = {name: (lambda c: c[0] / c[1] if c[1] else math.nan)(counts[role]["all"])
             for name, role in LEARNING_ROLES if role in counts}  # fmt: skip
    line = (f"learning: base {score.get('base', math.nan):.3f} sft {score.get('sft', math.nan):.3f} "
            f"grpo {score.get('grpo', math.nan):.3f}; sft-vs-base p={_p(sft_vs_base):.3g}; "
            f"grpo-vs-sft p={_p(grpo_vs_sft):.3g}")  # fmt: skip
    return {"score": score, "sft_vs_base": sft_vs_base, "grpo_vs_sft": grpo_vs_sft, "line": line}


def _pair_text(name: str, pair: dict[str, Any] | None) -> str:
    if not pair or pair.get("difference") is None:
        return f"- {name}: not compared"
    lo, hi = pair.get("difference_ci95") or (math.nan, math.nan)
    return (f"- {name}: {100 * pair['difference']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}], "
            f"wins {pair['wins']} losses {pair['losses']} (n={pair['n']}), "
            f"{pair.get('test', 'mcnemar')} p = {pair['p_value']:.3g}")  # fmt: skip


def learning_markdown(bench: str, counts: dict[str, dict[str, Any]], learning: dict[str, Any]) -> str:
    """Markdown: one row per model (base, sft, grpo), the two paired tests, the learning line."""
    chance = next((c["mc_chance"] for c in counts.values() if c.get("mc_chance") is not None), None)
    mc = "multiple choice" + (f" (chance {100 * chance:.0f} %)" if chance is not None else "")
    kinds = [k for k in ANSWER_TYPES if any(k in c for c in counts.values())]
    heads = ["overall", *(mc if k == "multiple_choice" else k.replace("_", "-") for k in kinds)]
    lines = [f"**learning on {bench}** (held-out questions, greedy, graded exactly):", "",
             "| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]  # fmt: skip
    for name, role in LEARNING_ROLES:
        if role in counts:
            cells = [_cell(counts[role]["all"]), *(_cell(counts[role].get(k)) for k in kinds)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", _pair_text("sft vs base", learning["sft_vs_base"]),
              _pair_text("grpo vs sft", learning["grpo_vs_sft"]), "", learning["line"]]  # fmt: skip
    return "\n".join(lines) + "\n"
