"""The engine against OHDSI's Circe (circepy): the same definitions on the same CDMs give the same cohort rows and the
same ATLAS attrition (persons and records after each rule, each rule alone, and failing only it).

Definitions are `healthbench.expression.CohortExpression`s written here to exercise each construct, turned into Circe
JSON by `tests/circe_json.py` for circepy. The CDMs are small random ones (`circe_json.random_rows`: every kind of
event, ties, missing end dates, nulls, events outside observation). Needs the circepy venv (`HB_CIRCE_VENV`, else
`.circe-venv`, made by tests/circe/make_venv.sh); without it those tests are skipped unless HB_REQUIRE_CIRCE=1.

The shared PhenotypeLibrary definitions are checked against circepy's recorded answers (`tests/circe/library_*.csv`:
rows as `rows_sha256`, attrition persons and records per step), which needs no circepy: on GiBleed every definition that
has qualifying events there (77, 69 with persons); on typed MIMIC every definition circepy ran (542: none has a
qualifying event there, so each must be empty with zero attrition at every step); on healthbench's synthetic CDM
(`healthbench.synth`, 5,000 persons, seed 14: `tests/circe/library_synthetic.json`) every definition with qualifying
events there (27).

Run: PYTHONPATH=. pytest tests/test_engine_circe.py
"""
import os
import sys
import warnings
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "circe"))
import compare  # noqa: E402
from circe_json import random_rows, to_circe, toy_cdm  # noqa: E402

from healthbench.cdm import connect  # noqa: E402
from healthbench.concepts import concept_set  # noqa: E402
from healthbench.engine import generate_expression  # noqa: E402
from healthbench.expression import (CohortExpression, CollapseSettings, ConceptSetSelection, Criteria,  # noqa: E402
                                    CriteriaGroup, CorrelatedCriteria, CustomEraStrategy, DateAdjustment, DateOffsetStrategy,
                                    DateRange, DemographicCriteria, InclusionRule, NumericRange, ObservationWindow, Occurrence,
                                    Period, PrimaryCriteria, TextFilter, Window, WindowBound)


def _venv_ok() -> bool:
    venv = Path(os.environ.get("HB_CIRCE_VENV") or HERE.parent / ".circe-venv")
    return (venv / "bin" / "python").exists()



# concept sets by id: 0 conditions 100 + descendants, 1 drug 200 + descendants, 2 condition 103, 3 procedures, 4 measurement
# 400, 5 observation 500, 6 outpatient/inpatient visits, 7 devices, 8 drug 202, 9 conditions 100 minus 102, 10 units 8840,
# 11 specialty 38004456, 12 place 8717, 13 abnormal value concepts, 14 male
SETS = [concept_set("conditions", 100), concept_set("drugs", 200), concept_set("c103", 103, descendants=False),
        concept_set("procedures", 300, 301, descendants=False), concept_set("m400", 400, descendants=False),
        concept_set("o500", 500, descendants=False), concept_set("visits", 9201, 9202, descendants=False),
        concept_set("devices", 600, 601, descendants=False), concept_set("d202", 202, descendants=False),
        concept_set("c100 not 102", 100, exclude=[102]), concept_set("unit", 8840, descendants=False),
        concept_set("specialty", 38004456, descendants=False), concept_set("place", 8717, descendants=False),
        concept_set("abnormal", 4155142, 4155143, descendants=False), concept_set("male", 8507, descendants=False)]

W = lambda a, b, **kw: Window(WindowBound(None if a is None else abs(a), -1 if a is None or a < 0 else 1),
                              WindowBound(None if b is None else abs(b), 1 if b is None or b >= 0 else -1), **kw)
ALL_TIME = W(None, None)


def cc(kind, codeset=None, window=ALL_TIME, occ=(2, 1), **kw):
    attrs = kw.pop("attrs", {})
    occurrence = Occurrence(*occ) if isinstance(occ, tuple) else occ
    return CorrelatedCriteria(Criteria(kind, codeset, attrs=attrs, first=kw.pop("first", False),
                                       correlated_criteria=kw.pop("nested", None), date_adjustment=kw.pop("adjust", None)),
                              window, occurrence=occurrence, **kw)


def rule(name, *items, type="ALL", count=None, demographics=(), groups=()):
    return InclusionRule(name, CriteriaGroup(type, count, list(items), list(demographics), list(groups)))


def expr(primary, *, prior=0, post=0, limit="All", rules=(), **kw):
    crit = primary if isinstance(primary, list) else [primary]
    return CohortExpression(concept_sets=SETS, primary_criteria=PrimaryCriteria(crit, ObservationWindow(prior, post), limit),
                            inclusion_rules=list(rules), **kw)


COND, DRUG = Criteria("ConditionOccurrence", 0), Criteria("DrugExposure", 1)
DEFINITIONS = {
    "first condition, 30 days prior, end date + 5": expr(Criteria("ConditionOccurrence", 0, first=True), prior=30,
                                                         end_strategy=DateOffsetStrategy("EndDate", 5)),
    "all conditions, collapse, observation end": expr(COND),
    "conditions minus 102, era pad 30": expr(Criteria("ConditionOccurrence", 9), collapse_settings=CollapseSettings("ERA", 30),
                                            end_strategy=DateOffsetStrategy("StartDate", 10)),
    "condition or drug, first per person": expr([COND, DRUG], limit="First", end_strategy=DateOffsetStrategy("StartDate", 0)),
    "condition or drug, last per person": expr([COND, DRUG], limit="Last", post=30),
    "drugs, implicit ends, end date": expr(DRUG, end_strategy=DateOffsetStrategy("EndDate", 0)),
    "additional criteria, qualified first": expr(DRUG, additional_criteria=CriteriaGroup("ALL", criteria_list=[cc("ConditionOccurrence", 0, W(-365, 0))]),
                                                 qualified_limit="First", end_strategy=DateOffsetStrategy("StartDate", 30)),
    "empty additional group, qualified last": expr(COND, additional_criteria=CriteriaGroup("ALL"), qualified_limit="Last",
                                                   end_strategy=DateOffsetStrategy("StartDate", 1)),
    "rules: drug before, male, no 103": expr(COND, rules=[
        rule("drug in year before", cc("DrugExposure", 1, W(-365, -1))),
        rule("male", demographics=[DemographicCriteria(gender=[8507])]),
        rule("no 103 ever", cc("ConditionOccurrence", 2, ALL_TIME, (0, 0)))], end_strategy=DateOffsetStrategy("StartDate", 60)),
    "rules: ANY, AT_LEAST 2, AT_MOST 1, nested group": expr(COND, rules=[
        rule("any", cc("DrugExposure", 1, W(-30, 30)), cc("ProcedureOccurrence", 3, W(-30, 30)), type="ANY"),
        rule("at least 2 of 3", cc("Measurement", 4, ALL_TIME), cc("Observation", 5, ALL_TIME), cc("VisitOccurrence", 6, W(-7, 7)),
             type="AT_LEAST", count=2),
        rule("at most 1 of", cc("DrugExposure", 8, ALL_TIME), cc("DeviceExposure", 7, ALL_TIME), type="AT_MOST", count=1),
        rule("nested", groups=[CriteriaGroup("ANY", criteria_list=[cc("DrugExposure", 1, W(None, 0))],
                                             demographic_criteria_list=[DemographicCriteria(age=NumericRange("gte", 60))])])],
        end_strategy=DateOffsetStrategy("EndDate", 0)),
    "occurrences: exactly, distinct concept, distinct date, at most": expr(COND, rules=[
        rule("exactly 1 drug", cc("DrugExposure", 1, ALL_TIME, (0, 1))),
        rule("2 distinct conditions", cc("ConditionOccurrence", 0, ALL_TIME, Occurrence(2, 2, True))),
        rule("2 distinct days", cc("ConditionOccurrence", 0, ALL_TIME, Occurrence(2, 2, True, "START_DATE"))),
        rule("at most 2 visits", cc("VisitOccurrence", 6, ALL_TIME, (1, 2)))]),
    "windows: index end, event end, end window, unbounded, ignore period, same visit": expr(COND, rules=[
        rule("drug ending after index end", cc("DrugExposure", 1, W(0, None, use_index_end=True, use_event_end=True))),
        rule("visit spanning index", cc("VisitOccurrence", 6, W(None, 0), end_window=W(0, None, use_event_end=True))),
        rule("any condition after, outside period too", cc("ConditionOccurrence", None, W(1, None), ignore_observation_period=True)),
        rule("visit before, unbounded, after start coeff +1", cc("VisitOccurrence", 6, Window(WindowBound(None, 1), WindowBound(None, 1)), (1, 0))),
        rule("same visit", cc("ConditionOccurrence", None, ALL_TIME, restrict_visit=True))]),
    "measurement values": expr(Criteria("Measurement", 4, attrs={"value_as_number": NumericRange("bt", 90, 150.5)}), rules=[
        # circepy selects value_as_concept_id only when a value-as-concept filter is given, which Abnormal reads
        rule("abnormal", cc("Measurement", 4, W(-30, 30), attrs={"abnormal": True, "value_as_concept": [4155142, 4155143, 45877994]})),
        rule("ratio above 1", cc("Measurement", None, ALL_TIME, attrs={"range_high_ratio": NumericRange("gt", 1)})),
        rule("unit", cc("Measurement", None, ALL_TIME, attrs={"unit": [8840], "value_as_concept_cs": ConceptSetSelection(13)})),
        rule("low range", cc("Measurement", None, ALL_TIME, attrs={"range_low": NumericRange("eq", 80), "measurement_type_exclude": True,
                                                                  "measurement_type": [32020]}))],
        end_strategy=DateOffsetStrategy("StartDate", 7)),
    "observation values": expr(Criteria("Observation", 5, attrs={"value_as_string": TextFilter("contains", "smoker")}), rules=[
        rule("not ex", cc("Observation", None, W(0, 0), attrs={"value_as_string": TextFilter("!contains", "ex-")})),
        rule("qualifier, value", cc("Observation", None, ALL_TIME, attrs={"qualifier": [8840], "value_as_number": NumericRange("lte", 5)}))]),
    "drug attributes": expr(Criteria("DrugExposure", 1, attrs={"days_supply": NumericRange("gte", 30), "drug_type": [32020], "drug_type_exclude": True}),
                            rules=[rule("quantity, refills", cc("DrugExposure", None, ALL_TIME, attrs={"quantity": NumericRange("bt", 2, 40), "refills": NumericRange("gt", 0)})),
                                   rule("stop reason, route", cc("DrugExposure", None, ALL_TIME, attrs={"stop_reason": TextFilter("startsWith", "adv")}),
                                        cc("DrugExposure", None, ALL_TIME, attrs={"route_concept": [8840]}), type="ANY")],
                            end_strategy=DateOffsetStrategy("EndDate", 0)),
    "visit attributes": expr(Criteria("VisitOccurrence", 6, attrs={"visit_length": NumericRange("gte", 1)}), rules=[
        rule("place", cc("VisitOccurrence", None, W(0, 0), attrs={"place_of_service": [8717]})),
        rule("specialty", cc("VisitOccurrence", None, W(0, 0), attrs={"provider_specialty_cs": ConceptSetSelection(11)})),
        rule("type", cc("VisitOccurrence", None, W(0, 0), attrs={"visit_type": [32020, 32810]}))],
        end_strategy=DateOffsetStrategy("EndDate", 0)),
    "condition attributes": expr(Criteria("ConditionOccurrence", 0, attrs={"age": NumericRange("bt", 20, 70), "gender": [8532],
                                                                           "occurrence_start_date": DateRange("gte", "2019-01-01")}), rules=[
        rule("visit type", cc("ConditionOccurrence", None, ALL_TIME, attrs={"visit_type": [9201]})),
        rule("source concept, stop reason", cc("ConditionOccurrence", None, ALL_TIME, attrs={"condition_source_concept": 2,
                                                                                            "stop_reason": TextFilter("endsWith", "ved")}))]),
    "procedures, devices, death": expr(Criteria("ProcedureOccurrence", 3, attrs={"quantity": NumericRange("lte", 2)}), rules=[
        rule("device", cc("DeviceExposure", 7, ALL_TIME, attrs={"unique_device_id": TextFilter("startsWith", "AB")})),
        rule("no death before", cc("Death", None, W(None, -1), (0, 0)))],
        censoring_criteria=[Criteria("Death"), Criteria("DeviceExposure", 7)]),
    "observation periods, eras": expr(Criteria("ObservationPeriod", attrs={"period_length": NumericRange("gte", 200)}, first=True), rules=[
        rule("condition era", cc("ConditionEra", 0, ALL_TIME, attrs={"occurrence_count": NumericRange("gte", 2), "era_length": NumericRange("gt", 10)})),
        rule("drug era", cc("DrugEra", 1, ALL_TIME, attrs={"occurrence_count": NumericRange("lt", 3)}), cc("DoseEra", None, ALL_TIME,
             attrs={"dose_value": NumericRange("eq", 12.5)}), type="ANY")],
        end_strategy=DateOffsetStrategy("StartDate", 90)),
    "user defined period": expr(Criteria("ObservationPeriod", attrs={"user_defined_period": Period("2019-06-01", "2019-09-30")}),
                                end_strategy=DateOffsetStrategy("EndDate", 0)),
    "nested correlated criteria on entry": expr(Criteria("ConditionOccurrence", 0, correlated_criteria=CriteriaGroup("ALL", criteria_list=[
        cc("DrugExposure", 1, W(-90, 0))])), rules=[rule("nested in rule", cc("VisitOccurrence", 6, W(-10, 10), nested=CriteriaGroup(
            "ANY", criteria_list=[cc("ConditionOccurrence", 0, W(0, 0))])))]),
    "date adjustment": expr(Criteria("ConditionOccurrence", 0, date_adjustment=DateAdjustment("START_DATE", 7, "START_DATE", 37)),
                            end_strategy=DateOffsetStrategy("EndDate", 0)),
    "custom drug era end": expr(COND, end_strategy=CustomEraStrategy(1, gap_days=30, offset=7)),
    "custom drug era, days supply override": expr(DRUG, end_strategy=CustomEraStrategy(1, gap_days=0, offset=0, days_supply_override=20)),
    "expression limit first, censor window": expr(COND, rules=[rule("drug", cc("DrugExposure", 1, ALL_TIME))], expression_limit="First",
                                                  censor_window=Period("2019-01-01", "2020-06-30")),
    "expression limit last, censoring": expr(DRUG, expression_limit="Last", censoring_criteria=[Criteria("ConditionOccurrence", 2)]),
    "negative offset drops short events": expr(COND, end_strategy=DateOffsetStrategy("EndDate", -10)),
    "eras as entry": expr([Criteria("ConditionEra", 0, attrs={"age_at_start": NumericRange("lt", 60), "era_end_date": DateRange("gt", "2019-01-01")}),
                           Criteria("DrugEra", 1, attrs={"age_at_end": NumericRange("gte", 20), "gender": [8532]}),
                           Criteria("DoseEra", None, attrs={"unit": [8876], "era_length": NumericRange("lte", 60)})],
                          end_strategy=DateOffsetStrategy("EndDate", 0)),
    "group counts 0, nested AT_MOST in ALL": expr(COND, rules=[
        rule("at least 0", cc("DrugExposure", 1, W(-30, 0)), type="AT_LEAST", count=0),
        rule("at most 0 of two", cc("DrugExposure", 8, W(None, 0)), cc("DeviceExposure", 7, W(None, 0)), type="AT_MOST", count=0),
        rule("nested", cc("VisitOccurrence", 6, ALL_TIME), groups=[CriteriaGroup("AT_MOST", 1, criteria_list=[
            cc("Measurement", 4, W(-365, 365)), cc("Observation", 5, W(-365, 365))])])]),
    "end windows on index end, distinct visits": expr(Criteria("VisitOccurrence", 6), rules=[
        rule("condition ending by visit end", cc("ConditionOccurrence", 0, W(-30, 0), end_window=W(None, 0, use_index_end=True, use_event_end=True))),
        rule("2 visits with drugs", cc("DrugExposure", None, ALL_TIME, Occurrence(2, 2, True, "VISIT_ID"))),
        rule("at most 1 drug concept", cc("DrugExposure", None, W(-365, 365), Occurrence(1, 1, True, "DOMAIN_CONCEPT")))],
        end_strategy=DateOffsetStrategy("EndDate", 0)),
    "additional ANY with demographics, qualified last": expr(COND, additional_criteria=CriteriaGroup(
        "ANY", criteria_list=[cc("DrugExposure", 1, W(-90, 90))], demographic_criteria_list=[DemographicCriteria(gender=[8507])]),
        qualified_limit="Last", end_strategy=DateOffsetStrategy("StartDate", 100)),
    "observation period in a rule, demographic dates": expr(COND, rules=[
        rule("a year of observation before", cc("ObservationPeriod", None, W(None, -365))),
        rule("2019 onwards, 30 to 80", demographics=[DemographicCriteria(age=NumericRange("bt", 30, 80),
                                                                          occurrence_start_date=DateRange("gte", "2019-01-01"),
                                                                          occurrence_end_date=DateRange("lt", "2021-01-01"))])]),
    "provider, condition status, gender set": expr(Criteria("ConditionOccurrence", 0, attrs={"provider_specialty": [38004456],
                                                                                            "gender_cs": ConceptSetSelection(14)}),
                                                   rules=[rule("status", cc("ConditionOccurrence", None, W(0, 0), attrs={"condition_status": [32020, 32810]}))]),
    "visit place set, provider set, excluded visit type": expr(Criteria("VisitOccurrence", None, attrs={"place_of_service_cs": ConceptSetSelection(12),
                                                                                                     "visit_type": [32020], "visit_type_exclude": True}),
                                                              end_strategy=DateOffsetStrategy("EndDate", 0)),
    "two censorings, censor window start, pad 7": expr(COND, censoring_criteria=[Criteria("Death"), Criteria("Measurement", 4)],
                                                       censor_window=Period("2019-06-01", None), collapse_settings=CollapseSettings("ERA", 7)),
    "last entry, empty additional, last expression": expr(DRUG, limit="Last", additional_criteria=CriteriaGroup("ALL"), qualified_limit="All",
                                                          expression_limit="Last", end_strategy=DateOffsetStrategy("EndDate", 3)),
    "date adjustment on ends": expr(Criteria("ConditionOccurrence", 0, date_adjustment=DateAdjustment("END_DATE", -1, "END_DATE", 10)),
                                    end_strategy=DateOffsetStrategy("EndDate", 0)),
    "death as entry": expr(Criteria("Death", None), rules=[rule("condition before", cc("ConditionOccurrence", 0, W(None, 0)))]),
    "nested criteria ignoring observation, same visit": expr(COND, rules=[rule("drug at the visit of a condition", cc(
        "DrugExposure", 1, ALL_TIME, restrict_visit=True, nested=CriteriaGroup("ALL", criteria_list=[
            cc("ConditionOccurrence", 0, W(-30, 30), ignore_observation_period=True)])))]),
}

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def cdms(tmp_path_factory):
    out = {}
    for seed in SEEDS:
        path = toy_cdm(tmp_path_factory.mktemp(f"seed{seed}") / "toy.duckdb", **random_rows(seed))
        out[seed] = path
    return out


@pytest.fixture(scope="module")
def circe(cdms):
    if not _venv_ok() and os.environ.get("HB_REQUIRE_CIRCE") != "1":
        pytest.skip("no circepy venv (bash tests/circe/make_venv.sh, or HB_CIRCE_VENV)")
    texts = {name: to_circe(x) for name, x in DEFINITIONS.items()}
    return {seed: compare.circe_results(path, texts) for seed, path in cdms.items()}


def ours(path, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with connect(path) as cdm:
            r = generate_expression(cdm, x)
            return r.to_pandas(), r.attrition


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(DEFINITIONS))
def test_same_as_circe(cdms, circe, seed, name):
    res = circe[seed][name].raise_for_error()
    rows, att = ours(cdms[seed], DEFINITIONS[name])
    compare.assert_same_as_circe(res, rows, att)


def test_definitions_select_someone(cdms, circe):
    "Each definition has qualifying events, and each of its rules holds for some event, on at least one CDM (else it tests little)."
    weak = []
    for name, x in DEFINITIONS.items():
        got = [circe[s][name].attrition for s in SEEDS if circe[s][name].ok]
        if not any(a.records.iloc[0] > 0 for a in got): weak.append((name, "no qualifying events"))
        for k, r in enumerate(x.inclusion_rules):
            if not any(a.rule_records.iloc[k + 1] > 0 for a in got): weak.append((name, r.name))
    assert not weak, weak


# ---- the shared PhenotypeLibrary on GiBleed and MIMIC, against circepy's recorded answers -----------------------------------
SHARED = HERE.parent.parent / "shared" / "data"
LIBRARY = SHARED / "phenotypes" / "ohdsi_phenotype_library" / "cohorts"


def _library_rows(which="gibleed", *, with_events=True):
    """circepy's answers (`tests/circe/library_<which>.csv`) for the definitions it ran; only those with qualifying events
    unless `with_events=False`."""
    import csv
    with open(HERE / "circe" / f"library_{which}.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return [r for r in rows if not with_events or int((r["attrition_records"] or "0").split("|")[0]) > 0]


def _check_library(cdm, row):
    "One shared definition on `cdm`: same rows (digest), persons, records and attrition per step as circepy recorded."
    from healthbench.atlas import read_expression
    x, _ = read_expression(LIBRARY / f"{row['cohort_id']}.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = generate_expression(cdm, x)
    got = r.to_pandas()
    r.drop_stages()
    assert (got.person_id.nunique(), len(got)) == (int(row["persons"]), int(row["records"]))
    assert compare.rows_digest(got) == row["rows_sha256"]
    assert "|".join(map(str, r.attrition.persons)) == row["attrition_persons"]
    assert "|".join(map(str, r.attrition.records)) == row["attrition_records"]


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory):
    if not (SHARED / "omop" / "gibleed_5.3").exists():
        pytest.skip("no shared GiBleed data")
    from healthbench.cdm import import_cdm
    path = tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb"
    import_cdm(SHARED / "omop" / "gibleed_5.3", path, progress=False)
    with connect(path) as cdm:
        yield cdm


@pytest.mark.parametrize("row", _library_rows("gibleed"), ids=lambda r: r["cohort_id"])
def test_library_on_gibleed(gibleed, row):
    _check_library(gibleed, row)


@pytest.fixture(scope="module")
def mimic():
    "Typed MIMIC as circepy read it (`typed_cdm.typed_mimic()`: OMOP types, the spec's missing tables created empty)."
    if not (SHARED / "omop" / "mimic_iv_demo_5.3").exists():
        pytest.skip("no shared MIMIC data")
    from typed_cdm import typed_mimic
    with connect(typed_mimic()) as cdm:
        cdm.backend.raw_sql("SET threads = 1")
        yield cdm


def test_library_mimic_has_no_events():
    """circepy finds no qualifying event on MIMIC for any shared definition (its `concept` table holds only MIMIC's own
    concepts, ids >= 2,000,000,000, so every concept set resolves to nothing: tests/circe/README.md). If a new recording
    finds some, `test_library_on_mimic` checks them like the rest; this test then says the docstrings need updating."""
    rows = _library_rows("mimic", with_events=False)
    assert len(rows) == 542
    assert not [r["cohort_id"] for r in rows if r["attrition_records"].split("|")[0] != "0"]


@pytest.mark.slow
@pytest.mark.parametrize("row", _library_rows("mimic", with_events=False), ids=lambda r: r["cohort_id"])
def test_library_on_mimic(mimic, row):
    """Every definition circepy ran on MIMIC (542; none has a qualifying event there), healthbench too: the same rows
    (none) and the same attrition (zero at every step, one step per rule). What this checks is Circe's concept-set
    resolution on a CDM whose vocabulary lacks the definitions' concepts: a concept named in a set counts only when it is
    in `concept`; 24 definitions enter on criteria with a source-concept set instead of a concept set.
    About 0.2 s a definition (100 s in all on 2 shared cores)."""
    _check_library(mimic, row)


@pytest.fixture(scope="module")
def synthetic():
    """healthbench's synthetic CDM as circepy read it (`typed_cdm.typed_synthetic()`: `healthbench.synth.generate` at the
    size and seed of `tests/circe/library_synthetic.json`, imported, absent OMOP tables created empty), refused if the
    generator no longer makes the tables circepy's answers were recorded on."""
    import json
    from typed_cdm import typed_synthetic
    meta = json.loads((HERE / "circe" / "library_synthetic.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # duckdb 1.5 deprecates an API healthbench.synth's checksums use
        path = typed_synthetic(n_persons=meta["n_persons"], seed=meta["seed"])
    now = json.loads(Path(f"{path}.json").read_text())["table_checksums"]
    assert now == meta["table_checksums"], ("healthbench.synth makes other tables than circepy's answers were recorded on: "
                                            "rerun `python tests/circe/run_library.py --cdm synthetic`")
    with connect(path) as cdm:
        cdm.backend.raw_sql("SET threads = 1")
        yield cdm


@pytest.mark.parametrize("row", _library_rows("synthetic"), ids=lambda r: r["cohort_id"])
def test_library_on_synthetic(synthetic, row):
    """Every definition with qualifying events on the synthetic CDM: 27 of 542 (its vocabulary has 66 concepts), all with
    persons, 5 with inclusion rules; about 10 s in all, the CDM's build (5,000 persons) included."""
    _check_library(synthetic, row)


CIRCEPY_FAILS = {"344": "VisitDetail criteria: circepy 0.3.0's template selects vd.* outside its subquery",
                  "1072": "Specimen criteria: circepy 0.3.0 reads specimen.visit_occurrence_id, absent from OMOP",
                  "1224": "Specimen criteria (as 1072)", "1226": "Specimen criteria (as 1072)",
                  "1228": "Specimen criteria (as 1072)"}


def test_library_circepy_failures_are_known():
    "The definitions circepy could not run are the same 5 on every CDM, each a circepy 0.3.0 bug (tests/circe/README.md)."
    import csv
    for which in ("gibleed", "mimic", "synthetic"):
        with open(HERE / "circe" / f"library_{which}.csv") as f:
            failed = {r["cohort_id"]: r["error_type"] for r in csv.DictReader(f) if r["status"] != "ok"}
        assert failed == dict.fromkeys(CIRCEPY_FAILS, "BinderException"), which


@pytest.mark.parametrize("which", ["gibleed", "mimic", "synthetic"])
@pytest.mark.parametrize("cohort_id", list(CIRCEPY_FAILS))
def test_library_circepy_failures_have_no_events(request, which, cohort_id):
    """The one exception to "same as circepy": the 5 definitions circepy 0.3.0 cannot run on any database (its VisitDetail
    and Specimen templates, `CIRCEPY_FAILS`) have no circepy answer to compare with. None of them may have a qualifying
    event in healthbench either, so that no definition with events on these CDMs escapes the comparison (with a
    corrected specimen table circepy runs the four Specimen ones on GiBleed and finds no one: tests/circe/README.md)."""
    from healthbench.atlas import read_expression
    cdm = request.getfixturevalue(which)
    x, _ = read_expression(LIBRARY / f"{cohort_id}.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = generate_expression(cdm, x)
    assert r.attrition.records.iloc[0] == 0 and len(r.to_pandas()) == 0, CIRCEPY_FAILS[cohort_id]
    r.drop_stages()


def test_every_attribute_runs(cdms):
    """Every attribute of every kind in KINDS (one inclusion rule each, as a correlated criteria, and all of a kind's
    attributes on its primary criteria) compiles and runs; a column the CDM lacks (a specimen's source concept) matches
    nothing rather than failing."""
    from healthbench.expression import KINDS, ConceptSetSelection, Period
    value = {"concepts": [8507, 32020], "cs": ConceptSetSelection(0, True), "codeset": 0, "numeric": NumericRange("gte", 1),
             "date": DateRange("bt", "2018-01-01", "2020-12-31"), "text": TextFilter("contains", "a"),
             "period": Period("2019-01-01", "2019-03-31"), "flag": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with connect(cdms[1]) as cdm:
            for kind, k in KINDS.items():
                attrs = {name: value[ak] for name, (ak, col) in k.attrs.items()}
                rules = [rule(name, cc(kind, None, ALL_TIME, Occurrence(1, 0, True), attrs={name: v})) for name, v in attrs.items()]
                x = expr([Criteria(kind, 0 if k.concept else None, first=True, attrs=attrs), Criteria("ObservationPeriod")], rules=rules)
                r = generate_expression(cdm, x)
                assert len(r.attrition) == len(attrs) + 1, kind
                r.to_pandas()
