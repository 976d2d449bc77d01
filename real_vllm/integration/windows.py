"""REAL's THF input: the last ``window`` tokens of each row's sequence, read from what the
runner keeps (docs/algorithms.md §2.2).

V1 keeps each request's prompt and a live list of its output tokens (stored in the slot table
when the request joins); Model Runner V2 keeps every request's committed tokens on the device
(req_states.all_token_ids) and the step's inputs in the LogitsContext. When the THF's tokenizer
is not the served model's, the served text is re-tokenised (real_vllm/thf/retokenize.py).
"""

from __future__ import annotations

import numpy as np
import torch

from real_vllm.integration.step import ProcessorStep, to_device
from real_vllm.thf.runtime import right_aligned_windows


def known_length(output: list[int]) -> int:
    """The length of a V1 output list without its trailing async-scheduling placeholders
    (-1: tokens sampled on the device whose ids the host does not have yet; vLLM fills them
    in only for processors it was given by name, not for entry-point ones: vLLM issue
    52461). The THF then reads the sequence up to the last known token."""
    n = len(output)
    while n and output[n - 1] < 0:
        n -= 1
    return n


def v1_tail(prompt: list[int], output: list[int], width: int) -> list[int]:
    """The last ``width`` known tokens of prompt + output (placeholders dropped)."""
    n = known_length(output)
    tail = prompt[-width:] + output[max(0, n - width):n]
    return [t for t in tail if t >= 0] if any(t < 0 for t in tail) else tail


class WindowReader:
    """Builds the THF windows of a step's rows for one processor."""

    def __init__(self, width: int, device: torch.device, req_states=None, retokenizer=None):
        self.width = width
        self.device = device
        self.req_states = req_states  # Model Runner V2's, else None (V1)
        self.retokenizer = retokenizer  # the cross-tokenizer path, else None

    def windows(self, step: ProcessorStep, rows: np.ndarray | None, index: torch.Tensor | None):
        """The last THF-window tokens of ``rows`` (host; ``index`` the same on the device; None:
        every row): prompt + output up to and including the token the row was fed (under
        speculative decoding: the request's drafts before the row), right-aligned in a
        [R, window] tensor (left padding), and their lengths."""
        if self.req_states is not None and self.retokenizer is None:
            return self._v2_windows(step, index)
        if step.has_drafts:
            raise RuntimeError("real_vllm: REAL with --real-retokenize cannot run on speculative-"
                               "decoding draft rows (start-up refuses this combination)")
        rows = np.arange(step.num_rows) if rows is None else rows
        slots = step.requests[rows]  # no drafts: a row is a request
        tokens = step.slots.tokens
        if self.retokenizer is not None:
            sequences = self.retokenized([tokens[s] for s in slots], slots)
        else:  # V1: vLLM's token lists (a short slice per row)
            sequences = [v1_tail(*tokens[s], self.width) for s in slots]
        windows, lengths = right_aligned_windows(sequences, self.width)
        return step.to_device(windows), step.to_device(lengths)

    def _v2_windows(self, step: ProcessorStep, index: torch.Tensor | None):
        """MRV2, on the device: a row fed the token at position ``pos`` reads positions
        pos - width + 1 .. pos. Its request's rows hold the tokens from the request's first
        row on (ctx.input_ids: the last committed token, then the drafts); earlier positions
        are committed, in req_states.all_token_ids. A draft row whose input is a placeholder
        (-1, drafts of a step that starts inside the prefill; its sample is rejected) reads
        the request's first row's window, so no placeholder reaches the THF."""
        ctx, dev, width = step.ctx, self.device, self.width
        row = torch.arange(step.num_rows, device=dev) if index is None else index
        local = ctx.expanded_local_pos[row].long()
        pos = ctx.pos[row].long()
        slot = ctx.expanded_idx_mapping[row].long()
        first_pos = pos - local  # the position of the request's first row
        end = torch.where(ctx.input_ids[row] < 0, first_pos, pos)
        q = end[:, None] + (torch.arange(width, device=dev) - (width - 1))[None, :]
        from_rows = q >= first_pos[:, None]
        src = ((row - local)[:, None] + (q - first_pos[:, None])).clamp(0, ctx.input_ids.shape[0] - 1)
        history = self.req_states.all_token_ids.gpu
        committed = history[slot[:, None], q.clamp(0, history.shape[1] - 1)].long()
        tokens = torch.where(from_rows, ctx.input_ids[src].long(), committed)
        tokens = torch.where(q >= 0, tokens, 0).clamp_min(0)
        return tokens, (end + 1).clamp_max(width)

    def retokenized(self, kept: list, slots: np.ndarray) -> list[list[int]]:
        """Cross-tokenizer path: each row's new served tokens since the last step, fed to its
        TextHistory (``kept``: what the slot table holds for each row: V1 (prompt, output,
        history), V2 the history); the THF ids of each row's window."""
        retok = self.retokenizer
        if self.req_states is None:  # V1: the live token lists, without placeholders
            histories, new = [], []
            for prompt, output, history in kept:
                n = known_length(output)
                start = retok.start(history, len(prompt) + n)
                histories.append(history)
                new.append(output[start - len(prompt):n] if start >= len(prompt) else prompt[start:] + output[:n])
            return retok.windows(histories, new)
        # V2: the text is made on the host, so the rows' lengths and new tokens are copied there
        # (two small device-to-host copies per step, which wait for the device; the
        # same-tokenizer path needs none).
        histories = kept
        slot_idx = to_device(slots.astype(np.int64), self.device)
        totals = self.req_states.total_len.gpu[slot_idx].tolist()
        starts = [retok.start(h, n) for h, n in zip(histories, totals)]
        span = max(n - a for a, n in zip(starts, totals))
        width = self.req_states.all_token_ids.gpu.shape[1]
        pos = to_device(np.asarray(starts, dtype=np.int64), self.device)[:, None] + torch.arange(
            span, device=self.device)[None, :]
        tokens = self.req_states.all_token_ids.gpu[slot_idx[:, None], pos.clamp_max(width - 1)]
        host = tokens.cpu().tolist()
        return retok.windows(histories, [row[: n - a] for row, a, n in zip(host, starts, totals)])
