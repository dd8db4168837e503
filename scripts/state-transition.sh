#!/bin/bash
# State Transition Engine: shim for the Python implementation (engine/cli/state_transition.py).
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib/shim.sh"
run_engine engine.cli.state_transition state-transition "$@"
