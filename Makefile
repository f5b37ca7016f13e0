# Two set-up commands for a fresh machine (see README.md):
#   make demo   - create .venv, quantize a real pretrained model (Magika), compare FP32 / onnxq / onnxruntime
#   make test   - create .venv, lint, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

OV_VENV ?= .venv-openvino

.PHONY: venv venv-openvino demo demo-digits test test-isa test-large fuzz bench bench-quick bench-suite bench-suite-quick clean

# The test environment includes both framework extras (torch CPU wheel, tensorflow-cpu): the
# exporter tests run in CI; and Ray, for the scale-out tests.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,torch,tf,ray]'
	touch $@

venv: $(VENV)/.installed

# The OpenVINO EP ships as its own onnxruntime build, which cannot share a venv with the CPU
# one: a second venv that onnxq bench --ep openvino runs onnxq/ep_child.py in.
$(OV_VENV)/.installed:
	$(PYTHON) -m venv $(OV_VENV)
	$(OV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		onnxruntime-openvino==1.24.1 "numpy>=1.26,<2.3"
	touch $@

venv-openvino: $(OV_VENV)/.installed

demo: venv
	$(PY) -m pip install -qq --disable-pip-version-check -e '.[demo]'
	$(PY) -m benchmarks.demo

demo-digits: venv
	$(PY) -m benchmarks.demo_digits

test: venv
	$(PY) -m ruff check onnxq tests benchmarks tools
	$(PY) -m mypy
	$(PY) -m pytest -q

# The ISA-dependent tests as the other kind of x86 CPU runs them (forced target; qemu AVX2).
test-isa: venv
	PY=$(PY) bash .ci/isa_checks

# A model over 2 GiB end to end (2.3 GB on disk, ~10 GB RSS): not part of make test.
test-large: venv
	ONNXQ_LARGE_TESTS=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_large_model.py

# A long random fuzz run (CI runs a bounded, derandomized profile of the same tests).
fuzz: venv
	ONNXQ_FUZZ_EXAMPLES=$${ONNXQ_FUZZ_EXAMPLES:-1000} ONNXQ_FUZZ_MUTATIONS=$${ONNXQ_FUZZ_MUTATIONS:-400} \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py --hypothesis-show-statistics

bench: venv
	$(PY) -m benchmarks.bench_resnet18

bench-quick: venv
	$(PY) -m benchmarks.bench_resnet18 --quick

# The whole suite: real models (bench extra), onnxruntime, NNCF and Intel's quantizer (own venv),
# with FP32 / onnxq / NNCF also timed on the OpenVINO EP (its own venv).
bench-suite: venv venv-openvino
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r benchmarks/zoo/requirements.txt
	$(PY) -m benchmarks.suite --ep openvino --ep-python $(OV_VENV)/bin/python

bench-suite-quick: venv
	$(PY) -m benchmarks.suite --quick

clean:
	rm -rf $(VENV) $(OV_VENV) build *.egg-info .pytest_cache .ruff_cache
