"""Benchmark of cohort generation and feature extraction against a hand-written DuckDB query and plain pandas.

Run from the repository root:

    python bench/cohort.py                                    # defaults: --sizes 100000 1000000 5000000 --repeats 5
    python bench/cohort.py --sizes 100000 --repeats 1         # quick check

For each size a synthetic CDM is generated once (`healthbench.synth.generate(n, seed=0)`, in its own subprocess)
into a temp dir that is removed afterwards. A second fresh subprocess then times, on that database, all in the
same process (medians over --repeats runs):

- engine:    `healthbench.cohort.generate(cdm, cohort)` (resolves concept sets, runs the attrition queries)
             followed by `result.to_pandas()`, with `cdm = healthbench.cdm.connect(path)`;
- hand SQL:  one hand-written DuckDB query (`HAND_SQL` below: CTEs straight on the CDM tables, concept sets
             resolved from `concept`/`concept_ancestor` inside the query) returning the cohort table and the
             attrition counts in one result (a UNION ALL of the two), fetched as pandas through
             `duckdb.connect(path, read_only=True)`. Runs alternate with the engine's so both see the same caches.
             Its cohort table and attrition are asserted equal to the engine's, so the comparison is honest;
- pandas:    plain pandas end to end: the tables the definition needs are read from the DuckDB file into pandas
             (only the columns the evaluator reads: `SELECT person_id, ... FROM t`, no row filtering), then the
             plain-Python Circe evaluator of tests/reference_circe.py runs on `cohort.to_expression()`. Load and evaluation are timed separately. Its cohort table is compared with the engine's at
             every size where it runs (differences are reported, never hidden; attrition is compared on the
             counts: its step labels are short names by design). It is slow, so it repeats only while the
             --pandas-budget for the size lasts, and a size is skipped when the run extrapolated from the
             previous size would exceed --pandas-max-seconds; both are printed;
- features:  `healthbench.features.extract(cdm, result, covariates=default_covariates(), outcome=Outcome(...))`
             (30 covariates and a CVD outcome over 1..3650 days) on the engine's cohort.

The cohort: first type 2 diabetes (201826 and descendants) with 365 days' prior observation, age 40-80, sex male
or female, (1) no MI or stroke (4329847, 381316 and descendants) before index, (2) a systolic BP (3004249) in
the year up to index, (3) a statin (21601855 and descendants) in that year or a systolic BP >= 140 in it; exit at
the first MI or stroke on or after index (else the end of observation).

Targets (from the issue), at 1M persons: engine <= 1.5x the hand-written SQL; plain pandas >= 20x the engine;
feature extraction < 5 s. Peak RSS (ru_maxrss) of the measuring process is reported after the DuckDB parts
(engine, SQL, features) and after pandas. Not part of the test suite.
"""
from __future__ import annotations
import argparse, json, os, platform, resource, statistics, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_N, TARGET_SQL_RATIO, TARGET_PANDAS_RATIO, TARGET_FEATURES_S = 1_000_000, 1.5, 20.0, 5.0

# Tables and columns the reference evaluator reads for this definition (it accepts tables with only these).
PANDAS_TABLES = ["concept", "concept_ancestor", "condition_occurrence", "drug_exposure", "measurement", "observation_period",
                 "person", "death"]   # what the definition reads, whole, for the plain-Python Circe evaluator

# The same definition, written by hand. Rows with step_no set are attrition steps; the others are the cohort.
# One record per person: entry is the first T2DM ever, and observation periods of a person do not overlap.
HAND_SQL = """
WITH
ids(cs, concept_id) AS (VALUES ('t2dm', 201826), ('cvd', 4329847), ('cvd', 381316), ('sbp', 3004249), ('statins', 21601855)),
known AS (SELECT i.cs, i.concept_id FROM ids i JOIN concept c ON c.concept_id = i.concept_id),
sets AS MATERIALIZED (                              -- every set is 'with descendants'
    SELECT cs, concept_id FROM known
    UNION
    SELECT k.cs, a.descendant_concept_id FROM known k JOIN concept_ancestor a ON a.ancestor_concept_id = k.concept_id),
entry AS MATERIALIZED (                             -- first T2DM ever per person
    SELECT person_id, min(condition_start_date) AS index_date
    FROM condition_occurrence
    WHERE condition_concept_id IN (SELECT concept_id FROM sets WHERE cs = 't2dm')
    GROUP BY person_id),
rec AS MATERIALIZED (                               -- inside an observation period, >= 365 days into it
    SELECT e.person_id, e.index_date,
           o.observation_period_start_date AS op_start, o.observation_period_end_date AS op_end
    FROM entry e JOIN observation_period o
      ON o.person_id = e.person_id
     AND e.index_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
    WHERE e.index_date - o.observation_period_start_date >= 365),
cvd AS (                                            -- MI/stroke in the period: count before index, first on/after
    SELECT r.person_id, r.index_date,
           count(*) FILTER (WHERE c.condition_start_date < r.index_date) AS n_before,
           min(c.condition_start_date) FILTER (WHERE c.condition_start_date >= r.index_date) AS exit_date
    FROM rec r JOIN condition_occurrence c ON c.person_id = r.person_id
    WHERE c.condition_concept_id IN (SELECT concept_id FROM sets WHERE cs = 'cvd')
      AND c.condition_start_date BETWEEN r.op_start AND r.op_end
    GROUP BY r.person_id, r.index_date),
sbp AS (                                            -- systolic BP in [-365, 0] days and in the period
    SELECT r.person_id, r.index_date, count(*) AS n,
           count(*) FILTER (WHERE m.value_as_number >= 140) AS n_high
    FROM rec r JOIN measurement m ON m.person_id = r.person_id
    WHERE m.measurement_concept_id IN (SELECT concept_id FROM sets WHERE cs = 'sbp')
      AND m.measurement_date BETWEEN greatest(r.op_start, r.index_date - 365) AND least(r.op_end, r.index_date)
    GROUP BY r.person_id, r.index_date),
statin AS (                                         -- statin in [-365, 0] days and in the period
    SELECT r.person_id, r.index_date, count(*) AS n
    FROM rec r JOIN drug_exposure d ON d.person_id = r.person_id
    WHERE d.drug_concept_id IN (SELECT concept_id FROM sets WHERE cs = 'statins')
      AND d.drug_exposure_start_date BETWEEN greatest(r.op_start, r.index_date - 365) AND least(r.op_end, r.index_date)
    GROUP BY r.person_id, r.index_date),
wide AS (
    SELECT r.person_id, r.index_date, r.op_end, cvd.exit_date,
           coalesce(year(r.index_date) - p.year_of_birth BETWEEN 40 AND 80, false) AS s_age,
           coalesce(p.gender_concept_id IN (8507, 8532), false)                 AS s_sex,
           coalesce(cvd.n_before, 0) <= 0                                       AS s_r1,
           coalesce(sbp.n, 0) >= 1                                              AS s_r2,
           coalesce(statin.n, 0) >= 1 OR coalesce(sbp.n_high, 0) >= 1           AS s_r3
    FROM rec r
    LEFT JOIN person p ON p.person_id = r.person_id
    LEFT JOIN cvd    ON cvd.person_id = r.person_id    AND cvd.index_date = r.index_date
    LEFT JOIN sbp    ON sbp.person_id = r.person_id    AND sbp.index_date = r.index_date
    LEFT JOIN statin ON statin.person_id = r.person_id AND statin.index_date = r.index_date),
steps AS MATERIALIZED (                             -- cumulative: passes every step up to k
    SELECT *, s_age AS k1, s_age AND s_sex AS k2, s_age AND s_sex AND s_r1 AS k3,
           s_age AND s_sex AND s_r1 AND s_r2 AS k4, s_age AND s_sex AND s_r1 AND s_r2 AND s_r3 AS k5
    FROM wide),
counts AS MATERIALIZED (
    SELECT count(DISTINCT person_id) FILTER (WHERE k1) AS p1, count(*) FILTER (WHERE k1) AS r1,
           count(DISTINCT person_id) FILTER (WHERE k2) AS p2, count(*) FILTER (WHERE k2) AS r2,
           count(DISTINCT person_id) FILTER (WHERE k3) AS p3, count(*) FILTER (WHERE k3) AS r3,
           count(DISTINCT person_id) FILTER (WHERE k4) AS p4, count(*) FILTER (WHERE k4) AS r4,
           count(DISTINCT person_id) FILTER (WHERE k5) AS p5, count(*) FILTER (WHERE k5) AS r5
    FROM steps),
attrition AS (
    SELECT 1 AS step_no, 'qualifying events: 365 days'' observation before, 0 after' AS step,
           count(DISTINCT person_id) AS persons, count(*) AS records FROM rec
    UNION ALL SELECT 2, 'age 40–80', p1, r1 FROM counts
    UNION ALL SELECT 3, 'sex: male, female', p2, r2 FROM counts
    UNION ALL SELECT 4, 'no prior MI or stroke', p3, r3 FROM counts
    UNION ALL SELECT 5, 'systolic BP in the past year', p4, r4 FROM counts
    UNION ALL SELECT 6, 'statin or systolic BP >= 140 in the past year', p5, r5 FROM counts)
SELECT step_no, step, persons, records,
       NULL::BIGINT AS person_id, NULL::DATE AS cohort_start_date, NULL::DATE AS cohort_end_date
FROM attrition
UNION ALL
SELECT NULL, NULL, NULL, NULL, person_id, index_date, coalesce(exit_date, op_end)
FROM steps WHERE k5
ORDER BY step_no NULLS LAST, person_id, cohort_start_date
"""


def _peak_gib() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def log(msg: str): print(msg, file=sys.stderr, flush=True)


def definition():
    "The benchmark cohort, built with the builder API."
    from healthbench.cohort import Cohort, at_least, at_most, any_of
    from healthbench.concepts import concept_set
    t2dm = concept_set("t2dm", 201826)
    cvd = concept_set("mi_or_stroke", 4329847, 381316)
    sbp = concept_set("systolic_bp", 3004249)
    statins = concept_set("statins", 21601855)
    cohort = (Cohort.builder("bench: incident T2DM, no prior CVD")
              .entry(t2dm, "condition", occurrence="first", prior_days=365)
              .age(40, 80).sex("male", "female")
              .require("no prior MI or stroke", at_most(0, cvd, "condition", window=(None, -1)))
              .require("systolic BP in the past year", at_least(1, sbp, "measurement", window=(-365, 0)))
              .require("statin or systolic BP >= 140 in the past year",
                       any_of(at_least(1, statins, "drug", window=(-365, 0)),
                              at_least(1, sbp, "measurement", window=(-365, 0), value=(140, None))))
              .exit_at_event(cvd, "condition")
              .build())
    return cohort, cvd


def _norm_cohort(df):
    "A cohort table as int64 person_id and datetime64[ns] dates, sorted, fresh index."
    import pandas as pd
    cols = ["person_id", "cohort_start_date", "cohort_end_date"]
    out = pd.DataFrame({"person_id": df["person_id"].astype("int64"),
                        "cohort_start_date": pd.to_datetime(df["cohort_start_date"]).astype("datetime64[ns]"),
                        "cohort_end_date": pd.to_datetime(df["cohort_end_date"]).astype("datetime64[ns]")})
    return out.sort_values(cols).reset_index(drop=True)


def _cohort_diff(a, b) -> str:
    "'' if equal, else a short description of how cohort tables `a` (engine) and `b` differ."
    a, b = _norm_cohort(a), _norm_cohort(b)
    if a.equals(b): return ""
    m = a.merge(b, how="outer", indicator=True)
    only_a, only_b = (m._merge == "left_only").sum(), (m._merge == "right_only").sum()
    ex = m[m._merge != "both"].head(4).to_dict("records")
    return (f"engine {len(a):,} rows, other {len(b):,} rows; {only_a:,} rows only in engine, {only_b:,} only in other; "
            f"e.g. {ex}")


def _circe_reference(circe_evaluate, tables, cohort):
    "The plain-Python Circe evaluator (tests/reference_circe.py) on the cohort's expression: (cohort, attrition)."
    import pandas as pd
    r = circe_evaluate(cohort.to_expression(), tables)
    rows = r.rows.rename(columns={"subject_id": "person_id"})
    att = r.attrition[["persons", "records"]].astype("int64").reset_index(drop=True)
    att["persons_lost"] = (att.persons.shift(1) - att.persons).fillna(0).astype("int64")
    att["records_lost"] = (att.records.shift(1) - att.records).fillna(0).astype("int64")
    return rows, att


def hand_sql(con):
    "Run HAND_SQL; the cohort table and the attrition (with persons_lost, records_lost) as pandas."
    df = con.execute(HAND_SQL).df()
    is_step = df["step_no"].notna()
    att = df.loc[is_step, ["step", "persons", "records"]].astype({"persons": "int64", "records": "int64"})
    att = att.reset_index(drop=True)
    att["persons_lost"] = (att.persons.shift(1) - att.persons).fillna(0).astype("int64")
    att["records_lost"] = (att.records.shift(1) - att.records).fillna(0).astype("int64")
    cohort = df.loc[~is_step, ["person_id", "cohort_start_date", "cohort_end_date"]].reset_index(drop=True)
    cohort["person_id"] = cohort["person_id"].astype("int64")
    return cohort, att


def child_measure(n: int, path: str, repeats: int, pandas_budget: float, pandas_skip: str) -> dict:
    import duckdb, pandas as pd
    import healthbench.cdm, healthbench.features as F
    from healthbench.cohort import generate
    cohort, cvd = definition()
    out = {"n": n, "errors": []}
    cdm = healthbench.cdm.connect(path)
    con = duckdb.connect(path, read_only=True)
    out["persons"] = int(con.execute("SELECT count(*) FROM person").fetchone()[0])

    # engine and hand SQL, alternating
    eng, gen, sql = [], [], []
    for r in range(repeats):
        t0 = time.perf_counter(); result = generate(cdm, cohort)
        t1 = time.perf_counter(); eng_df = result.to_pandas(); eng.append(time.perf_counter() - t0)
        gen.append(t1 - t0)
        t0 = time.perf_counter(); sql_df, sql_att = hand_sql(con); sql.append(time.perf_counter() - t0)
        log(f"    {n:>9,}  run {r + 1}/{repeats}: engine {eng[-1]:.3f} s, hand SQL {sql[-1]:.3f} s")
        if r == 0:   # the comparison is only honest if both give the same answer
            # the engine's step names are short ids; its `description` column carries the words the hand SQL uses
            eng_att = pd.DataFrame(result.attrition)[["description", "persons", "records", "persons_lost", "records_lost"]]
            eng_att = eng_att.rename(columns={"description": "step"})
            diff = _cohort_diff(eng_df, sql_df)
            assert not diff, f"hand SQL cohort differs from the engine's: {diff}"
            assert eng_att.reset_index(drop=True).equals(sql_att), \
                f"hand SQL attrition differs from the engine's:\n{eng_att}\n{sql_att}"
            out["attrition"] = eng_att.to_dict("list")
            out["sql_check"] = f"cohort identical ({len(eng_df):,} rows), attrition identical ({len(eng_att)} steps)"
    out["records"] = len(eng_df)
    out["engine_s"], out["sql_s"] = statistics.median(eng), statistics.median(sql)
    out["engine_runs"], out["sql_runs"] = eng, sql
    out["generate_s"] = statistics.median(gen)
    out["to_pandas_s"] = statistics.median(e - g for e, g in zip(eng, gen))

    # features
    feats = []
    covs = F.default_covariates()
    for r in range(repeats):
        t0 = time.perf_counter()
        X = F.extract(cdm, result, covariates=covs, outcome=F.Outcome(cvd, "condition", (1, 3650)))
        feats.append(time.perf_counter() - t0)
        log(f"    {n:>9,}  run {r + 1}/{repeats}: features {feats[-1]:.3f} s ({X.shape[0]:,} x {X.shape[1]})")
    out["features_s"], out["features_runs"], out["features_shape"] = statistics.median(feats), feats, list(X.shape)
    out["n_covariates"] = len(covs)
    out["peak_gib_duckdb"] = _peak_gib()
    del X

    # plain pandas
    out["pandas_runs"] = []
    if pandas_skip:
        out["pandas_note"] = pandas_skip
    else:
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from reference_circe import evaluate as circe_evaluate
            evaluate = lambda tables, c: _circe_reference(circe_evaluate, tables, c)
        except Exception as e:
            evaluate = None
            out["pandas_note"] = f"importing tests/reference_circe.py failed: {type(e).__name__}: {e}"
            out["errors"].append(traceback.format_exc())
        spent = 0.0
        while evaluate is not None and len(out["pandas_runs"]) < repeats:
            try:
                t0 = time.perf_counter()
                tables = {t: con.execute(f"SELECT * FROM {t}").df() for t in PANDAS_TABLES}
                t1 = time.perf_counter()
                ref_cohort, ref_att = evaluate(tables, cohort)
                t2 = time.perf_counter()
            except Exception as e:
                out["pandas_note"] = f"reference evaluator failed: {type(e).__name__}: {e}"
                out["errors"].append(traceback.format_exc())
                break
            del tables
            out["pandas_runs"].append({"load_s": t1 - t0, "eval_s": t2 - t1})
            spent += t2 - t0
            log(f"    {n:>9,}  pandas run {len(out['pandas_runs'])}: load {t1 - t0:.2f} s, evaluate {t2 - t1:.2f} s")
            if len(out["pandas_runs"]) == 1:
                diff = _cohort_diff(eng_df, ref_cohort)
                cols = ["persons", "records", "persons_lost", "records_lost"]
                ref_counts = ref_att[cols].reset_index(drop=True).astype("int64")
                att_same = eng_att[cols].reset_index(drop=True).astype("int64").equals(ref_counts)
                out["pandas_check"] = (("cohort identical" if not diff else f"COHORT DIFFERS: {diff}") + "; " +
                                       ("attrition counts identical" if att_same else
                                        f"ATTRITION DIFFERS: reference {ref_att.to_dict('list')}"))
                out["pandas_match"] = not diff and att_same
            if spent + (t2 - t0) > pandas_budget and len(out["pandas_runs"]) < repeats:
                out["pandas_note"] = (f"{len(out['pandas_runs'])} of {repeats} runs: another would pass the "
                                      f"{pandas_budget:.0f} s budget for this size")
                break
        out["peak_gib_pandas"] = _peak_gib()
    if out["pandas_runs"]:
        out["load_s"] = statistics.median(x["load_s"] for x in out["pandas_runs"])
        out["eval_s"] = statistics.median(x["eval_s"] for x in out["pandas_runs"])
        out["pandas_s"] = statistics.median(x["load_s"] + x["eval_s"] for x in out["pandas_runs"])
    con.close(); cdm.close()
    return out


def child_generate(n: int, path: str) -> dict:
    from healthbench.synth import generate
    t0 = time.perf_counter()
    generate(n, seed=0, path=path, progress=False)
    return {"seconds": time.perf_counter() - t0, "bytes": os.path.getsize(path)}


def run_child(*args) -> dict:
    "Run this script as `--child ARGS...` in a fresh interpreter (stderr passes through) and parse its JSON."
    p = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if p.returncode != 0: raise SystemExit(f"child {args[:2]} failed with exit code {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine_info() -> str:
    import numpy, duckdb, ibis, pandas
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))})  RAM={mem:.1f} GiB  "
            f"python={platform.python_version()}  duckdb={duckdb.__version__}  ibis={ibis.__version__}  "
            f"pandas={pandas.__version__}  numpy={numpy.__version__}  platform={platform.platform()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000], help="numbers of persons")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement (medians reported)")
    p.add_argument("--pandas-budget", type=float, default=300.0,
                   help="seconds of plain-pandas runs per size: repeat only while the next run fits (at least 1 run); 0 skips "
                        "them (the plain-Python Circe evaluator holds every row as a dict: at 1M persons it passed 23 GiB "
                        "and was killed by the OOM killer)")
    p.add_argument("--pandas-max-seconds", type=float, default=600.0,
                   help="skip plain pandas at a size when one run, extrapolated linearly from the previous size, "
                        "would take longer than this")
    a = p.parse_args(argv)
    print(machine_info())
    print(f"targets at {TARGET_N:,} persons: engine <= {TARGET_SQL_RATIO}x hand-written SQL; plain pandas >= "
          f"{TARGET_PANDAS_RATIO:.0f}x engine; feature extraction < {TARGET_FEATURES_S:.0f} s\n", flush=True)
    results, prev = [], None
    for n in sorted(a.sizes):
        skip = "skipped: --pandas-budget 0" if a.pandas_budget <= 0 else ""
        if not skip and prev is not None and prev.get("pandas_s"):
            predicted = prev["pandas_s"] * n / prev["n"]
            if predicted > a.pandas_max_seconds:
                skip = (f"skipped: one run extrapolated from {prev['n']:,} persons ({prev['pandas_s']:.0f} s there) "
                        f"would take ~{predicted:.0f} s > --pandas-max-seconds {a.pandas_max_seconds:.0f}")
        with tempfile.TemporaryDirectory(prefix="hb_cohort_bench_") as d:
            path = Path(d, "cdm.duckdb")
            log(f"  {n:>9,} persons: generating the synthetic CDM ...")
            g = run_child("generate", n, path)
            log(f"  {n:>9,} persons: generated in {g['seconds']:.1f} s ({g['bytes'] / 2**30:.2f} GiB); measuring ...")
            r = run_child("measure", n, path, a.repeats, a.pandas_budget, skip)
        r["synth_s"], r["db_gib"] = g["seconds"], g["bytes"] / 2**30
        results.append(r); prev = r
        for e in r["errors"]: log(e)

    print(f"\nmedians over {a.repeats} run(s) per measurement (plain pandas: over the runs shown in 'pd runs')")
    cols = ("persons", "records", "engine s", "hand SQL s", "eng/SQL", "pd load s", "pd eval s", "pd total s",
            "pd runs", "pd/engine", "features s", "peak GiB duckdb/pd")
    fmt = "{:>10} {:>8} {:>9} {:>10} {:>8} {:>9} {:>9} {:>10} {:>7} {:>9} {:>10} {:>18}"
    print(fmt.format(*cols))
    for r in results:
        has_pd = "pandas_s" in r
        peak = f"{r['peak_gib_duckdb']:.2f}/" + (f"{r['peak_gib_pandas']:.2f}" if "peak_gib_pandas" in r else "-")
        print(fmt.format(f"{r['persons']:,}", f"{r['records']:,}", f"{r['engine_s']:.3f}", f"{r['sql_s']:.3f}",
                         f"{r['engine_s'] / r['sql_s']:.2f}x",
                         f"{r['load_s']:.2f}" if has_pd else "-", f"{r['eval_s']:.2f}" if has_pd else "-",
                         f"{r['pandas_s']:.2f}" if has_pd else "-", str(len(r["pandas_runs"])),
                         f"{r['pandas_s'] / r['engine_s']:.0f}x" if has_pd else "-",
                         f"{r['features_s']:.2f}", peak))
    print("\nper size:")
    for r in results:
        print(f"  {r['persons']:,} persons (synthetic CDM generated in {r['synth_s']:.1f} s, {r['db_gib']:.2f} GiB on disk)")
        print(f"    hand SQL vs engine: {r['sql_check']}")
        print(f"    plain pandas vs engine: {r.get('pandas_check', 'not compared')}")
        if r.get("pandas_note"): print(f"    plain pandas: {r['pandas_note']}")
        print(f"    features: {r['features_shape'][0]:,} rows x {r['features_shape'][1]} columns "
              f"({r['n_covariates']} covariates + outcome)")
        print(f"    engine medians: generate() {r['generate_s']:.3f} s (concept sets + attrition queries), "
              f"to_pandas() {r['to_pandas_s']:.3f} s")
        print("    runs (s): engine " + " ".join(f"{x:.3f}" for x in r["engine_runs"])
              + " | hand SQL " + " ".join(f"{x:.3f}" for x in r["sql_runs"])
              + " | features " + " ".join(f"{x:.2f}" for x in r["features_runs"]))
        att = r["attrition"]
        print("    attrition: " + "; ".join(f"{s} {p:,}/{n_:,}" for s, p, n_ in zip(att["step"], att["persons"], att["records"]))
              + "  (persons/records)")
    for r in results:
        if r["persons"] != TARGET_N: continue
        ratio = r["engine_s"] / r["sql_s"]
        print(f"\ntarget engine <= {TARGET_SQL_RATIO}x hand SQL at {TARGET_N:,}:  {'PASS' if ratio <= TARGET_SQL_RATIO else 'MISS'} "
              f"({ratio:.2f}x: {r['engine_s']:.3f} s vs {r['sql_s']:.3f} s)")
        if "pandas_s" in r:
            pr = r["pandas_s"] / r["engine_s"]
            print(f"target pandas >= {TARGET_PANDAS_RATIO:.0f}x engine at {TARGET_N:,}:  {'PASS' if pr >= TARGET_PANDAS_RATIO else 'MISS'} "
                  f"({pr:.0f}x: {r['pandas_s']:.1f} s vs {r['engine_s']:.3f} s; {len(r['pandas_runs'])} pandas run(s))"
                  + ("" if r.get("pandas_match") else "  [pandas result does NOT match the engine's, see above]"))
        else:
            print(f"target pandas >= {TARGET_PANDAS_RATIO:.0f}x engine at {TARGET_N:,}:  not measured ({r.get('pandas_note', '')})")
        print(f"target features < {TARGET_FEATURES_S:.0f} s at {TARGET_N:,}:      {'PASS' if r['features_s'] < TARGET_FEATURES_S else 'MISS'} "
              f"({r['features_s']:.2f} s)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        mode, *rest = sys.argv[2:]
        if mode == "generate": res = child_generate(int(rest[0]), rest[1])
        else: res = child_measure(int(rest[0]), rest[1], int(rest[2]), float(rest[3]), rest[4] if len(rest) > 4 else "")
        print(json.dumps(res))
    else:
        main()
