# Two commands for a newcomer: `make demo` (set up + main job) and `make test` (set up + all tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint serve clean kafka-jars cluster-binaries cluster compose-up compose-down

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m main_job

# Everything, slow suites included (what CI runs). The tests run API, worker, broker and benchmark processes
# side by side on few cores: OpenMP threads that spin while waiting would starve each other (10-25x slower).
# Only the tests get this: the demo reports figures, timed with every runtime's default threading.
test: export OMP_WAIT_POLICY := PASSIVE
test: setup kafka-jars cluster-binaries
	$(PY) -m ruff check .
	$(PY) -m pytest -m "slow or not slow" -p no:cacheprovider --durations=25

# Apache Kafka's server jars from Maven Central into .cache/: the PR2 tests and the local stack run Apache Kafka
# when Java is there, Tansu otherwise.
kafka-jars: setup
	@if command -v java >/dev/null && command -v mvn >/dev/null; then $(PY) PR2_async_inference/apache_kafka.py fetch; \
	else echo "kafka-jars: no java or mvn here; the PR2 tests and the local stack use Tansu"; fi

# PR1's local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, KEDA) built from the Go
# module proxy into a per-user cache outside the clone (~/.cache/scaling-infra): 25-40 min cold on 2 cores, seconds
# once built. The PR1 cluster tests start it; `make cluster` runs it in the foreground.
cluster-binaries: setup
	$(PY) PR1_horizontal_pod_autoscaling/local_cluster.py --build-only

cluster: cluster-binaries
	$(PY) PR1_horizontal_pod_autoscaling/local_cluster.py

# The quick inner loop: skips the suites marked slow.
test-fast: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .

# The async stack without Docker: broker + API on :8000 + one worker; Ctrl-C stops them all.
serve: setup
	$(PY) PR2_async_inference/local_stack.py

# PR2's docker-compose stack on this machine: starts the Docker engine when none runs, builds local stand-ins of the
# registry images when missing (cached by the engine, keyed by their inputs), makes models/quantized_model.pt when
# missing, then `docker-compose up -d` in PR2_async_inference/ and waits for every healthcheck. Needs root.
compose-up: setup kafka-jars
	$(PY) PR2_async_inference/compose_stack.py up

# `docker-compose down -v`, then stops the engine compose-up started and undoes its network changes.
compose-down: setup
	$(PY) PR2_async_inference/compose_stack.py down

clean:
	rm -rf runs models .pytest_cache
