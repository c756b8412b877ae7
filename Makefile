# Two commands for a fresh machine: `make demo` and `make test` (README). Both create .venv first if it is missing.
PY := .venv/bin/python

.PHONY: venv demo test soak unit host lint validate ui bench bench-quick device-check device-check-dry clean

venv:
	bash tools/bootstrap.sh

demo: venv
	$(PY) -m bench.demo --out demo_out

test: venv lint
	$(PY) -m pytest tests -m "not slow" -v -rA --durations=10

soak: venv
	$(PY) -m pytest tests/host/test_soak.py -m slow -v -s

unit: venv
	$(PY) -m pytest tests/unit tests/bench -q

host: venv
	$(PY) -m pytest tests/host -v

lint: venv
	$(PY) -m ruff check .

# The Comfy Registry's own pre-publish check (comfy-cli in .venv-cli): it must pass with no warning.
validate: venv
	.venv-cli/bin/comfy --skip-prompt --no-enable-telemetry node validate

bench: venv
	$(PY) -m bench

bench-quick: venv
	$(PY) -m bench --quick

# The CUDA check (bench/device_check.py): host tests and cost bench on the GPU at each precision; --dry on the CPU.
device-check: venv
	$(PY) -m bench.device_check --gpu

device-check-dry: venv
	$(PY) -m bench.device_check --dry

ui: venv
	$(PY) tools/comfy_host.py ui --port 8188

clean:
	rm -rf demo_out device_out .cache
