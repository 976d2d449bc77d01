"""SLED and DoLa written directly from docs/algorithms.md §4.1 and §5 on a Hugging Face model,
batch 1, greedy: the independent oracle the served tokens are compared with. Nothing from
real_vllm.

DoLa's default is the authors' code: the steps of transformers 4.46.3's ``_dola_select_contrast``
and ``_relative_top_filter`` (src/transformers/generation/utils.py lines 4696-4740 and
4671-4693), re-written here; tests/test_dola_authors.py checks this oracle against
transformers 4.46.3 itself where it is installed beside the venv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _step_logits(model, ids: list[int], normed: bool):
    out = model(torch.tensor([ids]), output_hidden_states=True)
    final = out.logits[0, -1].float()
    # hidden_states[n] is the residual stream after n layers (0 = embeddings); the final
    # norm only where asked (off by default for both, as in their reference code)
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


def _authors_divergence(log_q, log_e):
    """transformers 4.46.3 ``_dola_select_contrast`` steps 2-5 for one candidate layer: the mean
    over the vocabulary of F.kl_div(log q, m) for the final and the premature layer, halved."""
    m = 0.5 * (log_q.exp() + log_e.exp())
    kl1 = F.kl_div(log_q, m, reduction="none").mean(-1)
    kl2 = F.kl_div(log_e, m, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)


def _paper_jsd(log_q, log_e):
    """The paper's Jensen-Shannon divergence, 1/2 [KL(q_N || m) + KL(q_j || m)]."""
    m = 0.5 * (log_q.exp() + log_e.exp())
    return 0.5 * (F.kl_div(m.log(), log_q, log_target=True, reduction="sum")
                  + F.kl_div(m.log(), log_e, log_target=True, reduction="sum"))


def dola_next_logits(final, early, layers, relative_top=0.1, divergence="authors"):
    log_q = final.log_softmax(-1)
    measure = _authors_divergence if divergence == "authors" else _paper_jsd
    scores = torch.stack([measure(log_q, early[n].log_softmax(-1)) for n in layers])
    best = layers[int(scores.argmax())] if len(layers) > 1 else layers[0]
    # _relative_top_filter with min_tokens_to_keep = 1: threshold = max log q_N + log(relative_top)
    base = early[best].log_softmax(-1)
    threshold = log_q.max() + math.log(relative_top)
    contrast = log_q - torch.where(log_q < threshold, torch.full_like(base, -1e-3), base)
    return torch.where(log_q < threshold, torch.full_like(contrast, float("-inf")), contrast)


@torch.no_grad()
def greedy(model, prompt_ids: list[int], max_new: int, method: str, normed: bool | None = None, **kw) -> list[int]:
    normed = False if normed is None else normed
    ids = list(prompt_ids)
    for _ in range(max_new):
        final, early = _step_logits(model, ids, normed)
        logits = sled_next_logits(final, early, **kw) if method == "sled" else dola_next_logits(final, early, **kw)
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]
