"""Benchmark of `explain(model, X, background=B)` (healthbench's exact interventional TreeSHAP) against
`shap.TreeExplainer(model, data=B, feature_perturbation="interventional")`.

Run from the repository root:

    python bench/explain_interventional.py                      # 20,000 x 30 training rows, SHAP for 2,000, 100 background
    python bench/explain_interventional.py --explain-rows 500 --repeats 1       # quick check

Data: `simulate` of bench/explain.py (standard normal covariates, 5% missing, a logistic outcome with a quadratic
term and an interaction); models that do not accept missing values get them as 0. Models: HistGradientBoosting
(max_iter=100, early_stopping=False), GradientBoosting (100 trees of depth 3), RandomForest (100 trees of depth 8),
all random_state=0. For each model, alternating, each timed end to end (median over --repeats), explainer
construction included:

- healthbench: `explain(model, X, background=B)` (includes its additivity check);
- shap:        `shap.TreeExplainer(model, data=B, feature_perturbation="interventional", model_output="raw")
               .shap_values(X, check_additivity=False)`.

Printed: both medians, the ratio shap/healthbench, each one's additivity error against the model's own output, and the
largest difference between the two sets of values. shap 0.51's values for HistGradientBoosting do not add up
(see nbs/11_explain.ipynb, where both engines are checked against brute-force Shapley values). Not part of the test
suite.
"""
from __future__ import annotations
import argparse, statistics, sys, time, warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain import simulate   # noqa: E402  (bench/explain.py)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--explain-rows", type=int, default=2_000)
    p.add_argument("--background", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import shap, sklearn
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from healthbench.explain import explain
    X, y = simulate(a.rows, a.features, a.seed)
    print(f"shap {shap.__version__}, scikit-learn {sklearn.__version__}; {a.rows:,} x {a.features} training rows, "
          f"SHAP for {a.explain_rows:,} rows against {a.background} background rows; medians of {a.repeats}")
    models = [("HistGradientBoosting", HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0), True),
              ("GradientBoosting 100 x depth 3", GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0), False),
              ("RandomForest 100 x depth 8", RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0), False)]
    print(f"{'model':32} {'healthbench s':>13} {'shap s':>8} {'shap/hb':>8} {'hb additivity':>14} {'shap additivity':>16} {'max |diff|':>11}")
    for name, model, takes_nan in models:
        XX = X if takes_nan else np.nan_to_num(X)
        model.fit(XX, y)
        Z, B = XX[:a.explain_rows], XX[-a.background:]
        out = model.decision_function if hasattr(model, "decision_function") else (lambda A: model.predict_proba(A)[:, 1])
        hb, sh = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter(); e = explain(model, Z, background=B); hb.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex = shap.TreeExplainer(model, data=B, feature_perturbation="interventional", model_output="raw")
                v = np.asarray(ex.shap_values(Z, check_additivity=False))
            sh.append(time.perf_counter() - t0)
        base = np.ravel(ex.expected_value)
        if v.ndim == 3: v, base = v[..., 1], base[1:]
        shap_err = float(np.abs(base[-1] + v.sum(1) - out(Z)).max())
        m_hb, m_sh = statistics.median(hb), statistics.median(sh)
        print(f"{name:32} {m_hb:>13.2f} {m_sh:>8.2f} {m_sh / m_hb:>7.2f}x {e.additivity_error:>14.1e} {shap_err:>16.1e} "
              f"{np.abs(v - e.values).max():>11.1e}")


if __name__ == "__main__":
    main()
