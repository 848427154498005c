"""CoT-SFT end to end on the tiny model and synthetic videos: overfitting and the answer format,
the saved folder, resume equivalence, bad data, and 2 Ray Train workers against 1 process."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from common.config import load_config
from tests.fixtures.sft import TINY_SFT_OVERRIDES, write_split
from training.optim import warmup_cosine_factor
from training.sft.config import SFTConfig


def _cfg(*overrides: str) -> SFTConfig:
    return load_config(SFTConfig, None, [*TINY_SFT_OVERRIDES, *overrides])


def _losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_overfits_and_answers_in_format_via_cli(tiny_model_dir, sft_records, tmp_path):
    from pipelines.cli import app

    # The four shortest targets: a tiny model memorises them in a few dozen steps.
    records = sorted(sft_records, key=lambda r: len(r.reasoning))[:4]
    data = write_split(records, tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            *TINY_SFT_OVERRIDES, "lr=0.01", "min_lr_ratio=0.5", "max_grad_norm=0", "micro_batch_size=4",
            "epochs=120", "warmup_steps=2", "eval_split=sft", "eval_generate=4", "max_new_tokens=60"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 120 and summary["examples_used"] == 4 and summary["examples_skipped"] == 0
    assert summary["loss_last"] < summary["loss_first"] / 20, summary
    # Greedy answers of the trained model follow <think>...</think><answer>...</answer>.
    assert summary["eval"]["eval/format_rate"] == 1.0, (out / "eval_samples.jsonl").read_text()
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert all(s["completion"].startswith("<think>") and "</answer>" in s["completion"] for s in samples)
    # Metrics, plot, config and the report of skipped examples are written.
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "frames_per_s", "peak_mem_gb", "eval/loss"):
        assert key in last and last[key] == last[key], key
    assert last["lr"] == pytest.approx(0.01 * warmup_cosine_factor(119, 2, 120, 0.5), rel=1e-6)
    assert 0.005 < last["lr"] < 0.00501  # the cosine ends near min_lr_ratio * lr
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "skipped.jsonl").read_text() == ""
    assert "steps 120" in result.output and summary["eval"]["eval/accuracy"] == 1.0

    # The final folder is a plain HF model folder: from_pretrained loads it and scores the
    # training examples exactly as the trainer's final evaluation did.
    from transformers import AutoModelForImageTextToText

    from training.model_io import load_tokenizer
    from training.sft.data import load_example, scan_records
    from training.sft.step import make_batch, nll_sum
    from training.video_inputs import VisionSpec

    model = AutoModelForImageTextToText.from_pretrained(out / "model")
    tok = load_tokenizer(out / "model")
    assert {"preprocessor_config.json", "video_preprocessor_config.json"} <= {p.name for p in (out / "model").iterdir()}
    cfg = _cfg()
    spec = VisionSpec.from_model_dir(out / "model")
    entries = scan_records(records, list(range(4)), tok, spec, cfg)
    batch = make_batch([load_example(records[e.index], e, tok, spec, cfg) for e in entries], tok.pad_token_id, "cpu")
    model.eval()
    reloaded = nll_sum(lambda fn, *a: fn(model, *a), batch, 1024, False) / float(batch.loss_mask[:, 1:].sum())
    assert reloaded == pytest.approx(last["eval/loss"], abs=1e-4)


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_model_dir, sft_records, tmp_path):
    from training.checkpoint import list_checkpoints
    from training.sft.run import train_sft

    data = write_split(sft_records[:6], tmp_path / "data")
    # 6 examples, global batch 2 -> 3 steps per epoch, 2 epochs; the checkpoint at step 4 is in
    # the middle of the second epoch (a reshuffled, length-grouped order).
    cfg = _cfg("lr=0.003", "micro_batch_size=1", "grad_accum=2", "epochs=2", "warmup_steps=2",
               "save_every=2", "keep_last=0", "weight_decay=0.01")
    full = tmp_path / "full"
    train_sft(cfg, tiny_model_dir, data, full)
    ckpts = list_checkpoints(full)
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000004", "step-00000006"]
    # An "interrupted" run: only the step-4 checkpoint survived (plus the metrics up to then).
    part = tmp_path / "resumed"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpts[1], part / "checkpoints" / ckpts[1].name)
    (part / "metrics.jsonl").write_text("".join(
        line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["step"] <= 4) + '{"step": 5, "loss": 123.0}\n')  # written after the checkpoint
    summary = train_sft(cfg, tiny_model_dir, data, part)
    assert summary["resumed_from"].endswith("step-00000004")
    a, b = _weights(full / "model"), _weights(part / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(part) == _losses(full)  # steps 1-6, the stale step-5 line replaced
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 6


def _make_bad_inputs(records, tmp_path):
    """Good records plus one each of: missing video, undecodable video, too long, empty answer,
    empty reasoning."""
    from dataclasses import replace

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    bad = [
        replace(records[4], id="missing", video_path=str(tmp_path / "nope.mp4")),
        replace(records[5], id="undecodable", video_path=str(junk)),
        replace(records[6], id="too-long", question=records[6].question + " why" * 1000),
        replace(records[7], id="no-reasoning", reasoning="  "),
    ]
    rows = [r.to_dict() for r in records[:4] + bad]
    rows.append({**records[8].to_dict(), "id": "empty-answer", "answer": ""})
    return rows


def test_bad_examples_are_reported_and_skipped(tiny_model_dir, sft_records, tmp_path):
    import datasets

    from data_gen.schema import features
    from training.sft.data import SFTDataError
    from training.sft.run import train_sft

    rows = _make_bad_inputs(sft_records, tmp_path)
    datasets.Dataset.from_list(rows, features=features()).save_to_disk(str(tmp_path / "data" / "sft"))
    cfg = _cfg("max_seq_len=600", "max_bad_fraction=0.6", "micro_batch_size=2", "max_steps=2")
    summary = train_sft(cfg, tiny_model_dir, tmp_path / "data", tmp_path / "out")
    assert summary["examples_used"] == 4 and summary["examples_skipped"] == 5 and summary["examples_total"] == 9
    skipped = {json.loads(line)["id"].split(" ")[-1]: json.loads(line)
               for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()}
    reasons = {k: v["reason"] for k, v in skipped.items()}
    assert "does not exist" in reasons["missing"] or "no such" in reasons["missing"].lower()
    assert reasons["undecodable"].startswith("video:")
    assert "max_seq_len 600" in reasons["too-long"]
    assert "empty reasoning" in reasons["no-reasoning"]
    assert any("empty answer" in r for r in reasons.values())
    # Nothing was substituted: the trained examples are exactly the good ones.
    scan = json.loads((tmp_path / "out" / "scan.json").read_text())["entries"]
    assert sorted(e["id"] for e in scan if not e["reason"]) == sorted(r.id for r in sft_records[:4])

    with pytest.raises(SFTDataError, match=r"5 of 9 examples are bad .* max_bad_fraction 10.0%"):
        train_sft(_cfg("max_seq_len=600", "max_bad_fraction=0.1"), tiny_model_dir, tmp_path / "data", tmp_path / "out2")
    assert len((tmp_path / "out2" / "skipped.jsonl").read_text().splitlines()) == 5


def test_video_that_breaks_after_the_scan_is_skipped_during_training(tiny_model_dir, sft_records, tmp_path):
    from training.distributed import DistContext
    from training.sft.trainer import SFTTrainer

    videos = tmp_path / "videos"
    videos.mkdir()
    records = []
    for i, r in enumerate(sft_records[:4]):
        copy = videos / f"v{i}.mp4"
        shutil.copy(r.video_path, copy)
        records.append(type(r)(**{**r.to_dict(), "video_path": str(copy)}))
    data = write_split(records, tmp_path / "data")
    cfg = _cfg("scan_decode=false", "micro_batch_size=2", "epochs=2", "max_bad_fraction=0.5")
    trainer = SFTTrainer(cfg, tiny_model_dir, data, tmp_path / "out", DistContext())
    (videos / "v2.mp4").write_bytes(b"not a video any more")
    summary = trainer.run()
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["stage"]) for s in skipped] == [(records[2].id, "train")]
    assert summary["examples_skipped"] == 1 and summary["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    # Each epoch has one step with one example fewer; the loss is still a mean over real tokens.
    assert sorted(r["examples"] for r in rows) == [1, 1, 2, 2]
    assert all(r["loss"] == r["loss"] for r in rows)


@pytest.mark.slow  # ~25 s on an idle 2-core host, most of it starting Ray and the workers
def test_two_ray_workers_match_one_process(tiny_model_dir, sft_records, tmp_path):
    """Same global batch (4): 2 Ray Train gloo workers with FSDP2, each accumulating 2
    micro-batches of 1 (gradient sync on the last only), vs 2 micro-batches of 2 in one process:
    the same loss curve and weights within float tolerance."""
    from training.sft.run import train_sft

    data = write_split(sft_records[:8], tmp_path / "data")
    common = ("lr=0.003", "epochs=2", "warmup_steps=1", "save_every=2", "keep_last=1")
    one = train_sft(_cfg("micro_batch_size=2", "grad_accum=2", *common), tiny_model_dir, data, tmp_path / "one")
    two = train_sft(_cfg("micro_batch_size=1", "grad_accum=2", "num_workers=2", "launcher=ray", *common),
                    tiny_model_dir, data, tmp_path / "two")
    assert one["world_size"] == 1 and two["world_size"] == 2
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert l1.keys() == l2.keys() == {1, 2, 3, 4}
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-4, abs=1e-5), (step, l1, l2)
    a, b = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # The sharded run's checkpoint is a complete HF folder too.
    assert (tmp_path / "two" / "checkpoints" / "step-00000004" / "model.safetensors").is_file()


def test_accumulation_and_checkpointing_match_the_plain_path(tiny_model_dir, sft_records, tmp_path):
    """Global batch 2 as one micro-batch of 2, or as 2 accumulated micro-batches of 1 with
    gradient checkpointing: the same steps. bf16 autocast stays close to fp32."""
    from training.sft.run import train_sft

    data = write_split(sft_records[:6], tmp_path / "data")
    common = ("lr=0.003", "max_steps=3", "warmup_steps=1")
    train_sft(_cfg("micro_batch_size=2", *common), tiny_model_dir, data, tmp_path / "plain")
    train_sft(_cfg("micro_batch_size=1", "grad_accum=2", "gradient_checkpointing=true", *common),
              tiny_model_dir, data, tmp_path / "accum")
    train_sft(_cfg("micro_batch_size=2", "precision=bf16", *common), tiny_model_dir, data, tmp_path / "bf16")
    plain, accum, bf16 = (_losses(tmp_path / n) for n in ("plain", "accum", "bf16"))
    for step in plain:
        assert accum[step] == pytest.approx(plain[step], rel=1e-5)
        assert bf16[step] == pytest.approx(plain[step], rel=3e-2)
    a, b = _weights(tmp_path / "plain" / "model"), _weights(tmp_path / "accum" / "model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # Adam: a few ulp of grad -> ~1e-5


def test_metrics_and_model_reach_mlflow(tiny_model_dir, sft_records, tmp_path, mlflow_env):
    from mlflow import MlflowClient

    from training.sft.run import train_sft

    data = write_split(sft_records[:4], tmp_path / "data")
    summary = train_sft(_cfg("micro_batch_size=2", "max_steps=2", "mlflow_log_model=true"), tiny_model_dir, data,
                        tmp_path / "out")
    client = MlflowClient()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["longrl.stage"] == "sft"
    assert run.data.params["micro_batch_size"] == "2" and run.data.params["video.num_frames"] == "4"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2]
    assert [m.value for m in losses] == pytest.approx(list(_losses(tmp_path / "out").values()), rel=1e-5)
    for key in ("lr", "grad_norm", "tokens_per_s", "frames_per_s", "peak_mem_gb"):
        assert key in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"skipped.jsonl", "summary.json", "plots/loss_curve.png"} <= files
    assert summary["mlflow_model_uri"].startswith("models:/")
    assert run.data.tags["checkpoint.logged_as"] == "transformers"
