"""Hand-checked cases through the whole harness: a toy CDM small enough to work out by hand, Circe definitions written
here, circepy's answer through `compare.circe_result`, and the answer we expect from Circe's documented semantics.

    /work/main/.venv/bin/python tests/circe/selfcheck.py     (healthbench's venv; about 30 s on a loaded 2-core machine)

It checks the harness (oracle, subprocess, rows, attrition, stage tables) and pins down, on data we control, what
circepy does on points where an engine is easy to get wrong: how concept sets resolve against `concept` and
`concept_ancestor`, era collapse with the default pad 0, the end-date offset clipped at the observation period's
end, the implicit one-day end of a condition without an end date, and ATLAS's attrition by person and by event.
Not a pytest file on purpose: it needs the circepy venv, which CI does not build.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import duckdb
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare
import typed_cdm

D = dt.date.fromisoformat


def toy_cdm(path: Path) -> Path:
    """Every OMOP v5.3 table (typed, empty) plus a handful of hand-made rows."""
    con = duckdb.connect(str(path))
    for table, cols in typed_cdm.omop53_schema().items():
        columns = ", ".join(f'"{c}" {t}' for c, t in cols)
        con.execute(f"create table {table} ({columns})")
    concepts = [  # id, invalid_reason
        (100, None), (101, None), (102, "D"), (201, None), (300, None)]
    for cid, invalid in concepts:
        con.execute("insert into concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, "
                    "standard_concept, concept_code, valid_start_date, valid_end_date, invalid_reason) values "
                    "(?, ?, 'Condition', 'SNOMED', 'Clinical Finding', 'S', ?, '1970-01-01', '2099-12-31', ?)",
                    [cid, f"concept {cid}", str(cid), invalid])
    ancestry = [(100, 100), (100, 101), (100, 102), (100, 103), (101, 101), (200, 200), (200, 201), (201, 201),
                (300, 300)]  # 103 and 200 are absent from concept
    con.executemany("insert into concept_ancestor values (?, ?, 0, 0)", ancestry)
    for pid in (1, 2, 3, 4):
        con.execute("insert into person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                    "ethnicity_concept_id) values (?, 8507, 1970, 0, 0)", [pid])
        con.execute("insert into observation_period values (?, ?, '2019-01-01', '2020-12-31', 44814724)", [pid, pid])
    events = [  # id, person, concept, start, end
        (1, 1, 101, "2020-01-01", None),          # end = start + 1 day
        (2, 1, 101, "2020-01-02", None),          # starts on the previous end: merged with pad 0
        (3, 1, 101, "2020-01-04", None),          # one day gap: a new era with pad 0
        (4, 2, 102, "2020-03-01", "2020-03-05"),  # invalid descendant of 100
        (5, 3, 201, "2020-05-01", "2020-05-10"),  # descendant of 200, which is not in concept
        (6, 4, 300, "2020-12-20", "2020-12-25"),  # offset 30 runs past the observation period's end
        (7, 4, 103, "2020-06-01", "2020-06-02"),  # descendant of 100 absent from concept
    ]
    con.executemany("insert into condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
                    "condition_start_date, condition_end_date, condition_type_concept_id) values "
                    "(?, ?, ?, ?, ?, 32020)", events)
    con.close()
    return path


def definition(items: list[dict], *, offset: int = 0, era_pad: int | None = None, rules: list[dict] = ()) -> str:
    expr = {
        "ConceptSets": [{"id": 0, "name": "toy", "expression": {"items": items}}],
        "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}],
                            "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                            "PrimaryCriteriaLimit": {"Type": "All"}},
        "QualifiedLimit": {"Type": "All"}, "ExpressionLimit": {"Type": "All"},
        "InclusionRules": list(rules),
        "EndStrategy": {"DateOffset": {"DateField": "EndDate", "Offset": offset}},
        "CensoringCriteria": [],
    }
    if era_pad is not None:
        expr["CollapseSettings"] = {"CollapseType": "ERA", "EraPad": era_pad}
    return json.dumps(expr)


def item(cid: int, descendants: bool = False, excluded: bool = False) -> dict:
    return {"concept": {"CONCEPT_ID": cid, "CONCEPT_NAME": f"concept {cid}", "STANDARD_CONCEPT": "S",
                        "INVALID_REASON": "V", "CONCEPT_CODE": str(cid), "DOMAIN_ID": "Condition",
                        "VOCABULARY_ID": "SNOMED", "CONCEPT_CLASS_ID": "Clinical Finding"},
            "includeDescendants": descendants, "isExcluded": excluded, "includeMapped": False}


def rows(*triples) -> pd.DataFrame:
    return pd.DataFrame(triples, columns=compare.ROW_COLUMNS)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hb-circe-selfcheck-") as tmp:
        cdm = toy_cdm(Path(tmp) / "toy.duckdb")
        at_least_one_in_window = {"name": "an event 0..0 days from index", "expression": {
            "Type": "ALL", "CriteriaList": [{"Criteria": {"ConditionOccurrence": {"CodesetId": 0}},
                                             "StartWindow": {"Start": {"Days": 0, "Coeff": -1},
                                                             "End": {"Days": 0, "Coeff": 1}},
                                             "Occurrence": {"Type": 2, "Count": 2}}],
            "DemographicCriteriaList": [], "Groups": []}}
        cases = {
            "descendants of 100": definition([item(100, descendants=True)]),
            "descendants of 200 (root absent from concept)": definition([item(200, descendants=True)]),
            "invalid 102 named directly": definition([item(102)]),
            "100 with descendants minus 101": definition([item(100, descendants=True), item(101, excluded=True)]),
            "300, offset 30": definition([item(300)], offset=30),
            "101, era pad 1": definition([item(101)], era_pad=1),
            "101, rule: 2 events on index day": definition([item(101)], rules=[at_least_one_in_window]),
        }
        results = compare.circe_results(cdm, cases, stages=True, keep=Path(tmp) / "oracle")
        for name, res in results.items():
            res.raise_for_error()
        codesets = {name: sorted(pd.read_parquet(Path(res.raw["stages_dir"]) / "codesets.parquet")["concept_id"])
                    for name, res in results.items()}
        expect_codes = {
            # descendants come from concept_ancestor joined to concept: only valid concepts that are in concept
            "descendants of 100": [100, 101],
            # the root itself must be in concept; its valid descendants count even when it is not
            "descendants of 200 (root absent from concept)": [201],
            # a concept named directly is taken if it is in concept, valid or not
            "invalid 102 named directly": [102],
            "100 with descendants minus 101": [100],
        }
        for name, codes in expect_codes.items():
            assert codesets[name] == codes, (name, codesets[name], codes)
        # era collapse, default pad 0: ends are start + 1 day; 2020-01-02..03 touches 01-01..02 and merges;
        # 2020-01-04 starts a day after 01-03 ends and stays apart
        compare.assert_same_cohort(results["descendants of 100"].rows,
                                   rows((1, D("2020-01-01"), D("2020-01-03")), (1, D("2020-01-04"), D("2020-01-05"))))
        compare.assert_same_cohort(results["descendants of 200 (root absent from concept)"].rows,
                                   rows((3, D("2020-05-01"), D("2020-05-10"))))
        compare.assert_same_cohort(results["invalid 102 named directly"].rows,
                                   rows((2, D("2020-03-01"), D("2020-03-05"))))
        # end date + 30 days is past the observation period's end (2020-12-31): clipped to it
        compare.assert_same_cohort(results["300, offset 30"].rows, rows((4, D("2020-12-20"), D("2020-12-31"))))
        # pad 1 bridges the one-day gap; the era's end is the last end, not the padded one
        compare.assert_same_cohort(results["101, era pad 1"].rows, rows((1, D("2020-01-01"), D("2020-01-05"))))
        # a rule needing 2 events on the index day: none holds (one event per day) -> ATLAS attrition 1 person,
        # 3 events qualify, then 0 / 0
        att = results["101, rule: 2 events on index day"].attrition
        compare.assert_same_attrition(att, pd.DataFrame({"persons": [1, 0], "records": [3, 0]}))
        assert results["101, rule: 2 events on index day"].rows.empty
        # the comparator reports differences person by person
        try:
            compare.assert_same_cohort(results["descendants of 100"].rows,
                                       rows((1, D("2020-01-01"), D("2020-01-05"))), names=("circe", "mine"))
        except AssertionError as exc:
            assert "subject_id 1:" in str(exc) and "2020-01-01..2020-01-03*" in str(exc), str(exc)
        else:
            raise AssertionError("assert_same_cohort accepted different cohorts")
        stages = results["descendants of 100"].raw["stages"]
        assert stages["qualified_events"] == {"records": 3, "persons": 1}, stages
        assert stages["final_cohort"] == {"records": 2, "persons": 1}, stages
    print(f"selfcheck: {len(cases)} hand-checked definitions agree with circepy "
          f"({results['descendants of 100'].raw['versions']['ohdsi-circepy']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
