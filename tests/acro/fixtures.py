"""Deterministic microdata and table specs for comparing healthbench's disclosure checks with ACRO.

Plain numpy/pandas only (importable from either virtual environment). ``make_microdata()`` gives 400 rows,
200 F and 200 M; each categorical column is laid out so that its crosstab with ``sex`` has the exact counts
written next to it, and each value column plants its trick in one named cell of ``site x sex``
(every ``site x sex`` cell has 50 rows). Values are integers stored as float, so sums and ratios are exact.

A spec is ``{"name", "kind": "crosstab"|"pivot_table", "index", "columns", "values", "aggfunc", "margins"}``;
``"acro_config"`` (optional) overrides ACRO's default.yaml for that spec only.

Identities worth knowing when reading the expectations (ACRO defaults n=2, k=0.9, p=0.1), with
R = cell total - top1 - top2 and all values >= 0:
  NK fails      <=> (top1 + top2) / total >= 0.9  <=> R <= (top1 + top2) / 9
  p-ratio fails <=> R / top1 < 0.1
  so p-ratio fail => NK fail: R < 0.1*top1 <= 0.1*(top1 + top2) < (top1 + top2)/9. A p-ratio-only
  failure is impossible with non-negative values; NK-only failures are possible (spec mean_nk_only).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEED = 20240611
N_PER_SEX = 200


def _layout(rng: np.random.Generator, f: dict, m: dict) -> np.ndarray:
    """A column whose counts within the F block (rows 0..199) and M block (200..399) are ``f`` and ``m``."""
    out = []
    for counts in (f, m):
        assert sum(counts.values()) == N_PER_SEX, counts
        block = np.concatenate([np.repeat(np.array([k], dtype=object), n) for k, n in counts.items()])
        out.append(rng.permutation(block))
    return np.concatenate(out)


def make_microdata(seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 2 * N_PER_SEX
    sex = np.array(["F"] * N_PER_SEX + ["M"] * N_PER_SEX, dtype=object)
    # site x sex: every cell 50 (all safe)
    site = _layout(rng, {"A": 50, "B": 50, "C": 50, "D": 50}, {"A": 50, "B": 50, "C": 50, "D": 50})
    # ward x sex: w1/F = 10 (exactly the threshold), w1/M = 9 (one below); no zeros
    ward = _layout(rng, {"w1": 10, "w2": 95, "w3": 95}, {"w1": 9, "w2": 95, "w3": 96})
    # region x sex: S/F = 0 (the only small cell: a zero); N/F = 100
    region = _layout(rng, {"N": 100, "S": 0, "E": 50, "W": 50}, {"N": 50, "S": 50, "E": 50, "W": 50})
    # arm x sex: a/F = 4, a/M = 5 -> margin a/All = 9; column margins 200, 200; total 400
    arm = _layout(rng, {"a": 4, "b": 98, "c": 98}, {"a": 5, "b": 97, "c": 98})
    # stage: pandas Categorical with an unused category "IV" (empty category row)
    stage = _layout(rng, {"I": 70, "II": 70, "III": 60}, {"I": 60, "II": 70, "III": 70})

    def cell(s: str, x: str) -> np.ndarray:  # row positions of site x sex cell (s, x), 50 of them
        return np.flatnonzero((site == s) & (sex == x))

    def base() -> np.ndarray:
        return rng.integers(100, 301, size=n).astype(float)

    # cost: A/F holds two values of 100000 among 48 of 100..300 -> NK (0.95+) and p-ratio (< 0.01) both fail
    cost = base()
    cost[cell("A", "F")[:2]] = 100_000.0
    # spend: B/M = 10000, 10000 and 48 x 35 (R = 1680) -> NK 20000/21680 = 0.922 fails, p 1680/10000 = 0.168 passes
    spend = base()
    idx = cell("B", "M")
    spend[idx[:2]] = 10_000.0
    spend[idx[2:]] = 35.0
    # nkb (boundaries, all exact in binary floating point):
    #   C/F: 450, 450, 20 x 5, 28 x 0  -> (450+450)/1000 = 0.9 exactly (NK: fails iff >=), p = 100/450 passes
    #   C/M: 450, 449, 20 x 5, 1 x 1, 27 x 0 -> 899/1000 = 0.899 (NK passes)
    #   D/F: 1000, 1000, 20 x 5, 28 x 0 -> p = 100/1000 = 0.1 exactly (p-ratio: fails iff <), NK fails (2000/2100)
    #   D/M: 1000, 1000, 19 x 5, 4 x 1, 25 x 0 -> p = 99/1000 (p-ratio fails), NK fails
    nkb = base()
    for (s, x), vals in {
        ("C", "F"): [450, 450] + [5] * 20 + [0] * 28,
        ("C", "M"): [450, 449] + [5] * 20 + [1] + [0] * 27,
        ("D", "F"): [1000, 1000] + [5] * 20 + [0] * 28,
        ("D", "M"): [1000, 1000] + [5] * 19 + [1] * 4 + [0] * 25,
    }.items():
        nkb[cell(s, x)] = np.array(vals, dtype=float)
    # units: A/M all 0 (50 rows: count safe, sum 0), B/F has one contributor (1 x 500, 49 x 0)
    units = base()
    units[cell("A", "M")] = 0.0
    units[cell("B", "F")] = 0.0
    units[cell("B", "F")[0]] = 500.0
    # balance: one negative value (-50) in C/M; everything else positive
    balance = base()
    balance[cell("C", "M")[0]] = -50.0
    # score: A/F all exactly 7 (50 identical values)
    score = base()
    score[cell("A", "F")] = 7.0
    # bmi: A/F has 45 of its 50 values missing (5 contributors behind the mean, count table still says 50)
    bmi = rng.integers(18, 40, size=n).astype(float)
    bmi[cell("A", "F")[:45]] = np.nan
    # los (length of stay): region N/F has two huge values (dominance a median table does not check)
    los = rng.integers(1, 15, size=n).astype(float)
    nf = np.flatnonzero((region == "N") & (sex == "F"))
    los[nf[:2]] = 10_000.0

    df = pd.DataFrame(
        {
            "sex": sex, "site": site, "ward": ward, "region": region, "arm": arm,
            "stage": pd.Categorical(stage, categories=["I", "II", "III", "IV"]),
            "const": "all",
            "cost": cost, "spend": spend, "nkb": nkb, "units": units, "balance": balance,
            "score": score, "bmi": bmi, "los": los,
        }
    )
    order = rng.permutation(n)
    return df.iloc[order].reset_index(drop=True)


def _spec(name, kind, index, columns, values=None, aggfunc=None, margins=False, **extra) -> dict:
    return {"name": name, "kind": kind, "index": index, "columns": columns, "values": values,
            "aggfunc": aggfunc, "margins": margins, **extra}


SPECS: list[dict] = [
    # all 8 cells have 50 rows: nothing flagged
    _spec("counts_all_safe", "crosstab", "site", "sex"),
    # same table with margins: All row/column (200, 100) and grand total 400 are also checked, and pass
    _spec("counts_all_safe_margins", "crosstab", "site", "sex", margins=True),
    # threshold boundary: w1/F = 10 must pass, w1/M = 9 must fail (rule is count < 10)
    _spec("threshold_boundary_10_vs_9", "crosstab", "ward", "sex"),
    # S/F = 0: flagged by the zero check AND by the threshold check (0 < 10)
    _spec("zero_cell", "crosstab", "region", "sex"),
    # same table with zeros_are_disclosive False: the zero check flags nothing, threshold still flags S/F
    _spec("zero_cell_zeros_not_disclosive", "crosstab", "region", "sex",
          acro_config={"zeros_are_disclosive": False}),
    # margins with small inner cells: a/F = 4, a/M = 5 and their row margin a/All = 9 all fail
    _spec("margins_small_inner_and_margin", "crosstab", "arm", "sex", margins=True),
    # empty category: stage is Categorical with unused "IV"; ACRO forces dropna=False so IV/F, IV/M are 0 cells
    _spec("empty_category_row", "crosstab", "stage", "sex"),
    # one-dimensional frequency table as a crosstab against a constant column: arm a = 9 fails
    _spec("one_dim_frequency", "crosstab", "arm", "const"),
    # two row variables (MultiIndex rows): label format, and threshold on the 3-way cells
    _spec("multiindex_rows", "crosstab", ["site", "sex"], "arm"),
    # mean with one cell dominated by two large values (A/F): NK and p-ratio both fail there
    _spec("mean_nk_and_pratio_dominated", "crosstab", "site", "sex", values="cost", aggfunc="mean"),
    # same with margins: the A/All and All/F margins contain the same two values -> also dominated
    _spec("mean_dominance_with_margins", "crosstab", "site", "sex", values="cost", aggfunc="mean",
          margins=True),
    # NK fails but p-ratio passes in B/M (p-ratio-only failure is impossible, see module docstring)
    _spec("mean_nk_only", "crosstab", "site", "sex", values="spend", aggfunc="mean"),
    # exact boundaries as a pivot_table sum: NK ratio exactly 0.9 (C/F), p exactly 0.1 (D/F), and neighbours
    _spec("sum_exact_boundaries", "pivot_table", "site", "sex", values="nkb", aggfunc="sum"),
    # pivot_table sum: A/M is 50 zeros (sum 0; count 50), B/F has a single non-zero contributor
    _spec("sum_zero_valued_and_single_contributor", "pivot_table", "site", "sex", values="units",
          aggfunc="sum"),
    # negative value in C/M: ACRO's dominance checks become "review" (not defined with negatives)
    _spec("sum_with_negative", "pivot_table", "site", "sex", values="balance", aggfunc="sum"),
    # all 50 values in A/F are 7: does ACRO flag "all values the same"?
    _spec("mean_all_values_same", "crosstab", "site", "sex", values="score", aggfunc="mean"),
    # median over region x sex: zero cell S/F (NaN median) and two huge values in N/F (median: no dominance check)
    _spec("median_zero_and_dominated", "pivot_table", "region", "sex", values="los", aggfunc="median"),
    # mean over 5 non-missing values in a 50-row cell: threshold counts rows, not non-missing values
    _spec("mean_mostly_missing", "crosstab", "site", "sex", values="bmi", aggfunc="mean"),
    # same with check_missing_values True: the missing-value check appears and makes the table "review"
    _spec("mean_mostly_missing_checked", "crosstab", "site", "sex", values="bmi", aggfunc="mean",
          acro_config={"check_missing_values": True}),
    # count via aggfunc="count" on a pivot_table: a frequency table, but counts non-missing bmi values
    _spec("pivot_count_of_values", "pivot_table", "site", "sex", values="bmi", aggfunc="count"),
    # one-dimensional pivot_table (no columns): ACRO builds its count table another way (pivot_table count)
    _spec("one_dim_pivot_mean", "pivot_table", "arm", None, values="cost", aggfunc="mean"),
]
