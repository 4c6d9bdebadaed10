# make demo : set up the virtual environment (once), run the workflow on the default config
#             (embedded digits data set), build the Snakemake report.
# make test : the same set-up plus the development tools (requirements-dev.txt), then the whole
#             test suite.
# make test-quick : the same, but only the unit and contract tests (no Snakemake run, no wheel or
#             virtual environment built, no SLURM): the loop while changing code, a few minutes.
# make lint : snakemake --lint, ruff and snakefmt checks;  make format : apply the formatters.
#
# Options (on the command line, e.g. `make demo PYTHON=python3.11 TORCH=cpu`):
#   PYTHON=python3.11   the interpreter that creates the virtual environment (Python >= 3.11)
#   TORCH=cpu           PyTorch's CPU-only build (no NVIDIA libraries, no triton: for laptops and
#                       small home quotas); the default, TORCH=default, is PyPI's torch, a CUDA build
#                       that also runs on the CPU.
#   TORCH_INDEX=URL     where TORCH=cpu looks for $(TORCH_CPU) (default: PyTorch's CPU wheel index;
#                       point it to a mirror if your site has one). It is asked first whether it
#                       answers (5 s); if not, the fallback below is installed at once.
#   VENV=DIR            where the virtual environment goes (default .venv)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-installed-stamp
CORES  ?= all
TORCH  ?= default
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_CPU ?= torch==2.14.1+cpu
# Tried when $(TORCH_CPU) cannot be had (index unreachable): a CPU build that pip finds in its own
# configured indexes or --find-links directories (pip.conf, PIP_FIND_LINKS), e.g. a local wheel.
TORCH_CPU_FALLBACK ?= torch==2.13.0+cpu
PY_MIN := 3.11
# Does a package index answer? (any HTTP reply counts; a file: index must exist). Exit status 0/1.
INDEX_PROBE := import os, sys, urllib.parse as p, urllib.request as r, urllib.error as e\nu = sys.argv[1]; s = p.urlsplit(u)\nif s.scheme in (\"\", \"file\"): sys.exit(not os.path.exists(p.unquote(s.path)))\ntry: r.urlopen(u, timeout=5)\nexcept e.HTTPError: pass

ifeq ($(filter $(TORCH),default cpu),)
$(error TORCH=$(TORCH) is not known: use TORCH=cpu (CPU-only build) or leave it out (PyPI's default build))
endif

.PHONY: demo test test-quick lint format report clean venv dev-venv check-python
.DEFAULT_GOAL := venv

# The interpreter is checked before anything is installed: the pinned packages need Python 3.11, and
# pip's resolver would otherwise fail deep inside the install with a message about versions.
# An existing environment is checked through its own python (it may have been made by another one).
check-python:
	@py="$(PYTHON)"; if [ -x "$(BIN)/python" ]; then py="$(BIN)/python"; fi; \
	if ! command -v "$$py" >/dev/null 2>&1; then \
	    echo "error: Python interpreter '$$py' not found; poisondetect needs Python >= $(PY_MIN): install it and pick it with 'make $(or $(MAKECMDGOALS),demo) PYTHON=python3.11'" >&2; exit 2; \
	fi; \
	v=$$("$$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || v=unknown; \
	major=$${v%%.*}; rest=$${v#*.}; minor=$${rest%%.*}; \
	case "$$major.$$minor" in *[!0-9.]*|.*|*.) major=0; minor=0;; esac; \
	if [ "$$major" -lt 3 ] || { [ "$$major" -eq 3 ] && [ "$$minor" -lt 11 ]; }; then \
	    if [ "$$py" = "$(BIN)/python" ]; then \
	        echo "error: $(VENV) was made with Python $$v, but poisondetect needs Python >= $(PY_MIN); remove it (rm -rf $(VENV)) and run 'make $(or $(MAKECMDGOALS),demo) PYTHON=python3.11' (any python3.11+ on your PATH)" >&2; \
	    else \
	        echo "error: $(PYTHON) is Python $$v, but poisondetect needs Python >= $(PY_MIN); pick another interpreter: 'make $(or $(MAKECMDGOALS),demo) PYTHON=python3.11' (any python3.11+ on your PATH, e.g. from your package manager, pyenv, conda or 'module load python/3.11' on a cluster)" >&2; \
	    fi; \
	    exit 2; \
	fi

$(STAMP): requirements.txt requirements.lock pyproject.toml | check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	@if $(BIN)/python -c "exec('$(INDEX_PROBE)')" "$(TORCH_INDEX)" >/dev/null 2>&1; then \
	    echo "TORCH=cpu: installing $(TORCH_CPU) from $(TORCH_INDEX)"; \
	    $(BIN)/python -m pip install --quiet --extra-index-url $(TORCH_INDEX) "$(TORCH_CPU)" \
	      || { echo "could not install $(TORCH_CPU) from $(TORCH_INDEX); trying $(TORCH_CPU_FALLBACK) (set TORCH_INDEX to a reachable mirror of the CPU index to get $(TORCH_CPU))" >&2; \
	           $(BIN)/python -m pip install --quiet "$(TORCH_CPU_FALLBACK)"; }; \
	else \
	    echo "TORCH=cpu: $(TORCH_INDEX) does not answer; installing $(TORCH_CPU_FALLBACK) from pip's own indexes instead (set TORCH_INDEX to a reachable mirror of the CPU index to get $(TORCH_CPU))" >&2; \
	    $(BIN)/python -m pip install --quiet "$(TORCH_CPU_FALLBACK)"; \
	fi
	$(BIN)/python -W ignore -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 'TORCH=cpu installed a CUDA build of torch ' + torch.__version__)"
	$(BIN)/python -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	grep -v '^torch==' requirements.txt > $(VENV)/requirements-cpu.txt
	grep -vE '^(torch|triton|nvidia-|cuda-)' requirements.lock > $(VENV)/requirements-cpu.lock
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements-cpu.txt \
	  -c $(VENV)/requirements-cpu.lock -c $(VENV)/torch-constraint.txt
else
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
endif
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Test and lint tools, for make test / lint / format only (a user's make demo does not need them).
# Constrained by the lock without its torch/CUDA lines: they never change the torch installed above.
$(DEV_STAMP): requirements-dev.txt requirements.lock $(STAMP)
	grep -vE '^(torch|triton|nvidia-|cuda-)' requirements.lock > $(VENV)/requirements-dev.lock
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c $(VENV)/requirements-dev.lock
	touch $(DEV_STAMP)

venv: $(STAMP)

dev-venv: $(DEV_STAMP)

# The terminal shows Snakemake's progress (not every job's details: those are in logs/), then the
# conclusions (printed when the workflow succeeds) and where the results are.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --quiet rules
	@$(MAKE) --no-print-directory report
	@echo "Results: results/model_level/, results/sample_level/; report: results/report.zip"

report: $(STAMP)
	@mkdir -p logs
	@$(BIN)/snakemake --report results/report.zip > logs/report.log 2>&1 \
	  || { cat logs/report.log; echo "error: the report failed (log: logs/report.log)" >&2; exit 2; }
	@echo "Report: results/report.zip (log: logs/report.log)"

test: $(DEV_STAMP)
	@$(SLURM_CHECK)
	$(BIN)/python -m pytest

# Where SLURM's client is installed but no controller answers, every snakemake start (each
# workflow test's) waits about 9 s in the SLURM plugin's import (docs/testing.md): say so.
SLURM_CHECK := if command -v scontrol >/dev/null && ! timeout 3 scontrol ping >/dev/null 2>&1; \
	then echo "note: SLURM's client is installed but no controller answers: every snakemake \
	start waits about 9 s; start the local cluster first (sudo bash .ci/slurm-up.sh)"; fi

# The tiers are pytest markers (pyproject.toml): workflow, packaging, slurm.
QUICK := not workflow and not packaging and not slurm

test-quick: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "$(QUICK)"

lint: $(DEV_STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/ruff check poisondetect scripts tests benchmarks
	$(BIN)/ruff format --check poisondetect scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules

format: $(DEV_STAMP)
	$(BIN)/ruff format poisondetect scripts tests benchmarks
	$(BIN)/ruff check --fix poisondetect scripts tests benchmarks
	$(BIN)/snakefmt Snakefile rules

clean:
	rm -rf results logs .snakemake
