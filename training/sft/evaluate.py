"""Evaluation during SFT: response-token loss on held-out examples, and greedy answers checked
for the `<think>...</think><answer>...</answer>` format (the same check as the GRPO format
reward) and, for multiple-choice and numeric questions, for accuracy.

Loss is computed on every worker over an equal share of the examples (FSDP ranks must run the
same number of forward passes). Greedy decoding runs with one worker only: sharded decoding
would need every rank to decode in lock step; the evaluation stage measures the final model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from data_gen.schema import QARecord
from training.distributed import DistContext, all_reduce_sum
from training.generation import generate
from training.grpo.rewards import format_reward, grade_numeric, multiple_choice_reward
from training.models.qwen3_vl import video_groups
from training.prompts import encode_example
from training.sft.data import LoadedExample
from training.sft.step import autocast_context, make_batch, nll_sum

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class EvalSet:
    records: list[QARecord]  # by scan index
    examples: list[LoadedExample]  # decoded eval examples (small: eval_max_examples)


def eval_loss(runner, examples: list[LoadedExample], pad_id: int, micro_batch_size: int,
              chunk_size: int, bf16: bool, ctx: DistContext) -> float:
    """Mean response-token NLL over the examples (each worker takes an equal share)."""
    per_rank = len(examples) // ctx.world_size
    mine = examples[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
    nll = tokens = 0.0
    for i in range(0, len(mine), micro_batch_size):
        batch = make_batch(mine[i:i + micro_batch_size], pad_id, ctx.device)
        nll += nll_sum(runner, batch, chunk_size, bf16)
        tokens += float(batch.loss_mask[:, 1:].sum())
    nll, tokens = all_reduce_sum([nll, tokens], ctx)
    return nll / tokens if tokens else float("nan")


@torch.no_grad()
def greedy_answers(model, tokenizer, eval_set: EvalSet, n: int, max_new_tokens: int,
                   system_prompt: str, device: torch.device, bf16: bool) -> list[str]:
    """Greedy completions of the first `n` eval examples (one worker, unsharded model)."""
    stop = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    texts = []
    for ex in eval_set.examples[:n]:
        rec = eval_set.records[ex.entry.index]
        prompt = encode_example(tokenizer, rec, ex.video.num_tokens, system_prompt=system_prompt,
                                video_groups=video_groups(ex.video))
        batch = make_batch([LoadedExample(ex.entry, prompt, ex.video)], tokenizer.pad_token_id, device)
        with autocast_context(device, bf16):
            out = generate(model, batch, stop, tokenizer.pad_token_id, max_new_tokens=max_new_tokens, greedy=True)
        texts.append(tokenizer.decode(out.token_ids[0], skip_special_tokens=True))
    return texts


def score_answers(texts: list[str], records: list[QARecord]) -> tuple[dict[str, float], list[dict]]:
    """format_rate over all answers; accuracy over multiple-choice and numeric questions (an
    open-ended answer needs the LLM judge of the evaluation stage). Also one row per answer."""
    rows = []
    for t, r in zip(texts, records, strict=True):
        correct = None
        if r.answer_type == "multiple_choice":
            correct = multiple_choice_reward(t, r).score
        elif r.answer_type == "numeric":
            correct = grade_numeric(t, r).score
        rows.append({"id": r.id, "answer_type": r.answer_type, "answer": r.answer, "completion": t,
                     "format": format_reward(t).score, "correct": correct})
    fmt = [row["format"] for row in rows]
    acc = [row["correct"] for row in rows if row["correct"] is not None]
    out = {"eval/format_rate": sum(fmt) / len(fmt) if fmt else float("nan")}
    if acc:
        out["eval/accuracy"] = sum(acc) / len(acc)
    return out, rows


def evaluate(runner, tokenizer, eval_set: EvalSet, cfg, ctx: DistContext, bf16: bool,
             samples_path: Path | None = None) -> dict[str, float]:
    """eval/loss (all workers) and, with one worker, eval/format_rate and eval/accuracy; the
    greedy answers go to `samples_path` (JSONL) when given."""
    model = runner.model
    was_training = model.training
    model.eval()
    try:
        out = {"eval/loss": eval_loss(runner, eval_set.examples, tokenizer.pad_token_id,
                                      cfg.micro_batch_size, cfg.logprob_chunk, bf16, ctx)}
        n = min(cfg.eval_generate, len(eval_set.examples))
        if n and not ctx.distributed:
            texts = greedy_answers(model, tokenizer, eval_set, n, cfg.max_new_tokens, cfg.system_prompt,
                                   ctx.device, bf16)
            recs = [eval_set.records[ex.entry.index] for ex in eval_set.examples[:n]]
            scores, rows = score_answers(texts, recs)
            out.update(scores)
            if samples_path is not None:
                samples_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    finally:
        model.train(was_training)
    return out
