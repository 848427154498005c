"""Generation options top_p and num_beams: the hf engine's beam search against transformers'
own beam search (text prompt, tiny random Qwen2.5-VL), beam width 1 = greedy, top_p reaching
the sampler, both options through the CLI into run_info.json (and into the openai engine's
requests)."""

from __future__ import annotations

import json

import pytest
import torch

from eval.engines import Prompt
from eval.task import get_task
from training.video_inputs import VideoSampling

SAMPLING = VideoSampling(num_frames=2, min_pixels=784, max_pixels=3136)


def _text_batch(tok, text: str):
    from training.mm_batch import collate
    from training.prompts import encode_prompt_text

    enc = encode_prompt_text(tok, text, 0)
    return collate([enc], [[]], tok.pad_token_id), enc.input_ids


@pytest.mark.parametrize(("num_beams", "length_penalty"), [(2, 1.0), (3, 1.0), (4, 0.0)])
def test_beam_search_equals_transformers(tiny_model, num_beams, length_penalty) -> None:
    from eval.engines.beam import beam_search

    model, tok = tiny_model
    model.eval()
    # 77 is a token this random model emits often: as a stop token it makes beams finish early
    stop = [77]
    for text in ("hello world the quick brown", "a b c d e f g", "video question answer"):
        batch, ids = _text_batch(tok, text)
        ours, finished = beam_search(model, batch, stop, num_beams, 10, length_penalty)
        input_ids = torch.tensor([ids])
        ref = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             num_beams=num_beams, do_sample=False, max_new_tokens=10,
                             early_stopping=True, length_penalty=length_penalty,
                             eos_token_id=stop, pad_token_id=tok.pad_token_id)[0, len(ids):]
        ref = ref.tolist()
        if 77 in ref:
            ref = ref[: ref.index(77) + 1]
        assert ours == ref, (text, ours, ref)
        assert finished == (ours[-1] == 77)


def test_beam_width_one_is_greedy(tiny_model) -> None:
    from eval.engines.beam import beam_search
    from training.generation import generate

    model, tok = tiny_model
    for text in ("hello world the quick brown", "one two three"):
        batch, _ = _text_batch(tok, text)
        greedy = generate(model, batch, [77], tok.pad_token_id, max_new_tokens=12, greedy=True)
        assert beam_search(model, batch, [77], 1, 12)[0] == greedy.token_ids[0]


def test_hf_engine_options(tiny_model_dir, synth_bench) -> None:
    from eval.engines.beam import beam_search
    from eval.engines.hf import HFEngine
    from training.mm_batch import collate

    engine = HFEngine(str(tiny_model_dir), SAMPLING, device="cpu", dtype="float32")
    task = get_task("synth")
    items = task.load(synth_bench)[:2]
    prepared = [engine.prepare(it) for it in items]
    prompts = [Prompt(task.render_prompt(it), None) for it in items]
    greedy = engine.generate(prepared, prompts, 12)
    # top_p that keeps only the most likely token: sampling at temperature 1 is greedy...
    nucleus = engine.generate(prepared, prompts, 12, temperature=1.0, top_p=1e-6)
    assert [g.text for g in nucleus] == [g.text for g in greedy]
    # ...while plain sampling at temperature 1 is not (so the option really reached the sampler)
    sampled = engine.generate(prepared, prompts, 12, temperature=1.0)
    assert [g.text for g in sampled] != [g.text for g in greedy]
    beams = engine.generate(prepared, prompts, 12, num_beams=3)
    for p, q, g in zip(prepared, prompts, beams, strict=True):
        one = collate([engine.encode(p, q)], [p.payload], engine.pad_id)
        ids, finished = beam_search(engine.model, one, engine.stop_ids, 3, 12)
        assert g.num_tokens == len(ids) and g.finished == finished
        body = ids[:-1] if finished else ids
        assert g.text == engine.tokenizer.decode(body, skip_special_tokens=True)


def test_options_reach_run_info_and_bad_values_are_refused(tiny_model_dir, synth_bench, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    def run(*extra):
        args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "synth", "--data",
                str(synth_bench), "--out", str(tmp_path / "o"), "--frames", "2", "--limit", "2",
                "--set", "min_pixels=784", "--set", "max_pixels=3136", "--set",
                "max_new_tokens=4", "--set", "bootstrap=20", *extra]  # fmt: skip
        return CliRunner().invoke(app, args, catch_exceptions=False)

    r = run("--set", "num_beams=2")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "o" / "synth" / "run_info.json").read_text())
    assert info["settings"]["num_beams"] == 2 and "top_p" not in info["settings"]
    r = run("--set", "num_beams=3")
    assert r.exit_code == 2 and "num_beams: 2 -> 3" in r.output
    r = run("--set", "num_beams=2", "--set", "temperature=0.7")
    assert r.exit_code == 2 and "beam search" in r.output
    r = run("--set", "top_p=0")
    assert r.exit_code == 2 and "top_p" in r.output


def test_openai_engine_sends_top_p_and_beam_width(openai_server, make_benchmark, tmp_path):
    from tests.test_eval_openai_engine import _run

    data = make_benchmark("perceptiontest")
    r = _run(openai_server, data, tmp_path / "a", "--set", "temperature=0.5",
             "--set", "top_p=0.9")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert all(q["top_p"] == 0.9 and q["temperature"] == 0.5 for q in openai_server.requests())
    n = len(openai_server.log)
    r = _run(openai_server, data, tmp_path / "b", "--set", "num_beams=3")
    assert r.exit_code == 0, r.output
    sent = [e["body"] for e in openai_server.log[n:]]
    assert all(q["use_beam_search"] is True and q["n"] == 3 for q in sent)
