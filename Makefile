# Quick start (Debian 12, as root):  make qualify   |   make test
# Every target installs what it is missing first, and is safe to run again.

PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest
STAMP   := .venv/.installed
# Guests spend most of a scenario waiting (DHCP, hotplug timers), so more workers than cores pay
# off; make test's self-tests start guests of their own, so it keeps 3 (docs/figures.md#workers).
JOBS    ?= 3
PYTEST_ARGS ?=

.PHONY: setup image qualify test lab lab-smoke nightly unit bench doctor clean libvirt-daemon

setup: $(STAMP)
	@sh .ci/install-host-packages

$(STAMP): pyproject.toml
	@sh .ci/install-host-packages
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	! pkg-config --exists libvirt || $(PY) -m pip install -q -e '.[libvirt]'
	touch $(STAMP)

image: setup
	$(PY) -m harness image build

# The main job: the whole scenario matrix on the built-in guest with emulated devices.
# 4 workers: the matrix's guests wait (DHCP, pciehp's 5 s button delay) as much as they
# compute, and 3 left part of 2 cores idle; more than 4 gained nothing (docs/figures.md).
# Saved guest states are kept across runs in STATES (keyed by image, QEMU and command line, so
# a changed one is never used): a second run restores the shapes the first one booted.
QUALIFY_JOBS ?= 4
STATES  ?= fixtures/images/build/states
qualify: image
	$(PYTEST) tests/scenarios -n $(QUALIFY_JOBS) --dist loadgroup --snapshot-cache $(STATES) $(PYTEST_ARGS)

# The project's own test suite: unit tests, the scenarios, the fault-injection tests.
test: image
	@sh .ci/install-host-packages test
	@sh .ci/libvirt-daemon
	$(PYTEST) tests/unit tests/harness tests/scenarios -n $(JOBS) --dist loadgroup $(PYTEST_ARGS)

# The vfio backend's scenarios through real vfio-pci and usb-host, inside the nested lab host
# (an L1 guest with an emulated IOMMU; docs/lab.md). Of the lifecycle scenarios (all lab
# variants: pytest --backend lab -k lifecycle, which takes longer than this whole target), the
# two whose vfio path differs most: device_del at once on pciehp, and migration refused.
LAB_TESTS ?= tests/scenarios/test_nic.py tests/scenarios/test_usb.py tests/scenarios/test_sata.py tests/scenarios/test_nvme.py \
             tests/scenarios/test_passthrough_failures.py \
             'tests/scenarios/test_lifecycle.py::test_unplug_at_once[lab-q35-pciehp-e1000e]' \
             'tests/scenarios/test_lifecycle.py::test_live_migration_with_hot_added_devices[lab-q35-pciehp-e1000e]'
# A lab host that hangs or stops before its tests end (nested SVM on TCG wedges L1 now and then,
# docs/lab.md) is restarted for the tests not yet finished, as the lab smoke is (below), up to
# LAB_RUNS lab runs in all, and the run says so; any other failure (an internal error included)
# is final. A wedge is caught within a minute or two (L1's watchdog or RCU stall report), or
# after the lab host's silence deadline; how often: docs/figures.md.
LAB_RUNS ?= 3
lab: image
	$(PY) -m harness lab-runs --runs $(LAB_RUNS) -- $(LAB_TESTS) $(PYTEST_ARGS)

# The lab smoke, run by .ci/run after `make test`: through real vfio-pci and usb-host in the lab,
# every role once, on pc or q35 (the USB device in the guide's vendor:product form, which QEMU
# gets pinned to the proven device's bus and address, as the bus.address form is: the same
# plug); the machine types' other roles are the emulated matrix's in `make test` and the whole
# `make lab`'s. Then the four passthrough failure tests, and the refused-unplug and SIGTERM
# releases. (The USB device in both forms cost another 100 s of a 1190 s lab run, Dec 7.) A lab host that wedges (exit 3) is restarted for the tests not yet finished,
# up to LAB_SMOKE_RUNS lab runs in all, and the run says so (`python -m harness lab-runs`); any
# other failure is final.
LAB_SMOKE_TESTS ?= \
  'tests/scenarios/test_nic.py::test_nic[lab-q35-acpi-e1000e]' \
  'tests/scenarios/test_usb.py::test_usb_device[lab-q35-ehci-stick-vidpid]' \
  'tests/scenarios/test_usb.py::test_usb_controller[lab-pc-xhci]' \
  'tests/scenarios/test_sata.py::test_sata_controller[lab-q35-acpi-ahci]' \
  'tests/scenarios/test_nvme.py::test_nvme[lab-pc-nvme]' \
  tests/scenarios/test_passthrough_failures.py::test_device_on_host_driver \
  tests/scenarios/test_passthrough_failures.py::test_group_not_viable \
  tests/scenarios/test_passthrough_failures.py::test_device_already_attached \
  tests/scenarios/test_passthrough_failures.py::test_missing_device \
  tests/scenarios/test_passthrough_failures.py::test_refused_unplug_gives_the_device_back_after_its_guest_is_closed \
  tests/scenarios/test_passthrough_failures.py::test_sigterm_mid_test_gives_the_device_back_and_leaves_no_qemu
LAB_SMOKE_RUNS ?= 3
lab-smoke: image
	$(PY) -m harness lab-runs --runs $(LAB_SMOKE_RUNS) -- $(LAB_SMOKE_TESTS) $(PYTEST_ARGS)

# The nightly job of a VT-d host (docs/vfio.md): give back what a killed run left, check the host,
# run the scenario matrix through real vfio-pci, give everything back; one exit status, non-zero
# if the host is broken, a test failed, nothing was tested or a device could not be given back.
# It runs as root, so what CI hands it comes through the environment, never make's command line
# (make expands $(...) in a variable and the recipe's shell runs its ; and $(...)):
# HH_INVENTORY (else INVENTORY) and HH_PYTEST_ARGS, which pytest alone splits, as shell words
# that nothing executes (PYTEST_ADDOPTS). PYTEST_ARGS is refused here (docs/fleet.md); mind
# that make expands $(...) in any variable on its command line whatever the Makefile says.
# HH_PYTEST_ARGS (and PYTEST_ADDOPTS) may not hold -p, -c, -o, --rootdir, --confcutdir,
# --disable-plugin-autoload or @FILE: pytest acts on them (imports a plugin, reads an ini file or
# more arguments, puts a pythonpath first) before any check of the harness, or leaves the harness
# unloaded; a test path there (any word pytest may take as a path) is held to its owner before
# pytest runs, since pytest chooses its ini file from the folders above it (docs/fleet.md).
# Before anything of the checkout runs as root (its .venv included: `make image` runs it), the
# checkout is refused if another user could have written any of it (.ci/check-root-tree). That
# check comes after make has read this checkout's makefiles: the jobs in ci/ run root's own
# installed copy of it before make (docs/fleet.md); this one is the second line.
INVENTORY ?= inventory.toml
nightly:
	@if [ "$(if $(value PYTEST_ARGS),set)" = set ]; then echo "make nightly: PYTEST_ARGS is not read here (make and the shell would parse it as root): put the pytest options in the environment variable HH_PYTEST_ARGS"; exit 2; fi
	@sh .ci/check-root-tree
	@$(PY) -m harness check-pytest-args
	@$(MAKE) --no-print-directory image
	@inv="$${HH_INVENTORY:-$(INVENTORY)}"; \
	test -f "$$inv" || { echo "make nightly: no inventory $$inv (python -m harness discover --write $$inv)"; exit 2; }; \
	set -x; \
	$(PY) -m harness restore && \
	$(PY) -m harness doctor --inventory "$$inv" && \
	$(PY) -m harness plan --inventory "$$inv" || exit $$?; \
	status=0; PYTEST_ADDOPTS="$${PYTEST_ADDOPTS:-} $${HH_PYTEST_ARGS:-}" $(PYTEST) tests/scenarios \
	    --backend vfio --host-inventory "$$inv" -n $(JOBS) --dist loadgroup || status=$$?; \
	$(PY) -m harness restore || status=1; exit $$status

# The real libvirt daemon on qemu:///system, for --driver libvirt (started if it is not running).
libvirt-daemon: setup
	@sh .ci/libvirt-daemon

unit: setup
	$(PYTEST) tests/unit $(PYTEST_ARGS)

bench: image
	$(PY) bench/bench.py

doctor: setup
	$(PY) -m harness doctor

# Removes the guest images and every run folder but the newest (reports/latest stays too).
clean:
	python3 -m harness prune reports --keep 1
	rm -rf fixtures/images/build
