#!/bin/bash
# Shim for the Python implementation (engine/cli/checkpoint_manager.py); arguments and exit codes pass through.
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib/shim.sh"
run_engine engine.cli.checkpoint_manager checkpoint-manager "$@"
