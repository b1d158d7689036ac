# The two commands of the README:  `make demo`  (set up, then run the main job on the tiny world)
#                                  `make test`  (set up, then run the tests)
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
OUT ?= outputs/demo

.PHONY: setup demo test standins results fuzz clean course

setup: .venv/.installed

.venv/.installed: requirements.lock pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.lock
	.venv/bin/pip install --quiet --no-deps -e .
	touch $@

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

standins: setup
	OMP_NUM_THREADS=1 $(PY) -m grto_lib.tinyworld.standins --force

# The main job: BTO walk-through (02), GRPO, GRTO and B-GRTO on reasonseg (03, three times), their comparison (04).
demo: setup
	mkdir -p $(OUT)
	OMP_NUM_THREADS=1 $(PY) -m papermill --no-progress-bar notebooks/02_bootstrap_pretraining.ipynb \
		$(OUT)/02_bootstrap_pretraining.ipynb -p output_dir $(OUT)/bto_reasonseg
	for method in grpo grto b-grto; do \
		OMP_NUM_THREADS=1 $(PY) -m papermill --no-progress-bar notebooks/03_joint_training.ipynb \
			$(OUT)/03_joint_training_$$method.ipynb -p method $$method -p output_dir $(OUT)/reasonseg_$$method || exit 1; \
	done
	OMP_NUM_THREADS=1 $(PY) -m papermill --no-progress-bar notebooks/04_evaluation.ipynb \
		$(OUT)/04_evaluation.ipynb -p runs_root $(OUT) -p output_dir $(OUT)/eval_reasonseg
	@echo "executed notebooks, metrics and figures: $(OUT)/  (open them: .venv/bin/jupyter lab $(OUT))"

fuzz: setup
	HYPOTHESIS_PROFILE=large OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_rewards.py

clean:
	rm -rf outputs runs

# The paper's claims in miniature (issue: results table and learning curves); about an hour on 2 cores.
results: setup
	$(PY) -m grto_lib.study.results --jobs 2

# The graded exercises' student release: course/release/grto_exercises/ (README, "For instructors").
course: setup
	cd course && PATH=$(CURDIR)/.venv/bin:$$PATH nbgrader generate_assignment grto_exercises --force
