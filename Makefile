# Every target sets up what it needs: a fresh clone only needs Python >= 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
N      ?= 5000

.PHONY: run test lint bench mutation corpus samples clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The test extra brings the sandbox extra (numpy), which `make run` needs for the embedded sandbox.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Exit 1 means "done, some photos failed": the sample set includes broken files on purpose.
# Then the run's HTML report (each photo beside its offers); its path is the last line printed.
run: $(STAMP)
	$(BIN)/img1688 run jobs/sample.toml || [ $$? -eq 1 ]
	$(BIN)/img1688 report out/sample

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# Mutation testing of the modules that carry the promises (docs/testing.md); slow, so not part
# of `make test`. make mutation [MUTATE="state feed"] runs only those groups of tools/mutation.py.
MUTATE ?=
$(VENV)/.mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	touch $@

mutation: $(VENV)/.mutation
	$(BIN)/python -m tools.mutation $(MUTATE)

# Rebuild the committed sample set (deterministic) with the generator in tools/ (not packaged):
# buyer photos, awkward files and truth.json in sample_images/, and the sandbox's built-in
# catalogue, package data in engine/sandbox/data/catalogue/.
samples: $(STAMP)
	$(BIN)/python -m tools.samplegen samples sample_images --catalogue engine/sandbox/data/catalogue

# A large synthetic corpus for benchmarks: make corpus N=5000 [CORPUS=dir]
CORPUS ?= build/corpus
corpus: $(STAMP)
	$(BIN)/python -m tools.samplegen corpus $(CORPUS) --count $(N)

clean:
	rm -rf build .pytest_cache
