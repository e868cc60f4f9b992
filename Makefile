# skelprep: two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every package of the test environment is pinned in constraints.txt (the CPU build of torch among them: a
# looser pin pulls a multi-GB CUDA build); the package itself asks only loose lower bounds (torch>=2.1).
CONSTRAINTS := constraints.txt
STAMP  := $(VENV)/.skelprep-installed
DATA   ?=
WORKERS ?= 2

.PHONY: install lock demo test test-fast build lint docs bench bench-full train reproduce clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) torch
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[dev,docs,torch,fast,nnunet,monai,torchio,s3]"
	@# An editable install leaves skelprep's own bytecode uncompiled (pip compiles what it installs);
	@# where PYTHONDONTWRITEBYTECODE is set, every run compiled it again (70-80 ms a process).
	$(BIN)/python -m compileall -q skelprep
	touch $@

install: $(STAMP)

## make lock: re-pin constraints.txt from the installed environment (after a change of pyproject.toml)
lock: install
	{ sed -n '1,2p' $(CONSTRAINTS); $(BIN)/pip freeze --exclude-editable; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

## make demo: build the bundled example datasets and write previews to examples/previews/
demo: install
	$(BIN)/skelprep build examples/chase_vessels --workers $(WORKERS)
	@echo "== with images: what SkeletonDataset streams patches from"
	$(BIN)/skelprep build examples/road_cracks --with-images --workers $(WORKERS)
	$(BIN)/skelprep build examples/octa3d --with-images --workers $(WORKERS)
	$(BIN)/skelprep info examples/road_cracks/skeletons.zarr
	$(BIN)/skelprep verify examples/octa3d
	$(BIN)/skelprep preview examples/chase_vessels/skeletons.zarr Image_11L_1stHO -o examples/previews/chase_Image_11L.png
	$(BIN)/skelprep preview examples/road_cracks/skeletons.zarr crack_000 -o examples/previews/road_crack_000.png
	$(BIN)/skelprep preview examples/octa3d/skeletons.zarr octa_000 -o examples/previews/octa_000_mip.png
	@echo "== per-class skeletons: cracks inside the road region keep their own centrelines"
	$(BIN)/skelprep build examples/road_cracks --mode per-class --out examples/road_cracks/skeletons-per-class.zarr --workers $(WORKERS)
	$(BIN)/skelprep preview examples/road_cracks/skeletons-per-class.zarr crack_000 -o examples/previews/road_crack_000_per_class.png

## make test: install and run the test suite
test: install
	$(BIN)/python -m pytest -q

## make test-fast: the unit tests alone (no slow or integration test, no adapter doctest: see conftest.py)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration" \
		--ignore=skelprep/torch --ignore=skelprep/nnunet --ignore=skelprep/monai.py --ignore=skelprep/torchio.py

## make build DATA=path/to/dataset [WORKERS=n]
build: install
	@test -n "$(DATA)" || { echo "usage: make build DATA=path/to/dataset [WORKERS=n]"; exit 2; }
	$(BIN)/skelprep build "$(DATA)" --workers $(WORKERS)

lint: install
	$(BIN)/ruff check skelprep pipelines tests
	$(BIN)/ruff format --check skelprep pipelines tests

## make docs: the documentation site (MkDocs) in site/; strict: a warning, a broken link or reference fails it
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## make bench: the quick benchmark (CI-sized); make bench-full: the full one (about an hour on 2 cores), whose
## tables and plots are the documentation's benchmark pages (docs/bench/)
bench: install
	$(BIN)/python pipelines/bench.py --quick --out results/bench-quick
	$(BIN)/python pipelines/bench_streaming.py --quick --out results/bench-streaming-quick
	$(BIN)/python pipelines/bench_engines.py --quick --out results/bench-engines-quick

bench-full: install
	$(BIN)/python pipelines/bench.py --out docs/bench/bench
	$(BIN)/python pipelines/bench_streaming.py --full --out docs/bench/streaming
	$(BIN)/python pipelines/bench.py --sections topology --out docs/bench/topology
	$(BIN)/python pipelines/bench_engines.py --full --out docs/bench/engines

## make train: a short CPU training run (Dice + CE + Skeleton Recall) on the bundled 2D and 3D data;
## train.py builds each store --with-images first and streams the patches from it
train: install
	$(BIN)/python pipelines/train.py examples/road_cracks --out runs/road_cracks --device cpu --epochs 2 --steps-per-epoch 10 --patch-size 256 --batch-size 2 --num-workers 2 --recall-weight 1
	$(BIN)/python pipelines/train.py examples/octa3d --out runs/octa3d --device cpu --epochs 2 --steps-per-epoch 5 --patch-size 64 --batch-size 2 --num-workers 2 --recall-weight 1

## make reproduce [QUICK=1] [DATA=path/to/chase_db1_full] [DEVICE=cuda]: does Skeleton Recall from skelprep's
## targets help? Four arms x three seeds on CHASE_DB1 (about 90 minutes on 2 cores); QUICK=1: a pipeline check
## (two arms, one seed, a few steps) in results/reproduce-quick. An interrupted run resumes where it stopped.
DEVICE ?= cpu
reproduce: install
	$(BIN)/python pipelines/reproduce.py --device $(DEVICE) $(if $(QUICK),--quick) $(if $(DATA),--data "$(DATA)")

clean:
	rm -rf $(VENV) site results runs examples/previews examples/*/skeletons*.zarr examples/*/skeletons*.zarr.lock .pytest_cache
