"""Loading under FSDP2 (training.model_loading): each rank keeps 1/world of the parameters and ends
with exactly the folder's weights (2 gloo processes)."""

from __future__ import annotations

import torch

from training.model_io import load_model
from training.sequence_parallel.local_group import run_local_group
from training.tiny_model import TinyModelSpec, write_tiny_model_folder

SPEC = TinyModelSpec(seed=11, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
                     vision_depth=2, vision_hidden_size=64, vision_intermediate_size=128)


def peak_torch_cpu_bytes(fn):
    """(fn's result, peak of torch's live CPU allocations during fn, above the start) from the
    profiler's allocation events: an independent measurement, not the loader's own accounting."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    # "[memory]" events are the allocator's own (op events repeat their children's bytes)
    events = sorted((e for e in prof.events() if e.name == "[memory]" and e.cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return result, peak


def _rank(rank: int, world: int, folder, mode: str):
    from training.model_loading import meta_model
    from training.sequence_parallel.mesh import (
        ParallelConfig,
        build_log_prob_model,
        full_state_dict,
        init_parallel,
    )

    state = init_parallel(sp_size=1)

    def load():
        if mode == "meta":
            return build_log_prob_model(meta_model(folder), state, ParallelConfig(), weights=folder)
        return build_log_prob_model(load_model(folder), state, ParallelConfig())  # full model, then sharded

    lpm, peak = peak_torch_cpu_bytes(load)
    local = sum(p.to_local().numel() * p.element_size() for p in lpm.parameters())
    # rotary frequencies are non-persistent buffers (not in state_dict, not in the folder)
    buffers = {".".join(n.split(".")[-3:]): b.detach().cpu().clone() for n, b in lpm.named_buffers() if "inv_freq" in n}
    return {"peak": peak, "local": local, "state": full_state_dict(lpm), "buffers": buffers}


def test_fsdp_loading_holds_a_shard_per_rank_and_the_exact_weights(tmp_path):
    folder = write_tiny_model_folder(tmp_path / "m", SPEC)
    expected = load_model(folder).state_dict()
    want_buffers = {".".join(n.split(".")[-3:]): b for n, b in load_model(folder).named_buffers() if "inv_freq" in n}
    full_bytes = sum(v.numel() * v.element_size() for v in load_model(folder).parameters())
    meta = run_local_group(_rank, 2, folder, "meta")
    plain = run_local_group(_rank, 2, folder, "plain")
    for rank, res in enumerate(meta):
        assert all(torch.equal(res["state"][k], v) for k, v in expected.items()), rank
        assert res["local"] <= 0.55 * full_bytes
        # recomputed, not the uninitialised memory `to_empty` leaves (which only moves q/k)
        assert res["buffers"].keys() == want_buffers.keys() and len(want_buffers) == 4, rank
        assert all(torch.equal(res["buffers"][k], v) for k, v in want_buffers.items()), rank
        # never more than ~1/world of the parameters live at any moment of the load (torch's own
        # allocation events; safetensors' safe_open used to map each whole file: 1.0x)
        assert res["peak"] <= 0.55 * full_bytes, (rank, res["peak"] / full_bytes)
    # the measurement sees a full model where there is one (the load it replaces)
    assert all(res["peak"] >= 0.95 * full_bytes for res in plain), [r["peak"] / full_bytes for r in plain]


def test_meta_load_converts_the_saved_dtype_and_names_a_misfit(tmp_path):
    """A bf16 model from the fp32 folder (the buffer path: saved dtype != model dtype) equals
    transformers' own bf16 load; a tensor of another shape is an error naming file and tensor."""
    import json

    from training.model_loading import load_sharded_weights, meta_model

    folder = write_tiny_model_folder(tmp_path / "m", SPEC)
    got = load_sharded_weights(meta_model(folder, dtype="bfloat16"), folder, "cpu").state_dict()
    want = load_model(folder, dtype="bfloat16").state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], v) for k, v in want.items())
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", config)
    text["intermediate_size"] = SPEC.intermediate_size * 2
    (folder / "config.json").write_text(json.dumps(config))
    import pytest

    with pytest.raises(ValueError, match=r"model.safetensors:.*mlp.*the model wants"):
        load_sharded_weights(meta_model(folder), folder, "cpu")
