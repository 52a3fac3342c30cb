# Two commands: `make demo` (main job on the synthetic benchmark) and `make test`.
# Both create/reuse the project venv (.venv) through tools/install_deps.sh first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= output/demo

.PHONY: install demo test clean-demo

install:
	@VCM_VENV=$(VENV) bash tools/install_deps.sh

demo: install
	$(PY) tools/demo.py --output $(DEMO_OUT)

test: install
	$(PY) -m pytest tests -q

clean-demo:
	rm -rf $(DEMO_OUT)
