"""Beam search for the `hf` eval engine (`num_beams` > 1), on the positions and prefill the
greedy path uses (training.generation.prefill: one prefill per question, its KV cache expanded
to the beams).

The search is the usual one (transformers' `num_beams` with `early_stopping=True`): each step
extends every running beam by every token and ranks the `2 * num_beams` best candidates by
summed log-probability; a candidate that ends in a stop token and ranks among the first
`num_beams` becomes a finished hypothesis scored `sum_logp / length ** length_penalty`
(length counts the stop token); the best `num_beams` others run on. The search ends once
`num_beams` hypotheses are finished or the token budget runs out (then the best `num_beams`
candidates of the last step finish, scored the same way); the best-scored hypothesis is
returned. A test checks it against transformers' own beam search on a text prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def beam_search(model, batch, stop_ids: Sequence[int], num_beams: int, max_new_tokens: int,
                length_penalty: float = 1.0) -> tuple[list[int], bool]:
    """(tokens, finished) of the best hypothesis for the one prompt in `batch`."""
    from training.generation import prefill
    from training.mm_batch import base_model

    if batch.size != 1:
        raise ValueError("beam_search takes one prompt at a time")
    k = num_beams
    state = prefill(model, batch).expand(k)
    lm = base_model(model).language_model
    embed = base_model(model).get_input_embeddings()
    lm_head = model.get_output_embeddings()
    stop = set(int(s) for s in stop_ids)
    device = state.hidden.device
    # every beam starts as the same prompt: only the first may be extended at step 0
    scores = torch.full((k,), float("-inf"), device=device)
    scores[0] = 0.0
    seqs: list[list[int]] = [[] for _ in range(k)]
    done: list[tuple[float, list[int]]] = []
    hidden, next_pos = state.hidden, state.next_pos
    n_cand = max(2, 1 + len(stop)) * k
    for step in range(max_new_tokens):
        logp = F.log_softmax(lm_head(hidden).float(), -1)  # [k, V]
        vocab = logp.shape[-1]
        top, idx = (scores[:, None] + logp).view(-1).topk(n_cand)
        keep: list[tuple[float, int, int]] = []
        last = step + 1 == max_new_tokens
        for rank, (s, i) in enumerate(zip(top.tolist(), idx.tolist(), strict=True)):
            b, t = divmod(i, vocab)
            if s == float("-inf") or (last and rank >= k):
                break
            if t in stop or last:  # out of budget: the best k candidates end here
                if rank < k:  # a finished hypothesis only if it ranks among the best k
                    done.append((s / (step + 1) ** length_penalty, seqs[b] + [t]))
                continue
            keep.append((s, b, t))
            if len(keep) == k:
                break
        if len(done) >= k or not keep or last:
            break
        while len(keep) < k:  # fewer live candidates than beams (tiny vocabularies): pad dead
            keep.append((float("-inf"), keep[0][1], keep[0][2]))
        order = torch.tensor([b for _, b, _ in keep], device=device)
        state.cache.reorder_cache(order)
        seqs = [seqs[b] + [t] for _, b, t in keep]
        scores = torch.tensor([s for s, _, _ in keep], device=device)
        ids = torch.tensor([[t] for _, _, t in keep], device=device)
        pos = next_pos.view(1, k, 1).expand(3, k, 1)
        out = lm(inputs_embeds=embed(ids), attention_mask=None, position_ids=pos,
                 past_key_values=state.cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        next_pos = next_pos + 1
    if not done:
        return [], False
    best = max(done, key=lambda d: d[0])[1]
    return best, bool(best) and best[-1] in stop
