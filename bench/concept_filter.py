"""How DuckDB filters an event table by a list of concept ids: `IN (...)` against `array_contains([...], col)`.

The cohort engine (`healthbench.cohort._isin`) uses `array_contains` on DuckDB for lists of 2 to 20 ids and `IN`
otherwise. This measures why, on the largest event table of a synthetic CDM (drug_exposure):

    python bench/concept_filter.py                       # generates a 1,000,000-person CDM in a temp dir first
    python bench/concept_filter.py --cdm path/to.duckdb  # or uses an existing one

For each list length n it builds a list of n drug concept ids: the two most frequent drugs, then ids that match
nothing, so most rows are compared with the whole list (as in a real CDM, where a concept set names a few of
thousands of drugs; the synthetic one has only 11). It runs
`SELECT count(*), sum(person_id) FROM drug_exposure WHERE <filter>` --repeats times for each form, alternating,
checks both forms return the same row, and prints medians and the ratio IN / array_contains (> 1: array_contains is
faster). Not part of the test suite.
"""
from __future__ import annotations
import argparse, statistics, tempfile, time
from pathlib import Path


def measure(path: str, sizes: list[int], repeats: int) -> list[tuple]:
    import duckdb
    con = duckdb.connect(path, read_only=True)
    real = [r[0] for r in con.execute("SELECT drug_concept_id FROM drug_exposure GROUP BY 1 ORDER BY count(*) DESC").fetchall()]
    rows = []
    for n in sizes:
        ids = (real[:2] + list(range(900_000_000, 900_000_000 + n)))[:n]
        lst = ", ".join(map(str, ids))
        forms = {"IN": f"drug_concept_id IN ({lst})", "array_contains": f"array_contains([{lst}], drug_concept_id)"}
        times, results = {k: [] for k in forms}, {}
        for _ in range(repeats):
            for k, cond in forms.items():
                t0 = time.perf_counter()
                results[k] = con.execute(f"SELECT count(*), sum(person_id) FROM drug_exposure WHERE {cond}").fetchone()
                times[k].append(time.perf_counter() - t0)
        assert results["IN"] == results["array_contains"], (n, results)
        m_in, m_ac = statistics.median(times["IN"]), statistics.median(times["array_contains"])
        rows.append((n, results["IN"][0], m_in, m_ac))
    con.close()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cdm", help="an existing DuckDB CDM (default: generate one)")
    p.add_argument("--persons", type=int, default=1_000_000, help="persons to generate when --cdm is not given")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 30, 50, 200])
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    import duckdb
    with tempfile.TemporaryDirectory(prefix="hb_concept_filter_") as d:
        path = a.cdm
        if path is None:
            from healthbench.synth import generate
            path = str(Path(d, "cdm.duckdb"))
            t0 = time.perf_counter(); generate(a.persons, seed=0, path=path, progress=False)
            print(f"generated {a.persons:,} persons in {time.perf_counter() - t0:.0f} s")
        rows = measure(path, a.sizes, a.repeats)
    print(f"duckdb {duckdb.__version__}; medians of {a.repeats} runs, drug_exposure filtered by n concept ids")
    print(f"{'n ids':>6} {'rows kept':>11} {'IN ms':>8} {'array_contains ms':>18} {'IN / array_contains':>20}")
    for n, kept, m_in, m_ac in rows:
        print(f"{n:>6} {kept:>11,} {m_in * 1000:>8.1f} {m_ac * 1000:>18.1f} {m_in / m_ac:>19.2f}x")


if __name__ == "__main__":
    main()
