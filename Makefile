# Two commands (see README.md):
#   make course   install, fetch + verify data, copy the executed notebooks into work/
#                 (never overwriting your copies) and open JupyterLab there (OPEN=0: don't)
#   make test     install, then run the package tests and every notebook under nbval
# More:
#   make notebooks          re-execute every notebook into work/, with progress
#   make notebooks-inplace  maintainers: re-execute the committed notebooks (widget state
#                           saved, times recorded in notebooks/timings.json)
#   make classroom          teachers: student edition (classroom/student) and nbgrader
#                           release (classroom/release) from the notebooks
#   make grade SUBMISSIONS=dir  teachers: grade dir/<student>/NN_*.ipynb into grades.csv
VENV   ?= .venv
PY     := $(VENV)/bin/python
OPEN   ?= 1
PORT   ?= 8888

.PHONY: course test setup data baselines notebooks notebooks-inplace benchmarks lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[notebooks,test,deploy,classroom]'
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

setup: $(VENV)/.installed

data: setup
	$(PY) -m pruning_kit.data

baselines: data
	$(PY) -c "from pruning_kit import zoo; [zoo.baseline(n, s) for n in zoo.BASELINES for s in (0, 1, 2)]"

notebooks: baselines
	$(PY) -m pruning_kit.course execute

notebooks-inplace: baselines
	$(PY) -m pruning_kit.course execute --inplace

course: data
	@$(PY) -m pruning_kit.course prepare
	@if [ "$(OPEN)" = "1" ]; then \
		token=$$($(PY) -c "import secrets; print(secrets.token_hex(16))"); \
		echo "Starting JupyterLab on work/ (Ctrl+C twice to stop)."; \
		echo "JupyterLab: http://localhost:$(PORT)/lab?token=$$token"; \
		root=""; [ "$$(id -u)" = 0 ] && root="--allow-root"; \
		PYTHONWARNINGS=ignore $(PY) -m jupyter lab work/ --port=$(PORT) $$root \
			--ServerApp.port_retries=0 --IdentityProvider.token=$$token \
			--log-level=WARN; \
	else echo "Course ready in work/. Open it with: $(PY) -m jupyter lab work/"; fi

test: setup
	$(PY) -m pytest -n 2 --dist loadscope --durations=10

benchmarks: baselines
	for b in baselines xla_cpu_layers quantization distillation pruning pipeline deploy notebooks; do \
		$(PY) -m benchmarks.$$b || exit 1; \
	done

.PHONY: classroom grade
GRADES ?= grades.csv

$(VENV)/.classroom: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[classroom]'
	touch $@

classroom: $(VENV)/.classroom
	$(PY) -m pruning_kit.classroom generate --out classroom

grade: setup
	@if [ -z "$(SUBMISSIONS)" ]; then echo "Usage: make grade SUBMISSIONS=dir (dir/<student>/NN_*.ipynb)"; exit 2; fi
	$(PY) -m pruning_kit.classroom grade "$(SUBMISSIONS)" --out "$(GRADES)"

lint: setup
	$(VENV)/bin/ruff check pruning_kit tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info
