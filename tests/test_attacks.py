"""Adversarial tests of release bundles: an attacker who reads only released files (and public parameters).

Eleven attack classes (tests/attacks/attacks.py), each tested twice:

- `test_control_<attack>`: on bundles the old code released (stored in tests/attacks/control/, with the true hidden
  values computed from the row-level synthetic data; regenerate with tests/attacks/make_controls.py), the attack
  recovers the stored truth — the attack works, so the `new` test can fail. Fast: files only, no kernels.
- `test_new_<attack>`: real template runs with the code installed now, on a small synthetic CDM (5,000 persons), the
  truth recomputed from data that stays in the TRE (the run's CDM, the predict run's `models/test_set.parquet`), never
  from the bundle. The attack must recover nothing: no small count (< the rules' threshold, zero included) pinned to
  an interval narrower than the threshold, no recovered value equal to a small truth.

A refusal (a run that fails on purpose, an output withheld from `release/`) recovers nothing and passes; an attack
target that is neither released nor recorded as withheld fails (a renamed output would otherwise pass unnoticed).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from attacks import attacks as A
from attacks import scenarios as S
from attacks import truth as T

CONTROL = Path(__file__).parent / "attacks" / "control"
THRESHOLD = {"uk_default": 10, "opensafely": 8}      # public rules: minimum safe count (OpenSAFELY: redact <= 7)


def truth(attack: str, conv=None) -> dict:
    "A control's truth.json with '|'-joined keys split back into tuples (`conv` converts each key tuple)."
    d = json.loads((CONTROL / attack / "truth.json").read_text())
    return {(conv or tuple)(k.split("|")): v for k, v in d.items()}


def unsound(recovered: dict, true: dict) -> dict:
    "Recovered intervals that miss the truth (the attack would be wrong there)."
    return {k: (iv, true[k]) for k, iv in recovered.items() if k in true and not iv[0] <= true[k] <= iv[1]}


def hidden_cells(csv: Path, index_col, columns) -> set:
    "Cells of a released CSV that are hidden (empty, NaN, [c], ...)."
    t = A.read_table(csv, index_col=index_col)
    return {(i, c) for i in t.index for c in columns if c in t.columns and A.parse_count_percent(t.loc[i, c])[0] is None}


def show(d: dict, n: int = 12) -> str:
    return "; ".join(f"{k}: {v}" for k, v in list(d.items())[:n]) + (f" ... ({len(d)} in all)" if len(d) > n else "")


def accounted(run_dir: Path, name: str) -> bool:
    "Whether output `name` is released, or named anywhere in the run's release index or output log (withheld)."
    rel = Path(run_dir) / "release"
    if any(p.stem == name for p in rel.glob("*")):
        return True
    texts = [p for p in (rel / "results.json", rel / "summary.html") if p.is_file()]
    texts += sorted((Path(run_dir) / "outputs").glob("*.json")) if (Path(run_dir) / "outputs").is_dir() else []
    return any(name in p.read_text(errors="replace") for p in texts)


def require_accounted(run_dir: Path, *names: str) -> None:
    missing = [n for n in names if not accounted(run_dir, n)]
    assert not missing, (f"attack targets {missing} are neither released nor recorded as withheld in {run_dir}: "
                         "renamed? the attack would pass without reading them")


# ================================================================================================================
# controls: the attacks succeed on what the old code released

def test_control_ratios():
    tr = truth("ratios")                                          # {(model, bin): [n, events]}
    rec = A.ratios(CONTROL / "ratios")
    hidden = set()
    for model in ("logistic", "gradient_boosting"):
        hidden |= {(model, str(b)) for b, _ in hidden_cells(CONTROL / "ratios" / f"calibration_bins_{model}.csv", "bin", ["events"])}
    assert hidden, "the control should have suppressed event counts"
    events = {k: v[1] for k, v in tr.items()}
    got = {k: rec[k] for k in hidden}
    assert got == {k: (events[k], events[k]) for k in hidden}, "every suppressed event count recovered exactly"
    assert A.exposures(rec, events, 10)


def test_control_percentages():
    raw = json.loads((CONTROL / "percentages" / "truth.json").read_text())    # {group: {"var|level|col": count}}
    recovered_hidden = {}
    for group, cells in raw.items():
        true = {tuple(k.split("|")): v for k, v in cells.items()}
        rec = A.percentages(CONTROL / "percentages" / group)
        assert not unsound(rec, true), unsound(rec, true)
        csv = CONTROL / "percentages" / group / "table1.csv"
        t = A.read_table(csv, index_col=[0, 1])
        hidden = {(v, l, c) for (v, l) in t.index for c in t.columns if A.parse_count_percent(t.loc[(v, l), c])[0] is None}
        for k in hidden & set(rec):
            if rec[k][0] == rec[k][1]:
                recovered_hidden[(group,) + k] = (rec[k][0], true[k])
    assert all(a == b for a, b in recovered_hidden.values())
    # the example: men's missing smoking status, 83 - 77 = 6, hidden in the Table 1 by sex
    assert recovered_hidden[("sex", "smoking", "missing", "male")] == (6, 6)
    small = {k: v for k, v in recovered_hidden.items() if v[1] < 10}
    assert len(small) >= 5 and {k[0] for k in small} >= {"sex", "imd_quintile", "age_band"}, show(small)


def test_control_attrition():
    tr = truth("attrition", lambda k: (int(k[0]), k[1]))
    rec = A.attrition(CONTROL / "attrition")
    assert not unsound(rec, tr)
    assert A.exact(rec) == tr, "every exclusion count follows from consecutive remaining counts"
    assert A.exposures(rec, tr, 10) == {(4, "persons"): (4, 4, 4), (4, "records"): (4, 4, 4)}


def test_control_differencing():
    tr = truth("differencing")
    rec = A.differencing(CONTROL / "differencing" / "runA", CONTROL / "differencing" / "runB")
    assert not unsound(rec, tr), unsound(rec, tr)
    ex = A.exposures(rec, tr, 10)
    exact = {k: v for k, v in ex.items() if v[0] == v[1]}
    assert exact[("n", "", "All")] == (4, 4, 4)                    # four people dropped ...
    profile = {k for k in exact if k[2] == "All" and k[0] in ("age_band", "imd_quintile", "smoking",
                                                              "history_hypertension", "statin_1y")}
    assert len(profile) >= 8, show(exact)                          # ... and their age band, IMD, smoking, ... counts


def _nb_key(k):
    return (k[0], round(float(k[1]), 10), k[2])


def test_control_net_benefit():
    tr = truth("net_benefit", _nb_key)
    rec = A.net_benefit(CONTROL / "net_benefit")
    assert rec and not unsound(rec, tr)
    exact = A.exact(rec)
    assert all(tr[k] == v for k, v in exact.items())
    assert len(exact) >= 200
    small = {k: v for k, v in A.exposures(rec, tr, 10).items() if v[0] == v[1]}
    assert len(small) >= 10 and {k[2] for k in small} >= {"tp"}, show(small)


def test_control_fairness():
    tr = truth("fairness")
    rec = A.fairness(CONTROL / "fairness")
    assert not unsound(rec, tr), unsound(rec, tr)
    ex = {k: v for k, v in A.exposures(rec, tr, 10).items() if v[0] == v[1]}
    # true positives of published subgroups: TPR x events (women: 4; IMD 3: 6; IMD 5: 5) and false negatives
    assert {("sex", "female", "tp"), ("imd_quintile", "3", "tp"), ("imd_quintile", "5", "tp")} <= set(ex), show(ex)


def test_control_rounding():
    v = A.rounding(CONTROL / "rounding", base=5)
    counts = [x for x in v if x["file"] == "table1.csv" and x["why"].startswith("count")]
    pct = [x for x in v if x["why"].startswith("percentage")]
    assert len(counts) == 57, len(counts)           # Table 1 by sex under OpenSAFELY rules: 57 counts not rounded
    assert pct and any(x["file"].startswith("incidence_") for x in v)
    assert not [x for x in v if x["file"] == "attrition.csv"]      # ... next to an attrition table that is rounded


def test_control_linked_tables():
    tr = truth("linked_tables")
    rec = A.linked_tables(CONTROL / "linked_tables", "imd_by_sex", "imd", "sex")
    assert not unsound(rec, tr)
    hidden = {(str(i), c) for i, c in hidden_cells(CONTROL / "linked_tables" / "imd_by_sex.csv", 0, ["female", "male"])}
    exact_hidden = {k: rec[k][0] for k in hidden if rec[k][0] == rec[k][1]}
    assert exact_hidden == {("1", "male"): 9, ("2", "male"): 9}
    assert all(tr[k] == v for k, v in exact_hidden.items())


def test_control_extremes():
    tr = json.loads((CONTROL / "extremes" / "truth.json").read_text())
    rec = A.extremes(CONTROL / "extremes")
    values = {f: sorted(v["lowest"] + v["highest"]) for f, v in tr.items()}
    for f, sides in rec.items():                  # the printed outer edges are the sample extremes, for every feature
        assert sides["min"][0] <= tr[f]["min"] <= sides["min"][1] and sides["max"][0] <= tr[f]["max"] <= sides["max"][1], f
    ex = A.extreme_exposures(rec, values, 10)
    # one person's systolic BP of 180, diastolic 121, BMI 43.6 ...
    assert {("systolic_bp", "max"), ("systolic_bp", "min"), ("bmi", "max"), ("diastolic_bp", "max")} <= set(ex), ex
    assert ex[("systolic_bp", "max")][2:] == (180.0, 1)


def test_control_kaplan_meier():
    tr = json.loads((CONTROL / "kaplan_meier" / "truth.json").read_text())["follow_up_days_histogram"]
    step = json.loads((CONTROL / "kaplan_meier" / "params.json").read_text())["step_days"]
    rec = A.kaplan_meier(CONTROL / "kaplan_meier")
    assert set(rec) == {"sex_female", "sex_male"}
    for table, parts in rec.items():
        hist = tr[table.removeprefix("sex_")]
        times = [int(t) for t, c in hist.items() for _ in range(c)]
        published = [0.0] + sorted(parts["hidden"])
        true_hidden = T.km_hidden_truth(times, published, step)
        assert {t: iv for t, iv in parts["hidden"].items()} == {t: (v, v) for t, v in true_hidden.items()}, table
    ex = A.km_exposures(rec, 10)
    # follow-up ending exactly on a grid day: one woman on day 2555, one man on day 1095, two men on day 1460
    assert {("sex_female", "hidden", 2555.0), ("sex_male", "hidden", 1095.0), ("sex_male", "hidden", 1460.0)} <= set(ex)
    assert ex[("sex_male", "hidden", 1460.0)] == (2, 2)
    assert ("sex_female", "residual", (730.0, 1460.0)) in ex


def test_control_planted_rows():
    ids = json.loads((CONTROL / "planted_rows" / "truth.json").read_text())["planted_ids"]
    assert len(ids) == 999
    for variant in ("unverified", "forged"):
        d = CONTROL / "planted_rows" / variant
        res = json.loads((d / "results.json").read_text())["results"]
        assert {"tripod_ai_report", "model_card", "model_card_json"} <= {r["properties"]["name"] for r in res.values()}
        assert A.planted_rows(d, ids) == set(ids), variant          # all 999 person rows left in the report


# ================================================================================================================
# new: fresh template runs with the installed code; the attacks must recover nothing

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("attacks")


@pytest.fixture(scope="module")
def cdm(work):
    return S.make_cdm(work / "data" / "cdm.duckdb")


def run_or_refused(name: str, params: dict, out: Path) -> Path:
    "A run folder; a run that fails (a refusal, e.g. of a tampered input or a differencing release) is returned too."
    from healthbench.errors import TemplateRunError
    try:
        return S.template(name, params, out)
    except TemplateRunError:
        return out


@pytest.fixture(scope="module")
def characterise_runs(work, cdm):
    return {g: S.template("characterise", {"cdm_path": str(cdm), "group": g}, work / "table1" / g) for g in S.GROUPS}


@pytest.fixture(scope="module")
def differencing_runs(work, cdm):
    "Two sibling runs in one project folder: the example cohort, then the same cohort without chronic kidney disease."
    a = S.template("characterise", {"cdm_path": str(cdm), "group": "sex"}, work / "project" / "runA")
    b = run_or_refused("characterise", {"cdm_path": str(cdm), "group": "sex",
                                        "cohort_json": json.dumps(S.example_cohort(no_ckd=True))}, work / "project" / "runB")
    return a, b


@pytest.fixture(scope="module")
def predict_run(work, cdm):
    return S.template("predict", {"cdm_path": str(cdm), **S.PREDICT}, work / "predict")


@pytest.fixture(scope="module")
def test_set(predict_run):
    return pd.read_parquet(predict_run / "models" / "test_set.parquet")     # row-level: stays in the TRE


@pytest.fixture(scope="module")
def fairness_run(work, predict_run):
    return S.template("fairness", {"predict_run": str(predict_run), **S.FAIRNESS}, work / "fairness")


@pytest.fixture(scope="module")
def explain_run(work, predict_run):
    return S.template("explain", {"predict_run": str(predict_run), **S.EXPLAIN}, work / "explain")


def assert_nothing_recovered(rec: dict, true: dict, threshold: int, what: str):
    ex = A.exposures(rec, true, threshold)
    exact = {k: v for k, v in ex.items() if v[0] == v[1]}
    assert not ex, (f"{what}: {len(ex)} small counts pinned to fewer than {threshold} values ({len(exact)} exactly), "
                    f"as (lo, hi, truth): {show(ex)}")


def test_new_ratios(predict_run, test_set):
    require_accounted(predict_run, "calibration_bins_logistic", "calibration_bins_gradient_boosting")
    rel = predict_run / "release"
    rec = A.ratios(rel)
    events = {}
    for m in ("logistic", "gradient_boosting"):
        events.update({k: v[1] for k, v in T.calibration_truth(test_set, m).items()})
    assert_nothing_recovered(rec, events, THRESHOLD["uk_default"], "calibration bins: events from observed x n")


def test_new_percentages(characterise_runs, cdm):
    found = {}
    for g, run in characterise_runs.items():
        require_accounted(run, "table1")
        data = T.analysis_data(cdm, T.run_cohort(run))
        true = T.table1_truth(data, g)
        rec = A.percentages(run / "release")
        found.update({(g,) + k: v for k, v in A.exposures(rec, true, THRESHOLD["uk_default"]).items()})
    assert not found, f"Table 1 'k (p%)': {len(found)} small counts pinned, as (lo, hi, truth): {show(found)}"


def test_new_attrition(work, cdm):
    cohort = S.example_cohort(no_ckd=True)
    run = S.template("characterise", {"cdm_path": str(cdm), "group": "sex", "cohort_json": json.dumps(cohort)},
                     work / "attrition")
    require_accounted(run, "attrition")
    rec = A.attrition(run / "release")
    assert_nothing_recovered(rec, T.attrition_truth(cdm, cohort), THRESHOLD["uk_default"], "attrition: excluded by each step")


def test_new_differencing(differencing_runs, cdm):
    a, b = differencing_runs
    require_accounted(a, "table1")
    rec = A.differencing(a / "release", b / "release")
    true = T.difference_truth(T.analysis_data(cdm, T.run_cohort(a)),
                              T.analysis_data(cdm, S.example_cohort(no_ckd=True)), "sex")
    assert_nothing_recovered(rec, true, THRESHOLD["uk_default"], "Table 1 of run A minus run B: the dropped people")


def test_new_net_benefit(predict_run, test_set):
    require_accounted(predict_run, "decision_curve", "split")
    rec = A.net_benefit(predict_run / "release")
    thresholds = sorted({k[1] for k in rec}) or [round(0.01 * i, 2) for i in range(1, 51)]
    true = {}
    for m, col in (("logistic", "logistic_model"), ("gradient_boosting", "gradient_boosting_model")):
        true.update({(col,) + k[1:]: v for k, v in T.confusion_truth(test_set, m, thresholds).items()})
    assert_nothing_recovered(rec, true, THRESHOLD["uk_default"], "decision curve: TP/FP/FN/TN")


def test_new_fairness(fairness_run, test_set):
    require_accounted(fairness_run, "subgroup_report")
    rec = A.fairness(fairness_run / "release")
    true = T.fairness_truth(test_set, S.FAIRNESS["model"], S.FAIRNESS["threshold"])
    assert_nothing_recovered(rec, true, THRESHOLD["uk_default"], "subgroup report: n, events, TP, FP, FN, TN")


def test_new_rounding(work, cdm):
    run = S.template("characterise", {"cdm_path": str(cdm), "group": "sex", "rules": "opensafely"}, work / "opensafely")
    require_accounted(run, "table1", "attrition")
    v = A.rounding(run / "release", base=5)
    assert not v, f"under rounding to 5, {len(v)} published numbers are not from counts rounded to 5: " + \
                  "; ".join(f"{x['file']} {x['cell']} = {x['value']!r} ({x['why']})" for x in v[:12])


def test_new_linked_tables(work):
    from healthbench.errors import HealthbenchError
    data = S.linked_data()
    try:
        bundle = S.linked_release(data, work / "linked")
    except HealthbenchError:
        bundle = None                                  # refusing to release the linked tables recovers nothing
    rec = A.linked_tables(bundle, "imd_by_sex", "imd", "sex") if bundle else {}
    assert_nothing_recovered(rec, S.linked_truth(data), THRESHOLD["uk_default"], "IMD x sex from its one-way tables")


def test_new_extremes(explain_run, test_set):
    rel = explain_run / "release"
    X = T.explained_rows(test_set, S.EXPLAIN["rows"], S.SEED)
    ext = T.extremes_truth(X, X.columns)
    rec = A.extremes(rel)
    assert any(accounted(explain_run, f"dependence_{f}") for f in ext), "no dependence table released or withheld"
    ex = A.extreme_exposures(rec, {f: v["values"] for f, v in ext.items()}, THRESHOLD["uk_default"])
    assert not ex, f"dependence tables: outer bin edges give away sample extremes (lo, hi, extreme, people): {show(ex)}"


def test_new_kaplan_meier(work, cdm):
    run = S.template("survival", {"cdm_path": str(cdm), **S.SURVIVAL}, work / "survival")
    level_tables = [f"at_risk_{S.SURVIVAL['group']}_{lv}" for lv in ("female", "male")]
    require_accounted(run, *level_tables)
    rec = A.kaplan_meier(run / "release")
    ex = A.km_exposures(rec, THRESHOLD["uk_default"])
    assert not ex, f"at-risk tables: at_risk(k) - at_risk(k+1) - events - censored pins small counts: {show(ex)}"


@pytest.mark.parametrize("variant", ["unverified", "forged"])
def test_new_planted_rows(variant, work, predict_run, characterise_runs, explain_run, fairness_run):
    planted = S.plant(predict_run, work / f"predict_planted_{variant}", forge=variant == "forged")
    rep = run_or_refused("report", {"characterise_run": str(characterise_runs["sex"]), "predict_run": str(planted),
                                    "explain_run": str(explain_run), "fairness_run": str(fairness_run)},
                         work / f"report_{variant}")
    found = A.planted_rows(rep / "release", S.PLANTED_IDS)
    assert not found, (f"{len(found)} of the 999 person rows planted in the predict run's release/ ({variant}) reached "
                       f"the report's release bundle")
