# `make demo` and `make test` each build .venv on first use (pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= demo
# Demo cohort size; the README's AUC was measured with these values.
DEMO_PATIENTS ?= 100
DEMO_SEED     ?= 0

.PHONY: venv demo test test-faults test-slurm test-browser lint bench clean-demo

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[cucim,dev]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not faults_slow and not slurm"

# The slower half of the fault suite: repeated fresh runs (races), signals, disk full.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults_slow

# The SLURM example on a real single-node scheduler (installs slurm-wlm + munge as root).
test-slurm: $(STAMP)
	@command -v slurmctld >/dev/null 2>&1 || test -x /usr/sbin/slurmctld || \
	    { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 && \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      slurm-wlm munge >/dev/null; } || \
	    echo "slurm-wlm/munge cannot be installed here; the SLURM test will say why it skips"
	$(BIN)/python -m pytest -q -rs -m slurm

# report.html in a real browser: Debian's chromium, headless (installed as root when missing).
# `make test` runs these too where chromium is installed, and skips them (saying why) elsewhere.
test-browser: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || \
	    { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 && \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium >/dev/null; } || \
	    echo "chromium cannot be installed here; the browser tests will say why they skip"
	$(BIN)/python -m pytest -q -rs -m browser

lint: $(STAMP)
	$(BIN)/ruff check balnmp_cache balnmp_mil tests examples benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy balnmp_cache balnmp_mil

# The whole pipeline on a generated cohort: slides -> features -> MIL -> metrics.
demo: $(STAMP)
	$(BIN)/python -m balnmp_cache.synthetic --out $(DEMO)/cohort \
	    --patients $(DEMO_PATIENTS) --seed $(DEMO_SEED)
	$(BIN)/extract-features $(DEMO)/cohort/slides --out $(DEMO)/features \
	    --annotations $(DEMO)/cohort/annotations --encoder resnet18 --weights none \
	    --mpp 0.5 --patch-size 224 --device cpu --skip-errors
	$(BIN)/balnmp-mil train $(DEMO)/features --labels $(DEMO)/cohort/clinical.csv \
	    --task n0_vs_n+ --model abmil --seed $(DEMO_SEED) --out $(DEMO)/run --overwrite
	@$(BIN)/python examples/demo_summary.py $(DEMO)

clean-demo:
	rm -rf $(DEMO)
