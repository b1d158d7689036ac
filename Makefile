# The two commands of the README:  `make demo`  (set up, then run the main job on the tiny world)
#                                  `make test`  (set up, then run the tests)
# While developing, `make test-fast` leaves out the tests marked slow (pyproject.toml's pytest markers).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
OUT ?= outputs/demo

.PHONY: setup demo lab test test-fast standins results fuzz clean course

setup: .venv/.installed

.venv/.installed: requirements.lock pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.lock
	.venv/bin/pip install --quiet --no-deps -e .
	touch $@

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

standins: setup
	OMP_NUM_THREADS=1 $(PY) -m grto_lib.tinyworld.standins --force

# papermill's command line, its kernels on local sockets (IPC): a kernel reached over TCP logs "Kernel is running
# over TCP without encryption" (ipykernel), and papermill's command line has no option for the transport.
PAPERMILL := OMP_NUM_THREADS=1 $(PY) -c "import functools, papermill.cli as cli, traitlets.config as t; \
	cli.execute_notebook = functools.partial(cli.execute_notebook, config=t.Config(KernelManager={'transport': 'ipc'})); \
	cli.papermill(prog_name='papermill')" --no-progress-bar

# The main job: BTO walk-through (02), GRPO, GRTO and B-GRTO on reasonseg (03, three times), their comparison (04).
# The executed notebooks are trusted, so JupyterLab shows their figures and tables as saved.
demo: setup
	mkdir -p $(OUT)
	$(PAPERMILL) notebooks/02_bootstrap_pretraining.ipynb $(OUT)/02_bootstrap_pretraining.ipynb \
		-p output_dir $(OUT)/bto_reasonseg
	for method in grpo grto b-grto; do \
		$(PAPERMILL) notebooks/03_joint_training.ipynb $(OUT)/03_joint_training_$$method.ipynb \
			-p method $$method -p output_dir $(OUT)/reasonseg_$$method || exit 1; \
	done
	$(PAPERMILL) notebooks/04_evaluation.ipynb $(OUT)/04_evaluation.ipynb -p runs_root $(OUT) \
		-p output_dir $(OUT)/eval_reasonseg
	$(PY) -m jupyter trust $(OUT)/*.ipynb
	@echo "executed notebooks, metrics and figures: $(OUT)/  (open them: make lab OUT=$(OUT))"

# JupyterLab from the repository root, its file browser on $(OUT) when that folder exists inside it: the notebooks,
# the demo's outputs and, under Nbgrader, Formgrader's course (the root's nbgrader_config.py). As root it adds
# --allow-root.
lab: setup
	$(PY) -m jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) \
		$(if $(and $(wildcard $(OUT)),$(filter-out /%,$(OUT))),--LabApp.default_url=/lab/tree/$(OUT))

fuzz: setup
	HYPOTHESIS_PROFILE=large OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_rewards.py

clean:
	rm -rf outputs runs

# The paper's claims in miniature (results table, targets and learning curves): 1 to 1.5 hours on 2 cores.
results: setup
	$(PY) -m grto_lib.study.results

# The course's student release, one notebook an assignment: course/release/<assignment>/ (README, the syllabus).
course: setup
	rm -rf course/release
	cd course && PATH=$(CURDIR)/.venv/bin:$$PATH nbgrader generate_assignment "*"
