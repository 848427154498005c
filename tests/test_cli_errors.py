"""Bad input at the command line: one line naming the item and the fix, a non-zero exit code,
nothing started (issue 16 points 3, 7, 8, 10 and issue 17 point 9)."""

from __future__ import annotations

import time

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


def _lines(result) -> list[str]:
    """Output lines that are not deprecation notes."""
    return [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("note: ")]


def _one_line_error(result, *needles: str) -> str:
    lines = _lines(result)
    assert result.exit_code not in (0, None), result.output
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_steps: 3\nvideo:\n  num_frames: [4,\n  fps: 1\n")
    return path


COMMANDS = {
    "train sft": ["train", "sft", "--model", "M", "--data", "D", "--out", "O"],
    "train grpo": ["train", "grpo", "--model", "M", "--data", "D", "--out", "O"],
    "embed-cache build": ["embed-cache", "build", "--model", "M", "--data", "D", "--out", "O"],
    "data build": ["data", "build", "--videos", "V", "--out", "O"],
    "synth": ["synth", "--out", "O"],
    "eval": ["eval", "--model", "M", "--benchmark", "synth", "--data", "D", "--out", "O"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_malformed_config_yaml_is_one_line_in_every_command(command, bad_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*COMMANDS[command], "--config", str(bad_yaml)])
    _one_line_error(result, str(bad_yaml), "not valid YAML at line", "fix that line")
    assert not (tmp_path / "O").exists()  # nothing started


def test_malformed_cluster_config_yaml_is_one_line(bad_yaml, tmp_path):
    result = runner.invoke(app, ["pipeline", "compile", "--out", str(tmp_path / "p.yaml"),
                                 "--cluster-config", str(bad_yaml)])
    _one_line_error(result, str(bad_yaml), "not valid YAML")


@pytest.mark.parametrize(("command", "override", "needle"), [
    ("train sft", "max_steps=-1", "max_steps must be >= 0"),
    ("train grpo", "max_steps=-1", "max_steps must be >= 1"),
    ("train grpo", "video.sampling.num_frames=0", "video.num_frames must be >= 1"),
    ("train sft", "video.num_frames=0", "video.num_frames must be >= 1"),
    ("train grpo", "video.max_pixels=-1", "video.max_pixels must be >= 0"),
    ("train sft", "video.max_pixels=-1", "video.max_pixels must be >= 0"),
    ("embed-cache build", "video.max_pixels=-1", "video.max_pixels must be >= 0"),
    ("train grpo", "rollout.max_new_tokns=64", "did you mean rollout.max_new_tokens?"),
    ("train sft", "lrr=0.1", "did you mean lr?"),
])
def test_bad_values_are_one_line_naming_the_key(command, override, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*COMMANDS[command], override])
    _one_line_error(result, needle)
    assert result.exit_code == 2


def test_gpus_without_cuda_are_refused_at_once(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    result = runner.invoke(app, [*COMMANDS["train grpo"], "num_workers=2", "device=cuda"])
    _one_line_error(result, "device=cuda asks for GPUs", "device=cpu")
    result = runner.invoke(app, [*COMMANDS["train sft"], "use_gpu=true", "num_workers=2"])
    _one_line_error(result, "use_gpu=true asks for GPUs", "use_gpu=auto")
    assert time.perf_counter() - t0 < 10  # refused, not waiting in Ray for GPUs


def test_sft_on_an_empty_data_folder_is_one_line(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train", "sft", "--model", str(tiny_model_dir), "--data", str(empty),
                                 "--out", str(tmp_path / "o"), "progress=false"])
    _one_line_error(result, str(empty), "no split 'sft' found")
    (empty / "sft.jsonl").write_text("")
    result = runner.invoke(app, ["train", "sft", "--model", str(tiny_model_dir), "--data", str(empty),
                                 "--out", str(tmp_path / "o"), "progress=false"])
    _one_line_error(result, "sft.jsonl", "no usable records")


def test_hub_id_offline_says_how_to_get_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for command in ("train sft", "train grpo", "embed-cache build"):
        args = [a if a != "M" else "Qwen/Qwen2.5-VL-7B-Instruct" for a in COMMANDS[command]]
        result = runner.invoke(app, args)
        _one_line_error(result, "--model Qwen/Qwen2.5-VL-7B-Instruct", "HF_HUB_OFFLINE=1",
                        "hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir DIR")


@pytest.mark.parametrize("command", ["train sft", "train grpo", "embed-cache build", "data build", "synth"])
def test_print_config_is_the_resolved_config_and_loads_back(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["max_steps=7", "video.num_frames=6"] if command.startswith(("train", "embed")) else []
    result = runner.invoke(app, [*COMMANDS[command], "--print-config", *extra])
    assert result.exit_code == 0, result.output
    text = result.stdout
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and "  # " in text
    if extra:
        assert data["max_steps"] == 7 and data["video"]["num_frames"] == 6
        saved = tmp_path / "printed.yaml"
        saved.write_text(text)
        again = runner.invoke(app, [*COMMANDS[command], "--print-config", "--config", str(saved)])
        assert yaml.safe_load(again.stdout) == data
    assert not (tmp_path / "O").exists()  # printed, nothing run


def test_model_tiny_out_an_existing_file_is_one_line(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    result = runner.invoke(app, ["model", "tiny", "--out", str(existing)])
    _one_line_error(result, f"--out {existing} is a file", "give a folder")
    assert existing.read_text() == "keep me"
    result = runner.invoke(app, ["model", "tiny", "--out", str(existing / "sub")])
    _one_line_error(result, "cannot write the model")
    result = runner.invoke(app, ["model", "tiny", "--out", str(tmp_path / "m"), "--arch", "gemma"])
    _one_line_error(result, "arch 'gemma' has no tiny model")


def test_a_dataset_missing_a_column_names_it(tiny_model_dir, sft_records, tmp_path):
    import pandas as pd

    rows = [{k: v for k, v in r.to_dict().items() if k != "answer"} for r in sft_records[:3]]
    path = tmp_path / "sft.parquet"
    pd.DataFrame(rows).to_parquet(path)
    result = runner.invoke(app, ["train", "sft", "--model", str(tiny_model_dir), "--data", str(path),
                                 "--out", str(tmp_path / "o")])
    _one_line_error(result, str(path), "missing field(s) answer (the dataset lacks the column)")
    result = runner.invoke(app, ["train", "sft", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "o")])
    _one_line_error(result, str(tmp_path / "nope"), "no split 'sft' found")


def test_eval_reads_settings_like_every_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", "M", "--benchmark", "synth", "--data", "D", "--out", "O", "--print-config"]
    result = runner.invoke(app, [*args, "video.num_frames=6", "video.max_pixels=12544", "max_new_tokens=9",
                                 "--set", "judge.base_url=http://127.0.0.1:9/v1"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert (data["frames"], data["max_pixels"], data["max_new_tokens"]) == (6, 12544, 9)
    assert data["judge"]["base_url"] == "http://127.0.0.1:9/v1" and "  # " in result.stdout
    saved = tmp_path / "eval.yaml"
    saved.write_text(result.stdout)
    again = runner.invoke(app, ["eval", "--print-config", "--config", str(saved)])
    assert yaml.safe_load(again.stdout) == data
    _one_line_error(runner.invoke(app, [*args[:-1], "max_pixel=5"]), "did you mean max_pixels?")
    assert not (tmp_path / "O").exists()
    listed = runner.invoke(app, ["eval", "list"])  # sub-commands are still found
    assert listed.exit_code == 0 and "synth" in listed.output


def test_malformed_jsonl_data_names_file_and_line(tiny_model_dir, sft_records, tmp_path):
    import json

    path = tmp_path / "sft.jsonl"
    rows = [json.dumps(r.to_dict()) for r in sft_records[:3]]
    path.write_text("\n".join([rows[0], '{"id": "x", "question": ', *rows[1:]]) + "\n")
    for stage in ("sft", "grpo"):
        result = runner.invoke(app, ["train", stage, "--model", str(tiny_model_dir), "--data", str(path),
                                     "--out", str(tmp_path / stage)])
        _one_line_error(result, f"{path}:2: not valid JSON", "fix or remove the line")


def test_eval_records_without_answer_or_video_are_named_and_recorded(tmp_path):
    import json

    from eval.task import get_task

    good = {"id": "q1", "video_id": "v", "video_path": "v.mp4", "question": "How many?", "answer": "3",
            "answer_type": "numeric", "category": "Temporal"}
    rows = [good, {**{k: v for k, v in good.items() if k != "answer"}, "id": "q2"},
            {**{k: v for k, v in good.items() if k != "video_path"}, "id": "q3"}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = {it.qid: it for it in get_task("longvideo_reason").load(tmp_path)}
    assert "eval.jsonl:2" in items["q2"].error and "missing field(s) answer" in items["q2"].error
    assert "eval.jsonl:3" in items["q3"].error and "missing field(s) video_path" in items["q3"].error


def test_malformed_data_import_file_names_file_and_line(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"problem_id": 1}\n{bad json\n{"problem_id": 2}\n')
    listed = tmp_path / "train.json"
    listed.write_text('[{"problem_id": 1},\n {"problem_id": }]')
    for src, needle in ((jsonl, f"{jsonl}:2: not valid JSON"), (listed, f"{listed}:2: not valid JSON")):
        result = runner.invoke(app, ["data", "import", "--source", str(src), "--out", str(tmp_path / "o"),
                                     "--video-dir", str(tmp_path)])
        _one_line_error(result, needle)
