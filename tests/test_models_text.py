"""Text-only reasoning RL (issue 13): tiny Qwen2/Qwen3 causal LMs, records without video through
the same batches, SFT and GRPO (no vision tower, no video cache), verifiable rewards, the seeded
word-problem generator and the GSM8K/MATH importer."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from data_gen.import_text import import_text, last_boxed, plain_number
from data_gen.schema import QARecord, RecordError
from data_gen.synth_text import TextSynthConfig, generate_text, make_problems
from pipelines.cli import app
from training.generation import generate
from training.grpo.logprobs import sequence_logprobs
from training.grpo.rewards import RewardScorer
from training.mm_batch import collate, hidden_states, rope_positions, token_logprobs
from training.model_io import load_model, load_tokenizer
from training.models import family_of
from training.prompts import TEXT_SYSTEM_PROMPT, VIDEO_PAD, append_response_ids, encode_example
from training.tiny_model import TinyModelSpec, write_tiny_model_folder
from training.video_inputs import no_video

from .test_model_kit import MCQ


def _text(**kw) -> QARecord:
    base = dict(id="t1", video_id="", video_path="", question="What is 2 + 3?", answer="5", answer_type="numeric",
                category="Math", modality="text", reasoning="2 + 3 = 5.")
    return QARecord(**{**base, **kw}).validate()


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def text_lm(request, tmp_path_factory):
    path = write_tiny_model_folder(tmp_path_factory.mktemp(request.param), TinyModelSpec(arch=request.param))
    return path, load_model(path), load_tokenizer(path)


def test_tiny_text_model_is_a_plain_causal_lm_folder(text_lm):
    from transformers import AutoModelForCausalLM

    path, model, _ = text_lm
    fam = family_of(path)
    assert not fam.has_vision and type(model).__name__ == fam.hf_class
    assert type(AutoModelForCausalLM.from_pretrained(path)).__name__ == fam.hf_class
    assert not (path / "preprocessor_config.json").exists() and not hasattr(model.model, "visual")
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_schema_text_records():
    assert _text().has_video is False
    with pytest.raises(RecordError, match="must not name a video"):
        _text(video_path="v.mp4")
    with pytest.raises(RecordError, match="not in .*Math"):
        _text(category="Temporal")
    with pytest.raises(RecordError, match="empty video_path"):  # a video record still needs its video
        QARecord(id="v", video_id="v", video_path="", question="q", answer="A", answer_type="numeric",
                 category="Temporal").validate()
    old = {k: v for k, v in MCQ.to_dict().items() if k != "modality"}  # written before the field
    assert QARecord.from_dict(old).modality == "video"


def test_text_prompt_has_no_video_and_its_own_system_prompt(text_lm):
    _, _, tok = text_lm
    enc = encode_example(tok, _text(), 0, response="<think>x</think>\n<answer>5</answer>")
    text = tok.decode(enc.input_ids)
    assert VIDEO_PAD not in text and "<|vision_start|>" not in text and TEXT_SYSTEM_PROMPT in text
    assert set(enc.mm_token_type_ids) == {0}
    assert tok.decode(enc.input_ids[:enc.prompt_len]).endswith("<|im_start|>assistant\n")
    custom = encode_example(tok, _text(), 0, system_prompt="Be brief.")
    assert "Be brief." in tok.decode(custom.input_ids)


def test_rollout_logprobs_equal_trainer_logprobs(text_lm):
    _, model, tok = text_lm
    recs = [_text(), _text(id="t2", question="Ana has 3 boxes of 4 pens and gives away 5. How many pens are left?",
                           answer="7")]
    exs = [encode_example(tok, r, 0) for r in recs]
    batch = collate(exs, [no_video(), no_video()], tok.pad_token_id)
    assert batch.video_grid_thw.shape[0] == 0 and batch.attention_mask[0].sum() < batch.attention_mask[1].sum()
    pos = rope_positions(model, batch)
    assert torch.equal(pos[0], pos[1]) and torch.equal(pos[0], pos[2])
    assert pos[0, 0, -1] == batch.attention_mask[0].sum() - 1  # consecutive over the real tokens
    gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=12,
                   generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)],
                   [no_video(), no_video()], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, hidden_states(model, full), full.input_ids, full.loss_mask)
        lp2, _ = sequence_logprobs(model, full, [])
        # the model's own forward with its own 1-D positions gives the same log-probs
        logits = model(input_ids=full.input_ids, attention_mask=full.attention_mask,
                       position_ids=(full.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    native = logits[:, :-1].log_softmax(-1).gather(-1, full.input_ids[:, 1:, None])[..., 0]
    for i in range(2):
        sel = full.loss_mask[i].bool()
        want = torch.tensor(gen.logprobs[i])
        assert (lp[i][sel] - want).abs().max() <= 1e-5
        assert (lp2[i][sel] - want).abs().max() <= 1e-5
        assert (native[i][sel[1:]] - want).abs().max() <= 1e-5


def test_text_model_refuses_a_video_row(text_lm, tiny_model_dir):
    from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches

    _, model, tok = text_lm
    v = frames_to_patches(torch.zeros((4, 56, 56, 3), dtype=torch.uint8).numpy(), 2.0,
                          VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56), VideoSampling())
    batch = collate([encode_example(tok, MCQ, v.num_tokens)], [v], tok.pad_token_id)
    with pytest.raises(ValueError, match=r"text-only model: its batches cannot hold videos"):
        rope_positions(model, batch)


def test_vlm_takes_text_rows_beside_video_rows(tiny_model_dir):
    """A Qwen2.5-VL policy on a mixed batch: the text row has no video, the video row keeps its
    embeddings and positions; rollout == trainer log-probs."""
    from training.mm_batch import encode_videos
    from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    v = frames_to_patches(torch.randint(0, 255, (8, 56, 56, 3), dtype=torch.uint8).numpy(), 0.1,
                          VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56), VideoSampling())
    exs = [encode_example(tok, _text(), 0), encode_example(tok, MCQ, v.num_tokens)]
    batch = collate(exs, [no_video(), v], tok.pad_token_id)
    assert batch.video_counts == (0, 1)
    with torch.no_grad():
        embeds = [torch.zeros((0, model.config.text_config.hidden_size)),
                  *encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)]
        gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id,
                       max_new_tokens=6, video_embeds=embeds, generator=torch.Generator().manual_seed(1))
        full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)],
                       [no_video(), v], tok.pad_token_id)
        lp, _ = token_logprobs(model, hidden_states(model, full, embeds), full.input_ids, full.loss_mask)
        alone = collate([append_response_ids(exs[0], gen.token_ids[0])], [no_video()], tok.pad_token_id)
        lp_alone, _ = token_logprobs(model, hidden_states(model, alone), alone.input_ids, alone.loss_mask)
    for i in range(2):
        assert (lp[i][full.loss_mask[i].bool()] - torch.tensor(gen.logprobs[i])).abs().max() <= 1e-5
    assert (lp_alone[0][alone.loss_mask[0].bool()] - torch.tensor(gen.logprobs[0])).abs().max() <= 1e-5


def test_synth_text_is_seeded_verifiable_and_rewarded_exactly(tmp_path):
    a = generate_text(TextSynthConfig(problems=30, seed=3), tmp_path / "a")
    generate_text(TextSynthConfig(problems=30, seed=3), tmp_path / "b")
    generate_text(TextSynthConfig(problems=30, seed=4), tmp_path / "c")
    assert (tmp_path / "a/questions.jsonl").read_bytes() == (tmp_path / "b/questions.jsonl").read_bytes()
    assert (tmp_path / "a/questions.jsonl").read_bytes() != (tmp_path / "c/questions.jsonl").read_bytes()
    assert a["counts"]["split/sft"] == 12 and a["counts"]["split/rl"] == 12 and a["counts"]["split/eval"] == 6
    recs = make_problems(TextSynthConfig(problems=30, seed=3))
    assert len({r.id for r in recs}) == 30 and {r.answer_type for r in recs} == {
        "numeric", "multiple_choice", "open_ended"}
    scorer = RewardScorer()
    for r in recs:
        gold = r.answer_text()
        assert gold in r.reasoning  # the worked solution reaches the answer
        right = f"<think>{r.reasoning}</think>\n<answer>{r.answer}</answer>"
        if r.answer_type == "numeric":
            wrong = str(float(r.answer) + 1.0)
        else:
            wrong = ("A" if r.answer != "A" else "B") if r.answer_type == "multiple_choice" else "Zed"
        res = scorer.score([right, f"<think>x</think><answer>{wrong}</answer>"], [r, r])
        assert (res[0].parts["accuracy"], res[1].parts["accuracy"]) == (1.0, 0.0), (r.question, r.answer)
        assert res[0].total == pytest.approx(1.0) and not res[0].errors
    num = next(r for r in recs if r.subcategory == "rate")
    close = scorer.score([f"<answer>{float(num.answer) * (1 + 1e-7)}</answer>"], [num])[0]
    assert close.parts["accuracy"] == 1.0  # numeric tolerance
    logic = next(r for r in recs if r.subcategory == "ordering")
    assert scorer.score([f"<answer>{logic.answer.lower()}.</answer>"], [logic])[0].parts["accuracy"] == 1.0
    assert scorer.score([f"<answer>{logic.answer} or Zed</answer>"], [logic])[0].parts["accuracy"] == 0.0
    with pytest.raises(ValueError, match="known kinds"):
        TextSynthConfig(kinds=["calculus"]).check()


GSM8K = {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
         "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"}
MATH = {"problem": "Simplify $\\frac{6}{8}$.", "solution": "Divide by 2: $\\boxed{\\frac{3}{4}}$.",
        "level": "Level 1", "type": "Prealgebra"}


def test_import_gsm8k_and_math_files_naming_bad_rows(tmp_path):
    lines = [json.dumps(GSM8K), json.dumps(MATH), "{not json", json.dumps({"question": "No answer here?"}),
             json.dumps(GSM8K), json.dumps({"problem": "Big?", "answer": "1,234"}), json.dumps([1, 2])]
    src = tmp_path / "train.jsonl"
    src.write_text("\n".join(lines) + "\n")
    res = import_text(src)
    assert [r.answer for r in res.records] == ["72", "\\frac{3}{4}", "1234"]
    gsm, math, big = res.records
    assert gsm.answer_type == "numeric" and "<<" not in gsm.reasoning and gsm.reasoning.endswith("72 clips.")
    assert math.answer_type == "open_ended" and math.subcategory == "Prealgebra" and math.source == "text-import"
    assert res.errors[0].startswith("train.jsonl:line 3: not a JSON line")
    assert res.errors[1] == "train.jsonl:line 4: no answer ('answer' empty, no '#### answer', no \\boxed{})"
    assert res.errors[2] == "train.jsonl:line 5: duplicate of line 1 (same question)"
    assert res.errors[3] == "train.jsonl:line 7: a JSON list, not an object" and len(res.errors) == 4
    scorer = RewardScorer()
    assert scorer.score(["<answer>\\frac{3}{4}</answer>", "<answer>3/5</answer>"], [math, math])[0].parts[
        "accuracy"] == 1.0
    assert last_boxed("a \\boxed{\\sqrt{2}} b \\boxed{x^{2}+1}") == "x^{2}+1"
    assert plain_number("\\$18") == "18" and plain_number("50\\%") == "50" and plain_number("3/4") is None
    # parquet, and through the CLI: written where load_records finds it, skipped rows printed
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([GSM8K, {"question": "Q?", "answer": ""}]), tmp_path / "t.parquet")
    out = tmp_path / "imported"
    r = CliRunner().invoke(app, ["synth", "--kind", "text", "--from", str(tmp_path / "t.parquet"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "imported 1 problems (1 numeric)" in r.output and "t.parquet:line 2" in r.output
    from training.records import load_records

    assert [x.answer for x in load_records(out, "rl").records] == ["72"]
    bad = CliRunner().invoke(app, ["synth", "--kind", "text", "--from", str(tmp_path / "none.jsonl"), "--out",
                                   str(out)])
    assert bad.exit_code == 2 and "no such file" in bad.output
    mixed = CliRunner().invoke(app, ["synth", "--kind", "text", "--videos", "3", "--out", str(tmp_path / "m")])
    assert mixed.exit_code == 2 and "--videos: options of --kind video" in mixed.output
    assert not (tmp_path / "m").exists()


def test_sft_and_grpo_steps_through_the_cli(tmp_path):
    runner = CliRunner()
    model, data = tmp_path / "m", tmp_path / "data"
    r = runner.invoke(app, ["model", "tiny", "--arch", "qwen3", "--out", str(model)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["synth", "--kind", "text", "--problems", "20", "--out", str(data)])
    assert r.exit_code == 0 and "wrote 20 text problems" in r.output, r.output
    r = runner.invoke(app, ["train", "sft", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "sft"),
                            "progress=false", "cpus_per_worker=1", "scan_threads=2", "mlflow_log_model=false",
                            "epochs=1", "micro_batch_size=4", "lr=0.01"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "sft/summary.json").read_text())
    assert s["examples_used"] == 8 and s["examples_skipped"] == 0 and s["frames_per_s"] == 0.0
    r = runner.invoke(app, ["train", "grpo", "--model", str(tmp_path / "sft/model"), "--data", str(data),
                            "--out", str(tmp_path / "grpo"), "max_steps=2", "rollout.prompts_per_step=2",
                            "rollout.group_size=3", "rollout.max_new_tokens=8", "progress=false", "plots=false"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "grpo/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for m in rows:
        assert m["rows"] == 6 and m["vision/videos"] == 0 and m["vision/calls"] == 0
        assert m["rollout/logprob_diff_max"] <= 1e-5
        assert set(k for k in m if k.startswith("accuracy/")) <= {"accuracy/Math", "accuracy/Logic"}
    assert type(load_model(tmp_path / "grpo/model")).__name__ == "Qwen3ForCausalLM"


def _sp_inputs(tok, arch):
    """A tiny text LM (3 query / 1 KV heads: no SP size divides them) in train mode, and two
    left-padded text rows."""
    from training.tiny_model import build_tiny_model

    model, _ = build_tiny_model(TinyModelSpec(arch=arch, seed=2, hidden_size=48, num_heads=3, num_kv_heads=1), tok)
    model.train()
    recs = [_text(), _text(id="t2", question="Ana has 3 boxes of 4 pens and gives away 5. How many pens are left?",
                           answer="7")]
    exs = [encode_example(tok, r, 0, response=f"<think>{r.reasoning}</think>\n<answer>{r.answer}</answer>")
           for r in recs]
    return model, collate(exs, [no_video(), no_video()], tok.pad_token_id)


def _sp_loss(lp, mask):
    return -(lp * mask * torch.linspace(0.5, 1.5, lp.shape[1])).sum() / mask.sum()


def _sp_rank(rank, world, tok, arch):
    import torch.distributed as dist

    from training.mm_batch import video_positions
    from training.sequence_parallel.mesh import ParallelConfig, build_log_prob_model, init_parallel

    model, batch = _sp_inputs(tok, arch)
    lpm = build_log_prob_model(model, init_parallel(sp_size=world), ParallelConfig(sp_size=world, fsdp=False))
    empty = [torch.zeros((0, model.config.hidden_size))] * batch.size
    lp, _ = lpm(batch.input_ids, batch.attention_mask, rope_positions(model, batch), batch.loss_mask,
                video_embeds=empty, video_mask=video_positions(batch))
    loss = _sp_loss(lp, batch.loss_mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    return lp.detach(), loss.detach(), grads


@pytest.mark.parametrize("arch,world", [("qwen3", 2), ("qwen2", 4)])
def test_sequence_parallel_equals_one_process(arch, world):
    """Ulysses SP on long text prompts: log-probs, loss and every gradient equal one process."""
    from training.sequence_parallel.local_group import run_local_group
    from training.tiny_model import train_tokenizer

    tok = train_tokenizer(1024)
    model, batch = _sp_inputs(tok, arch)
    ref = sequence_logprobs(model, batch, [])[0]
    ref_loss = _sp_loss(ref, batch.loss_mask)
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert batch.input_ids.shape[1] % world and len(ref_grads) == sum(1 for _ in model.parameters())
    sel = batch.loss_mask.bool()
    for lp, loss, grads in run_local_group(_sp_rank, world, tok, arch):
        assert (lp[sel] - ref[sel]).abs().max() <= 1e-5
        assert abs(float(loss - ref_loss.detach())) <= 1e-5
        assert max(float((grads[n] - g).abs().max()) for n, g in ref_grads.items()) <= 1e-5
