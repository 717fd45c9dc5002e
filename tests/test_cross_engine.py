"""Cross-engine: the same cohort definitions give identical cohort tables and attrition on DuckDB, SQLite and
a real PostgreSQL server.

The synthetic CDM is generated in DuckDB and copied table by table into SQLite and Postgres through ibis. The
generator writes no procedures or devices, so the fixture adds `procedure_occurrence` and `device_exposure` rows
derived from its visits, and their concepts to the vocabulary, for a definition on those domains.
PostgreSQL comes from `HB_POSTGRES_URL` (set by `tests/postgres.sh start`, which `.ci/run` runs); without it the
Postgres case is skipped, unless `HB_REQUIRE_POSTGRES=1` (set in CI), where a missing server is a failure.
"""
import os, uuid

import duckdb
import ibis
import pandas as pd
import pytest

from healthbench.cdm import connect
from healthbench.cohort import Cohort, generate, at_least, at_most, exactly, all_of, any_of
from healthbench.concepts import concept_set
from healthbench.schema import CDM_TABLES, create_table_sql
from healthbench.synth import generate as generate_cdm
from healthbench import vocabulary as V

T2 = concept_set("t2dm", V.CONDITION["type2_diabetes"])
CVD = concept_set("cvd", V.CONDITION["myocardial_infarction"], V.CONDITION["stroke"])
STATIN = concept_set("statins", V.DRUG_CLASS["statins"])
SBP = concept_set("sbp", V.MEASUREMENT["systolic_bp"])
HT = concept_set("hypertension", V.CONDITION["hypertension"])
VISIT = concept_set("outpatient", V.VISIT["outpatient"], descendants=False)
SMOKER = concept_set("smoker", V.SMOKING["current"], descendants=False)

# procedures as in GiBleed's vocabulary; devices as a site's own concepts (ids from 2,000,000,000 up)
CHOLE, LAP_CHOLE, SINGLE_LUNG_TX, PUMP, PUMP_V2, STENT = 4242997, 4163971, 4337611, 2_000_000_101, 2_000_000_102, 2_000_000_201
CHOLECYSTECTOMY = concept_set("cholecystectomy", CHOLE)
INSULIN_PUMP = concept_set("insulin pump", PUMP)
NO_STENT = concept_set("stent", STENT)
EXTRA_DDL = {   # the tables the synthetic generator does not write, when healthbench.schema does not define them
    "procedure_occurrence": "CREATE TABLE procedure_occurrence (procedure_occurrence_id BIGINT, person_id BIGINT, "
                            "procedure_concept_id BIGINT, procedure_date DATE, procedure_type_concept_id BIGINT)",
    "device_exposure": "CREATE TABLE device_exposure (device_exposure_id BIGINT, person_id BIGINT, device_concept_id BIGINT, "
                       "device_exposure_start_date DATE, device_exposure_end_date DATE, device_type_concept_id BIGINT)",
}
EXTRA_ROWS = {   # from the synthetic visits: a procedure at every inpatient stay, a device at some outpatient visits
    "procedure_occurrence": f"""SELECT 1000000000 + visit_occurrence_id AS procedure_occurrence_id, person_id,
        CASE visit_occurrence_id % 3 WHEN 0 THEN {LAP_CHOLE} WHEN 1 THEN {CHOLE} ELSE {SINGLE_LUNG_TX} END AS procedure_concept_id,
        visit_start_date AS procedure_date, 32817 AS procedure_type_concept_id
        FROM visit_occurrence WHERE visit_concept_id = 9201""",
    "device_exposure": f"""SELECT visit_occurrence_id AS device_exposure_id, person_id,
        CASE WHEN visit_occurrence_id % 5 = 0 THEN {PUMP_V2} ELSE {STENT} END AS device_concept_id,
        visit_start_date AS device_exposure_start_date, visit_end_date AS device_exposure_end_date, 32817 AS device_type_concept_id
        FROM visit_occurrence WHERE visit_concept_id = 9202 AND visit_occurrence_id % 5 IN (0, 1)""",
}
EXTRA_VOCABULARY = [
    """INSERT INTO concept VALUES
       (4242997, 'Cholecystectomy', 'Procedure', 'SNOMED', 'Procedure', 'S', '38102005', DATE '1970-01-01', DATE '2099-12-31', NULL),
       (4163971, 'Laparoscopic cholecystectomy', 'Procedure', 'SNOMED', 'Procedure', 'S', '45595009', DATE '1970-01-01', DATE '2099-12-31', NULL),
       (4337611, 'Single lung transplant', 'Procedure', 'SNOMED', 'Procedure', 'S', '232657004', DATE '1970-01-01', DATE '2099-12-31', NULL),
       (2000000101, 'Insulin pump (local)', 'Device', 'Local', 'Device', 'S', 'PUMP', DATE '1970-01-01', DATE '2099-12-31', NULL),
       (2000000102, 'Insulin pump, second model (local)', 'Device', 'Local', 'Device', 'S', 'PUMP-2', DATE '1970-01-01', DATE '2099-12-31', NULL),
       (2000000201, 'Coronary stent (local)', 'Device', 'Local', 'Device', 'S', 'STENT', DATE '1970-01-01', DATE '2099-12-31', NULL)""",
    """INSERT INTO concept_ancestor VALUES (4242997, 4242997, 0, 0), (4242997, 4163971, 1, 1), (4163971, 4163971, 0, 0),
       (4337611, 4337611, 0, 0), (2000000101, 2000000101, 0, 0), (2000000101, 2000000102, 1, 1),
       (2000000102, 2000000102, 0, 0), (2000000201, 2000000201, 0, 0)""",
]
TABLES = list(CDM_TABLES) + [t for t in EXTRA_DDL if t not in CDM_TABLES]


def ddl(name: str) -> str:
    return create_table_sql(name) if name in CDM_TABLES else EXTRA_DDL[name]


def _columns(name: str) -> str:
    "The columns copied to the other engines: all of a CDM table's, the EXTRA_DDL ones of the others (the synthetic procedures have more)."
    if name in CDM_TABLES: return "*"
    inner = EXTRA_DDL[name].split("(", 1)[1].rsplit(")", 1)[0]
    return ", ".join(c.split()[0] for c in inner.split(","))


DEFINITIONS = {
    "incident t2dm": (Cohort.builder("incident t2dm").entry(T2, "condition", prior_days=365).age(40, 80)
                      .require("no prior CVD", at_most(0, CVD, "condition", window=(None, -1)))
                      .require("BP in year before", at_least(1, SBP, "measurement", window=(-365, 0)))
                      .exit_at_event(CVD, "condition").build()),
    "statin users": (Cohort.builder("statin users").entry(STATIN, "drug", occurrence="all", limit="earliest", prior_days=180, post_days=30)
                     .sex("male").imd_quintile(1, 2)
                     .require("high BP or hypertension", any_of(at_least(1, SBP, "measurement", window=(-365, 0), value=(140, None)),
                                                                all_of(at_least(1, HT, "condition", window=(None, 0)), exactly(0, CVD, "condition"))))
                     .exit_after(365).build()),
    "high bp readings": (Cohort.builder("high bp").entry(SBP, "measurement", occurrence="all", value=(160, 300))
                         .ethnicity("White", "Asian or Asian British")
                         .require("two visits in 90 days", at_least(2, VISIT, "visit", window=(-90, 90)))
                         .require("smoker ever", at_least(1, SMOKER, "observation"))
                         .exit_at_death().build()),
    "hypertension to obs end": (Cohort.builder("ht").entry(HT, "condition").age(None, 60)
                                .exit_at_observation_end().build()),
    "cholecystectomy": (Cohort.builder("cholecystectomy").entry(CHOLECYSTECTOMY, "procedure", occurrence="all", prior_days=30)
                        .require("a pump, or no stent before", any_of(at_least(1, INSULIN_PUMP, "device", window=(-365, 365)),
                                                                      at_most(0, NO_STENT, "device", window=(None, 0))))
                        .require("no T2DM after", at_most(0, T2, "condition", window=(1, None)))
                        .exit_at_event(INSULIN_PUMP, "device").build()),
    "t2dm with a procedure": (Cohort.builder("t2dm procedure").entry(T2, "condition")
                              .require("cholecystectomy within a year", at_least(1, CHOLECYSTECTOMY, "procedure", window=(-365, 365)))
                              .build()),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("cdm") / "cdm.duckdb"
    generate_cdm(2_000, seed=21, path=path, progress=False)
    with duckdb.connect(str(path)) as con:
        for name, rows in EXTRA_ROWS.items():
            if name not in con.execute("SELECT table_name FROM duckdb_tables()").fetchnumpy()["table_name"]: con.execute(ddl(name))
            con.execute(f"INSERT INTO {name} BY NAME {rows}")   # (the synthetic CDM has procedures of its own: ids above them)
        for sql in EXTRA_VOCABULARY: con.execute(sql)
    with duckdb.connect(str(path), read_only=True) as con:
        tables = {t: con.execute(f"select {_columns(t)} from {t}").fetch_arrow_table() for t in TABLES}
    assert all(tables[t].num_rows for t in EXTRA_ROWS)
    return path, tables


def results(cdm):
    out = {}
    for name, cohort in DEFINITIONS.items():
        r = generate(cdm, cohort)
        people = r.to_pandas().sort_values(["person_id", "cohort_start_date"]).reset_index(drop=True)
        out[name] = (people, pd.DataFrame(r.attrition))
    return out


@pytest.fixture(scope="module")
def duckdb_results(source):
    with connect(source[0]) as cdm:
        res = results(cdm)
    assert all(len(p) > 0 for p, _ in res.values()), "every definition should select someone on the synthetic data"
    return res


def assert_same(got, want):
    for name in DEFINITIONS:
        pd.testing.assert_frame_equal(got[name][1], want[name][1], check_dtype=False, obj=f"{name}: attrition")
        g, w = got[name][0], want[name][0]
        assert list(g.person_id) == list(w.person_id), name
        for c in ("cohort_start_date", "cohort_end_date"):
            assert list(pd.to_datetime(g[c]).dt.date) == list(pd.to_datetime(w[c]).dt.date), f"{name}: {c}"


def load_sqlite(path, tables):
    "Write the tables with the OMOP DDL through sqlite3 (dates as ISO text, as SQLite stores them)."
    import datetime as dt, sqlite3
    con = sqlite3.connect(path)
    for name, table in tables.items():
        con.execute(ddl(name))
        rows = [tuple(v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat() if isinstance(v, dt.date) else v
                      for v in row.values()) for row in table.to_pylist()]
        con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * table.num_columns)})", rows)
    con.commit(); con.close()


def test_sqlite_matches_duckdb(source, duckdb_results, tmp_path):
    load_sqlite(tmp_path / "cdm.sqlite", source[1])
    backend = ibis.sqlite.connect(str(tmp_path / "cdm.sqlite"))
    cdm = connect(backend)
    assert_same(results(cdm), duckdb_results)
    backend.disconnect()


def test_postgres_matches_duckdb(source, duckdb_results):
    url = os.environ.get("HB_POSTGRES_URL")
    if not url:
        if os.environ.get("HB_REQUIRE_POSTGRES") == "1":
            pytest.fail("HB_REQUIRE_POSTGRES=1 but HB_POSTGRES_URL is not set: PostgreSQL did not start")
        pytest.skip("no PostgreSQL: run `source tests/postgres.sh start` first")
    backend = ibis.connect(url)
    schema = f"cdm_{uuid.uuid4().hex[:8]}"
    backend.create_database(schema)
    try:
        for name, table in source[1].items():
            backend.create_table(name, table, database=schema)
        backend.raw_sql(f"ANALYZE")                     # planner statistics, as any maintained database has
        backend.raw_sql("SET statement_timeout = '120s'")
        cdm = connect(backend, schema=schema)
        assert_same(results(cdm), duckdb_results)
        assert "postgres" in cdm.fingerprint()["engine"]
    finally:
        backend.raw_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        backend.disconnect()


# ---- Circe cohort expressions (healthbench.engine) on the same three engines ----------------------------------------------
from healthbench.engine import generate_expression  # noqa: E402
from healthbench import expression as X  # noqa: E402

XSETS = [T2, CVD, STATIN, SBP, HT, VISIT, SMOKER, CHOLECYSTECTOMY, INSULIN_PUMP]   # Circe ids 0..8, by position
_W = lambda a, b, **kw: X.Window(X.WindowBound(None if a is None else abs(a), -1 if a is None or a < 0 else 1),
                                 X.WindowBound(None if b is None else abs(b), 1 if b is None or b >= 0 else -1), **kw)


def _cc(kind, codeset, window=None, occ=(2, 1), attrs=None, **kw):
    return X.CorrelatedCriteria(X.Criteria(kind, codeset, attrs=attrs or {}, correlated_criteria=kw.pop("nested", None)),
                                window or _W(None, None), occurrence=X.Occurrence(*occ), **kw)


def _x(primary, limit="All", prior=0, post=0, **kw):
    return X.CohortExpression(concept_sets=XSETS, primary_criteria=X.PrimaryCriteria(
        primary if isinstance(primary, list) else [primary], X.ObservationWindow(prior, post), limit), **kw)


EXPRESSIONS = {
    "incident t2dm, rules, one year": _x(X.Criteria("ConditionOccurrence", 0, first=True), prior=365, inclusion_rules=[
        X.InclusionRule("no prior CVD", X.CriteriaGroup("ALL", criteria_list=[_cc("ConditionOccurrence", 1, _W(None, -1), (0, 0))])),
        X.InclusionRule("high SBP in year before", X.CriteriaGroup("ALL", criteria_list=[
            _cc("Measurement", 3, _W(-365, 0), attrs={"value_as_number": X.NumericRange("gte", 140)})])),
        X.InclusionRule("40 to 80", X.CriteriaGroup("ALL", demographic_criteria_list=[X.DemographicCriteria(age=X.NumericRange("bt", 40, 80))]))],
        end_strategy=X.DateOffsetStrategy("StartDate", 365)),
    "statin eras after hypertension, censored at CVD": _x(X.Criteria("DrugExposure", 2), additional_criteria=X.CriteriaGroup(
        "ALL", criteria_list=[_cc("ConditionOccurrence", 4, _W(None, 0))]), qualified_limit="All", expression_limit="All",
        end_strategy=X.CustomEraStrategy(2, gap_days=30, offset=7), censoring_criteria=[X.Criteria("ConditionOccurrence", 1)],
        collapse_settings=X.CollapseSettings("ERA", 30)),
    "last outpatient visit, smoker or procedure at the visit": _x(X.Criteria("VisitOccurrence", 5), limit="Last", inclusion_rules=[
        X.InclusionRule("smoker or procedure", X.CriteriaGroup("ANY", criteria_list=[
            _cc("Observation", 6, _W(None, 0)), _cc("ProcedureOccurrence", 7, _W(-1, 1), restrict_visit=True)])),
        X.InclusionRule("at most one pump", X.CriteriaGroup("AT_MOST", 1, criteria_list=[_cc("DeviceExposure", 8), _cc("Death", None)]))],
        end_strategy=X.DateOffsetStrategy("EndDate", 0), censor_window=X.Period("2015-01-01", None)),
    "SBP readings near hypertension, two days of readings": _x(X.Criteria(
        "Measurement", 3, attrs={"value_as_number": X.NumericRange("bt", 130, 250)},
        correlated_criteria=X.CriteriaGroup("ALL", criteria_list=[_cc("ConditionOccurrence", 4, _W(-30, 30))])),
        expression_limit="All", inclusion_rules=[X.InclusionRule("readings on 2 days", X.CriteriaGroup("ALL", criteria_list=[
            X.CorrelatedCriteria(X.Criteria("Measurement", 3), _W(-180, 180), occurrence=X.Occurrence(2, 2, True, "START_DATE"))]))],
        end_strategy=X.DateOffsetStrategy("EndDate", 30)),
}


def expression_results(cdm):
    out = {}
    for name, x in EXPRESSIONS.items():
        r = generate_expression(cdm, x)
        out[name] = (r.to_pandas(), r.attrition)
    return out


@pytest.fixture(scope="module")
def duckdb_expressions(source):
    with connect(source[0]) as cdm:
        res = expression_results(cdm)
    assert all(len(p) > 0 for p, _ in res.values()), {k: len(p) for k, (p, _) in res.items()}
    return res


def assert_same_expressions(got, want):
    for name in EXPRESSIONS:
        pd.testing.assert_frame_equal(got[name][1], want[name][1], obj=f"{name}: attrition")
        g, w = got[name][0], want[name][0]
        assert list(g.person_id) == list(w.person_id), name
        for c in ("cohort_start_date", "cohort_end_date"):
            assert list(pd.to_datetime(g[c]).dt.date) == list(pd.to_datetime(w[c]).dt.date), f"{name}: {c}"


def test_expressions_sqlite_match_duckdb(source, duckdb_expressions, tmp_path):
    load_sqlite(tmp_path / "cdm.sqlite", source[1])
    backend = ibis.sqlite.connect(str(tmp_path / "cdm.sqlite"))
    assert_same_expressions(expression_results(connect(backend)), duckdb_expressions)
    backend.disconnect()


def test_expressions_postgres_match_duckdb(source, duckdb_expressions):
    url = os.environ.get("HB_POSTGRES_URL")
    if not url:
        if os.environ.get("HB_REQUIRE_POSTGRES") == "1":
            pytest.fail("HB_REQUIRE_POSTGRES=1 but HB_POSTGRES_URL is not set: PostgreSQL did not start")
        pytest.skip("no PostgreSQL: run `source tests/postgres.sh start` first")
    backend = ibis.connect(url)
    schema = f"cdm_{uuid.uuid4().hex[:8]}"
    backend.create_database(schema)
    try:
        for name, table in source[1].items():
            backend.create_table(name, table, database=schema)
        backend.raw_sql("ANALYZE")
        backend.raw_sql("SET statement_timeout = '120s'")
        assert_same_expressions(expression_results(connect(backend, schema=schema)), duckdb_expressions)
    finally:
        backend.raw_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        backend.disconnect()
