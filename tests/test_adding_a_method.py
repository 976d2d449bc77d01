"""A new per-request method is one file in real_vllm/methods/ (README, "Adding a method"): the
README's example, dropped into a copy of the package, is discovered, gets its samplers, its
request validation, its slot columns, and runs in the right processor after EDT."""

import subprocess
import sys
import textwrap
from pathlib import Path

import real_vllm

PACKAGE = Path(real_vllm.__file__).parent

ETA = '''
from dataclasses import dataclass

import torch

from real_vllm.methods.base import Method, Stage
from real_vllm.methods.params import require_number


@dataclass(frozen=True)
class EtaConfig:
    eta: float = 3e-4
    PARAMS = {"eta_eta": "eta"}
    IDENTITY = {"eta_eta": 0.0}

    def __post_init__(self):
        object.__setattr__(self, "eta", require_number("eta_eta", self.eta, ge=0, lt=1))


class Eta(Method):
    name, stage, config = "eta", Stage.TRUNCATION, EtaConfig

    def apply(self, logits, step):
        probs = logits.softmax(-1)
        drop = probs < step.column("eta_eta")[:, None]
        drop.scatter_(1, logits.argmax(-1, keepdim=True), False)
        logits.masked_fill_(drop, float("-inf"))


METHOD = Eta()
'''

CHECK = '''
from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from real_vllm import reference
from real_vllm.integration.early_processor import EarlyLayerLogitsProcessor
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods import SAMPLERS, check_vllm_params, parse_sampler_args

assert {"eta", "edt+eta", "sled+eta", "sled+edt+eta"} <= set(SAMPLERS), list(SAMPLERS)
assert "real+eta" not in SAMPLERS  # one method per stage: REAL and eta are both truncations
with pytest.raises(ValueError, match="eta_eta must be >= 0 and < 1"):
    parse_sampler_args({"sampler": "eta", "eta_eta": 1.5})
with pytest.raises(ValueError, match="did you mean 'eta_eta'"):
    parse_sampler_args({"sampler": "eta", "eta_etaa": 0.1})

# vLLM's own parameters: min_p and temperature sit on different sides of eta on the two
# runners (refused, with the sampler that moves a temperature in front); top_p composes.
eta_only = parse_sampler_args({"sampler": "eta"})
with pytest.raises(ValueError, match="min_p 0.1 cannot be combined with sampler eta: vLLM applies it before ETA"):
    check_vllm_params(eta_only, 1.0, 1.0, 0.1)
with pytest.raises(ValueError, match=r"temperature 0.7 .* use sampler edt[+]eta with edt_theta 0"):
    check_vllm_params(eta_only, 0.7, 1.0, 0.0)
check_vllm_params(eta_only, 1.0, 0.9, 0.0)
check_vllm_params(eta_only, 0.0, 0.9, 0.1)  # greedy

assert [m.name for m in RealVllmLogitsProcessor.METHODS] == ["edt", "eta", "real"]
assert "eta" not in [m.name for m in EarlyLayerLogitsProcessor.METHODS]
config = SimpleNamespace(additional_config={}, scheduler_config=SimpleNamespace(max_num_seqs=4),
                         model_config=SimpleNamespace(tokenizer=None))
proc = RealVllmLogitsProcessor(config, torch.device("cpu"), False)
requests = [SamplingParams(extra_args={"sampler": "edt+eta", "eta_eta": 0.01, "edt_theta": 0.0, "edt_t0": 0.5}),
            SamplingParams(), SamplingParams(extra_args={"sampler": "eta", "eta_eta": 0.002})]
proc.update_state(BatchUpdate(3, removed=[], added=[(i, r, [], []) for i, r in enumerate(requests)], moved=[]))
x = torch.randn(3, 301, generator=torch.Generator().manual_seed(0)) * 3
out = proc.apply(x.clone())
scaled = x[0] / 0.5  # EDT first (theta 0: a fixed temperature), then eta on the scaled row
for got, row, eta in ((out[0], scaled, 0.01), (out[2], x[2], 0.002)):
    keep = row.softmax(-1) >= eta
    keep[row.argmax()] = True
    assert torch.equal(got.isfinite(), keep)
    torch.testing.assert_close(got[keep], row[keep])
assert torch.equal(out[1], x[1])  # a plain row: eta's identity column (0) keeps every token
print("ok")
'''


def test_a_method_file_is_all_it_takes(tmp_path):
    root = tmp_path / "real_vllm"
    root.mkdir()
    for entry in PACKAGE.iterdir():
        if entry.name not in ("methods", "__pycache__"):
            (root / entry.name).symlink_to(entry)
    (root / "methods").mkdir()
    for entry in (PACKAGE / "methods").iterdir():
        if entry.name != "__pycache__":
            (root / "methods" / entry.name).symlink_to(entry)
    (root / "methods" / "eta.py").write_text(textwrap.dedent(ETA))
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
