# The two commands of the README: `make run` (main job) and `make test` (tests).
# Both install what they need first, so they work on a fresh machine of this kind: `make run` only
# what running needs (.ci/setup), `make test` that plus PostgreSQL and Chromium (.ci/setup-test).
PY ?= python3
# auto (lab when the lab's published data can be had, else offline) | lab | offline
PROTOCOL ?= auto

.PHONY: setup setup-test run test ui benchmark gpu-check gpu-wheels

setup:
	bash .ci/setup

setup-test:
	bash .ci/setup-test

run: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pipelines.cli.repro --protocol $(PROTOCOL)

test: setup-test
	DVC_NO_ANALYTICS=1 $(PY) -m pytest -q

ui:
	@echo "training runs: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	$(PY) -m mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# CI on a params change: validate, rerun what the gated metrics need, judge them against BASE with
# their measured noise. Exit 0 OK (or INCONCLUSIVE), 1 FAIL, 2 INVALID.
# docs/ci-gate.md explains the verdicts and the gate profile. CHECK_ARGS="--strict" fails a check that
# could not see a tolerance-sized drop.
BASE ?= origin/main
CHECK_PROFILE ?= gate
CHECK_ARGS ?=
.PHONY: check-params calibrate-gate
check-params: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pipelines.cli.check --base $(BASE) --profile $(CHECK_PROFILE) $(CHECK_ARGS)

# The gate on seed-only changes (false alarms) and known-bad ones (detections), with each check's wall
# time: long (docs/ci-gate.md has measured runs). CALIBRATE_ARGS="--seed-changes 3 --bad lr30" for less.
CALIBRATE_ARGS ?=
calibrate-gate: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pipelines.cli.calibrate $(CALIBRATE_ARGS)

# Our loop vs the usual DataLoader recipe on the prepared data (needs `make run` first); writes
# benchmarks/results-<date>-<cpu|cuda>.json and .md, with the roofline (docs/speed.md). 8 minutes on
# 2 quiet CPU cores before the roofline and forms sections were added (measured 2026-11-28);
# BENCH_ARGS=--quick runs a minute's subset.
BENCH_ARGS ?=
benchmark:
	$(PY) -m benchmarks.compare $(BENCH_ARGS)

# fp32 against bf16 autocast over seeds (the lab's Simple CNN and AlexNet recipes, 3 seeds each, about
# 75 min on 2 cores); PRECISION_ARGS="--variants mnist_cnn" for the Simple CNN alone.
PRECISION_ARGS ?=
precision:
	$(PY) -m benchmarks.precision $(PRECISION_ARGS)

# The offline protocol's training and evaluation on a CUDA GPU, timed (docs/scaling.md); without
# a GPU, the same code on the CPU on tiny data. Writes benchmarks/results-<date>-cuda.json and .md.
gpu-check:
	$(PY) -m benchmarks.gpu_check

# pydantic's wheels for the GPU machine's Python 3.12 (its image lacks pydantic), into .whl/.
gpu-wheels:
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(PY) -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in ('pydantic', 'pydantic-core', 'annotated-types', 'typing-inspection')))")

# dvc.yaml's code deps: every stage's import closure, written in place (tests/test_stage_deps.py checks
# they are current). Run it after adding, moving or removing an import.
.PHONY: deps
deps:
	$(PY) -m pipelines.cli.deps

# docs/outputs.md is generated from the output contract's models (tests/test_outputs.py checks it).
.PHONY: outputs-doc docs
outputs-doc:
	$(PY) -m pipelines.cli.outputs_doc > docs/outputs.md

# Every generated part of docs/: outputs.md, and the tables of docs/*.md made from results files
# (benchmarks/results-*.json, the golden tiny run); tests/test_docs.py checks they are current.
docs: outputs-doc
	$(PY) -m pipelines.cli.docs
