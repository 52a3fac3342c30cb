# Two commands: `make demo` (main job on the synthetic benchmark) and `make test`.
# Both create/reuse the project venv (.venv) through tools/install_deps.sh first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= output/demo
# pytest-xdist processes of `make test`: one per core, at most 4 (each holds torch and
# detectron2 in memory); 0 runs the tests in pytest's own process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

.PHONY: install demo test clean-demo

install:
	@VCM_VENV=$(VENV) bash tools/install_deps.sh

demo: install
	$(PY) tools/demo.py --output $(DEMO_OUT)

test: install
	$(PY) -m pytest tests -q -n $(TEST_WORKERS)

clean-demo:
	rm -rf $(DEMO_OUT)
