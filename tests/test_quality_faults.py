"""Ground truth for the data-quality checks (issue 17, item 4): a synthetic CDM with known faults, and real CDMs.

A synthetic v5.4 CDM is generated twice with the same seed, clean and with `faults=SPEC`; every DQD 2.8.4 check runs on
both. On the clean one no check errors and each check a fault targets finds the baseline counted here in plain SQL; on the
faulted one it finds that baseline plus the rows SPEC asked for, and every other check gives exactly the clean result,
except the few a fault necessarily touches, listed in SIDE_EFFECTS with the reason. Then every v5.3 check runs on
GiBleed and on the MIMIC-IV demo, as published: each completes or is not applicable with a reason.
"""
import os
import warnings
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from healthbench.cdm import connect
from healthbench.quality import IMPLEMENTED, STATUSES, list_checks, load_dqd, run_checks
from healthbench.synth import generate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data"))
DQD = DATA / "dqd"
N_PERSONS, SEED = 2_000, 1

# Rows to corrupt per fault kind: different numbers, so a fault counted by the wrong check shows.
SPEC = {"implausible_value": 3, "before_birth": 2, "after_death": 4, "end_before_start": 5, "outside_observation_period": 3,
        "non_standard_concept": 6, "missing_foreign_key": 4, "duplicate_primary_key": 3, "implausible_gender": 2}

CO, DE = "condition_occurrence", "drug_exposure"
# check id -> (rows it must find beyond the baseline, the plain-SQL count of its violations, run on either database)
BIRTH = f"FROM {CO} x JOIN person p USING (person_id) WHERE x.condition_start_date < CAST(p.birth_datetime AS DATE)"
LATE = f"FROM {CO} x JOIN death d USING (person_id) WHERE x.condition_start_date > d.death_date + INTERVAL 60 DAY"
TARGETS = {
    f"field_plausiblevaluehigh_{DE}_days_supply": (SPEC["implausible_value"], f"SELECT count(*) FROM {DE} WHERE days_supply > 365"),
    f"field_plausibleafterbirth_{CO}_condition_start_date": (SPEC["before_birth"], f"SELECT count(*) {BIRTH}"),
    # DQD's plausibleTemporalAfter for condition_start_date compares with person.birth_datetime, as plausibleAfterBirth does
    f"field_plausibletemporalafter_{CO}_condition_start_date": (SPEC["before_birth"], f"SELECT count(*) {BIRTH}"),
    f"field_plausiblebeforedeath_{CO}_condition_start_date": (SPEC["after_death"], f"SELECT count(*) {LATE}"),
    # plausibleDuringLife reads the same field with the same 60-day allowance
    f"field_plausibleduringlife_{CO}_condition_start_date": (SPEC["after_death"], f"SELECT count(*) {LATE}"),
    f"field_plausiblestartbeforeend_{DE}_drug_exposure_start_date": (
        SPEC["end_before_start"], f"SELECT count(*) FROM {DE} WHERE drug_exposure_end_date < drug_exposure_start_date"),
    # DQD's plausibleTemporalAfter for drug_exposure_end_date: after drug_exposure_start_date, the same rule seen from the end
    f"field_plausibletemporalafter_{DE}_drug_exposure_end_date": (
        SPEC["end_before_start"], f"SELECT count(*) FROM {DE} WHERE drug_exposure_end_date < drug_exposure_start_date"),
    f"field_isstandardvalidconcept_{CO}_condition_concept_id": (SPEC["non_standard_concept"], f"""
        SELECT count(*) FROM {CO} x JOIN concept c ON c.concept_id = x.condition_concept_id
        WHERE c.concept_id <> 0 AND (c.standard_concept IS DISTINCT FROM 'S' OR c.invalid_reason IS NOT NULL)"""),
    "field_isforeignkey_measurement_visit_occurrence_id": (SPEC["missing_foreign_key"], """
        SELECT count(*) FROM measurement WHERE visit_occurrence_id IS NOT NULL
        AND visit_occurrence_id NOT IN (SELECT visit_occurrence_id FROM visit_occurrence)"""),
    # DQD counts every row whose key is shared: each corrupted row and the row whose id it took
    "field_isprimarykey_measurement_measurement_id": (2 * SPEC["duplicate_primary_key"], """
        SELECT count(*) FROM measurement WHERE measurement_id IN
        (SELECT measurement_id FROM measurement GROUP BY 1 HAVING count(*) > 1)"""),
    # 26662 (Testicular hypofunction) is male only in DQD's v5.4 concept-level file; women are 8532
    f"concept_plausiblegender_{CO}_condition_concept_id_26662": (SPEC["implausible_gender"], f"""
        SELECT count(*) FROM {CO} x JOIN person p USING (person_id) WHERE x.condition_concept_id = 26662
        AND p.gender_concept_id <> 8507"""),
}
# No DQD 2.8.4 check type looks for events outside an observation period (none of the check types in
# OMOP_CDMv5.4_Check_Descriptions.csv compares an event with observation_period), so the faults of that kind are counted here only, in plain SQL;
# the events moved before birth or after death are outside the observation period too.
OUTSIDE = f"""SELECT count(*) FROM {CO} x JOIN observation_period o USING (person_id)
              WHERE x.condition_start_date NOT BETWEEN o.observation_period_start_date AND o.observation_period_end_date"""


def side_effects(clean: pd.DataFrame, faulted: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Checks a fault changes by necessity, with the (violations, denominator) they must then report:
    - missing_foreign_key: a measurement whose visit does not exist joins no visit, so withinVisitDates on measurement
      has that many fewer rows in its denominator (its violations stay those of the clean CDM);
    - implausible_gender: the synthetic vocabulary has no sex-specific concept, so 26662 is added to `concept` (a valid
      standard concept: invalid_reason NULL) and to `concept_ancestor` (its own ancestor): every check on those two
      tables has one more row in its denominator, and the completeness of concept.invalid_reason one more NULL."""
    out = {}
    wv = "field_withinvisitdates_measurement_measurement_date"
    out[wv] = (clean.loc[wv, "numViolatedRows"], clean.loc[wv, "numDenominatorRows"] - SPEC["missing_foreign_key"])
    vocab = clean[clean.cdmTableName.isin(["CONCEPT", "CONCEPT_ANCESTOR"]) & clean.numDenominatorRows.notna()
                  & (clean.checkLevel != "TABLE")]
    for cid, r in vocab.iterrows():
        if r.checkName == "cdmField": continue          # presence of a field: 0 of 1 whatever the rows
        extra = int(cid == "field_measurevaluecompleteness_concept_invalid_reason")
        out[cid] = (r.numViolatedRows + extra, r.numDenominatorRows + 1)
    return out


def _results(path: Path, dqd) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # DeprecationWarnings of duckdb's own API, not the CDM's
        cdm = connect(path)
    try: return run_checks(cdm, dqd).set_index("checkId")
    finally: cdm.close()


def _sql(path: Path, q: str) -> int:
    with duckdb.connect(str(path), read_only=True) as con: return con.execute(q).fetchone()[0]


@pytest.fixture(scope="module")
def dqd54():
    return load_dqd(DQD, "5.4")


@pytest.fixture(scope="module")
def cdms(tmp_path_factory, dqd54):
    d = tmp_path_factory.mktemp("faults")
    clean = generate(N_PERSONS, SEED, d / "clean.duckdb", progress=False)
    faulted = generate(N_PERSONS, SEED, d / "faulted.duckdb", progress=False, faults=SPEC)
    return {"clean": (clean, _results(clean, dqd54)), "faulted": (faulted, _results(faulted, dqd54))}


def test_clean_cdm_every_check_completes(cdms, dqd54):
    path, res = cdms["clean"]
    assert len(res) == len(list_checks(dqd54))
    assert set(res.checkName) == set(dqd54.descriptions.checkName) and set(res.checkName) <= set(IMPLEMENTED)
    assert set(res.status) <= set(STATUSES)
    assert res[res.status == "error"].error.to_dict() == {}
    assert res[res.status == "not applicable"].notApplicableReason.isna().sum() == 0
    assert (res.notApplicableReason == "not implemented yet").sum() == 0
    for cid, (_, q) in TARGETS.items():                 # the baseline of each targeted check, in plain SQL
        assert res.loc[cid, "numViolatedRows"] == _sql(path, q), cid
    assert _sql(path, OUTSIDE) == 0


def test_faulted_cdm_finds_exactly_the_injected_faults(cdms):
    (cpath, clean), (fpath, faulted) = cdms["clean"], cdms["faulted"]
    assert faulted[faulted.status == "error"].error.to_dict() == {}
    found = {}
    for cid, (n, q) in TARGETS.items():
        base = _sql(cpath, q)
        found[cid] = int(faulted.loc[cid, "numViolatedRows"]) - base
        assert _sql(fpath, q) == base + n, cid          # the plain-SQL count sees the faults too
        assert faulted.loc[cid, "status"] in ("failed", "passed with violations"), cid
        if not cid.startswith("concept_"):              # the same rows are checked; only their values changed
            assert faulted.loc[cid, "numDenominatorRows"] == clean.loc[cid, "numDenominatorRows"], cid
    assert found == {cid: n for cid, (n, _) in TARGETS.items()}
    assert tuple(faulted.loc[f"concept_plausiblegender_{CO}_condition_concept_id_26662", ["numViolatedRows", "numDenominatorRows"]]) \
        == (SPEC["implausible_gender"], SPEC["implausible_gender"])     # only the faulted rows carry the concept
    assert _sql(fpath, OUTSIDE) == SPEC["outside_observation_period"] + SPEC["before_birth"] + SPEC["after_death"]
    # every other check reports what it reported on the clean CDM, save the necessary side effects
    side = side_effects(clean, faulted)
    assert not set(side) & set(TARGETS)
    cols = ["status", "numViolatedRows", "numDenominatorRows", "notApplicableReason"]
    same = ~clean.index.isin([*TARGETS, *side])
    text = lambda df: df.loc[same, cols].astype(object).map(str)         # NA, None and numbers as text, alike on both sides
    changed = (text(clean) != text(faulted)).any(axis=1)
    assert changed[changed].index.tolist() == []
    got = {cid: (int(faulted.loc[cid, "numViolatedRows"]), int(faulted.loc[cid, "numDenominatorRows"])) for cid in side}
    assert got == {cid: (int(v), int(d)) for cid, (v, d) in side.items()}


def test_fault_log_lists_the_spec(cdms):
    fpath, _ = cdms["faulted"]
    with duckdb.connect(str(fpath), read_only=True) as con:
        log = con.execute("SELECT kind, table_name, row_id FROM _healthbench_faults").df()
        desc = con.execute("SELECT source_description FROM cdm_source").fetchone()[0]
    assert log.groupby("kind").size().to_dict() == SPEC
    assert not log.duplicated(["table_name", "row_id"]).any()       # one fault per row
    assert "injected faults" in desc and "before_birth=2" in desc
    cpath, _ = cdms["clean"]
    with duckdb.connect(str(cpath), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = '_healthbench_faults'").fetchone()[0] == 0


@pytest.mark.parametrize("name, files", [("gibleed_5.3", "*.parquet"), ("mimic_iv_demo_5.3", "*.csv")])
def test_real_cdm_every_check_completes(tmp_path, name, files):
    """Every v5.3 check on a published CDM completes or is not applicable with a reason. The files are read into a
    temporary DuckDB (types as DuckDB reads them: GiBleed's ids as DOUBLE, MIMIC's 64-bit ids), opened read-only;
    views over the CSV files would parse them again for every query (MIMIC: over 3 minutes instead of 8 s)."""
    src = DATA / "omop" / name
    if not src.is_dir(): pytest.fail(f"real test data missing: {src} (the project's ../shared/data/, or set HB_SHARED_DATA)")
    db, read = tmp_path / f"{name}.duckdb", "read_parquet" if files == "*.parquet" else "read_csv"
    with duckdb.connect(str(db)) as con:
        for p in sorted(src.glob(files)): con.execute(f"CREATE TABLE {p.stem} AS SELECT * FROM {read}('{p}')")
    dqd = load_dqd(DQD, "5.3")
    res = _results(db, dqd)
    assert len(res) == len(list_checks(dqd))
    assert res[res.status == "error"].error.to_dict() == {}
    assert res[res.status == "not applicable"].notApplicableReason.isna().sum() == 0
    assert (res.notApplicableReason == "not implemented yet").sum() == 0
    assert set(res.status) <= set(STATUSES)
    # two counts against plain SQL on the same files: a primary key and a foreign key
    t = lambda table: f"{read}('{src / (table + files[1:])}')"
    q = lambda sql: duckdb.sql(sql).fetchone()[0]
    co = t("condition_occurrence")
    assert res.loc["field_isprimarykey_condition_occurrence_condition_occurrence_id", "numViolatedRows"] == q(
        f"SELECT count(*) FROM {co} WHERE condition_occurrence_id IN "
        f"(SELECT condition_occurrence_id FROM {co} GROUP BY 1 HAVING count(*) > 1)")
    assert res.loc["field_isforeignkey_condition_occurrence_person_id", "numViolatedRows"] == q(
        f"SELECT count(*) FROM {co} WHERE person_id NOT IN (SELECT person_id FROM {t('person')})")
