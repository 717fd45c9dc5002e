"""A plain-Python reference evaluator of OHDSI Circe's cohort semantics, for `healthbench.expression.CohortExpression`.

The second opinion the ibis engine (`healthbench.engine`, chapter 05c) is tested against, the way OpenSAFELY's ehrQL
keeps its SQL engines honest against an in-memory engine. It is written from Circe's semantics — OHDSI's Circe
(Java, `circe-be`), its Python port `ohdsi-circepy` (whose SQL templates spell the pipeline out) and
`tests/circe/README.md` — and never from the engine's code. It reads nothing of healthbench but the model and its
`KINDS` table (the contract between the engine, this evaluator and the ATLAS reader/writer).

Clarity over speed: the CDM's rows become Python dicts with `datetime.date` values, and every stage is a loop over
persons and events, with SQL's NULL semantics written out (`None` never satisfies a comparison, `IN` or `NOT IN`).

    result = evaluate(expression, tables)        # tables: {"person": DataFrame, "condition_occurrence": ...}
    result.rows                                  # subject_id, cohort_start_date, cohort_end_date (sorted)
    result.attrition                             # ATLAS's attrition, the columns tests/circe/compare.py gives
    result.stages                                # {stage: {"records": n, "persons": n}}, named as circepy's tables
    result.ambiguous                             # why the answer depends on an order Circe leaves undetermined

The pipeline (Circe's `generateCohort.sql`):

1. **Codesets**: each concept set's concepts from `concept`, `concept_ancestor` and `concept_relationship`.
2. **Primary events**: every primary criteria's events (its concept set, `First`, attributes, nested correlated
   criteria), in an observation period containing their start, with `PriorDays` before and `PostDays` after in it;
   numbered per person by (start, event id) and limited to the first/last when `PrimaryCriteriaLimit` is not All.
3. **Qualified events**: `AdditionalCriteria` (a criteria group evaluated on each primary event), then the
   `QualifiedLimit` — applied only when there are additional criteria.
4. **Inclusion rules**: one criteria group per rule, evaluated on each qualified event; an event's mask has bit k
   set when rule k holds. ATLAS attrition: by event (all qualified events) and by person (each person's best event).
5. **Included events**: events with every bit set, limited by `ExpressionLimit`.
6. **Ends**: the end strategy (date offset clipped at the observation period's end, or the custom drug era), the
   observation period's end (when the strategy is not a date offset), the first censoring event on/after the start
   and within the observation period; the earliest end on/after the start wins (no end: no row).
7. **Era collapse** with `EraPad` (0 when absent), then the censor window.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import pandas as pd

from healthbench.expression import (KINDS, CohortExpression, ConceptSetSelection, CorrelatedCriteria, Criteria,
                                    CriteriaGroup, CustomEraStrategy, DateOffsetStrategy, DateRange,
                                    DemographicCriteria, NumericRange, Period, TextFilter, Window)

DAY = dt.timedelta(days=1)
FAR_FUTURE = dt.date(2099, 12, 31)
ROW_COLUMNS = ["subject_id", "cohort_start_date", "cohort_end_date"]
ATTRITION_COLUMNS = ["step", "rule_sequence", "name", "persons", "records", "rule_persons", "rule_records",
                     "gain_persons", "gain_records"]
ABNORMAL_VALUE_CONCEPTS = {4155142, 4155143}   # Circe's Measurement.Abnormal: "abnormal", "abnormally high/low"
IMD_CONCEPT = 35812882                         # healthbench's UK extension: IMD quintile as an observation

# Numeric attributes Circe compares as decimals (SQL `%.4f`); every other NumericRange is an integer range, and Circe
# truncates its values (`range.value.intValue()`): `Age gte 17.9` is `>= 17`.
DECIMAL_ATTRIBUTES = {
    ("Measurement", "value_as_number"), ("Measurement", "range_low"), ("Measurement", "range_high"),
    ("Measurement", "range_low_ratio"), ("Measurement", "range_high_ratio"), ("Observation", "value_as_number"),
    ("DrugExposure", "quantity"), ("DrugExposure", "effective_drug_dose"), ("DoseEra", "dose_value"),
    ("Specimen", "quantity")}

# Where a kind's events end when its table has no end date, or when the end date may be missing (Circe's templates).
def _natural_end(kind: str, row: dict, start: dt.date | None, end_col: str | None):
    if start is None:
        return None
    end = row.get(end_col) if end_col else None
    if kind in ("ConditionOccurrence", "DeviceExposure"):
        return end if end is not None else start + DAY
    if kind == "DrugExposure":
        if end is not None:
            return end
        if row.get("days_supply") is not None:
            return start + dt.timedelta(days=int(row["days_supply"]))
        return start + DAY
    if kind in ("ProcedureOccurrence", "Measurement", "Observation", "Death", "Specimen"):
        return start + DAY
    return end          # visits, visit details, observation and payer plan periods, eras: the end date as stored


# ---------------------------------------------------------------------------------------------------- concept sets
@dataclass
class Item:
    "One item of a Circe concept set expression, as this evaluator reads it."
    concept_id: int
    include_descendants: bool = False
    is_excluded: bool = False
    include_mapped: bool = False


def concept_set_items(cs, position: int) -> tuple[int, list[Item]]:
    """The Circe id and items of a concept set: a `healthbench.concepts.ConceptSet` (its `circe_id`, else its position
    in the expression; its `items`, else one item per included and per excluded id with the set's `descendants`), or
    a concept set as Circe JSON (`{"id", "expression": {"items": [{"concept": {"CONCEPT_ID"}, ...}]}}`)."""
    if isinstance(cs, dict):
        items = [Item(int(it["concept"]["CONCEPT_ID"]), bool(it.get("includeDescendants")),
                      bool(it.get("isExcluded")), bool(it.get("includeMapped")))
                 for it in (cs.get("expression") or {}).get("items", [])]
        return int(cs["id"]), items
    if getattr(cs, "codes", None) and any(cs.codes.values()):
        raise NotImplementedError("concept sets given by vocabulary codes: resolve them to concept ids first")
    cid = getattr(cs, "circe_id", None)
    cid = position if cid is None else cid
    if getattr(cs, "items", None):
        return int(cid), [Item(int(i.concept_id), bool(i.include_descendants), bool(i.is_excluded),
                               bool(getattr(i, "include_mapped", False))) for i in cs.items]
    items = [Item(c, bool(cs.descendants)) for c in cs.include]
    items += [Item(c, bool(cs.descendants), is_excluded=True) for c in cs.exclude]
    return int(cid), items


def resolve_codesets(cdm: "Cdm", concept_sets: list) -> dict[int, set[int]]:
    """Circe's #Codesets: for each concept set, the concepts of its included items minus those of its excluded items.

    An item's concepts: itself if it is in `concept` (valid or not); with descendants, every `descendant_concept_id`
    of it in `concept_ancestor` that is in `concept` with `invalid_reason` null (the root need not be in `concept`);
    with mapped, every `concept_id_1` of a valid 'Maps to' relationship into those (item and, with descendants, its
    descendants). Circe builds the mapped part only for a set that has at least one plain item of the same polarity."""
    concept = {r["concept_id"]: r for r in cdm.rows("concept")}
    ancestors = cdm.rows("concept_ancestor")
    relationships = cdm.rows("concept_relationship")

    def plain_and_descendants(plain: list[int], with_descendants: list[int]) -> set[int]:
        out = {c for c in plain if c in concept}
        roots = set(with_descendants)
        for a in ancestors:
            d = a["descendant_concept_id"]
            if a["ancestor_concept_id"] in roots and d in concept and concept[d].get("invalid_reason") is None:
                out.add(d)
        return out

    def polarity(items: list[Item]) -> set[int]:
        if not items:
            return set()
        out = plain_and_descendants([i.concept_id for i in items],
                                    [i.concept_id for i in items if i.include_descendants])
        mapped = [i for i in items if i.include_mapped]
        if mapped:
            targets = plain_and_descendants([i.concept_id for i in mapped],
                                            [i.concept_id for i in mapped if i.include_descendants])
            out |= {r["concept_id_1"] for r in relationships if r.get("relationship_id") == "Maps to"
                    and r.get("invalid_reason") is None and r["concept_id_2"] in targets}
        return out

    codesets = {}
    for position, cs in enumerate(concept_sets):
        cid, items = concept_set_items(cs, position)
        codesets[cid] = polarity([i for i in items if not i.is_excluded]) - polarity([i for i in items if i.is_excluded])
    return codesets


# ------------------------------------------------------------------------------------------------------------ CDM
def _plain(v):
    "A DataFrame cell as plain Python: None for NA, int for whole numbers stored as floats in id columns, date for dates."
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is pd.NaT:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    return v


def _as_date(v):
    if isinstance(v, dt.datetime):
        return None if v is pd.NaT else v.date()
    if isinstance(v, dt.date):
        return v
    v = _plain(v)
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, int):          # numpy datetime64 -> .item() gives ns since epoch
        return pd.Timestamp(v).date()
    return pd.Timestamp(v).date()


class Cdm:
    "The CDM tables as lists of dicts; columns named `*_date` hold `datetime.date` (or None)."

    def __init__(self, tables: dict[str, pd.DataFrame]):
        self._tables = {k.lower(): v for k, v in tables.items()}
        self._rows: dict[str, list[dict]] = {}

    def rows(self, table: str) -> list[dict]:
        if table not in self._rows:
            df = self._tables.get(table)
            out = []
            if df is not None:
                cols = [c.lower() for c in df.columns]
                for values in df.itertuples(index=False, name=None):
                    row = {}
                    for c, v in zip(cols, values):
                        row[c] = _as_date(v) if c.endswith("_date") else _plain(v)
                    out.append(row)
            self._rows[table] = out
        return self._rows[table]

    def by_id(self, table: str, id_col: str) -> dict:
        key = f"{table}.{id_col}"
        if key not in self._rows:
            self._rows[key] = {r[id_col]: r for r in self.rows(table) if r.get(id_col) is not None}
        return self._rows[key]

    def observation_periods(self, person_id) -> list[dict]:
        key = "__op_by_person"
        if key not in self._rows:
            by = {}
            for r in self.rows("observation_period"):
                by.setdefault(r["person_id"], []).append(r)
            self._rows[key] = by
        return self._rows[key].get(person_id, [])


# ------------------------------------------------------------------------------------------------ value filters
def _year(d):
    return d.year if d is not None else None


def _numeric_ok(v, rng: NumericRange, decimal: bool) -> bool:
    "Circe's NumericRange on a value (None fails, as SQL's NULL)."
    if rng is None or rng.op is None:
        return True
    if v is None:
        return False
    cast = (lambda x: round(float(x), 4)) if decimal else (lambda x: int(x))
    return _compare(v, rng.op, cast(rng.value), None if rng.extent is None else cast(rng.extent))


def _date_ok(v, rng: DateRange) -> bool:
    if v is None:
        return False
    return _compare(v, rng.op, dt.date.fromisoformat(rng.value),
                    None if rng.extent is None else dt.date.fromisoformat(rng.extent))


def _compare(v, op: str, a, b) -> bool:
    if op.endswith("bt"):
        inside = a <= v <= b
        return not inside if op.startswith("!") else inside
    return {"lt": v < a, "lte": v <= a, "eq": v == a, "!eq": v != a, "neq": v != a, "gt": v > a, "gte": v >= a}[op]


def _text_ok(v, f: TextFilter) -> bool:
    "Circe's TextFilter: SQL LIKE 'text%', '%text%' or '%text' (NOT LIKE with '!'); a NULL column never matches."
    if v is None or f.text is None:
        return False
    op, text = f.op, f.text
    negate = op.startswith("!")
    base = op.lstrip("!")
    hit = {"startsWith": v.startswith(text), "endsWith": v.endswith(text), "contains": text in v,
           "eq": v == text}[base]
    return (not hit) if negate else hit


def _in(v, ids) -> bool:
    return v is not None and v in ids


def _not_in(v, ids) -> bool:
    # SQL: x NOT IN (empty) is true even for NULL x; x NOT IN (...) is unknown for NULL x.
    if not ids:
        return True
    return v is not None and v not in ids


def _concept_ids(values) -> list[int]:
    "A concept list attribute: ints, or Circe Concept dicts/objects."
    out = []
    for v in values or []:
        if isinstance(v, dict):
            v = v.get("CONCEPT_ID", v.get("concept_id"))
        elif hasattr(v, "concept_id"):
            v = v.concept_id
        out.append(int(v))
    return out


# -------------------------------------------------------------------------------------------------------- events
@dataclass
class Event:
    """An event of a criteria (or an index event: then `op_start`/`op_end` are its observation period's)."""
    person_id: int
    event_id: int
    start: dt.date
    end: dt.date | None
    visit_id: int | None
    sort_date: dt.date
    domain_concept: int | None = None
    op_start: dt.date | None = None
    op_end: dt.date | None = None
    row: dict = field(default_factory=dict, repr=False)

    def column(self, name: str):
        "A Circe CriteriaColumn (Occurrence.CountColumn) of this event."
        name = (name or "DOMAIN_CONCEPT").upper()
        if name == "DOMAIN_CONCEPT":
            return self.domain_concept
        if name == "START_DATE":
            return self.start
        if name == "END_DATE":
            return self.end
        if name == "VISIT_ID":
            return self.visit_id
        if name == "DURATION":
            return None if self.end is None else (self.end - self.start).days
        return self.row.get(name.lower())


class Evaluator:
    "Circe's pipeline on one CDM; `evaluate()` is the entry point."

    def __init__(self, expression: CohortExpression, cdm: Cdm):
        self.x = expression
        self.cdm = cdm
        self.codesets = resolve_codesets(cdm, expression.concept_sets)
        self.persons = cdm.by_id("person", "person_id")
        self.ambiguous: list[str] = []

    def codeset(self, codeset_id) -> set[int]:
        return self.codesets.get(int(codeset_id), set()) if codeset_id is not None else set()

    # ---- one criteria's events ---------------------------------------------------------------------------------
    def criteria_events(self, c: Criteria) -> list[Event]:
        """The events of criteria `c`: its table's rows in its concept sets, the first per person if `first`, with
        Circe's start and end (date adjustment, user-defined period), its attributes, then its correlated criteria."""
        if c.kind not in KINDS:
            raise ValueError(f"unknown criteria kind {c.kind!r}")
        k = KINDS[c.kind]
        attrs = dict(c.attrs or {})
        unknown = set(attrs) - set(k.attrs)
        if unknown:
            raise ValueError(f"{c.kind} has no attributes {sorted(unknown)}")
        rows = list(self.cdm.rows(k.table))

        # Concept sets are joined in Circe's inner query, before First: the domain concept and the *SourceConcept.
        if k.concept and c.codeset_id is not None:
            wanted = self.codeset(c.codeset_id)
            rows = [r for r in rows if _in(r.get(k.concept), wanted)]
        for name, value in attrs.items():
            akind, col = k.attrs[name]
            if akind == "codeset" and value is not None and self._joined_codeset(c.kind, col):
                wanted = self.codeset(value)
                rows = [r for r in rows if _in(r.get(col), wanted)]

        if c.first and c.kind != "Death":
            rows = self._first_rows(c.kind, rows)

        events = []
        for r in rows:
            e = self._event(c, r)
            if e is not None and self._attributes_hold(c.kind, attrs, e):
                events.append(e)

        if c.correlated_criteria is not None:
            events = self._with_correlated(events, c.correlated_criteria)
        return events

    @staticmethod
    def _joined_codeset(kind: str, col: str) -> bool:
        "The *SourceConcept codesets Circe joins with the domain's codeset (payer plan concepts are WHERE filters)."
        return kind != "PayerPlanPeriod" and not col.startswith("@")

    @staticmethod
    def _first_rows(kind: str, rows: list[dict]) -> list[dict]:
        "The first row per person by (start date, event id) as stored (observation periods: by start date alone)."
        k = KINDS[kind]
        best = {}
        for r in rows:
            if r.get(k.start) is None:
                continue
            key = (r[k.start],) if kind == "ObservationPeriod" else (r[k.start], r.get(k.id) or 0)
            p = r["person_id"]
            if p not in best or key < best[p][0]:
                best[p] = (key, r)
        return [r for _, r in best.values()]

    def _event(self, c: Criteria, r: dict) -> Event | None:
        k = KINDS[c.kind]
        start = r.get(k.start)
        if start is None:
            return None
        end = _natural_end(c.kind, r, start, k.end)
        if c.date_adjustment is not None:
            a = c.date_adjustment
            base_start = start if str(a.start_with).upper() == "START_DATE" else end
            base_end = start if str(a.end_with).upper() == "START_DATE" else end
            start = None if base_start is None else base_start + dt.timedelta(days=a.start_offset)
            end = None if base_end is None else base_end + dt.timedelta(days=a.end_offset)
            if start is None:
                return None
        event_id = r["person_id"] if c.kind == "Death" else r.get(k.id)
        if c.kind == "Death":
            concept = r.get(k.concept) if r.get(k.concept) is not None else 0
        elif c.kind == "ObservationPeriod":
            concept = r.get("period_type_concept_id")
        else:
            concept = r.get(k.concept) if k.concept else None
        e = Event(r["person_id"], event_id, start, end, r.get(k.visit) if k.visit else None, start, concept, row=r)
        return e

    def _value(self, kind: str, col: str, e: Event):
        "The value an attribute filters: a column of the event's row, of a joined table, or a derived value."
        r = e.row
        if col == "@start":
            return e.start
        if col == "@end":
            return e.end
        if col in ("@age", "@age_end"):
            person = self.persons.get(e.person_id)
            yob = person.get("year_of_birth") if person else None
            d = e.start if col == "@age" else e.end
            return None if yob is None or d is None else d.year - int(yob)
        if col == "@length":
            return None if e.end is None else (e.end - e.start).days
        if col in ("@ratio_low", "@ratio_high"):
            v, bound = r.get("value_as_number"), r.get("range_low" if col == "@ratio_low" else "range_high")
            return None if v is None or bound is None or bound == 0 else v / bound
        table, _, column = col.partition(".")
        if not column:
            return r.get(col)
        if table == "person":
            joined = self.persons.get(e.person_id)
        elif table == "provider":
            joined = self.cdm.by_id("provider", "provider_id").get(r.get("provider_id"))
        elif table == "visit_occurrence":
            joined = self.cdm.by_id("visit_occurrence", "visit_occurrence_id").get(r.get("visit_occurrence_id"))
            if joined is not None and joined.get("person_id") != e.person_id:
                joined = None
        elif table == "care_site":
            joined = self.cdm.by_id("care_site", "care_site_id").get(r.get("care_site_id"))
        else:
            raise ValueError(f"{kind}: cannot read {col}")
        return None if joined is None else joined.get(column)

    def _attributes_hold(self, kind: str, attrs: dict, e: Event) -> bool:
        k = KINDS[kind]
        # the user-defined period goes last: it replaces the event's dates, which the other attributes read as stored
        ordered = sorted(attrs.items(), key=lambda kv: k.attrs[kv[0]][0] == "period")
        for name, value in ordered:
            akind, col = k.attrs[name]
            if value is None:
                continue
            if akind == "concepts":
                ids = _concept_ids(value)
                if not ids:
                    continue
                v = self._value(kind, col, e)
                if attrs.get(f"{name}_exclude"):
                    if not _not_in(v, set(ids)):
                        return False
                elif not _in(v, set(ids)):
                    return False
            elif akind == "cs":
                sel = value if isinstance(value, ConceptSetSelection) else ConceptSetSelection(**value)
                v = self._value(kind, col, e)
                ok = _not_in(v, self.codeset(sel.codeset_id)) if sel.is_exclusion else _in(v, self.codeset(sel.codeset_id))
                if not ok:
                    return False
            elif akind == "codeset":
                if col == "@location":
                    if not self._in_location_region(e, value):
                        return False
                elif not self._joined_codeset(kind, col) and not _in(e.row.get(col), self.codeset(value)):
                    return False
            elif akind == "numeric":
                if not _numeric_ok(self._value(kind, col, e), value, (kind, name) in DECIMAL_ATTRIBUTES):
                    return False
            elif akind == "date":
                if not _date_ok(self._value(kind, col, e), value):
                    return False
            elif akind == "text":
                if not _text_ok(self._value(kind, col, e), value):
                    return False
            elif akind == "period":
                if not self._user_defined_period(e, value):
                    return False
            elif akind == "flag":
                if col == "@abnormal" and value and not self._abnormal(e):
                    return False
                # the *_exclude flags modify their concept list (above)
            else:
                raise ValueError(f"{kind}.{name}: unknown attribute kind {akind!r}")
        return True

    @staticmethod
    def _abnormal(e: Event) -> bool:
        v, lo, hi = e.row.get("value_as_number"), e.row.get("range_low"), e.row.get("range_high")
        return ((v is not None and lo is not None and v < lo) or (v is not None and hi is not None and v > hi)
                or _in(e.row.get("value_as_concept_id"), ABNORMAL_VALUE_CONCEPTS))

    @staticmethod
    def _user_defined_period(e: Event, p: Period) -> bool:
        """Circe's UserDefinedPeriod (observation and payer plan periods): the period must contain each given date,
        and the event then starts (ends) on the given start (end) date."""
        for d in (p.start_date, p.end_date):
            if d is not None:
                d = dt.date.fromisoformat(d)
                if e.end is None or not (e.start <= d <= e.end):
                    return False
        if p.start_date is not None:
            e.start = dt.date.fromisoformat(p.start_date)
        if p.end_date is not None:
            e.end = dt.date.fromisoformat(p.end_date)
        return True

    def _in_location_region(self, e: Event, codeset_id) -> bool:
        "A visit's care site located (location_history, CARE_SITE, covering the visit) in a region of the codeset."
        wanted = self.codeset(codeset_id)
        locations = self.cdm.by_id("location", "location_id")
        for h in self.cdm.rows("location_history"):
            if h.get("domain_id") != "CARE_SITE" or h.get("entity_id") != e.row.get("care_site_id"):
                continue
            if h.get("start_date") is None or e.row.get(KINDS["VisitOccurrence"].start) is None:
                continue
            visit_start, visit_end = e.row.get("visit_start_date"), e.row.get("visit_end_date")
            if visit_start is None or visit_end is None:
                continue
            if visit_start >= h["start_date"] and visit_end <= (h.get("end_date") or FAR_FUTURE):
                loc = locations.get(h.get("location_id"))
                if loc is not None and _in(loc.get("region_concept_id"), wanted):
                    return True
        return False

    def _with_correlated(self, events: list[Event], group: CriteriaGroup) -> list[Event]:
        """A criteria's own correlated criteria: its events are index events, each in the observation period that
        contains its start (an event in none is dropped), and those meeting the group are kept."""
        index = []
        for e in events:
            for op in self.cdm.observation_periods(e.person_id):
                s, t = op["observation_period_start_date"], op["observation_period_end_date"]
                if s is not None and t is not None and s <= e.start <= t:
                    index.append(_replace(e, op_start=s, op_end=t))
        keep = self.group_holds(group, index)
        return [e for e, ok in zip(index, keep) if ok]

    # ---- criteria groups ---------------------------------------------------------------------------------------
    def group_holds(self, g: CriteriaGroup, index: list[Event]) -> list[bool]:
        "For each index event, whether criteria group `g` holds (Circe's ALL, ANY, AT_LEAST n, AT_MOST n)."
        members = ([self.correlated_holds(cc, index) for cc in g.criteria_list]
                   + [self.demographic_holds(d, index) for d in g.demographic_criteria_list]
                   + [self.group_holds(sub, index) for sub in g.groups])
        if not members:
            return [True] * len(index)
        out = []
        kind = (g.type or "ALL").upper()
        for i in range(len(index)):
            n = sum(1 for m in members if m[i])
            if kind == "ALL":
                out.append(n == len(members))
            elif kind == "ANY":
                out.append(n > 0)
            elif kind == "AT_LEAST":
                out.append(n >= (g.count or 0))
            elif kind == "AT_MOST":
                out.append(n <= (g.count or 0))
            else:
                raise ValueError(f"unknown criteria group type {g.type!r}")
        return out

    def correlated_holds(self, cc: CorrelatedCriteria, index: list[Event]) -> list[bool]:
        "Count the criteria's events in the windows of each index event and compare with the occurrence."
        by_person: dict = {}
        for a in self.criteria_events(cc.criteria):
            by_person.setdefault(a.person_id, []).append(a)
        occ = cc.occurrence
        out = []
        for p in index:
            hits = [a for a in by_person.get(p.person_id, []) if self._in_windows(cc, p, a)]
            if occ.is_distinct:
                n = len({v for v in (a.column(occ.count_column) for a in hits) if v is not None})
            else:
                n = len(hits)
            out.append({0: n == occ.count, 1: n <= occ.count, 2: n >= occ.count}[occ.type])
        return out

    @staticmethod
    def _in_windows(cc: CorrelatedCriteria, p: Event, a: Event) -> bool:
        check_op = not cc.ignore_observation_period
        if check_op and not (p.op_start <= a.start <= p.op_end):
            return False
        for w, default_event_end in ((cc.start_window, False), (cc.end_window, True)):
            if w is None:
                continue
            index_date = p.end if w.use_index_end else p.start
            use_event_end = w.use_event_end if w.use_event_end is not None else default_event_end
            event_date = a.end if use_event_end else a.start
            for bound, is_lower in ((w.start, True), (w.end, False)):
                if bound is not None and bound.days is not None:
                    if index_date is None:
                        return False
                    limit = index_date + dt.timedelta(days=bound.coeff * bound.days)
                elif check_op:
                    # an unbounded side is the observation period: its start before the index, its end after
                    limit = p.op_start if (bound is not None and bound.coeff == -1) else p.op_end
                else:
                    continue
                if event_date is None:
                    return False
                if is_lower and not event_date >= limit:
                    return False
                if not is_lower and not event_date <= limit:
                    return False
        if cc.restrict_visit and not (a.visit_id is not None and p.visit_id is not None and a.visit_id == p.visit_id):
            return False
        return True

    def demographic_holds(self, d: DemographicCriteria, index: list[Event]) -> list[bool]:
        out = []
        for e in index:
            person = self.persons.get(e.person_id)
            if person is None:
                out.append(False)
                continue
            ok = True
            if d.age is not None:
                yob = person.get("year_of_birth")
                ok &= _numeric_ok(None if yob is None else e.start.year - int(yob), d.age, False)
            for ids, col in ((d.gender, "gender_concept_id"), (d.race, "race_concept_id"),
                             (d.ethnicity, "ethnicity_concept_id")):
                if ids:
                    ok &= _in(person.get(col), set(_concept_ids(ids)))
            for attr, col in (("gender_cs", "gender_concept_id"), ("race_cs", "race_concept_id"),
                              ("ethnicity_cs", "ethnicity_concept_id")):
                sel = getattr(d, attr, None)
                if sel is not None:
                    v = person.get(col)
                    ok &= _not_in(v, self.codeset(sel.codeset_id)) if sel.is_exclusion else _in(v, self.codeset(sel.codeset_id))
            if d.occurrence_start_date is not None:
                ok &= _date_ok(e.start, d.occurrence_start_date)
            if d.occurrence_end_date is not None:
                ok &= _date_ok(e.end, d.occurrence_end_date)
            if d.ons_ethnicity:
                ok &= _in(person.get("race_source_value"), set(d.ons_ethnicity))
            if d.imd_quintile:
                ok &= self._imd_at(e) in {float(q) for q in d.imd_quintile}
            out.append(bool(ok))
        return out

    def _imd_at(self, e: Event):
        "healthbench's IMD quintile: the latest IMD observation on or before the index start (the smallest on ties)."
        found = [r for r in self.cdm.rows("observation") if r["person_id"] == e.person_id
                 and IMD_CONCEPT in (r.get("observation_concept_id"), r.get("observation_source_concept_id"))
                 and r.get("observation_date") is not None and r["observation_date"] <= e.start]
        if not found:
            return None
        last = max(r["observation_date"] for r in found)
        values = [float(r["value_as_number"]) for r in found if r["observation_date"] == last
                  and r.get("value_as_number") is not None]
        return min(values) if values else None

    # ---- the pipeline ------------------------------------------------------------------------------------------
    def primary_events(self) -> list[Event]:
        pc = self.x.primary_criteria
        candidates = []
        for c in pc.criteria_list:
            for e in self.criteria_events(c):
                for op in self.cdm.observation_periods(e.person_id):
                    s, t = op["observation_period_start_date"], op["observation_period_end_date"]
                    if s is None or t is None or not (s <= e.start <= t):
                        continue
                    ow = pc.observation_window
                    if s + dt.timedelta(days=ow.prior_days) <= e.start and e.start + dt.timedelta(days=ow.post_days) <= t:
                        candidates.append(_replace(e, op_start=s, op_end=t))
        by_person: dict = {}
        for e in candidates:
            by_person.setdefault(e.person_id, []).append(e)
        limit = (pc.limit or "All").upper()
        out = []
        for person, evs in by_person.items():
            # Circe numbers them by (sort date, the domain's event id), descending dates for Last
            evs.sort(key=lambda e: (-e.sort_date.toordinal() if limit == "LAST" else e.sort_date.toordinal(), e.event_id))
            self._check_ties(evs, lambda e: (e.sort_date, e.event_id), "primary events", limit != "ALL")
            numbered = [_replace(e, event_id=i + 1) for i, e in enumerate(evs)]
            out.extend(numbered if limit == "ALL" else numbered[:1])
        return out

    def _check_ties(self, ordered: list[Event], key, stage: str, limited: bool):
        "Record when a First/Last limit picks between events Circe's SQL leaves in no determined order."
        if not limited or len(ordered) < 2:
            return
        first = ordered[0]
        for other in ordered[1:]:
            if key(other) != key(first):
                break
            if _signature(other) != _signature(first):
                self.ambiguous.append(f"{stage}: person {first.person_id} has tied events on {first.start}")
                return

    def qualified_events(self, primary: list[Event]) -> list[Event]:
        events = primary
        if self.x.additional_criteria is not None:
            keep = self.group_holds(self.x.additional_criteria, events)
            events = [e for e, ok in zip(events, keep) if ok]
            limit = (self.x.qualified_limit or "First").upper()
            if limit != "ALL":
                events = self._limit_by_start(events, limit, "qualified events")
        return events

    def _limit_by_start(self, events: list[Event], limit: str, stage: str) -> list[Event]:
        "Circe's qualified and expression limits: the earliest (latest) start per person; ties are not ordered."
        by_person: dict = {}
        for e in events:
            by_person.setdefault(e.person_id, []).append(e)
        out = []
        for evs in by_person.values():
            evs = sorted(evs, key=lambda e: e.start, reverse=(limit == "LAST"))
            self._check_ties(evs, lambda e: e.start, stage, True)
            out.append(evs[0])
        return out

    def cohort_ends(self, included: list[Event]) -> list[tuple]:
        "Each included event's end: the earliest candidate end on or after its start (none: the event is dropped)."
        candidates: dict = {}

        def add(e: Event, end):
            if end is not None:
                candidates.setdefault(id(e), []).append(end)

        strategy = self.x.end_strategy
        if not isinstance(strategy, DateOffsetStrategy):
            for e in included:
                add(e, e.op_end)
        if isinstance(strategy, DateOffsetStrategy):
            for e in included:
                base = e.end if (strategy.date_field or "StartDate") == "EndDate" else e.start
                if base is None:
                    continue
                end = base + dt.timedelta(days=strategy.offset)
                add(e, e.op_end if end > e.op_end else end)
        elif isinstance(strategy, CustomEraStrategy):
            eras = self._drug_eras(strategy, {e.person_id for e in included})
            for e in included:
                for era_start, era_end in eras.get(e.person_id, []):
                    if era_start <= e.start <= era_end:
                        add(e, era_end)
        for c in self.x.censoring_criteria:
            by_person: dict = {}
            for a in self.criteria_events(c):
                by_person.setdefault(a.person_id, []).append(a)
            for e in included:
                starts = [a.start for a in by_person.get(e.person_id, []) if e.start <= a.start <= e.op_end]
                if starts:
                    add(e, min(starts))
        rows = []
        for e in included:
            ends = [d for d in candidates.get(id(e), []) if d >= e.start]
            if ends:
                rows.append((e.person_id, e.start, min(ends)))
        return rows

    def _drug_eras(self, s: CustomEraStrategy, persons: set) -> dict:
        """Circe's custom era: the persons' drug exposures whose drug_concept_id or drug_source_concept_id is in the
        codeset (a row matching both counts twice), each ending at its end (or start + days supply, or start + 1 day;
        start + the override when given) plus gap + offset days; overlapping or touching exposures merge; an era ends
        at its last padded end minus the gap days."""
        wanted = self.codeset(s.drug_codeset_id)
        spans: dict = {}
        for r in self.cdm.rows("drug_exposure"):
            if r["person_id"] not in persons or r.get("drug_exposure_start_date") is None:
                continue
            matches = int(_in(r.get("drug_concept_id"), wanted)) + int(_in(r.get("drug_source_concept_id"), wanted))
            start = r["drug_exposure_start_date"]
            if s.days_supply_override is not None:
                end = start + dt.timedelta(days=s.days_supply_override)
            else:
                end = _natural_end("DrugExposure", r, start, "drug_exposure_end_date")
            for _ in range(matches):
                spans.setdefault(r["person_id"], []).append((start, end + dt.timedelta(days=s.gap_days + s.offset)))
        return {p: [(a, b - dt.timedelta(days=s.gap_days)) for a, b in _merge(v)] for p, v in spans.items()}

    def run(self) -> "ReferenceResult":
        primary = self.primary_events()
        qualified = self.qualified_events(primary)
        rules = self.x.inclusion_rules
        masks = [0] * len(qualified)
        for k, rule in enumerate(rules):
            holds = self.group_holds(rule.expression, qualified)
            for i, ok in enumerate(holds):
                if ok:
                    masks[i] |= 1 << k
        full = (1 << len(rules)) - 1
        passing = [e for e, m in zip(qualified, masks) if m == full]
        limit = (self.x.expression_limit or "First").upper()
        included = passing if limit == "ALL" else self._limit_by_start(passing, limit, "included events")
        cohort_rows = self.cohort_ends(included)
        pad = self.x.collapse_settings.era_pad if self.x.collapse_settings and self.x.collapse_settings.era_pad is not None else 0
        final = _collapse(cohort_rows, pad)
        final = _censor_window(final, self.x.censor_window)

        attrition = self._attrition(qualified, masks)
        stages = {"primary_events": _count(primary), "qualified_events": _count(qualified),
                  "included_events": _count(included), "cohort_rows": _count_rows(cohort_rows),
                  "final_cohort": _count_rows(final)}
        rows = pd.DataFrame(final, columns=ROW_COLUMNS)
        rows["subject_id"] = rows["subject_id"].astype("int64")
        for c in ROW_COLUMNS[1:]:
            rows[c] = pd.to_datetime(rows[c]).astype("datetime64[s]")
        rows = rows.sort_values(ROW_COLUMNS, kind="stable").reset_index(drop=True)
        return ReferenceResult(rows, attrition, stages, list(dict.fromkeys(self.ambiguous)))

    def _attrition(self, qualified: list[Event], masks: list[int]) -> pd.DataFrame:
        """ATLAS's attrition: qualifying events, then for each rule k the events (mode 0) and persons (each person's
        best event, mode 1) whose masks have bits 0..k set; plus each rule's own and gain counts."""
        rules = self.x.inclusion_rules
        best = self._best_events(qualified, masks)
        n = len(rules)
        rows = [{"step": 0, "rule_sequence": None, "name": "qualifying events", "persons": len(best),
                 "records": len(qualified), "rule_persons": None, "rule_records": None, "gain_persons": None,
                 "gain_records": None}]
        for k, rule in enumerate(rules):
            upto = (1 << (k + 1)) - 1
            others = ((1 << n) - 1) & ~(1 << k)
            rows.append({"step": k + 1, "rule_sequence": k, "name": rule.name,
                         "persons": sum(1 for m in best if m & upto == upto),
                         "records": sum(1 for m in masks if m & upto == upto),
                         "rule_persons": sum(1 for m in best if m >> k & 1),
                         "rule_records": sum(1 for m in masks if m >> k & 1),
                         "gain_persons": sum(1 for m in best if m == others),
                         "gain_records": sum(1 for m in masks if m == others)})
        out = pd.DataFrame(rows, columns=ATTRITION_COLUMNS)
        for c in ATTRITION_COLUMNS:
            if c != "name":
                out[c] = out[c].astype("Int64")
        return out

    def _best_events(self, qualified: list[Event], masks: list[int]) -> list[int]:
        """Each person's best event's mask: the most rules, then the lowest first rule (0 when none), then the
        earliest start; events tied on all three with different masks make the person counts ambiguous."""
        by_person: dict = {}
        for e, m in zip(qualified, masks):
            by_person.setdefault(e.person_id, []).append((e, m))
        out = []
        for person, evs in by_person.items():
            def rank(em):
                e, m = em
                bits = [k for k in range(len(self.x.inclusion_rules)) if m >> k & 1]
                return (-len(bits), min(bits) if bits else 0, e.start)
            evs.sort(key=rank)
            if self.x.inclusion_rules and len(evs) > 1 and rank(evs[0]) == rank(evs[1]) and evs[0][1] != evs[1][1]:
                self.ambiguous.append(f"best event: person {person} has tied events with different rule masks")
            out.append(evs[0][1])
        return out


def _signature(e: Event):
    "What later stages can see of an event: two tied events with one signature are interchangeable."
    return (e.start, e.end, e.visit_id, e.op_start, e.op_end)


def _replace(e: Event, **changes) -> Event:
    values = dict(e.__dict__)
    values.update(changes)
    return Event(**values)


def _merge(spans: list[tuple]) -> list[tuple]:
    "Merge (start, end) spans, ordered by start, whenever a span starts on or before the latest end so far."
    out = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _collapse(rows: list[tuple], pad: int) -> list[tuple]:
    "Circe's era collapse: per person, ends padded by `pad` days, merged when they reach the next start, unpadded."
    by_person: dict = {}
    for p, s, e in rows:
        by_person.setdefault(p, []).append((s, e + dt.timedelta(days=pad)))
    out = []
    for p in sorted(by_person):
        for s, e in _merge(by_person[p]):
            out.append((p, s, e - dt.timedelta(days=pad)))
    return out


def _censor_window(rows: list[tuple], w: Period | None) -> list[tuple]:
    "Circe's CensorWindow: starts moved up to its start, ends down to its end; rows left empty are dropped."
    if w is None or (w.start_date is None and w.end_date is None):
        return rows
    out = []
    for p, s, e in rows:
        if w.start_date is not None:
            s = max(s, dt.date.fromisoformat(w.start_date))
        if w.end_date is not None:
            e = min(e, dt.date.fromisoformat(w.end_date))
        if s <= e:
            out.append((p, s, e))
    return out


def _count(events: list[Event]) -> dict:
    return {"records": len(events), "persons": len({e.person_id for e in events})}


def _count_rows(rows: list[tuple]) -> dict:
    return {"records": len(rows), "persons": len({r[0] for r in rows})}


@dataclass
class ReferenceResult:
    rows: pd.DataFrame
    attrition: pd.DataFrame
    stages: dict
    ambiguous: list[str]


def evaluate(expression: CohortExpression, tables: dict[str, pd.DataFrame]) -> ReferenceResult:
    """Circe's cohort for `expression` on the CDM `tables` (table name -> DataFrame; a missing table is empty).

    `rows` are `subject_id, cohort_start_date, cohort_end_date` sorted; `attrition` is ATLAS's (the columns of
    `tests/circe/compare.py`); `ambiguous` lists where the answer depends on an order Circe's SQL leaves open (a
    First/Last limit or a best event between tied events), in which case Circe's own answer may vary."""
    return Evaluator(expression, Cdm(tables)).run()
