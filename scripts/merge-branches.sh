#!/bin/bash
# Shim for the Python implementation (engine/cli/merge_branches.py); arguments and exit codes pass through.
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib/shim.sh"
run_engine engine.cli.merge_branches merge-branches "$@"
