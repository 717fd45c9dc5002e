#!/usr/bin/env bash
# The ACRO and lifelines cross-checks, in a second virtual environment (ACRO 1.0.2 pins pandas <= 2.3.3, lifelines
# 0.30.3 pandas < 3): healthbench's verdicts equal ACRO's on the fixture tables, kaplan_meier and cox agree with
# lifelines, and every notebook in nbs/ also runs under pandas 2.3.
# Usage: bash tests/acro/run.sh            (venv: $HB_ACRO_VENV, default <project root>/.acro-venv)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${HB_ACRO_VENV:-$root/.acro-venv}"
cd "$root"
bash tests/acro/make_venv.sh "$venv"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/acro/crosscheck.py tests/acro/lifelines_check.py
echo "--- notebooks under pandas $("$venv/bin/python" -c 'import pandas; print(pandas.__version__)')"
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" nbdev-test --n-workers "${HB_TEST_WORKERS:-2}"
