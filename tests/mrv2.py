"""Model Runner V2's own objects, built on the CPU, and a driver that calls logits processors
the way MRV2 does (vllm/v1/worker/gpu in vLLM 0.32):

- model_runner.add_requests: RequestState.add_request stages the prompt in all_token_ids and
  total_len, then Sampler.add_request calls each processor's add_request(slot, params), whose
  results say whether the slot needs logits processing at all;
- model_runner, before the forward: RequestState.apply_staged_writes, then
  Sampler.apply_staged_writes calls each processor's apply_staged_writes();
- Sampler.apply_sampling_params (RejectionSampler._verify under speculative decoding): nothing
  when no request of the step needs processing, else the logits copied to a new float32 tensor, a frozen LogitsContext, processor.apply(logits, ctx)
  for each processor in turn, its return value taken as the logits;
- post_update after sampling: the accepted tokens appended to all_token_ids, total_len grown.

Rows are laid out as MRV2 lays them out: a request with k drafts owns k + 1 consecutive rows
(expand_idx_mapping); row j is fed the token at position total_len - 1 + j: the last committed
token, then draft j (gather_draft_sampled gives the fed tokens, -1 for the placeholder drafts of
a step that starts inside the prefill).

Two of vLLM's device kernels have no CPU build (Triton has no CPU backend here, so vLLM swaps in
placeholders): the staged-write kernel and the expand kernel. Their effect is done in torch
below, on vLLM's own staging lists.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from vllm.v1.worker.gpu import buffer_utils
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState


def request_state(max_num_reqs: int, max_model_len: int, vocab_size: int, num_speculative_steps: int = 3):
    """vLLM's RequestState on the CPU (no UVA: plain tensors stand in for the pinned views)."""
    from vllm.v1.worker.gpu.states import RequestState

    with mock.patch.object(buffer_utils, "is_uva_available", lambda: False):
        return RequestState(max_num_reqs, max_model_len, max_model_len, num_speculative_steps, vocab_size,
                            device=torch.device("cpu"))


def apply_write(t: buffer_utils.StagedWriteTensor) -> None:
    """StagedWriteTensor.apply_write with _apply_write_kernel's effect in torch: each staged
    write puts its contents at [index, start:] of the tensor."""
    rows = t.gpu.view(t.num_rows, -1)
    begin = 0
    for index, start, end in zip(t._staged_write_indices, t._staged_write_starts, t._staged_write_cu_lens):
        values = torch.tensor(t._staged_write_contents[begin:end], dtype=t.dtype)
        rows[index, start:start + len(values)] = values
        begin = end
    t.clear_staged_writes()


class MRV2:
    """MRV2's request state, its processors and one step's LogitsContext."""

    def __init__(self, max_num_reqs: int = 8, max_model_len: int = 256, vocab_size: int = 1000,
                 num_speculative_steps: int = 3):
        self.req_states = request_state(max_num_reqs, max_model_len, vocab_size, num_speculative_steps)
        self.lp_state = LogitsProcRequestState.from_request_state(self.req_states)
        self.processors: list = []
        self.needs_processing = np.zeros(max_num_reqs, dtype=bool)  # Sampler.needs_logits_processing

    def build(self, cls, vllm_config):
        """A processor as build_custom_logits_processors makes it: cls(vllm_config, lp_state)."""
        processor = cls(vllm_config, self.lp_state)
        self.processors.append(processor)
        return processor

    def slot(self, req_id: str) -> int:
        return self.req_states.req_id_to_index[req_id]

    def add_request(self, req_id: str, prompt: list[int], params, output: list[int] = (), max_tokens: int = 64) -> int:
        """A new (or resumed: prompt + output refilled) request; returns its slot."""
        self.req_states.add_request(req_id, len(prompt), list(prompt) + list(output), 0, max_tokens)
        slot = self.slot(req_id)
        self.needs_processing[slot] = any([processor.add_request(slot, params) for processor in self.processors])
        return slot

    def remove_request(self, req_id: str) -> None:
        self.req_states.remove_request(req_id)

    def apply_staged_writes(self) -> None:
        rs = self.req_states
        rs.prompt_len.copy_to_uva()
        rs.prefill_len.copy_to_uva()
        for name, value in vars(rs).items():
            if isinstance(value, buffer_utils.StagedWriteTensor):
                apply_write(value)
        for processor in self.processors:
            processor.apply_staged_writes()

    def commit(self, req_id: str, tokens: list[int]) -> None:
        """post_update: a step's accepted tokens appended to the request's history."""
        slot = self.slot(req_id)
        n = int(self.req_states.total_len.gpu[slot])
        self.req_states.all_token_ids.gpu[slot, n:n + len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.req_states.total_len.gpu[slot] = n + len(tokens)

    def tokens(self, req_id: str) -> list[int]:
        slot = self.slot(req_id)
        return self.req_states.all_token_ids.gpu[slot, : int(self.req_states.total_len.gpu[slot])].tolist()

    def context(self, req_ids: list[str], drafts: dict[str, list[int]] | None = None) -> LogitsContext:
        """The step's LogitsContext: requests in batch order, each with its drafts (a draft of
        -1 is a placeholder)."""
        drafts = drafts or {}
        idx_mapping_np = np.array([self.slot(r) for r in req_ids], dtype=np.int32)
        counts = np.array([len(drafts.get(r, ())) for r in req_ids], dtype=np.int64)
        total = self.req_states.total_len.gpu[torch.from_numpy(idx_mapping_np).long()].long()
        rows = torch.from_numpy(counts + 1)
        local = torch.cat([torch.arange(n) for n in rows.tolist()]).to(torch.int32) if len(req_ids) else \
            torch.zeros(0, dtype=torch.int32)
        last = torch.tensor([self.tokens(r)[-1] for r in req_ids], dtype=torch.int32)
        fed = [[int(last[i])] + list(drafts.get(r, ())) for i, r in enumerate(req_ids)]
        return LogitsContext(
            expanded_idx_mapping=torch.from_numpy(idx_mapping_np).long().repeat_interleave(rows),
            idx_mapping=torch.from_numpy(idx_mapping_np).long(),
            idx_mapping_np=idx_mapping_np,
            expanded_local_pos=local,
            input_ids=torch.tensor([t for f in fed for t in f], dtype=torch.int32),
            pos=(total - 1).repeat_interleave(rows) + local.long(),
            seq_lens_upper_bound_np=(total.numpy() + counts).astype(np.int32),
        )

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """apply_sampling_params up to the custom processors (skipped when no request of the
        step needs them)."""
        if not np.any(self.needs_processing[ctx.idx_mapping_np]):
            return logits
        out = torch.empty_like(logits, dtype=torch.float32).copy_(logits)
        for processor in self.processors:
            out = processor.apply(out, ctx)
        return out
