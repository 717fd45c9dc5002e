"""Circe semantics, three ways: hand-worked spec cases, the reference evaluator against circepy, the engine against the
reference (ehrQL's spec-and-generative pattern; issue 14).

- **Spec** (`test_spec_*`): one toy CDM small enough to work out by hand and a definition per construct (concept sets,
  every circepy-runnable criteria kind, attributes, date adjustment, windows, occurrence, groups, demographics,
  limits, inclusion rules with ATLAS attrition, end strategies, censoring, era pad, censor window). The expected rows
  are worked out by hand in the comments; the reference must give them, and so must circepy (one oracle process for
  all cases) and the engine.
- **circepy's bugs** (`test_circepy_bugs`): each construct circepy 0.3.0 renders differently from Circe, shown on the
  spec CDM: circepy's answer (or error) next to the hand-worked one. The generator leaves these constructs out of the
  expressions it compares with circepy (`circe_gen.strategies.CIRCEPY_UNSAFE`). When circepy fixes one, that test
  fails: move the construct back into the generated comparisons.
- **Generative** (`test_reference_equals_circepy`): hypothesis draws random small CDMs and random Circe expressions
  (nested correlated criteria, groups, every end strategy...), writes them as Circe JSON (`circe_gen.to_circe`) and
  asserts that the reference equals circepy row for row and in ATLAS attrition. Each example is one CDM and
  `HB_CIRCE_DEFINITIONS` (default 4) definitions run in one circepy process; `HB_CIRCE_EXAMPLES` (default 2) examples.
  circepy's SQL translation costs seconds per definition, so shrinking is off: a failure prints the definition's JSON.
  Definitions whose answer depends on an order Circe leaves undetermined (a First/Last limit between tied events)
  are not compared (`ReferenceResult.ambiguous`).
- **Engine** (`test_engine_*`): `healthbench.engine` (chapter 05c) against the reference on the spec cases and on
  `HB_ENGINE_EXAMPLES` (default 25) random CDMs and expressions over every kind. They are skipped only while
  `healthbench/engine.py` does not exist; once it does (or with `HB_REQUIRE_ENGINE=1`) they run, and an engine that
  cannot be imported is a failure, not a skip.

The circepy venv is `$HB_CIRCE_VENV` or `.circe-venv` (built by `tests/circe/make_venv.sh` when missing).
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from healthbench.expression import (CohortExpression, CollapseSettings, ConceptSetSelection,  # noqa: E402
                                    CorrelatedCriteria, Criteria, CriteriaGroup, CustomEraStrategy, DateAdjustment,
                                    DateOffsetStrategy, DemographicCriteria, InclusionRule, NumericRange,
                                    ObservationWindow, Occurrence, Period, PrimaryCriteria, TextFilter, Window,
                                    WindowBound)

from circe_gen import strategies as gen  # noqa: E402
from circe_gen.cdm import write_duckdb  # noqa: E402
from circe_gen.to_circe import to_circe_json  # noqa: E402
from healthbench.concepts import ConceptSet, ConceptSetItem  # noqa: E402
from reference_circe import evaluate  # noqa: E402
from tests.circe.compare import (ROW_COLUMNS, attrition_side_by_side, circe_results, diff_cohorts,  # noqa: E402
                                 normalise_rows)

D = dt.date.fromisoformat
CIRCE_EXAMPLES = int(os.environ.get("HB_CIRCE_EXAMPLES", "2"))
CIRCE_DEFINITIONS = int(os.environ.get("HB_CIRCE_DEFINITIONS", "4"))
ENGINE_EXAMPLES = int(os.environ.get("HB_ENGINE_EXAMPLES", "25"))


# ================================================================================================= the spec CDM
# Vocabulary (circe_gen.strategies.vocabulary_tables): 1 is the ancestor of 2, 3 and 4, 2 of 4; 3 is not in `concept`,
# 4 is invalid; 5 > 6; 7 > 8; source concept 20 'Maps to' 2, 21 to 6.
#
# person  sex     born  observation periods
#   1     male    1970  2019-01-01 .. 2020-12-31
#   2     female  1985  2019-01-01 .. 2019-12-31, 2020-03-01 .. 2020-12-31
#   3     male    2000  2019-06-01 .. 2020-06-30
#   4     female  1960  2019-01-01 .. 2021-12-31     (dies 2021-06-01)
def spec_tables() -> dict[str, pd.DataFrame]:
    t = gen.vocabulary_tables()
    t["person"] = pd.DataFrame({"person_id": [1, 2, 3, 4], "gender_concept_id": [8507, 8532, 8507, 8532],
                                "year_of_birth": [1970, 1985, 2000, 1960], "race_concept_id": 0,
                                "ethnicity_concept_id": 0})
    t["observation_period"] = pd.DataFrame(
        [(1, 1, "2019-01-01", "2020-12-31"), (2, 2, "2019-01-01", "2019-12-31"), (3, 2, "2020-03-01", "2020-12-31"),
         (4, 3, "2019-06-01", "2020-06-30"), (5, 4, "2019-01-01", "2021-12-31")],
        columns=["observation_period_id", "person_id", "observation_period_start_date",
                 "observation_period_end_date"]).assign(period_type_concept_id=44814724)
    t["visit_occurrence"] = pd.DataFrame(
        [(1, 1, 9201, "2019-03-01", "2019-03-05", 32020, 1), (2, 2, 9202, "2020-04-01", "2020-04-03", 32817, None)],
        columns=["visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date", "visit_end_date",
                 "visit_type_concept_id", "care_site_id"])
    t["condition_occurrence"] = pd.DataFrame([
        # id   person concept start         end           type   source visit stop_reason
        (101, 1, 2, "2019-03-01", None, 32020, 0, 1, "abc"),
        (102, 1, 4, "2019-03-10", "2019-03-20", 32817, 0, None, None),
        (103, 1, 6, "2020-01-15", "2020-01-20", 32020, 0, None, None),
        (104, 2, 2, "2019-02-01", "2019-02-05", 32020, 20, None, None),
        (105, 2, 2, "2020-04-01", None, 32020, 0, 2, "xab"),
        (106, 3, 1, "2019-05-01", None, 32020, 0, None, None),       # before person 3's observation period
        (107, 3, 1, "2019-07-01", "2019-07-03", 32817, 0, None, None),
        (108, 4, 8, "2019-02-01", None, 32020, 0, None, None),
        (109, 4, 2, "2020-02-01", None, 32020, 0, None, None),
    ], columns=["condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
                "condition_end_date", "condition_type_concept_id", "condition_source_concept_id",
                "visit_occurrence_id", "stop_reason"])
    t["drug_exposure"] = pd.DataFrame([
        # id   person concept start         end           days_supply quantity visit
        (201, 1, 5, "2019-03-05", None, 10, 1.5, 1),                  # ends 2019-03-15 (days supply)
        (202, 1, 5, "2019-03-20", None, None, 2.0, None),             # ends 2019-03-21 (one day)
        (203, 1, 6, "2019-04-15", "2019-04-30", None, None, None),
        (204, 2, 6, "2019-02-03", "2019-02-10", 7, None, None),
        (205, 4, 5, "2020-02-10", None, 30, None, None),              # ends 2020-03-11
    ], columns=["drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                "drug_exposure_end_date", "days_supply", "quantity", "visit_occurrence_id"]).assign(
        drug_type_concept_id=38000177)
    t["measurement"] = pd.DataFrame([
        (301, 1, 7, "2019-03-01", 140.0, None, 4.0, 130.0, 8582),      # above its range: abnormal
        (302, 2, 7, "2019-02-01", 5.5, None, 4.0, 10.0, 8582),
        (303, 4, 8, "2020-02-01", None, 4155142, None, None, None),     # abnormal by its value concept
    ], columns=["measurement_id", "person_id", "measurement_concept_id", "measurement_date", "value_as_number",
                "value_as_concept_id", "range_low", "range_high", "unit_concept_id"]).assign(
        measurement_type_concept_id=32817)
    t["observation"] = pd.DataFrame([(401, 3, 9, "2019-07-02", "xyz")], columns=[
        "observation_id", "person_id", "observation_concept_id", "observation_date", "value_as_string"]).assign(
        observation_type_concept_id=32817)
    t["procedure_occurrence"] = pd.DataFrame([(501, 1, 9, "2019-03-02", 2)], columns=[
        "procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date", "quantity"]).assign(
        procedure_type_concept_id=32817)
    t["device_exposure"] = pd.DataFrame([(601, 2, 9, "2019-02-02", None), (602, 2, 9, "2019-06-01", None)], columns=[
        "device_exposure_id", "person_id", "device_concept_id", "device_exposure_start_date",
        "device_exposure_end_date"]).assign(device_type_concept_id=32817)
    t["death"] = pd.DataFrame([(4, "2021-06-01", 32817)], columns=["person_id", "death_date", "death_type_concept_id"])
    t["condition_era"] = pd.DataFrame([(701, 1, 2, "2019-03-01", "2019-03-20", 2)], columns=[
        "condition_era_id", "person_id", "condition_concept_id", "condition_era_start_date", "condition_era_end_date",
        "condition_occurrence_count"])
    t["drug_era"] = pd.DataFrame([(801, 1, 5, "2019-03-05", "2019-03-21", 2, 5)], columns=[
        "drug_era_id", "person_id", "drug_concept_id", "drug_era_start_date", "drug_era_end_date",
        "drug_exposure_count", "gap_days"])
    t["dose_era"] = pd.DataFrame([(901, 4, 5, 8582, 1.0, "2020-02-10", "2020-03-11")], columns=[
        "dose_era_id", "person_id", "drug_concept_id", "unit_concept_id", "dose_value", "dose_era_start_date",
        "dose_era_end_date"])
    t["specimen"] = pd.DataFrame([(1001, 1, 9, "2019-05-05", 32817)], columns=[
        "specimen_id", "person_id", "specimen_concept_id", "specimen_date", "specimen_type_concept_id"])
    t["visit_detail"] = pd.DataFrame([(1101, 1, 9201, "2019-03-01", "2019-03-02", 32817, 1)], columns=[
        "visit_detail_id", "person_id", "visit_detail_concept_id", "visit_detail_start_date",
        "visit_detail_end_date", "visit_detail_type_concept_id", "visit_occurrence_id"])
    t["payer_plan_period"] = pd.DataFrame([(1201, 2, "2019-01-01", "2019-06-30", 1)], columns=[
        "payer_plan_period_id", "person_id", "payer_plan_period_start_date", "payer_plan_period_end_date",
        "payer_concept_id"])
    for name, df in t.items():
        for c in df.columns:
            if c.endswith("_date") and df[c].dtype == object:
                df[c] = pd.to_datetime(df[c]).dt.date
    return t


def cset(cid: int, *items) -> ConceptSet:
    "Concept set `cid` of items: a concept id, or (concept id, descendants, excluded, mapped)."
    def item(concept_id, descendants=False, excluded=False, mapped=False):
        return ConceptSetItem(concept_id, is_excluded=excluded, include_descendants=descendants, include_mapped=mapped)
    return ConceptSet(f"set {cid}", items=[item(*i) if isinstance(i, tuple) else item(i) for i in items], circe_id=cid, on_unknown="warn")


# concept sets, resolved by hand against the vocabulary above
CS_1 = cset(1, (1, True))                      # {1, 2}: 3 is not in concept, 4 is invalid
CS_2 = cset(2, (5, True))                      # {5, 6}
CS_3 = cset(3, (7, True), (8, False, True))    # {7, 8} minus {8} = {7}
CS_4 = cset(4, 4, (2, False, False, True))     # {4} (named: kept though invalid), {2}, and 20 mapped to 2
CS_5 = cset(5, 9)                              # {9}
CS_6 = cset(6, 9201)                           # {9201}
SETS = [CS_1, CS_2, CS_3, CS_4, CS_5, CS_6]


def expr(*criteria, **kw) -> CohortExpression:
    pc = PrimaryCriteria(list(criteria), kw.pop("window", ObservationWindow()), kw.pop("limit", "All"))
    kw.setdefault("expression_limit", "All")
    kw.setdefault("qualified_limit", "All")
    return CohortExpression(SETS, pc, **kw)


def cond(codeset=1, **kw) -> Criteria:
    return Criteria("ConditionOccurrence", codeset, **kw)


def within(lo: int | None, hi: int | None, **kw) -> Window:
    "Days lo..hi from the index (negative: before); None: unbounded."
    return Window(WindowBound(None if lo is None else abs(lo), -1 if lo is None or lo < 0 else 1),
                  WindowBound(None if hi is None else abs(hi), 1 if hi is None or hi >= 0 else -1), **kw)


def rule(name: str, *members, type="ALL", count=None, demographics=(), groups=()) -> InclusionRule:
    return InclusionRule(name, CriteriaGroup(type, count, list(members), list(demographics), list(groups)))


def at_least(n, criteria, window, **kw) -> CorrelatedCriteria:
    return CorrelatedCriteria(criteria, window, occurrence=Occurrence(2, n, kw.pop("distinct", False),
                                                                      kw.pop("column", None)), **kw)


def rows(*triples) -> pd.DataFrame:
    return normalise_rows(pd.DataFrame([(p, D(s), D(e)) for p, s, e in triples], columns=ROW_COLUMNS))


# the cohort of case "conditions": every condition of {1, 2} in observation, to its observation period's end
ALL_CONDITIONS = [(1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31"), (2, "2020-04-01", "2020-12-31"),
                  (3, "2019-07-01", "2020-06-30"), (4, "2020-02-01", "2021-12-31")]

# name -> (expression, expected rows, expected (persons, records) per attrition step or None, runs on circepy)
SPEC = {
    # Conditions 101 (2), 104 and 105 (2), 107 (1), 109 (2); 106 is outside person 3's observation period and 102 (4,
    # invalid) is not in set 1. No end strategy: each ends at its observation period's end.
    "conditions": (expr(cond()), rows(*ALL_CONDITIONS), [(4, 5)], True),
    # Set 4 = {2, 4, 20}: 102 (concept 4) joins person 1's 101; both end 2020-12-31 and collapse into one era.
    "named invalid concept and mapped": (expr(cond(4)), rows(
        (1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31"), (2, "2020-04-01", "2020-12-31"),
        (4, "2020-02-01", "2021-12-31")), [(3, 5)], True),
    # ConditionSourceConcept: concept in {1, 2} and source concept in {2, 4, 20}: only 104 (source 20).
    "source concept": (expr(cond(1, attrs={"condition_source_concept": 4})), rows((2, "2019-02-01", "2019-12-31")),
                       [(1, 1)], True),
    # 30 days of prior observation (op start + 30 <= start): all pass (person 3's 2019-07-01 = 2019-06-01 + 30).
    # First per person: 101, 104, 107, 109. End: the end date + 7 (101 ends 03-02, 104 02-05, 107 07-03, 109 02-02).
    "first, prior 30, end date + 7": (expr(cond(), window=ObservationWindow(30, 0), limit="First",
                                           end_strategy=DateOffsetStrategy("EndDate", 7)), rows(
        (1, "2019-03-01", "2019-03-09"), (2, "2019-02-01", "2019-02-12"), (3, "2019-07-01", "2019-07-10"),
        (4, "2020-02-01", "2020-02-09")), [(4, 4)], True),
    # 60 days of prior observation: only 109 (person 4, observed from 2019-01-01) has them.
    "prior 60": (expr(cond(), window=ObservationWindow(60, 0)), rows((4, "2020-02-01", "2021-12-31")), [(1, 1)],
                 True),
    # Last per person with 200 days after; start + 400 clipped at the period's end: 2020-04-04; person 2's last is
    # 105, 2021-05-06 -> 2020-12-31; person 3: 2020-08-04 -> 2020-06-30; person 4: 2021-03-07.
    "last, post 200, start + 400 clipped": (expr(cond(), window=ObservationWindow(0, 200), limit="Last",
                                                 end_strategy=DateOffsetStrategy("StartDate", 400)), rows(
        (1, "2019-03-01", "2020-04-04"), (2, "2020-04-01", "2020-12-31"), (3, "2019-07-01", "2020-06-30"),
        (4, "2020-02-01", "2021-03-07")), [(4, 4)], True),
    # Criteria attributes: type not 32817 and stop reason starting "ab": 101 only (105's is "xab").
    "type exclude, stop reason": (expr(cond(attrs={"condition_type": [32817], "condition_type_exclude": True,
                                                   "stop_reason": TextFilter("startsWith", "ab")})),
                                  rows((1, "2019-03-01", "2020-12-31")), [(1, 1)], True),
    # First within the criteria: the first condition of {1, 2} per person is taken before the type filter, so person
    # 3's first (106, outside observation) hides 107, and person 1's 101 has type 32020 and passes.
    "criteria first before attributes": (expr(cond(first=True, attrs={"condition_type": [32020]})), rows(
        (1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31"), (4, "2020-02-01", "2021-12-31")),
        [(3, 3)], True),
    # Measurements of {7}: abnormal is 301 (140 > 130); value > 5.25 is 301 and 302 (5.5).
    "measurement abnormal": (expr(Criteria("Measurement", 3, attrs={"abnormal": True})),
                             rows((1, "2019-03-01", "2020-12-31")), [(1, 1)], False),
    "measurement value decimal": (expr(Criteria("Measurement", 3, attrs={"value_as_number": NumericRange("gt", 5.25)})),
                                  rows((1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31")), [(2, 2)],
                                  True),
    # Age at the event: YEAR(start) - year of birth >= 40: person 1 (49) and 4 (60); Circe truncates 39.9 to 39.
    "criteria age": (expr(cond(attrs={"age": NumericRange("gte", 40)})),
                     rows((1, "2019-03-01", "2020-12-31"), (4, "2020-02-01", "2021-12-31")), [(2, 2)], True),
    # Visit type of the event's visit: 101 (visit 1, 9201); events without a visit fail.
    "visit type": (expr(cond(attrs={"visit_type": [9201]})), rows((1, "2019-03-01", "2020-12-31")), [(1, 1)], True),
    # Date adjustment: start + 1 day; ends as stored (101: 03-02, 104: 02-05, 105: 04-02, 107: 07-03, 109: 02-02).
    "date adjustment": (expr(cond(date_adjustment=DateAdjustment("START_DATE", 1, "END_DATE", 0)),
                             end_strategy=DateOffsetStrategy("EndDate", 0)), rows(
        (1, "2019-03-02", "2019-03-02"), (2, "2019-02-02", "2019-02-05"), (2, "2020-04-02", "2020-04-02"),
        (3, "2019-07-02", "2019-07-03"), (4, "2020-02-02", "2020-02-02")), [(4, 5)], True),
    # Every kind circepy can run, as a primary criteria.
    "procedure": (expr(Criteria("ProcedureOccurrence", 5, attrs={"quantity": NumericRange("eq", 2)})),
                  rows((1, "2019-03-02", "2020-12-31")), [(1, 1)], True),
    "observation": (expr(Criteria("Observation", 5, attrs={"value_as_string": TextFilter("contains", "y")})),
                    rows((3, "2019-07-02", "2020-06-30")), [(1, 1)], True),
    # 601 and 602 both end 2019-12-31 and collapse.
    "device": (expr(Criteria("DeviceExposure", 5)), rows((2, "2019-02-02", "2019-12-31")), [(1, 2)], True),
    "visit": (expr(Criteria("VisitOccurrence", 6, attrs={"visit_length": NumericRange("eq", 4)})),
              rows((1, "2019-03-01", "2020-12-31")), [(1, 1)], True),
    "death": (expr(Criteria("Death")), rows((4, "2021-06-01", "2021-12-31")), [(1, 1)], True),
    "first observation period": (expr(Criteria("ObservationPeriod", first=True)), rows(
        (1, "2019-01-01", "2020-12-31"), (2, "2019-01-01", "2019-12-31"), (3, "2019-06-01", "2020-06-30"),
        (4, "2019-01-01", "2021-12-31")), [(4, 4)], True),
    "condition era": (expr(Criteria("ConditionEra", 1, attrs={"occurrence_count": NumericRange("gte", 2)})),
                      rows((1, "2019-03-01", "2020-12-31")), [(1, 1)], True),
    "drug era": (expr(Criteria("DrugEra", 2, attrs={"era_length": NumericRange("eq", 16)})),
                 rows((1, "2019-03-05", "2020-12-31")), [(1, 1)], True),
    "dose era": (expr(Criteria("DoseEra", 2, attrs={"dose_value": NumericRange("bt", 0.5, 1.5)})),
                 rows((4, "2020-02-10", "2021-12-31")), [(1, 1)], True),
    # circepy cannot run these kinds (test_circepy_bugs); the reference's answer is Circe's.
    "specimen": (expr(Criteria("Specimen", 5)), rows((1, "2019-05-05", "2020-12-31")), [(1, 1)], False),
    "visit detail": (expr(Criteria("VisitDetail", 6)), rows((1, "2019-03-01", "2020-12-31")), [(1, 1)], False),
    "payer plan period": (expr(Criteria("PayerPlanPeriod")), rows((2, "2019-01-01", "2019-12-31")), [(1, 1)], False),
    # Correlated criteria. Exactly 2 drugs of {5, 6} 0..30 days after: person 1 (201 on 03-05, 202 on 03-20).
    "exactly 2 drugs after": (expr(cond(), inclusion_rules=[rule("two drugs", CorrelatedCriteria(
        Criteria("DrugExposure", 2), within(0, 30), occurrence=Occurrence(0, 2)))]),
        rows((1, "2019-03-01", "2020-12-31")), [(4, 5), (1, 1)], True),
    # No condition of {1, 2} ever before, ignoring observation periods: 105 sees 104, 107 sees 106.
    "none before, ignoring observation": (expr(cond(), inclusion_rules=[rule("none before", CorrelatedCriteria(
        cond(), within(None, -1), ignore_observation_period=True, occurrence=Occurrence(1, 0)))]), rows(
        (1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31"), (4, "2020-02-01", "2021-12-31")),
        [(4, 5), (3, 3)], True),
    # ... and within observation: 104 is in person 2's first period, 106 outside person 3's: nothing seen.
    "none before, in observation": (expr(cond(), inclusion_rules=[rule("none before", CorrelatedCriteria(
        cond(), within(None, -1), occurrence=Occurrence(1, 0)))]), rows(*ALL_CONDITIONS), [(4, 5), (4, 5)], True),
    # A drug in the index event's visit: 101 (visit 1) and 201 (visit 1).
    "same visit": (expr(cond(), inclusion_rules=[rule("same visit", at_least(1, Criteria("DrugExposure", 2),
                                                                             within(None, None), restrict_visit=True))]),
                   rows((1, "2019-03-01", "2020-12-31")), [(4, 5), (1, 1)], True),
    # Two distinct drug concepts within a year: person 1 (5 and 6); person 2 has one (6), person 4 one (5).
    "distinct concepts": (expr(cond(), inclusion_rules=[rule("2 concepts", at_least(
        2, Criteria("DrugExposure", 2), within(-365, 365), distinct=True, column="DOMAIN_CONCEPT"))]),
        rows((1, "2019-03-01", "2020-12-31")), [(4, 5), (1, 1)], True),
    # Windows on ends: a condition of {1, 2} whose end is 0..30 days after the index's end (event end, index end):
    # 101 ends 03-02, 102 is not in the set; 104 ends 02-05; each sees itself only ... so all pass, but with the
    # window on the index's start and the event's end 5..30 days after: 104 (ends 02-05, 4 days) fails, 107 (2
    # days) fails, 101 (1 day) fails, 105 and 109 (1 day) fail.
    "index end, event end": (expr(cond(), inclusion_rules=[rule("end after", at_least(
        1, cond(), within(0, 30, use_index_end=True, use_event_end=True)))]), rows(*ALL_CONDITIONS),
        [(4, 5), (4, 5)], True),
    "event end 5..30 days after start": (expr(cond(), inclusion_rules=[rule("end after", at_least(
        1, cond(), within(5, 30, use_event_end=True)))]), rows(), [(4, 5), (0, 0)], True),
    # ATLAS attrition with two rules: rule 0 "a drug of {5, 6} 0..30 days after" holds for 101, 104, 109; rule 1
    # "female" for 104, 105, 109. Events: 5 -> bit 0: 3 -> both: 2 (104, 109). Persons by best event: person 1's
    # best is 101 (rule 0), person 2's 104 (both), person 3's 107 (none), person 4's 109 (both): 4 -> 3 -> 2.
    "two rules": (expr(cond(), inclusion_rules=[
        rule("drug after", at_least(1, Criteria("DrugExposure", 2), within(0, 30))),
        rule("female", demographics=[DemographicCriteria(gender=[8532])])]),
        rows((2, "2019-02-01", "2019-12-31"), (4, "2020-02-01", "2021-12-31")), [(4, 5), (3, 3), (2, 2)], True),
    # Groups: AT_LEAST 2 of {drug after, female, ANY(a measurement of {7} on the day, a death ever)}: 101 (drug,
    # measurement), 104 (drug, female, measurement), 105 (female only), 107 (none), 109 (drug, female, death).
    "nested groups": (expr(cond(), inclusion_rules=[rule(
        "two of three", at_least(1, Criteria("DrugExposure", 2), within(0, 30)), type="AT_LEAST", count=2,
        demographics=[DemographicCriteria(gender=[8532])],
        groups=[CriteriaGroup("ANY", criteria_list=[
            at_least(1, Criteria("Measurement", 3), within(0, 0)),
            at_least(1, Criteria("Death"), within(None, None), ignore_observation_period=True)])])]), rows(
        (1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31"), (4, "2020-02-01", "2021-12-31")),
        [(4, 5), (3, 3)], True),
    # AT_MOST 0 of {a drug 0..30 days after}: those without one (105, 107).
    "at most 0": (expr(cond(), inclusion_rules=[rule("no drug after", at_least(
        1, Criteria("DrugExposure", 2), within(0, 30)), type="AT_MOST", count=0)]),
        rows((2, "2020-04-01", "2020-12-31"), (3, "2019-07-01", "2020-06-30")), [(4, 5), (2, 2)], True),
    # Additional criteria: a measurement of {7} on the index day (101, 104), then the qualified limit (Last, one per
    # person: the same two).
    "additional criteria": (expr(cond(), additional_criteria=CriteriaGroup("ALL", criteria_list=[
        at_least(1, Criteria("Measurement", 3), within(0, 0))]), qualified_limit="Last"),
        rows((1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31")), [(2, 2)], True),
    # Demographic age at the index >= 40 as additional criteria: persons 1 and 4.
    "demographic age": (expr(cond(), additional_criteria=CriteriaGroup("ALL", demographic_criteria_list=[
        DemographicCriteria(age=NumericRange("gte", 40))])),
        rows((1, "2019-03-01", "2020-12-31"), (4, "2020-02-01", "2021-12-31")), [(2, 2)], True),
    # Expression limit First: one row per person (person 2's 104).
    "expression limit first": (expr(cond(), expression_limit="First"), rows(
        (1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31"), (3, "2019-07-01", "2020-06-30"),
        (4, "2020-02-01", "2021-12-31")), [(4, 5)], True),
    # Custom drug era on {5, 6}, gap 0: person 1's exposures make eras 03-05..03-15, 03-20..03-21, 04-15..04-30;
    # person 2's 02-03..02-10, person 4's 2020-02-10..03-11 (30 days supply). Each drug event ends with its era.
    "drug era end, gap 0": (expr(Criteria("DrugExposure", 2), end_strategy=CustomEraStrategy(2, 0, 0)), rows(
        (1, "2019-03-05", "2019-03-15"), (1, "2019-03-20", "2019-03-21"), (1, "2019-04-15", "2019-04-30"),
        (2, "2019-02-03", "2019-02-10"), (4, "2020-02-10", "2020-03-11")), [(3, 5)], True),
    # Gap 10: 03-05..03-25 and 03-20..03-31 merge (era ends 03-31 - 10 = 03-21), 04-15..05-10 -> 04-30. Rows
    # 03-05..03-21 and 03-20..03-21 collapse.
    "drug era end, gap 10": (expr(Criteria("DrugExposure", 2), end_strategy=CustomEraStrategy(2, 10, 0)), rows(
        (1, "2019-03-05", "2019-03-21"), (1, "2019-04-15", "2019-04-30"), (2, "2019-02-03", "2019-02-10"),
        (4, "2020-02-10", "2020-03-11")), [(3, 5)], True),
    # Days supply override 3 and offset 2: every exposure lasts 3 days, then + 2: 03-05..03-10, 03-20..03-25,
    # 04-15..04-20; 02-03..02-08; 2020-02-10..02-15.
    "drug era end, override 3, offset 2": (expr(Criteria("DrugExposure", 2), end_strategy=CustomEraStrategy(2, 0, 2, 3)),
                                           rows((1, "2019-03-05", "2019-03-10"), (1, "2019-03-20", "2019-03-25"),
                                                (1, "2019-04-15", "2019-04-20"), (2, "2019-02-03", "2019-02-08"),
                                                (4, "2020-02-10", "2020-02-15")), [(3, 5)], True),
    # Censoring: the first measurement of {7} on or after the start ends the row (101 and 104 on their own day).
    "censoring": (expr(cond(), censoring_criteria=[Criteria("Measurement", 3)]), rows(
        (1, "2019-03-01", "2019-03-01"), (2, "2019-02-01", "2019-02-01"), (2, "2020-04-01", "2020-12-31"),
        (3, "2019-07-01", "2020-06-30"), (4, "2020-02-01", "2021-12-31")), [(4, 5)], True),
    # Era pad 5: drug rows 03-05..03-15 and 03-20..03-21 (ends as stored) merge (03-15 + 5 reaches 03-20).
    "era pad 5": (expr(Criteria("DrugExposure", 2), end_strategy=DateOffsetStrategy("EndDate", 0),
                       collapse_settings=CollapseSettings("ERA", 5)), rows(
        (1, "2019-03-05", "2019-03-21"), (1, "2019-04-15", "2019-04-30"), (2, "2019-02-03", "2019-02-10"),
        (4, "2020-02-10", "2020-03-11")), [(3, 5)], True),
    # Censor window 2019-06-01 .. 2020-06-30 on "conditions".
    "censor window": (expr(cond(), censor_window=Period("2019-06-01", "2020-06-30")), rows(
        (1, "2019-06-01", "2020-06-30"), (2, "2019-06-01", "2019-12-31"), (2, "2020-04-01", "2020-06-30"),
        (3, "2019-07-01", "2020-06-30"), (4, "2020-02-01", "2020-06-30")), [(4, 5)], True),
    # A criteria's own correlated criteria: conditions with a drug of {5, 6} 0..30 days after them (101, 104, 109),
    # as the drug's nested requirement of a primary drug criteria: drugs with a condition 0..10 days before: 201
    # (101 on 03-01), 204 (104 on 02-01), 205 (109 on 2020-02-01 is 9 days before).
    "nested correlated criteria": (expr(Criteria("DrugExposure", 2, correlated_criteria=CriteriaGroup(
        "ALL", criteria_list=[at_least(1, cond(), within(-10, 0))]))), rows(
        (1, "2019-03-05", "2020-12-31"), (2, "2019-02-03", "2019-12-31"), (4, "2020-02-10", "2021-12-31")),
        [(3, 3)], True),
}


def _attrition_pairs(att: pd.DataFrame) -> list[tuple[int, int]]:
    return [(int(p), int(r)) for p, r in zip(att["persons"], att["records"])]


@pytest.mark.parametrize("name", list(SPEC))
def test_spec_reference(name):
    x, expected, attrition, _ = SPEC[name]
    got = evaluate(x, spec_tables())
    assert not got.ambiguous, got.ambiguous
    d = diff_cohorts(expected, got.rows, names=("hand", "reference"))
    assert d.equal, d.report(expected, normalise_rows(got.rows))
    assert _attrition_pairs(got.attrition) == attrition


@pytest.fixture(scope="module")
def spec_cdm(tmp_path_factory) -> Path:
    return write_duckdb(spec_tables(), tmp_path_factory.mktemp("circe-spec") / "spec.duckdb")


def test_spec_circepy(spec_cdm):
    "circepy gives the hand-worked answer of every spec case it can run (one oracle process)."
    runnable = {name: to_circe_json(case[0]) for name, case in SPEC.items() if case[3]}
    results = circe_results(spec_cdm, runnable)
    failures = []
    for name, res in results.items():
        _, expected, attrition, _ = SPEC[name]
        if not res.ok:
            failures.append(f"{name}: circepy failed: {res.raw['error']}")
            continue
        d = diff_cohorts(expected, res.rows, names=("hand", "circepy"))
        if not d.equal:
            failures.append(f"{name}:\n{d.report(expected, res.rows)}")
        if _attrition_pairs(res.attrition) != attrition:
            failures.append(f"{name}: attrition {_attrition_pairs(res.attrition)} != {attrition}")
    assert not failures, "\n".join(failures)


# ================================================================================================ circepy's bugs
# name -> (expression, the hand-worked (Circe) rows, what circepy 0.3.0 does: rows, or the start of its error)
CIRCEPY_BUGS = {
    # Specimen's template reads s.visit_occurrence_id, which OMOP's SPECIMEN has in neither v5.3 nor v5.4.
    "Specimen criteria fail": (SPEC["specimen"][0], SPEC["specimen"][1], "Binder Error"),
    # VisitDetail's template selects vd.* columns outside the subquery aliased C.
    "VisitDetail criteria fail": (SPEC["visit detail"][0], SPEC["visit detail"][1], "Binder Error"),
    # PayerPlanPeriod's template writes WHERE before its where clause, which starts with WHERE.
    "PayerPlanPeriod criteria fail": (SPEC["payer plan period"][0], SPEC["payer plan period"][1], "Parser Error"),
    # DrugExposure.DoseUnit selects de.dose_unit_concept_id outside the subquery aliased de.
    "DrugExposure.DoseUnit fails": (expr(Criteria("DrugExposure", 2, attrs={"dose_unit": [8582]})), rows(),
                                    "Binder Error"),
    # Occurrence.IsDistinct on DOMAIN_CONCEPT of Measurement/Observation selects a column the builder does not add.
    "distinct measurement concepts fail": (expr(cond(), inclusion_rules=[rule("m", at_least(
        1, Criteria("Measurement", 3), within(0, 0), distinct=True, column="DOMAIN_CONCEPT"))]),
        rows((1, "2019-03-01", "2020-12-31"), (2, "2019-02-01", "2019-12-31")), "Binder Error"),
    # `if criteria.visit_type_cs.codeset_id:` is false for concept set 0: the filter is dropped. Circe: 101 only.
    "a *CS filter on concept set 0 is dropped": (
        CohortExpression([cset(0, 9201)] + SETS[:1], PrimaryCriteria([Criteria("DeviceExposure", None, attrs={
            "visit_type_cs": ConceptSetSelection(0)})]), qualified_limit="All", expression_limit="All"),
        rows(), rows((2, "2019-02-02", "2019-12-31"))),
    # DrugTypeCS (and most *CS attributes outside conditions and visits) ignore IsExclusion: NOT IN becomes IN.
    "*CS IsExclusion ignored": (expr(Criteria("DrugExposure", 2, attrs={"drug_type_cs": ConceptSetSelection(2, True)})),
                                rows((1, "2019-03-05", "2020-12-31"), (2, "2019-02-03", "2019-12-31"),
                                     (4, "2020-02-10", "2021-12-31")), rows()),
    # DrugExposure.Quantity is a decimal in Circe (`%.4f`); circepy truncates it to an integer: quantity > 1.5 is
    # 202 (2.0) in Circe, but > 1 in circepy also takes 201 (1.5).
    "DrugExposure.Quantity truncated": (expr(Criteria("DrugExposure", 2, attrs={"quantity": NumericRange("gt", 1.5)})),
                                        rows((1, "2019-03-20", "2020-12-31")), rows((1, "2019-03-05", "2020-12-31"))),
    # DeviceExposure's builder never embeds its First: Circe takes 601 only, circepy both devices.
    "DeviceExposure.First ignored": (expr(Criteria("DeviceExposure", 5, first=True),
                                          end_strategy=DateOffsetStrategy("StartDate", 0)),
                                     rows((2, "2019-02-02", "2019-02-02")),
                                     rows((2, "2019-02-02", "2019-02-02"), (2, "2019-06-01", "2019-06-01"))),
    # Measurement.Abnormal reads C.value_as_concept_id, which the builder selects only with ValueAsConcept(CS).
    "Measurement.Abnormal fails": (SPEC["measurement abnormal"][0], SPEC["measurement abnormal"][1], "Binder Error"),
    # TextFilter !startsWith is rendered as `= 'text'`: Circe's NOT LIKE 'ab%' takes 105 ("xab"); circepy takes none.
    "TextFilter !startsWith": (expr(cond(attrs={"stop_reason": TextFilter("!startsWith", "ab")})),
                               rows((2, "2020-04-01", "2020-12-31")), rows()),
}


def test_circepy_bugs(spec_cdm):
    """Evidence for each circepy 0.3.0 bug: the reference gives Circe's (hand-worked) answer, circepy another one or
    an error. A failure here means circepy changed: move the construct back into the generated comparisons."""
    results = circe_results(spec_cdm, {name: to_circe_json(case[0]) for name, case in CIRCEPY_BUGS.items()})
    problems = []
    for name, (x, circe_rows, circepy_does) in CIRCEPY_BUGS.items():
        ref = evaluate(x, spec_tables())
        d = diff_cohorts(circe_rows, ref.rows, names=("hand", "reference"))
        if not d.equal:
            problems.append(f"{name}: the reference is not Circe's answer\n{d.report(circe_rows, ref.rows)}")
        res = results[name]
        if isinstance(circepy_does, str):
            if res.ok or circepy_does not in str(res.raw["error"].get("message")):
                problems.append(f"{name}: circepy no longer fails with {circepy_does!r}: {res.raw.get('error')}")
        elif not res.ok:
            problems.append(f"{name}: circepy failed: {res.raw['error']}")
        else:
            d = diff_cohorts(circepy_does, res.rows, names=("circepy 0.3.0 (documented)", "circepy now"))
            if not d.equal:
                problems.append(f"{name}: circepy's answer changed\n{d.report(circepy_does, res.rows)}")
    assert not problems, "\n".join(problems)


# ============================================================================ Circe JSON: writers and the reader
def _meaning(x: CohortExpression) -> dict:
    "An expression as plain data, concept sets as (id, items), an empty period as none (the same cohort)."
    from healthbench.expression import expression_to_dict

    def walk(v):
        if isinstance(v, dict):
            if set(v) == {"start_date", "end_date"} and v["start_date"] is None and v["end_date"] is None:
                return None
            out = {k: walk(w) for k, w in v.items()}
            if "attrs" in out:
                out["attrs"] = {k: w for k, w in out["attrs"].items() if w is not None}
            return out
        if isinstance(v, list):
            return [walk(w) for w in v]
        return v
    d = walk(expression_to_dict(x))
    d["concept_sets"] = [(c.get("circe_id"), [(i["concept_id"], i["is_excluded"], i["include_descendants"],
                                               i["include_mapped"]) for i in c.get("items", [])])
                         for c in d["concept_sets"]]
    return d


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(definitions=gen.definitions(3, gen.ROUND_TRIP))
def test_circe_json_round_trip(definitions):
    """The test-side writer (circe_gen.to_circe) and healthbench's (atlas.write_expression) write what
    atlas.read_expression reads back as the same expression: the JSON circepy runs here is the expression the
    reference and the engine run."""
    from healthbench import atlas
    for x in definitions:
        for writer in (to_circe_json, atlas.write_expression):
            y, _ = atlas.read_expression(writer(x))
            assert _meaning(y) == _meaning(x), f"{writer.__name__}:\n{to_circe_json(x)}"


def test_reader_keeps_source_concept_of_set_0():
    "Circe's ConditionSourceConcept: 0 joins concept set 0 (ATLAS numbers concept sets from 0): it is not 'not set'."
    from healthbench import atlas
    x = CohortExpression([cset(0, 20)], PrimaryCriteria([Criteria("ConditionOccurrence", 0, attrs={
        "condition_source_concept": 0})]))
    y, _ = atlas.read_expression(to_circe_json(x))
    assert y.primary_criteria.criteria_list[0].attrs == {"condition_source_concept": 0}


# ==================================================================================== generative: circepy == reference
def _compare_with_circepy(tables: dict, definitions: list[CohortExpression]) -> None:
    with tempfile.TemporaryDirectory(prefix="hb-circe-prop-") as tmp:
        cdm = write_duckdb(tables, Path(tmp) / "cdm.duckdb")
        texts = {str(i): to_circe_json(x) for i, x in enumerate(definitions)}
        results = circe_results(cdm, texts)
    failures = []
    for i, x in enumerate(definitions):
        ref = evaluate(x, tables)
        res = results[str(i)]
        if ref.ambiguous:
            event("a definition left undetermined by Circe's SQL (not compared)")
            continue
        event("a definition compared")
        if not res.ok:
            failures.append(f"definition {i}: circepy failed: {res.raw['error']}\n{texts[str(i)]}")
            continue
        d = diff_cohorts(res.rows, ref.rows, names=("circepy", "reference"))
        side = attrition_side_by_side(res.attrition, ref.attrition, names=("circepy", "reference"))
        if not d.equal or not side["same"].all():
            report = d.report(res.rows, normalise_rows(ref.rows)) if not d.equal else "rows equal"
            failures.append(f"definition {i}:\n{report}\n{side.to_string(index=False)}\n{texts[str(i)]}")
    if failures:
        note("tables:\n" + "\n".join(f"{t}:\n{df.to_string()}" for t, df in tables.items()
                                     if not t.startswith("concept")))
    assert not failures, "\n\n".join(failures)


@settings(max_examples=CIRCE_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tables=gen.cdms(), definitions=gen.definitions(CIRCE_DEFINITIONS, gen.CIRCEPY_UNSAFE))
def test_reference_equals_circepy(tables, definitions):
    _compare_with_circepy(tables, definitions)


# ========================================================================================== the engine == reference
def _engine():
    """`healthbench.engine`, or a skip while it does not exist yet (healthbench/engine.py absent and
    HB_REQUIRE_ENGINE unset). Once the module is there, an import error fails the test."""
    if not (ROOT / "healthbench" / "engine.py").exists() and not os.environ.get("HB_REQUIRE_ENGINE"):
        pytest.skip("healthbench.engine (chapter 05c) is not in this tree yet")
    return importlib.import_module("healthbench.engine")


def _engine_answer(engine, x: CohortExpression, tables: dict, db: Path):
    "The engine's rows and attrition for `x` on `tables` (written to DuckDB, read through healthbench.cdm.connect)."
    from healthbench.cdm import connect
    write_duckdb(tables, db)
    cdm = connect(str(db))
    result = engine.generate_expression(cdm, x)
    return normalise_rows(result.to_pandas()), result.attrition


def _compare_engine(engine, x: CohortExpression, tables: dict, expected_rows, expected_attrition, db: Path, label):
    got_rows, got_attrition = _engine_answer(engine, x, tables, db)
    d = diff_cohorts(expected_rows, got_rows, names=("reference", "engine"))
    assert d.equal, f"{label}\n{d.report(normalise_rows(expected_rows), got_rows)}\n{to_circe_json(x)}"
    side = attrition_side_by_side(expected_attrition, got_attrition, names=("reference", "engine"))
    assert side["same"].all(), f"{label}\n{side.to_string(index=False)}\n{to_circe_json(x)}"


@pytest.mark.parametrize("name", list(SPEC))
def test_engine_spec(name, tmp_path):
    engine = _engine()
    x, _, _, _ = SPEC[name]
    ref = evaluate(x, spec_tables())
    _compare_engine(engine, x, spec_tables(), ref.rows, ref.attrition, tmp_path / "spec.duckdb", name)


@settings(max_examples=ENGINE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tables=gen.cdms(), definitions=gen.definitions(2))
def test_engine_equals_reference(tables, definitions):
    engine = _engine()
    with tempfile.TemporaryDirectory(prefix="hb-engine-prop-") as tmp:
        for i, x in enumerate(definitions):
            ref = evaluate(x, tables)
            if ref.ambiguous:
                event("a definition left undetermined by Circe's SQL (not compared)")
                continue
            _compare_engine(engine, x, tables, ref.rows, ref.attrition, Path(tmp) / f"cdm{i}.duckdb", f"definition {i}")
