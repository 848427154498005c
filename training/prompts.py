"""Chat prompts for a QARecord, and their token ids with the real number of video tokens.

SFT, the GRPO rollout and the GRPO update, and evaluation all build their inputs with
`encode_example`, so the model sees the same token order everywhere (the reference trains on a
different layout than it rolls out; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_gen.schema import QARecord

SYSTEM_PROMPT = (
    "You are a helpful assistant that watches videos carefully. First think about the question "
    "step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)
# Text-only records (no video): the same answer format without the video.
TEXT_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves problems carefully. First think about the question "
    "step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)
VIDEO_PAD = "<|video_pad|>"
END_OF_TURN = "<|im_end|>"

ANSWER_INSTRUCTIONS = {
    "multiple_choice": "Answer with the option's letter.",
    "numeric": "Answer with a number.",
    "open_ended": "Answer with a short phrase.",
}


def format_question(record: QARecord) -> str:
    """Question text with lettered options and what form the answer takes."""
    lines = [record.question.strip()]
    if record.options:
        lines.append("Options:")
        lines += [f"{letter}. {opt}" for letter, opt in zip(record.option_letters(), record.options, strict=True)]
    lines.append(ANSWER_INSTRUCTIONS[record.answer_type])
    return "\n".join(lines)


def format_response(reasoning: str, answer: str) -> str:
    """The target text: reasoning in <think>, the answer in <answer>."""
    return f"<think>{reasoning.strip()}</think>\n<answer>{answer.strip()}</answer>"


def build_messages(record: QARecord, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """System + user turn; a text-only record's user turn has no video item, and the default
    (video) system prompt becomes its text counterpart (a configured one is kept as given)."""
    if not record.has_video:
        system = TEXT_SYSTEM_PROMPT if system_prompt == SYSTEM_PROMPT else system_prompt
        return [{"role": "system", "content": system},
                {"role": "user", "content": [{"type": "text", "text": format_question(record)}]}]
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": format_question(record)}]},
    ]


@dataclass
class EncodedExample:
    """Token ids of one prompt (and optionally its response) with the modality of each token."""

    input_ids: list[int]
    mm_token_type_ids: list[int]  # 0 text, 2 video (transformers' convention)
    prompt_len: int  # tokens before the response; the response is input_ids[prompt_len:]

    @property
    def response_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat text of `messages` ending with the assistant turn's opening."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt_text(tokenizer, text: str, num_video_tokens: int) -> EncodedExample:
    """Token ids of a rendered prompt holding exactly one <|video_pad|>, expanded to
    `num_video_tokens` copies (one per merged video patch); a text-only prompt holds none and
    takes `num_video_tokens` 0."""
    if num_video_tokens == 0 and VIDEO_PAD not in text:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return EncodedExample(ids, [0] * len(ids), len(ids))
    if text.count(VIDEO_PAD) != 1:
        raise ValueError(f"prompt must hold exactly one {VIDEO_PAD}, found {text.count(VIDEO_PAD)}")
    before, after = text.split(VIDEO_PAD)
    pad_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    head = tokenizer(before, add_special_tokens=False)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    ids = head + [pad_id] * num_video_tokens + tail
    types = [0] * len(head) + [2] * num_video_tokens + [0] * len(tail)
    return EncodedExample(ids, types, len(ids))


def encode_response(tokenizer, response: str) -> list[int]:
    """Response ids as the model generates them: the text, then the end-of-turn token."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(END_OF_TURN)]


def encode_example(tokenizer, record: QARecord, num_video_tokens: int, response: str | None = None,
                   system_prompt: str = SYSTEM_PROMPT,
                   video_groups: list[tuple[float, int]] | None = None) -> EncodedExample:
    """Prompt ids for `record` (and the response ids appended when given). `video_groups`
    (Qwen3-VL: (timestamp, tokens) per frame group, training.models.qwen3_vl.frame_groups) lays
    the video out as timestamped frame groups instead of one run of `num_video_tokens` pads."""
    text = render_prompt(tokenizer, build_messages(record, system_prompt))
    if video_groups is not None:
        from training.models.qwen3_vl import encode_frame_groups

        if sum(n for _, n in video_groups) != num_video_tokens:
            raise ValueError(f"frame groups hold {sum(n for _, n in video_groups)} tokens, not {num_video_tokens}")
        enc = encode_frame_groups(tokenizer, text, video_groups)
    else:
        enc = encode_prompt_text(tokenizer, text, num_video_tokens)
    if response is not None:
        resp = encode_response(tokenizer, response)
        enc = EncodedExample(enc.input_ids + resp, enc.mm_token_type_ids + [0] * len(resp), enc.prompt_len)
    return enc


def append_response_ids(enc: EncodedExample, response_ids: list[int]) -> EncodedExample:
    """Prompt + already-tokenised response (rollouts are token ids; never re-tokenise them)."""
    return EncodedExample(enc.input_ids[: enc.prompt_len] + list(response_ids),
                          enc.mm_token_type_ids[: enc.prompt_len] + [0] * len(response_ids), enc.prompt_len)
