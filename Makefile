# op-dbus: two commands.
#   make run    op-dbusd in a sandbox (its own bus, state under ./sandbox)
#   make test   install what is missing, then lint, type check and every test
#
# Everything else here serves those two.

PYTHON   ?= /usr/bin/python3
VENV     ?= .venv
SANDBOX  ?= sandbox
PYTEST_ARGS ?=

# Debian 12 packages the daemon and its tests use (busctl comes with systemd;
# installing it does not make it PID 1).
APT_PACKAGES := dbus-daemon dbus-bin systemd polkitd python3-venv python3-dev gcc \
                util-linux bsdutils passwd nix-bin \
                openvswitch-switch openvswitch-common iproute2 iputils-ping dnsmasq-base \
                libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system \
                libvirt-daemon-system-sysv libvirt-clients libvirt-dev pkg-config \
                qemu-system-x86 qemu-utils lxc busybox-static btrfs-progs tmux \
                zsh fish libglib2.0-bin libvirt-dbus

.PHONY: run test deps venv lint typecheck pytest bench clean

run: deps venv
	$(VENV)/bin/op-dbusd --sandbox $(SANDBOX)

test: deps venv lint typecheck pytest

deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: as root, install:$$missing" >&2; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

# PyPI's `ovs` installs without its C JSON parser (it needs libopenvswitch to
# build); Debian's python3-openvswitch has it, for this same Python: use it.
# Parsing OVSDB updates in pure Python was a third of a 100-bridge apply.
OVS_JSON_C := /usr/lib/python3/dist-packages/ovs/_json.cpython-311-x86_64-linux-gnu.so

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@ovs=$$($(VENV)/bin/python -c 'import ovs, os; print(os.path.dirname(ovs.__file__))'); \
	if [ -f $(OVS_JSON_C) ] && [ ! -e "$$ovs/$$(basename $(OVS_JSON_C))" ]; then \
	  ln -s $(OVS_JSON_C) "$$ovs/"; \
	fi
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: deps venv
	@for b in bench/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(SANDBOX) .mypy_cache .ruff_cache .pytest_cache
