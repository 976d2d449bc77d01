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
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsProcessor as V2LogitsProcessor,
)

from real_vllm.integration import observability
from real_vllm.integration.state import COLUMNS, SlotTable
from real_vllm.methods import (PARAM_PREFIXES, SERVER_KEYS, SAMPLERS, SamplerRequest, check_vllm_params, edt,
                              parse_sampler_args, real)
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

# Set by the plugin when vLLM builds the engine config (in the process that validates requests):
# no_processors = speculative decoding on the V1 runner, which loads no plugin logits processor;
# defaults = the server-wide sampler settings (server_defaults), which a request falls back on.
SERVED = {"no_processors": False, "defaults": {}}

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
        """At admission (a ValueError is HTTP 400): the request's sampler arguments over the
        server defaults, and vLLM's temperature/top_p/min_p against EDT and REAL."""
        args = sampling_params.extra_args
        defaults = SERVED.get("defaults") or {}
        request = parse_sampler_args(args, defaults)
        check_vllm_params(request, sampling_params.temperature, sampling_params.top_p, sampling_params.min_p,
                          from_server="sampler" not in (args or {}) and "sampler" in defaults)
        if SERVED["no_processors"] and request.sampler != "none":
            raise ValueError(f"real_vllm: sampler {request.sampler} is unavailable on this server: vLLM's "
                             "V1 model runner applies no plugin logits processor under speculative decoding")

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
    #
    # MRV2 hands every logits row to apply(): under speculative decoding a request owns
    # 1 + its drafts consecutive rows, mapped to its slot by ctx.expanded_idx_mapping (device).
    # The host has only the per-request mapping (ctx.idx_mapping_np): LogitsContext carries no
    # host copy of the expanded mapping and no per-request draft counts (and with adaptive
    # verification the split is decided on the device). So, as MRV2's own samplers do, what
    # runs is decided per request on the host, and per-row parameters are gathered on the device.

    def _step_requests(self, num_rows: int, ctx: LogitsContext | None) -> np.ndarray:
        """The slot of every request of the step, on the host (never a device sync). Every
        request owns at least one row, so any/all over these equal any/all over the rows."""
        return np.arange(num_rows) if ctx is None else ctx.idx_mapping_np

    @staticmethod
    def _has_drafts(num_rows: int, ctx: LogitsContext | None) -> bool:
        """Whether rows and requests differ (MRV2 speculative decoding: draft rows)."""
        return ctx is not None and num_rows != len(ctx.idx_mapping_np)

    def _step_rows(self, num_rows: int, ctx: LogitsContext | None) -> np.ndarray:
        """The slot of every row, on the host. V1: row i is persistent-batch slot i. V2: the
        per-request mapping when there are no drafts. With drafts the row -> slot split is on
        the device only: when no request of the step runs a method of this processor the
        per-request slots are returned (nothing runs on any row, callers return early);
        otherwise ctx.expanded_idx_mapping is copied to the host, a device sync (processors
        that must not sync use _step_requests and device-side columns instead)."""
        slots = self._step_requests(num_rows, ctx)
        if not self._has_drafts(num_rows, ctx):
            return slots
        if not any(runs[slots].any() for runs in self.slots.runs.values()):
            return slots
        return ctx.expanded_idx_mapping.cpu().numpy()

    def _columns(self, num_rows: int, ctx: LogitsContext | None):
        """name -> that parameter of every row, on the device (rows of requests that do not
        run the method hold its identity value)."""
        if ctx is None:
            self.slots.flush()
            return lambda name: self.slots.column(name)[:num_rows]
        return lambda name: self.slots.column(name)[ctx.expanded_idx_mapping]

    def _to_device(self, host: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array on the processor's device: from pinned memory, without blocking the
        host (the pinned copy is fresh, so nothing overwrites it while the copy is queued)."""
        t = torch.from_numpy(np.ascontiguousarray(host)) if isinstance(host, np.ndarray) else host
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)


class RealVllmLogitsProcessor(SlotLogitsProcessor):
    """EDT and REAL as a vLLM logits processor."""

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        super().__init__(vllm_config, *runner_args)
        self._thf_status = "no THF checkpoint (--real-thf PATH)"
        self.thf = self._load_thf(vllm_config)
        self._warned_no_thf = False
        self.metrics = observability.recorder(vllm_config, self.device)
        observability.log_startup_summary(vllm_config, self.defaults, self.thf, self._thf_status)

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
            self._thf_status = (f"the shipped THF ({path}) is for another tokenizer than the served "
                                f"model's; REAL needs --real-thf or --real-retokenize")
            return None
        self._thf_status = (f"{path} ({'given' if chosen else 'shipped'}), its tokenizer in {path}, "
                            f"served tokenizer {vllm_config.model_config.tokenizer}")
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

    def _request(self, params: SamplingParams):
        request = super()._request(params)
        self.metrics.request(request.sampler)
        return request

    def is_argmax_invariant(self) -> bool:
        return True

    # ----------------------------------------------------------------- the step

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        num_rows = logits.shape[0]
        requests = self._step_requests(num_rows, ctx)
        run_edt = self.slots.runs["edt"][requests].any()
        run_real = self.slots.runs["real"][requests].any()
        if not (run_edt or run_real):
            return logits
        start = time.perf_counter()
        column = self._columns(num_rows, ctx)
        if not logits.is_contiguous():
            logits = logits.contiguous()
        if run_edt:  # every row: the others hold EDT's identity (t0 = 1, theta = 0)
            temperature = edt.apply_(logits, column("edt_t0"), column("edt_n"), column("edt_theta"))
            self.metrics.temperatures(observability.rows_of(self, "edt", temperature, requests, ctx))
        if run_real:
            top_p = self._real_thresholds(num_rows, ctx, requests, column)
            self.metrics.top_ps(observability.rows_of(self, "real", top_p, requests, ctx))
            real.apply_(logits, top_p)
        self.metrics.observe_seconds("edt_real", time.perf_counter() - start)
        return logits

    def _real_thresholds(self, num_rows: int, ctx, requests: np.ndarray, column) -> torch.Tensor:
        """p_t of every row: 1 for rows of other requests (REAL's identity: p0 = 1 at top-p
        decay), p0 for REAL rows at top-p decay (>= real.TOP_P_DECAY: no THF), the THF's
        forecast on the row's window for the others, in one batched forward. What needs the
        THF is decided per request on the host; the forward covers every row when every
        request needs it (no index at all), else, without drafts, the requests that need it
        (their rows' indices copied from pinned memory), else (drafts in a mixed batch: rows
        map to requests on the device only) every row, the forecast kept where the row's
        decay asks for one."""
        p0, decay = column("real_p0"), column("real_decay_temperature")
        host_decay = self.slots.host_column("real_decay_temperature").numpy()[requests]
        forecast = self.slots.runs["real"][requests] & (host_decay < real.TOP_P_DECAY)
        if not forecast.any():
            return p0
        if self.thf is None:
            if not self._warned_no_thf:
                logger.error("real_vllm: REAL requested but no THF checkpoint is loaded "
                             "(--real-thf PATH); those requests get plain top-p(real_p0)")
                self._warned_no_thf = True
            return p0
        if forecast.all():
            return real.threshold(self._residual_entropy(num_rows, None, None, ctx), p0, decay)
        if not self._has_drafts(num_rows, ctx):
            rows = np.flatnonzero(forecast)
            idx = self._to_device(rows)
            thresholds = p0.clone()
            d = self._residual_entropy(num_rows, rows, idx, ctx)
            thresholds[idx] = real.threshold(d, p0[idx], decay[idx])
            return thresholds
        every = real.threshold(self._residual_entropy(num_rows, None, None, ctx), p0, decay)
        return torch.where(decay < real.TOP_P_DECAY, every, p0)

    def _residual_entropy(self, num_rows: int, rows: np.ndarray | None, idx: torch.Tensor | None, ctx):
        """The THF's d on the windows of ``rows`` (host; ``idx``: the same on the device), or
        of every row when both are None."""
        with self.metrics.timed("thf"):
            windows, lengths = self._windows(num_rows, rows, idx, ctx)
            return self.thf.residual_entropy(windows, lengths)

    def _windows(self, num_rows: int, rows: np.ndarray | None, idx: torch.Tensor | None, ctx):
        """The last THF-window tokens of each row: prompt + output up to and including the
        token the row was fed (under speculative decoding: the request's drafts before the
        row), right-aligned in a [R, window] tensor (left padding), and their lengths."""
        width = self.thf.window
        if self.req_states is not None and self._retokenizer is None:
            return self._v2_windows(num_rows, idx, ctx, width)
        if self._has_drafts(num_rows, ctx):
            raise RuntimeError("real_vllm: REAL with --real-retokenize cannot run on speculative-"
                               "decoding draft rows (start-up refuses this combination)")
        rows = np.arange(num_rows) if rows is None else rows
        slots = self._step_requests(num_rows, ctx)[rows]  # no drafts: a row is a request
        if self._retokenizer is not None:
            sequences = self._retokenized(slots)
        else:  # V1: vLLM's token lists (a short slice per row)
            sequences = [self._v1_tail(*self.slots.tokens[s], width) for s in slots]
        windows, lengths = right_aligned_windows(sequences, width)
        return self._to_device(windows), self._to_device(lengths)

    @staticmethod
    def _known_len(output: list[int]) -> int:
        """The length of a V1 output list without its trailing async-scheduling placeholders
        (-1: tokens sampled on the device whose ids the host does not have yet; vLLM fills them
        in only for processors it was given by name, not for entry-point ones: vLLM issue
        52461). The THF then reads the sequence up to the last known token."""
        n = len(output)
        while n and output[n - 1] < 0:
            n -= 1
        return n

    @classmethod
    def _v1_tail(cls, prompt: list[int], output: list[int], width: int) -> list[int]:
        n = cls._known_len(output)
        tail = prompt[-width:] + output[max(0, n - width):n]
        return [t for t in tail if t >= 0] if any(t < 0 for t in tail) else tail

    def _v2_windows(self, num_rows: int, idx: torch.Tensor | None, ctx, width: int):
        """MRV2, on the device: a row fed the token at position ``pos`` reads positions
        pos - width + 1 .. pos. Its request's rows hold the tokens from the request's first
        row on (ctx.input_ids: the last committed token, then the drafts); earlier positions
        are committed, in req_states.all_token_ids. A draft row whose input is a placeholder
        (-1, drafts of a step that starts inside the prefill; its sample is rejected) reads
        the request's first row's window, so no placeholder reaches the THF."""
        dev = self.device
        row = torch.arange(num_rows, device=dev) if idx is None else idx
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

    def _retokenized(self, slots: np.ndarray) -> list[list[int]]:
        """Cross-tokenizer path: each row's new served tokens since the last step, fed to its
        TextHistory; the THF ids of each row's window (see real_vllm/thf/retokenize.py)."""
        retok = self._retokenizer
        if self.req_states is None:  # V1: the live token lists, without placeholders
            histories, new = [], []
            for prompt, output, history in (self.slots.tokens[s] for s in slots):
                n = self._known_len(output)
                start = retok.start(history, len(prompt) + n)
                histories.append(history)
                new.append(output[start - len(prompt):n] if start >= len(prompt) else prompt[start:] + output[:n])
            return retok.windows(histories, new)
        # V2: the text is made on the host, so the rows' lengths and new tokens are copied there
        # (two small device-to-host copies per step, which wait for the device; the
        # same-tokenizer path needs none).
        histories = [self.slots.tokens[s] for s in slots]
        slot_idx = self._to_device(slots.astype(np.int64))
        totals = self.req_states.total_len.gpu[slot_idx].tolist()
        starts = [retok.start(h, n) for h, n in zip(histories, totals)]
        span = max(n - a for a, n in zip(starts, totals))
        width = self.req_states.all_token_ids.gpu.shape[1]
        pos = self._to_device(np.asarray(starts, dtype=np.int64))[:, None] + torch.arange(span, device=self.device)[None, :]
        tokens = self.req_states.all_token_ids.gpu[slot_idx[:, None], pos.clamp_max(width - 1)]
        host = tokens.cpu().tolist()
        return retok.windows(histories, [row[: n - a] for row, a, n in zip(host, starts, totals)])
