"""Text benchmarks (issue 13, eval of text-only reasoning models): synth_text (held-out seed or a
folder's eval split), GSM8K and MATH from local files in their released schemas, the math
answer filters on a table of real-style outputs, exact grading, breakdowns, `longrl eval` end to
end on a tiny Qwen3 text model with resume, and the one-line error for a video benchmark asked
of a text model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from common.math_answers import boxed_content, exact_value, math_equal, normalize_math
from eval.engines import Generation, Prompt, chat_messages
from eval.filters import GSM8K_CHAIN, MATH_CHAIN, apply_chain, grade
from eval.task import TaskError, get_task
from pipelines.cli import app

FAST = ["--set", "max_new_tokens=6", "--set", "bootstrap=100"]

# HF openai/gsm8k rows (question, answer = worked solution ending "#### N")
GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
        "clips altogether in April and May.\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned "
        "0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    },
    {
        "question": "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts "
        "in total does it take?",
        "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
        "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
    },
    {
        "question": "A shop sold 1,250 pens on Monday and 750 on Tuesday. How many pens did it sell?",
        "answer": "1250 + 750 = <<1250+750=2000>>2000\n#### 2,000",
    },
]
# MATH rows (problem, solution with \boxed{}, type, level), MATH-500 adds answer/subject/unique_id
MATH_ROWS = [
    (
        "algebra",
        "1",
        {
            "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
            "level": "Level 1",
            "type": "Algebra",
            "solution": "We have $\\frac12+\\frac14 = \\frac34$, so the answer is $\\boxed{\\frac{3}{4}}$.",
        },
    ),
    (
        "algebra",
        "2",
        {
            "problem": "Solve $2x + 3 = 13$.",
            "level": "Level 2",
            "type": "Algebra",
            "solution": "Subtracting 3 gives $2x = 10$, so $x = \\boxed{5}$.",
        },
    ),
    (
        "geometry",
        "7",
        {
            "problem": "A right angle measures how many degrees?",
            "level": "Level 1",
            "type": "Geometry",
            "solution": "It is $\\boxed{90^\\circ}$.",
        },
    ),
    (
        "number_theory",
        "3",
        {
            "problem": "Expand $(x+1)^2 - 2x$.",
            "level": "Level 3",
            "type": "Number Theory",
            "solution": "$(x+1)^2-2x = x^2+2x+1-2x = \\boxed{x^2+1}$.",
        },
    ),
]

# (model output, answer read, rule, gold, graded right) - output styles of real models
GSM8K_TABLE = [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", "hash", "72", True),
    ("So the total is $1,250.", "1250", "last_number", "1250", True),
    ("The answer is $18.", "18", "answer_is", "18", True),
    ("Each box has 6, so 6 * 12 = 72. Thus the answer is \\boxed{72}.", "72", "boxed", "72", True),
    ("<think>3 + 4 = 7</think>\n<answer>7</answer>", "7", "last_number", "7", True),
    ("She earns 0.2 per minute, 0.2 x 50 = 10 dollars.", "10", "last_number", "10", True),
    ("**Final Answer:** \\boxed{\\$10.00}", "10", "boxed", "10", True),
    ("The final answer is 10001", "10001", "answer_is", "10000", False),  # exact: no tolerance
    ("First 5, then 3 more: 8. Wait, I think it is 9.", "9", "last_number", "8", False),
    ("The temperature fell to -3 degrees.", "-3", "last_number", "-3", True),
    (
        "<think>Let me count the clips, 48 and then",
        None,
        "no_number",
        "72",
        False,
    ),  # truncated thought
    ("I cannot solve this.", None, "no_number", "3", False),
]
MATH_TABLE = [
    ("Thus $\\boxed{\\dfrac{3}{4}}$.", "\\dfrac{3}{4}", "boxed", "\\frac{3}{4}", True),
    (
        "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
        "\\frac{1}{2}",
        "final_answer",
        "0.5",
        True,
    ),
    ("<answer>x^2+1</answer>", "x^2+1", "whole", "x^2+1", True),
    ("<answer>x^2-1</answer>", "x^2-1", "whole", "x^2+1", False),
    ("so the value is 0.5", "0.5", "last_number", "\\frac12", True),
    ("The length is $\\boxed{10\\text{ inches}}$.", "10\\text{ inches}", "boxed", "10", True),
    ("Solving, \\boxed{x = 5}", "x = 5", "boxed", "5", True),
    ("The angle is \\boxed{90^\\circ}", "90^\\circ", "boxed", "90", True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", "boxed", "\\frac{\\sqrt3}{2}", True),
    ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", "boxed", "\\sqrt{12}", False),  # not symbolic
    ("The answer is \\boxed 5", "5", "boxed", "5", True),
    ("We get \\boxed{-\\frac{1}{4}}", "-\\frac{1}{4}", "boxed", "-0.25", True),
    ("Hence the pairs are \\boxed{(1,2)}", "(1,2)", "boxed", "(1, 2)", True),
    ("<think>the integral is", None, "no_answer", "1", False),
]


@pytest.mark.parametrize("output,read,rule,gold,right", GSM8K_TABLE)
def test_gsm8k_filter_reads_real_style_outputs(output, read, rule, gold, right):
    ext = apply_chain(GSM8K_CHAIN, output)
    assert (ext.answer, ext.rule) == (read, rule)
    assert grade("exact_number", ext.answer, gold) is right


@pytest.mark.parametrize("output,read,rule,gold,right", MATH_TABLE)
def test_math_filter_reads_real_style_outputs(output, read, rule, gold, right):
    ext = apply_chain(MATH_CHAIN, output)
    assert (ext.answer, ext.rule) == (read, rule)
    assert grade("math_equiv", ext.answer, gold) is right


def test_math_normalisation_and_exact_values():
    assert boxed_content("a \\boxed{\\frac{1}{\\sqrt{2}}} b \\boxed{7}") == "7"
    assert boxed_content("\\boxed{\\frac{1}{2}") is None  # unclosed
    assert normalize_math("$\\left( 1, 2 \\right)$.") == "(1,2)"
    assert (
        normalize_math("\\tfrac12") == "\\frac{1}{2}" and normalize_math("\\sqrt3") == "\\sqrt{3}"
    )
    assert (
        normalize_math("1,234,567") == "1234567" and normalize_math("1,2") == "1,2"
    )  # a list stays
    assert normalize_math("\\text{Monday}") == "Monday" and normalize_math("x=1, y=2") == "x=1,y=2"
    assert exact_value("-\\frac{3}{4}") == exact_value("-0.75") == exact_value("-3/4")
    assert exact_value("x^2") is None and exact_value("1/0") is None
    assert math_equal("50\\%", "50") and not math_equal("", "0") and not math_equal(None, "1")
    with pytest.raises(ValueError, match="unknown grader"):
        grade("fuzzy", "1", "1")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_loads_the_hf_parquet_and_the_original_jsonl_alike(tmp_path):
    hf = tmp_path / "gsm8k" / "main" / "test-00000-of-00001.parquet"
    hf.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS), hf)
    orig = _jsonl(
        tmp_path / "orig" / "test.jsonl",
        GSM8K_ROWS + [{"question": "No answer here", "answer": "3"}],
    )
    task = get_task("gsm8k")
    a, b = task.load(tmp_path), task.load(orig)  # a folder holding gsm8k/, and the file itself
    assert [i.answer for i in a] == ["72", "10", "3", "2000"]
    assert [(i.qid, i.question, i.answer) for i in a] == [
        (i.qid, i.question, i.answer) for i in b[:4]
    ]
    assert all(i.modality == "text" and i.cluster == i.qid and not i.video_path for i in a)
    assert b[4].error.startswith("test.jsonl:line 5: not a GSM8K row")
    with pytest.raises(TaskError, match="a MATH row .* use --benchmark math"):
        task.load(_jsonl(tmp_path / "m.jsonl", [MATH_ROWS[0][2]]))


def test_math_loads_the_release_layouts_with_subject_and_level(tmp_path):
    for subject, n, row in MATH_ROWS:  # the original release: MATH/test/<subject>/<n>.json
        p = tmp_path / "MATH" / "test" / subject / f"{n}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(row))
    task = get_task("math")
    items = task.load(tmp_path)
    assert {i.qid: i.answer for i in items} == {
        "test/algebra/1.json": "\\frac{3}{4}",
        "test/algebra/2.json": "5",
        "test/geometry/7.json": "90^\\circ",
        "test/number_theory/3.json": "x^2+1",
    }
    assert {i.qid: i.breakdown["subject"] for i in items}["test/geometry/7.json"] == "Geometry"
    assert {i.answer_type for i in items} == {"numeric", "open_ended"}
    # MATH-500 (test.jsonl: answer, subject, integer level, unique_id as in the release)
    m500 = [
        {
            "problem": r["problem"],
            "solution": r["solution"],
            "answer": "\\frac34" if i == 0 else "5",
            "subject": r["type"],
            "level": i + 1,
            "unique_id": f"test/{s}/{n}.json",
        }
        for i, (s, n, r) in enumerate(MATH_ROWS[:2])
    ]
    got = task.load(_jsonl(tmp_path / "m500" / "test.jsonl", m500))
    assert [(i.qid, i.breakdown) for i in got] == [
        ("test/algebra/1.json", {"subject": "Algebra", "level": "Level 1"}),
        ("test/algebra/2.json", {"subject": "Algebra", "level": "Level 2"}),
    ]
    # per-subject parquet (EleutherAI/hendrycks_math); a row without an answer is an error
    pq.write_table(
        pa.Table.from_pylist(
            [r for _, _, r in MATH_ROWS]
            + [{"problem": "x?", "solution": "none", "type": "Algebra", "level": "Level 1"}]
        ),
        (tmp_path / "hm" / "algebra").mkdir(parents=True) or tmp_path / "hm/algebra/test-0.parquet",
    )
    rows = task.load(tmp_path / "hm")
    assert [i.answer for i in rows[:4]] == ["\\frac{3}{4}", "5", "90^\\circ", "x^2+1"]
    assert "not a MATH row" in rows[4].error
    with pytest.raises(TaskError, match="a GSM8K row .* use --benchmark gsm8k"):
        task.load(_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS[:1]))


def test_synth_text_is_held_out_and_reads_a_folders_eval_split(tmp_path):
    from data_gen.synth_text import TextSynthConfig, generate_text, make_problems

    task = get_task("synth_text")
    a, b = task.load(tmp_path / "none"), task.load(tmp_path)  # nothing there: the held-out set
    assert len(a) == 200 and [i.qid for i in a] == [i.qid for i in b]
    # another seed, but the rate/sequence kinds have small spaces: 12 of the 200 are also in a
    # default seed-0 folder (documented); a folder's own eval split is disjoint from its training
    trained = {r.id for r in make_problems(TextSynthConfig(problems=200, seed=0))}
    assert len(trained & {i.qid for i in a}) == 12
    assert {i.breakdown["answer_type"] for i in a} == {"numeric", "multiple_choice", "open_ended"}
    generate_text(TextSynthConfig(problems=20, seed=3), tmp_path / "s")
    split = [json.loads(x)["id"] for x in (tmp_path / "s" / "eval.jsonl").read_text().splitlines()]
    assert [i.qid for i in task.load(tmp_path / "s")] == split and len(split) == 4
    with pytest.raises(TaskError, match="synth --kind text` folder: use --benchmark synth_text"):
        get_task("synth").load(tmp_path / "s")
    seen = {
        json.loads(x)["id"]
        for f in ("sft", "rl")
        for x in (tmp_path / "s" / f"{f}.jsonl").read_text().splitlines()
    }
    assert len(seen) == 16 and not seen & set(split)


def test_runner_grades_exactly_and_asks_text_questions_with_the_text_system_prompt():
    from eval.config import EvalConfig
    from eval.runner import score
    from eval.task import system_for
    from training.prompts import SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT

    task = get_task("gsm8k")
    item = task.load(_jsonl(Path(__import__("tempfile").mkdtemp()) / "t.jsonl", GSM8K_ROWS[3:]))[0]
    right = score(task, item, Generation("so 2,000 pens #### 2000", 5, True), EvalConfig())
    near = score(
        task, item, Generation("#### 2000.1", 5, True), EvalConfig()
    )  # within 1e-4: still wrong
    assert (right["correct"], right["grader"], right["grade_rule"]) == (
        True,
        "exact",
        "exact_number",
    )
    assert near["correct"] is False
    assert system_for(SYSTEM_PROMPT, item) == TEXT_SYSTEM_PROMPT and system_for(None, item) is None
    assert chat_messages(Prompt("q?", "sys"), with_video=False) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "q?"}]},
    ]


@pytest.fixture(scope="module")
def qwen3_text(tmp_path_factory) -> Path:
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    return write_tiny_model_folder(
        tmp_path_factory.mktemp("qwen3_text"), TinyModelSpec(arch="qwen3")
    )


def _eval(*args: str):
    return CliRunner().invoke(app, ["eval", *args], catch_exceptions=False)


def test_eval_end_to_end_on_a_tiny_qwen3_text_model_and_resume(qwen3_text, tmp_path):
    out = tmp_path / "ev"
    r = _eval(
        "--model",
        str(qwen3_text),
        "--tasks",
        "synth_text",
        "--out",
        str(out),
        "--limit",
        "6",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "synth_text" / "metrics.json").read_text())
    preds = [
        json.loads(x) for x in (out / "synth_text" / "predictions.jsonl").read_text().splitlines()
    ]
    assert m["questions"] == 6 and m["generated"] == 6 and len(preds) == 6
    assert all(
        p["status"] in ("answered", "unanswered") and p["num_frames"] == 0 and p["video"] == ""
        for p in preds
    )
    assert {p["system"] for p in preds} == {
        __import__("training.prompts").prompts.TEXT_SYSTEM_PROMPT
    }
    assert (
        "frames" not in json.loads((out / "synth_text" / "run_info.json").read_text())["settings"]
    )
    # resume: the same command asks nothing again; another frame count changes nothing for text;
    # a larger --limit continues with more questions
    r = _eval(
        "--model",
        str(qwen3_text),
        "--tasks",
        "synth_text",
        "--out",
        str(out),
        "--limit",
        "6",
        "--frames",
        "8",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "synth_text" / "metrics.json").read_text())["resumed"] == 6
    r = _eval(
        "--model",
        str(qwen3_text),
        "--tasks",
        "synth_text",
        "--out",
        str(out),
        "--limit",
        "9",
        *FAST,
    )
    m = json.loads((out / "synth_text" / "metrics.json").read_text())
    assert (m["resumed"], m["generated"], m["questions"]) == (6, 3, 9)
    # GSM8K and MATH from files: every question graded exactly (no judge), MATH by subject/level
    data = tmp_path / "data"
    _jsonl(data / "gsm8k" / "test.jsonl", GSM8K_ROWS)
    for subject, n, row in MATH_ROWS:
        (data / "MATH" / "test" / subject).mkdir(parents=True, exist_ok=True)
        (data / "MATH" / "test" / subject / f"{n}.json").write_text(json.dumps(row))
    r = _eval(
        "--model",
        str(qwen3_text),
        "--tasks",
        "gsm8k,math",
        "--data",
        str(data),
        "--out",
        str(out),
        *FAST,
    )
    assert r.exit_code == 0, r.output
    mm = json.loads((out / "math" / "metrics.json").read_text())
    assert mm["questions"] == 4 and set(mm["breakdown"]) == {"subject", "level"}
    for bench, n in (("gsm8k", 4), ("math", 4)):
        rows = [json.loads(x) for x in (out / bench / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == n and all(x["correct"] is False or x["correct"] is True for x in rows)
        assert all(x.get("grader") == "exact" for x in rows if x["status"] == "answered")


def test_a_video_benchmark_for_a_text_model_is_one_clear_line(qwen3_text, tmp_path):
    r = _eval(
        "--model",
        str(qwen3_text),
        "--tasks",
        "synth",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    )
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "benchmark synth needs video input" in lines[0] and "text-only Qwen3" in lines[0]
    assert "gsm8k, math, synth_text" in lines[0] and not (tmp_path / "o").exists()
    r = _eval("--model", str(qwen3_text), "--tasks", "gsm8k", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "data is required (benchmark gsm8k" in r.output


def test_a_vision_language_model_answers_text_benchmarks_without_video(tiny_model_dir, tmp_path):
    r = _eval(
        "--model",
        str(tiny_model_dir),
        "--tasks",
        "synth_text",
        "--out",
        str(tmp_path / "o"),
        "--limit",
        "2",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    preds = [
        json.loads(x)
        for x in (tmp_path / "o" / "synth_text" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(preds) == 2 and all(p["num_video_tokens"] == 0 for p in preds)
