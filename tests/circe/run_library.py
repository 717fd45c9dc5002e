"""Run the Circe oracle over the shared PhenotypeLibrary sample on typed GiBleed, MIMIC and synthetic CDMs: reference numbers.

    /work/main/.venv/bin/python tests/circe/run_library.py [--cdm gibleed mimic synthetic] [--out-dir tests/circe]
                                                           [--work DIR] [--timeout 600] [--limit N]

Runs in healthbench's venv (it only orchestrates: typed CDMs from `typed_cdm.py`, then one `oracle.py` batch process
per CDM in the circepy venv, made by `make_venv.sh` if missing) and writes `library_gibleed.csv`,
`library_mimic.csv` and `library_synthetic.csv`, one row per definition:

    cohort_id, name                 file stem of the definition and its name in Cohorts.csv
    status, error_stage, error_type, error      ok/error; where and why circepy failed (first line of the message)
    persons, records                of the final cohort
    n_rules                         inclusion rules
    attrition_persons, attrition_records   ATLAS's attrition: qualifying events, then after each rule ("|"-separated)
    rows_sha256                     sha256 of the sorted cohort rows (`compare.rows_digest`): equal digests = equal rows
    seconds_build, seconds_execute  circepy's render+translate (pure Python), and DuckDB running its SQL
    sql_cached                      the translated SQL came from the oracle's cache (then seconds_build ~ 0)
    n_statements

The full per-definition results (rows, Circe's statistics tables, stage counts) stay in `--work`
(default <tmp>/healthbench-circe-library/<cdm>/<cohort_id>.json).

How long it took (2 cores shared with other engineers' test runs, DuckDB threads=1, circepy 0.3.0, duckdb 2.0.1):
  GiBleed first (SQL cache cold but for 11 definitions run before, 1318 among them, whose generation alone
  takes about a minute, and 5 duplicates of earlier definitions): 1,164 s wall = 1,033 s of circepy's SQL generation
  (pure-Python SqlRender translation; 80 s for the slowest definition, 726) + 120 s of DuckDB + process overhead.
  MIMIC second, reusing the translated SQL: 116 s wall (3 s generation, 105 s DuckDB). Whole command: 21 min 22 s.
  Synthetic (`--cdm synthetic`, run later on its own with a mostly cold SQL cache): 647 s wall = 590 s generation +
  50 s DuckDB.

The synthetic CDM is healthbench's own (`healthbench.synth.generate`, OMOP v5.4) at `typed_cdm.SYNTHETIC` (5,000
persons, seed 14), imported with `healthbench.cdm.import_cdm` and completed with the absent OMOP tables, empty
(`typed_cdm.typed_synthetic()`). Its size, seed and the generated tables' checksums go to `library_synthetic.json`
beside the CSV; the test refuses to compare against the CSV if healthbench's generator no longer makes those tables.
`--summarise-only` rewrites the CSVs from the per-definition results already in `--work`, without running circepy.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import typed_cdm

LIBRARY = typed_cdm.SHARED / "phenotypes" / "ohdsi_phenotype_library"
COLUMNS = ["cohort_id", "name", "status", "error_stage", "error_type", "error", "persons", "records", "n_rules",
           "attrition_persons", "attrition_records", "rows_sha256", "seconds_build", "seconds_execute", "sql_cached",
           "n_statements"]


def circe_python() -> Path:
    venv = Path(os.environ.get("HB_CIRCE_VENV", ROOT / ".circe-venv"))
    if not (venv / "bin" / "python").exists():
        subprocess.run(["bash", str(HERE / "make_venv.sh"), str(venv)], check=True)
    return venv / "bin" / "python"


def rows_digest_of(rows: dict) -> str:
    """Same digest as compare.rows_digest, from an oracle result's `rows` (already sorted)."""
    h = hashlib.sha256()
    for s, a, b in sorted(zip(rows["subject_id"], rows["cohort_start_date"], rows["cohort_end_date"])):
        h.update(f"{int(s)},{a},{b}\n".encode())
    return h.hexdigest()


def summary_row(cohort_id: str, name: str, res: dict) -> dict:
    err = res.get("error") or {}
    att = res.get("attrition") or []
    secs = res.get("seconds") or {}
    return {
        "cohort_id": cohort_id, "name": name, "status": res.get("status"),
        "error_stage": err.get("stage"), "error_type": err.get("type"),
        "error": (str(err.get("message") or "").strip().splitlines() or [""])[0][:300] if err else None,
        "persons": res.get("persons"), "records": res.get("records"),
        "n_rules": len(res.get("inclusion_rules") or []),
        "attrition_persons": "|".join(str(s["persons"]) for s in att) or None,
        "attrition_records": "|".join(str(s["records"]) for s in att) or None,
        "rows_sha256": rows_digest_of(res["rows"]) if res.get("status") == "ok" else None,
        "seconds_build": secs.get("build"), "seconds_execute": secs.get("execute"),
        "sql_cached": res.get("sql_cached"), "n_statements": res.get("n_statements"),
    }


def run(which: str, out_csv: Path, work: Path, *, timeout: float, limit: int | None, threads: int,
        summarise_only: bool = False) -> dict:
    with open(LIBRARY / "Cohorts.csv", newline="") as fh:
        names = {r["cohortId"]: r["cohortName"] for r in csv.DictReader(fh)}
    defs = sorted((LIBRARY / "cohorts").glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    defs = defs[:limit] if limit else defs
    out_dir = work / which
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not summarise_only:
        cdm = {"gibleed": typed_cdm.typed_gibleed, "mimic": typed_cdm.typed_mimic,
               "synthetic": typed_cdm.typed_synthetic}[which]()
        listing = out_dir / "definitions.txt"
        listing.write_text("".join(f"{p}\n" for p in defs))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"OMP_NUM_THREADS": "1"}
        with open(out_dir / "oracle.log", "w") as log:
            subprocess.run([str(circe_python()), str(HERE / "oracle.py"), "--cdm", str(cdm), "--json-list",
                            str(listing), "--out-dir", str(out_dir), "--timeout", str(timeout), "--threads",
                            str(threads)], check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    rows = []
    for p in defs:
        res = json.loads((out_dir / f"{p.stem}.json").read_text())
        rows.append(summary_row(p.stem, names.get(p.stem, ""), res))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    if which == "synthetic":  # what the answers were recorded on: size, seed and the generated tables' checksums
        meta = json.loads(Path(str(typed_cdm.typed_synthetic()) + ".json").read_text())
        keep = ("source", "n_persons", "seed", "cdm_version", "table_checksums", "missing_tables_created_empty")
        out_csv.with_suffix(".json").write_text(json.dumps({k: meta[k] for k in keep}, indent=1) + "\n")
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    return {"cdm": which, "definitions": len(rows), "ok": len(ok), "error": len(rows) - len(ok),
            "persons_gt_0": sum(1 for r in ok if r["persons"]), "wall_seconds": round(wall, 1),
            "build_seconds": round(sum(r["seconds_build"] or 0 for r in rows), 1),
            "execute_seconds": round(sum(r["seconds_execute"] or 0 for r in rows), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cdm", nargs="+", default=["gibleed", "mimic", "synthetic"], choices=["gibleed", "mimic", "synthetic"])
    p.add_argument("--out-dir", default=str(HERE), help="where library_<cdm>.csv go")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "healthbench-circe-library"))
    p.add_argument("--timeout", type=float, default=600, help="seconds of DuckDB time per definition")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, help="only the first N definitions (a smoke run)")
    p.add_argument("--summarise-only", action="store_true", help="only rewrite the CSVs from --work's results")
    a = p.parse_args(argv)
    for which in a.cdm:
        summary = run(which, Path(a.out_dir) / f"library_{which}.csv", Path(a.work), timeout=a.timeout,
                      limit=a.limit, threads=a.threads, summarise_only=a.summarise_only)
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
