"""Equivalence figures of the model families (issue 13): Qwen3-VL / MoE positions vs transformers' get_rope_index,
cached (DeepStack-wide) vs pixel logits, rollout vs trainer log-probs on long videos; text LMs rollout vs trainer.
Run: PYTHONPATH=. .venv/bin/python bench/check_model_families.py  (CPU, ~35 s; tiny folders under .tmp/h13)"""
import torch

from tests.test_model_kit import MCQ, NUM
from tests.test_models_qwen3_vl import _encode, _video
from tests.test_models_text import _text
from training.generation import generate
from training.grpo.logprobs import sequence_logprobs
from training.mm_batch import collate, encode_videos, hidden_states, rope_positions
from training.model_io import load_model, load_tokenizer
from training.prompts import append_response_ids, encode_example
from training.tiny_model import TinyModelSpec, write_tiny_model_folder
from training.video_inputs import VisionSpec, no_video

for arch in ("qwen3_vl", "qwen3_vl_moe"):
    p = write_tiny_model_folder(f".tmp/h13/fig_{arch}", TinyModelSpec(arch=arch))
    m, tok = load_model(p), load_tokenizer(p)
    spec = VisionSpec.from_model_dir(p)
    vids = [_video(spec, 64, 600.0, 5), _video(spec, 32, 640.0, 6)]
    exs = [_encode(tok, r, v) for r, v in zip((MCQ, NUM), vids)]
    b = collate(exs, vids, tok.pad_token_id)
    real = b.attention_mask.bool()
    with torch.no_grad():
        c = encode_videos(m, b.pixel_values_videos, b.video_grid_thw)
        pos = rope_positions(m, b)
        ref, _ = m.model.get_rope_index(b.input_ids, b.mm_token_type_ids, video_grid_thw=b.video_grid_thw, attention_mask=b.attention_mask)
        ours = m.lm_head(hidden_states(m, b, c))
        nat = m(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values_videos=b.pixel_values_videos,
                video_grid_thw=b.video_grid_thw, mm_token_type_ids=b.mm_token_type_ids, position_ids=pos).logits
        H = m.config.text_config.hidden_size
        nods = m.lm_head(hidden_states(m, b, [x[:, :H] for x in c]))
    g = generate(m, b, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=16, video_embeds=c,
                 generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, t) for e, t in zip(exs, g.token_ids)], vids, tok.pad_token_id, with_pixels=False)
    with torch.no_grad():
        lp, _ = sequence_logprobs(m, full, c)
    d = max(float((lp[i][full.loss_mask[i].bool()] - torch.tensor(g.logprobs[i])).abs().max()) for i in range(2))
    print(f"{arch}: seq {b.input_ids.shape[1]}, video tokens {[v.num_tokens for v in vids]}, s/temporal patch [18.75, 40]; "
          f"positions == get_rope_index {torch.equal(pos[:, real], ref[:, real])}; cached-vs-pixel logits max diff "
          f"{float((ours[real] - nat[real]).abs().max())}; without DeepStack {float((nods[real] - nat[real]).abs().max()):.3f}; "
          f"rollout-vs-trainer max {d:.2e} over {int(full.loss_mask.sum())} tokens")
for arch in ("qwen2", "qwen3"):
    p = write_tiny_model_folder(f".tmp/h13/fig_{arch}", TinyModelSpec(arch=arch))
    m, tok = load_model(p), load_tokenizer(p)
    exs = [encode_example(tok, r, 0) for r in (_text(), _text(id="t2", question="Ana has 3 boxes of 4 pens and gives away 5. How many?", answer="7"))]
    b = collate(exs, [no_video()] * 2, tok.pad_token_id)
    g = generate(m, b, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=32, generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, t) for e, t in zip(exs, g.token_ids)], [no_video()] * 2, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = sequence_logprobs(m, full, [])
    d = max(float((lp[i][full.loss_mask[i].bool()] - torch.tensor(g.logprobs[i])).abs().max()) for i in range(2))
    print(f"{arch}: rollout-vs-trainer max {d:.2e} over {int(full.loss_mask.sum())} tokens")
