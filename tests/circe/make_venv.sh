#!/usr/bin/env bash
# Second virtual environment for the Circe reference (tests/circe/oracle.py): OHDSI's ohdsi-circepy renders a Circe
# (ATLAS) cohort definition to SQL, which the oracle runs on DuckDB. circepy needs sqlglot >= 30 and brings duckdb 2.x
# through ibis, past healthbench's pins (sqlglot<29, duckdb<2), so it cannot share healthbench's main env.
# Usage: bash tests/circe/make_venv.sh [VENV_DIR]   (default: $HB_CIRCE_VENV, else <project root>/.circe-venv)
# Reuses VENV_DIR when ohdsi-circepy at the pinned version, duckdb, pandas and pyarrow import there.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-${HB_CIRCE_VENV:-$root/.circe-venv}}"
circepy_version="0.3.0"
t_start=$SECONDS
# pip's "Location ... is ignored" warnings about this machine's optional local indexes are noise
quiet_pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v '^WARNING: Location' >&2); }

is_complete() {
  [ -x "$venv/bin/python" ] && CIRCEPY_VERSION="$circepy_version" "$venv/bin/python" - <<'PY' 2>/dev/null
import os
import circe.api, circe.sqlrender, duckdb, pandas, pyarrow  # noqa: F401
from importlib.metadata import version
assert version("ohdsi-circepy") == os.environ["CIRCEPY_VERSION"], version("ohdsi-circepy")
PY
}

if is_complete; then
  echo "--- reusing complete circepy venv at $venv"
else
  python3 -m venv "$venv"
  quiet_pip install -q --upgrade pip
  # circepy pinned: the oracle calls its SQL builder and SqlRender port, and the reference numbers
  # (tests/circe/library_*.csv) were made with this version. pandas and pyarrow: the oracle writes Parquet.
  quiet_pip install -q "ohdsi-circepy==$circepy_version" pandas pyarrow
  is_complete || { echo "circepy venv at $venv is incomplete after install" >&2; exit 1; }
fi
echo "--- circepy venv: $((SECONDS - t_start)) s"
"$venv/bin/python" - <<'PY'
import sys
from importlib.metadata import version
print(f"python=={sys.version.split()[0]} " + " ".join(
    f"{p}=={version(p)}" for p in ("ohdsi-circepy", "duckdb", "sqlglot", "ibis-framework", "pandas", "pyarrow")))
PY
