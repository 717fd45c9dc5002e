"""Benchmark of code-list mapping at scale: `map_codes`, `codelist_events` and `mapping_report` on a 5,000-code ICD-10
list, against a large vocabulary and a CDM of many persons.

Run from the repository root (DuckDB on one thread, as CI's neighbours need):

    python bench/codelists.py                          # defaults: --persons 1000000 --events-per-person 5 --codes 5000
    python bench/codelists.py --persons 100000         # quick check

The database is built in plain DuckDB SQL (not healthbench.synth: only the tables mapping reads matter): a `concept`
table with every ICD-10-shaped code A00.0-Z99.9 (26,000 ICD10 concepts, each with a standard SNOMED-like target and a
'Maps to' row) padded with 1,000,000 unrelated concepts; `condition_occurrence` with --events-per-person events per
person, each a random one of the ICD-10 codes as source concept and value (half written without the dot). The list
is --codes codes drawn at random, dotless as OpenCodelists writes them. Each step is timed once, cold (a fresh
connection), then the median of --repeats warm runs is printed.
"""
import argparse, statistics, tempfile, time, warnings
from pathlib import Path

import duckdb

from healthbench.cdm import connect
from healthbench.codelists import CodeList, map_codes, codelist_events, mapping_report


def build(path: Path, persons: int, per_person: int) -> None:
    con = duckdb.connect(str(path))
    con.execute("SET threads = 1")
    con.execute("""
        CREATE TABLE icd AS
        SELECT row_number() OVER () AS k, chr((65 + l)::INTEGER) || lpad(n::VARCHAR, 2, '0') || '.' || d::VARCHAR AS code
        FROM range(26) t(l), range(100) u(n), range(10) v(d)""")
    con.execute("""
        CREATE TABLE concept AS
        SELECT 2000000000 + k AS concept_id, 'icd ' || code AS concept_name, 'Condition' AS domain_id, 'ICD10' AS vocabulary_id,
               'ICD10 code' AS concept_class_id, NULL::VARCHAR AS standard_concept, code AS concept_code,
               DATE '1970-01-01' AS valid_start_date, DATE '2099-12-31' AS valid_end_date, NULL::VARCHAR AS invalid_reason FROM icd
        UNION ALL
        SELECT 2100000000 + k, 'snomed ' || code, 'Condition', 'SNOMED', 'Clinical Finding', 'S', (1000000 + k)::VARCHAR,
               DATE '1970-01-01', DATE '2099-12-31', NULL FROM icd
        UNION ALL
        SELECT 2200000000 + i, 'other ' || i, 'Drug', 'RxNorm', 'Clinical Drug', 'S', i::VARCHAR,
               DATE '1970-01-01', DATE '2099-12-31', NULL FROM range(1000000) r(i)""")
    con.execute("""
        CREATE TABLE concept_relationship AS
        SELECT 2000000000 + k AS concept_id_1, 2100000000 + k AS concept_id_2, 'Maps to' AS relationship_id,
               DATE '1970-01-01' AS valid_start_date, DATE '2099-12-31' AS valid_end_date, NULL::VARCHAR AS invalid_reason FROM icd""")
    con.execute(f"""
        CREATE TABLE person AS SELECT i AS person_id, 8507 AS gender_concept_id, 1970 AS year_of_birth, 0 AS race_concept_id,
               0 AS ethnicity_concept_id, NULL::VARCHAR AS race_source_value FROM range(1, {persons} + 1) r(i)""")
    con.execute("""
        CREATE TABLE observation_period AS SELECT person_id AS observation_period_id, person_id, DATE '2010-01-01' AS
               observation_period_start_date, DATE '2020-12-31' AS observation_period_end_date, 32817 AS period_type_concept_id FROM person""")
    con.execute("SELECT setseed(0.5)")
    con.execute(f"""
        CREATE TABLE condition_occurrence AS
        WITH e AS (SELECT row_number() OVER () AS condition_occurrence_id, 1 + (i // {per_person}) AS person_id,
                          1 + floor(random() * 26000)::BIGINT AS k FROM range({persons * per_person}) r(i))
        SELECT condition_occurrence_id, person_id, 2100000000 + e.k AS condition_concept_id, DATE '2015-01-01' AS condition_start_date,
               32817 AS condition_type_concept_id, 2000000000 + e.k AS condition_source_concept_id,
               CASE WHEN e.k % 2 = 0 THEN icd.code ELSE replace(icd.code, '.', '') END AS condition_source_value
        FROM e JOIN icd USING (k)""")
    con.close()


def timed(f, repeats: int):
    t = time.perf_counter(); f(); cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); warm.append(time.perf_counter() - t)
    return cold, statistics.median(warm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--events-per-person", type=int, default=5)
    ap.add_argument("--codes", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cdm.duckdb"
        t = time.perf_counter(); build(path, a.persons, a.events_per_person)
        print(f"built {a.persons:,} persons, {a.persons * a.events_per_person:,} condition events in {time.perf_counter() - t:.1f} s")
        cdm = connect(path)
        cdm.backend.raw_sql("SET threads = 1")
        import random
        random.seed(1)
        codes = sorted(f"{chr(65 + random.randrange(26))}{random.randrange(100):02d}{random.randrange(10)}" for _ in range(a.codes * 2))
        cl = CodeList("bench", "ICD10", list(dict.fromkeys(codes))[:a.codes])
        warnings.simplefilter("ignore")
        m = map_codes(cdm, cl)
        print(f"list: {len(cl.codes):,} codes -> {len(m.source_concept_ids):,} source, {len(m.standard_concept_ids):,} standard concepts")
        for label, f in (("map_codes", lambda: map_codes(cdm, cl)),
                         ("codelist_events mapped (count)", lambda: codelist_events(cdm, m, "mapped", warn=False).count().to_pyarrow()),
                         ("codelist_events as_recorded (count)", lambda: codelist_events(cdm, m, "as_recorded", warn=False).count().to_pyarrow()),
                         ("mapping_report", lambda: mapping_report(cdm, m))):
            cold, warm = timed(f, a.repeats)
            print(f"{label:40s} cold {cold:6.2f} s   warm median {warm:6.2f} s")


if __name__ == "__main__":
    main()
