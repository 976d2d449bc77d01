"""The plugin's logging and Prometheus metrics (README: Observability).

Logging: the ``real_vllm`` logger is made a child of vLLM's ``vllm`` logger (its ``parent``),
so its records go through vLLM's handler, format and level (``VLLM_LOGGING_LEVEL``,
``VLLM_LOGGING_CONFIG_PATH``, JSON logs) in every process that loads the plugin: the API
server, the engine core and the workers. With ``VLLM_CONFIGURE_LOGGING=0`` vLLM configures
nothing and neither does this module.

Metrics: the logits processors run in the worker processes, but ``/metrics`` is served by
the API server from its own registry: vLLM 0.32 ships engine-side numbers to the front end
only as its fixed SchedulerStats/IterationStats (a stat-logger plugin, entry-point group
``vllm.stat_logger_plugins``, runs in the front end and sees only those), and uses
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) only with several API
servers. So the workers write their metrics in prometheus_client's multiprocess file format
(one mmap file per process and type, ``counter_real_vllm-<pid>.db`` ...) and the API server
reads them with prometheus_client's ``MultiProcessCollector``:

- with ``PROMETHEUS_MULTIPROC_DIR`` set (several API servers, or set by the user) vLLM's
  /metrics already reads every file of that folder, so the workers write there;
- otherwise the first process that loads the plugin (the API server, or the script that
  makes an ``LLM``) makes a private folder, passes it to its children in
  ``$REAL_VLLM_METRICS_DIR`` and registers a ``MultiProcessCollector`` over it in
  prometheus_client's default registry, the one vLLM's /metrics then serves.

Hot path: counters and timings are host numbers; EDT's T and REAL's p_t stay on the device
and are counted there (torch.bucketize + scatter_add_ into a small float64 tensor, no sync);
a daemon thread writes the files every ``FLUSH_SECONDS``. On CUDA the device histogram is
copied to pinned memory without blocking (at most once per ``FLUSH_SECONDS``, from a step)
and the thread takes the copy once its event has completed, so T and p_t may lag by one
flush interval; on the CPU the thread reads the tensor itself. Timings are
time.perf_counter around each part without a device sync: on CUDA they measure the host's
time in the part (launches, plus any sync the part makes itself), not the kernels.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger("real_vllm")

ENV_DIR = "REAL_VLLM_METRICS_DIR"
FLUSH_SECONDS = 0.5
PREFIX = "real_vllm:"

# Histogram buckets (upper bounds; +Inf is added). T is t0 * scale, scale in (0, 1].
TEMPERATURE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0)
TOP_P_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SECONDS_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)
# What each part of real_vllm:step_seconds measures.
PARTS = {
    "edt_real": "the EDT/REAL processor's whole apply() (THF forward included)",
    "edt": "EDT: the entropy pass and the scaling",
    "real": "REAL: the thresholds (THF forward included) and the nucleus",
    "thf": "REAL's THF forward (windows, THF, residual entropy)",
    "early": "the SLED/DoLa processor's whole apply() (projections included)",
    "sled": "SLED: the early layers' logits and the evolution",
    "dola": "DoLa: the early layers' logits and the contrast",
    # with REAL_VLLM_STEP_TIMING=1 also step_timing.PARTS: vLLM's runner step and the processors
}
HELP = {
    "requests": "Requests the real_vllm logits processors admitted to a batch, by resolved sampler "
                "(server default applied; a request resumed after preemption counts again).",
    "step_seconds": "Host seconds per engine step, by part: real_vllm's, and with REAL_VLLM_STEP_TIMING=1 "
                    "vLLM's runner's (no device sync: on CUDA launch time, not kernel time); observed "
                    "on steps where the part ran.",
    "edt_temperature": "EDT's temperature T of each EDT row at each step.",
    "real_top_p": "REAL's nucleus threshold p_t of each REAL row at each step.",
}

# ----------------------------------------------------------------------------- logging


def route_logging() -> None:
    """Make ``real_vllm`` log through vLLM's logging (parent = the ``vllm`` logger)."""
    import vllm.envs as envs

    if not envs.VLLM_CONFIGURE_LOGGING:
        return
    ours = logging.getLogger("real_vllm")
    if ours.parent is not logging.getLogger("vllm"):
        ours.parent = logging.getLogger("vllm")


# ----------------------------------------------------------------------------- metrics folder

_collector = None


def metrics_dir() -> str | None:
    """Where this process's metric files go (None: no server reads them, keep them in memory)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(ENV_DIR) or None


def setup_metrics_dir(front_end: bool = False) -> None:
    """In the first process that loads the plugin: make the folder its children write to and
    read it into prometheus_client's default registry (vLLM's /metrics with one API server).

    ``front_end``: this process serves /metrics (``vllm serve``'s API server, which parses the
    CLI): it reads a folder of its own even where it inherited another's $REAL_VLLM_METRICS_DIR
    (a script or test that loaded the plugin, then started a server as a child process)."""
    global _collector
    if _collector is not None or (os.environ.get(ENV_DIR) and not front_end):
        return
    from prometheus_client import REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    path = tempfile.mkdtemp(prefix="real_vllm_metrics_")
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    os.environ[ENV_DIR] = path
    _collector = MultiProcessCollector(REGISTRY, path=path)


# ----------------------------------------------------------------------------- the recorder


class _Histogram:
    """Host-side histogram of one label set: per-bucket counts (non-cumulative) and the sum."""

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0.0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class DeviceHistogram:
    """A histogram of device values counted on the device: ``add`` launches a bucketize and a
    scatter_add_ (no sync); ``snapshot`` gives (per-bucket counts, sum) on the host."""

    def __init__(self, bounds, device: torch.device):
        self.bounds_list = tuple(bounds)
        self.device = torch.device(device)
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.bounds = torch.tensor(bounds, dtype=torch.float32, device=self.device)
        self.state = torch.zeros(len(bounds) + 2, dtype=dtype, device=self.device)  # buckets, +Inf, sum
        # On the CPU the values are host memory: numpy counts them for a fraction of torch's op cost.
        self._np_bounds = np.asarray(bounds, dtype=np.float32)
        self._np_state = self.state.numpy() if self.device.type == "cpu" else None
        self._host = None
        self._event = None
        self._taken = None  # the latest completed host copy (CUDA)
        self._copied_at = 0.0

    def add(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        values = values.detach().reshape(-1)
        if self._np_state is not None:
            v = values.numpy()
            self._np_state[:-1] += np.bincount(np.searchsorted(self._np_bounds, v, side="left"),
                                               minlength=len(self._np_state) - 1)
            self._np_state[-1] += float(v.sum(dtype=np.float64))
            return
        idx = torch.bucketize(values.float(), self.bounds)  # first bound >= v: Prometheus' le
        self.state.scatter_add_(0, idx, torch.ones_like(idx, dtype=self.state.dtype))
        self.state[-1:].add_(values.sum().to(self.state.dtype))
        if self.device.type == "cuda":
            now = time.monotonic()
            if now - self._copied_at >= FLUSH_SECONDS:
                self._copied_at = now
                self._copy_async()

    def _copy_async(self) -> None:
        if self._host is None:
            self._host = torch.empty_like(self.state, device="cpu").pin_memory()
            self._event = torch.cuda.Event()
        elif not self._event.query():
            return  # the previous copy is still queued
        self._harvest()
        self._host.copy_(self.state, non_blocking=True)
        self._event.record()

    def _harvest(self) -> None:
        if self._event is not None and self._event.query():
            self._taken = self._host.tolist()

    def snapshot(self) -> tuple[list[float], float] | None:
        if self.device.type == "cuda":
            self._harvest()
            values = self._taken
        elif self.device.type == "cpu":
            values = self.state.tolist()
        else:
            values = None  # other devices: only what an explicit sync would give
        if values is None:
            return None
        return values[:-1], values[-1]


class Recorder:
    """One engine's metrics in one worker process (real_vllm's processors share it)."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, tag: str = "0"):
        self.tag = tag
        self.summarised = False
        self.device = torch.device(device)
        name = getattr(vllm_config.model_config, "served_model_name", None) or getattr(
            vllm_config.model_config, "model", "")
        name = name[0] if isinstance(name, (list, tuple)) else name
        engine = str(getattr(getattr(vllm_config, "parallel_config", None), "data_parallel_rank", 0))
        self.labels = {"model_name": str(name), "engine": engine}
        # Every tensor-parallel rank runs the same rows: only rank 0 reports them.
        self.enabled = _tp_rank() == 0
        self.requests: dict[str, float] = {}
        self.seconds: dict[str, _Histogram] = {}
        self.temperature = DeviceHistogram(TEMPERATURE_BUCKETS, self.device)
        self.top_p = DeviceHistogram(TOP_P_BUCKETS, self.device)
        # method -> (metric, histogram) of the per-row values its apply() returns
        self.method_values = {"edt": ("edt_temperature", self.temperature), "real": ("real_top_p", self.top_p)}
        self._lock = threading.Lock()
        self._files = {}
        self._thread = None
        self._dirty = False

    # --------------------------------------------------------------- what the processors call

    def request(self, sampler: str) -> None:
        if self.enabled:
            self.requests[sampler] = self.requests.get(sampler, 0.0) + 1.0
            self._touch()

    @contextmanager
    def timed(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.enabled:
                self.observe_seconds(part, time.perf_counter() - start)

    def observe_seconds(self, part: str, seconds: float) -> None:
        if not self.enabled:
            return
        hist = self.seconds.get(part)
        if hist is None:
            hist = self.seconds[part] = _Histogram(SECONDS_BUCKETS)
        hist.observe(seconds)
        self._touch()

    def method_rows(self, method: str, values: torch.Tensor | None) -> None:
        """Count the per-row values a method's apply() returned (its rows only; None: not
        recorded this step) in that method's histogram, if it has one."""
        if self.enabled and values is not None and method in self.method_values:
            self.method_values[method][1].add(values)
            self._touch()

    # --------------------------------------------------------------- files

    def _touch(self) -> None:
        self._dirty = True
        if self._thread is None and metrics_dir() is not None:
            self._thread = threading.Thread(target=self._run, name="real_vllm-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # never let metrics take the engine down
                logger.exception("real_vllm: writing metrics failed; metrics stop here")
                return

    def flush(self) -> None:
        """Write the cumulative values to this process's multiprocess files."""
        path = metrics_dir()
        if path is None or not self._dirty:
            return
        from prometheus_client.mmap_dict import MmapedDict, mmap_key
        from prometheus_client.utils import floatToGoString

        with self._lock:
            self._dirty = False
            if not self._files:
                pid = os.getpid()
                # Not counter_<pid>.db: vLLM's own multiprocess values in this process use that.
                self._files = {t: MmapedDict(os.path.join(path, f"{t}_real_vllm-{pid}-{self.tag}.db"))
                               for t in ("counter", "histogram")}
            names, values = list(self.labels), list(self.labels.values())

            def write(typ, metric, sample, extra_names, extra_values, value, help_key):
                key = mmap_key(PREFIX + metric, PREFIX + sample, names + extra_names,
                               values + extra_values, HELP[help_key])
                self._files[typ].write_value(key, float(value), 0.0)

            for sampler, n in list(self.requests.items()):
                write("counter", "requests", "requests_total", ["sampler"], [sampler], n, "requests")

            def histogram(metric, bounds, counts, total, extra_names=(), extra_values=()):
                extra_names, extra_values = list(extra_names), list(extra_values)
                for bound, count in zip((*bounds, float("inf")), counts):
                    write("histogram", metric, metric + "_bucket", extra_names + ["le"],
                          extra_values + [floatToGoString(bound)], count, metric)
                write("histogram", metric, metric + "_sum", extra_names, extra_values, total, metric)

            for part, hist in list(self.seconds.items()):
                histogram("step_seconds", SECONDS_BUCKETS, list(hist.counts), hist.sum, ["part"], [part])
            for metric, device_hist in list(self.method_values.values()):
                snap = device_hist.snapshot()
                if snap is not None and snap[0] and any(snap[0]):
                    histogram(metric, device_hist.bounds_list, *snap)


def _tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except Exception:  # not initialised (a processor built outside an engine)
        return 0


_recorders: dict[int, tuple[object, Recorder]] = {}


def _ref(obj):
    try:
        return weakref.ref(obj)
    except TypeError:  # a test's stand-in config: kept alive, so its id is not reused
        return lambda: obj


def recorder(vllm_config: VllmConfig, device: torch.device) -> Recorder:
    """The engine's Recorder in this process (shared by real_vllm's two processors)."""
    key = id(vllm_config)
    ref, found = _recorders.get(key, (None, None))
    if ref is None or ref() is not vllm_config:
        found = Recorder(vllm_config, device, tag=str(len(_recorders)))
        _recorders[key] = (_ref(vllm_config), found)
    return found


# ----------------------------------------------------------------------------- start-up summary

def log_startup_summary(vllm_config: VllmConfig, defaults: dict, thf, thf_status: str) -> None:
    """Once per engine (tensor-parallel rank 0): what this server serves."""
    from real_vllm import __version__
    from real_vllm.integration import early_models
    from real_vllm.methods import SAMPLERS, uses_early_layers

    rec = recorder(vllm_config, torch.device("cpu"))
    if rec.summarised or _tp_rank() != 0:
        return
    rec.summarised = True
    hf_config = getattr(vllm_config.model_config, "hf_config", None)
    sled_layers = getattr(hf_config, early_models.SLED_LAYERS, None)
    dola_layers = getattr(hf_config, early_models.DOLA_LAYERS, None)
    wrapped = sled_layers is not None or dola_layers is not None
    served = [s for s in SAMPLERS if wrapped or not uses_early_layers(s)]
    if thf is None:
        served = [s for s in served if "real" not in SAMPLERS[s]]
    default = defaults.get("sampler", "none")
    logger.info("real_vllm %s: samplers served: %s; server default: %s", __version__, ", ".join(served), default)
    if thf is not None:
        retok = " (re-tokenising the served text)" if thf.retokenizer is not None else ""
        kind = (" (sliding window: per-request key/value cache, one new token per layer per step)"
                if thf.incremental else "")
        logger.info("real_vllm: REAL's THF: %s", thf_status + retok + kind)
    else:
        logger.info("real_vllm: REAL unavailable (its requests get plain top-p(real_p0)): %s", thf_status)
    if wrapped:
        logger.info("real_vllm: early layers tapped: SLED %s, DoLa candidates %s",
                    _layers(sled_layers), _layers(dola_layers))
    else:
        logger.info("real_vllm: early layers not tapped (SLED/DoLa need a server started with "
                    "--sampler sled/dola or a combination with them)")


def _layers(layers) -> str:
    if layers is None:
        return "none"
    layers = list(layers)
    return f"{len(layers)} layers {layers}" if len(layers) > 8 else str(layers)
