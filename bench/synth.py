"""Benchmark of `healthbench.synth.generate`: wall time, throughput and peak memory.

Run from the repository root:

    python bench/synth.py                                   # defaults: --sizes 100000 1000000 --repeats 3
    python bench/synth.py --sizes 10000 --repeats 1         # quick check

Every repeat runs `generate()` in a fresh subprocess, so the peak RSS reported (`ru_maxrss` of that child)
belongs to one run only. The child then counts the rows of all CDM tables (read-only, after timing).

Baseline: in a second fresh subprocess, DuckDB copies every CDM table of the database just generated into a
new DuckDB file (`ATTACH ... (READ_ONLY)`, `CREATE TABLE t AS SELECT * FROM src.t`, `CHECKPOINT`). That is
the cost of merely writing the same rows, on the same machine, in the same run; the ratio
generate_time / copy_time says how many times longer generation takes than DuckDB needs just to write them.

Targets (from the issue): 1M persons in < 60 s and < 6 GiB peak RSS on 2 cores.
Not part of the test suite. Temporary files go to a temp dir that is removed afterwards.
"""
from __future__ import annotations
import argparse, json, os, platform, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

TARGET_N, TARGET_SECONDS, TARGET_GIB, TARGET_CORES = 1_000_000, 60.0, 6.0, 2


def _peak_gib() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child_generate(n: int, path: str) -> dict:
    import duckdb
    from healthbench.synth import generate
    from healthbench.schema import CDM_TABLES
    t0 = time.perf_counter()
    generate(n, seed=0, path=path, progress=False)
    seconds, peak = time.perf_counter() - t0, _peak_gib()
    with duckdb.connect(path, read_only=True) as con:
        rows = sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CDM_TABLES)
    return {"seconds": seconds, "peak_gib": peak, "rows": rows}


def child_copy(src: str, dst: str) -> dict:
    import duckdb
    from healthbench.schema import CDM_TABLES
    t0 = time.perf_counter()
    con = duckdb.connect(dst)
    con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    for t in CDM_TABLES: con.execute(f"CREATE TABLE {t} AS SELECT * FROM src.{t}")
    con.execute("CHECKPOINT")
    con.close()
    return {"seconds": time.perf_counter() - t0, "peak_gib": _peak_gib()}


def run_child(*args) -> dict:
    "Run this script as `--child ARGS...` in a fresh interpreter and parse the JSON it prints."
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench(n: int, repeats: int) -> dict:
    gens, copies = [], []
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="hb_bench_") as d:
            src, dst = Path(d, "gen.duckdb"), Path(d, "copy.duckdb")
            gens.append(run_child("generate", n, src))
            copies.append(run_child("copy", src, dst))
        print(f"  {n:>9,} persons, repeat {r + 1}/{repeats}: generate {gens[-1]['seconds']:.1f} s, "
              f"peak {gens[-1]['peak_gib']:.2f} GiB; copy {copies[-1]['seconds']:.1f} s", flush=True)
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    return {"n": n, "rows": gens[0]["rows"], "seconds": med(gens, "seconds"), "peak_gib": med(gens, "peak_gib"),
            "copy_seconds": med(copies, "seconds")}


def machine_info() -> str:
    import numpy, duckdb
    return (f"nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))})  python={platform.python_version()}  "
            f"numpy={numpy.__version__}  duckdb={duckdb.__version__}  platform={platform.platform()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="numbers of persons")
    p.add_argument("--repeats", type=int, default=3, help="fresh-subprocess runs per size (medians reported)")
    a = p.parse_args(argv)
    print(machine_info())
    print(f"targets: {TARGET_N:,} persons in < {TARGET_SECONDS:.0f} s and < {TARGET_GIB:.0f} GiB peak RSS "
          f"on {TARGET_CORES} cores\n", flush=True)
    results = [bench(n, a.repeats) for n in a.sizes]
    cols = ("persons", "total rows", "median s", "persons/s", "rows/s", "peak RSS GiB", "copy s", "ratio")
    fmt = "{:>10} {:>12} {:>9} {:>10} {:>11} {:>13} {:>7} {:>6}"
    print(f"\nmedians over {a.repeats} repeat(s); ratio = generate s / copy s "
          "(x the time DuckDB needs just to write the same rows)")
    print(fmt.format(*cols))
    for r in results:
        print(fmt.format(f"{r['n']:,}", f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['n'] / r['seconds']:,.0f}",
                         f"{r['rows'] / r['seconds']:,.0f}", f"{r['peak_gib']:.2f}", f"{r['copy_seconds']:.2f}",
                         f"{r['seconds'] / r['copy_seconds']:.1f}x"))
    for r in results:
        if r["n"] != TARGET_N: continue
        cores = len(os.sched_getaffinity(0))
        note = "" if cores == TARGET_CORES else f" (measured on {cores} cores, target is for {TARGET_CORES})"
        print(f"\ntarget time   {TARGET_N:,} persons < {TARGET_SECONDS:.0f} s:   "
              f"{'PASS' if r['seconds'] < TARGET_SECONDS else 'MISS'} ({r['seconds']:.1f} s){note}")
        print(f"target memory {TARGET_N:,} persons < {TARGET_GIB:.0f} GiB: "
              f"{'PASS' if r['peak_gib'] < TARGET_GIB else 'MISS'} ({r['peak_gib']:.2f} GiB){note}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        mode, *rest = sys.argv[2:]
        res = child_generate(int(rest[0]), rest[1]) if mode == "generate" else child_copy(*rest)
        print(json.dumps(res))
    else:
        main()
