# The two commands of the README: `make run` (main job) and `make test` (tests).
# Both install what they need first, so they work on a fresh machine of this kind: `make run` only
# what running needs (.ci/setup), `make test` that plus PostgreSQL and Chromium (.ci/setup-test).
PY ?= python3
PROTOCOL ?= auto

.PHONY: setup setup-test run test ui benchmark

setup:
	bash .ci/setup

setup-test:
	bash .ci/setup-test

run: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pipelines.main --protocol $(PROTOCOL)

test: setup-test
	DVC_NO_ANALYTICS=1 $(PY) -m pytest -q

ui:
	@echo "training runs: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	$(PY) -m mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# CI on a params change: validate, rerun what the change makes stale, judge the metrics against
# BASE (README "CI checks on params changes"). Exit 0 OK, 1 FAIL, 2 INVALID.
BASE ?= origin/main
CHECK_PROFILE ?= tiny
.PHONY: check-params
check-params: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pipelines.check_params --base $(BASE) --profile $(CHECK_PROFILE)

# Our loop vs the usual DataLoader recipe on the prepared data (needs `make run` first); writes
# benchmarks/results-<date>-<cpu|cuda>.json and .md. About 8 minutes on 2 CPU cores (measured 2026-11-28).
benchmark:
	$(PY) -m benchmarks.compare
