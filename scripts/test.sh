#!/usr/bin/env bash
# The whole check: lint, types, then every test (unit and integration on the embedded broker).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
echo "==> ruff" >&2
.venv/bin/ruff check consumer producer_tools tests
.venv/bin/ruff format --check consumer producer_tools tests
echo "==> mypy" >&2
.venv/bin/mypy
echo "==> pytest" >&2
rm -rf .pytest-hangs  # tests/conftest.py writes there the stacks of a test that hung
set +e
# Three test processes, each with its own embedded broker: most tests wait on the broker and the
# group, not the CPU (on 2 cores, in two processes, the cores were 53% busy and the suite took
# 16m14s; in three, 13.5 minutes, and under 12 with worksteal: an idle process takes half of the
# busiest one's queue; tests/conftest.py puts the long modules first). Pass -n 0 to run in one (to
# debug with -s or pdb), or set TFSTREAM_TEST_PROCESSES.
.venv/bin/python -m pytest -n "${TFSTREAM_TEST_PROCESSES:-3}" --dist worksteal "$@"
status=$?
set -e
for hang in .pytest-hangs/*.txt; do
    if [[ -s $hang ]]; then
        echo "==> a test hung; where each thread of its process was:" >&2
        cat "$hang" >&2
    fi
done
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit $status
