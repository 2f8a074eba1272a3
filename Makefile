# captioner: the commands people run. `make test` and `make serve` do their own set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG   ?= configs/flickr8k.toml
DATA_DIR ?=
MODEL    ?= models/flickr8k.safetensors
PORT     ?= 8000
CONTAINER ?= docker
CONTAINER_BUILD_FLAGS ?=
IMAGE ?= captioner:latest

# glibc: keep freed memory instead of returning it to the OS after every batch (measured: batched CNN
# forwards are otherwise slower per image than batch 1 on this 2-core machine).
export MALLOC_MMAP_THRESHOLD_ ?= 1000000000
export MALLOC_TRIM_THRESHOLD_ ?= 1000000000
export MALLOC_TOP_PAD_ ?= 268435456
# ... and cap glibc's per-thread arenas: the service runs many request threads per worker.
export MALLOC_ARENA_MAX ?= 2

TRAIN_ARGS := --config $(CONFIG) $(if $(DATA_DIR),--data_dir $(DATA_DIR))

.PHONY: install test test-portable train train-charlm bench-charlm train-demo eval eval-imagenet onnx distill ground serve bench bench-decode bench-backends bench-backends-portable bench-train bench-serve bench-bulk bench-scale \
        docker-build docker-run docker-test scale-test clean

install: $(VENV)/.installed
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite again on the numeric path of CPUs without AVX-512 or native bf16 (e.g. a 2-core AMD EPYC with
# AVX2): PyTorch, oneDNN and MKL limited to AVX2 kernels, training in fp32. CI runs both.
PORTABLE_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-portable: install
	$(PORTABLE_ENV) $(PY) -m pytest -q --amp false $(PYTEST_ARGS)

train: install
	$(PY) -m training.train $(TRAIN_ARGS) $(ARGS)

# A character-level language model (truncated BPTT) on TEXT, default: the Python standard library's source.
train-charlm: install
	$(PY) -m charlm train $(if $(TEXT),--text $(TEXT)) --out $(or $(OUT),runs/charlm) $(ARGS)

train-demo: install
	$(PY) -m training.train --config configs/demo.toml $(ARGS)

eval: install
	$(PY) -m training.evaluate --model $(MODEL) --format flickr8k --data-dir $(or $(DATA_DIR),../shared/data/flickr8k) \
		--split $(or $(SPLIT),dev) --beam-size $(or $(BEAM),3) $(ARGS)

# Object hallucination on everyday photos labelled with their ImageNet class (dev CHAIR is in `make eval`).
eval-imagenet: install
	$(PY) -m training.hallucination --model $(MODEL) --data-dir ../shared/data/imagenet-samples $(ARGS)

# The ONNX encoder files beside MODEL (captioner.backends), int8 calibrated on training photos; `make train`
# makes its own. Deterministic: the same checkpoint and photos give the same bytes.
onnx: install
	$(PY) -m training.export_onnx --model $(MODEL) --format $(or $(FORMAT),flickr8k) --data-dir $(or $(DATA_DIR),../shared/data/flickr8k) $(ARGS)

# Teach MODEL's decoder its onnx-int8 encoder's vectors (training.distill): for serving it on onnx-int8.
distill: install
	$(PY) -m training.distill --model $(MODEL) $(TRAIN_ARGS) $(ARGS)

# Fit grounding (concept detectors, calibration) onto an already trained MODEL; `make train` fits its own.
ground: install
	$(PY) -m training.grounding --model $(MODEL) $(TRAIN_ARGS) $(ARGS)

# nginx in front of gunicorn (service/front.py), as in the Docker image; without nginx installed, gunicorn
# alone, for development only (it says so).
serve: install
	CAPTIONER_MODEL=$(MODEL) PORT=$(PORT) $(PY) -m service.front

bench: bench-decode bench-backends bench-train bench-serve bench-charlm bench-bulk bench-scale

bench-decode: install
	$(PY) -m bench.decode $(ARGS)

bench-backends: install
	$(PY) -m bench.backends $(ARGS)

# PyTorch on its AVX2 kernels (ONNX Runtime chooses its kernels by CPUID and cannot be held to AVX2).
bench-backends-portable: install
	$(PORTABLE_ENV) $(PY) -m bench.backends $(ARGS)

bench-train: install
	$(PY) -m bench.train $(ARGS)

bench-serve: install
	$(PY) -m bench.serve $(ARGS)

bench-charlm: install
	$(PY) -m bench.charlm $(ARGS)

bench-bulk: install
	$(PY) -m bench.bulk $(ARGS)

# Every phase of `make train` on simulated COCO-format data at 1x, 2x, 4x Flickr8k's size and COCO's (drawn from
# Flickr8k; its feature cache is built first if missing): time, peak memory, growth exponents, a COCO projection.
bench-scale: install
	$(PY) -m bench.scale $(ARGS)

docker-build:
	$(CONTAINER) build $(CONTAINER_BUILD_FLAGS) -f docker/Dockerfile -t $(IMAGE) .

docker-run:
	$(CONTAINER) run --rm -p $(PORT):8000 $(IMAGE)

docker-test: docker-build
	CONTAINER=$(CONTAINER) IMAGE=$(IMAGE) bash docker/smoke-test.sh

# 2 replicas behind HAProxy (docker/compose.scale.yaml), one killed under load; podman uses podman-compose.
scale-test: install docker-build
	PATH=$(abspath $(VENV))/bin:$$PATH CONTAINER=$(CONTAINER) IMAGE=$(IMAGE) PYTHON=$(PY) bash docker/scale-test.sh

clean:
	rm -rf $(VENV) cache runs .pytest_cache
