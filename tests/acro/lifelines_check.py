"""healthbench.stats' survival functions against lifelines (run in the second venv: tests/acro/run.sh).

Not named test_*.py on purpose: lifelines 0.30.3 pins pandas<3, so healthbench does not depend on it and the main
suite's venv need not have it. Only tests/acro/run.sh collects this file (by naming it on pytest's command line), in
the second virtual environment with pandas 2.3 and lifelines. The notebook (nbs/08_stats.ipynb) checks the same
functions against statsmodels in the main environment; this is a second, independent reference.

- `kaplan_meier` against `KaplanMeierFitter` (log-log CIs, lifelines' default): survival and CI limits to 1e-8 at
  every distinct time and on a grid; numbers at risk, events and censorings exactly equal to lifelines' event table.
- `cox` against `CoxPHFitter` (Efron ties): hazard ratios, CI limits and Wald p-values to 1e-5.
Each on simulated data with tied times: whole days (many ties) and follow-up 1..6 (heavy ties).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from scipy.special import expit

from healthbench.stats import cox, kaplan_meier

KM_EPS, COX_EPS = 1e-8, 1e-5


def days_data(seed: int = 8, n: int = 2000) -> pd.DataFrame:
    "Two arms, follow-up in whole days (ties), a hazard depending on arm, age and sex; some censoring."
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({"arm": rng.choice(["control", "treated"], n), "sex": rng.choice(["F", "M"], n),
                      "smoking": rng.choice(["never", "ex", "current"], n, p=[.5, .3, .2]),
                      "age": rng.normal(62, 11, n).round(1)})
    hazard = np.exp(-8 + 0.5 * (d["arm"] == "treated") + 0.03 * (d["age"] - 62) + 0.3 * (d["sex"] == "M"))
    event_day, censor_day = np.ceil(rng.exponential(1 / hazard)), np.ceil(rng.uniform(200, 2500, n))
    d["days"] = np.minimum(event_day, censor_day).astype(int)
    d["died"] = (event_day <= censor_day).astype(int)
    return d


def tied_data(seed: int = 80, n: int = 400) -> pd.DataFrame:
    "Follow-up 1..6 only, so nearly every event time is tied; a continuous and a three-level covariate."
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({"days": rng.integers(1, 7, n), "x": rng.normal(size=n), "arm": rng.choice(["a", "b", "c"], n)})
    d["died"] = rng.binomial(1, expit(0.7 + 0.5 * d["x"]))
    return d


DATASETS = {"days": days_data(), "tied": tied_data()}


def _close(ours, theirs, eps, what):
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = np.abs(ours - theirs)
    assert np.nanmax(diff, initial=0) < eps and (np.isnan(ours) == np.isnan(theirs)).all(), \
        f"{what}: max abs difference {np.nanmax(diff, initial=0):.3g} (eps {eps:g})"


def _lifelines_ci(kmf: KaplanMeierFitter) -> tuple[pd.Series, pd.Series]:
    ci = kmf.confidence_interval_
    return ci.filter(like="lower").iloc[:, 0], ci.filter(like="upper").iloc[:, 0]


@pytest.mark.parametrize("name", DATASETS)
def test_kaplan_meier_every_time(name):
    d = DATASETS[name]
    km = kaplan_meier(d["days"], d["died"], group=d["arm"])
    for arm, s in d.groupby("arm"):
        ours = km[km["group"] == arm]
        at = ours["time"].to_numpy()
        kmf = KaplanMeierFitter().fit(s["days"], s["died"])
        lo, hi = _lifelines_ci(kmf)
        _close(ours["survival"], kmf.survival_function_.iloc[:, 0].loc[at], KM_EPS, f"{name}/{arm} survival")
        _close(ours["lo"], lo.loc[at], KM_EPS, f"{name}/{arm} lo")
        _close(ours["hi"], hi.loc[at], KM_EPS, f"{name}/{arm} hi")
        et = kmf.event_table.loc[at]
        assert ours["at_risk"].tolist() == et["at_risk"].astype(int).tolist()
        assert ours["events"].tolist() == et["observed"].astype(int).tolist()
        assert ours["censored"].tolist() == et["censored"].astype(int).tolist()


@pytest.mark.parametrize("name", DATASETS)
def test_kaplan_meier_grid(name):
    d = DATASETS[name]
    grid = [0, 365, 730, 1095, 1460, 1825, 3000] if name == "days" else [0, 1, 2, 3, 4, 5, 6, 8]
    km = kaplan_meier(d["days"], d["died"], group=d["arm"], times=grid)
    for arm, s in d.groupby("arm"):
        ours = km[km["group"] == arm]
        kmf = KaplanMeierFitter().fit(s["days"], s["died"])
        lo, hi = _lifelines_ci(kmf)
        _close(ours["survival"], kmf.survival_function_at_times(grid), KM_EPS, f"{name}/{arm} grid survival")
        _close(ours["lo"], [lo[lo.index <= g].iloc[-1] for g in grid], KM_EPS, f"{name}/{arm} grid lo")
        _close(ours["hi"], [hi[hi.index <= g].iloc[-1] for g in grid], KM_EPS, f"{name}/{arm} grid hi")


def _design(d: pd.DataFrame, name: str) -> tuple[list[str], pd.DataFrame]:
    "Covariates for healthbench and the same model's design matrix built by hand for lifelines."
    if name == "days":
        covs = ["arm", "age", "sex", "smoking"]
        X = pd.DataFrame({"arm[treated]": d["arm"] == "treated", "age": d["age"], "sex[M]": d["sex"] == "M",
                          "smoking[ex]": d["smoking"] == "ex", "smoking[never]": d["smoking"] == "never"})
    else:
        covs = ["x", "arm"]
        X = pd.DataFrame({"x": d["x"], "arm[b]": d["arm"] == "b", "arm[c]": d["arm"] == "c"})
    return covs, X.astype(float)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("name", DATASETS)
def test_cox(name, alpha):
    d = DATASETS[name]
    covs, X = _design(d, name)
    ours = cox(d, "days", "died", covs, alpha=alpha)
    fit = CoxPHFitter(alpha=alpha).fit(X.assign(T=d["days"], E=d["died"]), duration_col="T", event_col="E")
    s = fit.summary.loc[X.columns]
    assert ours.index.tolist() == X.columns.tolist()
    pct = f"{100 * (1 - alpha):g}%"
    _close(ours["hr"], s["exp(coef)"], COX_EPS, f"{name} hr")
    _close(ours["lo"], s[f"exp(coef) lower {pct}"], COX_EPS, f"{name} lo")
    _close(ours["hi"], s[f"exp(coef) upper {pct}"], COX_EPS, f"{name} hi")
    _close(ours["p"], s["p"], COX_EPS, f"{name} p")
    assert ours.attrs["events"] == fit.event_observed.sum() and ours.attrs["n"] == fit._n_examples
    assert ours.attrs["dof"] == int(d["died"].sum()) - X.shape[1]
