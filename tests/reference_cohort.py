"""An independent plain-pandas reference evaluator of healthbench cohort definitions.

Written from the semantics section of the cohort notebook (`/work/authoring/semantics.md`) alone, without
reading or importing `healthbench.cohort`: the property tests in `test_cohort_properties.py` assert that the
ibis engine and this evaluator give identical cohort tables and attrition, the way OpenSAFELY ehrQL checks its
query engines against an in-memory reference engine. Keep it simple and obviously correct rather than fast:
it loops over records in Python where that is clearer than a join.

`evaluate(tables, definition)` takes the CDM tables as pandas DataFrames (only the columns it reads need to be
present; a missing table counts as empty, and a `concept` table without `invalid_reason` as all valid) and a cohort definition in its JSON (dict) layout, and returns
`(cohort, attrition)`:

- `cohort`: columns person_id (int64), cohort_start_date, cohort_end_date (datetime64[ns], midnight),
  sorted by person_id, cohort_start_date, cohort_end_date, with a fresh RangeIndex;
- `attrition`: columns step (str), persons, records, persons_lost, records_lost (int64).
"""
from __future__ import annotations

import pandas as pd

IMD_CONCEPT = 35812882
GENDER = {"male": 8507, "female": 8532}

#: domain -> (table, concept column, date column, value column or None)
DOMAINS = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date", None),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", None),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date", "value_as_number"),
    "observation": ("observation", "observation_concept_id", "observation_date", "value_as_number"),
    "visit": ("visit_occurrence", "visit_concept_id", "visit_start_date", None),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date", None),
    "device": ("device_exposure", "device_concept_id", "device_exposure_start_date", None),
}

COHORT_COLUMNS = ["person_id", "cohort_start_date", "cohort_end_date"]
ATTRITION_COLUMNS = ["step", "persons", "records", "persons_lost", "records_lost"]


class ReferenceConceptError(ValueError):
    "A concept set names unknown concepts (with on_unknown='error') among known ones."


# ----------------------------------------------------------------------------------------------- helpers
def _dates(s: pd.Series) -> pd.Series:
    "Any date-like column as datetime64[ns] at midnight."
    return pd.to_datetime(s).astype("datetime64[ns]").dt.normalize()


def _table(tables: dict, name: str, columns: list[str]) -> pd.DataFrame:
    if name not in tables:
        return pd.DataFrame({c: pd.Series([], dtype="object") for c in columns})
    df = tables[name]
    return df[[c for c in columns if c in df.columns]].copy()


# ------------------------------------------------------------------------------------------ concept sets
def resolve_concept_set(tables: dict, cs: dict) -> set[int]:
    """Concept ids of concept set `cs` (a dict in the definition layout), as the semantics section says (Circe's codeset):

    - an id is *known* if it is in concept.concept_id or in either column of concept_ancestor;
    - codes map to the concept ids with that (vocabulary_id, concept_code);
    - the codeset of some ids: those that are rows of concept, plus (with `descendants`) the descendant_concept_id of
      every concept_ancestor row whose ancestor is one of them and which is a concept row with a null invalid_reason;
    - the set: codeset(known included ids and mapped codes) - codeset(excluded ids);
    - nothing known: the empty set; else unknown ids or codes raise with on_unknown='error' (left out with 'warn').
    """
    concept = tables.get("concept")
    if concept is None: concept = pd.DataFrame({"concept_id": [], "vocabulary_id": [], "concept_code": []})
    anc = tables.get("concept_ancestor")
    in_concept = set(int(i) for i in concept["concept_id"])
    valid = (set(int(i) for i in concept.loc[concept["invalid_reason"].isna(), "concept_id"])
             if "invalid_reason" in concept.columns else in_concept)
    known = set(in_concept)
    if anc is not None:
        known |= set(int(i) for i in anc["ancestor_concept_id"]) | set(int(i) for i in anc["descendant_concept_id"])
    include = [int(i) for i in cs.get("include", []) or []]
    exclude = [int(i) for i in cs.get("exclude", []) or []]
    descendants = bool(cs.get("descendants", True))
    missing = [i for i in include if i not in known]
    ids = {i for i in include if i in known}
    for vocab, codes in (cs.get("codes") or {}).items():
        codes = {str(c) for c in codes}
        hit = concept[(concept["vocabulary_id"] == vocab) & concept["concept_code"].astype(str).isin(codes)]
        missing += sorted(codes - set(hit["concept_code"].astype(str)))
        ids |= set(int(i) for i in hit["concept_id"])
    if not ids:
        return set()
    if missing and cs.get("on_unknown", "error") == "error":
        raise ReferenceConceptError(f"concept set {cs['name']!r}: unknown {missing}")

    def codeset(xs: set[int]) -> set[int]:
        out = {x for x in xs if x in in_concept}
        if descendants and anc is not None and xs:
            below = anc.loc[anc["ancestor_concept_id"].isin(list(xs)), "descendant_concept_id"]
            out |= {int(d) for d in below if int(d) in valid}
        return out

    return codeset(ids) - codeset(set(exclude))


# ------------------------------------------------------------------------------------------------ events
def events(tables: dict, concept_ids: set[int], domain: str, value: dict | None = None) -> pd.DataFrame:
    "Rows of the domain's table whose concept is in `concept_ids` (and value in range): columns person_id, date."
    table, ccol, dcol, vcol = DOMAINS[domain]
    cols = ["person_id", ccol, dcol] + ([vcol] if vcol else [])
    df = _table(tables, table, cols)
    keep = df[ccol].isin(list(concept_ids))
    if value is not None:
        v = pd.to_numeric(df[vcol], errors="coerce").astype("float64")
        keep &= v.notna()
        if value.get("min") is not None: keep &= v >= float(value["min"])
        if value.get("max") is not None: keep &= v <= float(value["max"])
    out = df.loc[keep, ["person_id", dcol]].rename(columns={dcol: "date"})
    out["person_id"] = out["person_id"].astype("int64")
    out["date"] = _dates(out["date"])
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- evaluate
def _step(attrition: list, name: str, records: pd.DataFrame) -> None:
    persons, n = int(records["person_id"].nunique()), int(len(records))
    if attrition:
        _, p0, r0, _, _ = attrition[-1]
        attrition.append((name, persons, n, p0 - persons, r0 - n))
    else:
        attrition.append((name, persons, n, 0, 0))


def _count_ok(count: int, spec: dict) -> bool:
    op, n = spec["op"], int(spec["n"])
    if op == "at_least": return count >= n
    if op == "at_most": return count <= n
    if op == "exactly": return count == n
    raise ValueError(f"unknown count op {op!r}")


def _rule_passes(rule: dict, rec, ev_by_person, resolved) -> bool:
    if "all" in rule:
        return all(_rule_passes(r, rec, ev_by_person, resolved) for r in rule["all"])
    if "any" in rule:
        return any(_rule_passes(r, rec, ev_by_person, resolved) for r in rule["any"])
    crit = rule["criterion"]
    ev = ev_by_person(crit).get(rec.person_id)
    count = 0
    if ev is not None:
        d = ev["date"]
        inside = (d >= rec.op_start) & (d <= rec.op_end)
        offset = (d - rec.index_date).dt.days
        win = crit.get("window") or {}
        if win.get("start") is not None: inside &= offset >= int(win["start"])
        if win.get("end") is not None: inside &= offset <= int(win["end"])
        count = int(inside.sum())
    return _count_ok(count, crit["count"])


def evaluate(tables: dict[str, pd.DataFrame], definition: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    "The cohort table and attrition that `definition` gives on the CDM `tables` (see the module docstring)."
    sets = {cs["name"]: cs for cs in definition.get("concept_sets", [])}
    resolved: dict[str, set[int]] = {}

    def ids(name: str) -> set[int]:
        if name not in resolved: resolved[name] = resolve_concept_set(tables, sets[name])
        return resolved[name]

    for name in sets:      # every concept set resolves (a refused one fails the definition), used or not
        ids(name)
    attrition: list[tuple] = []
    entry = definition["entry"]

    # 1. entry events: distinct (person, date); "first" keeps each person's earliest event date
    ev = events(tables, ids(entry["concept_set"]), entry["domain"], entry.get("value"))
    cand = ev.drop_duplicates(["person_id", "date"])
    if entry.get("occurrence", "first") == "first":
        cand = cand.groupby("person_id", as_index=False)["date"].min()
    cand = cand.rename(columns={"date": "index_date"})[["person_id", "index_date"]].reset_index(drop=True)
    _step(attrition, "entry events", cand)

    # 2. observation: inside a period, with enough prior and post observation
    op = _table(tables, "observation_period", ["person_id", "observation_period_start_date", "observation_period_end_date"])
    op = pd.DataFrame({"person_id": op["person_id"].astype("int64"),
                       "op_start": _dates(op["observation_period_start_date"]),
                       "op_end": _dates(op["observation_period_end_date"])})
    prior, post = int(entry.get("prior_observation_days", 0)), int(entry.get("post_observation_days", 0))
    rec = cand.merge(op, on="person_id", how="inner")
    ok = ((rec["op_start"] <= rec["index_date"]) & (rec["index_date"] <= rec["op_end"])
          & ((rec["index_date"] - rec["op_start"]).dt.days >= prior)
          & ((rec["op_end"] - rec["index_date"]).dt.days >= post))
    rec = rec[ok].reset_index(drop=True)
    _step(attrition, "observation", rec)

    # 3. limit
    if entry.get("limit", "all") == "earliest":
        rec = rec.sort_values(["person_id", "index_date"]).groupby("person_id", as_index=False).head(1)
        rec = rec.reset_index(drop=True)
        _step(attrition, "limit", rec)

    # 4. demographics
    demo = definition.get("demographics") or {}
    person = _table(tables, "person", ["person_id", "gender_concept_id", "year_of_birth", "race_source_value"])
    person = person.assign(person_id=person["person_id"].astype("int64")).set_index("person_id")

    def pfield(col):
        return rec["person_id"].map(person[col])

    if demo.get("age") is not None:
        age = rec["index_date"].dt.year - pd.to_numeric(pfield("year_of_birth"))
        keep = age.notna()
        if demo["age"].get("min") is not None: keep &= age >= int(demo["age"]["min"])
        if demo["age"].get("max") is not None: keep &= age <= int(demo["age"]["max"])
        rec = rec[keep].reset_index(drop=True)
        _step(attrition, "age", rec)
    if demo.get("sex") is not None:
        wanted = {GENDER[s] for s in demo["sex"]}
        rec = rec[pfield("gender_concept_id").isin(list(wanted))].reset_index(drop=True)
        _step(attrition, "sex", rec)
    if demo.get("ethnicity") is not None:
        rec = rec[pfield("race_source_value").isin(list(demo["ethnicity"]))].reset_index(drop=True)
        _step(attrition, "ethnicity", rec)
    if demo.get("imd_quintile") is not None:
        obs = _table(tables, "observation", ["person_id", "observation_concept_id", "observation_source_concept_id",
                                             "observation_date", "value_as_number"])
        is_imd = obs["observation_concept_id"] == IMD_CONCEPT
        if "observation_source_concept_id" in obs.columns:
            is_imd |= obs["observation_source_concept_id"] == IMD_CONCEPT
        imd = obs[is_imd]
        imd = pd.DataFrame({"person_id": imd["person_id"].astype("int64"), "date": _dates(imd["observation_date"]),
                            "value": pd.to_numeric(imd["value_as_number"]).astype("float64")})
        by_person = {p: g for p, g in imd.groupby("person_id")}
        wanted = {float(q) for q in demo["imd_quintile"]}
        keep = []
        for r in rec.itertuples(index=False):
            g = by_person.get(r.person_id)
            value = None
            if g is not None:
                g = g[g["date"] <= r.index_date]
                if len(g):
                    latest = g[g["date"] == g["date"].max()]["value"]
                    value = latest.min()      # min skips nulls; all-null gives NaN
            keep.append(value is not None and pd.notna(value) and float(value) in wanted)
        rec = rec[pd.Series(keep, index=rec.index, dtype=bool)].reset_index(drop=True)
        _step(attrition, "imd_quintile", rec)

    # 5. inclusion rules
    ev_cache: dict = {}

    def ev_by_person(crit):
        key = (crit["concept_set"], crit["domain"],
               None if crit.get("value") is None else (crit["value"].get("min"), crit["value"].get("max")))
        if key not in ev_cache:
            e = events(tables, ids(crit["concept_set"]), crit["domain"], crit.get("value"))
            ev_cache[key] = {p: g.reset_index(drop=True) for p, g in e.groupby("person_id")}
        return ev_cache[key]

    for rule in definition.get("inclusion_rules", []) or []:
        keep = [_rule_passes(rule["rule"], r, ev_by_person, resolved) for r in rec.itertuples(index=False)]
        rec = rec[pd.Series(keep, index=rec.index, dtype=bool)].reset_index(drop=True)
        _step(attrition, rule["name"], rec)

    # 6. exit
    ex = definition.get("exit") or {"strategy": "observation_end"}
    strategy = ex["strategy"]
    ends = []
    if strategy == "event":
        e = events(tables, ids(ex["concept_set"]), ex["domain"], None)
        exit_by_person = {p: g["date"] for p, g in e.groupby("person_id")}
    if strategy == "death":
        death = _table(tables, "death", ["person_id", "death_date"])
        death = pd.DataFrame({"person_id": death["person_id"].astype("int64"), "d": _dates(death["death_date"])})
        first_death = death.groupby("person_id")["d"].min().to_dict()
    for r in rec.itertuples(index=False):
        if strategy == "fixed":
            end = min(r.index_date + pd.Timedelta(days=int(ex["days"])), r.op_end)
        elif strategy == "observation_end":
            end = r.op_end
        elif strategy == "event":
            d = exit_by_person.get(r.person_id)
            d = d[(d >= r.index_date) & (d <= r.op_end)] if d is not None else None
            end = d.min() if d is not None and len(d) else r.op_end
        elif strategy == "death":
            d = first_death.get(r.person_id)
            end = d if d is not None and r.index_date <= d <= r.op_end else r.op_end
        else:
            raise ValueError(f"unknown exit strategy {strategy!r}")
        ends.append(end)

    cohort = pd.DataFrame({"person_id": rec["person_id"].astype("int64"),
                           "cohort_start_date": rec["index_date"].astype("datetime64[ns]"),
                           "cohort_end_date": pd.Series(ends, index=rec.index, dtype="datetime64[ns]")})
    cohort = cohort.sort_values(COHORT_COLUMNS).reset_index(drop=True)
    att = pd.DataFrame(attrition, columns=ATTRITION_COLUMNS)
    att = att.astype({"step": "object", "persons": "int64", "records": "int64",
                      "persons_lost": "int64", "records_lost": "int64"})
    return cohort, att
