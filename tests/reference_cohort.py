"""An independent plain-pandas resolver of healthbench concept sets, and the column layouts the cohort property tests use.

Written from the semantics section of the cohort notebook alone, without reading or importing `healthbench.concepts`:
`resolve_concept_set(tables, concept_set_dict)` gives the set's concept ids (or raises `ReferenceConceptError` where
healthbench must refuse it). The cohorts themselves are evaluated by the plain-Python Circe evaluator
(`reference_circe.py`): builder cohorts mean their Circe expression. (This module's own cohort evaluator, of the
builder's semantics before they became Circe's, was removed with the old engine.)
"""
from __future__ import annotations

import pandas as pd

COHORT_COLUMNS = ["person_id", "cohort_start_date", "cohort_end_date"]
ATTRITION_COLUMNS = ["step", "persons", "records", "persons_lost", "records_lost"]


class ReferenceConceptError(ValueError):
    "A concept set names unknown concepts (with on_unknown='error') among known ones."


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
