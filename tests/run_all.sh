#!/usr/bin/env bash
# The whole test suite, as CI runs it: generated code and notebooks are in sync, every notebook runs
# (nbs/ and tutorials/), pytest passes, and in a second venv (ACRO, pandas 2.3) the ACRO cross-check and the
# notebooks pass. Run from the project root with healthbench's environment on PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
workers="${HB_TEST_WORKERS:-2}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()

step() {  # step NAME COMMAND...: run, time, remember failures
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name"
  if "$@"; then echo "--- $name: ok ($((SECONDS - t0)) s)"
  else echo "--- $name: FAILED ($((SECONDS - t0)) s)"; failed+=("$name"); fi
}

export_is_clean() {
  cp -r healthbench "$scratch/before"
  nbdev-export || return 1
  if ! diff -r -q -x __pycache__ "$scratch/before" healthbench; then
    echo "nbdev-export changed healthbench/: run nbdev-export and commit the result"; return 1; fi
}

notebooks_are_clean() {
  mkdir -p "$scratch/nbs" "$scratch/tutorials"
  cp -r nbs/. "$scratch/nbs"; cp -r tutorials/. "$scratch/tutorials"
  nbdev-clean || return 1
  nbdev-clean --fname tutorials || return 1
  local ok=0
  diff -r -q nbs "$scratch/nbs" || ok=1
  diff -r -q tutorials "$scratch/tutorials" || ok=1
  if [ $ok -ne 0 ]; then echo "nbdev-clean changed notebooks: run nbdev-clean and commit the result"; fi
  return $ok
}

run_pytest() {
  HB_HYPOTHESIS_DERANDOMIZE="${HB_HYPOTHESIS_DERANDOMIZE:-1}" python -m pytest -q -p no:cacheprovider
  local rc=$?
  if [ $rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; return 1; fi
  return $rc
}

step "nbdev-export leaves healthbench/ unchanged" export_is_clean
step "nbdev-clean leaves notebooks unchanged" notebooks_are_clean
step "notebook tests (nbdev-test nbs)" nbdev-test --n-workers "$workers" --timing
step "tutorials (nbdev-test tutorials)" nbdev-test tutorials --n-workers "$workers"
step "templates with their defaults (nbdev-test healthbench/templates)" nbdev-test healthbench/templates --n-workers "$workers"
# the second venv for OHDSI's circepy (the Circe reference; it needs sqlglot >= 30): made once, reused when complete;
# with it, the Circe cross-checks must run (a missing venv fails them instead of skipping)
circe_venv() {
  export HB_CIRCE_VENV="${HB_CIRCE_VENV:-$PWD/.circe-venv}"
  bash tests/circe/make_venv.sh "$HB_CIRCE_VENV" && export HB_REQUIRE_CIRCE=1 HB_REQUIRE_ENGINE=1
}
step "circepy venv (second venv)" circe_venv
step "pytest" run_pytest
step "ACRO cross-check and notebooks on pandas 2.3 (second venv)" bash tests/acro/run.sh

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED steps:\n'; printf '  - %s\n' "${failed[@]}"; exit 1
fi
echo "all test steps passed"
