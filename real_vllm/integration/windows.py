"""REAL's THF input: the last ``window`` tokens of each row's sequence, read from what the
runner keeps (docs/algorithms.md §2.2); for a sliding-window THF, each row's new tokens since
the step its request's key/value cache last saw (SlidingReader).

V1 keeps each request's prompt and a live list of its output tokens (stored in the slot table
when the request joins); Model Runner V2 keeps every request's committed tokens on the device
(req_states.all_token_ids) and the step's inputs in the LogitsContext. When the THF's tokenizer
is not the served model's, the served text is re-tokenised (real_vllm/thf/retokenize.py).
"""

from __future__ import annotations

import numpy as np
import torch

from real_vllm.integration.step import ProcessorStep, to_device
from real_vllm.thf.runtime import THFRuntime, right_aligned_windows


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


class SlidingReader:
    """A sliding-window THF served incrementally: the THF outputs of a step's rows from each
    request's key/value cache (thf/incremental.py, slot-indexed) and the tokens the cache has
    not seen. The slot table calls reset/move/swap as requests join, leave and move.

    V1: the host has every token (the live lists) and the position each slot's cache holds
    (``newest``), so it builds each row's new tokens itself: after a decode step the one token
    just sampled, for a slot that joined or was resumed the last ``context`` tokens (the
    prefill that rebuilds the cache exactly), none when the host has no new token yet (async
    placeholders: the row's last output is given again).

    MRV2, on the device, per row (a request with drafts owns several): the row's tokens after
    its slot's newest cached position up to the token it was fed: committed ones from
    req_states.all_token_ids, the request's rows' inputs from ctx.input_ids (the last sampled
    token, then the drafts: a draft row computes its drafts, never commits them). Only the
    request's first row commits, up to the last sampled token. The number of columns is a host
    bound (one row of cache-less prefill, ``context``, when a slot is new; else 1 + twice the
    most drafts a request had: accepted drafts to catch up, then the row's own); on the CPU,
    where reading a device value costs nothing, the exact maximum.
    """

    def __init__(self, thf: THFRuntime, num_slots: int, device: torch.device, req_states=None,
                 max_drafts: int | None = None):
        self.thf = thf
        self.cache = thf.new_cache(num_slots)
        self.context = thf.context
        self.device = device
        self.req_states = req_states
        self.newest = np.full(num_slots, -1, dtype=np.int64)  # V1: the cache's newest position, on the host
        self.last = torch.zeros(num_slots, thf.config.num_outputs, device=device)  # V1: each slot's last output
        self.filled = np.zeros(num_slots, dtype=bool)  # MRV2: the slot's cache was written since it joined
        self.max_drafts = max_drafts  # MRV2: speculative tokens per request, when the config says
        self.drafts_seen = 0

    # ------------------------------------------------------------------ slot table events

    def reset(self, slot: int) -> None:
        self.cache.reset(slot)
        self.newest[slot] = -1
        self.filled[slot] = False

    def move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst)
        self.newest[dst], self.newest[src] = self.newest[src], -1
        self.last[dst] = self.last[src]
        self.filled[dst], self.filled[src] = self.filled[src], False

    def swap(self, a: int, b: int) -> None:
        self.cache.swap(a, b)
        self.newest[[a, b]] = self.newest[[b, a]]
        self.last[[a, b]] = self.last[[b, a]]
        self.filled[[a, b]] = self.filled[[b, a]]

    # ------------------------------------------------------------------ a step

    def curve_params(self, step: ProcessorStep, rows: np.ndarray | None, index: torch.Tensor | None) -> torch.Tensor:
        """THF outputs [R, K] of ``rows`` (host; ``index`` the same on the device; None: every
        row), each at the token its row was fed."""
        if self.req_states is not None:
            return self._v2(step, rows, index)
        return self._v1(step, rows)

    def _v1(self, step: ProcessorStep, rows: np.ndarray | None) -> torch.Tensor:
        rows = np.arange(step.num_rows) if rows is None else rows
        slots = step.requests[rows]
        compute, ends, bases, news = [], [], [], []
        for slot in slots:
            prompt, output = step.slots.tokens[slot]
            n = known_length(output)
            end, base = len(prompt) + n - 1, int(self.newest[slot])
            if base == end:  # no new token on the host yet: the same output as last step
                continue
            if not (0 <= base < end and end - base <= self.context):
                base = -1  # rebuild: the last `context` tokens (the whole sequence when shorter)
            start = base + 1 if base >= 0 else max(0, end - self.context + 1)
            compute.append(slot)
            ends.append(end)
            bases.append(base)
            news.append(prompt[start:end + 1] + output[max(0, start - len(prompt)):n])
        if compute:
            width = max(len(t) for t in news)
            tokens = np.zeros((len(compute), width), dtype=np.int64)
            for i, t in enumerate(news):
                tokens[i, width - len(t):] = t
            end = np.asarray(ends, dtype=np.int64)
            positions = end[:, None] - np.arange(width - 1, -1, -1)[None, :]
            real = np.arange(width)[None, :] >= width - np.asarray([len(t) for t in news])[:, None]
            slot_idx = step.to_device(np.asarray(compute, dtype=np.int64))
            params = self.cache.step(slot_idx, step.to_device(tokens.clip(min=0)), step.to_device(positions),
                                     step.to_device(real), step.to_device(np.asarray(bases, dtype=np.int64)),
                                     step.to_device(end))
            self.last[slot_idx] = params[:, -1]
            self.newest[compute] = end
        return self.last[step.to_device(slots.astype(np.int64))]

    def _columns(self, step: ProcessorStep, slots: np.ndarray) -> int:
        """The host bound on a step's new tokens per row (see the class docstring)."""
        drafts = step.num_rows - len(step.requests)
        if self.max_drafts is not None:
            drafts = min(drafts, self.max_drafts)
        self.drafts_seen = max(self.drafts_seen, drafts)
        if not self.filled[slots].all():
            return self.context
        return min(self.context, 1 + 2 * self.drafts_seen)

    def _v2(self, step: ProcessorStep, rows: np.ndarray | None, index: torch.Tensor | None) -> torch.Tensor:
        ctx, dev, context = step.ctx, self.device, self.context
        slots_host = step.requests if rows is None else step.requests[rows]
        width = self._columns(step, slots_host)
        self.filled[slots_host] = True
        row = torch.arange(step.num_rows, device=dev) if index is None else index
        local = ctx.expanded_local_pos[row].long()
        pos = ctx.pos[row].long()
        slot = ctx.expanded_idx_mapping[row].long()
        first_pos = pos - local  # the position of the request's first row: its last sampled token
        # A draft row fed a placeholder (-1: drafts of a step that starts inside the prefill) gives
        # its request's first row's output, as in WindowReader.
        end = torch.where(ctx.input_ids[row] < 0, first_pos, pos)
        base = self.cache.newest[slot]
        usable = (base >= 0) & (base < first_pos) & (end - base <= context)
        start = torch.where(usable, base + 1, (end - context + 1).clamp_min(0))
        base = torch.where(usable, base, -1)
        if dev.type == "cpu":  # the exact count, free on the CPU
            width = int((end - start + 1).max()) if len(row) else 1
        q = end[:, None] + (torch.arange(width, device=dev) - (width - 1))[None, :]
        real = q >= start[:, None]
        from_rows = q >= first_pos[:, None]
        src = ((row - local)[:, None] + (q - first_pos[:, None])).clamp(0, ctx.input_ids.shape[0] - 1)
        history = self.req_states.all_token_ids.gpu
        committed = history[slot[:, None], q.clamp(0, history.shape[1] - 1)].long()
        tokens = torch.where(from_rows, ctx.input_ids[src].long(), committed)
        tokens = torch.where(real, tokens, 0).clamp_min(0)
        commit_end = torch.where(local == 0, first_pos, -1)
        return self.cache.step(slot, tokens, q, real, base, commit_end)[:, -1]
