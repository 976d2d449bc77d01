"""Opt-in timing of vLLM's own runner step (``REAL_VLLM_STEP_TIMING=1``; README: Observability).

Where a decode step's host time goes, next to what real_vllm's processors cost: the V1 model
runner's ``execute_model`` (input preparation, the model's forward, lm_head), inside it
``_model_forward`` (the model's layers), ``sample_tokens`` (sampling and bookkeeping), inside
it ``_sample`` (vLLM's Sampler, real_vllm's logits processors included), and real_vllm's
processors themselves (every ``apply`` and ``update_state``, early returns included). Each is
observed in ``real_vllm:step_seconds`` under its own part (PARTS) through the engine's
Recorder, so the numbers reach /metrics the way the processors' own parts do.

The runner's methods are private API: they are wrapped only with the variable set, on the
vLLM versions the plugin was verified on (plugin.register checks VERIFIED_VLLM first), and
only when every method is there; off, nothing is imported or
wrapped (no cost). Only the V1 runner is timed (the CPU's runner; Model Runner V2 is not).
The timers are time.perf_counter without a device sync: on the CPU the work is synchronous,
on CUDA they measure launch time.
"""

from __future__ import annotations

import functools
import logging
import os
import time

from real_vllm.integration import observability

logger = logging.getLogger("real_vllm")

ENV = "REAL_VLLM_STEP_TIMING"
_WRAPPED = "_real_vllm_step_timed"
# runner method -> its part in real_vllm:step_seconds
RUNNER_PARTS = {
    "execute_model": "vllm_execute_model",
    "_model_forward": "vllm_model_forward",
    "sample_tokens": "vllm_sample_tokens",
    "_sample": "vllm_sample",
}
# real_vllm's processor method -> its part
PROCESSOR_PARTS = {"apply": "processors_apply", "update_state": "processors_update"}
PARTS = {
    "vllm_execute_model": "vLLM's runner execute_model (input preparation, the model's forward, lm_head)",
    "vllm_model_forward": "vLLM's runner _model_forward (the model's layers), inside execute_model",
    "vllm_sample_tokens": "vLLM's runner sample_tokens (sampling and bookkeeping)",
    "vllm_sample": "vLLM's Sampler (real_vllm's processors_apply included), inside sample_tokens",
    "processors_apply": "real_vllm's logits processors' apply() (every call), inside vllm_sample",
    "processors_update": "real_vllm's logits processors' update_state(), inside execute_model",
}


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def install() -> bool:
    """With ``REAL_VLLM_STEP_TIMING`` set: wrap the V1 runner's step methods and real_vllm's
    processors (once per process); returns whether the timers are in place. plugin.register
    calls it only on the vLLM versions it verified (VERIFIED_VLLM)."""
    if not enabled():
        return False
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from real_vllm.integration.slot_processor import SlotLogitsProcessor

    missing = [name for name in RUNNER_PARTS if not callable(getattr(GPUModelRunner, name, None))]
    if missing:
        logger.warning("real_vllm: %s ignored: vLLM's V1 runner has no %s", ENV, ", ".join(missing))
        return False
    for cls, parts, metrics in ((GPUModelRunner, RUNNER_PARTS, _runner_metrics),
                                (SlotLogitsProcessor, PROCESSOR_PARTS, _processor_metrics)):
        for name, part in parts.items():
            method = getattr(cls, name)
            if not getattr(method, _WRAPPED, False):
                setattr(cls, name, _timed(method, part, metrics))
    return True


def _runner_metrics(runner) -> observability.Recorder:
    # The runner builds its logits processors with its own vllm_config: the same Recorder.
    return observability.recorder(runner.vllm_config, runner.device)


def _processor_metrics(processor) -> observability.Recorder:
    return processor.metrics


def _timed(method, part: str, metrics):
    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            metrics(self).observe_seconds(part, time.perf_counter() - start)

    setattr(timed, _WRAPPED, True)
    return timed
