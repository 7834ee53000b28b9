# cvae-sweep: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
EXP ?= demo
ARGS ?=
STUDY ?= demo
WORKERS ?= 2
TRIALS ?=
STORAGE ?=
RAY ?=
STUDIES ?=
K ?= 2
SEEDS ?= 3
PORT ?= 5000
HOST ?= 127.0.0.1
DASH_PORT ?= 8080
OUT ?= runs

# servers listen on loopback; HOST=0.0.0.0 exposes them (no authentication) and says so
warn_exposed = case '$(HOST)' in 127.0.0.1|localhost|::1) ;; *) echo "warning: HOST=$(HOST) exposes this server, without authentication, to every machine that can reach this one" >&2;; esac

.DEFAULT_GOAL := help
.PHONY: help install train eval test lint sweep worker ui dashboard report confirm bench bench-sweep bench-decisions bench-memory schedules preview clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	@touch $(STAMP)

# the test extras (pytest, scikit-image, PostgreSQL's driver, Ray, Playwright) only for make test
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test]"
	@touch $(TEST_STAMP)

install: $(STAMP) ## create .venv and install (quick when already done)

train: $(STAMP) ## train one model: make train [EXP=demo] [ARGS="train.lr=0.001 ..."]
	$(BIN)/cvae train $(EXP) $(ARGS)

eval: $(STAMP) ## test-split score of a run: make eval RUN=runs/lab/<run> [ARGS="--samples 100 --horizon 28"]
	@test -n "$(RUN)" || { echo "usage: make eval RUN=runs/<experiment>/<run> (a run folder or a .pt file) [ARGS=...]" >&2; exit 2; }
	$(BIN)/cvae eval $(RUN) $(ARGS)

schedules: $(STAMP) ## plot KL weight and teacher forcing before training: make schedules [EXP=demo]
	$(BIN)/cvae schedules $(EXP) $(ARGS)

preview: $(STAMP) ## GIF + strip of the dataset: make preview [EXP=demo]
	$(BIN)/cvae data preview $(EXP) $(ARGS)

# the Ray cluster tests (mostly waiting) one after another in a second pytest, beside the rest on 2 workers (3 workers
# measured 885 s against 861 s for the whole of .ci/run: the cluster tests, slowed more, became the longest part)
test: $(TEST_STAMP) ## run the test suite (about 13 minutes on 2 cores)
	@$(BIN)/python -m pytest -p no:xdist -m cluster > $(VENV)/cluster-tests.log 2>&1 & clusters=$$!; \
	trap 'kill $$clusters 2>/dev/null' INT TERM; \
	$(BIN)/python -m pytest -n 2 -m "not cluster"; suite=$$?; \
	wait $$clusters; ray=$$?; echo "--- the Ray cluster tests, run beside the rest:"; cat $(VENV)/cluster-tests.log; \
	exit $$(( suite || ray ))

lint: $(TEST_STAMP) ## ruff: lint and format check (configured in pyproject.toml); `ruff format .` fixes the format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: $(STAMP) ## browse tracked runs with `mlflow ui`: make ui [OUT=runs] [PORT=5000] [HOST=127.0.0.1]
	@$(call warn_exposed)
	@test -f $(OUT)/mlflow.db || echo "note: no $(OUT)/mlflow.db yet (train with tracking.enabled=true first); starting on an empty store"
	@# workflowType: MLflow 3 opens on its GenAI pages unless told this is model training
	@echo "MLflow UI: http://$(HOST):$(PORT)/#/experiments?workflowType=machine_learning  (store: sqlite:///$(abspath $(OUT))/mlflow.db, Ctrl-C stops it)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(OUT))/mlflow.db --default-artifact-root $(abspath $(OUT))/mlartifacts --host '$(HOST)' --port $(PORT)

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .cache .pytest_cache

sweep: $(STAMP) ## Optuna study: make sweep [STUDY=demo] [WORKERS=2] [TRIALS=n] [STORAGE=url] [RAY=auto|host:port] [ARGS="k=v ..."]
	$(BIN)/cvae sweep $(STUDY) $(if $(RAY),--ray '$(RAY)',--workers $(WORKERS)) $(if $(TRIALS),--trials $(TRIALS)) $(if $(STORAGE),--storage '$(STORAGE)') $(ARGS)

worker: $(STAMP) ## join a study from another machine: make worker STUDY=.. STORAGE=postgresql://.. [MLFLOW_TRACKING_URI=http://..]
	$(BIN)/cvae worker $(STUDY) $(if $(STORAGE),--storage '$(STORAGE)') $(ARGS)

dashboard: $(STAMP) ## optuna-dashboard on the study storage: make dashboard [STORAGE=url] [DASH_PORT=8080] [HOST=127.0.0.1]
	@$(call warn_exposed)
	@echo "Optuna dashboard: http://$(HOST):$(DASH_PORT)"
	$(BIN)/optuna-dashboard --host '$(HOST)' --port $(DASH_PORT) $(if $(STORAGE),'$(STORAGE)',sqlite:///$(abspath $(OUT))/optuna.db)

report: $(STAMP) ## comparison report: make report [STUDY=demo] [STUDIES=a,b] -> runs/reports/<study>/index.html
	$(BIN)/cvae report $(STUDY) $(if $(STUDIES),--studies '$(STUDIES)') $(if $(STORAGE),--storage '$(STORAGE)') $(ARGS)

confirm: $(STAMP) ## re-run the top K configurations with N fresh seeds: make confirm [STUDY=demo] [K=2] [SEEDS=3]
	$(BIN)/cvae sweep $(STUDY) --confirm $(K) --seeds $(SEEDS) --workers $(WORKERS) $(if $(STORAGE),--storage '$(STORAGE)') $(ARGS)

bench: $(STAMP) ## speed as side-by-side ratios (train step vs course-order step, FLOP/s, data, eval) -> benchmarks/results/speed.json
	$(BIN)/python -m benchmarks.run

bench-decisions: $(STAMP) ## error rates of the demo's decision rule, 20,000 simulated studies per case (about 15 minutes) -> benchmarks/results/decisions.json
	$(BIN)/python -m benchmarks.decisions $(ARGS)

bench-memory: $(STAMP) ## peak memory of one trial per experiment (demo, lab; GPU memory on CUDA), for --gpus-per-worker -> benchmarks/results/memory.json
	$(BIN)/python -m benchmarks.memory

bench-sweep: $(STAMP) ## what pruning saves in the TPE demo study, two sampler seeds (12-15 minutes) -> benchmarks/results/sweep.json
	$(BIN)/python -m benchmarks.sweep
