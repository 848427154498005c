"""The SFT loop, run by every worker (one process by default; Ray Train workers with FSDP2).

    load records -> scan (lengths, bad examples) -> model (frozen vision, checkpointing, FSDP2)
    -> AdamW + warm-up/cosine -> resume -> for each step: decode this worker's micro-batches
    (decoded during the previous step by the prefetch threads), forward/backward each with loss
    scaled by the global response-token count, clip, step -> metrics, checkpoints, evaluation
    -> final HF folder, loss curve, summary.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from common import tracking
from data_gen.video_io import VideoError
from training.checkpoint import (
    TrainerState,
    export_model_folder,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from training.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    set_gradient_sync,
    shard_model,
)
from training.mm_batch import base_model
from training.model_io import load_model, load_tokenizer
from training.model_loading import load_sharded_weights, meta_model
from training.optim import build_adamw, clip_grad_norm, warmup_cosine, warmup_steps_for
from training.records import load_records
from training.sft import metrics as M
from training.sft.batching import epoch_batches, micro_batches, steps_per_epoch
from training.sft.config import SFTConfig
from training.sft.data import (
    BadExample,
    SFTDataError,
    bad_from_scan,
    check_bad_share,
    load_example,
    load_video,
    scan_all,
    scan_records,
    write_skipped,
)
from training.sft.evaluate import EvalSet, evaluate
from training.sft.prefetch import Prefetcher
from training.sft.step import forward_backward, make_batch
from training.video_inputs import VideoPatches, VisionSpec


def _rejected_id(message: str) -> str:
    """The record id in a schema rejection ("row 3: record <id> (video v): empty answer")."""
    m = re.search(r"record (\S+) \(", message)
    return m.group(1) if m else message.split(":")[0]


class SFTTrainer:
    def __init__(self, cfg: SFTConfig, model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                 ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg.check(), ctx
        self.model_dir, self.data_dir, self.out = Path(model_dir), Path(data_dir), Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed + ctx.rank)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.spec = VisionSpec.from_model_dir(self.model_dir)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and ctx.device.type == "cuda")
        self._load_data()
        # the next step's videos, decoded while this step computes (training.sft.prefetch)
        self.prefetch: Prefetcher[int, VideoPatches] = Prefetcher(
            cfg.video.prefetch_workers, lambda k: load_video(self.records[k], self.cfg, self.spec))
        self.resume_dir = self._resume_dir()
        self.runner = self._build_model()
        self.optimizer = build_adamw(self.runner, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps)
        warmup = warmup_steps_for(self.total_steps, cfg.warmup_steps, cfg.warmup_ratio)
        self.scheduler = warmup_cosine(self.optimizer, warmup, self.total_steps, cfg.min_lr_ratio)
        self.state = TrainerState(world_size=ctx.world_size)
        if self.resume_dir is not None:
            self.state = load_checkpoint(self.resume_dir, self.runner, self.optimizer, self.scheduler, ctx, cfg.seed)
            self.train_bad = [BadExample(**b) for b in self.state.extra.get("train_bad", [])]
            self.bad_ids |= {b.id for b in self.train_bad}

    # -- data -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        loaded = load_records(self.data_dir, cfg.split, cfg.video_root, None, cfg.max_examples)
        self.records = loaded.records
        load_bad = [BadExample(_rejected_id(r), "", r, "load") for r in loaded.rejected]
        self.entries = scan_all(self.records, self.tokenizer, self.spec, cfg, ctx, cache_dir=self.out)
        self.scan_bad = load_bad + bad_from_scan(self.entries)
        self.train_bad: list[BadExample] = []
        self.bad_ids = {b.id for b in self.scan_bad}
        self.n_total = len(self.records) + len(loaded.rejected)
        if ctx.is_main:
            write_skipped(self.scan_bad, self.out)
        check_bad_share(self.scan_bad, self.n_total, cfg.max_bad_fraction)
        usable = [e.index for e in self.entries if e.ok]
        holdout: list[int] = []
        if cfg.eval_holdout and not cfg.eval_split:
            random.Random(f"holdout-{cfg.seed}").shuffle(usable)
            holdout, usable = usable[: cfg.eval_holdout], sorted(usable[cfg.eval_holdout:])
        self.lengths = {i: self.entries[i].seq_len for i in usable}
        self.per_epoch = steps_per_epoch(len(usable), cfg.global_batch)
        if self.per_epoch == 0:
            raise SFTDataError(f"{len(usable)} usable examples, fewer than one global batch of "
                               f"{cfg.global_batch} (micro_batch_size x grad_accum x num_workers)")
        self.total_steps = self.per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.eval_set = self._eval_set(holdout)
        self._plan_cache: dict[int, list[list[int]]] = {}

    def _eval_set(self, holdout: list[int]) -> EvalSet | None:
        cfg = self.cfg
        if cfg.eval_split:
            records = load_records(self.data_dir, cfg.eval_split, cfg.video_root, None, cfg.eval_max_examples).records
            entries = scan_records(records, list(range(len(records))), self.tokenizer, self.spec, cfg)
        elif holdout:
            records, entries = self.records, [self.entries[i] for i in holdout[: cfg.eval_max_examples]]
        else:
            return None
        examples = []
        for e in entries:
            if e.ok:
                with contextlib.suppress(VideoError):
                    examples.append(load_example(records[e.index], e, self.tokenizer, self.spec, cfg))
        return EvalSet(records, examples) if examples else None

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plan_cache:
            # this epoch and the next are kept: the prefetch looks one step ahead across the end
            self._plan_cache = {e: b for e, b in self._plan_cache.items() if e == epoch - 1}
            self._plan_cache[epoch] = epoch_batches(self.lengths, self.cfg.global_batch, epoch, self.cfg.seed,
                                                    self.cfg.length_grouping, self.cfg.length_group_batches)
        return self._plan_cache[epoch]

    def keys_at(self, epoch: int, batch_in_epoch: int) -> list[int]:
        """The global batch at (epoch, batch_in_epoch), wrapping into the next epoch."""
        epoch, pos = epoch + batch_in_epoch // self.per_epoch, batch_in_epoch % self.per_epoch
        return self._plan(epoch)[pos]

    # -- model ------------------------------------------------------------------------------
    def _resume_dir(self) -> Path | None:
        mode = self.cfg.resume
        if mode == "never":
            return None
        if mode == "auto":
            return latest_checkpoint(self.out)
        path = Path(mode)
        if not path.is_dir():
            raise FileNotFoundError(f"resume checkpoint {path} does not exist")
        return path

    def _build_model(self):
        cfg, ctx = self.cfg, self.ctx
        # Sharded runs build on the meta device and load each rank's shards after fully_shard
        # (training.model_loading): no rank ever holds the full model.
        source = self.resume_dir or self.model_dir
        if ctx.distributed:
            model = meta_model(source, dtype="float32", attn_implementation=cfg.attn_implementation or None)
        else:
            model = load_model(source, dtype="float32", device=ctx.device,
                               attn_implementation=cfg.attn_implementation or None)
        visual = getattr(base_model(model), "visual", None)  # None: a text-only LM
        for name, p in (visual.named_parameters() if visual is not None else ()):
            is_projector = name.startswith("merger.")
            if (cfg.freeze_projector and is_projector) or (cfg.freeze_vision_tower and not is_projector):
                p.requires_grad_(False)
        if cfg.gradient_checkpointing is True or (cfg.gradient_checkpointing == "auto" and ctx.device.type == "cuda"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.train()
        runner = shard_model(model, ctx, param_dtype=torch.bfloat16 if self.bf16 else None)
        if ctx.distributed:
            load_sharded_weights(model, source, ctx.device)
        return runner

    # -- one optimizer step -----------------------------------------------------------------
    def _my_keys(self, keys: list[int]) -> list[list[int]]:
        cfg, ctx = self.cfg, self.ctx
        return micro_batches(keys, self.lengths, cfg.micro_batch_size, ctx.world_size, ctx.rank)

    def _load_micro_batches(self, keys: list[int], step: int) -> tuple[list[list], list[BadExample]]:
        cfg = self.cfg
        micros, bad = [], []
        for mk in self._my_keys(keys):
            rows = []
            for k in mk:
                rec, entry = self.records[k], self.entries[k]
                if rec.id in self.bad_ids:
                    continue
                try:
                    video = self.prefetch.take(k) if rec.has_video else None  # None: decode it here
                    rows.append(load_example(rec, entry, self.tokenizer, self.spec, cfg, video))
                except VideoError as exc:
                    bad.append(BadExample(rec.id, rec.video_path, f"video: {exc.reason}", "train", step))
            micros.append(rows)
        return micros, bad

    def _passes(self, micros: list[list], step: int) -> list[tuple[list, float]]:
        """(rows, weight) per forward pass. Sharded workers keep one pass per micro-batch even
        when all its examples failed (weight 0 on a surviving example: no gradient, no data
        substituted) so the ranks' collectives stay matched."""
        alive = [m for m in micros if m]
        if not self.ctx.distributed:
            return [(m, 1.0) for m in alive]
        if not alive:
            raise SFTDataError(f"worker {self.ctx.rank} lost every example of step {step} to bad videos; "
                               f"see {self.out / 'skipped.jsonl'}")
        return [(m, 1.0) if m else (alive[0][:1], 0.0) for m in micros]

    def train_step(self, keys: list[int], step: int, ahead: list[int] | None = None) -> dict[str, Any]:
        """One optimizer step on the global batch `keys`; `ahead` (the next step's global batch)
        has its videos decoded in the background while this step computes."""
        cfg, ctx = self.cfg, self.ctx
        t0 = time.perf_counter()
        micros, bad = self._load_micro_batches(keys, step)
        load_s = time.perf_counter() - t0
        if ahead is not None:
            self.prefetch.ahead(k for mk in self._my_keys(ahead) for k in mk
                                if self.records[k].has_video and self.records[k].id not in self.bad_ids)
        local_tokens = sum(r.entry.loss_tokens for m in micros for r in m)
        gathered = all_gather_objects((local_tokens, bad), ctx)
        loss_tokens = sum(t for t, _ in gathered)
        for _, rank_bad in gathered:
            self.train_bad += rank_bad
            self.bad_ids |= {b.id for b in rank_bad}
        if any(b for _, b in gathered):
            if ctx.is_main:
                write_skipped(self.scan_bad + self.train_bad, self.out)
            check_bad_share(self.scan_bad + self.train_bad, self.n_total, cfg.max_bad_fraction)
        sums = [0.0] * 5  # nll, real tokens, padded tokens, frames, examples
        grad_norm = float("nan")
        if loss_tokens > 0:
            passes = self._passes(micros, step)
            scale = ctx.world_size / loss_tokens
            for i, (rows, weight) in enumerate(passes):
                set_gradient_sync(self.runner, i == len(passes) - 1)
                batch = make_batch(rows, self.tokenizer.pad_token_id, ctx.device)
                nll = forward_backward(self.runner, batch, scale * weight, cfg.logprob_chunk, self.bf16)
                sums[0] += nll * weight
                sums[1] += float(batch.attention_mask.sum()) * weight
                sums[2] += batch.input_ids.numel() * weight
                sums[3] += sum(r.entry.frames for r in rows) * weight
                sums[4] += len(rows) * weight
            grad_norm = clip_grad_norm(self.runner.parameters(), cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        nll, real, padded, frames, examples = all_reduce_sum(sums, ctx)
        dt = time.perf_counter() - t0
        return {
            "loss": nll / loss_tokens if loss_tokens else float("nan"), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": real / dt, "frames_per_s": frames / dt,
            "pad_fraction": 1.0 - real / padded if padded else 0.0, "step_time_s": dt, "video_load_s": load_s,
            "examples": int(examples), "loss_tokens": int(loss_tokens),
            "peak_mem_gb": M.peak_memory_gb(ctx.device), "bad_examples": len(self.scan_bad) + len(self.train_bad),
            "skipped_update": not math.isfinite(grad_norm),
        }

    # -- the run ----------------------------------------------------------------------------
    def _checkpoint(self) -> Path:
        self.state.extra["train_bad"] = [asdict(b) for b in self.train_bad]
        return save_checkpoint(self.out, self.state, self.runner, self.optimizer, self.scheduler, self.tokenizer,
                               self.model_dir, self.ctx, self.cfg.keep_last, self.cfg.save_dtype)

    def _evaluate(self) -> dict[str, float]:
        if not self.eval_set:
            return {}
        samples = self.out / "eval_samples.jsonl" if self.ctx.is_main else None
        return evaluate(self.runner, self.tokenizer, self.eval_set, self.cfg, self.ctx, self.bf16, samples)

    def run(self) -> dict[str, Any]:
        cfg, ctx, state = self.cfg, self.ctx, self.state
        if ctx.is_main:
            if self.resume_dir is not None:
                M.truncate_metrics(self.out, state.step)
            else:
                (self.out / M.METRICS_FILE).unlink(missing_ok=True)
        stage = tracking.stage_run("sft", config=cfg) if ctx.is_main else contextlib.nullcontext(tracking.StageRun())
        with stage as run:
            if ctx.is_main:
                run.set_tags({"sft.resumed_from": str(self.resume_dir or ""), "sft.world_size": ctx.world_size})
                with contextlib.suppress(Exception):  # a data folder MLflow cannot read is not fatal
                    run.log_dataset(str(self.data_dir / cfg.split), name=f"sft-{cfg.split}", context="training")
            log = M.SFTMetrics(self.out, run, self.total_steps, state.step, ctx.is_main, cfg.progress)
            try:
                while state.step < self.total_steps:
                    keys = self.keys_at(state.epoch, state.batch_in_epoch)
                    ahead = (self.keys_at(state.epoch, state.batch_in_epoch + 1)
                             if state.step + 1 < self.total_steps else None)
                    metrics = self.train_step(keys, state.step, ahead)
                    state.step += 1
                    state.batch_in_epoch += 1
                    if state.batch_in_epoch >= self.per_epoch:
                        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    last = state.step == self.total_steps
                    if last or (cfg.eval_every and state.step % cfg.eval_every == 0):
                        metrics.update(self._evaluate())
                    if state.step % cfg.log_every == 0 or last or "eval/loss" in metrics:
                        metrics["epoch"] = state.epoch
                        log.log(state.step, metrics)
                    else:
                        log.advance(state.step)
                    if cfg.save_every and (state.step % cfg.save_every == 0 or last):
                        self._checkpoint()
            finally:
                self.prefetch.close()  # no decode thread outlives the loop (error, Ctrl-C, end)
                log.close()
            return self._finish(run)

    def _finish(self, run) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        model_dir = export_model_folder(self.runner.model, self.tokenizer, self.out / "model", self.model_dir,
                                        ctx, dtype=cfg.save_dtype)
        if not ctx.is_main:
            return {}
        bad = self.scan_bad + self.train_bad
        skipped = write_skipped(bad, self.out)
        rows = M.read_metrics(self.out)
        curve = M.plot_curves(rows, self.out / M.CURVE_FILE)
        summary = M.summarize(rows, {
            "model": str(model_dir), "examples_used": len(self.lengths), "examples_total": self.n_total,
            "examples_skipped": len(bad), "skipped_report": str(skipped), "world_size": ctx.world_size,
            "resumed_from": str(self.resume_dir or ""), "loss_curve": str(curve or ""),
            "total_steps": self.total_steps, "video_prefetch": dict(self.prefetch.stats),
        })
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        if run.active:
            summary["mlflow_run_id"] = run.run_id
            if cfg.mlflow_log_model:
                summary["mlflow_model_uri"] = run.log_checkpoint(model_dir)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            run.log_artifact(skipped)
            run.log_artifact(self.out / "summary.json")
            if curve:
                run.log_artifact(curve, "plots")
        return summary
