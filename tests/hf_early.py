"""SLED and DoLa written directly from ALGORITHMS.md §3-4 on a Hugging Face model, batch 1,
greedy: the independent oracle the served tokens are compared with. Nothing from real_vllm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _step_logits(model, ids: list[int], normed: bool):
    out = model(torch.tensor([ids]), output_hidden_states=True)
    final = out.logits[0, -1].float()
    # hidden_states[n] is the residual stream after n layers (0 = embeddings); the final
    # norm only where asked (real_vllm's defaults: off for SLED, on for DoLa)
    norm = model.model.norm if normed else (lambda h: h)
    early = [model.lm_head(norm(h[0, -1])).float() for h in out.hidden_states[:-1]]
    return final, torch.stack(early)


def sled_next_logits(final, early, alpha, k, lower_bound=-1000.0):
    p_final = final.softmax(-1)
    top = torch.topk(p_final, k).indices
    scores = torch.zeros(early.shape[0], k)
    for n in range(early.shape[0]):
        p_n = early[n].softmax(-1)
        direction = early[n] - final
        for j, i in enumerate(top.tolist()):
            grad = p_n.clone()
            grad[i] -= 1.0
            c = F.cosine_similarity(direction, grad, dim=0, eps=1e-12)
            scores[n, j] = c.clamp_min(0) ** 2
    latent = scores.sum(0) / scores.sum() if scores.sum() > 0 else torch.zeros(k)
    out = torch.full_like(final, lower_bound)
    out[top] = final[top] - alpha * (p_final[top] - latent)
    return out


def dola_next_logits(final, early, layers, relative_top=0.1):
    log_q = final.log_softmax(-1)
    best, best_jsd = None, -1.0
    for n in layers:
        log_e = early[n].log_softmax(-1)
        m = 0.5 * (log_q.exp() + log_e.exp())
        jsd = 0.5 * (F.kl_div(m.log(), log_q, log_target=True, reduction="sum")
                     + F.kl_div(m.log(), log_e, log_target=True, reduction="sum"))
        if jsd > best_jsd:
            best, best_jsd = n, float(jsd)
    contrast = log_q - early[best].log_softmax(-1)
    plausible = log_q >= log_q.max() + torch.log(torch.tensor(relative_top))
    return torch.where(plausible, contrast, torch.full_like(contrast, float("-inf")))


@torch.no_grad()
def greedy(model, prompt_ids: list[int], max_new: int, method: str, normed: bool | None = None, **kw) -> list[int]:
    normed = (method == "dola") if normed is None else normed
    ids = list(prompt_ids)
    for _ in range(max_new):
        final, early = _step_logits(model, ids, normed)
        logits = sled_next_logits(final, early, **kw) if method == "sled" else dola_next_logits(final, early, **kw)
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]
