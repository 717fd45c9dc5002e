"""Regenerate the control bundles in tests/attacks/control/ with the code installed now.

    PYTHONPATH=. python tests/attacks/make_controls.py [--work DIR]

Makes real template runs on a synthetic CDM (5,000 persons, seed 1) in a scratch project folder, then copies into
`control/<attack>/` only the released files each attack reads (small CSV/JSON, plus the bundle's config.json with its
rules), the public parameters it needs (`params.json`) and the true hidden values (`truth.json`), computed from the
row-level data in the TRE (the synthetic data contain no real persons). README.md records the commit.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or '.').resolve() != HERE]

from attacks import scenarios as S  # noqa: E402
from attacks import truth as T  # noqa: E402

CONTROL = HERE / "control"


def key(k) -> str:
    "A JSON key for a tuple key: its parts joined by '|'."
    return "|".join(str(x) for x in k) if isinstance(k, tuple) else str(k)


def save(folder: Path, name: str, obj) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj, indent=1, sort_keys=True, default=int) + "\n")


def copy(release: Path, folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names + ("config.json",):
        shutil.copyfile(release / n, folder / n)


def main(work: Path) -> None:
    t0 = time.time()
    project = work / "project"
    cdm = S.make_cdm(project / "cdm.duckdb")
    if CONTROL.exists():
        shutil.rmtree(CONTROL)
    log = []

    def tpl(name, params, folder):
        t = time.time()
        d = S.template(name, params, project / folder)
        shown = {k: (v if k != "cohort_json" else "<cohort_b in differencing/params.json>") for k, v in params.items() if k != "cdm_path"}
        log.append(f"{folder}: {name} {json.dumps(shown)} ({time.time() - t:.0f} s)")
        return d

    # 2. percentages: Table 1 by each grouping variable (the template's example cohort)
    cohort = S.example_cohort()
    data = T.analysis_data(cdm, cohort)
    truth = {}
    for g in S.GROUPS:
        run = tpl("characterise", {"cdm_path": str(cdm), "group": g}, f"characterise_{g}")
        copy(run / "release", CONTROL / "percentages" / g, "table1.csv")
        truth[g] = {key(k): v for k, v in T.table1_truth(data, g).items()}
    save(CONTROL / "percentages", "truth.json", truth)
    save(CONTROL / "percentages", "params.json", {"template": "characterise", "groups": list(S.GROUPS)})

    # 4. differencing: a sibling run on the same CDM whose cohort also excludes chronic kidney disease (4 people fewer)
    run_a = project / "characterise_sex"
    narrow = S.example_cohort(no_ckd=True)
    run_b = tpl("characterise", {"cdm_path": str(cdm), "group": "sex", "cohort_json": json.dumps(narrow)}, "characterise_sex_no_ckd")
    copy(run_a / "release", CONTROL / "differencing" / "runA", "table1.csv")
    copy(run_b / "release", CONTROL / "differencing" / "runB", "table1.csv")
    data_b = T.analysis_data(cdm, narrow)
    save(CONTROL / "differencing", "truth.json", {key(k): v for k, v in T.difference_truth(data, data_b, "sex").items()})
    save(CONTROL / "differencing", "params.json", {"runA": "characterise, example cohort, group sex",
                                                    "runB": "the same cohort plus the rule 'no chronic kidney disease'",
                                                    "cohort_b": narrow})

    # 3. attrition: the second cohort's flow (its last rule excludes a handful of people)
    copy(run_b / "release", CONTROL / "attrition", "attrition.csv")
    save(CONTROL / "attrition", "truth.json", {key(k): v for k, v in T.attrition_truth(cdm, narrow).items()})

    # 7. rounding: characterise under OpenSAFELY's rules
    run = tpl("characterise", {"cdm_path": str(cdm), "group": "sex", "rules": "opensafely"}, "characterise_opensafely")
    rel = run / "release"
    copy(rel, CONTROL / "rounding", *sorted(p.name for p in rel.glob("*.csv")))
    save(CONTROL / "rounding", "params.json", {"template": "characterise", "group": "sex", "rules": "opensafely", "base": 5})

    # predict, then fairness and explain on it
    pred = tpl("predict", {"cdm_path": str(cdm), **S.PREDICT}, "predict")
    test = pd.read_parquet(pred / "models" / "test_set.parquet")
    # 1. ratios
    copy(pred / "release", CONTROL / "ratios", "calibration_bins_logistic.csv", "calibration_bins_gradient_boosting.csv")
    save(CONTROL / "ratios", "truth.json", {key(k): list(v) for m in ("logistic", "gradient_boosting")
                                            for k, v in T.calibration_truth(test, m).items()})
    # 5. net benefit
    copy(pred / "release", CONTROL / "net_benefit", "decision_curve.csv", "split.csv")
    thresholds = pd.read_csv(pred / "release" / "decision_curve.csv")["threshold"].tolist()
    nb_truth = {}
    for m, col in (("logistic", "logistic_model"), ("gradient_boosting", "gradient_boosting_model")):
        nb_truth.update({key((col,) + k[1:]): v for k, v in T.confusion_truth(test, m, thresholds).items()})
    save(CONTROL / "net_benefit", "truth.json", nb_truth)
    # 6. fairness
    fair = tpl("fairness", {"predict_run": str(pred), **S.FAIRNESS}, "fairness")
    copy(fair / "release", CONTROL / "fairness", "subgroup_report.csv")
    save(CONTROL / "fairness", "truth.json",
         {key(k): v for k, v in T.fairness_truth(test, S.FAIRNESS["model"], S.FAIRNESS["threshold"]).items()})
    save(CONTROL / "fairness", "params.json", S.FAIRNESS)
    # 9. extremes
    expl = tpl("explain", {"predict_run": str(pred), **S.EXPLAIN}, "explain")
    deps = sorted(p.name for p in (expl / "release").glob("dependence_*.csv"))
    copy(expl / "release", CONTROL / "extremes", *deps)
    X = T.explained_rows(test, S.EXPLAIN["rows"], S.SEED)
    ext = T.extremes_truth(X, X.columns)
    save(CONTROL / "extremes", "truth.json", {f: {"min": v["min"], "max": v["max"], "lowest": v["values"][:20].tolist(),
                                                  "highest": v["values"][-20:].tolist()} for f, v in ext.items()})
    save(CONTROL / "extremes", "params.json", S.EXPLAIN)

    # 10. Kaplan-Meier
    surv = tpl("survival", {"cdm_path": str(cdm), **S.SURVIVAL}, "survival")
    ats = sorted(p.name for p in (surv / "release").glob("at_risk_*.csv"))
    copy(surv / "release", CONTROL / "kaplan_meier", *ats)
    sdata = T.analysis_data(cdm, T.run_cohort(surv), S.SURVIVAL["horizon_days"], imd_missing="missing")
    hist = {str(level): {str(int(t)): int(c) for t, c in g.time.value_counts().sort_index().items()}
            for level, g in sdata.groupby(S.SURVIVAL["group"])}
    save(CONTROL / "kaplan_meier", "truth.json", {"follow_up_days_histogram": hist})
    save(CONTROL / "kaplan_meier", "params.json", S.SURVIVAL)

    # 11. planted rows: the report template on a predict run whose release was tampered with
    truth11 = {"planted_ids": S.PLANTED_IDS, "planted_file": "predict run release/metrics.csv"}
    for variant, forge in (("unverified", False), ("forged", True)):
        planted = S.plant(pred, project / f"predict_planted_{variant}", forge)
        rep = tpl("report", {"characterise_run": str(run_a), "predict_run": str(planted), "explain_run": str(expl),
                             "fairness_run": str(fair)}, f"report_{variant}")
        dest = CONTROL / "planted_rows" / variant
        dest.mkdir(parents=True, exist_ok=True)
        for p in sorted((rep / "release").glob("*")):
            if p.is_file() and p.suffix in (".json", ".html"):
                if p.suffix == ".html":          # embedded figures are large; the attack strips them anyway
                    import re
                    text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,", p.read_text())
                    (dest / (p.name + ".gz")).write_bytes(gzip.compress(text.encode(), mtime=0))
                elif p.name == "results.json" or p.name == "config.json":
                    shutil.copyfile(p, dest / p.name)
                else:
                    (dest / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes(), mtime=0))
    save(CONTROL / "planted_rows", "truth.json", truth11)

    # 8. linked tables through the Session API
    ld = S.linked_data()
    bundle = S.linked_release(ld, work / "linked")
    copy(bundle, CONTROL / "linked_tables", "imd_by_sex.csv", "sex.csv", "imd.csv")
    save(CONTROL / "linked_tables", "truth.json", {key(k): v for k, v in S.linked_truth(ld).items()})

    git = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", str(HERE.parent.parent / "healthbench"), str(HERE.parent.parent / "nbs"))
    import healthbench
    (CONTROL / "README.md").write_text(f"""# Control bundles: the old (leaky) behaviour, kept

Generated by `PYTHONPATH=. python tests/attacks/make_controls.py` with the healthbench code of commit `{commit}`
(`git rev-parse HEAD`; healthbench/ and nbs/ {"unmodified" if not dirty else "MODIFIED: " + dirty}; healthbench
{healthbench.__version__} imported from the worktree's `healthbench/`) in {time.time() - t0:.0f} s, with real template runs
on a synthetic OMOP CDM of {S.PERSONS} persons (seed {S.SEED}); the synthetic data contain no real persons, so the true
hidden values are committed.

Each folder holds only the released files an attack reads (copied unchanged from the run's `release/`, with that
bundle's `config.json`), the public parameters (`params.json`) and `truth.json`, the hidden values computed from the
row-level data (tests/attacks/truth.py), never from a bundle. Keys of tuples are joined with `|`.
`planted_rows/*/`: the report run's released HTML and JSON, gzipped, with embedded PNG figures removed from the HTML.

Runs (in order, one at a time):

""" + "\n".join(f"- {x}" for x in log) + "\n")
    print(f"controls written to {CONTROL} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for the runs (default: a new temporary one)")
    a = ap.parse_args()
    main(a.work or Path(tempfile.mkdtemp(prefix="hb-controls-")))
