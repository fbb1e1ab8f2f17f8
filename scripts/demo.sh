#!/usr/bin/env bash
# The main job on the embedded broker: start it, train the digits model, publish, consume, compare.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" -m producer_tools demo "$@"
