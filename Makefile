# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)
PYTEST_ARGS ?=

.PHONY: setup demo demo-methods demo-augment test bench bench-quality bench-service bench-fleet bench-gpu serve services browser tiny-random shapes-adaptor clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU wheel of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[worker,api,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

## DA-Fusion on the shapes model: out/methods/augment/ (augmented real renders, labels carried) and
## out/methods/concept-cyan-cross/ (a concept the model never saw, learned from 16 renders: textual
## inversion + the UNet fine-tuned; 11 min on a quiet 2-core CPU, 17 min on one core) and
## out/methods/concept-layout/ (it drawn in layouts, labelled).
SHAPES_MODEL ?= builtin:shapes-v2
demo-augment: setup
	$(BIN)/dsgen shapes render --out out/methods/augment-real --n 8 --seed 7 --size 48 --overwrite
	$(BIN)/dsgen run examples/methods/augment.yaml --out out/methods/augment --overwrite
	PYTHONPATH=. $(BIN)/python examples/methods/concept_images.py out/methods/concept-images 16
	$(BIN)/dsgen concepts learn --model $(SHAPES_MODEL) --source out/methods/concept-images/labelled --class cross \
	  --masked --token "<cyan>" --token "<cross>" --init-word blue --init-word star --steps 400 --lr 5e-3 \
	  --batch-size 8 --unet-steps 200 --unet-params all --out out/methods/concept-cyan-cross
	$(BIN)/dsgen run examples/methods/concept-layout.yaml --out out/methods/concept-layout --overwrite

## Generate the demo dataset (out/demo/) with the builtin model, on this machine.
demo: setup
	$(BIN)/dsgen shapes render --out out/demo-shapes --n 64 --seed 6 --size 48 --formats coco --overwrite
	$(BIN)/dsgen run examples/demo.yaml --out out/demo

## One complete dataset (with exports) per available method under out/methods/<method>/, from
## real renders of `dsgen shapes render`, plus a grid per method (out/methods/<method>/grid.png);
## then demo-augment (DA-Fusion and a learned concept, about 13 min more on 2 cores).
METHODS := text2image image2image mask2image edit layout
demo-methods: setup
	$(BIN)/dsgen shapes render --out out/methods/_real --n 16 --seed 5 --size 48 --formats coco --overwrite
	$(BIN)/dsgen shapes render --out out/methods/_shapes --n 64 --seed 6 --size 48 --formats coco --overwrite
	for m in $(METHODS); do $(BIN)/dsgen run examples/methods/$$m.yaml --out out/methods/$$m --overwrite || exit 1; done
	$(BIN)/python examples/methods/grids.py $(addprefix out/methods/,$(METHODS))
	$(MAKE) demo-augment

## Run the whole test suite (starts Postgres and Redis here if they are down).
test: setup services browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

services:
	@bash .ci/services.sh

## Debian's Chromium for the dashboard tests (Playwright drives it; it never downloads one).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

## Engine throughput and memory (JSON on stdout).
bench: setup
	$(BIN)/python bench/engine.py

## Label quality against ground truth on the shapes world (JSON; grids under bench/out/).
bench-quality: setup
	$(BIN)/python bench/quality.py --model builtin:shapes-v2 --out bench/out
	$(BIN)/python bench/adaptor.py --quick
	$(BIN)/python bench/methods_quality.py --n-edit 64 --n-layout 64 --n-classifier 4000 --cls-epochs 8 --out bench/out/methods.json

## Retrain the shipped detection adaptor against the current builtin:shapes-v2 weights.
shapes-adaptor: setup
	$(BIN)/python -m worker.adaptor.ship_shapes

## End-to-end service throughput (API + 1 and 2 workers vs engine) and API latency (JSON).
bench-service: setup services
	$(BIN)/python bench/service.py

## API + dashboard + in-process workers on SQLite and a local folder (no servers needed).
serve: setup
	$(BIN)/dsgen serve --embedded

## Rebuild the tiny random test model from its script (fixed seed).
tiny-random: setup
	$(BIN)/python -m worker.engine.builtin.make_tiny_random

clean:
	rm -rf out .pytest_cache

## Simulated fleet: data plane (API, Postgres, Redis, S3, N stand-in workers) and finalize time (JSON).
bench-fleet: setup services
	$(BIN)/python bench/fleet.py --out bench/out/fleet.json

## Engine on CUDA: SD-1.5-shaped random model, fp16/bf16, 512 px, batch 4 and 8, capture vs plain (JSON).
bench-gpu: setup
	$(BIN)/python bench/gpu.py --out bench/out/gpu.json
