"""One dp x sp GRPO step equals the single-process GRPOTrainer step (issue 13 text-only models,
issue 12.1 sharded rollout, 12.7 trainable vision tower): the same rollouts, the same loss, the
same log-probs in the update and the same updated weights (<= 1e-5, fp32, gloo on CPU).

Both trainers are built from the config the CLI builds (common.config.load_config), the dp x sp
one as `grpo_worker` builds it. The only thing the test changes is where the sampling seed comes
from: every prompt is sampled with a seed of its own token ids (`PromptSeeded`), so a prompt's G
samples do not depend on which rank or which call generated them - otherwise one process and a
split job draw different (equally valid) samples and nothing downstream could be compared."""

from __future__ import annotations

import zlib
from dataclasses import replace

import pytest
import torch

from common.config import load_config
from training.grpo.config import GRPOConfig
from training.grpo.logprobs import gather_rows
from training.sequence_parallel.local_group import run_local_group

REWARD = {"reward": {"weights": {"tests.fixtures.sequence_parallel:vowel_share": 1.0}}}
BASE = [
    "max_steps=1",
    "rollout.prompts_per_step=2",
    "rollout.group_size=3",
    "rollout.max_new_tokens=7",
    "progress=false",
    "plots=false",
    "save_every=0",
    "algorithm.micro_batch_rows=2",
    "optim.lr=0.002",
    "rollout.temperature=1.5",
    # Adam's first step is lr * g / (|g| + eps): with eps at 1e-8 a weight whose gradient is
    # ~1e-8 moves by a share of lr that float noise in g decides; eps 1e-6 keeps the weights
    # comparable at 1e-5 (the gradients themselves are compared directly as well)
    "optim.eps=1e-6",
    # token-mean normalises by the local token count; per-sequence aggregation is what a
    # dp split reproduces exactly (equal rows per replica)
    "algorithm.loss_agg=seq-mean-token-mean",
]


class PromptSeeded:
    """A rollout engine whose samples for a prompt are seeded by the prompt's own token ids."""

    def __init__(self, engine) -> None:
        self.engine, self.name = engine, engine.name

    def generate(self, prompts, sampling):
        calls = len(prompts)
        if getattr(self.engine, "collective", False):  # the sharded engine: every rank in step
            from training.sequence_parallel.lockstep import all_max

            calls = all_max(calls, torch.device("cpu"))
        out = []
        for i in range(calls):
            mine = prompts[i : i + 1]
            seed = zlib.crc32(str(mine[0].prompt.input_ids).encode()) if mine else 0
            out += self.engine.generate(mine, replace(sampling, seed=seed))
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def instrument(trainer, inner_owner, seed_per_prompt: bool = True) -> dict:
    """Seed per prompt (unless told not to); record the step's rollouts and every log-prob pass
    of the update."""
    seen: dict = {"rollouts": {}, "update_logprobs": {}}
    if seed_per_prompt:
        inner_owner.engine = PromptSeeded(inner_owner.engine)
    outer = trainer.engine
    generate = outer.generate

    def recording(prompts, sampling):
        res = generate(prompts, sampling)
        for p, group in zip(prompts, res, strict=True):
            for j, r in enumerate(group):
                seen["rollouts"][(tuple(p.prompt.input_ids), j)] = (
                    list(r.token_ids),
                    torch.tensor(r.logprobs),
                )
        return res

    outer.generate = recording
    fn = trainer.logprob_fn

    def scoring(model, batch, embeds, **kw):
        lp, ent = fn(model, batch, embeds, **kw)
        if torch.is_grad_enabled():  # the update's passes
            for ids, m, v in zip(
                batch.input_ids,
                batch.loss_mask,
                gather_rows(lp.detach(), batch.loss_mask),
                strict=True,
            ):
                seen["update_logprobs"][tuple(ids[m.sum().neg().int() :].tolist())] = v.cpu()
        return lp, ent

    trainer.logprob_fn = scoring
    return seen


def single_step(cfg: GRPOConfig, model_dir, data_dir, out) -> dict:
    from training.grpo.trainer import GRPOTrainer

    trainer = GRPOTrainer(cfg, model_dir, data_dir, out)
    seen = instrument(trainer, trainer)
    metrics = trainer.train_step(1)
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    grads = {
        n: p.grad.detach().clone()
        for n, p in trainer.model.named_parameters()
        if p.grad is not None
    }
    return {**seen, "metrics": metrics, "weights": weights, "grads": grads}


def resident_parameters(trainer) -> int:
    """Parameter elements this rank holds: its FSDP shards of policy and reference, plus the
    unsharded replica when there is one."""
    from torch.distributed.tensor import DTensor

    def local(module) -> int:
        return sum(
            p.to_local().numel() if isinstance(p, DTensor) else p.numel()
            for p in module.parameters()
        )

    return sum(local(m) for m in (trainer.model, trainer.ref, trainer.replica) if m is not None)


def parallel_step(
    rank: int,
    world: int,
    cfg: GRPOConfig,
    parallel,
    model_dir,
    data_dir,
    out,
    seed_per_prompt: bool = True,
) -> dict:
    from tests.fixtures.sequence_parallel import param_grads
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer
    from training.sequence_parallel.mesh import full_state_dict

    trainer = ParallelGRPOTrainer(cfg, model_dir, data_dir, out, parallel)
    seen = instrument(trainer, trainer.engine, seed_per_prompt)
    resident = resident_parameters(trainer)
    metrics = trainer.train_step(1)
    # FSDP averages gradients over the world: the single-process gradient
    grads = {k: v for k, v in param_grads(trainer.model.model).items() if v.abs().sum() > 0}
    return {
        **seen,
        "metrics": metrics,
        "weights": full_state_dict(trainer.model),
        "grads": grads,
        "resident": resident,
        "vision_calls": trainer.embedder.calls,
        "dummy_grad_encodes": trainer.embedder.dummy_grad_encodes,
        "lockstep": dict(getattr(trainer.engine.engine, "stats", {})),  # the sharded hf engine's
    }


def compare(ref: dict, ranks: list[dict], tol: float = 1e-5) -> dict:
    """Asserts; returns the largest differences found."""
    got_rollouts, got_lps = {}, {}
    for r in ranks:
        got_rollouts.update(r["rollouts"])
        got_lps.update(r["update_logprobs"])
    assert got_rollouts.keys() == ref["rollouts"].keys()
    worst = {"rollout": 0.0, "update_logprobs": 0.0, "weights": 0.0}
    for k, (toks, lps) in ref["rollouts"].items():
        assert got_rollouts[k][0] == toks, k
        worst["rollout"] = max(worst["rollout"], float((got_rollouts[k][1] - lps).abs().max()))
    assert got_lps.keys() == ref["update_logprobs"].keys()
    for k, v in ref["update_logprobs"].items():
        worst["update_logprobs"] = max(
            worst["update_logprobs"], float((got_lps[k] - v).abs().max())
        )
    m0 = ref["metrics"]
    # (not actor/entropy: a token-weighted mean per replica, averaged over replicas unweighted)
    for key in (
        "actor/pg_loss",
        "actor/kl_loss",
        "actor/grad_norm",
        "reward/total",
    ):
        for r in ranks:
            assert abs(r["metrics"][key] - m0[key]) <= tol, (key, r["metrics"][key], m0[key])
    worst["grads"] = 0.0
    for r in ranks:
        assert r["weights"].keys() == ref["weights"].keys()
        for k, v in ref["weights"].items():
            worst["weights"] = max(worst["weights"], float((r["weights"][k] - v).abs().max()))
        for k, g in ref["grads"].items():
            worst["grads"] = max(
                worst["grads"], float((r["grads"].get(k, torch.zeros_like(g)) - g).abs().max())
            )
    assert m0["actor/grad_norm"] > 0 and m0["advantage/abs_mean"] > 0, m0  # a real update
    assert max(worst.values()) <= tol, worst
    return worst


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    """A tiny Qwen3 text LM (3 query heads, 1 KV head: SP=2 divides neither) and word problems."""
    from data_gen.synth_text import TextSynthConfig, generate_text
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    root = tmp_path_factory.mktemp("text_grpo")
    model = write_tiny_model_folder(
        root / "m", TinyModelSpec(arch="qwen3", hidden_size=48, num_heads=3, num_kv_heads=1, seed=3)
    )
    generate_text(TextSynthConfig(problems=16, seed=1), root / "data")
    return model, root / "data"


@pytest.mark.parametrize("sp, extra", [(1, []), (2, []), (1, ["algorithm.ppo_epochs=2"])])
def test_text_lm_grpo_step_on_two_ranks_equals_one_process(text_task, tmp_path, sp, extra):
    """Issue 13: dp2 (sp=1) and sp2 GRPO on a text-only Qwen3 (no vision tower, no video cache).
    Two PPO epochs add the no-grad old-policy pass before the update: FSDP2 leaves the root
    unsharded after it, and the update's gradient-norm clipping then missed the root's gradients
    (grad norm 0.31 for 0.72) until the trainer resharded after every no-grad pass."""
    from training.sequence_parallel.mesh import ParallelConfig

    model, data = text_task
    cfg = load_config(GRPOConfig, None, [*BASE, *extra], values=REWARD)
    ref = single_step(cfg, model, data, tmp_path / "one")
    ranks = run_local_group(
        parallel_step, 2, cfg, ParallelConfig(sp_size=sp), model, data, tmp_path / "two"
    )
    compare(ref, ranks)
    assert all(r["metrics"]["vision/calls"] == 0 for r in ranks)
    # the weights really moved, so equal weights are not equal initial weights
    from training.model_io import load_model

    init = load_model(model).state_dict()
    assert max(float((ref["weights"][k] - v).abs().max()) for k, v in init.items()) > 1e-4
