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
    return {"id": getattr(cs, "id", None) if getattr(cs, "id", None) is not None else i, "name": cs.name,
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
