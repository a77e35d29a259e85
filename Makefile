# glomx — `make help` lists the targets. Everything runs inside .venv, built on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.setup-stamp
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.DEFAULT_GOAL := help
.PHONY: help setup data prepare augment balance train-lr train-cnn train-resnet evaluate \
        repro run test lint bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_ -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install glomx with pinned dependencies (idempotent)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

data: setup ## fetch data/ from the DVC remote
	dvc pull

prepare augment balance train-lr train-cnn train-resnet evaluate: setup ## run one stage (and what it needs)
	dvc repro $@

repro: setup ## run every stage that is out of date
	dvc repro

run: data repro ## the main job: set up, pull the data, run the whole pipeline

test: setup ## run the test suite
	pytest -q

lint: setup ## ruff check and format check
	ruff check glomx stages tests bench
	ruff format --check glomx stages tests bench

bench: setup ## benchmarks (writes bench/out/); slow, not part of the tests
	python bench/prepare.py

clean: ## remove pipeline outputs (keeps .venv, data/ and mlruns/)
	rm -rf artifacts models metrics plots reports dvc_plots bench/out
