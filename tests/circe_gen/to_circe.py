"""`CohortExpression` -> Circe (ATLAS) JSON, for circepy: the test-side writer of the property tests.

Written from Circe's JSON layout (PascalCase fields; concept lists as concept objects; `*CS` as `{CodesetId,
IsExclusion}`), independently of healthbench's own writer, so the expression circepy runs is the one the reference and
the engine run. The attribute names of `KINDS` are Circe's in snake_case: `condition_type_cs` -> `ConditionTypeCS`.
"""
from __future__ import annotations

import json
from dataclasses import asdict

from healthbench.expression import (KINDS, CohortExpression, ConceptSetSelection, CorrelatedCriteria, Criteria,
                                    CriteriaGroup, CustomEraStrategy, DateOffsetStrategy, DateRange,
                                    DemographicCriteria, NumericRange, Period, TextFilter, Window)


def pascal(name: str) -> str:
    "Circe's field name for a snake_case attribute: `condition_type_cs` -> `ConditionTypeCS`."
    parts = name.split("_")
    return "".join("CS" if p == "cs" else p[:1].upper() + p[1:] for p in parts)


def _concept(cid: int) -> dict:
    return {"CONCEPT_ID": int(cid), "CONCEPT_NAME": f"concept {cid}", "STANDARD_CONCEPT": "S", "INVALID_REASON": "V",
            "CONCEPT_CODE": str(cid), "DOMAIN_ID": "", "VOCABULARY_ID": "", "CONCEPT_CLASS_ID": ""}


def _numeric(r: NumericRange) -> dict:
    out = {"Value": r.value, "Op": r.op}
    if r.extent is not None:
        out["Extent"] = r.extent
    return out


def _date(r: DateRange) -> dict:
    out = {"Value": r.value, "Op": r.op}
    if r.extent is not None:
        out["Extent"] = r.extent
    return out


def _attr(kind: str, name: str, value):
    akind, _ = KINDS[kind].attrs[name]
    if akind == "concepts":
        return [_concept(c) for c in value]
    if akind == "cs":
        sel = value if isinstance(value, ConceptSetSelection) else ConceptSetSelection(**value)
        return {"CodesetId": sel.codeset_id, "IsExclusion": sel.is_exclusion}
    if akind == "codeset":
        return int(value)
    if akind == "numeric":
        return _numeric(value)
    if akind == "date":
        return _date(value)
    if akind == "text":
        return {"Text": value.text, "Op": value.op}
    if akind == "period":
        out = {}
        if value.start_date is not None:
            out["StartDate"] = value.start_date
        if value.end_date is not None:
            out["EndDate"] = value.end_date
        return out
    if akind == "flag":
        return bool(value)
    raise ValueError(f"{kind}.{name}: unknown attribute kind {akind}")


def criteria(c: Criteria) -> dict:
    body = {}
    if c.codeset_id is not None:
        body["CodesetId"] = c.codeset_id
    if c.first:
        body["First"] = True
    for name, value in (c.attrs or {}).items():
        if value is not None:
            body[pascal(name)] = _attr(c.kind, name, value)
    if c.date_adjustment is not None:
        a = c.date_adjustment
        body["DateAdjustment"] = {"StartWith": a.start_with, "StartOffset": a.start_offset, "EndWith": a.end_with,
                                  "EndOffset": a.end_offset}
    if c.correlated_criteria is not None:
        body["CorrelatedCriteria"] = group(c.correlated_criteria)
    return {c.kind: body}


def _window(w: Window) -> dict:
    out = {"Start": {"Coeff": w.start.coeff}, "End": {"Coeff": w.end.coeff},
           "UseIndexEnd": bool(w.use_index_end), "UseEventEnd": bool(w.use_event_end)}
    if w.start.days is not None:
        out["Start"]["Days"] = w.start.days
    if w.end.days is not None:
        out["End"]["Days"] = w.end.days
    return out


def correlated(cc: CorrelatedCriteria) -> dict:
    occ = {"Type": cc.occurrence.type, "Count": cc.occurrence.count, "IsDistinct": bool(cc.occurrence.is_distinct)}
    if cc.occurrence.count_column is not None:
        occ["CountColumn"] = cc.occurrence.count_column
    out = {"Criteria": criteria(cc.criteria), "StartWindow": _window(cc.start_window), "Occurrence": occ,
           "RestrictVisit": bool(cc.restrict_visit), "IgnoreObservationPeriod": bool(cc.ignore_observation_period)}
    if cc.end_window is not None:
        out["EndWindow"] = _window(cc.end_window)
    return out


def demographic(d: DemographicCriteria) -> dict:
    out = {}
    if d.age is not None:
        out["Age"] = _numeric(d.age)
    for name in ("gender", "race", "ethnicity"):
        if getattr(d, name):
            out[pascal(name)] = [_concept(c) for c in getattr(d, name)]
    for name in ("gender_cs", "race_cs", "ethnicity_cs"):
        sel = getattr(d, name, None)
        if sel is not None:
            out[pascal(name)] = {"CodesetId": sel.codeset_id, "IsExclusion": sel.is_exclusion}
    if d.occurrence_start_date is not None:
        out["OccurrenceStartDate"] = _date(d.occurrence_start_date)
    if d.occurrence_end_date is not None:
        out["OccurrenceEndDate"] = _date(d.occurrence_end_date)
    if d.ons_ethnicity or d.imd_quintile:
        raise ValueError("ons_ethnicity and imd_quintile are healthbench extensions that Circe JSON cannot hold")
    return out


def group(g: CriteriaGroup) -> dict:
    out = {"Type": g.type, "CriteriaList": [correlated(cc) for cc in g.criteria_list],
           "DemographicCriteriaList": [demographic(d) for d in g.demographic_criteria_list],
           "Groups": [group(s) for s in g.groups]}
    if g.count is not None:
        out["Count"] = g.count
    return out


def concept_set(cs, position: int) -> dict:
    from reference_circe import concept_set_items    # the same reading of a concept set as the reference's
    cid, items = concept_set_items(cs, position)
    return {"id": cid, "name": getattr(cs, "name", "") or f"set {cid}", "expression": {"items": [
        {"concept": _concept(i.concept_id), "isExcluded": i.is_excluded, "includeDescendants": i.include_descendants,
         "includeMapped": i.include_mapped} for i in items]}}


def to_circe(x: CohortExpression) -> dict:
    "The Circe JSON (as a dict) of expression `x`."
    pc = x.primary_criteria
    out = {
        "ConceptSets": [concept_set(cs, i) for i, cs in enumerate(x.concept_sets)],
        "PrimaryCriteria": {"CriteriaList": [criteria(c) for c in pc.criteria_list],
                            "ObservationWindow": {"PriorDays": pc.observation_window.prior_days,
                                                  "PostDays": pc.observation_window.post_days},
                            "PrimaryCriteriaLimit": {"Type": pc.limit}},
        "QualifiedLimit": {"Type": x.qualified_limit},
        "ExpressionLimit": {"Type": x.expression_limit},
        "InclusionRules": [{"name": r.name, "description": r.description, "expression": group(r.expression)}
                           for r in x.inclusion_rules],
        "CensoringCriteria": [criteria(c) for c in x.censoring_criteria],
        "CollapseSettings": {"CollapseType": x.collapse_settings.collapse_type,
                             "EraPad": x.collapse_settings.era_pad},
    }
    if x.additional_criteria is not None:
        out["AdditionalCriteria"] = group(x.additional_criteria)
    s = x.end_strategy
    if isinstance(s, DateOffsetStrategy):
        out["EndStrategy"] = {"DateOffset": {"DateField": s.date_field, "Offset": s.offset}}
    elif isinstance(s, CustomEraStrategy):
        era = {"DrugCodesetId": s.drug_codeset_id, "GapDays": s.gap_days, "Offset": s.offset}
        if s.days_supply_override is not None:
            era["DaysSupplyOverride"] = s.days_supply_override
        out["EndStrategy"] = {"CustomEra": era}
    if x.censor_window is not None:
        cw = {}
        if x.censor_window.start_date is not None:
            cw["StartDate"] = x.censor_window.start_date
        if x.censor_window.end_date is not None:
            cw["EndDate"] = x.censor_window.end_date
        out["CensorWindow"] = cw
    return out


def to_circe_json(x: CohortExpression) -> str:
    return json.dumps(to_circe(x))
