"""healthbench's Circe engine against circepy's SQL on the whole shared PhenotypeLibrary set, on typed GiBleed, timed.

    PYTHONPATH=. python bench/library_gibleed.py [--limit N] [--threads 1]

1. Renders every shared definition (`../shared/data/phenotypes/ohdsi_phenotype_library/cohorts/*.json`, 547) to
   circepy's DuckDB statements in the circepy venv (`tests/circe/oracle.py`'s `render_sql`, which caches the translated
   SQL by definition text in `$HB_CIRCE_SQL_CACHE`: a cold cache costs about 17 min of circepy's pure-Python SqlRender,
   not counted below).
2. In this process, on ONE DuckDB connection (in memory, `--threads`, typed GiBleed attached read-only as catalog `cdm`,
   circepy's results tables in an attached in-memory catalog `results`), runs each definition both ways, alternating
   which side goes first: healthbench (`read_expression` + `generate_expression` + the rows to pandas + dropping its
   stage tables) and circepy's statements as the oracle runs them (+ reading `results.cohort`). Only that is timed;
   reading the JSON for healthbench is inside its time, rendering for circepy is not (which favours circepy).
3. Checks the two cohorts are equal row for row for each definition, and circepy's rows against its recorded answer
   (`tests/circe/library_gibleed.csv`), and prints per-side totals and medians over the definitions both sides ran,
   and the ratio healthbench / circepy.

Not a test: run it by hand.

Run on 2 Dec 2026 (2 cores shared with another engineer, load average about 2; DuckDB 1.x threads=1; circepy 0.3.0's
SQL from a warm cache), in about 2.5 min:

    cd <worktree> && export PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=1; unset VIRTUAL_ENV
    PYTHONPATH=. HB_CIRCE_VENV=.circe-venv python bench/library_gibleed.py

    circepy SQL for 547 definitions in 2.5 s (547 from its cache)
    typed GiBleed (/tmp/healthbench-circe-cdm/gibleed_5.3.duckdb), 547 definitions, DuckDB threads=1, one connection; wall 153.0 s
    both sides ran 542; same rows on 542 (69 with rows); differ: none
      circepy failed on 344: BinderException: Binder Error: Referenced table "vd" not found!
      circepy failed on 1072: BinderException: Binder Error: Referenced table "s" not found!
      circepy failed on 1224: BinderException: Binder Error: Referenced table "s" not found!
      circepy failed on 1226: BinderException: Binder Error: Referenced table "s" not found!
      circepy failed on 1228: BinderException: Binder Error: Referenced table "s" not found!
    healthbench: total 113.4 s, median 135 ms, max 2.70 s
    circepy SQL: total 24.5 s, median 29 ms, max 0.47 s (DuckDB execution only; its SQL generation excluded)
    ratio healthbench / circepy: total 4.62, median 4.74, median of per-definition ratios 4.97
    slowest in healthbench: 1318 2.70 s (circepy 0.47 s), 726 1.95 s (circepy 0.47 s), 218 1.50 s (circepy 0.22 s), 216 1.31 s (circepy 0.25 s), 820 1.04 s (circepy 0.14 s)

So on a CDM as small as GiBleed (2,694 persons) healthbench takes about 4.6 times circepy's DuckDB time, and that gap
is fixed per-definition Python cost, not query time: a cProfile of 8 typical definitions (32, 40, 70, 288, 520, 770,
920, 1194) puts 55% of healthbench's time in ibis compiling expressions to SQL and 13% in resolving concept sets (the
rest: DuckDB, reading the JSON, fetching rows). circepy's fixed cost is its SQL generation, excluded above and far larger: 590 s for the 547
definitions with a cold cache (`tests/circe/run_library.py --cdm synthetic`), 80 s for definition 726 alone. The 344,
1072, 1224-1228 failures are circepy 0.3.0's VisitDetail and Specimen template bugs (tests/circe/README.md); healthbench
ran them (timed in no total). For scale, `bench/engine_circe.py` times one large definition at 1M persons.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "circe"))

import compare  # noqa: E402
import typed_cdm  # noqa: E402

LIBRARY = typed_cdm.SHARED / "phenotypes" / "ohdsi_phenotype_library" / "cohorts"

# runs in the circepy venv: {stem: {"statements": [...], "cached": bool} | {"error": "..."}} for the definitions listed
_RENDER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import oracle
out = {}
for path in open(sys.argv[2]).read().split():
    stem = path.rsplit("/", 1)[-1].removesuffix(".json")
    try:
        _, statements, cached = oracle.render_sql(open(path).read(), 1, oracle.sql_cache_dir())
        out[stem] = {"statements": statements, "cached": cached}
    except Exception as e:
        out[stem] = {"error": f"{getattr(e, 'oracle_stage', 'build')}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
json.dump(out, open(sys.argv[3], "w"))
"""


def render_all(defs: list[Path], work: Path) -> dict:
    listing, out = work / "definitions.txt", work / "statements.json"
    listing.write_text("".join(f"{p}\n" for p in defs))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([str(compare.circe_python()), "-c", _RENDER,
                    str(ROOT / "tests" / "circe"), str(listing), str(out)], check=True, env=env)
    rendered = json.loads(out.read_text())
    cached = sum(1 for v in rendered.values() if v.get("cached"))
    print(f"circepy SQL for {len(rendered)} definitions in {time.perf_counter() - t:.1f} s ({cached} from its cache)")
    return rendered


RESULTS_DDL = """
create table results.cohort (cohort_definition_id bigint, subject_id bigint, cohort_start_date date, cohort_end_date date);
create table results.cohort_inclusion (cohort_definition_id bigint, rule_sequence int, name varchar, description varchar);
create table results.cohort_inclusion_result (cohort_definition_id bigint, inclusion_rule_mask bigint, person_count bigint,
                                              mode_id int);
create table results.cohort_inclusion_stats (cohort_definition_id bigint, rule_sequence int, person_count bigint,
                                             gain_count bigint, person_total bigint, mode_id int);
create table results.cohort_summary_stats (cohort_definition_id bigint, base_count bigint, final_count bigint, mode_id int);
create table results.cohort_censor_stats (cohort_definition_id bigint, lost_count bigint);
"""  # OHDSI WebAPI's results tables, as tests/circe/oracle.py makes them


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="only the first N definitions (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "healthbench-bench-library"))
    args = ap.parse_args(argv)
    defs = sorted(LIBRARY.glob("*.json"), key=lambda p: int(p.stem))[: args.limit]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rendered = render_all(defs, work)
    with open(ROOT / "tests" / "circe" / "library_gibleed.csv") as f:
        recorded = {r["cohort_id"]: r for r in csv.DictReader(f)}

    import ibis
    from healthbench.atlas import read_expression
    from healthbench.cdm import connect
    from healthbench.engine import generate_expression

    cdm_path = typed_cdm.typed_gibleed()
    backend = ibis.duckdb.connect()
    con = backend.con
    con.execute(f"SET threads = {args.threads}")
    con.execute(f"ATTACH '{cdm_path}' AS cdm (READ_ONLY)")
    con.execute("ATTACH ':memory:' AS results")
    con.execute(RESULTS_DDL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cdm = connect(backend, schema="cdm.main")

    def run_hb(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            x, _ = read_expression(path)
            r = generate_expression(cdm, x)
            rows = r.to_pandas()
            r.drop_stages()
            return time.perf_counter() - t, rows

    def run_circe(path, statements):
        for t in ("cohort", "cohort_inclusion", "cohort_inclusion_result", "cohort_inclusion_stats",
                  "cohort_summary_stats", "cohort_censor_stats"):
            con.execute(f"delete from results.{t}")
        rules = json.loads(path.read_text()).get("InclusionRules") or []
        for i, r in enumerate(rules):
            con.execute("insert into results.cohort_inclusion values (1, ?, ?, ?)", [i, r.get("name"), r.get("description")])
        before = {r[0] for r in con.execute("select table_name from duckdb_tables() where temporary").fetchall()}
        t = time.perf_counter()
        try:
            for s in statements:
                con.execute(s)
            rows = con.execute("select subject_id, cohort_start_date, cohort_end_date from results.cohort").df()
            return time.perf_counter() - t, rows, None
        except Exception as e:  # noqa: BLE001 - circepy's known failures (VisitDetail, Specimen)
            elapsed = time.perf_counter() - t
            for (name,) in con.execute("select table_name from duckdb_tables() where temporary").fetchall():
                if name not in before:
                    con.execute(f'drop table if exists temp."{name}"')
            return elapsed, None, f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"

    timed, circe_failed, hb_failed, differ = [], [], [], []
    t_all = time.perf_counter()
    for i, path in enumerate(defs):
        r = rendered[path.stem]
        sides = {}
        order = ("hb", "circe") if i % 2 == 0 else ("circe", "hb")
        for side in order:
            if side == "hb":
                try:
                    sides["hb"] = run_hb(path)
                except Exception as e:  # noqa: BLE001
                    hb_failed.append((path.stem, f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"))
            elif "statements" in r:
                sec, rows, err = run_circe(path, r["statements"])
                if err:
                    circe_failed.append((path.stem, err))
                else:
                    sides["circe"] = (sec, rows)
            else:
                circe_failed.append((path.stem, r["error"]))
        if set(sides) == {"hb", "circe"}:
            d = compare.diff_cohorts(sides["circe"][1], sides["hb"][1], names=("circe", "healthbench"))
            rec = recorded.get(path.stem, {}).get("rows_sha256")
            if not d.equal or compare.rows_digest(sides["circe"][1]) != rec:
                differ.append(path.stem)
            timed.append((path.stem, sides["hb"][0], sides["circe"][0], len(sides["hb"][1])))
    wall = time.perf_counter() - t_all

    hb = [t[1] for t in timed]
    ci = [t[2] for t in timed]
    print(f"typed GiBleed ({cdm_path}), {len(defs)} definitions, DuckDB threads={args.threads}, one connection; wall {wall:.1f} s")
    print(f"both sides ran {len(timed)}; same rows on {len(timed) - len(differ)} "
          f"({sum(1 for t in timed if t[3])} with rows); differ: {differ or 'none'}")
    for stem, err in circe_failed:
        print(f"  circepy failed on {stem}: {err}")
    for stem, err in hb_failed:
        print(f"  healthbench failed on {stem}: {err}")
    print(f"healthbench: total {sum(hb):.1f} s, median {statistics.median(hb) * 1000:.0f} ms, max {max(hb):.2f} s")
    print(f"circepy SQL: total {sum(ci):.1f} s, median {statistics.median(ci) * 1000:.0f} ms, max {max(ci):.2f} s "
          "(DuckDB execution only; its SQL generation excluded)")
    print(f"ratio healthbench / circepy: total {sum(hb) / sum(ci):.2f}, median {statistics.median(hb) / statistics.median(ci):.2f}, "
          f"median of per-definition ratios {statistics.median(h / c for _, h, c, _ in timed):.2f}")
    slow = sorted(timed, key=lambda t: -t[1])[:5]
    print("slowest in healthbench: " + ", ".join(f"{s} {h:.2f} s (circepy {c:.2f} s)" for s, h, c, _ in slow))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
