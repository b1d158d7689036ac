# The two commands of the README:  `make demo`  (set up, then run the main job on the tiny world)
#                                  `make test`  (set up, then run the tests)
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
OUT ?= outputs/demo

.PHONY: setup demo test standins results fuzz clean

setup: .venv/.installed

.venv/.installed: requirements.lock pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.lock
	.venv/bin/pip install --quiet --no-deps -e .
	touch $@

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

standins: setup
	OMP_NUM_THREADS=1 $(PY) -m grto_lib.standins --force

demo: setup
	OMP_NUM_THREADS=1 $(PY) -m grto_lib.demo --out $(OUT)

fuzz: setup
	HYPOTHESIS_PROFILE=large OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_rewards.py

clean:
	rm -rf outputs runs
