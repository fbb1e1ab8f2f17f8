#!/usr/bin/env bash
# Creates .venv/ at the repo root and installs the project with its dev extras.
# Idempotent and quick: it reinstalls only when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [[ -f "$stamp" ]]; then
    exit 0
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
echo "==> setting up $venv (first run downloads TensorFlow: a few minutes)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]" >&2
rm -f "$venv"/.installed-*
touch "$stamp"
echo "==> environment ready" >&2
