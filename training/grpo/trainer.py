"""The GRPO trainer for long video: one controller, one step read top to bottom.

    per step: sample prompts -> encode each video once -> G rollouts per prompt -> rewards
              -> old-policy and reference log-probs -> group advantages -> policy update
              -> metrics / checkpoint

The video embeddings made in the encode phase feed the rollout prefill and every training
forward pass (MR-SP stage 1); `logprob_fn` is the single function that scores tokens and is
what sequence parallelism replaces. How the trainer's parts are built (and checkpointed) is
setup.py; the dp x sp trainer runs this same loop and step with its own parts.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from common import tracking
from data_gen.schema import QARecord
from training.checkpoint import export_model_folder
from training.distributed import broadcast_object
from training.grpo import algorithms as algo
from training.grpo.logprobs import Rollout, rows_logprobs
from training.grpo.metrics import (
    MetricsLogger,
    PhaseTimer,
    answer_budget_warning,
    rollout_metrics,
    warn,
)
from training.grpo.rollout import RolloutPrompt, SamplingSettings
from training.grpo.setup import TrainerSetup
from training.grpo.update import UpdateInputs, old_pass_is_redundant, policy_update
from training.grpo.video_cache import StepVideo
from training.models.qwen3_vl import video_groups
from training.prompts import SYSTEM_PROMPT, encode_example


def log_training_inputs(run: tracking.StageRun, records: list[QARecord], split: str, model_dir: Path) -> None:
    """What the run trains on, on the run: the records actually used (after filters and
    rejects) as a dataset input with a content digest, and the input model folder - so a run
    started from the CLI has the lineage the pipeline's runs get (issue 15.16)."""
    import datasets

    rows = [r.to_dict() for r in records]
    run.log_dataset(datasets.Dataset.from_list(rows), name=f"grpo-{split}", context="training")
    run.set_tags({"input.model": str(Path(model_dir).resolve())})


class GRPOTrainer(TrainerSetup):
    """One controller: `train()` runs `train_step` until `cfg.max_steps`, checkpointing on the way.
    Built as `GRPOTrainer(cfg, model_dir, data_dir, out_dir, logprob_fn=..., on_step=...)`
    (setup.TrainerSetup); on a dp x sp job every rank runs this same loop."""

    def train(self) -> dict:
        cfg, main = self.cfg, self.ctx.is_main
        stage = tracking.stage_run("grpo", config=self.global_cfg) if main else _InactiveRun()
        with stage as run:
            if main and run.active:
                log_training_inputs(run, self.records, self.cfg.data.split, self.model_dir)
            logger = MetricsLogger(self.out, run if run.active else None, resume_step=self.step,
                                   total_steps=cfg.max_steps) if main else None
            if main and (budget := answer_budget_warning(self.tokenizer, self.records, cfg.rollout.max_new_tokens)):
                warn(budget)
            first = self.step + 1
            with _progress(cfg.progress and main) as bar:
                task = bar.add_task("grpo", total=cfg.max_steps, completed=self.step)
                while self.step < cfg.max_steps:
                    self.step += 1
                    with self.precision.autocast():
                        metrics = self.train_step(self.step)
                    if logger is not None:
                        logger.log(self.step, metrics)
                    bar.update(task, advance=1, description=(
                        f"grpo{self.layout_label()} reward {metrics.get('reward/total', 0):.3f} "
                        f"kl {metrics.get('actor/kl', 0):.4f} {metrics['time/step']:.1f}s/step"))
                    if checkpoint_due(self.step, cfg.save_every, cfg.max_steps):
                        self.save_checkpoint()
                    if self.on_step is not None:
                        self.on_step(self.step, metrics)
            close = getattr(self.embedder, "close", None)
            if close is not None:
                close()  # the prefetch threads
            final = export_model_folder(self.runner.model, self.tokenizer, self.out / "model", self.model_dir,
                                        self.ctx)
            summary = None
            if main:
                plots = logger.plot() if cfg.plots else []
                run.log_artifact(self.out / "metrics.jsonl")
                run.log_checkpoint(final)
                summary = {**_summary(logger.history(), first, self.step, final, plots), **self.summary_extra(),
                           "video": self._video_summary()}
                (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return broadcast_object(summary, self.ctx)

    def layout_label(self) -> str:
        return ""

    def summary_extra(self) -> dict:
        return {}

    # ---------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        cfg, alg, timer = self.cfg, self.cfg.algorithm, PhaseTimer()
        t0 = time.perf_counter()
        self.embedder.begin_step()
        if self.ref_embedder:
            self.ref_embedder.begin_step()

        # 1-4. prompts -> videos encoded once -> G rollouts each -> rewards (DAPO: refill).
        groups, extra = self.collect_groups(step, timer)
        rows = [r for g in groups for r in g]
        if not rows:  # dynamic sampling found no group with a learning signal
            return {**extra, **timer.metrics(), "time/step": time.perf_counter() - t0, "skipped": 1.0}

        # 5. old-policy (= rollout weights) and reference log-probs, same inputs as the rollout.
        # The old-policy pass is skipped when it is provably the update's own first forward pass
        # (update.old_pass_is_redundant) and when the engine's log-probs are asked for.
        lp_args = dict(pad_id=self.tokenizer.pad_token_id, micro_rows=alg.logprob_rows,
                       with_pixels=False, temperature=cfg.rollout.temperature,
                       chunk_size=alg.logprob_chunk, logprob_fn=self.logprob_fn)
        rollout_lps = [torch.tensor(r.response.logprobs) for r in rows]
        skip_old = alg.old_logprobs == "rollout" or old_pass_is_redundant(alg, len(rows), self.model)
        with timer("logprob"):
            trainer_lps = None
            if not skip_old:
                trainer_lps, _ = rows_logprobs(self.model, self.embedder.row_embeds, rows, **lp_args)
            ref_lps = None
            if self.ref is not None:
                ref_embed = ((lambda vids: [v.ref_embeds for v in vids]) if self.ref_embedder
                             else self.embedder.row_embeds)
                with self._ref_on_device():
                    ref_lps, _ = rows_logprobs(self.ref, ref_embed, rows, **lp_args)
        # None: the update takes its own detached log-probs as the old ones.
        old_lps = rollout_lps if alg.old_logprobs == "rollout" else trainer_lps

        # 6. rewards (+ overlong penalty, + KL in the reward) -> group advantages.
        rewards = torch.tensor([r.reward.total for r in rows])
        lengths = torch.tensor([len(r.response.token_ids) for r in rows])
        if alg.overlong_buffer > 0:
            pen = algo.overlong_penalty(lengths, cfg.rollout.max_new_tokens, alg.overlong_buffer,
                                        alg.overlong_penalty)
            rewards = rewards + pen
            for r, p in zip(rows, pen.tolist(), strict=True):
                r.extras["overlong_penalty"] = p
        kl_metrics = self._kl_metrics(rows, old_lps, ref_lps) if old_lps is not None else None
        if ref_lps is not None and alg.kl_in_reward:
            for i, (o, f) in enumerate(zip(old_lps, ref_lps, strict=True)):
                kl = algo.kl_estimate(o, f, alg.kl_kind).sum()
                rewards[i] -= alg.kl_coef * kl
        group_ids = torch.tensor([r.group for r in rows])
        adv = algo.group_advantages(rewards, group_ids, scale_by_std=alg.scale_adv_by_std, eps=alg.adv_eps)
        weight = torch.ones(len(rows))
        if alg.mask_truncated:
            weight = torch.tensor([1.0 if r.response.finished else 0.0 for r in rows])

        # 7. policy update(s); the rollout engine gets the new weights.
        with timer("update"):
            upd_in = UpdateInputs(rows, adv, old_lps, None if alg.kl_in_reward else ref_lps, weight)
            upd = policy_update(
                self.model, self.optimizer, self.scheduler, upd_in,
                alg, embed_rows=self.embedder.row_embeds, pad_id=self.tokenizer.pad_token_id,
                temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                max_grad_norm=cfg.optim.max_grad_norm, logprob_fn=self.logprob_fn)
            self.engine.sync_weights(self.model)

        # 8. metrics. Without the old pass, the update's first forward pass is the trainer's
        # view of the rollout weights when it ran before any optimizer step.
        one_pass = alg.ppo_epochs == 1 and (alg.mini_batch_rows <= 0 or alg.mini_batch_rows >= len(rows))
        if trainer_lps is None and one_pass:
            trainer_lps = upd_in.first_logprobs
        if kl_metrics is None:
            kl_metrics = self._kl_metrics(rows, upd_in.first_logprobs, ref_lps)
        step_s = time.perf_counter() - t0
        tokens = sum(r.num_tokens for r in rows)
        calls = self.embedder.calls + (self.ref_embedder.calls if self.ref_embedder else 0)
        out = {**rollout_metrics(rows, rollout_lps, trainer_lps),
               **kl_metrics, **upd, **extra, **timer.metrics(),
               "advantage/abs_mean": float(adv.abs().mean()),
               "vision_calls_per_video": calls / max(self.embedder.unique, 1),
               "vision/calls": float(calls), "vision/videos": float(self.embedder.unique),
               "time/step": step_s, "throughput/tokens_per_s": tokens / step_s,
               "throughput/response_tokens": float(lengths.sum())}
        out.update(self.scorer.ctx.judge.last_stats.as_metrics())
        note = getattr(self.embedder, "store_note", "")
        if note and not getattr(self, "_store_noted", False) and self.ctx.is_main:
            self._store_noted = True
            warn(note)
        self._record_errors(step, rows)
        self._record_samples(step, groups)
        return out

    # ---------------------------------------------------------------------------------------
    def collect_groups(self, step: int, timer: PhaseTimer) -> tuple[list[list[Rollout]], dict]:
        """Rounds of prompts -> rollouts -> rewards until the step has its groups. Without
        dynamic sampling that is one round; with it, flat groups are dropped and more drawn."""
        cfg, alg = self.cfg, self.cfg.algorithm
        want = cfg.rollout.prompts_per_step
        ds = algo.DynamicSampler(want, alg.dynamic_sampling_max_rounds) if alg.dynamic_sampling else None
        rnd = 0
        while True:
            groups = self._one_round(step, rnd, want, timer)
            if ds is None:
                return groups, {}
            metric = alg.dynamic_sampling_metric
            ds.add(groups, [[(r.reward.total if metric == "total" else r.reward.parts.get(metric, 0.0))
                             for r in g] for g in groups])
            rnd += 1
            if ds.done:
                kept = ds.take()
                for gi, g in enumerate(kept):  # renumber groups within the step
                    for r in g:
                        r.group = gi
                return kept, ds.stats()

    def _one_round(self, step: int, rnd: int, want: int, timer: PhaseTimer) -> list[list[Rollout]]:
        cfg = self.cfg
        with timer("encode"):
            records, videos = self._prompts_with_videos(want)
        prompts = [encode_example(self.tokenizer, rec, videos[rec.id].num_tokens,
                                  system_prompt=cfg.system_prompt or SYSTEM_PROMPT,
                                  video_groups=video_groups(videos[rec.id]))  # Qwen3-VL: timestamped groups
                   for rec in records]
        with timer("rollout"):
            vids = [videos[rec.id] for rec in records]
            embeds = self.embedder.rollout_embeds(vids)
            sampling = SamplingSettings(cfg.rollout.group_size, cfg.rollout.max_new_tokens,
                                        cfg.rollout.temperature, cfg.rollout.top_p,
                                        seed=(cfg.seed * 1_000_003 + step * 1009 + rnd) % 2**62)
            responses = self.engine.generate(
                [RolloutPrompt(p, v, e) for p, v, e in zip(prompts, vids, embeds, strict=True)], sampling)
        with timer("reward"):
            groups = [[Rollout(rec, v, p, resp, gi,
                               self.tokenizer.decode(resp.token_ids, skip_special_tokens=True))
                       for resp in resps]
                      for gi, (rec, v, p, resps) in enumerate(zip(records, vids, prompts, responses, strict=True))]
            flat = [r for g in groups for r in g]
            for r, res in zip(flat, self.scorer.score([r.text for r in flat], [r.record for r in flat]),
                              strict=True):
                r.reward = res
        return groups

    def _prompts_with_videos(self, want: int) -> tuple[list[QARecord], dict[str, StepVideo]]:
        """`want` records whose videos load; a bad video is recorded and its record replaced."""
        records: list[QARecord] = []
        videos: dict[str, StepVideo] = {}
        for _attempt in range(10):
            batch = self.sampler.next(want - len(records))
            got, failures = self.embedder.prepare(batch)
            for rec in batch:
                if rec.id in failures:
                    self.sampler.mark_bad(rec, failures[rec.id])
                    self._append_error({"step": self.step, "record": rec.id, "error": failures[rec.id]})
                else:
                    records.append(rec)
            videos.update(got)
            if len(records) == want:
                # decode the next step's videos while this one computes (sampler order is fixed)
                peek = getattr(self.sampler, "peek", None)
                if peek is not None:
                    self.embedder.prefetch(peek(want))
                if self.ref_embedder:
                    with self._ref_on_device():
                        ref_videos, _ = self.ref_embedder.prepare(records)
                    for rid, v in videos.items():
                        v.ref_embeds = ref_videos[rid].embeds
                return records, videos
        raise RuntimeError(f"could not load {want} videos in 10 attempts; see {self.out / 'errors.jsonl'}")

    @contextlib.contextmanager
    def _ref_on_device(self):
        if self.cfg.ref_offload and self.ref is not None:
            self.ref.to(self.device)
            try:
                yield
            finally:
                self.ref.to("cpu")
        else:
            yield

    def _video_summary(self) -> dict[str, float]:
        """Decoded-video store hits and prefetched decodes of this process's run (summary.json:
        not in metrics.jsonl, whose numbers a resumed run must reproduce - a fresh process
        starts with an empty store)."""
        st = getattr(self.embedder, "stats", None)
        if not st:
            return {}
        looked = st["store_hits"] + st["store_misses"]
        return {"store_hit_rate": st["store_hits"] / looked if looked else 0.0,
                "prefetched_share": st["prefetched"] / st["store_misses"] if st["store_misses"] else 0.0,
                "store_on": float(self.embedder.store_on), "decoded": float(st["store_misses"])}

    def _kl_metrics(self, rows, old_lps, ref_lps) -> dict[str, float]:
        if ref_lps is None:
            return {}
        kls = torch.cat([algo.kl_estimate(o, f, self.cfg.algorithm.kl_kind) for o, f in
                         zip(old_lps, ref_lps, strict=True) if o is not None] or [torch.zeros(0)])
        return {"actor/kl": float(kls.mean()) if kls.numel() else 0.0}

    def _record_errors(self, step: int, rows: list[Rollout]) -> None:
        for r in rows:
            if r.reward and r.reward.errors:
                self._append_error({"step": step, "record": r.record.id, "error": r.reward.errors})

    def _record_samples(self, step: int, groups: list[list[Rollout]], per_step: int = 4) -> None:
        """A few completions per step in samples.jsonl: what the policy actually writes."""
        with (self.out / "samples.jsonl").open("a") as fh:
            for g in groups[:per_step]:
                r = g[0]
                fh.write(json.dumps({"step": step, "record": r.record.id, "category": r.record.category,
                                     "answer": r.record.answer, "completion": r.text,
                                     "reward": r.reward.total if r.reward else None,
                                     "parts": r.reward.parts if r.reward else {}}) + "\n")

    def _append_error(self, row: dict) -> None:
        with (self.out / "errors.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")

def checkpoint_due(step: int, save_every: int, last: int) -> bool:
    """Checkpoint every `save_every` steps (0: never in between) and always at the last step."""
    return step == last or (save_every > 0 and step % save_every == 0)


class _InactiveRun:
    """Ranks other than 0 log nothing: a stage run that is not active."""

    def __enter__(self) -> tracking.StageRun:
        return tracking.StageRun(None, "grpo")

    def __exit__(self, *exc) -> None:
        return None


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def _summary(hist: list[dict], first: int, last: int, final: Path, plots: list[Path]) -> dict:
    rewards = [h["reward/total"] for h in hist if h.get("reward/total") is not None]
    k = max(1, min(5, len(rewards) // 2))
    return {"steps": last, "resumed_from": first - 1, "model": str(final),
            "reward_first": sum(rewards[:k]) / k if rewards else None,
            "reward_last": sum(rewards[-k:]) / k if rewards else None,
            "plots": [str(p) for p in plots]}
