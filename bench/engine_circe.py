"""healthbench's Circe engine against circepy's SQL on the same synthetic DuckDB CDM: one large definition, timed.

    PYTHONPATH=. python bench/engine_circe.py --persons 1000000 [--cdm synth.duckdb] [--threads 1]

Makes (or reuses) a synthetic CDM of `--persons` persons with `healthbench synth`, then generates one definition
with `healthbench.engine.generate_expression` (stage tables, rows and attrition included) and with circepy (the
oracle in its own venv: render, translate, run its statements on a fresh DuckDB connection; the time counted is its
DuckDB execution, SQL generation excluded, which favours circepy), checks the two cohorts are the same, and prints
both times and their ratio. DuckDB threads are the same on both sides (`--threads`).
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "circe"))

from healthbench import vocabulary as V  # noqa: E402
from healthbench import expression as X  # noqa: E402
from healthbench.concepts import concept_set  # noqa: E402

SETS = [concept_set("type 2 diabetes", V.CONDITION["type2_diabetes"]), concept_set("metformin", V.DRUG["metformin"]),
        concept_set("CVD", V.CONDITION["myocardial_infarction"], V.CONDITION["stroke"]),
        concept_set("SBP", V.MEASUREMENT["systolic_bp"]), concept_set("statins", V.DRUG_CLASS["statins"]),
        concept_set("outpatient", V.VISIT["outpatient"], descendants=False)]


def _w(a, b):
    return X.Window(X.WindowBound(None if a is None else abs(a), -1 if a is None or a < 0 else 1),
                    X.WindowBound(None if b is None else abs(b), 1 if b is None or b >= 0 else -1))


def definition() -> X.CohortExpression:
    "Type 2 diabetes or metformin (first), a year of history, three rules, metformin eras as exit, CVD censoring."
    cc = lambda kind, cs, w, occ=(2, 1), attrs=None: X.CorrelatedCriteria(X.Criteria(kind, cs, attrs=attrs or {}), w, occurrence=X.Occurrence(*occ))
    rule = lambda name, *items, **kw: X.InclusionRule(name, X.CriteriaGroup(kw.get("type", "ALL"), kw.get("count"), list(items),
                                                                            list(kw.get("demographics", []))))
    return X.CohortExpression(
        concept_sets=SETS,
        primary_criteria=X.PrimaryCriteria([X.Criteria("ConditionOccurrence", 0, first=True), X.Criteria("DrugExposure", 1, first=True)],
                                           X.ObservationWindow(365, 0), "First"),
        additional_criteria=X.CriteriaGroup("ANY", criteria_list=[cc("VisitOccurrence", 5, _w(-365, 0))]),
        qualified_limit="First",
        inclusion_rules=[rule("no prior CVD", cc("ConditionOccurrence", 2, _w(None, -1), (0, 0))),
                         rule("SBP 140+ in the year before", cc("Measurement", 3, _w(-365, 0), attrs={"value_as_number": X.NumericRange("gte", 140)})),
                         rule("40 to 80, no statin before", cc("DrugExposure", 4, _w(None, -1), (0, 0)),
                              demographics=[X.DemographicCriteria(age=X.NumericRange("bt", 40, 80))])],
        end_strategy=X.CustomEraStrategy(1, gap_days=30, offset=0),
        censoring_criteria=[X.Criteria("ConditionOccurrence", 2)],
        collapse_settings=X.CollapseSettings("ERA", 30))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--cdm", default=None, help="synthetic CDM file (made if missing)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    cdm_path = Path(args.cdm or f"/tmp/healthbench-bench-synth-{args.persons}.duckdb")
    if not cdm_path.exists():
        from healthbench.synth import generate
        t = time.perf_counter()
        generate(args.persons, seed=1, path=cdm_path, progress=False)
        print(f"synthetic CDM of {args.persons:,} persons in {time.perf_counter() - t:.1f} s: {cdm_path}")
    import compare
    from circe_json import to_circe
    from healthbench.cdm import connect
    from healthbench.engine import generate_expression
    x = definition()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with connect(cdm_path) as cdm:
            cdm.backend.raw_sql(f"SET threads = {args.threads}")
            t = time.perf_counter()
            r = generate_expression(cdm, x)
            rows = r.to_pandas()
            ours = time.perf_counter() - t
            attrition = r.attrition
    res = compare.circe_result(cdm_path, to_circe(x), threads=args.threads).raise_for_error()
    theirs = res.raw["seconds"]["execute"]
    compare.assert_same_cohort(res.rows, rows, names=("circe", "healthbench"))
    compare.assert_same_attrition(res.attrition, attrition, names=("circe", "healthbench"))
    print(attrition[["step", "name", "persons", "records"]].to_string(index=False))
    print(f"same cohort: {rows.person_id.nunique():,} persons, {len(rows):,} records")
    print(f"healthbench {ours:.1f} s (generate_expression + rows), circepy's SQL {theirs:.1f} s (DuckDB execution only; "
          f"its SQL generation {res.raw['seconds'].get('build', float('nan')):.1f} s more): ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
