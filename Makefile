# The two commands of the README. Both set everything up first and are safe to run again.
.PHONY: setup run test lint bench

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

bench: setup
	.venv/bin/python bench/throughput.py
	.venv/bin/python bench/serving_path.py
