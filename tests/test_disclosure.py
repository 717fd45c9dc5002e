"""Tests of `healthbench.disclosure` against independently computed expectations.

The key property is the differencing attack: hypothesis builds random count tables with pandas-style margins,
`check_table(tbl).suppressed()` hides cells, and an attacker written here (a linear programme over the row and
column equations of the published table, with scipy's `linprog`, independent of `protect`/`_ranges`) computes
the smallest and largest value every hidden cell could take. No hidden cell may be pinned down to less than a
range narrower than the threshold if its true count is under the threshold (a hidden cell of at least the threshold
passes the rule itself and may be worked out); every cell under the threshold must be hidden; published cells must
be the original values. A deterministic test shows the attacker does recover cells under primary-only suppression,
so the property can fail.

The other tests check each rule, rounding, presets and YAML rules, input validation, the row-level guard, the
release bundle, survival-table merging and `display_count` on small cases whose expected values were worked out
by hand from the semantics documented in nbs/07_disclosure.ipynb (the arithmetic is spelled out next to them).

`HB_HYPOTHESIS_EXAMPLES` sets the number of examples of the property tests (default 200).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import InvalidArgument  # noqa: E402
from scipy.optimize import linprog  # noqa: E402

from healthbench.disclosure import (  # noqa: E402
    MARGIN, Rules, Session, cell_stats, check_survival, check_table, crosstab, display_count, finalise,
    merge_intervals, opensafely, row_level_reasons, uk_default, verify_bundle)
from healthbench.errors import BundleExistsError, DisclosureError, InputError, RulesError  # noqa: E402

N_EXAMPLES = int(os.environ.get("HB_HYPOTHESIS_EXAMPLES", 200))
PROPERTY = settings(max_examples=N_EXAMPLES, deadline=None)
TOL = 1e-6


def _note(text: str) -> None:
    "hypothesis.note inside a property test, nothing elsewhere."
    try:
        note(text)
    except InvalidArgument:
        pass


# ----------------------------------------------------------------------------------------------------------------
# helpers written from the documented semantics (no healthbench code)

def with_margins(inner: np.ndarray) -> pd.DataFrame:
    "A 2-D count table with pandas-style margins: 'All' as the last row and column (sums), grand total in the corner."
    R, C = inner.shape
    df = pd.DataFrame(inner.astype("int64"), index=[f"r{i}" for i in range(R)], columns=[f"c{j}" for j in range(C)])
    df[MARGIN] = df.sum(axis=1)
    df.loc[MARGIN] = df.sum(axis=0)
    return df


def one_d(counts: list[int]) -> pd.DataFrame:
    "A 1-D count table: one column 'count' and an 'All' total row."
    df = pd.DataFrame({"count": np.asarray(counts, dtype="int64")}, index=[f"r{i}" for i in range(len(counts))])
    df.loc[MARGIN] = df["count"].sum()
    return df


def attack(published: pd.DataFrame, row_margin: bool = True, col_margin: bool = True) -> dict:
    """Min and max of every hidden (NaN) cell given every published cell, the margin equations and values >= 0.

    Equations: with a margin column, each row's inner cells sum to its last cell (for every row, the margin row
    included); with a margin row, each column's inner cells sum to its last cell (for every column, the margin
    column included). Hidden cells, margins among them, are the LP's variables. Equations without a hidden cell
    are checked to hold on the published numbers."""
    v = published.to_numpy(dtype=float)
    R, C = v.shape
    hid = [(i, j) for i in range(R) for j in range(C) if np.isnan(v[i, j])]
    pos = {c: k for k, c in enumerate(hid)}
    eqs = []   # (cells that add up, the cell holding their sum)
    if col_margin:
        eqs += [([(i, j) for j in range(C - 1)], (i, C - 1)) for i in range(R)]
    if row_margin:
        eqs += [([(i, j) for i in range(R - 1)], (R - 1, j)) for j in range(C)]
    A, b = [], []
    for parts, total in eqs:
        a, rhs = np.zeros(len(hid)), 0.0
        for c in parts:
            if c in pos:
                a[pos[c]] += 1.0
            else:
                rhs -= v[c]
        if total in pos:
            a[pos[total]] -= 1.0
        else:
            rhs += v[total]
        if a.any():
            A.append(a)
            b.append(rhs)
        else:
            assert abs(rhs) < TOL, f"published cells break the equation {parts} -> {total}"
    out = {}
    for k, c in enumerate(hid):
        e = np.zeros(len(hid))
        e[k] = 1.0
        lo = linprog(e, A_eq=np.array(A), b_eq=np.array(b), bounds=(0, None), method="highs")
        hi = linprog(-e, A_eq=np.array(A), b_eq=np.array(b), bounds=(0, None), method="highs")
        assert lo.status == 0, lo.message
        assert hi.status in (0, 3), hi.message            # 3: unbounded above
        out[c] = (lo.fun, math.inf if hi.status == 3 else -hi.fun)
    return out


def assert_safe(original: pd.DataFrame, published: pd.DataFrame, threshold: int = 10, **margins):
    "The properties of a suppressed table: small cells hidden, published ones exact, no small cell narrowed below the threshold."
    orig = original.to_numpy(dtype=float)
    pub = published.to_numpy(dtype=float)
    hidden = np.isnan(pub)
    _note(f"original:\n{original}\npublished:\n{published}")
    assert published.index.equals(original.index) and published.columns.equals(original.columns)
    failing = orig < threshold                       # zero included (zeros disclosive under the default rules)
    assert not (failing & ~hidden).any(), f"cells under the threshold published: {np.argwhere(failing & ~hidden)}"
    assert np.array_equal(pub[~hidden], orig[~hidden]), "a published cell differs from the original"
    ranges = attack(published, **margins)
    assert set(ranges) == {tuple(int(x) for x in c) for c in np.argwhere(hidden)}
    for c, (lo, hi) in ranges.items():
        _note(f"cell {c}: true {orig[c]}, feasible [{lo}, {hi}]")
        if orig[c] < threshold:
            assert hi - lo >= threshold - TOL, f"hidden small cell {c} narrowed to [{lo}, {hi}], true {orig[c]}"
        assert lo - TOL <= orig[c] <= hi + TOL, f"true value {orig[c]} of {c} outside [{lo}, {hi}]"
    return ranges


# ----------------------------------------------------------------------------------------------------------------
# 1. differencing attack

cell_value = st.one_of(st.integers(0, 3), st.integers(1, 12), st.integers(10, 200))


@st.composite
def inner_tables(draw):
    R = draw(st.integers(2, 6))
    C = draw(st.integers(2, 5))
    return np.array(draw(st.lists(cell_value, min_size=R * C, max_size=R * C)), dtype="int64").reshape(R, C)


@PROPERTY
@given(inner_tables())
def test_suppressed_2d_table_survives_differencing_attack(inner):
    tbl = with_margins(inner)
    safe = check_table(tbl).suppressed()
    assert_safe(tbl, safe.table)
    if (tbl.to_numpy() >= 10).all():          # nothing fails: nothing is hidden
        assert not safe.table.isna().to_numpy().any()


@PROPERTY
@given(st.lists(cell_value, min_size=2, max_size=8))
def test_suppressed_1d_table_survives_differencing_attack(counts):
    tbl = one_d(counts)
    safe = check_table(tbl).suppressed()
    assert_safe(tbl, safe.table, row_margin=True, col_margin=False)


def test_primary_only_suppression_is_recoverable_and_suppressed_is_not():
    # inner [[20, 3], [15, 30], [0, 40]]; row totals 23, 45, 40; column totals 35, 73; grand total 108.
    tbl = with_margins(np.array([[20, 3], [15, 30], [0, 40]]))
    assert tbl.to_numpy().tolist() == [[20, 3, 23], [15, 30, 45], [0, 40, 40], [35, 73, 108]]
    primary_only = tbl.astype(float)
    primary_only.iloc[0, 1] = np.nan      # 3 < 10
    primary_only.iloc[2, 0] = np.nan      # 0 (disclosive)
    # by hand: row r0 gives 23 - 20 = 3; row r2 gives 40 - 40 = 0: both recovered exactly
    got = attack(primary_only)
    assert set(got) == {(0, 1), (2, 0)}
    assert got[(0, 1)] == pytest.approx((3.0, 3.0), abs=TOL)
    assert got[(2, 0)] == pytest.approx((0.0, 0.0), abs=TOL)
    with pytest.raises(AssertionError, match="narrowed to"):
        assert_safe(tbl, primary_only)
    # the library's suppression of the same table hides more and nothing is recoverable
    safe = check_table(tbl).suppressed()
    hidden = safe.table.isna().to_numpy()
    assert hidden[0, 1] and hidden[2, 0] and hidden.sum() > 2
    assert_safe(tbl, safe.table)
    assert safe.primary.to_numpy().sum() == 2
    assert not (safe.primary.to_numpy() & safe.secondary.to_numpy()).any()
    assert np.array_equal(safe.primary.to_numpy() | safe.secondary.to_numpy(), hidden)


def test_primary_only_1d_is_recoverable():
    tbl = one_d([50, 4, 30])                  # total 84; the 4 is 84 - 50 - 30
    primary_only = tbl.astype(float)
    primary_only.iloc[1, 0] = np.nan
    assert attack(primary_only, col_margin=False)[(1, 0)] == pytest.approx((4.0, 4.0), abs=TOL)
    safe = check_table(tbl).suppressed()
    assert_safe(tbl, safe.table, col_margin=False)


def test_small_margin_is_hidden_too():
    # row r1 = [3, 4] has total 7 < 10: the margin cell itself fails and must not be published
    tbl = with_margins(np.array([[40, 50], [3, 4], [60, 70]]))
    safe = check_table(tbl).suppressed()
    assert np.isnan(safe.table.loc["r1", MARGIN])
    assert_safe(tbl, safe.table)


# ----------------------------------------------------------------------------------------------------------------
# 2. rules

def test_threshold_boundary_and_zeros():
    t = pd.DataFrame({"n": [9, 10, 11, 0]}, index=list("abcd"))
    chk = check_table(t)
    assert chk.cells["threshold"] == [[0, 0], [3, 0]]      # 9 fails, 10 and 11 pass, 0 fails (zeros disclosive)
    assert chk.verdict == "fail"
    assert check_table(t, rules=Rules(zeros_disclosive=False)).cells["threshold"] == [[0, 0]]
    assert check_table(t, zeros_ok=True).cells["threshold"] == [[0, 0]]
    assert check_table(pd.DataFrame({"n": [10, 10]})).verdict == "pass"
    assert check_table(pd.DataFrame({"n": [0, 10]}), rules=Rules(zeros_disclosive=False)).verdict == "pass"
    assert check_table(pd.DataFrame({"n": [2, 3]}), rules=Rules(threshold=3)).cells["threshold"] == [[0, 0]]
    r = chk.reasons["n"].tolist()
    assert r[1] == r[2] == "" and r[0] != "" and r[3] != ""


def _dominance_data():
    # rows: group, value; each group has >= 10 contributors so only dominance can fail
    groups = {
        # top2 = 1000 of total 1100: share 0.909 >= 0.9 -> N-K fails; rest 100 >= 0.1 x 500 -> p-ratio passes
        "a_nk_above": [500.0, 500.0] + [10.0] * 10,
        # top2 = 1000 of total 1112: share 0.8993 < 0.9 -> N-K passes; rest 112 >= 50 -> p-ratio passes
        "b_nk_below": [500.0, 500.0] + [14.0] * 8,
        # rest 99 < 0.1 x 1000 -> p-ratio fails (N-K too: 1020 / 1119 = 0.9115)
        "c_p_below": [1000.0, 20.0] + [11.0] * 9,
        # rest 88 + 13 = 101 >= 100 -> p-ratio passes (N-K: 1020 / 1121 = 0.9099 >= 0.9 fails)
        "d_p_above": [1000.0, 20.0] + [11.0] * 8 + [13.0],
        # 12 equal contributions: share 200 / 1200, rest 1000 -> nothing fails
        "e_plain": [100.0] * 12,
        # top2 = 900 of total 1000: share exactly 0.9, "at least nk_k" -> N-K fails; rest 100 >= 45
        "f_nk_equal": [450.0, 450.0] + [10.0] * 10,
        # 12 contributions, all zero: a non-empty all-zero cell fails p-ratio (and not N-K: total 0)
        "g_all_zero": [0.0] * 12,
    }
    assert (1000 / 1100 >= 0.9, 1000 / 1112 < 0.9, 99 < 100, 101 >= 100, 1020 / 1121 >= 0.9) == (True,) * 5
    return pd.DataFrame([(g, v) for g, vs in groups.items() for v in vs], columns=["g", "v"])


GROUPS = ["a_nk_above", "b_nk_below", "c_p_below", "d_p_above", "e_plain", "f_nk_equal", "g_all_zero"]
NK_FAILS = {"a_nk_above", "c_p_below", "d_p_above", "f_nk_equal"}
P_FAILS = {"c_p_below", "g_all_zero"}


@pytest.mark.parametrize("aggfunc", ["mean", "sum"])
def test_nk_and_p_ratio_via_crosstab(aggfunc):
    data = _dominance_data()
    chk = crosstab(data, "g", values="v", aggfunc=aggfunc)
    assert list(chk.table.index) == GROUPS
    expected = data.groupby("g")["v"].agg(aggfunc).loc[GROUPS].to_numpy()
    np.testing.assert_allclose(chk.table.iloc[:, 0].to_numpy(), expected)
    assert chk.counts.iloc[:, 0].tolist() == [12, 10, 11, 11, 12, 12, 12]
    flag = lambda rule: {g for g, f in zip(GROUPS, chk.flags[rule].iloc[:, 0].tolist()) if f}
    assert flag("nk-rule") == NK_FAILS
    assert flag("p-ratio") == P_FAILS
    assert not chk.flags["threshold"].to_numpy().any()
    assert chk.cells["nk-rule"] == [[0, 0], [2, 0], [3, 0], [5, 0]]
    assert chk.cells["p-ratio"] == [[2, 0], [6, 0]]
    assert chk.verdict == "fail"
    # only the passing groups: pass
    ok = crosstab(data[data.g.isin(["b_nk_below", "e_plain"])], "g", values="v", aggfunc=aggfunc)
    assert ok.verdict == "pass"


def test_dominance_not_applied_to_frequencies_and_medians():
    data = _dominance_data()
    assert crosstab(data, "g").verdict == "pass"
    med = crosstab(data, "g", values="v", aggfunc="median")
    assert med.verdict == "pass"
    assert med.cells.get("nk-rule", []) == [] and med.cells.get("p-ratio", []) == []


def test_nk_and_p_ratio_via_cell_stats_and_rule_overrides():
    data = _dominance_data()
    stats = cell_stats(data, "g", values="v")
    assert stats.total.iloc[:, 0].tolist() == [1100.0, 1112.0, 1119.0, 1121.0, 1200.0, 1000.0, 0.0]
    assert stats.top[0].iloc[:, 0].tolist() == [500.0, 500.0, 1000.0, 1000.0, 100.0, 450.0, 0.0]
    assert stats.top[1].iloc[:, 0].tolist() == [500.0, 500.0, 20.0, 20.0, 100.0, 450.0, 0.0]
    sums = data.groupby("g")["v"].sum().to_frame("total")
    counts = stats.counts.set_axis(["total"], axis=1)
    chk = check_table(sums, counts, stats=stats)
    assert chk.cells["nk-rule"] == [[0, 0], [2, 0], [3, 0], [5, 0]] and chk.cells["p-ratio"] == [[2, 0], [6, 0]]
    # k = 0.92: shares 0.909, 0.8993, 0.9115, 0.9099, 0.1667, 0.9 are all < 0.92 -> no N-K failure
    assert check_table(sums, counts, stats=stats, rules=Rules(nk_k=0.92)).cells["nk-rule"] == []
    # p = 0.05: rests 100, 112, 99, 101, 1000, 100 against 25, 25, 50, 50, 5, 22.5 -> only the all-zero cell fails
    assert check_table(sums, counts, stats=stats, rules=Rules(p_ratio=0.05)).cells["p-ratio"] == [[6, 0]]


def test_negative_and_missing_contributions_go_to_review_and_fail_wins():
    base = [("ok", 100.0)] * 12
    neg = pd.DataFrame(base + [("x", 100.0)] * 11 + [("x", -5.0)], columns=["g", "v"])
    chk = crosstab(neg, "g", values="v", aggfunc="mean")
    assert chk.verdict == "review"
    assert chk.cells["negative"] == [[1, 0]] and chk.cells.get("missing", []) == []
    assert chk.cells["threshold"] == [] and chk.cells.get("nk-rule", []) == chk.cells.get("p-ratio", []) == []

    # a negative anywhere: no dominance verdict for any cell (the dominated cell 'dom' is not flagged)
    dom = pd.concat([neg, pd.DataFrame([("dom", 5000.0)] * 2 + [("dom", 1.0)] * 10, columns=["g", "v"])],
                    ignore_index=True)
    assert crosstab(dom[dom.g != "x"], "g", values="v", aggfunc="sum").cells["nk-rule"] == [[0, 0]]  # alone: fails
    chk = crosstab(dom, "g", values="v", aggfunc="sum")
    assert chk.verdict == "review"
    assert chk.cells["negative"] == [[2, 0]]
    assert chk.cells.get("nk-rule", []) == [] and chk.cells.get("p-ratio", []) == []

    # missing values: ignored by default, review with check_missing=True
    mis = pd.DataFrame(base + [("x", 100.0)] * 11 + [("x", np.nan)], columns=["g", "v"])
    chk = crosstab(mis, "g", values="v", aggfunc="mean")
    assert chk.verdict == "pass" and chk.cells.get("missing", []) == []
    assert chk.counts.iloc[:, 0].tolist() == [12, 12]       # the row with a missing value still counts
    chk = crosstab(mis, "g", values="v", aggfunc="mean", rules=Rules(check_missing=True))
    assert chk.verdict == "review"
    assert chk.cells["missing"] == [[1, 0]] and chk.cells.get("negative", []) == []

    # a failing cell anywhere makes the table fail even with review-only cells elsewhere
    both = pd.concat([neg, pd.DataFrame([("small", 5.0)] * 3, columns=["g", "v"])], ignore_index=True)
    chk = crosstab(both, "g", values="v", aggfunc="mean")
    assert chk.cells["negative"] == [[2, 0]] and chk.cells["threshold"] == [[1, 0]]
    assert chk.verdict == "fail"
    chk = crosstab(pd.concat([mis, both[both.g == "small"]], ignore_index=True), "g", values="v", aggfunc="mean",
                   rules=Rules(check_missing=True))
    assert chk.cells["missing"] == [[2, 0]] and chk.cells["threshold"] == [[1, 0]]
    assert chk.verdict == "fail"


def test_rounding_opensafely_by_hand():
    inner = np.array([[12, 13, 8],
                      [7, 22, 0],
                      [23, 100, 5]])
    tbl = with_margins(inner)
    chk = check_table(tbl, rules=opensafely())
    # threshold 8: 7, 0 and 5 fail; 8 passes
    assert chk.cells["threshold"] == [[1, 0], [1, 2], [2, 2]]
    out = chk.rounded()
    assert out.method == "rounding"
    nan = np.nan
    # inner: 12->10, 13->15, 8->10; 7 and 0 redacted, 22->20; 23->25, 100->100, 5 redacted
    # margins from the published inner cells: rows 35, 20, 125; columns 35, 135, 10; grand 180
    expected = np.array([[10, 15, 10, 35],
                         [nan, 20, nan, 20],
                         [25, 100, nan, 125],
                         [35, 135, 10, 180]], dtype=float)
    np.testing.assert_array_equal(out.table.to_numpy(dtype=float), expected)
    assert out.table.index.equals(tbl.index) and out.table.columns.equals(tbl.columns)


def test_rounding_halves_go_up():
    tbl = with_margins(np.array([[15, 25], [14, 36]]))
    out = check_table(tbl).rounded(base=10)
    # 15->20, 25->30 (halves up, not to even), 14->10, 36->40; rows 50, 50; columns 30, 70; grand 100
    np.testing.assert_array_equal(out.table.to_numpy(dtype=float),
                                  np.array([[20, 30, 50], [10, 40, 50], [30, 70, 100]], dtype=float))


def test_rounding_refuses_tables_of_statistics():
    with pytest.raises(InputError):
        check_table(pd.DataFrame({"mean": [10.5, 20.0]}), pd.DataFrame({"mean": [20, 30]}),
                    rules=opensafely()).rounded()


def test_presets():
    fields = lambda r: (r.threshold, r.zeros_disclosive, r.rounding, r.nk_n, r.nk_k, r.p_ratio, r.min_dof,
                        r.max_rows, r.allow_row_level, r.check_missing, r.name)
    assert fields(uk_default()) == (10, True, None, 2, 0.9, 0.10, 10, 1000, False, False, "uk_default")
    assert fields(opensafely()) == (8, True, 5, 2, 0.9, 0.10, 10, 1000, False, False, "opensafely")


def test_rules_from_yaml(tmp_path):
    p = tmp_path / "tre.yaml"
    p.write_text("preset: opensafely\nthreshold: 12\nmin_dof: 20\n")
    r = Rules.from_yaml(p)
    assert (r.threshold, r.rounding, r.min_dof, r.nk_k, r.name) == (12, 5, 20, 0.9, "opensafely")
    p.write_text("nk_k: 0.8\n")
    r = Rules.from_yaml(p)
    assert (r.threshold, r.nk_k, r.name) == (10, 0.8, "custom")
    p.write_text("")
    assert Rules.from_yaml(p) == Rules()

    p.write_text("preset: uk_default\nthreshhold: 5\n")
    with pytest.raises(RulesError, match=r"unknown rule\(s\) \['threshhold'\]"):
        Rules.from_yaml(p)
    for text, field in [("threshold: 0\n", "threshold"), ("nk_k: 1.5\n", "nk_k"), ("p_ratio: -0.1\n", "p_ratio"),
                        ("rounding: 1\n", "rounding"), ("preset: uk_default\nthreshold: 0\n", "threshold")]:
        p.write_text(text)
        with pytest.raises(RulesError, match=field) as e:
            Rules.from_yaml(p)
        assert str(p) in str(e.value)
    p.write_text("- threshold\n- 10\n")
    with pytest.raises(RulesError, match="mapping"):
        Rules.from_yaml(p)
    p.write_text("just text\n")
    with pytest.raises(RulesError, match="mapping"):
        Rules.from_yaml(p)
    p.write_text("preset: nowhere\n")
    with pytest.raises(RulesError, match="nowhere"):
        Rules.from_yaml(p)
    with pytest.raises(RulesError):
        Rules.from_yaml(tmp_path / "absent.yaml")
    for kw in (dict(threshold=0), dict(nk_k=1.5), dict(p_ratio=-0.1), dict(rounding=1)):
        with pytest.raises(RulesError, match=next(iter(kw))):
            Rules(**kw)


# ----------------------------------------------------------------------------------------------------------------
# 3. bad input

@pytest.mark.parametrize("col, values, what", [
    ("sex", ["f", "m"], "not numeric"),
    ("flag", [True, False], "not numeric"),
    ("n_people", [12, -2], "negative"),
    ("n_people", [12.0, np.nan], "missing"),
    ("n_people", [12.0, 10.5], "non-whole"),
])
def test_bad_counts_are_refused_naming_the_column(col, values, what):
    bad = pd.DataFrame({"ok": [20, 30], col: values}, index=["a", "b"])
    with pytest.raises(InputError, match=what) as e:
        check_table(bad)
    assert repr(col) in str(e.value)
    # the same through a separate counts argument
    table = pd.DataFrame({"ok": [1.5, 2.5], col: [3.5, 4.5]}, index=["a", "b"])
    with pytest.raises(InputError, match=what) as e:
        check_table(table, bad)
    assert repr(col) in str(e.value)


def test_counts_shape_mismatch():
    table = pd.DataFrame({"x": [20, 30, 40], "y": [25, 35, 45]}, index=list("abc"))
    with pytest.raises(InputError, match="same rows and columns"):
        check_table(table, table.iloc[:2])
    with pytest.raises(InputError, match="same rows and columns"):
        check_table(table, table[["x"]])
    with pytest.raises(InputError, match="same rows and columns"):
        check_table(table, table.set_axis(list("abd"), axis=0))


# ----------------------------------------------------------------------------------------------------------------
# 4. row-level guard

def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("name, frame", [
    ("ids", pd.DataFrame({"person_id": [1, 2], "n": [20, 30]})),
    ("pids", pd.DataFrame({"patient_id": [1, 2], "n": [20, 30]})),
    ("indexed", pd.DataFrame({"person_id": [1, 2], "n": [20, 30]}).set_index("person_id")),
    ("preds", pd.DataFrame({"age_band": [1, 2], "y_pred": [0.1, 0.7]})),
    ("long", pd.DataFrame({"n": np.full(1001, 20)})),
])
def test_row_level_tables_fail_and_are_not_written(tmp_path, name, frame):
    s = Session(folder=tmp_path / "out")
    o = s.table(name, frame)
    assert o.status == "fail" and o.file is None and not o.released
    assert o.reasons
    assert _files(tmp_path / "out") == {"output_log.json"}
    assert not list((tmp_path / "out").glob(f"{name}*"))


def test_max_rows_boundary(tmp_path):
    s = Session(rules=Rules(max_rows=5), folder=tmp_path / "out")
    assert s.table("five", pd.DataFrame({"n": np.full(5, 20)})).status == "pass"
    six = s.table("six", pd.DataFrame({"n": np.full(6, 20)}))
    assert six.status == "fail" and six.file is None
    assert _files(tmp_path / "out") == {"output_log.json", "five.csv"}


def test_allow_row_level_lets_identifiers_through(tmp_path):
    frame = pd.DataFrame({"person_id": [11, 12], "n": [20, 30]})
    assert row_level_reasons(frame) != []
    assert row_level_reasons(frame, Rules(allow_row_level=True)) == []
    s = Session(rules=Rules(allow_row_level=True), folder=tmp_path / "out")
    o = s.table("ids", frame)
    assert o.status == "pass" and o.file is not None and o.file.exists()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")     # raised by shap's own import
def test_shap_explanation_is_row_level():
    import shap
    exp = shap.Explanation(values=np.zeros((3, 2)), feature_names=["age", "bmi"])
    reasons = row_level_reasons(exp)
    assert len(reasons) == 1 and "SHAP" in reasons[0]
    assert row_level_reasons(exp, Rules(allow_row_level=True)) == []


# ----------------------------------------------------------------------------------------------------------------
# 5. bundle

SDC_KEYS = {"suppressed", "negative", "missing", "threshold", "p-ratio", "nk-rule", "all-values-are-same"}
RESULT_KEYS = {"uid", "status", "type", "properties", "files", "outcome", "command", "summary", "timestamp",
               "comments", "exception"}


def _draw(counts: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar([str(i) for i in counts.index], counts.iloc[:, 0].fillna(0).to_numpy())
    return fig


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def session(tmp_path):
    s = Session(folder=tmp_path / "outputs")
    # passes as it is
    assert s.table("pass_table", pd.DataFrame({"n": [40, 55]}, index=["a", "b"])).status == "pass"
    # fails, not mitigated: refused (4242421 is distinctive)
    assert s.table("fail_table", pd.DataFrame({"n": [3, 4242421]}, index=["a", "b"]), mitigate="none").status == "fail"
    # fails, suppressed: released with hidden cells empty
    supp = with_margins(np.array([[120, 95], [4, 31], [0, 12]]))
    assert s.table("supp_table", supp).status == "pass"
    # review (a negative contribution) without and with a comment
    neg = pd.DataFrame([("a", 3000.0)] * 11 + [("a", -5.0)] + [("b", 250.0)] * 10, columns=["g", "v"])
    s.table("review_nocomment", crosstab(neg, "g", values="v", aggfunc="mean"))
    neg2 = neg.assign(v=np.where(neg.g == "b", 260.0, np.where(neg.v > 0, 3100.0, -5.0)))
    s.table("review_comment", crosstab(neg2, "g", values="v", aggfunc="mean"))
    s.comment("review_comment", "the negative cost is a refund")
    # figures: a sparse histogram redrawn from suppressed counts, and the same one without redraw (refused)
    hist = pd.Series([3, 40, 60, 25], index=["20-29", "30-39", "40-49", "50-59"], name="count")
    assert s.figure("fig_ok", _draw(hist.to_frame()), hist, redraw=_draw).status == "pass"
    assert s.figure("fig_refused", _draw(hist.to_frame()), hist).status == "fail"
    plt.close("all")
    # models
    assert s.model("model_small", pd.DataFrame({"coef": [0.918273]}, index=["age"]), dof=5).status == "fail"
    assert s.model("model_big", pd.DataFrame({"coef": [0.123456]}, index=["age"]), dof=50).status == "pass"
    return s


RELEASED = {"pass_table": "pass_table.csv", "supp_table": "supp_table.csv", "review_comment": "review_comment.csv",
            "fig_ok": "fig_ok.png", "model_big": "model_big.csv"}
WITHHELD = {"fail_table": "fail_table.csv", "review_nocomment": "review_nocomment.csv",
            "fig_refused": "fig_refused.png", "model_small": "model_small.csv"}


def test_session_statuses(session):
    status = {n: o.status for n, o in session.outputs.items()}
    assert status == {"pass_table": "pass", "fail_table": "fail", "supp_table": "pass", "review_nocomment": "review",
                      "review_comment": "review", "fig_ok": "pass", "fig_refused": "fail", "model_small": "fail",
                      "model_big": "pass"}
    assert {n for n, o in session.outputs.items() if o.released} == set(RELEASED)
    staged = _files(session.folder)
    assert "fail_table.csv" not in staged and "fig_refused.png" not in staged and "model_small.csv" not in staged


def test_bundle_contents(session, tmp_path):
    b = finalise(session, tmp_path / "b")
    top = _files(b)
    assert top == set(RELEASED.values()) | {"results.json", "config.json", "summary.html", "SHA256SUMS", "checksums"}
    assert _files(b / "checksums") == {f"{f}.txt" for f in RELEASED.values()}

    # withheld outputs: no file, and neither their data nor their file names anywhere in the bundle
    every = b"".join(_snapshot(b).values())
    staged_review = (session.folder / "review_nocomment.csv").read_bytes()
    mean_a = b"2750.0"          # the mean 2749.58... as published: statistics leave at 3 significant figures
    assert mean_a in staged_review and b"250.0" in staged_review    # the distinctive values are staged ...
    for needle in [b"4242421", b"0.918273", b"250.0", mean_a] + [f.encode() for f in WITHHELD.values()]:
        assert needle not in every, needle    # ... and nowhere in the bundle
    assert b"0.123\n" in (b / "model_big.csv").read_bytes()          # 0.123456 to 3 significant figures
    assert b"260.0" in (b / "review_comment.csv").read_bytes()

    # withheld outputs are listed in summary.html by name only
    html_text = (b / "summary.html").read_text()
    for name in WITHHELD:
        assert name in html_text

    # the released suppressed table, as read back from the bundle, survives the differencing attack
    pub = pd.read_csv(b / "supp_table.csv", index_col=0, na_values=["[c]"])      # suppressed cells are marked [c]
    assert (b / "supp_table.csv").read_text().count("[c]") == int(pub.isna().sum().sum())
    assert np.isnan(pub.loc["r1", "c0"]) and np.isnan(pub.loc["r2", "c0"])       # the 4 and the 0
    assert pub.loc[MARGIN, MARGIN] == 262
    assert_safe(with_margins(np.array([[120, 95], [4, 31], [0, 12]])), pub)

    # checksums
    assert verify_bundle(b) == []
    run = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=b, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(line.split("  ")[1] for line in (b / "SHA256SUMS").read_text().splitlines()) == sorted(RELEASED.values())
    for f in RELEASED.values():
        assert (b / "checksums" / f"{f}.txt").read_text().strip() == hashlib.sha256((b / f).read_bytes()).hexdigest()
        assert (b / f).read_bytes() == (session.folder / f).read_bytes()

    # results.json in ACRO's layout
    res = json.loads((b / "results.json").read_text())
    assert {"version", "results"} <= set(res)
    results = res["results"]
    assert {r["properties"]["name"] for r in results.values()} == set(RELEASED)
    for uid, r in results.items():
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert r["uid"] == uid
        assert r["status"] in ("pass", "review")
        assert isinstance(r["properties"]["method"], str)
        assert r["files"][0]["name"] == RELEASED[r["properties"]["name"]]
        assert r["exception"] == ""
        if r["type"] == "regression":
            # ACRO's own layout for models is sdc={} (acro.ols & co. record no cell checks); accept that or a summary
            sdc = r["files"][0]["sdc"]
            assert sdc == {} or set(sdc["summary"]) == SDC_KEYS
        else:
            assert set(r["files"][0]["sdc"]["summary"]) == SDC_KEYS
        if r["status"] == "review":
            assert r["comments"] == ["the negative cost is a refund"]
    by_name = {r["properties"]["name"]: r for r in results.values()}
    assert by_name["supp_table"]["files"][0]["sdc"]["summary"]["threshold"] == 2
    assert by_name["supp_table"]["files"][0]["sdc"]["summary"]["suppressed"] is True
    assert by_name["supp_table"]["properties"]["method"] == "suppression"
    assert by_name["review_comment"]["files"][0]["sdc"]["summary"]["negative"] == 1
    assert by_name["fig_ok"]["type"] == "histogram" and by_name["model_big"]["type"] == "regression"
    assert by_name["pass_table"]["files"][0]["sdc"]["summary"]["suppressed"] is False


def test_bundle_is_never_overwritten(session, tmp_path):
    b = finalise(session, tmp_path / "b")
    before = _snapshot(b)
    with pytest.raises(BundleExistsError):
        finalise(session, tmp_path / "b")
    with pytest.raises(BundleExistsError):
        session.finalise(tmp_path / "b")
    assert _snapshot(b) == before
    (tmp_path / "fresh").mkdir()
    b2 = session.finalise(tmp_path / "fresh")
    assert verify_bundle(b2) == []
    assert _files(b2) == _files(b)
    for f in RELEASED.values():
        assert (b2 / f).read_bytes() == (b / f).read_bytes()


def test_tampered_staged_file_is_refused(session, tmp_path):
    staged = session.outputs["pass_table"].file
    staged.write_text(staged.read_text().replace("40", "4"))
    with pytest.raises(DisclosureError, match="pass_table") as e:
        finalise(session, tmp_path / "b3")
    assert not isinstance(e.value, BundleExistsError)


def test_verify_bundle_detects_tampering(session, tmp_path):
    b = finalise(session, tmp_path / "b")
    (b / "pass_table.csv").write_text("n\n1\n")
    assert verify_bundle(b) == ["pass_table.csv: sha256 does not match", "pass_table.csv: SHA256SUMS does not match"]


# ----------------------------------------------------------------------------------------------------------------
# 6. survival

def test_check_survival_and_merge_intervals_by_hand():
    km = pd.DataFrame({"time": [10, 20, 30, 40, 50, 60, 70],
                       "at_risk": [300, 280, 260, 250, 240, 100, 9],
                       "events": [20, 4, 3, 5, 0, 30, 1],
                       "censored": [0, 16, 7, 5, 140, 61, 8]})
    chk = check_survival(km)
    assert chk.verdict == "fail"
    # columns at_risk, events, censored: small non-zero events/censorings and the 9 at risk; zeros are fine
    assert chk.cells["threshold"] == [[1, 1], [2, 1], [2, 2], [3, 1], [3, 2], [6, 0], [6, 1], [6, 2]]
    merged = merge_intervals(km)
    # rows are intervals [time, next time): at risk at the start, what ended in it (300 - 20 - 0 = 280, ...).
    # by hand: the 9 left at 70 join the interval from 60 (30 + 1 events, 61 + 8 censored); 10 stands (20, 0);
    # 20+30+40 merge to (at risk 280, events 12, censored 28, from time 20); 50 (0, 140) and 60 (31, 69) stand
    assert merged.to_dict("list") == {"time": [10, 20, 50, 60], "at_risk": [300, 280, 240, 100],
                                      "events": [20, 12, 0, 31], "censored": [0, 28, 140, 69]}
    assert check_survival(merged).verdict == "pass"
    left = merged.at_risk - merged.events - merged.censored
    assert left.tolist() == merged.at_risk.tolist()[1:] + [0]        # the arithmetic reveals nothing more
    # a stricter threshold: 20 events is fine, 12 and 28 are not
    merged20 = merge_intervals(km, Rules(threshold=20))
    # by hand: 10 (20, 0) stands; from 20 on: events 4+3+5+0 = 12 < 20, keep going; with 60 and the tail: 43, 237
    assert merged20.to_dict("list") == {"time": [10, 20], "at_risk": [300, 280], "events": [20, 43],
                                        "censored": [0, 237]}
    assert check_survival(merged20, Rules(threshold=20)).verdict == "pass"


def test_check_survival_needs_columns():
    with pytest.raises(InputError, match="censored"):
        check_survival(pd.DataFrame({"time": [1], "at_risk": [20], "events": [1]}))


def test_merge_intervals_with_nothing_left_is_a_valid_at_risk_table():
    # 9 at risk from the start: every interval is in the small tail, so nothing survives the merge; the (empty)
    # merged table must still be a valid at-risk table that passes check_survival
    km = pd.DataFrame({"time": [10, 20], "at_risk": [9, 5], "events": [4, 1], "censored": [0, 4]})
    merged = merge_intervals(km)
    assert list(merged.columns) == ["time", "at_risk", "events", "censored"] and len(merged) == 0
    assert check_survival(merged).verdict == "pass"


def _at_risk_table(start, steps):
    rows, n = [], start
    for k, (e, c) in enumerate(steps):
        e = min(e, n)
        c = min(c, n - e)
        rows.append((10 * (k + 1), n, e, c))
        n -= e + c
    return pd.DataFrame(rows, columns=["time", "at_risk", "events", "censored"])


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(st.integers(1, 400), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=10))
def test_merged_intervals_always_pass(start, steps):
    km = _at_risk_table(start, steps)
    merged = merge_intervals(km)
    note(f"{km}\n{merged}")
    if len(merged):            # (the empty result is tested on its own above)
        assert check_survival(merged).verdict == "pass"
    # every merged row starts at an original time with its number at risk, rows follow each other exactly
    # (at risk = previous at risk - events - censored), and the follow-up that ended is all accounted for:
    # the small tail is in the last row, never dropped (dropping it would publish how few were left)
    if not len(merged): return
    times = list(km.time)
    for r in merged.itertuples(index=False):
        assert r.time in times and r.at_risk == km.at_risk[times.index(r.time)] and r.at_risk >= 10
        for x in (r.events, r.censored):
            assert x == 0 or x >= 10
    nxt = (merged.at_risk - merged.events - merged.censored).tolist()
    assert nxt[:-1] == merged.at_risk.tolist()[1:]
    assert merged.events.sum() + merged.censored.sum() == km.events.sum() + km.censored.sum()


# ----------------------------------------------------------------------------------------------------------------
# 7. display_count

@pytest.mark.parametrize("n, uk, os_", [
    (0, "<10", "<8"),
    (1, "<10", "<8"),
    (7, "<10", "<8"),
    (8, "<10", "10"),       # 8 -> nearest 5 with halves up: 10
    (9, "<10", "10"),
    (10, "10", "10"),
    (12, "12", "10"),
    (13, "13", "15"),
    (17, "17", "15"),
    (18, "18", "20"),
    (1234, "1,234", "1,235"),
    (1232, "1,232", "1,230"),
    (None, "–", "–"),
    (float("nan"), "–", "–"),
])
def test_display_count(n, uk, os_):
    assert display_count(n) == uk
    assert display_count(n, uk_default()) == uk
    assert display_count(n, opensafely()) == os_


def test_display_count_zero_and_negative():
    assert display_count(0, Rules(zeros_disclosive=False)) == "0"
    assert display_count(0, Rules(zeros_disclosive=False, rounding=5)) == "0"
    with pytest.raises(InputError, match="negative"):
        display_count(-1)


# ----------------------------------------------------------------------------------------------------------------
# 8. row-level data by content, whatever it is called (issue 12: each of these passed the name-only guard)

def _people(n=300, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"pid": rng.permutation(np.arange(70_000, 70_000 + n)), "age": rng.integers(40, 81, n),
                         "y": rng.integers(0, 2, n), "p_logistic": rng.random(n).round(6), "risk": rng.random(n),
                         "birth_date": pd.to_datetime("1950-01-01") + pd.to_timedelta(rng.integers(0, 9000, n), "D"),
                         "sbp": rng.normal(130, 15, n).round(1)})


@pytest.mark.parametrize("columns", [["pid", "age"], ["age", "p_logistic"], ["age", "risk"], ["age", "birth_date"],
                                     ["sbp"], ["y", "risk"]])
def test_row_level_tables_by_content_fail(tmp_path, columns):
    frame = _people()[columns]
    s = Session(folder=tmp_path / "out")
    # with made-up counts, as an adversary would pass them, and without
    o = s.table("slice", frame, counts=pd.DataFrame(50, index=frame.index, columns=frame.columns))
    assert o.status == "fail" and o.file is None and o.reasons, o.reasons
    assert row_level_reasons(frame) != []


def test_per_person_shap_named_after_features_fails(tmp_path):
    rng = np.random.default_rng(4)
    shap_like = pd.DataFrame(rng.normal(size=(200, 3)), columns=["age", "sbp", "bmi"])      # one row per person
    assert any("distinct value per row" in r for r in row_level_reasons(shap_like))
    s = Session(folder=tmp_path / "out")
    assert s.table("shap", shap_like, counts=pd.DataFrame(40, index=shap_like.index, columns=shap_like.columns)).status == "fail"


def test_model_takes_coefficient_tables_only(tmp_path):
    s = Session(folder=tmp_path / "out")
    people = _people(999)
    for k, part in enumerate((people.iloc[:333], people.iloc[333:666], people.iloc[666:])):   # three 999-row slices
        o = s.model(f"slice{k}", part[["y", "p_logistic"]], dof=500)
        assert o.status == "fail" and o.file is None
    good = pd.DataFrame({"coef": [0.02, -0.5], "se": [0.01, 0.1]}, index=["age", "sex[male]"])
    assert s.model("coefficients", good, dof=500).status == "pass"


def test_per_person_scatter_figure_fails(tmp_path):
    s = Session(folder=tmp_path / "out")
    people = _people()
    fig = plt.figure()
    fig.add_subplot().scatter(people.age, people.risk)
    o = s.figure("scatter", fig, pd.DataFrame({"n": [300]}))
    assert o.status == "fail" and "individual points" in o.reasons[0]
    plt.close("all")


def test_aggregate_tables_are_not_row_level():
    rng = np.random.default_rng(5)
    thresholds = pd.DataFrame({"nb": rng.random(50)}, index=pd.Index(np.round(np.arange(0.01, 0.51, 0.01), 2), name="t"))
    by_age = pd.DataFrame({"n": rng.integers(10, 400, 60)}, index=pd.Index(range(30, 90), name="age"))
    terms = pd.DataFrame({"coef": rng.normal(size=40)}, index=[f"x{i}" for i in range(40)])
    for frame in (thresholds, by_age, terms):
        assert row_level_reasons(frame) == [], frame.head()


def test_session_never_writes_into_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cdm.duckdb").write_bytes(b"precious")
    with pytest.raises(BundleExistsError, match="not empty"):
        Session(folder=tmp_path / "data")
    s = Session(folder=tmp_path / "new")
    for bad in ("output_log", "results", "SHA256SUMS"):
        with pytest.raises(InputError, match="reserved"):
            s.table(bad, pd.DataFrame({"n": [20]}))
    assert (tmp_path / "data" / "cdm.duckdb").read_bytes() == b"precious"
