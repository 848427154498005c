"""Annotators: clip captions and question-answer sets for one video.

- "llm": a video VLM captions each clip from its frames (base64 JPEGs in one chat message with
  the clip's time span); a reasoning LLM writes QA with chains of thought from all timestamped
  captions. Its reply is parsed and validated by data_gen.qa_format; a bad reply is sent back
  with the errors (up to `max_qa_attempts`), then what is still wrong is rejected with reasons.
  An optional pass rewrites each reasoning to read as if watching the video.
- "groundtruth": captions and QA come from a `longrl synth` event log (no model), and the QA
  reply goes through the very same parser and validation.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from data_gen.llm_client import ChatEndpoint
from data_gen.prompt_templates import PromptTemplate
from data_gen.qa_format import ReplyError, VideoRef, parse_qa_reply
from data_gen.sources import VideoItem, span_images
from data_gen.synth import questions_from_log

QA_FIX_REQUEST = ("Your reply has these problems:\n{problems}\n"
                  "Reply again with the complete corrected JSON only.")


def video_ref(item: VideoItem) -> VideoRef:
    return VideoRef(item.video_id, item.path, item.digest, item.duration_s)


def format_captions(captions: list[dict[str, Any]]) -> str:
    return "\n".join(f"[{c['start']:.1f}-{c['end']:.1f} s] {c['text']}" for c in captions)


async def caption_clip(ep: ChatEndpoint, prompt: PromptTemplate, item: VideoItem, span: tuple[float, float],
                       num_frames: int, max_pixels: int, quality: int, decode: asyncio.Semaphore,
                       temperature: float, max_tokens: int) -> str:
    """Decode one clip (its own file open + seek) and caption it."""
    async with decode:  # decoding is CPU work: a few threads, not one per request
        images = await asyncio.to_thread(span_images, item, span[0], span[1], num_frames, max_pixels, quality)
    return await caption_images(ep, prompt, item, span, images, temperature, max_tokens)


async def caption_images(ep: ChatEndpoint, prompt: PromptTemplate, item: VideoItem, span: tuple[float, float],
                         images: list[str], temperature: float, max_tokens: int) -> str:
    """Caption one clip from its already encoded frames (JPEG data URLs)."""
    msgs = prompt.messages(num_frames=len(images), start=span[0], end=span[1], duration=item.duration_s)
    msgs[1]["content"] = [{"type": "text", "text": msgs[1]["content"]}] + [
        {"type": "image_url", "image_url": {"url": url}} for url in images]
    text = (await ep.chat(msgs, temperature=temperature, max_tokens=max_tokens)).strip()
    if not text:
        raise ValueError("the captioner returned an empty caption")
    return text


async def generate_qa(ep: ChatEndpoint, prompt: PromptTemplate, item: VideoItem, captions: list[dict],
                      categories: list[str], per_category: int, attempts: int, temperature: float,
                      max_tokens: int, generator: str) -> dict[str, Any]:
    """One video's QA unit: {"records": [...], "rejected": [reasons], "attempts": n}."""
    msgs = prompt.messages(duration=item.duration_s, captions=format_captions(captions),
                           per_category=per_category, categories=", ".join(categories))
    ref = video_ref(item)
    records, problems = [], []
    for attempt in range(1, attempts + 1):
        reply = await ep.chat(msgs, temperature=temperature, max_tokens=max_tokens)
        try:
            records, problems = parse_qa_reply(reply, ref, "llm", generator)
        except ReplyError as exc:
            records, problems = [], [str(exc)]
        if not problems:
            break
        if attempt < attempts:
            msgs = msgs + [{"role": "assistant", "content": reply},
                           {"role": "user", "content": QA_FIX_REQUEST.format(
                               problems="\n".join(f"- {p}" for p in problems))}]
    return {"records": [r.to_dict() for r in records],
            "rejected": [f"after {attempt} attempt(s): {p}" for p in problems], "attempts": attempt}


async def rewrite_reasoning(ep: ChatEndpoint, prompt: PromptTemplate, record: dict, temperature: float,
                            max_tokens: int) -> str:
    letters = "ABCDEFGH"
    options = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(record["options"]))
    msgs = prompt.messages(question=record["question"], options=options, answer=record["answer"],
                           reasoning=record["reasoning"])
    text = (await ep.chat(msgs, temperature=temperature, max_tokens=max_tokens)).strip()
    if len(text) < 20:
        raise ValueError(f"rewritten reasoning too short ({len(text)} characters)")
    return text


# -- groundtruth (synthetic videos) --------------------------------------------------------
def groundtruth_log(item: VideoItem) -> dict:
    """The video's event log, checked to belong to exactly this file."""
    path = item.events_path
    if not path.is_file():
        raise ValueError(f"no event log {path.name} next to the video (groundtruth needs `longrl synth` videos)")
    log = json.loads(path.read_text())
    if log.get("video", {}).get("digest") != item.digest:
        raise ValueError(f"event log {path.name} was written for other video bytes (digest mismatch)")
    return log


def _state_text(objects: dict) -> str:
    seen = [f"the {o['colour']} {name} in the {o['region']} region" + (" (enlarged)" if o["big"] else "")
            for name, o in objects.items() if o["visible"]]
    return "On screen: " + ("; ".join(seen) if seen else "nothing") + "."


def groundtruth_captions(log: dict, spans: list[tuple[float, float]]) -> list[str]:
    """What a perfect captioner would say about each clip, from the log."""
    out = []
    for start, end in spans:
        slot = min(log["num_slots"] - 1, int(start / log["slot_s"] + 1e-9))
        text = [_state_text(log["states"][slot]["objects"])]
        text += [f"At {e['t_s']:.1f} s {e['description']}." for e in log["events"] if start <= e["t_s"] < end]
        out.append(" ".join(text))
    return out


def groundtruth_reply(log: dict, count: int, item: VideoItem) -> dict:
    """The QA reply for a synthetic video (seeded by its digest: same bytes, same questions)."""
    return questions_from_log(log, count, int(item.digest[:12], 16))


def groundtruth_qa(log: dict, count: int, item: VideoItem, generator: str) -> dict[str, Any]:
    reply = groundtruth_reply(log, count, item)
    try:
        records, problems = parse_qa_reply(json.dumps(reply), video_ref(item), "synth-groundtruth", generator)
    except ReplyError as exc:
        records, problems = [], [str(exc)]
    return {"records": [r.to_dict() for r in records], "rejected": problems, "attempts": 1}
