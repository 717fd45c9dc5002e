#!/usr/bin/env bash
# Second virtual environment for the ACRO reference (tests/acro/acro_reference.py) and the lifelines reference
# (tests/acro/lifelines_check.py). ACRO (PyPI "acro", SACRO project) pins pandas<=2.3.3 and lifelines 0.30.3
# pins pandas<3.0, so neither can share healthbench's main env.
# Usage: bash tests/acro/make_venv.sh [VENV_DIR]     (default: <project root>/.acro-venv)
# Reuses VENV_DIR when it already has acro, lifelines, pandas 2.3.x, pytest and healthbench (with its dev extras) importable.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.acro-venv}"
t_start=$SECONDS
# pip's "Location ... is ignored" warnings about this machine's optional local indexes are noise
quiet_pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v '^WARNING: Location' >&2); }

is_complete() {
  [ -x "$venv/bin/python" ] && HB_ROOT="$root" "$venv/bin/python" - <<'PY' 2>/dev/null
import acro, lifelines, pandas, pytest, healthbench, statsmodels, tableone  # noqa: F401
from importlib.metadata import version
assert pandas.__version__.startswith("2.3."), pandas.__version__
assert version("acro") == "1.0.2", version("acro")
assert version("lifelines") == "0.30.3", version("lifelines")
# every dependency healthbench declares now (pyproject.toml, with the dev extras) is installed: a venv made before a
# dependency was added is incomplete
import re, tomllib, os
project = tomllib.load(open(os.path.join(os.environ["HB_ROOT"], "pyproject.toml"), "rb"))["project"]
for req in project["dependencies"] + project.get("optional-dependencies", {}).get("dev", []):
    version(re.split(r"[ ;<>=!~\[]", req.strip(), maxsplit=1)[0])
PY
}

if is_complete; then
  echo "--- reusing complete ACRO venv at $venv"
else
  python3 -m venv "$venv"
  quiet_pip install -q --upgrade pip
  # acro pinned: the cross-check maps ACRO 1.0's check names and semantics; pandas held at 2.3.x
  # lifelines pinned: the survival reference for healthbench.stats (kaplan_meier, cox)
  quiet_pip install -q 'acro==1.0.2' 'lifelines==0.30.3' 'pandas==2.3.*' pytest
  # healthbench itself (pandas>=2.2) with its dev extras (statsmodels, tableone: the notebooks' references, since
  # run.sh runs every notebook here too); the constraint stops pip from lifting pandas past 2.3
  echo 'pandas==2.3.*' > "$venv/pandas-constraint.txt"
  quiet_pip install -q -c "$venv/pandas-constraint.txt" -e "$root[dev]"
  is_complete || { echo "ACRO venv at $venv is incomplete after install" >&2; exit 1; }
fi
echo "--- ACRO venv: $((SECONDS - t_start)) s"
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in ("acro", "lifelines", "pandas", "numpy")))
PY
