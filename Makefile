# `make test` and `make demo` work on a fresh clone: they create .venv, install the project, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-all reliability demo train-demo bench clean

$(STAMP): pyproject.toml compat/nemo_gym/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "gym-rl needs Python 3.11 or newer; run e.g. make PYTHON=python3.11 $(MAKECMDGOALS)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the local CPU build, never the multi-GB CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# the opt-in NeMo Gym compatibility package (import name nemo_gym), so its tests run against the installed form
	$(BIN)/pip install --quiet -e compat/nemo_gym
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# The fault, bad-input, edge-probe, fuzz and soak suites in full (about 20 minutes; the soak alone holds load 10 minutes),
# then docs/reliability.md rewritten from the results. Their short forms run in `make test`.
reliability: $(STAMP)
	$(BIN)/python scripts/reliability.py

# The fine-tuned tiny model (model/builtin/tiny-sft) on the native engine, answering weather questions.
demo: $(STAMP)
	$(BIN)/python -m gym_core.demo examples/train_tiny/weather.yaml

# GRPO with TRL from builtin:tiny-sft against the same servers; the reward curve goes to runs/train_tiny/.
train-demo: $(STAMP)
	$(BIN)/python examples/train_tiny/grpo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/client.py
	$(BIN)/python benchmarks/engine.py --threads 1
	$(BIN)/python benchmarks/rollout_cpu.py --windows 2
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/policy_upstream.py
	$(BIN)/python benchmarks/policy_native.py

clean:
	rm -rf $(VENV) build *.egg-info
