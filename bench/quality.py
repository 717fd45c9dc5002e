"""How long DQD's whole v5.4 suite takes on a synthetic CDM, batched (`run_checks`) and one query per check.

    python bench/quality.py --cdm /path/to/synth_1m.duckdb           # an existing CDM (`healthbench synth`)
    python bench/quality.py --persons 1000000                         # generates one (seed 1) in a temp dir first
    python bench/quality.py --cdm X --checkout OLD --checkout NEW     # the same for two checkouts, alternating

Each run is a fresh Python process (PYTHONPATH = the checkout) that opens the CDM read-only with
`healthbench.cdm.connect`, sets DuckDB to --threads threads, and runs `run_checks(cdm, load_dqd(DQD, '5.4'))`
("batched") or the same checks one at a time ("naive": each check's plan, then its row condition alone or its
per-check join function alone, as `run_checks` did for every join check before batching). It reports:

- wall time of the run (median of --repeats runs; --naive-repeats for the naive one, default 1 as it is slow),
- peak RSS of the process (`resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end: DuckDB's memory is outside
  Python's allocator, so tracemalloc would miss it),
- queries: the SQL statements ibis compiled and ran, and scans per table: the SEQ_SCAN / TABLE_SCAN / READ_PARQUET
  operators of each query's physical plan (`EXPLAIN (FORMAT JSON)`, made after the timed run), summed per table.

Runs alternate (round 1: every checkout and mode, round 2: ...) so that load from other processes on the machine
falls on all of them alike. Batched and naive results must agree check by check (numViolatedRows,
numDenominatorRows, status, reason, error): the script stops with the first difference. --gibleed also compares
them on Eunomia's GiBleed (Parquet, read through views), for DQD v5.3 and v5.4. Not a test: a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HB_SHARED_DATA", "/work/shared/data"))
KEEP = ["checkId", "status", "numViolatedRows", "numDenominatorRows", "notApplicableReason", "error"]


# ---- the child: one run of one mode ------------------------------------------------------------------------------

def naive_run(cdm, checks):
    "The checks one by one: a row check alone in its table's aggregate, a join check by its per-check function."
    import pandas as pd
    from healthbench import quality as q
    ctx, rows = q._Tables(cdm), []
    for r in checks.to_dict("records"):
        t0 = time.perf_counter()
        kind, what = q._plan(ctx, r)
        if kind == "row":
            got = q._run_row_batch(ctx, r["cdmTableName"].lower(), [(0, r)])[0]
            kind, what = ("done", got) if isinstance(got, tuple) else ("error", got)
        elif kind == "join":
            try: kind, what = "done", what(ctx, ctx.table(r["cdmTableName"]), r["parameters"])
            except Exception as e: kind, what = "error", q._message(e)
        res = q._status(r, what if kind == "done" else None, what if kind == "error" else None, what if kind == "na" else None)
        rows.append({**r, **res, "executionTime": round(time.perf_counter() - t0, 4)})
    out = pd.DataFrame(rows, columns=list(q.RESULT_COLUMNS))
    for c in ("numViolatedRows", "numDenominatorRows"): out[c] = out[c].astype("Int64")
    return out


def scans(con, sqls: list[str]) -> Counter:
    "Table scans in the physical plans of `sqls`, per table (parquet files by their name)."
    n = Counter()
    def walk(node):
        name, info = node.get("name", ""), node.get("extra_info", {}) or {}
        if name in ("SEQ_SCAN", "TABLE_SCAN", "READ_PARQUET", "PARQUET_SCAN"):
            table = info.get("Table") or info.get("Function") or name
            files = info.get("File Filters") or info.get("Files") or ""
            n[str(table).split(".")[-1] if "Table" in info else f"{table}:{files}"[:80]] += 1
        for c in node.get("children", []): walk(c)
    for s in sqls:
        for _, plan in con.execute(f"EXPLAIN (FORMAT JSON) {s}").fetchall():
            for root in json.loads(plan): walk(root)
    return n


def child(a) -> None:
    import resource
    import warnings
    from healthbench.cdm import connect
    from healthbench.quality import load_dqd, list_checks, run_checks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cdm = connect(a.cdm, validate=False)
    be = cdm.backend
    be.raw_sql(f"SET threads={a.threads}")
    sqls, compile_ = [], be.compile
    def logged(*args, **kw):
        s = compile_(*args, **kw); sqls.append(str(s)); return s
    be.compile = logged
    checks = list_checks(load_dqd(SHARED / "dqd", a.version))
    t0 = time.perf_counter()
    res = run_checks(cdm, checks) if a.child == "batched" else naive_run(cdm, checks)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    be.compile = compile_
    n = scans(be.con, sqls) if a.scans else {}
    res[KEEP].to_pickle(a.out)
    print(json.dumps(dict(wall=wall, rss=rss, queries=len(sqls), scans=dict(n))))


# ---- the parent: rounds of runs, then the table ------------------------------------------------------------------

def run(checkout: Path, mode: str, cdm: str, a, want_scans: bool, out: Path, version: str = "5.4") -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", mode, "--cdm", cdm, "--out", str(out), "--threads", str(a.threads),
           "--version", version] + (["--scans"] if want_scans else [])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode: sys.exit(f"{checkout} {mode} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def agree(a_path: Path, b_path: Path, what: str) -> int:
    import pandas as pd
    a, b = pd.read_pickle(a_path).set_index("checkId"), pd.read_pickle(b_path).set_index("checkId")
    assert list(a.index) == list(b.index), f"{what}: different checks"
    for col in KEEP[1:]:
        x, y = a[col].astype(object).where(a[col].notna(), None), b[col].astype(object).where(b[col].notna(), None)
        diff = [(i, x[i], y[i]) for i in a.index if x[i] != y[i]]
        assert not diff, f"{what}: {col} differs for {len(diff)} checks, e.g. {diff[:3]}"
    return len(a)


def gibleed_views(folder: Path) -> str:
    import duckdb
    path = str(folder / "gibleed_views.duckdb")
    with duckdb.connect(path) as con:
        for p in sorted((SHARED / "omop" / "gibleed_5.3").glob("*.parquet")):
            con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{p}')")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cdm", help="an existing DuckDB CDM (default: generate one with --persons)")
    p.add_argument("--persons", type=int, default=1_000_000)
    p.add_argument("--checkout", type=Path, action="append", help="a healthbench checkout to run (repeatable); default this one")
    p.add_argument("--modes", nargs="+", default=["batched", "naive"], choices=["batched", "naive"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--version", default="5.4")
    p.add_argument("--gibleed", action="store_true", help="also compare batched and naive on GiBleed (v5.3 and v5.4 checks)")
    p.add_argument("--child", choices=["batched", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--scans", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child: return child(a)
    checkouts = [c.resolve() for c in (a.checkout or [HERE])]
    import duckdb
    with tempfile.TemporaryDirectory(prefix="hb_quality_bench_") as d:
        d = Path(d)
        cdm = a.cdm
        if cdm is None:
            from healthbench.synth import generate
            cdm = str(d / "cdm.duckdb")
            t0 = time.perf_counter(); generate(a.persons, seed=1, path=cdm, progress=False)
            print(f"generated {a.persons:,} persons in {time.perf_counter() - t0:.0f} s")
        if a.gibleed:
            gib = gibleed_views(d)
            for c in checkouts:
                for v in ("5.3", "5.4"):
                    outs = {m: d / f"gib_{m}.pkl" for m in ("batched", "naive")}
                    figs = {m: run(c, m, gib, a, False, outs[m], v) for m in outs}
                    n = agree(outs["batched"], outs["naive"], f"GiBleed v{v} {c}")
                    print(f"GiBleed, DQD v{v}, {c}: batched and naive agree on all {n} checks "
                          f"(batched {figs['batched']['wall']:.1f} s, {figs['batched']['queries']} queries; "
                          f"naive {figs['naive']['wall']:.1f} s, {figs['naive']['queries']} queries)", flush=True)
        figs = {(c, m): [] for c in checkouts for m in a.modes}
        first = {}
        for r in range(max(a.repeats, a.naive_repeats)):
            for c in checkouts:
                for m in a.modes:
                    if r >= (a.repeats if m == "batched" else a.naive_repeats): continue
                    out = d / f"{len(first)}_{m}.pkl" if (c, m) not in first else d / "last.pkl"
                    f = run(c, m, cdm, a, r == 0, out, a.version)
                    first.setdefault((c, m), out)
                    figs[(c, m)].append(f)
                    print(f"round {r + 1}: {c} {m}: {f['wall']:.1f} s, peak RSS {f['rss'] / 2**20:.0f} MiB", flush=True)
        ref = first[(checkouts[0], a.modes[0])]
        for k, out in first.items():
            if out != ref: print(f"{k[0]} {k[1]} agrees with {checkouts[0]} {a.modes[0]} on all {agree(ref, out, str(k))} checks")
    tables = Counter()
    for fs in figs.values(): tables.update(fs[0]["scans"])
    con = duckdb.connect(cdm, read_only=True)
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables if not t.startswith(("READ_", "PARQUET"))}
    con.close()
    big = sorted(rows, key=rows.get, reverse=True)[:7]       # the biggest tables, and all scans
    print(f"\nduckdb {duckdb.__version__}, {a.threads} threads, DQD v{a.version} on {cdm}; {os.cpu_count()} cores; "
          f"load average now {os.getloadavg()[0]:.1f}")
    head = f"{'checkout':<28} {'mode':<8} {'runs':>4} {'median s':>9} {'min s':>7} {'peak RSS MiB':>13} {'queries':>8}"
    print(head + "".join(f" {t[:18]:>18}" for t in big) + f" {'all scans':>10}")
    print(" " * len(head) + "".join(f" {format(rows.get(t, 0), ',') + ' rows':>18}" for t in big))
    base = None
    for (c, m), fs in figs.items():
        if not fs: continue
        med = statistics.median(f["wall"] for f in fs)
        base = base or med
        print(f"{str(c)[-28:]:<28} {m:<8} {len(fs):>4} {med:>9.1f} {min(f['wall'] for f in fs):>7.1f} "
              f"{max(f['rss'] for f in fs) / 2**20:>13.0f} {fs[0]['queries']:>8}"
              + "".join(f" {fs[0]['scans'].get(t, 0):>18}" for t in big) + f" {sum(fs[0]['scans'].values()):>10}"
              + f"   x{med / base:.2f} of the first")
    print("(scans per table: SEQ_SCAN/TABLE_SCAN operators in the EXPLAIN plans of all queries of one run)")


if __name__ == "__main__":
    main()
