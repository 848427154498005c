"""Every benchmark loader on a small fixture in the benchmark's released schema."""

from __future__ import annotations

import json

import pytest

from eval.task import TaskError, get_task, list_tasks, select_subtitles


def _by_qid(items):
    return {it.qid: it for it in items}


def test_registry_lists_every_benchmark() -> None:
    names = {t.name for t in list_tasks()}
    assert {
        "videomme",
        "longvideobench",
        "mlvu",
        "nextqa",
        "perceptiontest",
        "vnbench",
        "activitynetqa",
        "longvideo_reason",
        "synth",
    } <= names
    with pytest.raises(KeyError, match="unknown benchmark 'videome'"):
        get_task("videome")


def test_videomme(make_benchmark) -> None:
    task = get_task("videomme")
    items = _by_qid(task.load(make_benchmark("videomme")))
    assert set(items) == {"001-1", "001-2", "601-1"}
    q = items["001-1"]
    assert q.options == ["One.", "Two.", "Three.", "Four."] and q.answer == "C"
    assert q.breakdown == {
        "duration": "short",
        "domain": "Knowledge",
        "task_type": "Counting Problem",
    }
    assert q.cluster == "fFjv93ACGo8" and not q.error
    assert [s.text for s in q.subtitle_lines()] == [
        "welcome to the show",
        "three red shapes",
    ]  # <font> removed
    assert items["601-1"].subtitle_lines() is None  # no subtitle file for this video
    prompt = task.render_prompt(q)
    assert prompt.startswith(
        "Select the best answer to the following multiple-choice question based on the video."
    )
    assert (
        "How many red shapes appear?\nA. One.\nB. Two.\nC. Three.\nD. Four.\nThe best answer is:"
        in prompt
    )
    # subtitles: only the lines on screen at the sampled frame times (Video-MME's protocol)
    subs = select_subtitles(q.subtitle_lines(), [1.5])
    with_subs = task.render_prompt(q, subs)
    assert with_subs.startswith("This video's subtitles are listed below:\nthree red shapes\n")
    assert "based on the video and the subtitles" in with_subs and "welcome" not in with_subs
    assert "No subtitles available" in task.render_prompt(items["601-1"], "")


def test_videomme_found_inside_data_dir_and_missing_files_named(make_benchmark, tmp_path) -> None:
    task = get_task("videomme")
    make_benchmark("videomme", tmp_path / "all" / "Video-MME")
    assert len(task.load(tmp_path / "all")) == 3  # --data may hold several benchmarks
    with pytest.raises(TaskError, match="Expected layout"):
        task.load(tmp_path / "nothing")


def test_missing_video_is_an_item_error_not_a_substitute(make_benchmark) -> None:
    root = make_benchmark("videomme")
    (root / "data" / "kTxSAs2EzKc.mp4").unlink()
    items = _by_qid(get_task("videomme").load(root))
    assert "video file not found" in items["601-1"].error and "kTxSAs2EzKc" in items["601-1"].error
    assert not items["001-1"].error


def test_longvideobench(make_benchmark) -> None:
    task = get_task("longvideobench")
    items = _by_qid(task.load(make_benchmark("longvideobench")))
    a, b = items["86CxyhFV9MI_0"], items["pZrK2xe5TRo_3"]
    assert a.answer == "B" and b.answer == "E" and len(b.options) == 5
    assert a.breakdown["duration_group"] == "15" and a.breakdown["question_category"] == "TOS"
    # "start"/"end"/"line" style, shifted by starting_timestamp_for_subtitles
    assert [(s.start_s, s.text) for s in a.subtitle_lines()] == [
        (0.0, "good morning"),
        (1.0, "goodbye now"),
    ]
    # "timestamp"/"text" style with an open end
    b_lines = b.subtitle_lines()
    assert b_lines[1].text == "she waves" and b_lines[1].end_s == pytest.approx(2.0)
    prompt = task.render_prompt(b)
    assert prompt.endswith(
        "E. nothing\nAnswer with the option's letter from the given choices directly."
    )


def test_longvideobench_parquet_release(make_benchmark, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = make_benchmark("longvideobench")
    rows = json.loads((root / "lvb_val.json").read_text())
    for r in rows:
        cands = r.pop("candidates")
        for i in range(5):
            r[f"option{i}"] = cands[i] if i < len(cands) else "N/A"
    (root / "lvb_val.json").unlink()
    pq.write_table(pa.Table.from_pylist(rows), root / "validation-00000-of-00001.parquet")
    items = _by_qid(get_task("longvideobench").load(root))
    assert items["86CxyhFV9MI_0"].options == ["hello", "goodbye", "thanks", "welcome"]
    assert items["pZrK2xe5TRo_3"].answer == "E"


def test_mlvu(make_benchmark) -> None:
    task = get_task("mlvu")
    items = _by_qid(task.load(make_benchmark("mlvu")))
    assert set(items) == {"1_plotQA_0", "4_count_0", "4_count_1"}
    assert items["4_count_0"].answer == "D"  # text answer "3" is the 4th candidate
    assert items["1_plotQA_0"].breakdown == {"question_type": "plotQA"}
    assert items["4_count_0"].cluster == items["4_count_1"].cluster
    assert "(A) Yellow\n(B) Red" in task.render_prompt(items["1_plotQA_0"])
    assert task.headline == "macro"


def test_mlvu_answer_not_among_candidates_is_named(make_benchmark) -> None:
    root = make_benchmark("mlvu")
    data = json.loads((root / "json" / "4_count.json").read_text())
    data[1]["answer"] = "7"
    (root / "json" / "4_count.json").write_text(json.dumps(data))
    with pytest.raises(
        TaskError, match=r"4_count.json record 1: answer '7' is not one of the options"
    ):
        get_task("mlvu").load(root)


def test_nextqa(make_benchmark) -> None:
    items = _by_qid(get_task("nextqa").load(make_benchmark("nextqa")))
    q = items["6233408665_8"]
    assert q.answer == "D" and q.options[3] == "clap"
    assert q.breakdown == {"type": "TN", "group": "Temporal"}
    assert q.video_path.endswith("NExTVideo/1150/6233408665.mp4") and not q.error
    assert items["4010069381_0"].breakdown["group"] == "Descriptive"
    assert q.question.endswith("singing?")


def test_perceptiontest(make_benchmark) -> None:
    items = _by_qid(get_task("perceptiontest").load(make_benchmark("perceptiontest")))
    assert set(items) == {"video_10909_0", "video_10909_1", "video_7046_0"}
    assert items["video_10909_0"].answer == "C" and items["video_10909_1"].answer == "A"
    assert items["video_7046_0"].breakdown == {"area": "semantics", "reasoning": "explanatory"}


def test_vnbench(make_benchmark) -> None:
    task = get_task("vnbench")
    items = task.load(make_benchmark("vnbench"))
    assert len(items) == 8 and task.group_all
    ret = [it for it in items if it.breakdown["type"] == "ret_insert1"]
    assert [it.answer for it in ret] == ["B", "A", "D", "C"]  # "river" moves as options roll
    assert len({it.group for it in ret}) == 1 and ret[0].breakdown["task"] == "retrieval"
    assert not ret[0].error


def test_activitynetqa(make_benchmark) -> None:
    task = get_task("activitynetqa")
    items = _by_qid(task.load(make_benchmark("activitynetqa")))
    q = items["v_--1DO2V4K74_1"]
    assert q.answer == "rock climbing" and q.answer_type == "open_ended" and q.options == []
    assert q.breakdown == {"type": "motion"} and q.video_path.endswith("all_test/v_--1DO2V4K74.mp4")
    assert task.metric == "llm_judge"
    assert (
        task.render_prompt(q)
        == "what is the person in the video doing?\nAnswer the question using a single word or phrase."
    )


def test_longvideo_reason_eval_split(make_benchmark) -> None:
    task = get_task("longvideo_reason")
    items = task.load(make_benchmark("longvideo_reason"))
    types = sorted(it.answer_type for it in items)
    assert types == ["multiple_choice", "numeric", "open_ended"]
    mc = next(it for it in items if it.answer_type == "multiple_choice")
    assert mc.breakdown["category"] == "Goal & Purpose" and mc.answer == "B" and not mc.error
    prompt = task.render_prompt(mc)  # the training prompt format
    assert "Options:\nA. to leave\nB. to let the dog in" in prompt and "option's letter" in prompt


def test_bad_json_is_a_named_error(make_benchmark) -> None:
    root = make_benchmark("perceptiontest")
    (root / "mc_question_valid.json").write_text("{not json")
    with pytest.raises(TaskError, match="mc_question_valid.json: not valid JSON"):
        get_task("perceptiontest").load(root)
