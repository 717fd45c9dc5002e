"""The hidden truth behind released bundles, computed from row-level data that stays in the TRE.

Never from a bundle: from the run's synthetic CDM (cohort and analysis dataset rebuilt with healthbench's cohort and
feature code, then counted here with pandas) or from the predict run's `models/test_set.parquet`. The counts
themselves (Table 1 cells, bins, TP/FP, ...) are computed here from their definitions, not by healthbench.stats."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORICAL = ["sex", "age_band", "ethnicity", "imd_quintile", "smoking", "history_hypertension",
               "history_atrial_fibrillation", "history_chronic_kidney_disease", "statin_1y"]
CONTINUOUS = ["age", "systolic_bp", "total_cholesterol", "hdl_cholesterol", "bmi", "hba1c", "outpatient_visits_1y"]
OUTCOME_CONCEPTS = (4329847, 381316)     # MI or stroke, the templates' outcome


def run_cohort(run_dir: Path) -> dict:
    "The cohort definition a run used (its manifest, which stays in the TRE with the run)."
    return json.loads((Path(run_dir) / "manifest.json").read_text())["cohort"]


def cohort_result(cdm_path, cohort: dict):
    from healthbench.cdm import connect
    from healthbench.cohort import Cohort, generate
    cdm = connect(str(cdm_path))
    return cdm, generate(cdm, Cohort.from_json(json.dumps(cohort)))


def analysis_data(cdm_path, cohort: dict, outcome_days: int = 3650, imd_missing=pd.NA) -> pd.DataFrame:
    "One row per cohort record with the templates' covariates, age band and outcome (as characterise/survival build it)."
    from healthbench.concepts import concept_set
    from healthbench.features import Outcome, default_covariates, extract
    cdm, result = cohort_result(cdm_path, cohort)
    cvd = concept_set("MI or stroke", *OUTCOME_CONCEPTS)
    data = extract(cdm, result, default_covariates(), Outcome(cvd, "condition", time_at_risk=(1, outcome_days)))
    data["age_band"] = pd.cut(data.age, [0, 50, 60, 70, 200], right=False, labels=["<50", "50-59", "60-69", "70+"]).astype(str)
    data["imd_quintile"] = data.imd_quintile.astype("Int64").astype(str).replace("<NA>", imd_missing)
    return data


def attrition_truth(cdm_path, cohort: dict) -> dict:
    "{(step, column): people or records excluded by step `step`} (step i: from row i-1 to row i)."
    _, result = cohort_result(cdm_path, cohort)
    a = result.attrition
    out = {}
    for col in ("persons", "records"):
        v = a[col].astype(int).tolist()
        out.update({(i, col): v[i - 1] - v[i] for i in range(1, len(v))})
    return out


def _label(v) -> str:
    return str(v)


def table1_truth(data: pd.DataFrame, group: str) -> dict:
    "{(variable, level, column): count} for Table 1's n row, categorical levels and missing rows (columns: groups, All)."
    parts = {_label(g): d for g, d in data.groupby(group, sort=True)} | {"All": data}
    out = {}
    for c, d in parts.items():
        out[("n", "", c)] = len(d)
        for v in CATEGORICAL + CONTINUOUS:
            if v == group:
                continue
            out[(v, "missing", c)] = int(d[v].isna().sum())
            if v in CATEGORICAL:
                for level in data[v].dropna().unique():
                    out[(v, _label(level), c)] = int((d[v].dropna().map(_label) == _label(level)).sum())
    return out


def difference_truth(data_a: pd.DataFrame, data_b: pd.DataFrame, group: str) -> dict:
    "Table-1 counts of the records in A whose person is not in B (the people a differencing attack isolates)."
    gone = data_a[~data_a.person_id.isin(data_b.person_id)]
    t = table1_truth(pd.concat([gone, data_a.iloc[:0]]), group) if len(gone) else {}
    levels = table1_truth(data_a, group)            # every cell of A's table, zero where nobody was dropped
    return {k: t.get(k, 0) for k in levels}


def decile_bins(p: np.ndarray, n_bins: int = 10) -> np.ndarray:
    "Bin (1..n_bins) of each prediction: quantile bins, upper edge inclusive (numpy percentiles of p)."
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    return np.searchsorted(edges[1:-1], p, side="left") + 1


def calibration_truth(test: pd.DataFrame, model: str) -> dict:
    "{(model, bin): (n, events)} of the test split's calibration bins."
    p, y = test[f"p_{model}"].to_numpy(), test["y"].to_numpy().astype(int)
    b = decile_bins(p)
    return {(model, str(k)): (int((b == k).sum()), int(y[b == k].sum())) for k in np.unique(b)}


def confusion_truth(test: pd.DataFrame, model: str, thresholds) -> dict:
    "{(model, threshold, tp|fp|fn|tn): count}: treat if p >= threshold."
    p, y = test[f"p_{model}"].to_numpy(), test["y"].to_numpy().astype(int)
    out = {}
    for t in thresholds:
        pos = p >= t
        tp, fp = int((pos & (y == 1)).sum()), int((pos & (y == 0)).sum())
        e = int(y.sum())
        out.update({(model, round(float(t), 10), "tp"): tp, (model, round(float(t), 10), "fp"): fp,
                    (model, round(float(t), 10), "fn"): e - tp, (model, round(float(t), 10), "tn"): len(y) - e - fp})
    return out


def fairness_groups(test: pd.DataFrame) -> pd.DataFrame:
    "The fairness template's grouping variables from the test split (imd as whole-number text; missing as 'missing')."
    return pd.DataFrame({"sex": test.sex.astype(object), "ethnicity": test.ethnicity.astype(object),
                         "imd_quintile": test.imd_quintile.map(lambda v: None if pd.isna(v) else str(int(v)))})


def fairness_truth(test: pd.DataFrame, model: str, threshold: float) -> dict:
    "{(variable, group, n|events|tp|fp|fn|tn): count} overall and per level of sex, ethnicity and IMD quintile."
    y = test["y"].to_numpy().astype(int)
    yhat = test[f"p_{model}"].to_numpy() >= threshold
    groups = fairness_groups(test)
    masks = [("overall", "overall", np.ones(len(y), dtype=bool))]
    for var in groups.columns:
        g = groups[var]
        for level in sorted(g.dropna().unique(), key=str):
            masks.append((var, str(level), (g == level).to_numpy()))
        if g.isna().any():
            masks.append((var, "missing", g.isna().to_numpy()))
    out = {}
    for var, level, m in masks:
        n, e = int(m.sum()), int(y[m].sum())
        tp, fp = int((yhat & m & (y == 1)).sum()), int((yhat & m & (y == 0)).sum())
        out.update({(var, level, "n"): n, (var, level, "events"): e, (var, level, "tp"): tp, (var, level, "fp"): fp,
                    (var, level, "fn"): e - tp, (var, level, "tn"): n - e - fp})
    return out


def explained_rows(test: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    "The rows the explain template explains: a sample of the test split's features (all of them when rows >= its size)."
    X = test.drop(columns=[c for c in test.columns if c == "y" or c.startswith("p_")])
    return X.sample(min(rows, len(X)), random_state=seed).reset_index(drop=True)


def extremes_truth(X: pd.DataFrame, features) -> dict:
    "{feature: {'min': value, 'max': value, 'values': sorted non-missing values}} of numeric features."
    out = {}
    for f in features:
        if f in X.columns and pd.api.types.is_numeric_dtype(X[f]):
            v = np.sort(X[f].dropna().to_numpy(dtype=float))
            if len(v):
                out[f] = {"min": float(v[0]), "max": float(v[-1]), "values": v}
    return out


def km_hidden_truth(times: np.ndarray, published_times: list, step: int) -> dict:
    """{T_k: #(a_k <= t <= T_k)} for published rows k >= 1, a_k = T_(k-1) + step: the follow-up ends an at-risk
    table's arithmetic reveals (for an unmerged row, a_k = T_k: people whose follow-up ended exactly on grid day T_k)."""
    t = np.asarray(times)
    out = {}
    for k in range(1, len(published_times)):
        a, T = published_times[k - 1] + step, published_times[k]
        out[float(T)] = int(((t >= a) & (t <= T)).sum())
    return out
