#!/bin/bash
# State Transition Engine: shim for the Python implementation (engine/cli/state_transition.py).
set -euo pipefail
# Self-contained: works copied alone into any scripts/ folder. Arguments and exit codes pass
# through. Where the engine is looked up, in order (to add a place, add one `if` here):
module=engine.cli.state_transition console=state-transition
self="$(readlink -f "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$self")/.." && pwd)"
export ORCH_PROG="${ORCH_PROG:-$0}"
run() { exec "$1" -m "$module" "${args[@]}"; }
args=("$@")
if [ -d "$root/engine" ]; then  # 1. the checkout this file sits in: its .venv, else python3 on it
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    if [ -x "$root/.venv/bin/python" ]; then run "$root/.venv/bin/python"; fi
fi
data="${CLAUDE_PLUGIN_DATA:-}"  # 2. the plugin's virtualenv, once its SessionStart hook finished it
if [ -n "$data" ] && [ -x "$data/venv/bin/python" ] && [ -f "$data/venv/.plugin-version" ]; then
    run "$data/venv/bin/python"
fi
found="$(command -v "$console" 2>/dev/null || true)"  # 3. the console script on PATH
if [ -n "$found" ] && [ "$(readlink -f "$found")" != "$self" ]; then exec "$found" "$@"; fi
if command -v python3 >/dev/null 2>&1 && python3 -c "import $module" 2>/dev/null; then
    run python3  # 4. python3 that can import the package (the checkout above, or installed)
fi
echo "$0: parallel-orchestrator not found (no $console on PATH, no .venv in $root, no" \
     "\${CLAUDE_PLUGIN_DATA}/venv, python3 cannot import $module): pip install it or put it on PATH" >&2
exit 127
