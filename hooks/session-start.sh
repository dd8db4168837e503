#!/bin/bash
# SessionStart hook: build the engine's virtualenv in ${CLAUDE_PLUGIN_DATA}/venv.
# The plugin folder is replaced on every update, so the venv lives in the data directory and
# carries a stamp with the plugin version it was built from: silent when the stamp matches,
# one line (to Claude's context, exit 0: a session never fails because of us) otherwise.
set -uo pipefail
root="${CLAUDE_PLUGIN_ROOT:-$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)}"
data="${CLAUDE_PLUGIN_DATA:-}"
[ -n "$data" ] || exit 0
# the Bash tool's commands (bin/ on PATH) find the venv through this, whatever the CLI exports
[ -n "${CLAUDE_ENV_FILE:-}" ] && printf 'export PARALLEL_ORCHESTRATOR_DATA=%q\n' "$data" >> "$CLAUDE_ENV_FILE"

say() { printf 'parallel-orchestrator: %s\n' "$1"; }
# An unfinished run in this project: one or two lines (its state, counts, whether its process
# lives, the command to run next); nothing when there is none. Never fails the session.
project="${CLAUDE_PROJECT_DIR:-$PWD}"
note_run() {
    [ -f "$project/.claude/auto-progress.yaml" ] || return 0
    (cd "$project" && CLAUDE_PLUGIN_DATA="$data" timeout 20 "$root/bin/orchestrator" status --brief 2>/dev/null) || true
}
trap note_run EXIT
command -v python3 >/dev/null 2>&1 || { say "python3 not found; install Python 3.9+ to use orchestrator"; exit 0; }
command -v git >/dev/null 2>&1 || { say "git not found; install git 2.38+ to use orchestrator"; exit 0; }

version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
          "$root/.claude-plugin/plugin.json" 2>/dev/null) || { say "cannot read the plugin version"; exit 0; }
venv="$data/venv"
stamp="$venv/.plugin-version"
[ "$(cat "$stamp" 2>/dev/null)" = "$version" ] && [ -x "$venv/bin/python" ] && exit 0

mkdir -p "$data" || { say "cannot create $data"; exit 0; }
exec 9>"$data/.venv.lock"
command -v flock >/dev/null 2>&1 && flock 9  # two sessions starting at once build it once
[ "$(cat "$stamp" 2>/dev/null)" = "$version" ] && [ -x "$venv/bin/python" ] && exit 0

log="$data/venv-build.log"
if { rm -rf "$venv" && python3 -m venv "$venv" \
     && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$root"; } >"$log" 2>&1; then
    printf '%s' "$version" > "$stamp"
    say "engine $version installed (orchestrator is on PATH)"
else
    rm -rf "$venv"
    say "could not build the Python environment; see $log"
fi
exit 0
