"""Import GSM8K- or MATH-style problem files a user already has (JSONL or parquet) as text-only
records (`longrl synth --kind text --from FILE`).

Recognised rows (field names as the public releases spell them):
- GSM8K: {"question", "answer"} where the answer is the worked solution ending "#### 72";
  the solution (without the <<48/2=24>> calculator notes) is the reasoning, 72 the answer;
- MATH: {"problem", "solution"} with the answer in the solution's last \\boxed{...} (or an
  explicit "answer" field, as MATH-500 has); the solution is the reasoning;
- plain: {"question" or "problem", "answer"} with an optional "solution"/"reasoning".

An answer that is a plain number ("1,234", "$18", "50\\%") becomes a numeric record (graded with
the numeric tolerance); any other answer ("\\frac{3}{4}", "x^2+1") an open-ended record graded
exactly (source "text-import", common.short_answers - case, spacing and punctuation ignored), no
judge. A row that cannot be read (no question, no answer, a duplicate) is an error naming
FILE:line and the reason, recorded, and the other rows are imported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_gen.schema import QARecord, RecordError, question_id

SOURCE = "text-import"
_CALC = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class ImportResult:
    records: list[QARecord]
    errors: list[str] = field(default_factory=list)  # "FILE:line N: reason"


def _rows(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, row) pairs; a row that is not a JSON object is kept as its error text."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: not a .jsonl or .parquet file")
    out: list[tuple[int, dict | str]] = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                out.append((n, f"not a JSON line ({type(exc).__name__}: {exc})"))
                continue
            out.append((n, row if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"))
    return out


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), nested braces kept."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def plain_number(answer: str) -> str | None:
    """The answer as a number string when it is one (thousands commas, $, %, LaTeX spacing
    removed), else None."""
    t = answer.strip().replace("\\!", "").replace("\\$", "").replace("\\%", "").replace("$", "")
    t = t.replace("%", "").replace("{,}", "").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    return t if _NUMBER.fullmatch(t) else None


def _text(row: dict, *keys: str) -> str:
    for k in keys:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
    return ""


def row_to_record(row: dict) -> QARecord:
    """One row -> a text record; ValueError with the reason when it cannot be read."""
    question = _text(row, "question", "problem")
    if not question:
        raise ValueError("no 'question' or 'problem' text")
    answer, reasoning = _text(row, "answer"), _text(row, "solution", "reasoning", "rationale")
    if "####" in answer:  # GSM8K: the answer field is the solution, the answer after ####
        reasoning, _, answer = answer.rpartition("####")
        reasoning, answer = _CALC.sub("", reasoning).strip(), answer.strip()
    elif not answer and reasoning:
        answer = last_boxed(reasoning) or ""
        if not answer:
            raise ValueError("no 'answer' field and no \\boxed{} answer in the solution")
    if not answer:
        raise ValueError("no answer ('answer' empty, no '#### answer', no \\boxed{})")
    number = plain_number(answer)
    level, kind = _text(row, "level"), _text(row, "type", "subject")
    rec = QARecord(id=question_id("text", question), video_id="", video_path="", question=question,
                   answer=number if number is not None else answer,
                   answer_type="numeric" if number is not None else "open_ended", category="Math",
                   subcategory=kind, reasoning=reasoning, source=SOURCE, modality="text",
                   generator=json.dumps({"import_text": "1", **({"level": level} if level else {})}))
    try:
        return rec.validate()
    except RecordError as exc:
        raise ValueError(str(exc)) from None


def import_text(path: str | Path) -> ImportResult:
    """Every readable row of `path` as a record, the others as errors (FILE:line N: reason)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    result = ImportResult([])
    first_line: dict[str, int] = {}
    for n, row in _rows(path):
        where = f"{path.name}:line {n}"
        if isinstance(row, str):
            result.errors.append(f"{where}: {row}")
            continue
        try:
            rec = row_to_record(row)
        except ValueError as exc:
            result.errors.append(f"{where}: {exc}")
            continue
        if rec.id in first_line:
            result.errors.append(f"{where}: duplicate of line {first_line[rec.id]} (same question)")
            continue
        first_line[rec.id] = n
        result.records.append(rec)
    return result


def write_import(result: ImportResult, out_dir: str | Path, source: Path) -> dict:
    """DIR/questions.jsonl (the records), DIR/import_errors.jsonl, DIR/manifest.json."""
    from data_gen.synth_text import write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "questions.jsonl", result.records)
    (out / "import_errors.jsonl").write_text("".join(json.dumps({"error": e}) + "\n" for e in result.errors))
    manifest = {"format": "longrl-text-import", "source": str(source), "records": len(result.records),
                "errors": len(result.errors),
                "numeric": sum(r.answer_type == "numeric" for r in result.records)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
