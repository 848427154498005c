"""Is this model folder usable, and is its tokenizer this model's? Checked on every load.

A folder that is not what it claims runs to the end and produces nothing: without tokenizer
files transformers builds a 1-entry tokenizer that encodes every text to [] - SFT, GRPO and eval
then exit 0, SFT writes that broken tokenizer into its output and eval answers '' to everything.
So every load goes through `check_model_dir` (the folder: config.json, a supported family,
weights) and `check_tokenizer` (the tokenizer against config.json: size vs the embedding, the
special tokens at the ids the model looks for, an encode/decode round trip, a chat template that
renders the family's turn), and refuses with one line naming the folder and the fix.

`folder_fingerprint` is the identity of a folder's content (weights, config, tokenizer), which
resume guards compare: names and sizes alone let another model's answers pass as this one's.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any


class ModelFolderError(ValueError):
    """A model folder that cannot be used, in one line naming it and the fix."""


# Weight files a folder may hold (transformers' names: single file, sharded index, old .bin).
WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
# config.json keys -> the token each must be: the ids the vision families' forward pass looks for.
TOKEN_ID_KEYS = {
    "video_token_id": "<|video_pad|>",
    "image_token_id": "<|image_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")  # the chat format of every supported family
PROBE_TEXT = "Which colour is the circle at 12.5 s? <think>red, then blue</think> <answer>B</answer>"
VIDEO_TURN = "<|vision_start|><|video_pad|><|vision_end|>"
GENERATION_PROMPT = "<|im_start|>assistant"
TOKENIZER_FIX = "copy this model's tokenizer files (tokenizer.json, tokenizer_config.json, ...) into the folder"


def _config(p: Path) -> dict[str, Any]:
    try:
        config = json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{p}/config.json is not valid JSON ({exc}); copy the folder again") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{p}/config.json is not a JSON object; copy the folder again")
    return config


def _config_value(config: dict[str, Any], key: str) -> Any:
    text = config.get("text_config") or {}
    return config.get(key, text.get(key))


def check_model_dir(path: str | Path) -> Path:
    """`path` if it is a complete model folder of a supported family (cheap: reads config.json
    and lists files), else ModelFolderError."""
    p = Path(path)
    if p.is_file():
        raise ModelFolderError(f"{p} is a file; give the model folder (the one holding config.json)")
    if not (p / "config.json").is_file():
        raise ModelFolderError(f"{p} is not a Hugging Face model folder (no config.json)")
    config = _config(p)
    from training.models import UnsupportedModelError, family_of

    try:
        family_of(config)
    except UnsupportedModelError as exc:
        raise ModelFolderError(f"{p}: {exc}") from None
    if not any(any(p.glob(g)) for g in WEIGHT_GLOBS):
        raise ModelFolderError(f"{p}: no weights (model.safetensors, model.safetensors.index.json with its "
                               "shards, or pytorch_model.bin); the folder is incomplete - copy or download it again")
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ModelFolderError(f"{index}: not a safetensors index (no weight_map); copy the folder again") from None
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise ModelFolderError(f"{p}: {len(missing)} of {len(shards)} weight shards missing "
                                   f"(first: {missing[0]}); copy or download the folder again")
    return p


def tokenizer_load_error(p: Path, exc: Exception) -> ModelFolderError:
    """transformers' many ways of failing on a foreign tokenizer (a 100-line sentencepiece
    message for a Llama folder), as one line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ModelFolderError(f"{p}: tokenizer cannot be loaded ({type(exc).__name__}: {first[:200]}); {TOKENIZER_FIX}")


def check_tokenizer(tok: Any, path: str | Path) -> None:
    """Refuse a tokenizer that is not the model's in `path` (see the module doc)."""
    p = Path(path)
    config = _config(p)
    vocab = int(_config_value(config, "vocab_size") or 0)
    n = len(tok)
    if vocab and n > vocab:
        raise ModelFolderError(f"{p}: the tokenizer has {n} tokens but the model's embedding only {vocab} rows; "
                               f"it is another model's tokenizer - {TOKENIZER_FIX}")
    unk = getattr(tok, "unk_token_id", None)
    wanted: dict[str, int | None] = dict.fromkeys(CHAT_TOKENS)
    for key, token in TOKEN_ID_KEYS.items():
        if _config_value(config, key) is not None:
            wanted[token] = int(_config_value(config, key))
    for token, want in wanted.items():
        got = tok.convert_tokens_to_ids(token)
        if got is None or got == unk or (vocab and got >= vocab):
            raise ModelFolderError(f"{p}: the tokenizer ({n} tokens) lacks the special token {token}; {TOKENIZER_FIX}")
        if want is not None and got != want:
            raise ModelFolderError(f"{p}: the tokenizer gives {token} id {got} but config.json says {want}; "
                                   f"it is another model's tokenizer - {TOKENIZER_FIX}")
    ids = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    back = tok.decode(ids)
    if not ids or back != PROBE_TEXT:
        raise ModelFolderError(f"{p}: the tokenizer does not round-trip text ({len(ids)} ids, decoded "
                               f"{back[:40]!r}); {TOKENIZER_FIX}")
    vision = _config_value(config, "video_token_id") is not None
    content: Any = [{"type": "video"}, {"type": "text", "text": "Q"}] if vision else "Q"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)
    except Exception as exc:  # jinja errors of a foreign template, in one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelFolderError(f"{p}: the chat template fails on a {'video ' if vision else ''}turn "
                               f"({type(exc).__name__}: {first[:160]}); fix it or remove it (the Qwen chat "
                               "template is then used)") from None
    needed = (VIDEO_TURN, GENERATION_PROMPT) if vision else (GENERATION_PROMPT,)
    lacking = [x for x in needed if x not in text]
    if lacking:
        raise ModelFolderError(f"{p}: the chat template does not render the Qwen chat format (no {lacking[0]} "
                               "in a rendered turn); fix it or remove it (the Qwen chat template is then used)")


def validate_model_folder(path: str | Path) -> Path:
    """Everything checkable before a stage starts workers or loads weights: the folder, its
    family, its weights and its tokenizer against the model (~1 s for a 7B folder)."""
    from training.model_io import load_tokenizer

    load_tokenizer(path)
    return Path(path)


# --- content fingerprint ------------------------------------------------------------------

FULL_HASH_BYTES = 256 << 20  # folders up to this much weight are hashed whole
SAMPLE_BYTES = 4096  # per tensor above that: head, middle and tail of its data
IDENTITY_FILES = (  # besides weights: what decides the model's answers
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "merges.txt", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json", "video_preprocessor_config.json",
)


def _weight_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))


def _hash_file(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)


def _sample_safetensors(h: Any, path: Path) -> None:
    """The header (every tensor's name, dtype, shape, offsets) and, per tensor, SAMPLE_BYTES at
    the start, middle and end of its data: a fine-tune changes every tensor it touches, so any
    changed tensor changes the digest, at ~12 KB read per tensor (7B: ~9 MB of 15 GB)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = fh.read(n)
        h.update(header)
        base = 8 + n
        try:
            entries = json.loads(header)
        except json.JSONDecodeError:
            entries = {}
        for name in sorted(k for k in entries if k != "__metadata__"):
            start, end = (base + int(o) for o in entries[name]["data_offsets"])
            for at in sorted({start, max(start, (start + end) // 2 - SAMPLE_BYTES // 2),
                              max(start, end - SAMPLE_BYTES)}):
                if at >= size:
                    continue
                fh.seek(at)
                h.update(fh.read(min(SAMPLE_BYTES, end - at)))


def _sample_file(h: Any, path: Path) -> None:
    """A file that is not safetensors (pytorch .bin): 64 evenly spaced samples plus its size."""
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        for k in range(64):
            fh.seek(size * k // 64)
            h.update(fh.read(SAMPLE_BYTES))


def folder_fingerprint(model_dir: str | Path) -> str:
    """Identity of a model folder's content: its weights (hashed whole up to FULL_HASH_BYTES,
    above that the safetensors headers plus sampled bytes of every tensor), config, generation
    config, tokenizer, chat template and processor configs. A copy or a move keeps it; another
    model, another checkpoint of the same run or another tokenizer changes it."""
    d = Path(model_dir)
    h = hashlib.sha256(b"longrl-folder-v2\n")
    weights = _weight_files(d)
    whole = sum(w.stat().st_size for w in weights) <= FULL_HASH_BYTES
    for w in weights:
        h.update(f"\n{w.name}\n".encode())
        if whole:
            _hash_file(h, w)
        elif w.suffix == ".safetensors":
            _sample_safetensors(h, w)
        else:
            _sample_file(h, w)
    for name in IDENTITY_FILES:
        f = d / name
        if f.is_file():
            h.update(f"\n{name}\n".encode())
            _hash_file(h, f)
    return h.hexdigest()[:16]
