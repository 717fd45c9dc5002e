"""Real OMOP CDMs that nobody on this project wrote, as their publishers wrote them (../shared/data/, read its README):
Eunomia GiBleed v5.3.1 (Parquet, ids as DOUBLE, empty columns as BOOLEAN or VARCHAR) and the MIMIC-IV demo v5.3.1
(CSV, 64-bit ids; no measurement, observation or concept_ancestor).

Each is imported with `import_cdm` into a temporary DuckDB file and opened with `connect()`; GiBleed is also opened
without import, from a DuckDB made naively from its Parquet files (CREATE TABLE x AS SELECT * FROM 'x.parquet'), which
keeps the publisher's types. Row counts are checked against the source files read independently (pyarrow's Parquet
metadata, Python's csv module). The data folder can be moved with HB_SHARED_DATA; without the data these tests fail,
since CI must run them.
"""
import csv, hashlib, os, warnings
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from healthbench.cdm import connect, import_cdm
from healthbench.errors import MissingTableError, MissingTableWarning
from healthbench.schema import omop_tables

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data"))
GIBLEED, MIMIC = DATA / "omop" / "gibleed_5.3", DATA / "omop" / "mimic_iv_demo_5.3"
GIBLEED_PROCEDURES = 37_409


def _require(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.fail(f"real test data missing: {folder} (the project's ../shared/data/, or set HB_SHARED_DATA)")
    return folder


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def parquet_rows(folder: Path) -> dict[str, int]:
    return {p.stem: pq.ParquetFile(p).metadata.num_rows for p in sorted(folder.glob("*.parquet"))}


def csv_rows(folder: Path) -> dict[str, int]:
    out = {}
    for p in sorted(folder.glob("*.csv")):
        with open(p, newline="", encoding="utf-8") as f: out[p.stem] = sum(1 for _ in csv.reader(f)) - 1
    return out


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory):
    src = _require(GIBLEED)
    before = checksums(src)
    out = tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb"
    report = import_cdm(src, out, progress=False)
    assert checksums(src) == before, "import_cdm changed a source file"
    return out, report


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    src = _require(MIMIC)
    before = checksums(src)
    out = tmp_path_factory.mktemp("mimic") / "mimic.duckdb"
    report = import_cdm(src, out, progress=False)
    assert checksums(src) == before, "import_cdm changed a source file"
    return out, report


@pytest.fixture(scope="module")
def naive_gibleed(tmp_path_factory):
    "GiBleed loaded as a user would without healthbench: one CREATE TABLE AS SELECT per Parquet file, types as published."
    out = tmp_path_factory.mktemp("naive") / "gibleed_naive.duckdb"
    with duckdb.connect(str(out)) as con:
        for p in sorted(_require(GIBLEED).glob("*.parquet")):
            con.execute(f"CREATE TABLE {p.stem} AS SELECT * FROM read_parquet('{p}')")
    return out


def test_gibleed_import(gibleed):
    out, report = gibleed
    want = parquet_rows(GIBLEED)
    assert report.version == "5.3"
    assert report.version_reasons[0] == "cdm_source.cdm_version is 'v5.3.1'"
    assert "visit_occurrence.admitting_source_concept_id" in report.version_reasons[1]
    assert dict(zip(report.tables.table, report.tables.rows)) == want
    assert want["procedure_occurrence"] == GIBLEED_PROCEDURES
    casts = report.casts.set_index(["table", "column"])
    assert casts.loc[("person", "person_id")].tolist() == ["DOUBLE", "BIGINT"]
    assert casts.loc[("person", "location_id")].tolist() == ["BOOLEAN", "BIGINT"]          # all null
    assert casts.loc[("death", "death_date")].tolist() == ["VARCHAR", "DATE"]              # an empty table typed as text
    assert casts.loc[("procedure_occurrence", "procedure_source_value")].tolist() == ["DOUBLE", "VARCHAR"]
    assert "cost: column reveue_code_source_value not in OMOP CDM v5.3, kept as stored" in report.notes   # Eunomia's typo
    with duckdb.connect(str(out), read_only=True) as con:
        types = dict(con.execute("SELECT table_name || '.' || column_name, data_type FROM information_schema.columns").fetchall())
        codes = con.execute("SELECT procedure_source_value FROM procedure_occurrence ORDER BY procedure_occurrence_id LIMIT 1").fetchone()
    assert types["person.person_id"] == "BIGINT" and types["measurement.value_as_number"] == "DOUBLE"
    assert types["visit_occurrence.visit_start_datetime"] == "TIMESTAMP" and types["death.death_date"] == "DATE"
    first = pq.read_table(GIBLEED / "procedure_occurrence.parquet").to_pandas().sort_values("procedure_occurrence_id").procedure_source_value.iloc[0]
    assert codes[0] == str(int(first))          # a code written as 1225002.0 is the text '1225002'


def test_gibleed_connect(gibleed):
    out, _ = gibleed
    want = parquet_rows(GIBLEED)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingTableWarning)      # GiBleed has every table healthbench uses
        cdm = connect(out)
    with cdm:
        assert (cdm.version, cdm.cdm_version, cdm.casts, cdm.problems()) == ("5.3", "v5.3.1", [], [])
        assert sorted(cdm.tables) == sorted(want)
        assert {t: int(cdm[t].count().execute()) for t in cdm.tables} == want          # every table reachable
        assert int(cdm.procedure_occurrence.count().execute()) == GIBLEED_PROCEDURES
        for t in ("device_exposure", "visit_detail", "condition_era", "drug_era", "specimen", "concept_relationship", "location", "care_site"):
            assert cdm[t].columns
        assert {"admitted_from_concept_id", "discharged_to_concept_id"} <= set(cdm.visit_occurrence.columns)
        assert cdm.fingerprint()["tables"]["procedure_occurrence"]["rows"] == GIBLEED_PROCEDURES


def test_mimic_import_and_connect(mimic):
    out, report = mimic
    want = csv_rows(MIMIC)
    assert report.version == "5.3"
    assert dict(zip(report.tables.table, report.tables.rows)) == want
    with pytest.warns(MissingTableWarning, match="no measurement, observation, concept_ancestor tables"):
        cdm = connect(out)
    with cdm:
        assert cdm.version == "5.3"
        assert {"measurement", "observation", "concept_ancestor"} <= set(cdm.missing)
        assert cdm.missing["concept_ancestor"] == "descendants of concept sets"
        with pytest.raises(MissingTableError, match="this CDM has no measurement table"):
            cdm["measurement"]
        assert {t: int(cdm[t].count().execute()) for t in cdm.tables} == {t: n for t, n in want.items() if t in omop_tables()}
        # 64-bit ids, exactly: the CSV's text against the typed column
        with open(MIMIC / "person.csv", newline="") as f:
            ids = sorted(int(r["person_id"]) for r in csv.DictReader(f))
        assert sorted(cdm.person.person_id.to_pyarrow().to_pylist()) == ids
        assert max(map(abs, ids)) > 2**53
        assert str(cdm.person.person_id.type()) == "int64"


def test_naive_gibleed_connects_as_it_is(naive_gibleed, gibleed):
    "The publisher's DOUBLE ids, BOOLEAN empty columns and a text-typed empty death table, read without import."
    with connect(naive_gibleed) as cdm, connect(gibleed[0]) as typed:
        assert cdm.version == "5.3" and cdm.problems() == []
        assert int(cdm.procedure_occurrence.count().execute()) == GIBLEED_PROCEDURES
        assert {t: int(cdm[t].count().execute()) for t in cdm.tables} == parquet_rows(GIBLEED)
        assert str(cdm.person.person_id.type()) == "int64" and str(cdm.death.death_date.type()) == "date"
        assert ("person", "person_id", "float64", "int64") in cdm.casts
        for t in ("person", "observation_period", "visit_occurrence", "procedure_occurrence"):
            a = cdm[t].to_pandas().sort_values(cdm[t].columns[0]).reset_index(drop=True)
            b = typed[t].to_pandas().sort_values(typed[t].columns[0]).reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=t)


def _celecoxib_dataset(cdm):
    from healthbench.cohort import Cohort, generate
    from healthbench.concepts import concept_set
    from healthbench.features import Outcome, age, extract, presence, prior_observation, sex
    celecoxib, gi_bleed = concept_set("celecoxib", 1118084), concept_set("GI bleed", 192671)
    cohort = Cohort.builder("celecoxib new users").entry(celecoxib, "drug", prior_days=365).build()
    result = generate(cdm, cohort)
    covariates = [age(), sex(), prior_observation(), presence("prior_gi_bleed", gi_bleed, "condition", (None, -1))]
    return extract(cdm, result, covariates, Outcome(gi_bleed, "condition", (1, 365)))


def test_features_on_gibleed(gibleed, naive_gibleed):
    "A new-user cohort and its analysis dataset, on the imported database and on the naive one: the same rows."
    with connect(gibleed[0]) as typed, connect(naive_gibleed) as naive:
        a, b = _celecoxib_dataset(typed), _celecoxib_dataset(naive)
    assert len(a) > 500 and set(a.sex.dropna()) == {"male", "female"} and a.outcome.sum() > 0
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
