"""Benchmark of `healthbench import-cdm`: wall time, throughput and peak memory for a synthetic CDM exported to files.

Run from the repository root:

    python bench/import_cdm.py                              # defaults: --persons 1000000 --format parquet
    python bench/import_cdm.py --persons 20000              # quick check
    python bench/import_cdm.py --format csv --keep DIR      # CSV files; keep the files in DIR (reused when present)

Steps: `healthbench synth --persons N --seed 1` writes a v5.4 CDM (not timed here), DuckDB exports each table to
one Parquet (or CSV) file, then `healthbench import-cdm FILES --out imported.duckdb --quiet` runs in a fresh process
under `/usr/bin/time -v`, whose "Maximum resident set size" is the peak RSS of the import (Python, DuckDB and all).
Without /usr/bin/time the child's `ru_maxrss` (resource.getrusage) is read instead.

Baseline: in another fresh process, DuckDB copies the same files into a new DuckDB file with no conversion at all
(`CREATE TABLE t AS SELECT * FROM read_parquet(...)`, `CHECKPOINT`): the cost of merely reading and writing the
rows on this machine, in this run. The ratio import/baseline is the price of the type checks and casts.
Not part of the test suite. Files go to a temporary folder, removed afterwards unless --keep names one.
"""
from __future__ import annotations
import argparse, os, platform, re, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path


def healthbench_command() -> list[str]:
    exe = Path(sys.executable).with_name("healthbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from healthbench.cli import main; sys.exit(main())"]


def timed(cmd: list[str]) -> tuple[float, float, str]:
    "(wall seconds, peak RSS in GiB, stdout) of `cmd` run in a fresh process."
    gnu_time = Path("/usr/bin/time")
    full = [str(gnu_time), "-v", *cmd] if gnu_time.exists() else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(full, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0: sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    kib = int(m[1]) if m else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if not m and kib == before: kib = float("nan")          # an earlier, larger child: no per-run figure
    return seconds, kib / 2**20, p.stdout


def export(db: Path, folder: Path, fmt: str) -> int:
    "Each CDM table of `db` to one file in `folder`; returns the number of rows."
    import duckdb
    from healthbench.schema import CDM_TABLES
    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    with duckdb.connect(str(db), read_only=True) as con:
        for t in CDM_TABLES:
            options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER"
            con.execute(f"COPY {t} TO '{folder / f'{t}.{fmt}'}' ({options})")
            rows += con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
    return rows


BASELINE = """
import duckdb, sys
from pathlib import Path
src, dst, fmt = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
con = duckdb.connect(dst)
for p in sorted(src.glob(f"*.{fmt}")):
    reader = f"read_parquet('{p}')" if fmt == "parquet" else f"read_csv('{p}', header = true)"
    con.execute(f"CREATE TABLE {p.stem} AS SELECT * FROM {reader}")
con.execute("CHECKPOINT"); con.close()
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep its files (a CDM and export already there are reused)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hb-bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        db, files = work / f"synth_{args.persons}.duckdb", work / f"{args.format}_{args.persons}"
        if not db.exists():
            t0 = time.perf_counter()
            subprocess.run([*healthbench_command(), "synth", "--persons", str(args.persons), "--seed", str(args.seed),
                            "--out", str(db), "--quiet"], check=True, capture_output=True)
            print(f"synth: {args.persons:,} persons in {time.perf_counter() - t0:.1f} s")
        shutil.rmtree(files, ignore_errors=True)
        rows = export(db, files, args.format)
        size = sum(p.stat().st_size for p in files.iterdir()) / 2**20
        print(f"exported {rows:,} rows to {len(list(files.iterdir()))} {args.format} files ({size:,.0f} MiB)")
        out = work / "imported.duckdb"
        seconds, peak, _ = timed([*healthbench_command(), "import-cdm", str(files), "--out", str(out), "--overwrite", "--quiet"])
        base_out = work / "baseline.duckdb"
        if base_out.exists(): base_out.unlink()
        b_seconds, b_peak, _ = timed([sys.executable, "-c", BASELINE, str(files), str(base_out), args.format])
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}")
        print(f"import-cdm: {seconds:.1f} s, {rows / seconds:,.0f} rows/s, peak RSS {peak:.2f} GiB, "
              f"output {out.stat().st_size / 2**20:,.0f} MiB")
        print(f"baseline (DuckDB copy without conversion): {b_seconds:.1f} s, peak RSS {b_peak:.2f} GiB; "
              f"import/baseline = {seconds / b_seconds:.2f}")
    finally:
        if not args.keep: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
