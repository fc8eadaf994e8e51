# The whole project is driven from here. `make up` and `make test` install what
# they need by themselves and are safe to run twice.
SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
IMAGE_DIR := $(ROOT)/images/build
GEN := client/cloudapi/v1
PROTOS := $(wildcard proto/cloudapi/v1/*.proto)

.PHONY: up down status test test-faults unit bench bench-placement bench-soak bench-network lint proto image deps venv lock clean docs \
	ansible-venv ansible-check

# The web dashboard's port: make up DASHBOARD_PORT=8081
DASHBOARD_PORT ?= 8080
# Guests on each project's own networks (tenant), or all on the host's NAT network: make up NETWORKING=nat
NETWORKING ?= tenant
up: deps venv image
	$(PY) -m localcloud up --dir $(ROOT)/.cloud --image-dir $(IMAGE_DIR) --dashboard-port $(DASHBOARD_PORT) \
	  --networking $(NETWORKING)
	ln -sf $(VENV)/bin/cloudctl /usr/local/bin/cloudctl

down:
	@if [ -x $(PY) ]; then $(PY) -m localcloud down --dir $(ROOT)/.cloud; fi

status:
	$(PY) -m localcloud status --dir $(ROOT)/.cloud

# A skip fails here unless tests/conftest.py's ALLOWED_SKIPS lists it (STRICT_SKIPS=1;
# CI=true does the same); each test is bounded by pytest-timeout (pyproject.toml);
# the 25 slowest are listed at the end.
test: deps venv image lint ansible-check
	STRICT_SKIPS=1 $(PY) -m pytest -q -ra --durations=25 tests

# The fault tests alone (they run in `make test` too): kill -9 / restart real
# agents, workers, Redis and etcd mid-boot; the reconciler's own tests with them.
test-faults: deps venv image
	$(PY) -m pytest -q -ra tests/faults tests/control/test_reconciler.py

unit: venv
	$(PY) -m pytest -q tests/unit

bench: deps venv image
	$(PY) bench/boot.py
	$(PY) bench/quota.py
	$(PY) bench/placement.py 1000 5000
	$(PY) bench/mtls.py
	$(PY) bench/etcd_tls.py
	$(PY) bench/agents.py 200

# Tenant networks (bench/network.py): real guests' DHCP and floating IP attach on
# a private cloud, and namespace endpoints' ping and TCP on one host and across
# two (VXLAN) against one plain bridge; about 70 s, as root.
bench-network: deps venv image
	$(PY) bench/network.py
	$(PY) bench/firewall.py

# etcd's size under heartbeating hosts, with compaction (bench/soak.py):
# make bench-soak AGENTS=200 SOAK_SECONDS=300 HISTORY=60s
AGENTS ?= 200
SOAK_SECONDS ?= 300
HISTORY ?= 60s
bench-soak: deps venv
	$(PY) bench/soak.py $(AGENTS) --seconds $(SOAK_SECONDS) --history $(HISTORY)

# One host count alone: make bench-placement HOSTS=5000
HOSTS ?= 1000
bench-placement: deps venv
	$(PY) bench/placement.py $(HOSTS)

lint: venv
	$(VENV)/bin/ruff check .
	MYPYPATH=client $(VENV)/bin/mypy --ignore-missing-imports --no-strict-optional \
	  control client/cloudclient compute-agent/compute_agent localcloud dashboard

deps: .stamps/deps
.stamps/deps: scripts/install-deps.sh scripts/programs.txt
	scripts/install-deps.sh
	@mkdir -p .stamps && touch $@

# The virtualenv: pinned dependencies, then the project itself (editable) once
# the generated stubs exist, so its package finder knows them.
venv: $(VENV)/.project
$(VENV)/.installed: requirements.lock .stamps/deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@
$(VENV)/.project: $(VENV)/.installed $(GEN)/.generated pyproject.toml client/pyproject.toml
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps -e client
	touch $@

# Generated stubs are not committed: this is the one step that makes them.
proto: $(GEN)/.generated
$(GEN)/.generated: $(PROTOS) $(VENV)/.installed
	mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --grpc_python_out=client \
	  --pyi_out=client $(PROTOS)
	touch client/cloudapi/__init__.py $(GEN)/__init__.py $@

# The API reference (docs/api.md) from the protos' comments; lists (and fails on)
# any service, RPC or field without one.
docs: venv
	$(PY) docs/gen_api_docs.py

image: $(IMAGE_DIR)/image.json
$(IMAGE_DIR)/image.json: images/build-image.sh $(shell find images/rootfs -type f 2>/dev/null) .stamps/deps
	images/build-image.sh $(IMAGE_DIR)
	touch $@

lock: venv
	$(PY) -m pip freeze --exclude-editable | grep -v '^pip==' > requirements.lock

clean: down
	rm -rf .cloud .stamps client/cloudapi $(IMAGE_DIR)

# Ansible deployment (ansible/README.md): ansible-core and ansible-lint in their
# own venv (pinned in ansible/requirements.lock; kept apart from the project's).
ANSIBLE_VENV := $(ROOT)/.venv-ansible
ansible-venv: $(ANSIBLE_VENV)/.installed
$(ANSIBLE_VENV)/.installed: ansible/requirements.lock
	test -x $(ANSIBLE_VENV)/bin/python || python3 -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/python -m pip install -q -r ansible/requirements.lock
	touch $@

# Syntax check of every playbook and ansible-lint (default profile).
ansible-check: ansible-venv
	cd ansible && for p in site.yml add-compute.yml teardown.yml; do \
	  $(ANSIBLE_VENV)/bin/ansible-playbook -i inventories/local --syntax-check $$p || exit 1; \
	  $(ANSIBLE_VENV)/bin/ansible-playbook -i inventories/example --syntax-check $$p || exit 1; done
	cd ansible && PATH=$(ANSIBLE_VENV)/bin:$$PATH $(ANSIBLE_VENV)/bin/ansible-lint
