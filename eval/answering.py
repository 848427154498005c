"""The generation loop of `longrl eval`: one batch of questions through the engine (decode video
-> prompt -> generate -> extraction filters -> score), each question's prediction record, and
the errors recorded per question. Split from eval.runner, which re-exports these names."""

from __future__ import annotations

import time
from typing import Any

from common.answers import numbers_match
from common.short_answers import exact_open, short_answer_matches
from eval.config import EvalConfig
from eval.engines import Engine, Generation, Prompt
from eval.engines.openai_engine import EndpointUnavailable
from eval.filters import FilterContext, apply_chain
from eval.task import EvalItem, TaskError, TaskSpec, grade_answer, subtitle_text, system_for


def score(task: TaskSpec, item: EvalItem, gen: Generation, cfg: EvalConfig) -> dict[str, Any]:
    ext = apply_chain(task.filter_chain(item.answer_type), gen.text, FilterContext(item.options))
    rec: dict[str, Any] = {
        "raw_output": gen.text,
        "extracted": ext.answer,
        "extraction_rule": ext.rule,
        "output_tokens": gen.num_tokens,
        "finished": gen.finished,
    }
    if not ext.answered:
        rec.update(status="unanswered", correct=False)
    elif task.grader:  # the task's own exact grader (GSM8K, MATH: eval.filters.GRADERS)
        rec.update(
            status="answered",
            correct=grade_answer(task, ext.answer, item),
            grader="exact",
            grade_rule=task.grader,
        )
    elif item.answer_type == "multiple_choice":
        rec.update(status="answered", correct=ext.answer == item.answer)
    elif item.answer_type == "numeric":
        rec.update(
            status="answered",
            correct=numbers_match(ext.answer, item.answer, rel_tol=cfg.numeric_rel_tol),
        )
    elif exact_open(str(item.meta.get("source", ""))):  # a ground-truth name: graded exactly
        rec.update(
            status="answered", correct=short_answer_matches(ext.answer, item.answer), grader="exact"
        )
    else:  # open-ended: the judge decides after generation
        rec.update(status="answered", correct=None, judge=None)
    return rec


def base_record(task: TaskSpec, item: EvalItem) -> dict[str, Any]:
    return {
        "qid": item.qid,
        "benchmark": task.name,
        "video": item.video_path,
        "answer_type": item.answer_type,
        "answer": item.answer,
        "options": item.options,
        "breakdown": item.breakdown,
        "cluster": item.cluster,
        "group": item.group,
    }


def error_record(task: TaskSpec, item: EvalItem, error: str) -> dict[str, Any]:
    return {
        **base_record(task, item),
        "status": "error",
        "correct": None,
        "error": error,
        "prompt": None,
        "raw_output": None,
        "extracted": None,
    }


def answer_batch(
    engine: Engine,
    task: TaskSpec,
    batch: list[EvalItem],
    cfg: EvalConfig,
    style: str,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Predictions for one batch: video errors are recorded per question; a generation failure
    is retried question by question so one bad item cannot take its batch down."""
    from data_gen.video_io import VideoError

    records, prepared = [], []
    show_subs = bool(cfg.subtitles and task.supports_subtitles)
    for item in batch:
        try:
            if show_subs:  # read here, not at load: a malformed file fails only its questions
                item.subtitle_lines()
            prepared.append(engine.prepare(item))
        except TaskError as exc:
            records.append(error_record(task, item, f"subtitles: {exc}"))
        except (VideoError, OSError) as exc:
            records.append(error_record(task, item, f"video: {exc}"))
    system = _system_prompt(style)
    subs = [
        subtitle_text(p.item.subtitle_lines(), p.timestamps_s) if show_subs else None
        for p in prepared
    ]
    prompts = [
        Prompt(
            task.render_prompt(p.item, sub[0] if sub else None, style), system_for(system, p.item)
        )
        for p, sub in zip(prepared, subs, strict=True)
    ]
    groups: list[list[int]] = [list(range(len(prepared)))] if prepared else []
    while groups:
        idx = groups.pop(0)
        t0 = time.perf_counter()
        try:
            gens = engine.generate(
                [prepared[i] for i in idx],
                [prompts[i] for i in idx],
                max_new_tokens,
                cfg.temperature,
                **generation_options(cfg),
            )
        except EndpointUnavailable:
            raise  # the server is down: stop, keep what is written, resume later
        except Exception as exc:  # noqa: BLE001 - recorded per question below, never swallowed silently
            if len(idx) > 1:
                groups = [[i] for i in idx] + groups
                continue
            p = prepared[idx[0]]
            records.append(error_record(task, p.item, f"generation: {type(exc).__name__}: {exc}"))
            continue
        share = (time.perf_counter() - t0) / len(idx)
        for i, gen in zip(idx, gens, strict=True):
            p = prepared[i]
            if gen.error:  # this question's request failed for good (openai engine)
                rec = error_record(task, p.item, f"generation: {gen.error}")
                records.append(
                    {**rec, "prompt": prompts[i].user, **({"retry": True} if gen.retryable else {})}
                )
                continue
            records.append(
                {
                    **base_record(task, p.item),
                    "prompt": prompts[i].user,
                    "system": prompts[i].system,
                    **score(task, p.item, gen, cfg),
                    "latency_s": round(p.decode_s + share, 4),
                    "decode_s": round(p.decode_s, 4),
                    "batch_size": len(idx),
                    "num_frames": len(p.timestamps_s),
                    "num_video_tokens": p.num_video_tokens,
                    **({"subtitles": subs[i][1]} if subs[i] else {}),
                }
            )
    return records


def generation_options(cfg: EvalConfig) -> dict[str, Any]:
    """Decoding options beyond temperature, passed only when set (engines default to off)."""
    opts: dict[str, Any] = {}
    if cfg.top_p != 1.0:
        opts["top_p"] = cfg.top_p
    if cfg.num_beams != 1:
        opts["num_beams"] = cfg.num_beams
    return opts


def _system_prompt(style: str) -> str | None:
    if style != "reasoning":
        return None
    from training.prompts import SYSTEM_PROMPT

    return SYSTEM_PROMPT
