"""One logits processor for both vLLM runners: the V1 runner (CPU, and GPU with
VLLM_USE_V2_MODEL_RUNNER=0) and Model Runner V2 (the default on CUDA in vLLM 0.32).

vLLM loads it from the ``vllm.logits_processors`` entry point in every engine. It reads
each request's sampler from ``SamplingParams.extra_args`` over the server default
(``additional_config``: ``--sampler`` / ``--additional-config``), keeps per-request
parameters in slot-indexed tensors, and applies the methods in place on the float32 logits:
EDT's temperature, then REAL's nucleus.

Where it runs: V2 calls it before temperature, min-p and top-k/top-p; in V1 it is
argmax-invariant (EDT rescales a row, REAL's nucleus keeps the top-1 token), so it runs
after vLLM's temperature and min-p and before top-k/top-p, and is skipped when the whole
batch is greedy. With vLLM's own temperature and top-p left at 1.0 (the defaults), both
places see the same logits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsProcessor as V2LogitsProcessor,
)

from real_vllm.integration.state import COLUMNS, SlotTable
from real_vllm.methods import PARAM_PREFIXES, SERVER_KEYS, SAMPLERS, SamplerRequest, edt, parse_sampler_args, real
from real_vllm.thf.retokenize import TextHistory
from real_vllm.thf.runtime import right_aligned_windows

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import (
        LogitsContext,
        LogitsProcRequestState,
    )

logger = logging.getLogger("real_vllm")

def server_defaults(vllm_config: VllmConfig) -> dict[str, Any]:
    """The sampler settings in ``additional_config``, validated (a bad one stops start-up)."""
    extra = dict(getattr(vllm_config, "additional_config", None) or {})
    defaults = {
        k: v
        for k, v in extra.items()
        if k == "sampler" or (k.startswith(PARAM_PREFIXES) and k not in SERVER_KEYS)
    }
    try:
        parse_sampler_args(defaults)
    except ValueError as e:
        raise ValueError(f"real_vllm: bad server-wide sampler setting: {e}") from None
    return defaults


class SlotLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """What both of real_vllm's processors share: the runner's constructor arguments, the
    requests' parameters in a SlotTable of ``COLUMNS``, V1 batch updates and V2 slots, and
    the per-row parameter columns of a step."""

    COLUMNS: dict[str, dict[str, float]] = COLUMNS

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        self.defaults = server_defaults(vllm_config)
        self.req_states: LogitsProcRequestState | None = None
        if len(runner_args) == 1:  # Model Runner V2: (req_states,)
            self.req_states = runner_args[0]
            device, pin, num_slots = self.req_states.device, False, self.req_states.max_num_reqs
        else:  # V1: (device, is_pin_memory)
            device, pin = runner_args
            num_slots = vllm_config.scheduler_config.max_num_seqs
        self.device = torch.device(device)
        self.slots = SlotTable(num_slots, device, pin_memory=pin and self.device.type != "cpu", columns=self.COLUMNS)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        parse_sampler_args(sampling_params.extra_args)

    def _request(self, params: SamplingParams) -> SamplerRequest:
        return parse_sampler_args(params.extra_args, self.defaults)

    def _tokens(self, prompt_ids, output_ids):
        """What a slot keeps of a V1 request's tokens (nothing, unless a method reads them)."""
        return None

    # ----------------------------------------------------------------- V1 runner

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.clear(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self.slots.set(index, self._request(params), self._tokens(prompt_ids, output_ids))
        for a, b, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                self.slots.swap(a, b)
            else:
                self.slots.move(a, b)

    # ----------------------------------------------------------------- V2 runner

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return self.slots.set(req_idx, self._request(sampling_params))

    def apply_staged_writes(self) -> None:
        self.slots.flush()

    # ----------------------------------------------------------------- a step

    def _step_rows(self, num_rows: int, ctx: LogitsContext | None) -> np.ndarray:
        """The slot of every row, on the host (decides what runs without a device sync).
        V1: row i is persistent-batch slot i. V2: the context maps rows to slots."""
        return np.arange(num_rows) if ctx is None else ctx.idx_mapping_np

    def _columns(self, num_rows: int, ctx: LogitsContext | None):
        """name -> that parameter of every row, on the device."""
        if ctx is None:
            self.slots.flush()
            return lambda name: self.slots.column(name)[:num_rows]
        return lambda name: self.slots.column(name)[ctx.expanded_idx_mapping]


class RealVllmLogitsProcessor(SlotLogitsProcessor):
    """EDT and REAL as a vLLM logits processor."""

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        super().__init__(vllm_config, *runner_args)
        self.thf = self._load_thf(vllm_config)
        self._warned_no_thf = False

    def _load_thf(self, vllm_config: VllmConfig):
        """The THF for REAL rows. A THF the user named (--real-thf, $REAL_VLLM_THF) must load;
        the shipped one (trained for the default model's tokenizer) is used when it fits the
        served model, else REAL is unavailable, which is an error only for a REAL default."""
        from real_vllm.thf.runtime import THFRuntime, TokenizerMismatch, resolve_checkpoint

        extra = getattr(vllm_config, "additional_config", None) or {}
        path, chosen = resolve_checkpoint(extra.get("real_thf"))
        retokenize = extra.get("real_retokenize", False)
        if not isinstance(retokenize, bool):
            raise ValueError(f"real_vllm: real_retokenize must be true or false, got {retokenize!r}")
        real_default = "real" in SAMPLERS[self.defaults.get("sampler", "none")]
        if path is None:
            if real_default:
                raise ValueError(
                    "real_vllm: --sampler real needs a THF checkpoint: pass --real-thf PATH "
                    "(train one with `real-vllm thf train`, see the README)"
                )
            return None
        try:
            thf = THFRuntime.load(path, self.device, tokenizer=vllm_config.model_config.tokenizer,
                                  retokenize=retokenize)
        except TokenizerMismatch:
            if chosen or real_default:
                raise
            logger.info("real_vllm: the shipped THF is for another tokenizer; REAL needs --real-thf "
                        "or --real-retokenize")
            return None
        if thf.retokenizer is not None:
            logger.info("real_vllm: REAL re-tokenises the served text with the THF's tokenizer (%s)", path)
        return thf

    @property
    def _retokenizer(self):
        """The cross-tokenizer path's Retokenizer, None when REAL reads the served ids directly."""
        return self.thf.retokenizer if self.thf is not None else None

    def _tokens(self, prompt_ids, output_ids):
        # output_ids is vLLM's live list: REAL reads the newest tokens from it each step.
        if self._retokenizer is not None:
            return (prompt_ids or [], output_ids, TextHistory())
        return (prompt_ids or [], output_ids)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        runs = super().add_request(req_idx, sampling_params)
        if self._retokenizer is not None:
            self.slots.tokens[req_idx] = TextHistory()  # V2: the tokens stay in the runner
        return runs

    def is_argmax_invariant(self) -> bool:
        return True

    # ----------------------------------------------------------------- the step

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        num_rows = logits.shape[0]
        host_slots = self._step_rows(num_rows, ctx)
        run_edt = self.slots.runs["edt"][host_slots]
        run_real = self.slots.runs["real"][host_slots]
        if not (run_edt.any() or run_real.any()):
            return logits
        column = self._columns(num_rows, ctx)
        if not logits.is_contiguous():
            logits = logits.contiguous()
        if run_edt.any():
            edt.apply_(logits, column("edt_t0"), column("edt_n"), column("edt_theta"))
        if run_real.any():
            rows = np.flatnonzero(run_real)
            idx = torch.from_numpy(rows).to(logits.device)
            top_p = torch.ones(num_rows, dtype=torch.float32, device=logits.device)
            top_p[idx] = self._real_thresholds(rows, idx, host_slots, column)
            real.apply_(logits, top_p)
        return logits

    def _real_thresholds(self, rows: np.ndarray, idx: torch.Tensor, host_slots: np.ndarray, column) -> torch.Tensor:
        """p_t of the REAL rows (``idx``: the same rows on the device): one batched THF
        forward on the last tokens of the rows that need it. Rows whose decay is at least
        real.TOP_P_DECAY are plain top-p(p0) and skip the THF (decided on the host copy)."""
        p0, decay = column("real_p0")[idx], column("real_decay_temperature")[idx]
        host_decay = self.slots.host_column("real_decay_temperature").numpy()[host_slots[rows]]
        forecast = host_decay < real.TOP_P_DECAY
        if not forecast.any():
            return p0
        if self.thf is None:
            if not self._warned_no_thf:
                logger.error("real_vllm: REAL requested but no THF checkpoint is loaded "
                             "(--real-thf PATH); those requests get plain top-p(real_p0)")
                self._warned_no_thf = True
            return p0
        if forecast.all():
            windows, lengths = self._windows(rows, host_slots)
            return real.threshold(self.thf.residual_entropy(windows, lengths), p0, decay)
        sub = np.flatnonzero(forecast)
        sub_idx = torch.from_numpy(sub).to(p0.device)
        windows, lengths = self._windows(rows[sub], host_slots)
        thresholds = p0.clone()
        thresholds[sub_idx] = real.threshold(self.thf.residual_entropy(windows, lengths), p0[sub_idx], decay[sub_idx])
        return thresholds

    def _windows(self, rows: np.ndarray, host_slots: np.ndarray):
        """The last THF-window tokens (prompt + output so far) of each row, right-aligned in
        a [R, window] tensor (left padding), and their lengths."""
        width = self.thf.window
        slots = host_slots[rows]
        if self._retokenizer is not None:
            windows, lengths = right_aligned_windows(self._retokenized(slots), width)
            return windows.to(self.device), lengths.to(self.device)
        if self.req_states is None:  # V1: vLLM's token lists (a short slice per row)
            tails = [prompt[-width:] + output[-width:] for prompt, output in (self.slots.tokens[s] for s in slots)]
            windows, lengths = right_aligned_windows(tails, width)
            return windows.to(self.device), lengths.to(self.device)
        # V2: gather from the runner's on-device token history, no host loop.
        slot_idx = torch.from_numpy(slots).to(self.device)
        total = self.req_states.total_len.gpu[slot_idx].long()
        offsets = torch.arange(width, device=self.device) - width
        pos = total[:, None] + offsets[None, :]
        valid = pos >= 0
        tokens = self.req_states.all_token_ids.gpu[slot_idx[:, None], pos.clamp_min(0)]
        return torch.where(valid, tokens.long(), 0), total.clamp_max(width)

    def _retokenized(self, slots: np.ndarray) -> list[list[int]]:
        """Cross-tokenizer path: each row's new served tokens since the last step, fed to its
        TextHistory; the THF ids of each row's window (see real_vllm/thf/retokenize.py)."""
        retok = self._retokenizer
        if self.req_states is None:  # V1: the live token lists
            histories, new = [], []
            for prompt, output, history in (self.slots.tokens[s] for s in slots):
                start = retok.start(history, len(prompt) + len(output))
                histories.append(history)
                new.append(output[start - len(prompt):] if start >= len(prompt) else prompt[start:] + output)
            return retok.windows(histories, new)
        # V2: the text is made on the host, so the rows' lengths and new tokens are copied there
        # (two small copies per step; the same-tokenizer path needs none).
        histories = [self.slots.tokens[s] for s in slots]
        slot_idx = torch.from_numpy(slots).to(self.device)
        totals = self.req_states.total_len.gpu[slot_idx].tolist()
        starts = [retok.start(h, n) for h, n in zip(histories, totals)]
        span = max(n - a for a, n in zip(starts, totals))
        pos = torch.tensor(starts, device=self.device)[:, None] + torch.arange(span, device=self.device)[None, :]
        tokens = self.req_states.all_token_ids.gpu[slot_idx[:, None], pos.clamp_max(self.req_states.all_token_ids.gpu.shape[1] - 1)]
        host = tokens.cpu().tolist()
        return retok.windows(histories, [row[: n - a] for row, a, n in zip(host, starts, totals)])
