"""Rewards: plain functions over (completion, example) returning a score and named parts.

A reward function is either
- per item: `fn(completion: str, example: QARecord) -> float | RewardOutput`, or
- batched (decorated with `@batched_reward`): `fn(completions, examples, ctx) -> list[...]`,
  for rewards that want the whole step at once (the LLM judge).

Functions are found by registered name ("format", "accuracy", ...) or by import path
("pkg.module:fn"); `RewardConfig.plugins` lists modules to import first so their
`@register_reward("name")` decorators run. `RewardScorer` combines them with weights (default
0.9 accuracy + 0.1 format, as the reference). A function that raises on an item gives that item
`error_score` for that part and a recorded error naming the item - the step goes on.

Answers are read by `common.answers`, the reader the evaluation's filters use too: the reward is
strict about *where* the answer is (the last complete <answer> span after the reasoning; the
format is a separate reward) and reads it exactly as the evaluation does, so the policy is never
rewarded for an answer the evaluation grades wrong, nor the reverse
(tests/test_answer_consistency.py).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.answers import (
    NUMERIC_ABS_TOL,
    NUMERIC_REL_TOL,
    Parsed,
    extract_answer,
    normalize_space,
    numbers_match,
    parse_number,
    read_choice,
    strip_markdown,
)
from common.short_answers import exact_open, name_tokens, short_answer_matches
from data_gen.schema import QARecord
from training.grpo.judge import JudgeConfig, JudgeItem, LLMJudge


@dataclass
class RewardOutput:
    """One reward function's result for one completion."""

    score: float
    parts: dict[str, float] = field(default_factory=dict)  # sub-scores, e.g. answer_found
    info: dict[str, str] = field(default_factory=dict)  # e.g. the parsed answer, a reason
    error: str | None = None  # a failure that produced `score` without a real grade


@dataclass
class RewardResult:
    """The combined reward of one completion: total, each part, and what went wrong."""

    total: float
    parts: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class RewardConfig:
    """Reward functions and weights; every weighted function's score is logged as a part."""

    # registered name or "pkg.module:fn" -> weight; the total is the weighted sum
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 0.9, "format": 0.1})
    plugins: list[str] = field(default_factory=list)  # modules imported first (they register)
    # numeric answers: |pred - gold| <= max(abs_tol, rel_tol * |gold|); the defaults are the
    # evaluation's (common.answers), so reward and evaluation agree on what is close enough
    numeric_rel_tol: float = NUMERIC_REL_TOL
    numeric_abs_tol: float = NUMERIC_ABS_TOL  # numeric answers within this of the truth count as right
    error_score: float = 0.0  # score of a reward part whose function failed on an item
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class RewardContext:
    cfg: RewardConfig
    judge: LLMJudge


RewardFn = Callable[..., Any]
_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = fn
        return fn

    return deco


def batched_reward(fn: RewardFn) -> RewardFn:
    """Mark `fn(completions, examples, ctx) -> list` as scoring a whole step at once."""
    fn._longrl_batched = True  # type: ignore[attr-defined]
    return fn


def registered_rewards() -> list[str]:
    return sorted(_REGISTRY)


def resolve_reward(name: str) -> RewardFn:
    """A registered name or an import path "pkg.module:fn"; unknown names are errors."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward {name!r}: cannot import ({exc})") from exc
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(f"unknown reward {name!r}; registered: {', '.join(registered_rewards())}; "
                     "or give an import path 'pkg.module:fn'")


def _as_output(value: Any, who: str) -> RewardOutput:
    if isinstance(value, RewardOutput):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return RewardOutput(float(value))
    raise TypeError(f"reward {who} returned {type(value).__name__}; expected float or RewardOutput")


# --------------------------------------------------------------------------------------------
# Built-in rewards
# --------------------------------------------------------------------------------------------
FORMAT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@register_reward("format")
def format_reward(completion: str, example: QARecord | None = None) -> RewardOutput:
    """1 for exactly `<think>...</think>\\s*<answer>...</answer>` (whitespace around allowed),
    each tag once, both spans non-blank; else 0 with the reason."""
    text = completion or ""
    m = FORMAT_RE.fullmatch(text)
    if not m:
        return RewardOutput(0.0, info={"format": "empty" if not text.strip() else "no match"})
    if any(text.count(tag) != 1 for tag in _TAGS):
        return RewardOutput(0.0, info={"format": "repeated tag"})
    if not m.group(1).strip() or not m.group(2).strip():
        return RewardOutput(0.0, info={"format": "empty think or answer"})
    return RewardOutput(1.0)


def answer_text(completion: str) -> str | None:
    """The completion's last complete <answer> span after the reasoning, without markdown
    emphasis (the text the evaluation's multiple-choice and number filters read); None if none."""
    span = extract_answer(completion)
    return None if span is None else strip_markdown(span)


def _no_span(text: str | None) -> Parsed | None:
    return Parsed(None, "no_answer", "no <answer> span") if text is None else None


@register_reward("multiple_choice")
def multiple_choice_reward(completion: str, example: QARecord) -> RewardOutput:
    text = answer_text(completion)
    parsed = _no_span(text) or read_choice(text, list(example.options))
    return RewardOutput(float(parsed.value == example.answer),
                        parts={"answer_parsed": float(parsed.ok)},
                        info={"parsed": str(parsed.value), "parse": parsed.reason})


def grade_numeric(completion: str, example: QARecord, rel_tol: float = NUMERIC_REL_TOL,
                  abs_tol: float = NUMERIC_ABS_TOL) -> RewardOutput:
    text = answer_text(completion)
    parsed = _no_span(text) or parse_number(text)
    gold = float(example.answer)
    ok = parsed.ok and numbers_match(parsed.value, gold, rel_tol, abs_tol)  # type: ignore[arg-type]
    return RewardOutput(float(ok), parts={"answer_parsed": float(parsed.ok)},
                        info={"parsed": str(parsed.value), "parse": parsed.reason})


@register_reward("numeric")
def numeric_reward(completion: str, example: QARecord) -> RewardOutput:
    return grade_numeric(completion, example)


@register_reward("short_answer")
def short_answer_reward(completion: str, example: QARecord) -> RewardOutput:
    """A closed-vocabulary name (colour, shape, region) compared exactly, no judge."""
    text = answer_text(completion)
    if text is None:
        return RewardOutput(0.0, parts={"answer_parsed": 0.0}, info={"parse": "no answer"})
    ok = short_answer_matches(text, example.answer)
    return RewardOutput(float(ok), parts={"answer_parsed": float(bool(name_tokens(text)))},
                        info={"parsed": normalize_space(text), "parse": "exact name"})


@register_reward("judge")
@batched_reward
def judge_reward(completions: Sequence[str], examples: Sequence[QARecord],
                 ctx: RewardContext) -> list[RewardOutput]:
    """Open-ended answers judged by the LLM judge, the whole step in one concurrent batch.
    No <answer> span: 0 without asking (recorded as answer_parsed 0, not an error)."""
    outputs: list[RewardOutput | None] = [None] * len(completions)
    asks: list[tuple[int, JudgeItem]] = []
    for i, (c, ex) in enumerate(zip(completions, examples, strict=True)):
        span = extract_answer(c)
        ans = normalize_space(span) if span is not None else None  # as the evaluation sends it
        if not ans:
            outputs[i] = RewardOutput(0.0, parts={"answer_parsed": 0.0},
                                      info={"parse": "no answer" if ans is None else "empty answer"})
        else:
            asks.append((i, JudgeItem(ex.question, ex.answer_text(), ans)))
    verdicts = ctx.judge.judge([it for _, it in asks])
    for (i, _), v in zip(asks, verdicts, strict=True):
        if v.correct is None:
            outputs[i] = RewardOutput(ctx.cfg.judge.error_score,
                                      parts={"answer_parsed": 1.0, "judge_error": 1.0},
                                      info={"judge": "error"}, error=v.error)
        else:
            outputs[i] = RewardOutput(float(v.correct), parts={"answer_parsed": 1.0,
                                                               "judge_error": 0.0},
                                      info={"judge": "cached" if v.cached else "called"})
    return outputs  # type: ignore[return-value]


@register_reward("accuracy")
@batched_reward
def accuracy_reward(completions: Sequence[str], examples: Sequence[QARecord],
                    ctx: RewardContext) -> list[RewardOutput]:
    """By answer type: multiple choice -> option letter, numeric -> tolerant number match,
    open-ended -> LLM judge (all open-ended items of the step in one batch), except the names of
    ground-truth records (common.short_answers), graded exactly as the evaluation does."""
    out: list[RewardOutput | None] = [None] * len(completions)
    open_idx = []
    for i, (c, ex) in enumerate(zip(completions, examples, strict=True)):
        if ex.answer_type == "multiple_choice":
            out[i] = multiple_choice_reward(c, ex)
        elif ex.answer_type == "numeric":
            out[i] = grade_numeric(c, ex, ctx.cfg.numeric_rel_tol, ctx.cfg.numeric_abs_tol)
        elif ex.answer_type == "open_ended" and exact_open(ex.source):
            out[i] = short_answer_reward(c, ex)
        elif ex.answer_type == "open_ended":
            open_idx.append(i)
        else:
            raise ValueError(f"record {ex.id}: unknown answer_type {ex.answer_type!r}")
    judged = judge_reward([completions[i] for i in open_idx], [examples[i] for i in open_idx], ctx)
    for i, r in zip(open_idx, judged, strict=True):
        out[i] = r
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Combination
# --------------------------------------------------------------------------------------------
class RewardScorer:
    """Scores a whole step: every weighted reward function over all completions, combined."""

    def __init__(self, cfg: RewardConfig | None = None) -> None:
        self.cfg = cfg or RewardConfig()
        for module in self.cfg.plugins:
            importlib.import_module(module)
        if not self.cfg.weights:
            raise ValueError("reward.weights is empty: nothing to score")
        self.fns = {name: resolve_reward(name) for name in self.cfg.weights}
        self.ctx = RewardContext(self.cfg, LLMJudge(self.cfg.judge))

    @staticmethod
    def part_name(name: str) -> str:
        return name.rpartition(":")[2] if ":" in name else name

    def score(self, completions: Sequence[str], examples: Sequence[QARecord]) -> list[RewardResult]:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        results = [RewardResult(0.0, {}) for _ in completions]
        for name, fn in self.fns.items():
            part, weight = self.part_name(name), self.cfg.weights[name]
            for res, out in zip(results, self._run(name, fn, completions, examples), strict=True):
                res.total += weight * out.score
                res.parts[part] = out.score
                res.parts.update({f"{part}/{k}": v for k, v in out.parts.items()})
                res.info.update({f"{part}/{k}": v for k, v in out.info.items()})
                if out.error:
                    res.errors.append(f"{part}: {out.error}")
        return results

    def _run(self, name: str, fn: RewardFn, completions: Sequence[str],
             examples: Sequence[QARecord]) -> list[RewardOutput]:
        if getattr(fn, "_longrl_batched", False):
            try:
                outs = [_as_output(o, name) for o in fn(completions, examples, self.ctx)]
                if len(outs) != len(completions):
                    raise ValueError(f"returned {len(outs)} results for {len(completions)} items")
                return outs
            except Exception as exc:  # fall back to item by item to find the bad one
                first = f"{type(exc).__name__}: {exc}"
                return [self._one_batched(name, fn, c, ex, first)
                        for c, ex in zip(completions, examples, strict=True)]
        return [self._guard(name, lambda c=c, ex=ex: fn(c, ex), ex)
                for c, ex in zip(completions, examples, strict=True)]

    def _one_batched(self, name: str, fn: RewardFn, c: str, ex: QARecord, batch_error: str
                     ) -> RewardOutput:
        out = self._guard(name, lambda: fn([c], [ex], self.ctx)[0], ex)
        if out.error is None:
            return out
        return RewardOutput(out.score, out.parts, out.info, f"{out.error} (batch: {batch_error})")

    def _guard(self, name: str, call: Callable[[], Any], ex: QARecord) -> RewardOutput:
        try:
            return _as_output(call(), name)
        except Exception as exc:
            return RewardOutput(self.cfg.error_score, parts={"error": 1.0},
                                error=f"reward {name!r} failed on record {ex.id}: "
                                      f"{type(exc).__name__}: {exc}")
