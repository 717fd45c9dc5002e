"""Hypothesis strategies for the Circe property tests: random small CDMs and random Circe cohort expressions.

CDMs: a few persons with one or two observation periods, a small vocabulary (a hierarchy, an invalid concept, a root
missing from `concept`, 'Maps to' source concepts), and events in every domain the generated criteria read —
conditions, drug exposures with days supply, procedures, measurements with values and normal ranges, observations,
visits (which the other events point to), devices, death, condition/drug/dose eras and payer plan periods. Event ids
are unique across tables, so Circe's ordering of primary events by (date, event id) is always determined.

Expressions: every construct of the model over those kinds (`kinds`, `attributes` say which: the default leaves out
what circepy 0.3.0 renders wrongly, see `CIRCEPY_UNSAFE`), with correlated criteria nested to a bounded depth.
"""
from __future__ import annotations

import datetime as dt

import pandas as pd
from hypothesis import strategies as st

from healthbench.expression import (KINDS, CohortExpression, CollapseSettings, ConceptSetSelection,
                                    CorrelatedCriteria, Criteria, CriteriaGroup, CustomEraStrategy, DateAdjustment,
                                    DateOffsetStrategy, DateRange, DemographicCriteria, InclusionRule, NumericRange,
                                    ObservationWindow, Occurrence, Period, PrimaryCriteria, TextFilter, Window,
                                    WindowBound)

from healthbench.concepts import ConceptSet, ConceptSetItem

BASE = dt.date(2019, 1, 1)
SPAN = 540                     # every date falls in BASE .. BASE + SPAN days


def day(n: int) -> dt.date:
    return BASE + dt.timedelta(days=n)


# ---- a small vocabulary ------------------------------------------------------------------------------------------
# clinical concepts 1..10: 1 > {2, 3} > 4 (ancestry), 5 > 6, 7 > 8; 3 is absent from `concept`, 4 is invalid ('D'),
# 10 is in no table of the vocabulary at all. Source concepts 20 and 21 map to 2 and 6.
CLINICAL = list(range(1, 11))
ANCESTRY = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 4), (3, 3), (3, 4), (4, 4), (5, 5), (5, 6), (6, 6), (7, 7),
            (7, 8), (8, 8), (9, 9)]
SOURCE = [20, 21, 22]
MAPS_TO = [(20, 2), (21, 6)]
GENDERS = [8507, 8532]
RACES = [0, 8527, 8516]
ETHNICITIES = [0, 38003564]
TYPES = [32020, 32817, 38000177]
UNITS = [8582, 8876]
VALUE_CONCEPTS = [4155142, 4181412, 45878583]
QUALIFIERS = [4175081, 4124457]
OPERATORS = [4172704, 4171756]
SPECIALTIES = [38004446, 38004456]
VISIT_CONCEPTS = [9201, 9202, 9203]
ROUTES = [4132161, 4128794]
MODIFIERS = [42739579, 42739580]
STATUSES = [32890, 32899]
POS = [8717, 8940]
PERIOD_TYPES = [44814724, 44814722]
PAYERS = [1, 2, 20]
ATTRIBUTE_CONCEPTS = [32020, 8507, 8582, 4155142, 9201, 38004446]
VOCABULARY = CLINICAL + SOURCE + ATTRIBUTE_CONCEPTS
IN_CONCEPT = [c for c in CLINICAL if c not in (3, 10)] + SOURCE + ATTRIBUTE_CONCEPTS

TEXT = ["ab", "abc", "b", "bc", "x"]


def vocabulary_tables() -> dict[str, pd.DataFrame]:
    concept = pd.DataFrame({"concept_id": IN_CONCEPT, "concept_name": [f"c{c}" for c in IN_CONCEPT],
                            "domain_id": "Condition", "vocabulary_id": "SNOMED", "concept_class_id": "Clinical Finding",
                            "standard_concept": "S", "concept_code": [str(c) for c in IN_CONCEPT],
                            "valid_start_date": dt.date(1970, 1, 1), "valid_end_date": dt.date(2099, 12, 31),
                            "invalid_reason": [("D" if c == 4 else None) for c in IN_CONCEPT]})
    ancestor = pd.DataFrame(ANCESTRY, columns=["ancestor_concept_id", "descendant_concept_id"]).assign(
        min_levels_of_separation=0, max_levels_of_separation=0)
    relationship = pd.DataFrame(MAPS_TO, columns=["concept_id_1", "concept_id_2"]).assign(
        relationship_id="Maps to", valid_start_date=dt.date(1970, 1, 1), valid_end_date=dt.date(2099, 12, 31),
        invalid_reason=None)
    return {"concept": concept, "concept_ancestor": ancestor, "concept_relationship": relationship}


# ---- the CDM -----------------------------------------------------------------------------------------------------
def maybe(s, p_none: float = 0.25):
    "s, or None about `p_none` of the time."
    return st.one_of(st.none(), s) if p_none else s


@st.composite
def cdms(draw, max_persons: int = 5, max_events: int = 4) -> dict[str, pd.DataFrame]:
    """A random small CDM as {table: DataFrame}, every date within BASE .. BASE + SPAN."""
    n = draw(st.integers(1, max_persons))
    next_id = iter(range(1, 100_000))
    tables: dict[str, list[dict]] = {t: [] for t in (
        "person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
        "procedure_occurrence", "measurement", "observation", "device_exposure", "death", "condition_era",
        "drug_era", "dose_era", "payer_plan_period", "provider", "care_site")}
    for i, spec in enumerate(SPECIALTIES, 1):
        tables["provider"].append({"provider_id": i, "specialty_concept_id": spec})
    for i, pos in enumerate(POS, 1):
        tables["care_site"].append({"care_site_id": i, "place_of_service_concept_id": pos})
    provider = maybe(st.sampled_from([1, 2, 3]), 0.4)          # 3: a provider the CDM does not have

    for pid in range(1, n + 1):
        tables["person"].append({"person_id": pid, "gender_concept_id": draw(st.sampled_from(GENDERS)),
                                 "year_of_birth": draw(st.integers(1950, 1995)),
                                 "race_concept_id": draw(st.sampled_from(RACES)),
                                 "ethnicity_concept_id": draw(st.sampled_from(ETHNICITIES))})
        # one or two observation periods that do not overlap
        cuts = sorted(draw(st.lists(st.integers(0, SPAN), min_size=2, max_size=4, unique=True)))
        periods = [(cuts[0], cuts[1])] + ([(cuts[2], cuts[3])] if len(cuts) == 4 else [])
        for s, e in periods:
            tables["observation_period"].append({"observation_period_id": next(next_id), "person_id": pid,
                                                 "observation_period_start_date": day(s),
                                                 "observation_period_end_date": day(e),
                                                 "period_type_concept_id": draw(st.sampled_from(PERIOD_TYPES))})
        # events: mostly inside the observation periods, some outside
        def when():
            lo, hi = draw(st.sampled_from(periods + [(0, SPAN)]))
            return draw(st.integers(lo, hi))

        visits = []
        for _ in range(draw(st.integers(0, 2))):
            s = when()
            vid = next(next_id)
            visits.append(vid)
            tables["visit_occurrence"].append({
                "visit_occurrence_id": vid, "person_id": pid, "visit_concept_id": draw(st.sampled_from(VISIT_CONCEPTS)),
                "visit_start_date": day(s), "visit_end_date": draw(maybe(st.just(day(s + draw(st.integers(0, 5)))), 0.15)),
                "visit_type_concept_id": draw(st.sampled_from(TYPES)), "provider_id": draw(provider),
                "care_site_id": draw(maybe(st.sampled_from([1, 2]), 0.3)),
                "visit_source_concept_id": draw(st.sampled_from(SOURCE + [0]))})
        visit = maybe(st.sampled_from(visits), 0.4) if visits else st.none()
        concept = st.sampled_from(CLINICAL + [0])

        def common(table_id: str):
            return {table_id: next(next_id), "person_id": pid, "visit_occurrence_id": draw(visit),
                    "provider_id": draw(provider)}

        for _ in range(draw(st.integers(0, max_events))):
            s = when()
            tables["condition_occurrence"].append(common("condition_occurrence_id") | {
                "condition_concept_id": draw(concept), "condition_start_date": day(s),
                "condition_end_date": draw(maybe(st.integers(0, 20).map(lambda k: day(s + k)), 0.4)),
                "condition_type_concept_id": draw(st.sampled_from(TYPES)),
                "condition_source_concept_id": draw(st.sampled_from(SOURCE + [0])),
                "condition_status_concept_id": draw(maybe(st.sampled_from(STATUSES), 0.3)),
                "stop_reason": draw(maybe(st.sampled_from(TEXT), 0.5))})
        for _ in range(draw(st.integers(0, max_events))):
            s = when()
            tables["drug_exposure"].append(common("drug_exposure_id") | {
                "drug_concept_id": draw(concept), "drug_exposure_start_date": day(s),
                "drug_exposure_end_date": draw(maybe(st.integers(0, 30).map(lambda k: day(s + k)), 0.5)),
                "days_supply": draw(maybe(st.integers(0, 30), 0.3)), "quantity": draw(maybe(st.sampled_from([0.5, 1.0, 2.0, 30.0]), 0.3)),
                "refills": draw(maybe(st.integers(0, 3), 0.3)), "drug_type_concept_id": draw(st.sampled_from(TYPES)),
                "drug_source_concept_id": draw(st.sampled_from(SOURCE + CLINICAL[:3] + [0])),
                "route_concept_id": draw(maybe(st.sampled_from(ROUTES), 0.3)),
                "lot_number": draw(maybe(st.sampled_from(TEXT), 0.5)),
                "stop_reason": draw(maybe(st.sampled_from(TEXT), 0.5))})
        for _ in range(draw(st.integers(0, max_events))):
            s = when()
            tables["procedure_occurrence"].append(common("procedure_occurrence_id") | {
                "procedure_concept_id": draw(concept), "procedure_date": day(s),
                "procedure_type_concept_id": draw(st.sampled_from(TYPES)),
                "modifier_concept_id": draw(maybe(st.sampled_from(MODIFIERS), 0.3)),
                "quantity": draw(maybe(st.integers(0, 3), 0.3)),
                "procedure_source_concept_id": draw(st.sampled_from(SOURCE + [0]))})
        for _ in range(draw(st.integers(0, max_events))):
            s = when()
            tables["measurement"].append(common("measurement_id") | {
                "measurement_concept_id": draw(concept), "measurement_date": day(s),
                "measurement_type_concept_id": draw(st.sampled_from(TYPES)),
                "operator_concept_id": draw(maybe(st.sampled_from(OPERATORS), 0.5)),
                "value_as_number": draw(maybe(st.sampled_from([-1.0, 0.0, 4.5, 7.25, 10.0, 140.0]), 0.2)),
                "value_as_concept_id": draw(maybe(st.sampled_from(VALUE_CONCEPTS), 0.4)),
                "unit_concept_id": draw(maybe(st.sampled_from(UNITS), 0.3)),
                "range_low": draw(maybe(st.sampled_from([0.0, 4.0, 5.0]), 0.3)),
                "range_high": draw(maybe(st.sampled_from([7.0, 10.0, 130.0]), 0.3)),
                "measurement_source_concept_id": draw(st.sampled_from(SOURCE + [0]))})
        for _ in range(draw(st.integers(0, max_events))):
            s = when()
            tables["observation"].append(common("observation_id") | {
                "observation_concept_id": draw(concept), "observation_date": day(s),
                "observation_type_concept_id": draw(st.sampled_from(TYPES)),
                "value_as_number": draw(maybe(st.sampled_from([0.0, 2.5, 5.0]), 0.4)),
                "value_as_string": draw(maybe(st.sampled_from(TEXT), 0.5)),
                "value_as_concept_id": draw(maybe(st.sampled_from(VALUE_CONCEPTS), 0.4)),
                "qualifier_concept_id": draw(maybe(st.sampled_from(QUALIFIERS), 0.4)),
                "unit_concept_id": draw(maybe(st.sampled_from(UNITS), 0.4)),
                "observation_source_concept_id": draw(st.sampled_from(SOURCE + [0]))})
        for _ in range(draw(st.integers(0, max_events // 2))):
            s = when()
            tables["device_exposure"].append(common("device_exposure_id") | {
                "device_concept_id": draw(concept), "device_exposure_start_date": day(s),
                "device_exposure_end_date": draw(maybe(st.integers(0, 10).map(lambda k: day(s + k)), 0.5)),
                "device_type_concept_id": draw(st.sampled_from(TYPES)),
                "unique_device_id": draw(maybe(st.sampled_from(TEXT), 0.4)),
                "quantity": draw(maybe(st.integers(0, 3), 0.4)),
                "device_source_concept_id": draw(st.sampled_from(SOURCE + [0]))})
        if draw(st.booleans()) and draw(st.booleans()):
            tables["death"].append({"person_id": pid, "death_date": day(when()),
                                    "death_type_concept_id": draw(st.sampled_from(TYPES)),
                                    "cause_concept_id": draw(maybe(concept, 0.3)),
                                    "cause_source_concept_id": draw(st.sampled_from(SOURCE + [0]))})
        for table, prefix, extra in (("condition_era", "condition", lambda: {"condition_occurrence_count": draw(st.integers(1, 4))}),
                                     ("drug_era", "drug", lambda: {"drug_exposure_count": draw(st.integers(1, 4)),
                                                                   "gap_days": draw(st.integers(0, 30))}),
                                     ("dose_era", "dose", lambda: {"unit_concept_id": draw(st.sampled_from(UNITS)),
                                                                   "dose_value": draw(st.sampled_from([0.5, 1.0, 2.0]))})):
            for _ in range(draw(st.integers(0, 1))):
                s = when()
                concept_col = "condition_concept_id" if prefix == "condition" else "drug_concept_id"
                tables[table].append({f"{table}_id": next(next_id), "person_id": pid, concept_col: draw(concept),
                                      f"{table}_start_date": day(s),
                                      f"{table}_end_date": day(s + draw(st.integers(0, 60)))} | extra())
        for _ in range(draw(st.integers(0, 1))):
            s = when()
            tables["payer_plan_period"].append({
                "payer_plan_period_id": next(next_id), "person_id": pid, "payer_plan_period_start_date": day(s),
                "payer_plan_period_end_date": day(s + draw(st.integers(0, 200))),
                "payer_concept_id": draw(st.sampled_from(PAYERS)), "plan_concept_id": draw(st.sampled_from(PAYERS))})
    out = vocabulary_tables()
    for table, rows in tables.items():
        if rows:
            out[table] = pd.DataFrame(rows)
    return out


# ---- expressions -------------------------------------------------------------------------------------------------
# What circepy 0.3.0 renders differently from Circe (each shown by a test in test_circe_properties.py): left out of the
# expressions compared with circepy, kept in those compared with the engine.
CIRCEPY_UNSAFE = {
    # templates that fail on every database: VisitDetail and Specimen read columns outside their subquery or that
    # OMOP's table lacks; PayerPlanPeriod writes "WHERE WHERE"
    "kinds": {"Specimen", "VisitDetail", "PayerPlanPeriod"},
    # DrugExposure.DoseUnit(CS) selects de.dose_unit_concept_id outside the subquery aliased `de`
    "attributes": {("DrugExposure", "dose_unit"), ("DrugExposure", "dose_unit_cs"),
                   # Measurement.Abnormal reads value_as_concept_id, selected only with ValueAsConcept(CS)
                   ("Measurement", "abnormal"),
                   # not in Circe's model (Java ProcedureOccurrence/Measurement have no such field); circepy parses
                   # them and ignores them, the reference applies them as KINDS says
                   ("ProcedureOccurrence", "occurrence_end_date"), ("Measurement", "occurrence_end_date"),
                   ("Measurement", "value_as_string"), ("Measurement", "visits")},
    # !startsWith and !endsWith are rendered as `= 'text'`
    "text_ops": {"!startsWith", "!endsWith"},
    "date_adjustment_kinds": set(),
    # *CS attributes whose IsExclusion circepy honours; on the others it is ignored (`IN` for `NOT IN`)
    "cs_exclusion": {("ConditionOccurrence", n) for n in ("condition_status_cs", "condition_type_cs", "gender_cs",
                                                          "provider_specialty_cs", "visit_type_cs")}
                    | {(k, "gender_cs") for k in ("ConditionEra", "DrugEra", "DoseEra", "Measurement", "Observation")}
                    | {("DoseEra", "unit_cs"), ("Measurement", "provider_specialty_cs"),
                       ("Observation", "provider_specialty_cs"), ("ObservationPeriod", "period_type_cs")}
                    | {("VisitOccurrence", n) for n in ("gender_cs", "place_of_service_cs", "provider_specialty_cs",
                                                        "visit_type_cs")},
    # several builders test `if criteria.x_cs.codeset_id:`, so concept set 0 silently drops the filter
    "first_codeset_id": 1,
    # Occurrence.IsDistinct counting DOMAIN_CONCEPT (the default column) selects A.domain_concept_id, which
    # Measurement and Observation do not add ("Referenced table A not found")
    "distinct_domain_kinds": {"Measurement", "Observation"},
    # DeviceExposure's builder has no embed_ordinal_expression: First is ignored
    "first_kinds": {"DeviceExposure"},
}
SAFE = {"kinds": set(), "attributes": set(), "text_ops": set(), "date_adjustment_kinds": set(), "cs_exclusion": None,
        "first_codeset_id": 0, "distinct_domain_kinds": set(), "first_kinds": set()}
# healthbench.atlas.read_expression reads a *SourceConcept (codeset attribute) of concept set 0 as not set
# (test_circe_properties.test_reader_keeps_source_concept_of_set_0): round trips use concept sets from 1
ROUND_TRIP = SAFE | {"first_codeset_id": 1}

KIND_LIST = ["ConditionOccurrence", "DrugExposure", "ProcedureOccurrence", "Measurement", "Observation",
             "VisitOccurrence", "DeviceExposure", "Death", "ObservationPeriod", "PayerPlanPeriod", "ConditionEra",
             "DrugEra", "DoseEra", "Specimen", "VisitDetail"]


def _concept_pool(kind: str, column: str) -> list[int]:
    c = column.split(".")[-1]
    if "gender" in c:
        return GENDERS
    if "type_concept" in c:
        return PERIOD_TYPES if c.startswith("period") else TYPES
    if c.startswith("unit") or c == "dose_unit_concept_id":
        return UNITS
    if c.startswith("value_as_concept"):
        return VALUE_CONCEPTS
    if c.startswith("qualifier"):
        return QUALIFIERS
    if c.startswith("operator"):
        return OPERATORS
    if "specialty" in c:
        return SPECIALTIES
    if c == "visit_concept_id":
        return VISIT_CONCEPTS
    if c.startswith("route"):
        return ROUTES
    if c.startswith("modifier"):
        return MODIFIERS
    if c.startswith("condition_status"):
        return STATUSES
    if c.startswith("place_of_service"):
        return POS
    return CLINICAL


NUMERIC_VALUES = {
    "@age": (20, 70, False), "@age_end": (20, 70, False), "@length": (0, 60, False), "days_supply": (0, 30, False),
    "quantity": (0, 3, False), "refills": (0, 3, False), "value_as_number": (-2, 150, True), "range_low": (0, 6, True),
    "range_high": (6, 140, True), "@ratio_low": (0, 3, True), "@ratio_high": (0, 2, True),
    "condition_occurrence_count": (1, 4, False), "drug_exposure_count": (1, 4, False), "gap_days": (0, 30, False),
    "dose_value": (0, 2, True), "effective_drug_dose": (0, 2, True)}


def numeric_ranges(column: str) -> st.SearchStrategy:
    lo, hi, decimal = NUMERIC_VALUES.get(column, (0, 10, False))
    value = (st.integers(lo * 4, hi * 4).map(lambda v: v / 4) if decimal else st.integers(lo, hi))

    @st.composite
    def build(draw):
        op = draw(st.sampled_from(["lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt"]))
        a = draw(value)
        if op.endswith("bt"):
            b = draw(value)
            a, b = min(a, b), max(a, b)
            return NumericRange(op, a, b)
        return NumericRange(op, a)
    return build()


@st.composite
def date_ranges(draw) -> DateRange:
    op = draw(st.sampled_from(["lt", "lte", "eq", "!eq", "gt", "gte", "bt", "!bt"]))
    a, b = sorted([draw(st.integers(0, SPAN)), draw(st.integers(0, SPAN))])
    return DateRange(op, day(a).isoformat(), day(b).isoformat() if op.endswith("bt") else None)


class Gen:
    "Expression strategies over a fixed set of concept set ids, leaving out what `unsafe` names."

    def __init__(self, codeset_ids: list[int], unsafe: dict | None = None, max_depth: int = 2):
        self.ids = codeset_ids
        self.unsafe = unsafe or SAFE
        self.kinds = [k for k in KIND_LIST if k not in self.unsafe["kinds"]]
        self.max_depth = max_depth

    def attribute_value(self, kind: str, name: str):
        akind, col = KINDS[kind].attrs[name]
        allowed = self.unsafe.get("cs_exclusion")
        if akind == "cs" and allowed is not None and (kind, name) not in allowed:
            return st.builds(ConceptSetSelection, st.sampled_from(self.ids), st.just(False))
        if akind == "concepts":
            return st.lists(st.sampled_from(_concept_pool(kind, col)), min_size=1, max_size=2, unique=True)
        if akind == "cs":
            return st.builds(ConceptSetSelection, st.sampled_from(self.ids), st.booleans())
        if akind == "codeset":
            return st.sampled_from(self.ids)
        if akind == "numeric":
            return numeric_ranges(col)
        if akind == "date":
            return date_ranges()
        if akind == "text":
            ops = [o for o in ("startsWith", "contains", "endsWith", "!contains", "!startsWith", "!endsWith")
                   if o not in self.unsafe["text_ops"]]
            return st.builds(TextFilter, st.sampled_from(ops), st.sampled_from(TEXT))
        if akind == "period":
            return st.builds(Period, maybe(st.integers(0, SPAN).map(lambda d: day(d).isoformat()), 0.3),
                             maybe(st.integers(0, SPAN).map(lambda d: day(d).isoformat()), 0.3))
        if akind == "flag":
            return st.just(True)
        raise ValueError(akind)

    def attribute_names(self, kind: str) -> list[str]:
        names = []
        for name, (akind, col) in KINDS[kind].attrs.items():
            if (kind, name) in self.unsafe["attributes"] or name.endswith("_exclude") or col == "@location":
                continue
            names.append(name)
        return sorted(names)

    @st.composite
    def criteria(draw, self, depth: int = 0, kinds: list[str] | None = None) -> Criteria:
        kind = draw(st.sampled_from(kinds or self.kinds))
        k = KINDS[kind]
        codeset = draw(maybe(st.sampled_from(self.ids), 0.2)) if k.concept else None
        attrs = {}
        for name in draw(st.lists(st.sampled_from(self.attribute_names(kind)), max_size=2, unique=True)):
            attrs[name] = draw(self.attribute_value(kind, name))
            if f"{name}_exclude" in k.attrs and draw(st.booleans()):
                attrs[f"{name}_exclude"] = True
        adjust = None
        if kind not in self.unsafe["date_adjustment_kinds"] and draw(st.integers(0, 9)) == 0:
            adjust = DateAdjustment(draw(st.sampled_from(["START_DATE", "END_DATE"])), draw(st.integers(-5, 5)),
                                    draw(st.sampled_from(["START_DATE", "END_DATE"])), draw(st.integers(0, 10)))
        nested = None
        if depth < self.max_depth and draw(st.integers(0, 5)) == 0:
            nested = draw(self.group(depth + 1))
        first = (kind != "Death" and kind not in self.unsafe.get("first_kinds", ())
                 and draw(st.integers(0, 3)) == 0)
        return Criteria(kind, codeset, first, attrs, nested, adjust)

    @st.composite
    def window(draw, self) -> Window:
        def bound():
            return st.builds(WindowBound, maybe(st.integers(0, 90), 0.3), st.sampled_from([-1, 1]))
        return Window(draw(bound()), draw(bound()), draw(st.booleans()), draw(st.booleans()))

    @st.composite
    def correlated(draw, self, depth: int) -> CorrelatedCriteria:
        c = draw(self.criteria(depth))
        occ = Occurrence(draw(st.sampled_from([0, 1, 2])), draw(st.integers(0, 2)))
        if draw(st.integers(0, 4)) == 0:
            occ.is_distinct = True
            columns = ["START_DATE", "VISIT_ID"]
            if c.kind not in self.unsafe.get("distinct_domain_kinds", ()):
                columns += [None, "DOMAIN_CONCEPT"]
            occ.count_column = draw(st.sampled_from(columns))
        return CorrelatedCriteria(c, draw(self.window()), draw(maybe(self.window(), 0.75)),
                                  restrict_visit=draw(st.integers(0, 5)) == 0,
                                  ignore_observation_period=draw(st.integers(0, 4)) == 0, occurrence=occ)

    @st.composite
    def demographic(draw, self) -> DemographicCriteria:
        d = DemographicCriteria()
        for name in draw(st.lists(st.sampled_from(["age", "gender", "race", "ethnicity", "occurrence_start_date",
                                                  "occurrence_end_date"]), min_size=1, max_size=2, unique=True)):
            if name == "age":
                d.age = draw(numeric_ranges("@age"))
            elif name in ("gender", "race", "ethnicity"):
                # concept 0 is in the data, but healthbench's ATLAS reader refuses it in a concept list
                pool = {"gender": GENDERS, "race": RACES[1:], "ethnicity": ETHNICITIES[1:]}[name]
                setattr(d, name, draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True)))
            else:
                setattr(d, name, draw(date_ranges()))
        return d

    @st.composite
    def group(draw, self, depth: int = 0) -> CriteriaGroup:
        t = draw(st.sampled_from(["ALL", "ANY", "AT_LEAST", "AT_MOST"]))
        g = CriteriaGroup(t, draw(st.integers(0, 2)) if t.startswith("AT_") else None)
        g.criteria_list = draw(st.lists(self.correlated(depth), min_size=0 if depth else 1, max_size=2))
        if draw(st.integers(0, 3)) == 0:
            g.demographic_criteria_list = [draw(self.demographic())]
        if depth < self.max_depth and draw(st.integers(0, 3)) == 0:
            g.groups = [draw(self.group(depth + 1))]
        return g

    @st.composite
    def expression(draw, self, concept_sets: list) -> CohortExpression:
        pc = PrimaryCriteria(draw(st.lists(self.criteria(1), min_size=1, max_size=2)),
                             ObservationWindow(draw(st.sampled_from([0, 0, 10, 60])), draw(st.sampled_from([0, 0, 10, 60]))),
                             draw(st.sampled_from(["All", "First", "Last"])))
        x = CohortExpression(concept_sets, pc)
        if draw(st.integers(0, 2)) == 0:
            x.additional_criteria = draw(self.group(1))
        x.qualified_limit = draw(st.sampled_from(["All", "First", "Last"]))
        x.expression_limit = draw(st.sampled_from(["All", "First", "Last"]))
        x.inclusion_rules = [InclusionRule(f"rule {i}", draw(self.group(1)))
                             for i in range(draw(st.integers(0, 3)))]
        strategy = draw(st.integers(0, 2))
        if strategy == 1:
            x.end_strategy = DateOffsetStrategy(draw(st.sampled_from(["StartDate", "EndDate"])), draw(st.integers(-3, 90)))
        elif strategy == 2:
            x.end_strategy = CustomEraStrategy(draw(st.sampled_from(self.ids)), draw(st.integers(0, 30)),
                                               draw(st.integers(0, 10)), draw(maybe(st.integers(1, 30), 0.7)))
        if draw(st.integers(0, 3)) == 0:
            x.censoring_criteria = [draw(self.criteria(self.max_depth))]
        x.collapse_settings = CollapseSettings("ERA", draw(st.sampled_from([0, 0, 1, 7, 30])))
        if draw(st.integers(0, 5)) == 0:
            a, b = sorted([draw(st.integers(0, SPAN)), draw(st.integers(0, SPAN))])
            x.censor_window = Period(draw(maybe(st.just(day(a).isoformat()), 0.3)),
                                     draw(maybe(st.just(day(b).isoformat()), 0.3)))
        return x


@st.composite
def concept_sets(draw, max_sets: int = 3, first_id: int = 0) -> list[ConceptSet]:
    "Circe concept sets (healthbench ConceptSets with items and circe_id): 1 to 3 items, each flag at random."
    out = []
    rare = st.integers(0, 4).map(lambda v: v == 0)
    for i in range(first_id, first_id + draw(st.integers(1, max_sets))):
        items = draw(st.lists(st.builds(ConceptSetItem, concept_id=st.sampled_from(VOCABULARY), is_excluded=rare,
                                        include_descendants=st.booleans(), include_mapped=rare),
                              min_size=1, max_size=3, unique_by=lambda it: it.concept_id))
        out.append(ConceptSet(f"set {i}", items=items, circe_id=i, on_unknown="warn"))
    return out


@st.composite
def definitions(draw, n: int, unsafe: dict | None = None, max_depth: int = 2) -> list[CohortExpression]:
    "`n` random expressions sharing one set of concept sets."
    sets = draw(concept_sets(first_id=(unsafe or SAFE).get("first_codeset_id", 0)))
    gen = Gen([cs.circe_id for cs in sets], unsafe, max_depth)
    return [draw(gen.expression(sets)) for _ in range(n)]
