"""Model folders that are not what they claim are refused on load in one line (issue 17.1, 17.9,
16.8), and a folder's fingerprint follows its content (issue 17.2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from training import model_folder
from training.model_folder import ModelFolderError, check_model_dir, folder_fingerprint
from training.model_io import load_tokenizer

runner = CliRunner()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in drop:
            shutil.copy2(f, dst / f.name)
    return dst


def _one_line_error(result, *needles: str) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert result.exit_code not in (0, None), result.output
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def no_tokenizer(tiny_model_dir, tmp_path) -> Path:
    return _copy(tiny_model_dir, tmp_path / "no_tokenizer", drop=TOKENIZER_FILES)


def test_a_folder_without_tokenizer_files_is_refused(no_tokenizer):
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(no_tokenizer)) < 10  # what used to be trained on
    with pytest.raises(ModelFolderError, match=r"lacks the special token <\|im_start\|>") as err:
        load_tokenizer(no_tokenizer)
    assert "\n" not in str(err.value) and str(no_tokenizer) in str(err.value)


def test_every_stage_refuses_it_in_one_line_before_starting(no_tokenizer, tiny_model_dir, synth_bench, tmp_path):
    data = tmp_path / "none"  # never read: the model is refused first
    for args in (["train", "sft"], ["train", "grpo"], ["embed-cache", "build"]):
        out = tmp_path / ("o_" + args[-1])
        result = runner.invoke(app, [*args, "--model", str(no_tokenizer), "--data", str(data), "--out", str(out)])
        _one_line_error(result, str(no_tokenizer), "lacks the special token")
        assert not (out / "model").exists()
    result = runner.invoke(app, ["eval", "--model", str(no_tokenizer), "--benchmark", "synth", "--data",
                                 str(synth_bench), "--out", str(tmp_path / "e"), "--frames", "2"])
    _one_line_error(result, str(no_tokenizer), "lacks the special token")


def test_foreign_tokenizers_and_templates_are_refused(tiny_model_dir, tmp_path):
    # special tokens at other ids than config.json names: another model's tokenizer
    moved = _copy(tiny_model_dir, tmp_path / "moved")
    cfg = json.loads((moved / "config.json").read_text())
    cfg["video_token_id"] += 1
    (moved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match=r"gives <\|video_pad\|> id \d+ but config.json says"):
        load_tokenizer(moved)
    # more tokens than embedding rows
    small = _copy(tiny_model_dir, tmp_path / "small")
    cfg = json.loads((small / "config.json").read_text())
    cfg["text_config"]["vocab_size"] = 100
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="tokens but the model's embedding only 100 rows"):
        load_tokenizer(small)
    # a chat template that renders no video turn (a text model's)
    text_tpl = _copy(tiny_model_dir, tmp_path / "tpl", drop=("chat_template.jinja",))
    (text_tpl / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ModelFolderError, match=r"chat template does not render .*<\|vision_start\|>"):
        load_tokenizer(text_tpl)
    broken = _copy(tiny_model_dir, tmp_path / "broken", drop=("chat_template.jinja",))
    (broken / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content | nosuchfilter }}")
    with pytest.raises(ModelFolderError, match="chat template fails on a video turn"):
        load_tokenizer(broken)
    # a folder without any template gets the Qwen-VL one and loads
    bare = _copy(tiny_model_dir, tmp_path / "bare", drop=("chat_template.jinja",))
    assert "<|video_pad|>" in load_tokenizer(bare).chat_template


def test_broken_folders_are_one_line_errors_through_the_cli(tiny_model_dir, tmp_path):
    no_weights = _copy(tiny_model_dir, tmp_path / "no_weights", drop=("model.safetensors",))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (llama / "tokenizer.model").write_bytes(b"not sentencepiece")
    sharded = _copy(tiny_model_dir, tmp_path / "sharded", drop=("model.safetensors",))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    shutil.copy2(tiny_model_dir / "model.safetensors", sharded / "model-00001-of-00002.safetensors")
    cases = [
        (no_weights, "no weights"),
        (llama, "model_type 'llama' is not supported; supported families: qwen2_5_vl"),
        (tiny_model_dir / "config.json", "is a file; give the model folder"),
        (sharded, "1 of 2 weight shards missing (first: model-00002-of-00002.safetensors)"),
    ]
    for model, needle in cases:
        with pytest.raises(ModelFolderError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            check_model_dir(model)
        for args in (["train", "sft", "--data", "D"], ["train", "grpo", "--data", "D"]):
            result = runner.invoke(app, [*args, "--model", str(model), "--out", str(tmp_path / "o")])
            _one_line_error(result, needle)
        result = runner.invoke(app, ["eval", "--model", str(model), "--benchmark", "synth", "--data",
                                     str(tmp_path), "--out", str(tmp_path / "e"), "--frames", "2"])
        _one_line_error(result, needle)


def test_fingerprint_follows_the_content(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    base = folder_fingerprint(tiny_model_dir)
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    assert folder_fingerprint(copy) == base  # a copy (new path, new mtimes) is the same model
    # one weight changed, same names, shapes and file size: another model
    tensors = load_file(copy / "model.safetensors")
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[tensors[name].numel() // 2] += 1.0
    size = (copy / "model.safetensors").stat().st_size
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    assert (copy / "model.safetensors").stat().st_size == size
    changed = folder_fingerprint(copy)
    assert changed != base
    # big folders are sampled per tensor (headers + head/middle/tail bytes): still caught
    monkeypatch.setattr(model_folder, "FULL_HASH_BYTES", 0)
    assert folder_fingerprint(copy) != folder_fingerprint(tiny_model_dir)
    assert folder_fingerprint(_copy(tiny_model_dir, tmp_path / "copy2")) == folder_fingerprint(tiny_model_dir)
    monkeypatch.undo()
    # another tokenizer (same weights): another model's answers
    tok = _copy(tiny_model_dir, tmp_path / "tok")
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 1234
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert folder_fingerprint(tok) != base


def test_eval_resume_refuses_another_model_of_the_same_shapes(tiny_model_dir, synth_bench, tmp_path):
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    other = write_tiny_model_folder(tmp_path / "seed1", TinyModelSpec(seed=1))
    assert sorted((p.name, p.stat().st_size) for p in other.glob("*.safetensors")) == sorted(
        (p.name, p.stat().st_size) for p in tiny_model_dir.glob("*.safetensors"))  # the old guard's view
    out = tmp_path / "e"
    fast = ["--frames", "2", "--limit", "2", "--set", "min_pixels=784", "--set", "max_pixels=3136",
            "--set", "max_new_tokens=4", "--set", "bootstrap=50"]
    first = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--benchmark", "synth", "--data",
                                str(synth_bench), "--out", str(out), *fast])
    assert first.exit_code == 0, first.output
    saved = (out / "eval_config.yaml").read_text()
    second = runner.invoke(app, ["eval", "--model", str(other), "--benchmark", "synth", "--data",
                                 str(synth_bench), "--out", str(out), *fast])
    line = _one_line_error(second, "other settings", "model_fingerprint")
    assert "--overwrite or another --out" in line
    # a refused resume records nothing: eval_config.yaml keeps the settings of the predictions
    assert (out / "eval_config.yaml").read_text() == saved and str(other) not in saved
    third = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--benchmark", "synth", "--data",
                                str(synth_bench), "--out", str(out), *fast[2:], "--frames", "4"])
    _one_line_error(third, "other settings", "frames: 2 -> 4")
    assert (out / "eval_config.yaml").read_text() == saved
