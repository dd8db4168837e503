# Shared by the bash shims in scripts/: find a Python that has the engine and exec a module.
# Order: this checkout's .venv, then an installed console script, then python3 on the
# checkout itself. Sourced, never run; the caller has already set -euo pipefail.

_shim_self="$(readlink -f "${BASH_SOURCE[1]}")"
_shim_root="$(cd "$(dirname "$_shim_self")/.." && pwd)"
export ORCH_PROG="${ORCH_PROG:-$0}"

run_engine() {
    local module="$1" console="$2"
    shift 2
    if [ -x "$_shim_root/.venv/bin/python" ]; then
        PYTHONPATH="$_shim_root${PYTHONPATH:+:$PYTHONPATH}" exec "$_shim_root/.venv/bin/python" -m "$module" "$@"
    fi
    if command -v "$console" >/dev/null 2>&1; then
        exec "$console" "$@"
    fi
    PYTHONPATH="$_shim_root${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m "$module" "$@"
}
