# Two commands (see README.md):
#   make course   install, fetch + verify data, load/train baselines, execute every notebook,
#                 then open JupyterLab (OPEN=0 to skip opening)
#   make test     install, then run the package tests and every notebook under nbval
VENV   ?= .venv
PY     := $(VENV)/bin/python
OPEN   ?= 1

.PHONY: course test setup data baselines notebooks benchmarks lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

setup: $(VENV)/.installed

data: setup
	$(PY) -m pruning_kit.data

baselines: data
	$(PY) -c "from pruning_kit import train; [train.baseline(n, s) for n in train.RECIPES for s in (0, 1, 2)]"

notebooks: baselines
	for nb in notebooks/[0-9]*.ipynb; do \
		$(PY) -m jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1200 "$$nb" || exit 1; \
	done

course: notebooks
	@if [ "$(OPEN)" = "1" ]; then $(PY) -m jupyter lab notebooks/; \
	else echo "Executed notebooks are in notebooks/; open them with: $(PY) -m jupyter lab notebooks/"; fi

test: setup
	$(PY) -m pytest

benchmarks: baselines
	for b in baselines xla_cpu_layers quantization distillation pruning pipeline notebooks; do \
		$(PY) -m benchmarks.$$b || exit 1; \
	done

lint: setup
	$(VENV)/bin/ruff check pruning_kit tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info
