"""Loaders for the HF copies lmms-eval reads - lmms-lab/NExTQA (MC), lmms-lab/PerceptionTest_Val
(mc_question_val), lmms-lab/ActivityNetQA, sy1998/MLVU_dev - on fixtures in those released
schemas (parquet shards named as on the hub, columns and types as released, videos where their
zips put them). The same questions read from the original release and from the HF copy give the
same items; a missing video is that question's error; the HF folders are found under --data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.task import get_task
from tests.fixtures.eval_benchmarks import tiny_video


def _parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def nextqa_hf(root: Path) -> Path:
    """lmms-lab/NExTQA: MC/test-00000-of-00001.parquet + videos.zip (NExTVideo/<video>.mp4)."""
    schema = pa.schema([("video", pa.int64()), ("frame_count", pa.int64()), ("width", pa.int64()),
                        ("height", pa.int64()), ("question", pa.string()), ("answer", pa.int64()),
                        ("qid", pa.int64()), ("type", pa.string())]
                       + [(f"a{i}", pa.string()) for i in range(5)])  # fmt: skip
    rows = [
        dict(video=6233408665, frame_count=1146, width=640, height=480, qid=8, type="TN", answer=3,
             question="what did the people on the sofa do after the lady in pink finished singing",
             a0="sitting", a1="give it to the girl", a2="take music sheet", a3="clap",
             a4="walk in circles"),
        dict(video=6233408665, frame_count=1146, width=640, height=480, qid=2, type="CW", answer=0,
             question="why did the lady hold a microphone", a0="to sing", a1="to eat",
             a2="to clean", a3="to throw", a4="to sleep"),
        dict(video=4010069381, frame_count=600, width=640, height=360, qid=0, type="DC", answer=2,
             question="how many children are there", a0="one", a1="two", a2="three", a3="four",
             a4="five"),
    ]  # fmt: skip
    _parquet(root / "MC" / "test-00000-of-00001.parquet", rows, schema)
    tiny_video(root / "NExTVideo" / "6233408665.mp4", seed=7)
    tiny_video(root / "videos_full" / "part2" / "4010069381.mp4", seed=8)  # another zip's layout
    return root


def perceptiontest_hf(root: Path) -> Path:
    schema = pa.schema([("video_name", pa.string()), ("question", pa.string()),
                        ("question_id", pa.string()), ("options", pa.list_(pa.string())),
                        ("answer_id", pa.int64()), ("area", pa.string()),
                        ("reasoning", pa.string()), ("tag", pa.list_(pa.string()))])  # fmt: skip
    rows = [
        dict(video_name="video_10909", question="Is the camera moving or static?",
             question_id="0", options=["I don't know", "moving", "static or shaking"],
             answer_id=2, area="physics", reasoning="descriptive", tag=["motion"]),
        dict(video_name="video_10909", question="How many objects were put on the table?",
             question_id="1", options=["2", "3", "4"], answer_id=0, area="memory",
             reasoning="counterfactual", tag=["counting"]),
        dict(video_name="video_7046", question="What is the person doing?", question_id="0",
             options=["cooking", "cleaning", "reading"], answer_id=1, area="semantics",
             reasoning="explanatory", tag=["action"]),
    ]  # fmt: skip
    _parquet(root / "mc_question_val" / "validation-00000-of-00001.parquet", rows, schema)
    tiny_video(root / "videos" / "video_10909.mp4", seed=9)
    tiny_video(root / "videos" / "video_7046.mp4", seed=10)
    return root


def activitynetqa_hf(root: Path) -> Path:
    schema = pa.schema([("video_name", pa.string()), ("question", pa.string()),
                        ("answer", pa.string()), ("question_id", pa.string()),
                        ("type", pa.int64())])  # fmt: skip
    rows = [
        dict(video_name="--1DO2V4K74", question="what is the person in the video doing",
             answer="rock climbing", question_id="v_--1DO2V4K74_1", type=0),
        dict(video_name="--1DO2V4K74", question="is the person outdoors", answer="yes",
             question_id="v_--1DO2V4K74_2", type=3),
        dict(video_name="0HBkRdDrtUs", question="what color is the ball", answer="red",
             question_id="v_0HBkRdDrtUs_0", type=4),
    ]  # fmt: skip
    _parquet(root / "data" / "test-00000-of-00001.parquet", rows, schema)
    tiny_video(root / "all_test" / "v_--1DO2V4K74.mp4", seed=12)
    tiny_video(root / "all_test" / "v_0HBkRdDrtUs.mp4", seed=13)
    return root


def mlvu_hf(root: Path) -> Path:
    """sy1998/MLVU_dev: mlvu/test-00000-of-00001.parquet, options inside the question."""
    schema = pa.schema([("video_name", pa.string()), ("duration", pa.float64()),
                        ("question", pa.string()), ("candidates", pa.list_(pa.string())),
                        ("answer", pa.string()), ("task_type", pa.string()),
                        ("question_id", pa.string())])  # fmt: skip

    def q(text, cands):
        return text + "\n" + "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(cands))

    rows = [
        dict(video_name="movie101_66.mp4", duration=246.0, task_type="plotQA", question_id="pq_0",
             question=q("What color is the main male character in the video?",
                        ["Yellow", "Red", "Green", "Blue"]),
             candidates=["Yellow", "Red", "Green", "Blue"], answer="A"),
        dict(video_name="count_1.mp4", duration=180.0, task_type="count", question_id="ct_0",
             question=q("Throughout this video, how many times does the person jump?",
                        ["2", "4", "6", "3"]), candidates=["2", "4", "6", "3"], answer="D"),
        dict(video_name="count_1.mp4", duration=180.0, task_type="count", question_id="ct_1",
             question=q("How many times does the person sit down?", ["1", "5", "2", "0"]),
             candidates=["1", "5", "2", "0"], answer="C"),
    ]  # fmt: skip
    _parquet(root / "mlvu" / "test-00000-of-00001.parquet", rows, schema)
    tiny_video(root / "video_part_1" / "movie101_66.mp4", seed=5)
    tiny_video(root / "action_count" / "count_1.mp4", seed=6)
    return root


HF = {"nextqa": nextqa_hf, "perceptiontest": perceptiontest_hf,
      "activitynetqa": activitynetqa_hf, "mlvu": mlvu_hf}


def _view(item) -> tuple:
    return (item.question, tuple(item.options), item.answer, item.answer_type,
            tuple(sorted(item.breakdown.items())), Path(item.video_path).name, item.error)


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_copy_reads_as_the_original_release(name, make_benchmark, tmp_path) -> None:
    task = get_task(name)
    original = task.load(make_benchmark(name))
    hf = task.load(HF[name](tmp_path / f"{name}_hf"))
    assert [_view(it) for it in hf] == [_view(it) for it in original]
    if name != "mlvu":  # MLVU_dev numbers its questions itself; the others keep the ids
        assert [it.qid for it in hf] == [it.qid for it in original]
    assert len({it.cluster for it in hf}) == len({it.cluster for it in original})
    assert all(Path(it.video_path).is_file() for it in hf)


def test_found_under_data_by_the_hub_names(tmp_path) -> None:
    data = tmp_path / "data"
    for name, folder in (("nextqa", "NExTQA"), ("perceptiontest", "PerceptionTest_Val"),
                         ("activitynetqa", "ActivityNetQA"), ("mlvu", "MLVU_dev")):
        HF[name](data / folder)
    for name in HF:
        assert len(get_task(name).load(data)) == 3, name


def test_missing_video_and_bad_rows_are_named(tmp_path) -> None:
    root = nextqa_hf(tmp_path / "n")
    (root / "NExTVideo" / "6233408665.mp4").unlink()
    items = {it.qid: it for it in get_task("nextqa").load(root)}
    err = items["6233408665_8"].error
    assert "video file not found: 6233408665" in err and str(root) in err
    assert not items["4010069381_0"].error  # the rest go on
    root = mlvu_hf(tmp_path / "m")
    t = pq.read_table(root / "mlvu" / "test-00000-of-00001.parquet").to_pylist()
    t[1]["answer"] = "E"  # a letter outside the options, and not an option's text
    pq.write_table(pa.Table.from_pylist(t), root / "mlvu" / "test-00000-of-00001.parquet")
    from eval.task import TaskError

    with pytest.raises(TaskError, match=r"test-00000-of-00001.parquet row 1: answer 'E'"):
        get_task("mlvu").load(root)


def test_mlvu_hf_coverage_and_text_answers(tmp_path) -> None:
    from eval.tasks.mlvu import bare_question

    root = mlvu_hf(tmp_path / "m")
    cov = get_task("mlvu").coverage(root)
    assert cov["present"] == ["plotQA", "count"] and len(cov["missing"]) == 5
    assert bare_question("Q?\n(A) x\n(B) y", ["x", "y"]) == "Q?"
    t = pq.read_table(root / "mlvu" / "test-00000-of-00001.parquet").to_pylist()
    t[0]["answer"] = "Yellow"  # an answer given as the option's text reads the same
    pq.write_table(pa.Table.from_pylist(t), root / "mlvu" / "test-00000-of-00001.parquet")
    assert get_task("mlvu").load(root)[0].answer == "A"


def test_cli_runs_an_hf_copy(openai_server, tmp_path) -> None:
    from tests.test_eval_openai_engine import _run

    openai_server.responder = lambda req, i: "(D)"
    data = mlvu_hf(tmp_path / "MLVU_dev")
    res = _run(openai_server, data, tmp_path / "out", benchmark="mlvu")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "mlvu" / "metrics.json").read_text())
    # D: wrong on plotQA (A), right on 1 of 2 count questions -> M-Avg (0 + 0.5) / 2
    assert abs(m["score"] - 0.25) < 1e-12
    assert m["coverage"]["missing"] and "5 of 7 task types missing" in " ".join(m["notes"])
