# One-command set-up: every target creates .venv and installs the package on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install bytecode test test-ray lint bench demo clean plugin-check test-browser screenshot chromium

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# Byte-code for the engine, written even where PYTHONDONTWRITEBYTECODE is set (an editable
# install gets none from pip): without it every CLI call compiles ~50 ms of source again.
# Only stale files are recompiled, so every target that runs the engine refreshes it.
bytecode: $(STAMP)
	@$(PY) -m compileall -q engine states

install: $(STAMP) bytecode

test: $(STAMP) bytecode
	$(PY) -m pytest -q tests --ignore=tests/ray

# The Ray executor's suite: installs the `ray` extra, starts a real two-node cluster on this host.
RAY_STAMP := $(VENV)/.ray-installed
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[ray,test]' --config-settings editable_mode=compat
	touch $(RAY_STAMP)

test-ray: $(RAY_STAMP) bytecode
	$(PY) -m pytest -q tests/ray

lint: $(STAMP)
	$(PY) -m compileall -q engine states tests bench
	bash -n scripts/*.sh scripts/lib/*.sh bin/* hooks/*.sh

bench: $(STAMP) bytecode
	$(PY) bench/run.py

demo: $(STAMP) bytecode
	$(PY) -m engine.demo

# The dashboard in a real browser: Debian's Chromium, installed when missing (CI runs as root).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

test-browser: $(STAMP) bytecode chromium
	RUN_BROWSER_TESTS=1 $(PY) -m pytest -q tests/test_dashboard_browser.py

# The README's dashboard picture, taken from a live run of the demo plan.
screenshot: $(STAMP) chromium
	$(PY) -m engine.dashboard.screenshot docs/dashboard.png

# The real Claude Code CLI, pinned (engine/claude.py: PINNED_CLI_VERSION), in a git-ignored prefix.
CLAUDE_CODE_VERSION := $(shell sed -n 's/^PINNED_CLI_VERSION = "\([^"]*\)".*/\1/p' engine/claude.py)
TOOLS := .tools
CLAUDE := $(TOOLS)/node_modules/.bin/claude
CLAUDE_STAMP := $(TOOLS)/.claude-code-$(CLAUDE_CODE_VERSION)

$(CLAUDE_STAMP):
	@test -n "$(CLAUDE_CODE_VERSION)" || { echo "Makefile: no PINNED_CLI_VERSION found in engine/claude.py" >&2; exit 1; }
	npm install --prefix $(TOOLS) --no-audit --no-fund --no-save --silent @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	touch $(CLAUDE_STAMP)

# The plugin validates with the real CLI; the preset's flags are checked against its --help;
# the SessionStart hook builds a real venv.
plugin-check: $(STAMP) $(CLAUDE_STAMP)
	$(CLAUDE) --version
	$(CLAUDE) plugin validate --strict .
	CLAUDE_BIN=$(abspath $(CLAUDE)) ORCH_SLOW_TESTS=1 $(PY) -m pytest -q tests/test_plugin.py tests/test_claude_cli.py tests/test_real_claude.py tests/test_redteam_claude.py

clean:
	rm -rf $(VENV) $(TOOLS) *.egg-info .pytest_cache .hypothesis
	find engine states tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
