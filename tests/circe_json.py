"""Helpers for the engine's Circe cross-check: toy OMOP v5.3 DuckDB CDMs made from a few rows, and a small writer of
`healthbench.expression.CohortExpression` as Circe (ATLAS) JSON, so circepy runs the very definition the engine runs.

The writer is deliberately tiny and independent of healthbench's own ATLAS writer (branch hb-expr): it only serves
these tests. Concept sets are `ConceptSet`s (ids with or without descendants, exclusions), written as Circe items.
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "circe"))
import typed_cdm  # noqa: E402

from healthbench import expression as E  # noqa: E402


def toy_cdm(path, **rows) -> Path:
    """Every OMOP v5.3 table (typed as DQD says), with `rows[table]` (dicts) inserted; concepts get sensible defaults."""
    path = Path(path)
    con = duckdb.connect(str(path))
    schema = typed_cdm.omop53_schema()
    for table, cols in schema.items():
        columns = ", ".join('"' + c + '" ' + t for c, t in cols)
        con.execute(f"create table {table} ({columns})")
    for table, items in rows.items():
        names = [c for c, _ in schema[table]]
        for r in items:
            if table == "concept":
                r = {"concept_name": f"concept {r['concept_id']}", "domain_id": "Condition", "vocabulary_id": "SNOMED",
                     "concept_class_id": "Clinical Finding", "standard_concept": "S", "concept_code": str(r["concept_id"]),
                     "valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31", **r}
            unknown = set(r) - set(names)
            if unknown:
                raise KeyError(f"{table} has no columns {sorted(unknown)}")
            cols = list(r)
            con.execute(f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' * len(cols))})", [r[c] for c in cols])
    con.close()
    return path


# ---- CohortExpression -> Circe JSON ------------------------------------------------------------------------------------
_SPECIAL = {"gender_cs": "GenderCS", "first": "First", "codeset_id": "CodesetId"}


def _pascal(name: str) -> str:
    if name in _SPECIAL:
        return _SPECIAL[name]
    if name.endswith("_cs"):
        return _pascal(name[:-3]) + "CS"
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _concept(i: int) -> dict:
    return {"CONCEPT_ID": int(i), "CONCEPT_NAME": f"concept {i}", "STANDARD_CONCEPT": "S", "INVALID_REASON": "V",
            "CONCEPT_CODE": str(i), "DOMAIN_ID": "Condition", "VOCABULARY_ID": "SNOMED", "CONCEPT_CLASS_ID": "Clinical Finding"}


def _value(v):
    if isinstance(v, E.NumericRange) or isinstance(v, E.DateRange):
        out = {"Value": v.value, "Op": v.op}
        if v.extent is not None:
            out["Extent"] = v.extent
        return out
    if isinstance(v, E.TextFilter):
        return {"Text": v.text, "Op": v.op}
    if isinstance(v, E.ConceptSetSelection):
        return {"CodesetId": v.codeset_id, "IsExclusion": v.is_exclusion}
    if isinstance(v, E.Period):
        return {k: x for k, x in (("StartDate", v.start_date), ("EndDate", v.end_date)) if x is not None}
    if isinstance(v, list):
        return [_concept(x) for x in v]
    return v


def criteria(c: E.Criteria) -> dict:
    body = {}
    if c.codeset_id is not None:
        body["CodesetId"] = c.codeset_id
    if c.first:
        body["First"] = True
    for name, v in c.attrs.items():
        body[_pascal(name)] = _value(v)
    if c.date_adjustment is not None:
        d = c.date_adjustment
        body["DateAdjustment"] = {"StartWith": d.start_with, "StartOffset": d.start_offset, "EndWith": d.end_with,
                                  "EndOffset": d.end_offset}
    if c.correlated_criteria is not None:
        body["CorrelatedCriteria"] = group(c.correlated_criteria)
    return {c.kind: body}


def _bound(b: E.WindowBound) -> dict:
    return {"Coeff": b.coeff} if b.days is None else {"Days": b.days, "Coeff": b.coeff}


def window(w: E.Window) -> dict:
    return {"Start": _bound(w.start), "End": _bound(w.end), "UseIndexEnd": w.use_index_end, "UseEventEnd": w.use_event_end}


def correlated(cc: E.CorrelatedCriteria) -> dict:
    occ = {"Type": cc.occurrence.type, "Count": cc.occurrence.count, "IsDistinct": cc.occurrence.is_distinct}
    if cc.occurrence.count_column:
        occ["CountColumn"] = cc.occurrence.count_column
    out = {"Criteria": criteria(cc.criteria), "StartWindow": window(cc.start_window), "Occurrence": occ,
           "RestrictVisit": cc.restrict_visit, "IgnoreObservationPeriod": cc.ignore_observation_period}
    if cc.end_window is not None:
        out["EndWindow"] = window(cc.end_window)
    return out


def demographic(d: E.DemographicCriteria) -> dict:
    out = {}
    for f in fields(d):
        v = getattr(d, f.name)
        if v is None or v == [] or f.name in ("ons_ethnicity", "imd_quintile"):
            continue
        out[_pascal(f.name)] = _value(v)
    return out


def group(g: E.CriteriaGroup) -> dict:
    out = {"Type": g.type, "CriteriaList": [correlated(cc) for cc in g.criteria_list],
           "DemographicCriteriaList": [demographic(d) for d in g.demographic_criteria_list],
           "Groups": [group(x) for x in g.groups]}
    if g.count is not None:
        out["Count"] = g.count
    return out


def concept_set(i: int, cs) -> dict:
    items = [{"concept": _concept(c), "includeDescendants": cs.descendants, "isExcluded": False, "includeMapped": False}
             for c in cs.include]
    items += [{"concept": _concept(c), "includeDescendants": cs.descendants, "isExcluded": True, "includeMapped": False}
              for c in cs.exclude]
    return {"id": getattr(cs, "circe_id", None) if getattr(cs, "circe_id", None) is not None else i, "name": cs.name,
            "expression": {"items": items}}


def to_circe(x: E.CohortExpression) -> str:
    pc = x.primary_criteria
    out = {
        "ConceptSets": [concept_set(i, cs) for i, cs in enumerate(x.concept_sets)],
        "PrimaryCriteria": {"CriteriaList": [criteria(c) for c in pc.criteria_list],
                            "ObservationWindow": {"PriorDays": pc.observation_window.prior_days,
                                                  "PostDays": pc.observation_window.post_days},
                            "PrimaryCriteriaLimit": {"Type": pc.limit}},
        "QualifiedLimit": {"Type": x.qualified_limit}, "ExpressionLimit": {"Type": x.expression_limit},
        "InclusionRules": [{"name": r.name, "expression": group(r.expression)} for r in x.inclusion_rules],
        "CensoringCriteria": [criteria(c) for c in x.censoring_criteria],
        "CollapseSettings": {"CollapseType": "ERA", "EraPad": x.collapse_settings.era_pad},
    }
    if x.additional_criteria is not None:
        out["AdditionalCriteria"] = group(x.additional_criteria)
    s = x.end_strategy
    if isinstance(s, E.DateOffsetStrategy):
        out["EndStrategy"] = {"DateOffset": {"DateField": s.date_field, "Offset": s.offset}}
    elif isinstance(s, E.CustomEraStrategy):
        era = {"DrugCodesetId": s.drug_codeset_id, "GapDays": s.gap_days, "Offset": s.offset}
        if s.days_supply_override is not None:
            era["DaysSupplyOverride"] = s.days_supply_override
        out["EndStrategy"] = {"CustomEra": era}
    if x.censor_window is not None:
        out["CensorWindow"] = _value(x.censor_window)
    return json.dumps(out)


# ---- a small random CDM touching every table the criteria kinds read ------------------------------------------------------
CONDITIONS = [100, 101, 102, 103]   # 100 is the parent of 101 and 102 (concept_ancestor); 103 is a sibling
DRUGS = [200, 201, 202]             # 200 is the parent of 201
PROCEDURES = [300, 301]
MEASUREMENTS = [400, 401]
OBSERVATIONS = [500, 501]
VISITS = [9201, 9202, 9203]
DEVICES = [600, 601]
TYPES = [32020, 32810, 38000177]
UNITS = [8840, 8876]
VALUES = [4155142, 4155143, 45877994]
SPECIALTIES = [38004456, 38004446]
PLACES = [8717, 8756]
VOCABULARY = CONDITIONS + DRUGS + PROCEDURES + MEASUREMENTS + OBSERVATIONS + VISITS + DEVICES + TYPES + UNITS + VALUES \
    + SPECIALTIES + PLACES + [8507, 8532]


def random_rows(seed: int, n_persons: int = 40) -> dict:
    """Rows for `toy_cdm`: persons with one or two observation periods and events of every kind around them, drawn so that
    ties (same day, same concept), missing end dates, nulls and events outside observation all occur."""
    import datetime as dt
    import random
    rng = random.Random(seed)
    day0 = dt.date(2018, 1, 1)
    day = lambda lo=0, hi=1400: day0 + dt.timedelta(days=rng.randint(lo, hi))
    maybe = lambda v, p=0.2: None if rng.random() < p else v
    rows = {k: [] for k in ("concept", "concept_ancestor", "person", "observation_period", "condition_occurrence", "drug_exposure",
                            "procedure_occurrence", "measurement", "observation", "visit_occurrence", "device_exposure", "death",
                            "condition_era", "drug_era", "dose_era", "provider", "care_site")}
    rows["concept"] = [{"concept_id": c} for c in VOCABULARY]
    anc = [(c, c) for c in VOCABULARY] + [(100, 101), (100, 102), (200, 201)]
    rows["concept_ancestor"] = [{"ancestor_concept_id": a, "descendant_concept_id": d, "min_levels_of_separation": int(a != d),
                                 "max_levels_of_separation": int(a != d)} for a, d in anc]
    rows["provider"] = [{"provider_id": i, "specialty_concept_id": s} for i, s in ((1, SPECIALTIES[0]), (2, SPECIALTIES[1]), (3, None))]
    rows["care_site"] = [{"care_site_id": i, "place_of_service_concept_id": s} for i, s in ((1, PLACES[0]), (2, PLACES[1]))]
    ids = {k: 0 for k in rows}
    def nid(table):
        ids[table] += 1
        return ids[table] * 10 + rng.randint(0, 9)   # ids not in date order
    for pid in range(1, n_persons + 1):
        rows["person"].append({"person_id": pid, "gender_concept_id": rng.choice([8507, 8532]), "year_of_birth": rng.randint(1930, 2005),
                               "race_concept_id": rng.choice([0, 8527]), "ethnicity_concept_id": 0})
        a = day(0, 500)
        b = a + dt.timedelta(days=rng.randint(30, 500))
        periods = [(a, b)]
        if rng.random() < 0.4:
            c = b + dt.timedelta(days=rng.randint(2, 100))
            periods.append((c, c + dt.timedelta(days=rng.randint(10, 400))))
        for s, e in periods:
            rows["observation_period"].append({"observation_period_id": nid("observation_period"), "person_id": pid,
                                               "observation_period_start_date": s, "observation_period_end_date": e,
                                               "period_type_concept_id": rng.choice(TYPES)})
        lo, hi = (a - day0).days - 60, (periods[-1][1] - day0).days + 60
        visits = []
        for _ in range(rng.randint(0, 5)):
            s = day(lo, hi)
            vid = nid("visit_occurrence")
            visits.append((vid, s))
            rows["visit_occurrence"].append({"visit_occurrence_id": vid, "person_id": pid, "visit_concept_id": rng.choice(VISITS),
                                             "visit_start_date": s, "visit_end_date": s + dt.timedelta(days=rng.choice([0, 0, 1, 3, 12])),
                                             "visit_type_concept_id": rng.choice(TYPES), "provider_id": maybe(rng.choice([1, 2, 3])),
                                             "care_site_id": maybe(rng.choice([1, 2]))})
        linked = {}
        def visit():   # most events at a visit happen on its first day
            linked.clear()
            if not visits or rng.random() < 0.3: return None
            vid, vday = rng.choice(visits)
            linked["day"] = vday
            return vid
        for _ in range(rng.randint(0, 6)):
            v = visit()
            s = linked.pop("day", None) or day(lo, hi)
            rows["condition_occurrence"].append({"condition_occurrence_id": nid("condition_occurrence"), "person_id": pid,
                "condition_concept_id": rng.choice(CONDITIONS), "condition_start_date": s,
                "condition_end_date": maybe(s + dt.timedelta(days=rng.randint(0, 40)), 0.5), "condition_type_concept_id": rng.choice(TYPES),
                "condition_source_concept_id": rng.choice(CONDITIONS), "visit_occurrence_id": v, "provider_id": maybe(rng.choice([1, 2])),
                "stop_reason": maybe(rng.choice(["resolved", "unknown"]), 0.5), "condition_status_concept_id": maybe(rng.choice(TYPES))})
        for _ in range(rng.randint(0, 6)):
            v = visit()
            s = linked.pop("day", None) or day(lo, hi)
            rows["drug_exposure"].append({"drug_exposure_id": nid("drug_exposure"), "person_id": pid, "drug_concept_id": rng.choice(DRUGS),
                "drug_exposure_start_date": s, "drug_exposure_end_date": maybe(s + dt.timedelta(days=rng.randint(0, 60)), 0.5),
                "days_supply": maybe(rng.choice([7, 30, 90])), "quantity": maybe(rng.choice([1.0, 2.5, 30.0])), "refills": maybe(rng.randint(0, 3)),
                "drug_type_concept_id": rng.choice(TYPES), "route_concept_id": maybe(rng.choice(UNITS)), "drug_source_concept_id": rng.choice(DRUGS + [0]),
                "visit_occurrence_id": v, "stop_reason": maybe(rng.choice(["done", "adverse"]), 0.5), "dose_unit_source_value": None})
        for _ in range(rng.randint(0, 3)):
            s = day(lo, hi)
            rows["procedure_occurrence"].append({"procedure_occurrence_id": nid("procedure_occurrence"), "person_id": pid,
                "procedure_concept_id": rng.choice(PROCEDURES), "procedure_date": s, "procedure_type_concept_id": rng.choice(TYPES),
                "modifier_concept_id": maybe(rng.choice(UNITS)), "quantity": maybe(rng.randint(1, 3)), "visit_occurrence_id": visit()})
        for _ in range(rng.randint(0, 5)):
            v = visit()
            s = linked.pop("day", None) or day(lo, hi)
            rows["measurement"].append({"measurement_id": nid("measurement"), "person_id": pid, "measurement_concept_id": rng.choice(MEASUREMENTS),
                "measurement_date": s, "measurement_type_concept_id": rng.choice(TYPES), "value_as_number": maybe(round(rng.uniform(50, 200), 2)),
                "value_as_concept_id": maybe(rng.choice(VALUES)), "unit_concept_id": maybe(rng.choice(UNITS)), "range_low": maybe(80.0),
                "range_high": maybe(rng.choice([120.0, 0.0])), "operator_concept_id": None, "visit_occurrence_id": v})
        for _ in range(rng.randint(0, 4)):
            s = day(lo, hi)
            rows["observation"].append({"observation_id": nid("observation"), "person_id": pid, "observation_concept_id": rng.choice(OBSERVATIONS),
                "observation_date": s, "observation_type_concept_id": rng.choice(TYPES), "value_as_number": maybe(float(rng.randint(0, 10))),
                "value_as_string": maybe(rng.choice(["current smoker", "ex-smoker", "never"])), "value_as_concept_id": maybe(rng.choice(VALUES)),
                "qualifier_concept_id": maybe(rng.choice(UNITS)), "unit_concept_id": maybe(rng.choice(UNITS)), "visit_occurrence_id": visit()})
        for _ in range(rng.randint(0, 2)):
            s = day(lo, hi)
            rows["device_exposure"].append({"device_exposure_id": nid("device_exposure"), "person_id": pid, "device_concept_id": rng.choice(DEVICES),
                "device_exposure_start_date": s, "device_exposure_end_date": maybe(s + dt.timedelta(days=rng.randint(0, 90)), 0.5),
                "device_type_concept_id": rng.choice(TYPES), "unique_device_id": maybe(rng.choice(["AB-1", "XY-2"])), "quantity": maybe(rng.randint(1, 2)),
                "visit_occurrence_id": visit()})
        for _ in range(rng.randint(0, 2)):
            s = day(lo, hi)
            rows["condition_era"].append({"condition_era_id": nid("condition_era"), "person_id": pid, "condition_concept_id": rng.choice(CONDITIONS),
                "condition_era_start_date": s, "condition_era_end_date": s + dt.timedelta(days=rng.randint(0, 200)),
                "condition_occurrence_count": rng.randint(1, 4)})
        for _ in range(rng.randint(0, 2)):
            s = day(lo, hi)
            rows["drug_era"].append({"drug_era_id": nid("drug_era"), "person_id": pid, "drug_concept_id": rng.choice(DRUGS),
                "drug_era_start_date": s, "drug_era_end_date": s + dt.timedelta(days=rng.randint(0, 200)),
                "drug_exposure_count": rng.randint(1, 4), "gap_days": rng.randint(0, 30)})
        for _ in range(rng.randint(0, 1)):
            s = day(lo, hi)
            rows["dose_era"].append({"dose_era_id": nid("dose_era"), "person_id": pid, "drug_concept_id": rng.choice(DRUGS), "unit_concept_id": rng.choice(UNITS),
                "dose_value": rng.choice([5.0, 10.0, 12.5]), "dose_era_start_date": s, "dose_era_end_date": s + dt.timedelta(days=rng.randint(0, 100))})
        if rng.random() < 0.15:
            rows["death"].append({"person_id": pid, "death_date": day(lo + 100, hi), "death_type_concept_id": rng.choice(TYPES),
                                  "cause_concept_id": maybe(rng.choice(CONDITIONS), 0.5)})
    return rows
