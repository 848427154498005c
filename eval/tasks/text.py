"""Text benchmarks (no video): for the text-only reasoning models (qwen2 / qwen3 families) and any
vision-language model asked without a video.

- `synth_text`: `longrl synth --kind text` word problems (numeric, multiple choice, exact names).
  With `--data DIR` holding a `longrl synth --kind text` folder, its held-out `eval.jsonl` split
  (disjoint from the sft/rl splits by construction); without one, SYNTH_TEXT_PROBLEMS problems
  generated from the held-out seed SYNTH_TEXT_SEED (the same code writes the same questions, so
  every model is scored on the same benchmark). Another seed is not a disjoint set: the rate and
  sequence kinds have a few hundred distinct questions each, and 12 of the 200 also appear in a
  default seed-0 training folder - for a strictly unseen set, pass the training folder as --data.
  Asked in the training format; graded as the GRPO reward grades them.
- `gsm8k`: GSM8K's test split as released (HF openai/gsm8k `main/test-*.parquet`, or the original
  `test.jsonl`): `question`, `answer` = worked solution ending "#### 72". Graded exactly
  (`exact_number`: the same rational value, no tolerance).
- `math`: MATH / MATH-500 as released: `problem`, `solution` with the answer in its last
  `\\boxed{}` (or an `answer` field), `type`/`subject`, `level`. Graded exactly after LaTeX
  normalisation (`math_equiv`); broken down by subject and level.

--data may be the file itself or a folder holding it (layouts in each task's `layout`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_gen.schema import QARecord, question_id
from eval.filters import GSM8K_CHAIN, MATH_CHAIN
from eval.task import EvalItem, TaskError, TaskSpec, register, training_style_question
from eval.tasks.common import set_breakdown

SYNTH_TEXT_SEED = 1_000_003  # held out: `longrl synth --kind text` defaults to seed 0
SYNTH_TEXT_PROBLEMS = 200
BOXED_PROMPT = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)


def _text_item(qid: str, question: str, answer: str, answer_type: str, **kw: Any) -> EvalItem:
    return EvalItem(
        qid=qid,
        video_path="",
        question=question,
        answer=answer,
        answer_type=answer_type,
        cluster=qid,
        modality="text",
        **kw,
    )


def _unreadable(qid: str, why: str) -> EvalItem:
    return _text_item(qid, "", "", "numeric", error=why)


def _record_item(rec: QARecord) -> EvalItem:
    item = _text_item(
        rec.id,
        rec.question,
        str(rec.answer),
        rec.answer_type,
        options=list(rec.options),
        meta={"source": rec.source},
    )
    return set_breakdown(
        item, category=rec.category, subcategory=rec.subcategory, answer_type=rec.answer_type
    )


def load_synth_text(root: Path) -> list[EvalItem]:
    manifest = root / "manifest.json"
    fmt = None
    if manifest.is_file():
        try:
            fmt = json.loads(manifest.read_text()).get("format")
        except (OSError, json.JSONDecodeError) as exc:
            raise TaskError(f"{manifest}: cannot read the manifest ({exc})") from exc
    if fmt == "longrl-synth":
        raise TaskError(f"{root} is a `longrl synth` video benchmark: use --benchmark synth")
    if fmt != "longrl-synth-text":  # no text synth folder given: the held-out benchmark
        from data_gen.synth_text import TextSynthConfig, make_problems

        recs = make_problems(TextSynthConfig(problems=SYNTH_TEXT_PROBLEMS, seed=SYNTH_TEXT_SEED))
        return [_record_item(r) for r in recs]
    path = root / "eval.jsonl"
    if not path.is_file():
        raise TaskError(f"{path}: the text synth folder has no eval split")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(_record_item(QARecord.from_dict(json.loads(line)).validate()))
        except (ValueError, TypeError, KeyError) as exc:
            items.append(
                _unreadable(f"unreadable:eval.jsonl:{n}", f"{path}:{n}: cannot read ({exc})")
            )
    return items


def _rows(path: Path) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(where, row, why unreadable) of a .jsonl / .json / .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [
            (f"{path.name}:row {n}", r, "")
            for n, r in enumerate(pq.read_table(path).to_pylist(), 1)
        ]
    if path.suffix == ".json":  # the original MATH release: one problem per file
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return [(str(path), None, f"not valid JSON ({exc})")]
        return [
            (
                str(path),
                row if isinstance(row, dict) else None,
                "" if isinstance(row, dict) else "not an object",
            )
        ]
    if path.suffix != ".jsonl":
        raise TaskError(f"{path}: not a .jsonl, .json or .parquet file")
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((f"{path.name}:line {n}", None, f"not valid JSON ({exc.msg})"))
            continue
        ok = isinstance(row, dict)
        out.append(
            (f"{path.name}:line {n}", row if ok else None, "" if ok else "not a JSON object")
        )
    return out


def _files(root: Path, globs: tuple[str, ...], name: str) -> list[Path]:
    if root.is_file():
        return [root]
    for pattern in globs:
        if found := sorted(p for p in root.glob(pattern) if p.is_file()):
            return found
    raise TaskError(f"{name}: no test file under {root} (looked for {', '.join(globs)})")


def _dedup(items: list[EvalItem]) -> list[EvalItem]:
    """A repeated question keeps its first row; later copies are errors naming the first."""
    first: dict[str, str] = {}
    out = []
    for it in items:
        if it.qid in first:
            where = it.meta.get("where", "")
            out.append(
                _unreadable(f"duplicate:{where}", f"{where}: the same question as {first[it.qid]}")
            )
            continue
        first[it.qid] = it.meta.get("where", "")
        out.append(it)
    return out


GSM8K_GLOBS = (
    "main/test-*.parquet",
    "test-*.parquet",
    "data/test-*.parquet",
    "test.jsonl",
    "grade_school_math/data/test.jsonl",
)


def load_gsm8k(root: Path) -> list[EvalItem]:
    items = []
    for path in _files(root, GSM8K_GLOBS, "gsm8k"):
        for where, row, why in _rows(path):
            qid = f"unreadable:{where}"
            if row is None:
                items.append(_unreadable(qid, f"{where}: {why}"))
                continue
            question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "")
            if "problem" in row and not question:
                raise TaskError(
                    f"{where}: a MATH row (problem/solution), not GSM8K: use --benchmark math"
                )
            if not question or "####" not in answer:
                items.append(
                    _unreadable(
                        qid,
                        f"{where}: not a GSM8K row (needs 'question' and an 'answer' "
                        "ending '#### N')",
                    )
                )
                continue
            gold = answer.rpartition("####")[2].strip().replace(",", "")
            items.append(
                _text_item(
                    question_id("gsm8k", question), question, gold, "numeric", meta={"where": where}
                )
            )
    return _dedup(items)


MATH_GLOBS = (
    "test/*/*.json",
    "MATH/test/*/*.json",
    "test.jsonl",
    "*/test-*.parquet",
    "data/test-*.parquet",
    "test-*.parquet",
)


def _math_gold(row: dict[str, Any]) -> str:
    from common.math_answers import boxed_content

    if isinstance(row.get("answer"), (str, int, float)) and str(row["answer"]).strip():
        return str(row["answer"]).strip()
    return boxed_content(str(row.get("solution") or "")) or ""


def load_math(root: Path) -> list[EvalItem]:
    from data_gen.import_text import plain_number

    items = []
    base = root if root.is_dir() else root.parent
    for path in _files(root, MATH_GLOBS, "math"):
        for where, row, why in _rows(path):
            qid = f"unreadable:{where}"
            if row is None:
                items.append(_unreadable(qid, f"{where}: {why}"))
                continue
            problem = str(row.get("problem") or "").strip()
            if not problem and "####" in str(row.get("answer") or ""):
                raise TaskError(
                    f"{where}: a GSM8K row (question, '#### N'), not MATH: use --benchmark gsm8k"
                )
            gold = _math_gold(row)
            if not problem or not gold:
                items.append(
                    _unreadable(
                        qid,
                        f"{where}: not a MATH row (needs 'problem' and an 'answer' or a "
                        "solution with \\boxed{})",
                    )
                )
                continue
            if row.get("unique_id"):  # MATH-500 names each problem by its file in the release
                pid = str(row["unique_id"])
            elif path.suffix == ".json":
                pid = path.relative_to(base).as_posix().removeprefix("MATH/")
            else:
                pid = question_id("math", problem)
            level = row.get("level")
            level = f"Level {level}" if isinstance(level, int) else str(level or "")
            number = plain_number(gold)
            item = _text_item(
                pid,
                problem,
                gold,
                "numeric" if number is not None else "open_ended",
                meta={"where": where},
            )
            items.append(
                set_breakdown(item, subject=row.get("type") or row.get("subject"), level=level)
            )
    return _dedup(items)


TEXT = dict(modality="text", accepts_file=True)
register(
    TaskSpec(
        name="synth_text",
        loader=load_synth_text,
        prompt_template="{question}\n{options}",
        prompt_fn=training_style_question,
        answer_type="mixed",
        native_style="reasoning",
        breakdown_keys=("category", "subcategory", "answer_type"),
        max_new_tokens=512,
        needs_data=False,
        description=f"`longrl synth --kind text` word problems: a folder's eval split, else {SYNTH_TEXT_PROBLEMS} "
        f"held-out problems (seed {SYNTH_TEXT_SEED})",
        layout="    (none needed) or a `longrl synth --kind text` folder: manifest.json, eval.jsonl\n",
        **TEXT,
    )
)
register(
    TaskSpec(
        name="gsm8k",
        loader=load_gsm8k,
        prompt_template=BOXED_PROMPT,
        answer_type="numeric",
        filters=GSM8K_CHAIN,
        grader="exact_number",
        max_new_tokens=512,
        markers=GSM8K_GLOBS,
        folder_names=("gsm8k", "GSM8K"),
        description="GSM8K test split (grade-school math; exact numeric answers)",
        layout="    main/test-00000-of-00001.parquet (HF openai/gsm8k) or test.jsonl: {question, answer: "
        "'... #### 72'}; or --data the file itself\n",
        **TEXT,
    )
)
register(
    TaskSpec(
        name="math",
        loader=load_math,
        prompt_template=BOXED_PROMPT,
        answer_type="mixed",
        filters=MATH_CHAIN,
        grader="math_equiv",
        breakdown_keys=("subject", "level"),
        max_new_tokens=1024,
        markers=MATH_GLOBS,
        folder_names=("MATH", "math", "MATH-500", "competition_math", "hendrycks_math"),
        description="MATH / MATH-500 (competition math; exact answers after LaTeX normalisation)",
        layout="    test/<subject>/<n>.json (the original release), test.jsonl (MATH-500), or "
        "<subject>/test-*.parquet / data/test-*.parquet: {problem, solution with \\boxed{}, type|subject, "
        "level[, answer, unique_id]}; or --data the file itself\n",
        **TEXT,
    )
)
