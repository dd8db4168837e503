#!/bin/bash
# Shim for the Python implementation (engine/cli/setup_worktree.py); arguments and exit codes pass through.
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib/shim.sh"
run_engine engine.cli.setup_worktree setup-worktree "$@"
