"""Adversarial tests of the AI-readiness card's release bundle (`healthbench run quality`), as an output checker would run them.

The attacker reads only `release/` (CSV, JSON, PNG, results.json) and public knowledge: DQD's check definitions, the
template's code and parameters, and a cohort's definition (it is in the card). Each attack is a linear programme
(`attacks.Counts`, scipy's HiGHS) or an enumeration over the released numbers and the relations they obey:

- linked tables: composition, completeness and outcome_prevalence count the same persons per (variable, level), and
  each level's persons = with + without a record, levels adding up to 'All' (one LP over the three tables);
- suppression summaries: results.json says how many hidden counts are small ("N small counts hidden, M more"); with the
  sums it narrows each hidden composition cell (enumeration);
- DQD: statuses and thresholds ('passed' is 0 violating rows, 'passed with violations' at t% is 1..t% of the rows
  checked, 'failed' more), and checks of one table that share a denominator (isRequired and measureValueCompleteness
  count its nulls over all its rows; plausibleValueLow/High and plausibleAfterBirth count its non-null values);
- person-years: the follow-up table's total less the released years' person-years bounds a hidden year's persons;
- figures: each PNG is redrawn from its released table, byte for byte, so it shows nothing the table hid;
- differencing: a whole-CDM run and a run on a cohort of the same CDM, whose composition counts are differenced.

A test passes when the release is safe against its attack: no hidden count pinned to fewer than `THRESHOLD` possible
values (pinned to exactly 1 to THRESHOLD - 1 is what a suppressed small count says by itself, and does not count).
Five attacks succeeded on the first version of the card; each was fixed, and its test now checks that it fails (see
each docstring for what leaked and how it was closed):

- `test_differencing_whole_cdm_and_cohort`: a whole-CDM card and a cohort card of the same CDM, differenced, give the
  whole card's hidden small counts exactly (fixed: the quality tables carry populations, so differencing is reviewed);
- `test_dqd_shared_denominators_mimic`: two DQD checks of one field share a denominator; one hides 9 rows, the other
  gives them away (MIMIC-IV demo, default parameters);
- `test_dqd_statuses_with_a_row_floor`: 'passed with violations' beside a row-count floor of 3 pins hidden counts to 1-3;
- `test_dqd_json_counts_went_through_disclosure_control`: zero counts of not-applicable checks reach the DQD results
  file without the disclosure check (uk_default: zeros are disclosive);
- `test_records_of_few_persons_mimic`: Table S1 shows the records of years whose persons (fewer than 10) it hides.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from attacks import attacks as A
from attacks.attacks import INF, Counts, count_interval, read_table

DATA = Path(os.environ.get("HB_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
DQD, GIBLEED, MIMIC = DATA / "dqd", DATA / "omop" / "gibleed_5.3", DATA / "omop" / "mimic_iv_demo_5.3"
THRESHOLD = 10                      # uk_default: minimum count (zeros disclosive)
PERSONS, SEED = 3000, 1
SBP = 3004249                       # systolic blood pressure (LOINC), the first of the card's key measurements


# ================================================================================================================
# runs: one synthetic CDM, three runs in one project folder (so the release ledger sees them), and GiBleed

def _template(params: dict, out: Path) -> Path:
    from healthbench.templates import run
    return Path(run("quality", params, out, progress=False).run_dir)


def _cohort(name: str, concept: int, domain: str) -> str:
    from healthbench.cohort import Cohort
    from healthbench.concepts import concept_set
    return Cohort.builder(name).entry(concept_set(name, concept), domain).build().to_json()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quality_attack")


@pytest.fixture(scope="module")
def cdm(project) -> Path:
    from healthbench.synth import generate
    path = project / "data" / "cdm.duckdb"
    path.parent.mkdir()
    generate(PERSONS, seed=SEED, path=path, progress=False, overwrite=True)
    return path


@pytest.fixture(scope="module")
def whole(project, cdm) -> Path:
    "Every person of the synthetic CDM."
    return _template({"cdm_path": str(cdm)}, project / "whole")


@pytest.fixture(scope="module")
def sbp(project, cdm, whole) -> Path:
    "The cohort of persons with a systolic blood pressure measurement: public, in its card; 49 persons fewer than `whole`."
    return _template({"cdm_path": str(cdm), "cohort_json": _cohort("Systolic blood pressure measured", SBP, "measurement")},
                     project / "sbp")


@pytest.fixture(scope="module")
def mi(project, cdm) -> Path:
    "A small cohort (210 persons, first MI or stroke): small ethnic groups, small cells in every table."
    from healthbench.cohort import Cohort
    from healthbench.concepts import concept_set
    cohort = Cohort.builder("MI or stroke").entry(concept_set("MI or stroke", 4329847, 381316), "condition").build().to_json()
    return _template({"cdm_path": str(cdm), "cohort_json": cohort}, project / "mi")


@pytest.fixture(scope="module")
def gibleed_cdm(tmp_path_factory) -> Path:
    from healthbench.cdm_import import import_cdm
    path = tmp_path_factory.mktemp("quality_attack_gibleed") / "gibleed.duckdb"
    import_cdm(GIBLEED, path, progress=False)
    return path


@pytest.fixture(scope="module")
def gibleed(gibleed_cdm) -> Path:
    return _template({"cdm_path": str(gibleed_cdm), "dqd_folder": str(DQD), "outcome": "condition:192671"},
                     gibleed_cdm.parent / "run")


@pytest.fixture(scope="module")
def gibleed_floor(gibleed_cdm) -> Path:
    "GiBleed's card with a row-count floor of 3 rows beside DQD's percentages (template parameter row_floor)."
    return _template({"cdm_path": str(gibleed_cdm), "dqd_folder": str(DQD), "outcome": "condition:192671", "row_floor": 3},
                     gibleed_cdm.parent / "run_floor")


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    "The MIMIC-IV demo (100 persons) with DQD's checks and default parameters."
    from healthbench.cdm_import import import_cdm
    path = tmp_path_factory.mktemp("quality_attack_mimic") / "mimic.duckdb"
    import_cdm(MIMIC, path, progress=False)
    return _template({"cdm_path": str(path), "dqd_folder": str(DQD)}, path.parent / "run")


def _bundle(request, which: str) -> Path:
    return request.getfixturevalue(which) / "release"


def _narrow(recovered: dict) -> dict:
    """Hidden counts pinned to fewer than THRESHOLD possible values: {key: (lo, hi)}. Pinned to 1 to THRESHOLD - 1 is no
    more than a suppressed small count says by itself (as '<10' would), and is not counted."""
    return {k: iv for k, iv in recovered.items() if iv[1] - iv[0] + 1 < THRESHOLD and tuple(iv) != (1, THRESHOLD - 1)}


def _show(d: dict, n: int = 12) -> str:
    return "; ".join(f"{k}: {v}" for k, v in list(d.items())[:n]) + (f" ... ({len(d)} in all)" if len(d) > n else "")


# ================================================================================================================
# 1. linked tables: composition, completeness and outcome prevalence count the same persons

def linked_tables(bundle: Path) -> dict:
    """Every hidden count of the completeness and outcome_prevalence tables (persons, with and without a record) and of
    the composition's persons, as min and max over one LP of the three tables: {(table, measurement, variable, level,
    count): (lo, hi)}."""
    S, targets, persons_of = Counts(), {}, {}
    for name in ("completeness", "outcome_prevalence"):
        path = bundle / f"{name}.csv"
        if not path.is_file():
            continue
        t = read_table(path, index_col=[0, 1, 2])
        for (m, v, lv), r in t.iterrows():
            iv = {"persons": count_interval(r["persons"], sf3=False), "with": count_interval(r["with_record"], sf3=False)}
            x = {c: S.var((name, m, v, lv, c), iv.get(c)) for c in ("persons", "with", "without")}
            S.add({x["with"]: 1, x["without"]: 1, x["persons"]: -1}, 0)
            persons_of.setdefault((v, lv), []).append(x["persons"])
            if iv["with"] is None:
                targets.update({(name, m, v, lv, c): (name, m, v, lv, c) for c in ("with", "without")})
            if iv["persons"] is None:
                targets[(name, m, v, lv, "persons")] = (name, m, v, lv, "persons")
        for m in dict.fromkeys(t.index.get_level_values(0)):
            sub = t.loc[m]
            for v in dict.fromkeys(sub.index.get_level_values(0)):
                if v == "All":
                    continue
                for c in ("persons", "with", "without"):
                    coeffs = {S.keys[(name, m, v, lv, c)]: 1.0 for lv in sub.loc[v].index}
                    coeffs[S.keys[(name, m, "All", "All", c)]] = -1.0
                    S.add(coeffs, 0)
    comp = read_table(bundle / "composition.csv", index_col=[0, 1])
    for (v, lv), r in comp.iterrows():
        iv = count_interval(r["Persons"], sf3=False)
        persons_of.setdefault((v, lv), []).append(S.var(("composition", "", v, lv, "persons"), iv))
        if iv is None:
            targets[("composition", "", v, lv, "persons")] = ("composition", "", v, lv, "persons")
    for v in dict.fromkeys(comp.index.get_level_values(0)):
        if v != "All":
            coeffs = {S.keys[("composition", "", v, lv, "persons")]: 1.0 for lv in comp.loc[v].index}
            coeffs[S.keys[("composition", "", "All", "All", "persons")]] = -1.0
            S.add(coeffs, 0)
    for same in persons_of.values():
        for x in same[1:]:
            S.add({same[0]: 1, x: -1}, 0)
    return (S.bounds(targets) or {}) if targets else {}


@pytest.mark.parametrize("which", ["whole", "mi", "gibleed"])
def test_linked_tables(which, request):
    rel = _bundle(request, which)
    rec = linked_tables(rel)
    assert rec, f"{which}: nothing hidden to attack (the scenario should have small cells)"
    found = _narrow(rec)
    assert not found, f"{which}: composition + completeness + outcome prevalence pin hidden counts: {_show(found)}"


# ================================================================================================================
# 2. suppression summaries: results.json says how many hidden counts are small

def _small_counts(bundle: Path, output: str) -> int | None:
    "The number of small counts an output's summary says were hidden (0 if it hid nothing), None if not said."
    res = json.loads((bundle / "results.json").read_text())["results"]
    s = next((r["summary"] for r in res.values() if r["properties"]["name"] == output), None)
    if s is None:
        return None
    m = re.search(r"(\d+) small counts hidden", s)
    return int(m.group(1)) if m else (0 if s.startswith("pass") else None)


def composition_with_summary(bundle: Path) -> dict:
    """Each hidden composition cell's possible values, given the levels' sums and that exactly k hidden counts are
    small (k from results.json): {(variable, level): sorted values}. Enumerates each variable's splits of what its
    hidden levels hold (at least 1 each: a level with nobody is not listed), then combines variables on k."""
    comp = read_table(bundle / "composition.csv", index_col=[0, 1])
    k = _small_counts(bundle, "composition")
    total = count_interval(comp.loc[("All", "All"), "Persons"], sf3=False)
    if k is None or total is None or total[0] != total[1]:
        return {}
    per_var = {}
    for v in dict.fromkeys(comp.index.get_level_values(0)):
        if v == "All":
            continue
        shown = [count_interval(x, sf3=False) for x in comp.loc[v, "Persons"]]
        hidden = [lv for lv, x in zip(comp.loc[v].index, shown) if x is None]
        if not hidden:
            continue
        rest = total[0] - sum(x[0] for x in shown if x is not None)
        if len(hidden) > 4 or rest > 400:
            return {}                                   # too many splits to enumerate: the attacker learns no more here
        splits = []
        def split(prefix, left, n):
            if n == 1:
                if left >= 1: splits.append(prefix + [left])
                return
            for a in range(1, left - n + 2):
                split(prefix + [a], left - a, n - 1)
        split([], rest, len(hidden))
        per_var[v] = (hidden, splits)
    smalls = {v: {} for v in per_var}             # variable -> {number of small cells: splits}
    for v, (hidden, splits) in per_var.items():
        for s in splits:
            smalls[v].setdefault(sum(x < THRESHOLD for x in s), []).append(s)
    out = {}
    vars_ = list(per_var)
    for v in vars_:
        others = [set(smalls[u]) for u in vars_ if u != v]
        reachable = {0}
        for o in others:
            reachable = {a + b for a in reachable for b in o}
        for n_small, splits in smalls[v].items():
            if k - n_small in reachable:
                for s in splits:
                    for lv, x in zip(per_var[v][0], s):
                        out.setdefault((v, lv), set()).add(x)
    return {key: sorted(vals) for key, vals in out.items()}


@pytest.mark.parametrize("which", ["gibleed", "mi"])
def test_suppression_summary_narrows_composition_little(which, request):
    """The summary may tell that a hidden cell is small (1 to 9: what a primary suppression means, as '<10' would), but
    must leave it fewer than THRESHOLD possible values only if those are exactly 1 to 9."""
    rel = _bundle(request, which)
    possible = composition_with_summary(rel)
    if which == "gibleed":
        # ethnic groups 'native' and 'other' are hidden and hold 16 persons together; the summary says one of them is
        # small, so each is 1-6 or 10-15 (without it 1-15): 12 possible values, still at least THRESHOLD
        assert set(possible) == {("ethnicity", "native"), ("ethnicity", "other")}, possible
        assert possible[("ethnicity", "other")] == [*range(1, 7), *range(10, 16)]
    else:
        # three hidden ethnic groups of 16 persons, all three small: each 1 to 9 (without the summary 1 to 14)
        assert len(possible) == 3 and all(v == list(range(1, THRESHOLD)) for v in possible.values()), possible
    found = {k: (v[0], v[-1], len(v)) for k, v in possible.items() if len(v) < THRESHOLD and v != list(range(1, THRESHOLD))}
    assert not found, f"the suppression summary narrows hidden composition cells below 'small': {found}"


# ================================================================================================================
# 3. DQD: statuses, thresholds and denominators shared by the checks of one table

_ALL_ROWS = {"isRequired", "measureValueCompleteness", "cdmDatatype", "isPrimaryKey", "isForeignKey", "isStandardValidConcept",
             "fkDomain", "fkClass", "plausibleTemporalAfter", "sourceConceptRecordCompleteness"}
_NON_NULL = {"plausibleValueLow", "plausibleValueHigh", "plausibleAfterBirth"}


def dqd_checks(bundle: Path) -> dict:
    """Hidden violating, checked and not-violating row counts of DQD's released results file, min and max by LP, one
    table at a time: {(checkId, 'violating'|'checked'|'not_violating'): (lo, hi)}."""
    doc = json.loads((bundle / "dqd_results_json.json").read_text())
    by_table = {}
    for r in doc["CheckResults"]:
        if r["checkName"] in ("cdmTable", "cdmField") or r["status"] == "error":
            continue
        table = "person" if r["checkName"] == "measurePersonCompleteness" else r.get("cdmTableName", "").lower()
        by_table.setdefault(table, []).append(r)
    out = {}
    for table, rows in by_table.items():
        hidden = [r for r in rows if r["status"] != "not applicable" and not {"numViolatedRows", "numDenominatorRows"} <= set(r)]
        if not hidden:
            continue
        S = Counts()
        n = S.var(("n", table))
        for r in rows:
            cid, st, name = r["checkId"], r["status"], r["checkName"]
            field = (r.get("cdmFieldName") or "").lower()
            nulls = S.var(("nulls", field)) if field else None
            if nulls is not None:
                S.add({nulls: 1, n: -1}, -INF, 0)
            v = S.var((cid, "v"), (r["numViolatedRows"],) * 2 if "numViolatedRows" in r else None)
            d = S.var((cid, "d"), (r["numDenominatorRows"],) * 2 if "numDenominatorRows" in r else None)
            if st == "not applicable":
                reason = r.get("notApplicableReason", "")
                if reason == f"Table {table.upper()} is empty.": S.var(("n", table), (0, 0))
                if reason.endswith("is not populated.") and nulls is not None: S.add({nulls: 1, n: -1}, 0)
                continue
            S.add({v: 1, d: -1}, -INF, 0)
            S.add({d: 1}, 1, INF)                       # evaluated: the denominator is not empty
            th, floor = r.get("thresholdValue") or 0, r.get("rowFloor")
            if st == "passed":
                S.add({v: 1}, 0)
            elif st == "passed with violations":
                S.add({v: 1}, 1, INF)
                S.add({v: 100, d: -th}, -INF, 0)        # at most th% of the rows checked ...
                if floor is not None: S.add({v: 1}, -INF, floor)      # ... and at most the row-count floor
            elif st == "failed":
                S.add({v: 1}, 1, INF)
                if th and floor is None: S.add({v: 100, d: -th}, 1e-6, INF)
                elif th and "numDenominatorRows" in r:  # more than th% or more than the floor: more than the lesser
                    S.add({v: 1}, math.floor(min(floor, th * r["numDenominatorRows"] / 100)) + 1, INF)
            if name == "measurePersonCompleteness" or name in _ALL_ROWS and field:
                S.add({d: 1, n: -1}, 0)
            if name in ("isRequired", "measureValueCompleteness") and field:
                S.add({v: 1, nulls: -1}, 0)
            elif name in _NON_NULL and field:
                S.add({d: 1, n: -1, nulls: 1}, 0)
            elif name == "standardConceptRecordCompleteness" and field == "unit_concept_id" and table in ("measurement", "observation"):
                S.add({d: 1, n: -1, S.var(("nulls", "value_as_number")): 1}, 0)
            elif name == "standardConceptRecordCompleteness" and field:
                S.add({d: 1, n: -1}, 0)
        targets = {}
        for r in hidden:                                # the hidden counts, and what the disclosure check also protects:
            cid = r["checkId"]                          # the rows not violating, checked less violating
            if "numViolatedRows" not in r: targets[(cid, "violating")] = (cid, "v")
            if "numDenominatorRows" not in r: targets[(cid, "checked")] = (cid, "d")
            targets[(cid, "not_violating")] = {(cid, "d"): 1.0, (cid, "v"): -1.0}
        out.update(S.bounds(targets) or {})
    return out


def _dqd_truth(run: Path) -> dict:
    "The unsuppressed counts of the run's DQD results file, which stays in the TRE (work/): to check the attack is sound."
    out = {}
    for r in json.loads((run / "work" / "dqd_results_internal.json").read_text())["CheckResults"]:
        v, d = r.get("numViolatedRows"), r.get("numDenominatorRows")
        if v is not None and d is not None:
            out.update({(r["checkId"], "violating"): v, (r["checkId"], "checked"): d, (r["checkId"], "not_violating"): d - v})
    return out


def test_dqd_statuses_and_shared_denominators(gibleed):
    rec = dqd_checks(gibleed / "release")
    truth = _dqd_truth(gibleed)
    assert all(lo <= truth[k] <= hi for k, (lo, hi) in rec.items()), "the attack must be sound"
    assert len(rec) >= 20, "GiBleed's DQD results should have hidden counts to attack"
    found = _narrow(rec)
    # the closest: withinVisitDates on drug_exposure_start_date, 'passed with violations' at 5% of 217 rows: 1 to 10
    # (true: 8); a check at 5% of fewer than 200 rows would pin its hidden count to fewer than 10 values
    lo, hi = rec[("field_withinvisitdates_drug_exposure_drug_exposure_start_date", "violating")]
    assert hi - lo + 1 >= 10, (lo, hi)          # its status is hidden with its count: no narrower than suppression itself
    assert not found, f"DQD statuses, thresholds and shared denominators pin hidden counts: {_show(found)}"


def test_dqd_shared_denominators_mimic(mimic):
    """Found by this attack, then fixed (cross-check relations in `quality_results.flagged_checks`). MIMIC-IV demo, default parameters: measureValueCompleteness on drug_exposure.quantity hides its violating
    rows (9 rows without a quantity: [c] of 18,229), but plausibleValueLow on the same field shows the rows it checked,
    those with a quantity (18,220): 18,229 - 18,220 = 9, read off dqd_checks.csv. The disclosure check relates the
    counts of one check only (violating + not violating = checked), not the checks that share a denominator."""
    rel = mimic / "release"
    rec, truth = dqd_checks(rel), _dqd_truth(mimic)
    assert all(lo <= truth[k] <= hi for k, (lo, hi) in rec.items()), "the attack must be sound"
    with duckdb.connect(str(mimic.parent / "mimic.duckdb"), read_only=True) as con:
        nulls = con.sql("SELECT count(*) - count(quantity) FROM drug_exposure").fetchone()[0]
    key = ("field_measurevaluecompleteness_drug_exposure_quantity", "violating")
    assert key in rec and truth[key] == nulls        # the target is hidden, and the truth is the nulls counted in SQL
    found = {k: (*iv, truth[k]) for k, iv in _narrow(rec).items() if k[1] != "not_violating"}
    assert not found, (f"DQD checks sharing a denominator pin {len(found)} hidden counts, as (lo, hi, truth): {_show(found)}")


def test_dqd_statuses_with_a_row_floor(gibleed_floor):
    """Found by this attack, then fixed (a status is hidden with its violating rows). With a row-count floor of 3 rows (row_floor=3, shown in every threshold as 'at most 3 rows'), a check
    'passed with violations' has 1 to 3 violating rows: the status gives away what the hidden count hides. On GiBleed six
    hidden counts of records are pinned to 1-3 (true: 1 each; e.g. plausibleAfterBirth on drug_era_start_date), and the
    race_source_value check's distinct values to 1-3 (true: 3)."""
    rel = gibleed_floor / "release"
    assert "at most 3 rows" in read_table(rel / "dqd_checks.csv")["Threshold"].iloc[0]
    rec, truth = dqd_checks(rel), _dqd_truth(gibleed_floor)
    assert all(lo <= truth[k] <= hi for k, (lo, hi) in rec.items()), "the attack must be sound"
    found = {k: (*iv, truth[k]) for k, iv in _narrow(rec).items() if k[1] != "not_violating"}
    assert not found, (f"DQD statuses beside a row-count floor pin {len(found)} hidden counts, as (lo, hi, truth): {_show(found)}")


def test_dqd_json_counts_went_through_disclosure_control(gibleed):
    """Every count in the released DQD results file is one the disclosure check saw (released in dqd_checks).

    Found by this attack, then fixed (not-applicable checks carry no counts in the release): the template copied the counts of not-applicable checks into dqd_results_json unchecked (its comment says
    "its counts are the released ones"), and 514 of them are zero counts of records: a concept absent from a table
    (plausibleGender, plausibleUnitConceptIds), rows of persons who died (plausibleBeforeDeath, plausibleDuringLife:
    GiBleed has no deaths). uk_default's rules, in the bundle's config.json, say a zero is disclosive; dqd_checks
    would have hidden a zero 'Rows checked'."""
    rel = gibleed / "release"
    doc = json.loads((rel / "dqd_results_json.json").read_text())
    checked = read_table(rel / "dqd_checks.csv")
    rules = json.loads((rel / "config.json").read_text())["rules"]
    assert rules["zeros_disclosive"] and rules["threshold"] == THRESHOLD
    unchecked = {}
    for r in doc["CheckResults"]:
        if r["checkName"] in ("cdmTable", "cdmField"):
            continue                                     # 0 or 1 of 1: whether a table or field exists, no count of rows
        for col, shown in (("numViolatedRows", "Violating rows"), ("numDenominatorRows", "Rows checked")):
            if col not in r:
                continue
            if r["checkId"] not in checked.index or count_interval(checked.at[r["checkId"], shown], sf3=False) != (r[col], r[col]):
                unchecked[(r["checkId"], col)] = r[col]
    # no violating row says nothing of anyone (dqd_checks shows those zeros too); no row checked is a zero count of records
    small = {k: v for k, v in unchecked.items() if v < THRESHOLD and (v > 0 or k[1] == "numDenominatorRows")}
    assert not small, (f"{len(small)} small counts (zeros disclosive) in dqd_results_json.json never went through "
                       f"disclosure control, e.g. {_show(small, 6)}")


# ================================================================================================================
# 4. person-years: the follow-up total less the released years bounds a hidden year

def _sf3(text) -> tuple[float, float] | None:
    "A statistic printed after rounding to 3 significant figures ('1050.0' may be 1045 to 1055), as an interval."
    iv = A.parse_number(text, statistic=True)
    if iv is None:
        return None
    x = (iv[0] + iv[1]) / 2
    h = 0.5 * 10.0 ** (math.floor(math.log10(abs(x))) - 2) if x else 0.0
    return min(iv[0], x - h), max(iv[1], x + h)


def person_years(bundle: Path) -> dict:
    "{year: (lo, hi)} persons observed in each hidden year, from person-years (a person adds at most 366/365.25 a year)."
    fu = read_table(bundle / "follow_up.csv")
    total = A.parse_number(fu.loc["Person-years of observation", "Value"], sf3=False)
    t = read_table(bundle / "records_by_year.csv")
    shown = [_sf3(x) for x in t["Person-years"]]
    hidden = [y for y, x in zip(t.index, shown) if x is None]
    if not hidden or total is None:
        return {}
    lo = total[0] - sum(x[1] for x in shown if x is not None)
    per = {}
    for y in hidden:                                 # the others hidden hold at least 0 person-years
        per[y] = (max(1, math.ceil(lo / (366 / 365.25) - 1e-9)) if len(hidden) == 1 else 1, INF)
    return per


def test_person_years_of_hidden_years(gibleed):
    rec = person_years(gibleed / "release")
    assert rec, "GiBleed's first year is hidden"
    assert not _narrow(rec), f"person-years pin the persons of hidden years: {rec}"


def test_records_of_few_persons_mimic(mimic):
    """Found by this attack, then fixed (records and rate hidden with a year's persons). Table S1 hides the persons observed in a year with fewer than 10 (MIMIC-IV demo: most years), but
    shows that year's clinical records: a total over fewer than 10 persons (in 2118: 468 records, all one person's), the
    case the threshold rule for magnitude tables (contributors at least 10) and the N-K dominance rule exist for.
    (A blank 'Records per person-year' beside a hidden year also tells that its person-years round to 0, where [c]
    says they do not.)"""
    t = read_table(mimic / "release" / "records_by_year.csv")
    shown = {str(y): count_interval(r["Records"], sf3=False) for y, r in t.iterrows()
             if count_interval(r["Persons observed"], sf3=False) is None and count_interval(r["Records"], sf3=False) not in (None, (0, 0))}
    q = """WITH y AS (SELECT range AS year FROM range(2000, 2300))
           SELECT y.year, count(DISTINCT o.person_id) FROM observation_period o JOIN y
             ON year(o.observation_period_start_date) <= y.year AND year(o.observation_period_end_date) >= y.year GROUP BY 1"""
    with duckdb.connect(str(mimic.parent / "mimic.duckdb"), read_only=True) as con:
        persons = {str(y): n for y, n in con.sql(q).fetchall()}
    few = {y: (rec[0], persons[y]) for y, rec in shown.items() if persons[y] < THRESHOLD}
    assert not few, (f"{len(few)} years show their records total over fewer than {THRESHOLD} persons (year: records, "
                     f"persons): {_show(few, 8)}")


# ================================================================================================================
# 5. figures: each is its released table drawn again, byte for byte

@pytest.mark.parametrize("which", ["whole", "mi", "gibleed"])
def test_figures_are_their_released_tables(which, request):
    import matplotlib
    matplotlib.use("Agg")
    from healthbench.completeness import plot_completeness
    from healthbench.readiness import plot_composition, plot_density
    rel = _bundle(request, which)
    text = lambda name, idx: read_table(rel / f"{name}.csv", index_col=idx).replace("[c]", np.nan)
    comp = plot_completeness(text("completeness", [0, 1, 2]).astype({c: float for c in ("pct", "lo", "hi")}))
    figures = {"composition_figure": plot_composition(text("composition", [0, 1]), "England and Wales (Census 2021; IMD 2019)"),
               "records_by_year_figure": plot_density(text("records_by_year", 0)), "completeness_figure": comp}
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        assert buf.getvalue() == (rel / f"{name}.png").read_bytes(), f"{which}: {name}.png shows more than {name}'s table"


# ================================================================================================================
# 6. differencing: the whole CDM's card and a cohort's card of the same CDM

def _truth_without_sbp(cdm: Path) -> dict:
    "{(variable, level): persons without a systolic blood pressure value}, by ethnicity and IMD quintile, in plain SQL."
    imd = {1: "1 (most deprived)", 5: "5 (least deprived)"}
    q = f"""WITH s AS (SELECT DISTINCT person_id FROM measurement WHERE measurement_concept_id = {SBP} AND value_as_number IS NOT NULL),
            q AS (SELECT person_id, min(round(value_as_number))::INT AS q FROM observation WHERE observation_concept_id = 35812882 GROUP BY 1)
            SELECT p.race_source_value, q.q, count(*) FILTER (WHERE s.person_id IS NULL)
            FROM person p LEFT JOIN s USING (person_id) LEFT JOIN q USING (person_id) GROUP BY GROUPING SETS ((1), (2))"""
    with duckdb.connect(str(cdm), read_only=True) as con:
        rows = con.sql(q).fetchall()
    out = {}
    for eth, quintile, n in rows:
        if eth is not None: out[("ethnicity", eth)] = n
        elif quintile is not None: out[("imd_quintile", imd.get(quintile, str(quintile)))] = n
    return out


def _truth_without_sbp_by_year(cdm: Path) -> dict:
    "{year: persons without a systolic blood pressure value observed in the year}, in plain SQL."
    q = f"""WITH s AS (SELECT DISTINCT person_id FROM measurement WHERE measurement_concept_id = {SBP} AND value_as_number IS NOT NULL),
            y AS (SELECT range AS year FROM range(1900, 2101))
            SELECT y.year, count(DISTINCT o.person_id) FROM observation_period o JOIN y
              ON year(o.observation_period_start_date) <= y.year AND year(o.observation_period_end_date) >= y.year
            WHERE o.person_id NOT IN (SELECT person_id FROM s) GROUP BY 1"""
    with duckdb.connect(str(cdm), read_only=True) as con:
        return {str(y): n for y, n in con.sql(q).fetchall()}


def differencing_years(whole: Path, cohort: Path) -> dict:
    "{year: (lo, hi)} persons observed in the year who are not in the cohort: the two records_by_year tables differenced."
    if not (whole / "records_by_year.csv").is_file() or not (cohort / "records_by_year.csv").is_file(): return {}   # withheld: nothing to subtract
    a, b = read_table(whole / "records_by_year.csv"), read_table(cohort / "records_by_year.csv")
    out = {}
    for y in a.index.intersection(b.index):
        pa, pb = count_interval(a.at[y, "Persons observed"], sf3=False), count_interval(b.at[y, "Persons observed"], sf3=False)
        if pa and pb:
            out[str(y)] = (max(pa[0] - pb[1], 0), pa[1] - pb[0])
    return out


def differencing(whole: Path, cohort: Path) -> dict:
    """Hidden counts of the whole CDM's completeness table recovered from a cohort's composition: the cohort is the persons
    with a record of the first key measurement (its definition is in its card), so its persons by sex, ethnicity and IMD
    are that measurement's `with_record` by the same levels (age bands move with the index date, so not those).
    {(variable, level): (lo, hi)} of the persons *without* a record, for the levels whose counts the table hid."""
    card = json.loads((cohort / "readiness_card_json.json").read_text())
    eligibility = next(i["value"] for i in card["items"] if i["item"].startswith("Eligibility"))
    assert eligibility["entry"]["domain"] == "measurement" and eligibility["concept_sets"][0]["include"] == [SBP]
    if not all((r / f).is_file() for r, f in ((whole, "composition.csv"), (cohort, "composition.csv"), (whole, "completeness.csv"))):
        return {}                                        # a table withheld (e.g. for review of differencing): nothing to subtract
    a, b = read_table(whole / "composition.csv", index_col=[0, 1]), read_table(cohort / "composition.csv", index_col=[0, 1])
    m = read_table(whole / "completeness.csv", index_col=[0, 1, 2])
    first = m.index.get_level_values(0)[0]
    out = {}
    for v, lv in a.index:
        if v not in ("sex", "ethnicity", "imd_quintile") or (v, lv) not in b.index or (first, v, lv) not in m.index:
            continue
        if count_interval(m.loc[(first, v, lv), "with_record"], sf3=False) is not None:
            continue                                     # shown anyway
        pa, pb = count_interval(a.loc[(v, lv), "Persons"], sf3=False), count_interval(b.loc[(v, lv), "Persons"], sf3=False)
        if pa and pb:
            out[(v, lv)] = (max(pa[0] - pb[1], 0), pa[1] - pb[0])
    return out


def test_differencing_whole_cdm_and_cohort(whole, sbp, cdm):
    """The whole CDM's completeness table hides, e.g., how many Mixed-ethnicity persons have no systolic blood
    pressure (2 of 91); the card of the cohort 'persons with a systolic blood pressure' shows 89 Mixed persons, and
    91 - 89 = 2. Before the quality tables carried populations (Counted.population), neither the session nor the project's
    release ledger (one folder holds both runs) saw that the groups differ by fewer than 10 persons; now the cohort run's
    tables that would differ so go to review and are withheld from its bundle."""
    assert json.loads((whole / "manifest.json").read_text())["status"] == "succeeded"
    rec = differencing(whole / "release", sbp / "release")
    truth = _truth_without_sbp(cdm)
    log = json.loads((sbp / "outputs" / "output_log.json").read_text())["results"].values()
    held = {o["properties"]["name"] for o in log if o["type"] == "table" and o["status"] == "review"
            and any("differencing" in r for r in o.get("reasons", []))}
    # either the cohort's composition is withheld for review of differencing, or the attack below must fail on it
    assert rec or "composition" in held, "the whole CDM's completeness table should hide some counts of the first key measurement"
    sound = {k: iv for k, iv in rec.items() if k in truth and iv[0] <= truth[k] <= iv[1]}
    assert sound == {k: iv for k, iv in rec.items() if k in truth}, "the differencing assumption failed: a recovered value misses the truth"
    ex = A.exposures(rec, truth, THRESHOLD)
    years = differencing_years(whole / "release", sbp / "release")
    ex_years = A.exposures(years, _truth_without_sbp_by_year(cdm), THRESHOLD)
    ledger = sbp.parent / ".healthbench-ledger" / "ledger.jsonl"
    recorded = len(ledger.read_text().splitlines()) if ledger.is_file() else 0
    verdicts = {r["properties"]["name"]: r["status"] for r in json.loads((sbp / "release" / "results.json").read_text())["results"].values()}
    assert not ex and not ex_years, (
        f"whole-CDM completeness (hidden) = its composition - the cohort's composition: {len(ex)} hidden small counts of "
        f"persons without a systolic blood pressure value recovered, as (lo, hi, truth): {_show(ex)}; and by year, the two "
        f"records_by_year tables differenced: {len(ex_years)} small counts of them observed in a year: {_show(ex_years, 8)}; "
        f"the project's release ledger holds {recorded} populations; the cohort run's verdicts: {verdicts}")
