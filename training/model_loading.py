"""Loading a model folder straight into FSDP2 shards: never a full model on any rank.

`meta_model(path)` builds the architecture on the meta device (no memory); the caller shards it
(`fully_shard` makes every parameter a DTensor, still on meta); `load_sharded_weights(model, path,
device)` then allocates each rank's local shards on `device` and fills them from the safetensors
files, reading only the rows of each tensor the rank owns (`safe_open(...).get_slice`), so a rank
holds ~1/world of the parameters at any moment (7B fp32: ~3.8 GB per rank at 8 ranks instead of
~33 GB, twice, for the policy and the reference). Non-persistent buffers (rotary frequencies) are
recomputed from the module's config, as transformers' own initialisation does.

The files are read here, not through `safetensors.safe_open`: its torch handle maps each whole
file as one torch storage (the allocator counts a full file per open - measured: the loading
test's peak was 1.0x the model at 2 ranks), while the format is simple (an 8-byte header length,
a JSON header of dtype / shape / byte offsets, then the raw tensors) and the rows a rank owns are
one contiguous byte range: they are read straight into the rank's shard (or, when the saved
dtype differs - bf16 checkpoints, fp32 training - into a buffer of just those rows).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from training.model_io import DTYPES, check_model_dir


def meta_model(path: str | Path, dtype: str = "float32", attn_implementation: str | None = None) -> nn.Module:
    """The folder's architecture with every parameter and buffer on the meta device."""
    import transformers
    from transformers import AutoConfig

    from training.models import auto_class_of

    config = AutoConfig.from_pretrained(check_model_dir(path))
    auto = getattr(transformers, auto_class_of(path))  # text-only LMs: AutoModelForCausalLM
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        model = auto.from_config(config, **kwargs)
    from training.models.text_lm import attach_decoder

    return attach_decoder(model).eval()


def _checkpoint_keys(path: Path) -> dict[str, Path]:
    """{saved tensor name: safetensors file} of a folder (single file or sharded index)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return {k: path / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    file = path / "model.safetensors"
    return dict.fromkeys(_header(file)[0], file)


ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


def _header(file: Path) -> tuple[dict, int]:
    """({tensor name: {dtype, shape, data_offsets}}, offset of the data) of a safetensors file."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _read_rows(f, entry: dict, data_start: int, rows: tuple[int, int] | None, dest: torch.Tensor, name: str) -> None:
    """Fill `dest` with rows [r0, r1) (dim 0; all when None) of one saved tensor."""
    dtype, shape = ST_DTYPES[entry["dtype"]], entry["shape"]
    r0, r1 = rows if rows is not None else (0, shape[0] if shape else 1)
    row_elems = 1
    for d in shape[1:]:
        row_elems *= d
    if dest.numel() != (r1 - r0) * row_elems:
        raise ValueError(f"{name}: the model wants {tuple(dest.shape)} but rows {r0}:{r1} of the saved "
                         f"{shape} hold {(r1 - r0) * row_elems} values")
    if r1 == r0:
        return
    f.seek(data_start + entry["data_offsets"][0] + r0 * row_elems * dtype.itemsize)
    direct = dest.device.type == "cpu" and dest.dtype == dtype and dest.is_contiguous()
    buf = dest if direct else torch.empty(dest.shape, dtype=dtype)
    view = memoryview(buf.detach().view(-1).view(torch.uint8).numpy())
    if f.readinto(view) != view.nbytes:
        raise ValueError(f"{name}: the file ends inside the tensor")
    if not direct:
        dest.copy_(buf)


# Qwen-VL checkpoints name the language model "model.*" and the tower "visual.*" (the Hub's and
# transformers' saved layout); transformers 5 modules are "model.language_model.*" / "model.visual.*".
SAVED_NAMES = ((r"^model\.language_model\.", "model."), (r"^model\.visual\.", "visual."))


def _saved_candidates(name: str) -> list[str]:
    """The names a module parameter may have in a checkpoint: as is, then the saved layout's."""
    out = [name]
    for pattern, repl in SAVED_NAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            out.append(new)
    return out


def _local_rows(param: torch.Tensor) -> tuple[int, int] | None:
    """[start, end) of dim 0 this rank holds (FSDP2 Shard(0), torch.chunk sizes); None: whole."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return None
    start, end = 0, param.shape[0]
    coords = param.device_mesh.get_coordinate()
    for dim, placement in enumerate(param.placements):
        if isinstance(placement, Shard):
            if placement.dim != 0:
                raise ValueError(f"only dim-0 shards are supported, got {placement}")
            size = end - start
            chunk = -(-size // param.device_mesh.size(dim))
            lo = min(start + coords[dim] * chunk, end)
            start, end = lo, min(lo + chunk, end)
    return start, end


def _meta_buffer_modules(model: nn.Module) -> list[str]:
    """Names of the modules holding buffers still on the meta device. Taken before `to_empty`,
    which turns them into uninitialised memory that no longer reads as meta."""
    return [name for name, module in model.named_modules()
            if any(b.is_meta for b in module.buffers(recurse=False))]


def _restore_buffers(model: nn.Module, names: list[str], device: torch.device) -> None:
    """Recompute the (non-persistent) buffers a meta build left empty: each module in `names` is
    built again on CPU from its config (rotary embeddings: parameter-free, milliseconds)."""
    for name in names:
        module = model.get_submodule(name)
        own = dict(module.named_buffers(recurse=False))
        config = getattr(module, "config", None)
        if config is None:
            raise ValueError(f"{name}: cannot recompute buffers {sorted(own)} of {type(module).__name__}")
        with torch.device("cpu"):
            fresh = type(module)(config)
        for key, value in fresh.named_buffers(recurse=False):
            module._buffers[key] = value.to(device)


@torch.no_grad()
def load_sharded_weights(model: nn.Module, path: str | Path, device: torch.device | str) -> nn.Module:
    """Allocate the (sharded) meta `model` on `device` and fill each rank's shards from `path`."""
    path = check_model_dir(path)
    device = torch.device(device)
    meta_buffers = _meta_buffer_modules(model)
    model.to_empty(device=device)
    _restore_buffers(model, meta_buffers, device)
    where = _checkpoint_keys(path)
    tied = getattr(model.config, "tie_word_embeddings", False)
    handles: dict[Path, tuple] = {}  # file -> (open file, header, data offset)
    try:
        for name, param in model.named_parameters(remove_duplicate=False):
            found = [k for k in _saved_candidates(name) if k in where]
            if not found and tied and name.endswith("lm_head.weight"):
                found = [k for k in where if k.endswith("embed_tokens.weight")]
            if not found:
                raise ValueError(f"{path}: no tensor for parameter {name}")
            saved = found[0]
            file = where[saved]
            if file not in handles:
                header, start = _header(file)
                handles[file] = (open(file, "rb"), header, start)  # noqa: SIM115 (closed below)
            f, header, start = handles[file]
            rows = _local_rows(param)
            local = param.to_local() if rows is not None else param
            _read_rows(f, header[saved], start, rows, local, f"{file.name}:{saved}")
    finally:
        for f, _, _ in handles.values():
            f.close()
    return model
