# make demo : set up the virtual environment (once), run the workflow on the default config
#             (embedded digits data set), build the Snakemake report.
# make test : the same set-up, then the whole test suite.
# make lint : snakemake --lint, ruff and snakefmt checks;  make format : apply the formatters.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CORES  ?= all

.PHONY: demo test lint format report clean venv

$(STAMP): requirements.txt requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.zip
	@echo "Results: results/model_level/, results/sample_level/; report: results/report.zip"

report: $(STAMP)
	$(BIN)/snakemake --report results/report.zip

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/ruff check poisondetect scripts tests benchmarks
	$(BIN)/ruff format --check poisondetect scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules

format: $(STAMP)
	$(BIN)/ruff format poisondetect scripts tests benchmarks
	$(BIN)/ruff check --fix poisondetect scripts tests benchmarks
	$(BIN)/snakefmt Snakefile rules

clean:
	rm -rf results logs .snakemake
