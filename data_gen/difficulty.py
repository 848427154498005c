"""Difficulty filter and near-duplicate removal.

A model answers each question k times; questions it always gets right (too easy) or always
gets wrong (too hard, or wrong) are dropped, and the pass rate is kept as a column. Who answers
is an `Answerer`:

- EndpointAnswerer: any OpenAI-compatible endpoint, shown frames of the question's span.
- a local model folder: data_gen never imports training, so the CLI (pipelines/cli_data.py)
  plugs in an answerer built on training's generation code; anything with `identity` and
  `answer()` fits.
- NoisyOracleAnswerer: NOT a model. It knows the answer and is right with a seeded,
  per-question probability. It exists to exercise the filter's mechanics in tests and offline
  demos; the pass rates it produces say nothing about how hard a question is.

Verdicts are cached per (question, answer, answerer identity, k): a resumed run asks nothing
twice. Near-duplicates (same video, same answer, normalised question + options text at
least `threshold` similar) are removed before the filter, keeping the first. The answer must
match because short questions differing in one word ("... turned red?" / "... turned blue?")
are different questions.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
from typing import Protocol, runtime_checkable

from data_gen.grading import is_correct, normalise
from data_gen.llm_client import ChatEndpoint
from data_gen.prompt_templates import PromptTemplate
from data_gen.schema import OPTION_LETTERS, QARecord
from data_gen.sources import Reject

ANSWER_INSTRUCTIONS = {
    "multiple_choice": "Answer with the option's letter.",
    "numeric": "Answer with a number.",
    "open_ended": "Answer with a short phrase.",
}


@runtime_checkable
class Answerer(Protocol):
    identity: str  # model + settings; part of the verdict cache key

    async def answer(self, record: QARecord, attempts: int) -> list[str]:
        """`attempts` independent replies to the record's question (video included)."""
        ...


def question_block(record: QARecord) -> str:
    lines = [record.question]
    if record.options:
        lines += ["Options:"] + [f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(record.options)]
    lines.append(ANSWER_INSTRUCTIONS[record.answer_type])
    return "\n".join(lines)


def attempt_seed(record_id: str, attempt: int) -> int:
    return int(hashlib.sha256(f"{record_id}:{attempt}".encode()).hexdigest()[:8], 16)


class EndpointAnswerer:
    def __init__(self, ep: ChatEndpoint, prompt: PromptTemplate, num_frames: int, max_pixels: int,
                 quality: int, temperature: float, max_tokens: int, decode: asyncio.Semaphore):
        self.ep, self.prompt = ep, prompt
        self.num_frames, self.max_pixels, self.quality = num_frames, max_pixels, quality
        self.temperature, self.max_tokens, self.decode = temperature, max_tokens, decode
        self.identity = f"endpoint:{ep.model}:t={temperature}:frames={num_frames}:{prompt.version}"
        self._images: dict[tuple, asyncio.Task] = {}  # questions about one span share frames

    async def _frames(self, record: QARecord) -> list[str]:
        from data_gen.sources import VideoItem, span_images
        from data_gen.video_io import probe_video

        key = (record.video_path, record.clip_start_s, record.clip_end_s)
        if key not in self._images:
            async def load() -> list[str]:
                async with self.decode:
                    info = await asyncio.to_thread(probe_video, record.video_path)
                    item = VideoItem(record.video_id, record.video_path, record.video_digest, info)
                    end = record.clip_end_s if record.clip_end_s > record.clip_start_s else None  # 0: whole video
                    return await asyncio.to_thread(span_images, item, record.clip_start_s, end,
                                                   self.num_frames, self.max_pixels, self.quality)
            self._images[key] = asyncio.ensure_future(load())
        return await self._images[key]

    async def answer(self, record: QARecord, attempts: int) -> list[str]:
        images = await self._frames(record)
        end = record.clip_end_s if record.clip_end_s > record.clip_start_s else record.duration_s
        msgs = self.prompt.messages(start=record.clip_start_s, end=end, question_block=question_block(record))
        msgs[1]["content"] = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [
            {"type": "text", "text": msgs[1]["content"]}]
        return list(await asyncio.gather(*[
            self.ep.chat(msgs, temperature=self.temperature, max_tokens=self.max_tokens,
                         seed=attempt_seed(record.id, i)) for i in range(attempts)]))


class NoisyOracleAnswerer:
    """A simulated answerer (see the module docstring): right with probability p per question,
    p drawn from {0, .25, .5, .75, 1} by a hash of (seed, question id)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.identity = f"noisy-oracle:seed={seed}"

    def _u(self, *parts: object) -> float:
        h = hashlib.sha256(":".join(map(str, (self.seed, *parts))).encode()).hexdigest()
        return int(h[:12], 16) / 16**12

    async def answer(self, record: QARecord, attempts: int) -> list[str]:
        p = int(self._u(record.id) * 5) / 4
        out = []
        for i in range(attempts):
            if self._u(record.id, i) < p:
                out.append(f"<answer>{record.answer}</answer>")
            elif record.answer_type == "multiple_choice":
                wrong = [c for c in record.option_letters() if c != record.answer]
                out.append(f"<answer>{wrong[i % len(wrong)]}</answer>")
            elif record.answer_type == "numeric":
                out.append(f"<answer>{float(record.answer) + 1 + i % 3:g}</answer>")
            else:
                out.append("<answer>I cannot tell</answer>")
        return out


def verdict_key(record: QARecord, answerer: Answerer, k: int) -> dict:
    return {"record": record.id, "question": record.question, "options": record.options,
            "answer": record.answer, "answer_type": record.answer_type, "video": record.video_digest,
            "span": [record.clip_start_s, record.clip_end_s], "answerer": answerer.identity, "k": k}


async def judge(record: QARecord, answerer: Answerer, k: int) -> dict:
    replies = await answerer.answer(record, k)
    if len(replies) != k:
        raise ValueError(f"answerer returned {len(replies)} replies, expected {k}")
    correct = [is_correct(record, r) for r in replies]
    return {"correct": correct, "pass_rate": sum(correct) / k, "replies": [r[-500:] for r in replies]}


def apply_verdicts(records: list[QARecord], verdicts: dict[str, dict], drop_right: bool,
                   drop_wrong: bool) -> tuple[list[QARecord], list[Reject]]:
    """Set pass_rate from the verdicts; drop always-right / always-wrong questions."""
    kept, rejects = [], []
    for rec in records:
        v = verdicts[rec.id]
        rec.pass_rate = float(v["pass_rate"])
        n, k = sum(v["correct"]), len(v["correct"])
        if drop_right and n == k:
            rejects.append(Reject("filter", rec.id, f"always right ({n}/{k}): too easy", rec.video_id,
                                  rec.category, "question"))
        elif drop_wrong and n == 0:
            rejects.append(Reject("filter", rec.id, f"always wrong (0/{k}): too hard or wrong",
                                  rec.video_id, rec.category, "question"))
        else:
            kept.append(rec)
    return kept, rejects


def dedup_text(rec: QARecord) -> str:
    return normalise(rec.question + " | " + " | ".join(rec.options))


def near_duplicates(records: list[QARecord], threshold: float) -> tuple[list[QARecord], list[Reject]]:
    """Drop a question when an earlier kept one about the same video, with the same answer, is
    `threshold` similar."""
    kept: list[QARecord] = []
    by_video: dict[str, list[tuple[str, QARecord]]] = {}
    rejects = []
    for rec in records:
        text = dedup_text(rec)
        prior = by_video.setdefault(rec.video_id, [])
        dup = None
        for other_text, other in prior:
            if normalise(other.answer_text()) != normalise(rec.answer_text()):
                continue  # different answers: a different question, however alike the words
            m = difflib.SequenceMatcher(None, text, other_text, autojunk=False)
            if m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold:
                dup = (other, m.ratio())
                break
        if dup:
            rejects.append(Reject("dedup", rec.id, f"near-duplicate of {dup[0].id} (similarity {dup[1]:.2f})",
                                  rec.video_id, rec.category, "question"))
        else:
            prior.append((text, rec))
            kept.append(rec)
    return kept, rejects
