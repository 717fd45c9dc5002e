"""Benchmark of `healthbench.explain.explain` against `shap.TreeExplainer` defaults on gradient boosting.

Run from the repository root:

    python bench/explain.py                                    # defaults: 100,000 x 30 training rows, SHAP for 10,000, 5 repeats
    python bench/explain.py --rows 20000 --explain-rows 2000 --repeats 1          # quick check

Data: `--rows` x `--features` standard normal covariates (fixed --seed, 5% of values missing) and a binary outcome
from a logistic model with a quadratic term and an interaction. Model: scikit-learn's
HistGradientBoostingClassifier (max_iter=100, early_stopping=False, random_state=0; other parameters default),
fitted once. Then, for the first `--explain-rows` rows, alternating so both see the same caches, each timed
end to end (median over --repeats):

- healthbench: `explain(model, X)` (method "auto" picks exact path-dependent TreeSHAP, healthbench's leafwise
               engine), including its additivity check against `model.decision_function`;
- shap:        `shap.TreeExplainer(model)(X)` with shap's defaults (tree_path_dependent, raw output = log-odds,
               check_additivity=True), explainer construction included.

Additivity error: max |base value + sum of SHAP values - model.decision_function(X)| over the explained rows, for
both. The two sets of SHAP values are also compared with each other. Target (from the issue): healthbench at least
as fast as shap's default (ratio shap/healthbench >= 1), additivity error < 1e-6. Not part of the test suite.
"""
from __future__ import annotations
import argparse, os, platform, statistics, time

import numpy as np

TARGET_RATIO, TARGET_ADDITIVITY = 1.0, 1e-6


def simulate(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    beta = np.linspace(1.0, 0.0, features)
    eta = X @ beta + 0.5 * X[:, 0] ** 2 - 0.5 * X[:, 0] * X[:, 1] - 1.5
    y = rng.random(rows) < 1 / (1 + np.exp(-eta))
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y.astype(int)


def machine_info() -> str:
    import numpy, shap, sklearn
    return (f"nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))})  python={platform.python_version()}  "
            f"numpy={numpy.__version__}  scikit-learn={sklearn.__version__}  shap={shap.__version__}  "
            f"platform={platform.platform()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="training rows")
    p.add_argument("--features", type=int, default=30, help="covariates")
    p.add_argument("--explain-rows", type=int, default=10_000, help="rows to explain")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each (medians reported)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import pandas as pd, shap
    from sklearn.ensemble import HistGradientBoostingClassifier
    from healthbench.explain import explain
    print(machine_info())
    print(f"targets: healthbench at least as fast as shap.TreeExplainer defaults (ratio >= {TARGET_RATIO:g}), "
          f"additivity error < {TARGET_ADDITIVITY:g}\n", flush=True)
    X, y = simulate(a.rows, a.features, a.seed)
    t0 = time.perf_counter()
    model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0).fit(X, y)
    n_leaves = sum(p[0].nodes["is_leaf"].sum() for p in model._predictors)
    print(f"fitted HistGradientBoostingClassifier on {a.rows:,} x {a.features} in {time.perf_counter() - t0:.1f} s: "
          f"{model.n_iter_} trees, {n_leaves:,} leaves", flush=True)
    Xe = X[:a.explain_rows]
    margin = model.decision_function(Xe)
    runs = {"healthbench": [], "shap": []}
    for r in range(a.repeats):
        t0 = time.perf_counter(); ours = explain(model, Xe); runs["healthbench"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); theirs = shap.TreeExplainer(model)(Xe); runs["shap"].append(time.perf_counter() - t0)
        print(f"  repeat {r + 1}/{a.repeats}: healthbench {runs['healthbench'][-1]:.2f} s, shap {runs['shap'][-1]:.2f} s",
              flush=True)
    err = {"healthbench": np.abs(ours.base_values + ours.values.sum(1) - margin).max(),
           "shap": np.abs(theirs.base_values + theirs.values.sum(1) - margin).max()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    fmt = "{:>12} {:>10} {:>8} {:>8} {:>12} {:>16}"
    print(f"\nSHAP for {a.explain_rows:,} rows; medians over {a.repeats} repeat(s)")
    print(fmt.format("method", "median s", "min s", "max s", "rows/s", "additivity err"))
    for k in runs:
        print(fmt.format(k, f"{med[k]:.3f}", f"{min(runs[k]):.3f}", f"{max(runs[k]):.3f}",
                         f"{a.explain_rows / med[k]:,.0f}", f"{err[k]:.2e}"))
    ratio = med["shap"] / med["healthbench"]
    print(f"\nratio shap / healthbench = {ratio:.2f}x; engine: {ours.engine}")
    print(f"max |healthbench - shap| SHAP value difference: {np.abs(ours.values - theirs.values).max():.2e}")
    print(f"target speed     ratio >= {TARGET_RATIO:g}: {'PASS' if ratio >= TARGET_RATIO else 'MISS'} ({ratio:.2f}x)")
    print(f"target additivity < {TARGET_ADDITIVITY:g}: {'PASS' if err['healthbench'] < TARGET_ADDITIVITY else 'MISS'} "
          f"({err['healthbench']:.2e})")


if __name__ == "__main__":
    main()
