"""Attacks on healthbench release bundles, written as an outside attacker.

Each function reads only files of released bundles (the `release/` folder of a run, or a `Session.finalise` folder)
plus public knowledge (template parameters, the rules in the bundle's `config.json`) and returns what it recovered:
intervals `(lo, hi)` of integers that the published numbers leave possible for a count, keyed by what the count is.
Nothing here imports healthbench: the attacker has only the files.

Parsing is generic so the same attacks run on old and new bundles: a hidden cell may be empty, NaN, `[c]` or
similar; `k (p%)` cells are parsed; a number stands for the interval of values that print the same way (so numbers
rounded to 3 significant figures give intervals, not exact values); under a rounding rule published counts are
widened by half the rounding base. Inconsistent published numbers (an infeasible system) recover nothing.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linprog

INF = math.inf
UNKNOWN = (0, INF)

# ----------------------------------------------------------------------------------------------------------------
# parsing printed numbers

_HIDDEN = {"", "[c]", "c", "nan", "na", "n/a", "<na>", "none", "null", "–", "—", "-", "*", "x", "[x]", "[z]",
           "suppressed", "redacted", "hidden", "[suppressed]", "[redacted]"}
_NUM = r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def _half_unit(text: str, sf3: bool = True) -> float:
    "Half a unit in the last printed place of a number (0 for an integer printed exactly)."
    t = text.replace(",", "").lstrip("+-")
    mant, _, exp = t.partition("e") if "e" in t else t.partition("E")
    e = int(exp) if exp else 0
    if "." in mant:
        decimals = len(mant.split(".")[1])
        return 0.5 * 10.0 ** (e - decimals)
    digits = mant.lstrip("0")
    if sf3 and e == 0 and len(digits) > 3 and set(digits[3:]) <= {"0"}:
        return 0.5 * 10.0 ** (len(digits) - 3)          # 1230 may be 1,234 rounded to 3 significant figures
    return 0.5 * 10.0 ** e if e > 0 else 0.0


def parse_number(value, sf3: bool = True, statistic: bool = False) -> tuple[float, float] | None:
    """The interval of true values a published number stands for; None for a hidden cell.

    '0.0270' -> [0.02695, 0.02705]; '13' -> [13, 13]; '13.0' -> [12.95, 13.05]; '<10' -> [0, 9.999]; '[c]' -> None;
    '1230' -> [1225, 1235] unless `sf3` is False (the table shows integers to more than 3 significant figures).
    A `statistic` (percentage, rate, net benefit, bin edge) printed without decimals may have been rounded to a whole
    number: '30' -> [29.5, 30.5]."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return float(value), float(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else (float(value), float(value))
    t = str(value).strip().replace("\u2212", "-").replace("\u2009", "").replace(" ", "")
    if t.lower() in _HIDDEN:
        return None
    m = re.fullmatch(r"(<=|≤|<)(" + _NUM + ")", t)
    if m:
        v = float(m.group(2).replace(",", ""))
        return 0.0, v if m.group(1) != "<" else math.nextafter(v, -INF)
    if not re.fullmatch(_NUM, t):
        return None
    v, h = float(t.replace(",", "")), _half_unit(t, sf3)
    if statistic and not re.search(r"[.eE]", t):
        h = max(h, 0.5)
    return v - h, v + h


def count_interval(value, rounding: int | None = None, sf3: bool = True) -> tuple[int, int] | None:
    "The integers a published count may be: its printed interval, widened by half the rounding base under rounding."
    iv = parse_number(value, sf3)
    if iv is None:
        return None
    lo, hi = iv
    if rounding:
        lo, hi = lo - rounding / 2, hi + rounding / 2
    lo, hi = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    return max(lo, 0), hi


def parse_count_percent(cell, rounding: int | None = None, sf3: bool = True):
    "A Table-1 cell 'k (p%)' -> (k interval, p interval or None); 'k' alone -> (k, None); hidden -> (None, None)."
    t = "" if cell is None or (isinstance(cell, float) and math.isnan(cell)) else str(cell).strip()
    m = re.fullmatch(r"(.+?)\s*\(\s*(.+?)\s*%\s*\)", t)
    if m:
        return count_interval(m.group(1), rounding, sf3), parse_number(m.group(2), statistic=True)
    return count_interval(t, rounding, sf3), None


def may_be_3sf(table: pd.DataFrame) -> bool:
    "Whether a table's integers may be rounded to 3 significant figures: none of them shows a 4th significant digit."
    for v in table.to_numpy().ravel().tolist() + [str(i) for i in table.index]:
        for num in re.findall(r"(?<![\d.])\d[\d,]*(?![\d.])", str(v)):
            digits = num.replace(",", "").lstrip("0")
            if len(digits) > 3 and set(digits[3:]) - {"0"}:
                return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# bundles

def rules_of(bundle: Path) -> dict:
    "The rules a bundle says it was made under (public: config.json travels with it); defaults if it does not say."
    cfg = Path(bundle) / "config.json"
    rules = {}
    if cfg.is_file():
        rules = json.loads(cfg.read_text()).get("rules", {}) or {}
    return {"threshold": int(rules.get("threshold", 10)), "rounding": rules.get("rounding") or None}


def read_table(path: Path, index_col=0) -> pd.DataFrame:
    "A released CSV as text, exactly as printed (no NaN conversion)."
    return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=index_col)


def released_csvs(bundle: Path, prefix: str) -> dict[str, Path]:
    "Released CSV files whose name starts with `prefix`: {name without prefix and .csv: path}."
    return {p.stem[len(prefix):]: p for p in sorted(Path(bundle).glob(f"{prefix}*.csv"))}


# ----------------------------------------------------------------------------------------------------------------
# linear systems of counts: min and max of each target under published equalities and bounds

class Counts:
    "Non-negative unknown counts with bounds, linear equalities and ranges; `bounds()` solves min/max by LP."

    def __init__(self):
        self.keys, self.lo, self.hi, self.rows = {}, [], [], []   # rows: (coeffs {i: a}, lo, hi)

    def var(self, key, interval=None) -> int:
        if key not in self.keys:
            self.keys[key] = len(self.lo)
            self.lo.append(0.0)
            self.hi.append(INF)
        i = self.keys[key]
        if interval is not None:
            self.lo[i] = max(self.lo[i], float(interval[0]))
            self.hi[i] = min(self.hi[i], float(interval[1]))
        return i

    def add(self, coeffs: dict, lo: float, hi: float | None = None):
        "lo <= sum(a * x) <= hi (hi=None: equality)."
        self.rows.append((dict(coeffs), float(lo), float(lo if hi is None else hi)))

    def bounds(self, targets: dict) -> dict | None:
        "{name: (lo, hi)} integer bounds of each target (a var key, or a {var key: coefficient} expression); None if infeasible."
        n = len(self.lo)
        A_ub, b_ub, A_eq, b_eq = [], [], [], []
        for coeffs, lo, hi in self.rows:
            row = np.zeros(n)
            for i, a in coeffs.items():
                row[i] += a
            if lo == hi:
                A_eq.append(row); b_eq.append(lo)
            else:
                if hi < INF: A_ub.append(row); b_ub.append(hi)
                if lo > -INF: A_ub.append(-row); b_ub.append(-lo)
        kw = dict(A_ub=np.array(A_ub) if A_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                  A_eq=np.array(A_eq) if A_eq else None, b_eq=np.array(b_eq) if b_eq else None,
                  bounds=list(zip(self.lo, [None if h == INF else h for h in self.hi])), method="highs")
        if any(lo > hi + 1e-9 for lo, hi in zip(self.lo, self.hi)):
            return None
        feas = linprog(np.zeros(n), **kw)
        if feas.status == 2:
            return None
        out = {}
        for name, expr in targets.items():
            expr = {self.keys[expr]: 1.0} if not isinstance(expr, dict) else {self.keys[k]: a for k, a in expr.items()}
            c = np.zeros(n)
            for i, a in expr.items():
                c[i] += a
            res = []
            for sign in (1, -1):
                r = linprog(sign * c, **kw)
                res.append(sign * r.fun if r.status == 0 else (-INF if sign == 1 else INF))
            lo, hi = res
            out[name] = (math.ceil(lo - 1e-6) if lo > -INF else -INF, math.floor(hi + 1e-6) if hi < INF else INF)
        return out


# ----------------------------------------------------------------------------------------------------------------
# 1. ratios: calibration bins publish observed = events / n next to n

def ratios(bundle: Path) -> dict:
    "Events per calibration bin: {(model, bin): (lo, hi)} from n and the observed rate (and the events cell if shown)."
    rules = rules_of(bundle)
    out = {}
    for model, path in released_csvs(bundle, "calibration_bins_").items():
        t = read_table(path, index_col=None)
        sf3 = may_be_3sf(t)
        for _, r in t.iterrows():
            n = count_interval(r.get("n"), rules["rounding"], sf3)
            ev = count_interval(r.get("events"), rules["rounding"], sf3)
            obs = parse_number(r.get("observed"), statistic=True)
            cand = set(range(ev[0], ev[1] + 1)) if ev and ev[1] - ev[0] < 10_000 else None
            if obs is not None and n is not None:
                from_rate = set()
                for k in range(max(n[0], 1), n[1] + 1):
                    from_rate |= set(range(math.ceil(obs[0] * k - 1e-9), math.floor(obs[1] * k + 1e-9) + 1))
                cand = from_rate if cand is None else cand & from_rate
            key = (model, str(r.get("bin")))
            out[key] = (min(cand), max(cand)) if cand else (ev if ev else UNKNOWN)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 2. percentages: Table 1's "k (p%)" pins each column's non-missing count

def _table1_cells(bundle: Path, name: str = "table1"):
    path = Path(bundle) / f"{name}.csv"
    if not path.is_file():
        return None
    t = read_table(path, index_col=[0, 1])
    t.index = pd.MultiIndex.from_tuples([(str(v), str(l)) for v, l in t.index])
    return t


def _summary_row(level: str) -> bool:
    return level.startswith(("mean", "median")) or "sd" in level.lower() and "(" in level


def percentages(bundle: Path, name: str = "table1") -> dict:
    """Every count of Table 1 as an interval: {(variable, level, column): (lo, hi)} ('n' row: level '').

    Unknowns: the hidden cells. Equations: in every column a categorical variable's levels and its missing row add up to
    the n row; each visible 'k (p%)' bounds the levels' sum (the non-missing count) to 100k/p; every row's group columns
    add up to its 'All' column. A missing row absent from the table is zero. Min and max of each cell by LP."""
    t = _table1_cells(bundle, name)
    if t is None:
        return {}
    rules = rules_of(bundle)
    sf3 = may_be_3sf(t)
    cols = list(t.columns)
    groups = [c for c in cols if c != "All"]
    sys_ = Counts()
    keys = []
    variables = []
    for (v, l) in t.index:
        if v not in variables:
            variables.append(v)
    n_row = [(v, l) for v, l in t.index if v == "n"]

    def cell(v, l, c):
        key = (v, l, c)
        k, _ = parse_count_percent(t.loc[(v, l), c], rules["rounding"], sf3) if (v, l) in t.index else ((0, 0), None)
        sys_.var(key, k)
        return key

    for c in cols:
        for (v, l) in n_row:
            keys.append(cell(v, l, c))
    n_key = lambda c: ("n", n_row[0][1], c) if n_row else None
    for v in variables:
        if v == "n":
            continue
        rows = [l for (vv, l) in t.index if vv == v]
        if any(_summary_row(l) for l in rows):       # continuous: only its missing row is a count
            levels, categorical = [], False
        else:
            levels, categorical = [l for l in rows if l != "missing"], True
        has_missing = "missing" in rows
        for c in cols:
            ks = [cell(v, l, c) for l in levels]
            m = cell(v, "missing", c) if has_missing else None
            keys += ks + ([m] if m else [])
            if not categorical and m and n_row:        # a missing count is at most n
                sys_.add({sys_.keys[m]: 1.0, sys_.keys[n_key(c)]: -1.0}, -INF, 0.0)
            if categorical and n_row:
                coeffs = {sys_.keys[k]: 1.0 for k in ks}
                if m:
                    coeffs[sys_.keys[m]] = coeffs.get(sys_.keys[m], 0) + 1.0
                coeffs[sys_.keys[n_key(c)]] = -1.0
                sys_.add(coeffs, 0.0)
                den_lo, den_hi = 0.0, INF
                for l in levels:
                    k, p = parse_count_percent(t.loc[(v, l), c], rules["rounding"], sf3)
                    if k is None or p is None:
                        continue
                    if p[1] > 0:
                        den_lo = max(den_lo, 100 * k[0] / p[1])
                    if p[0] > 0:
                        den_hi = min(den_hi, 100 * k[1] / p[0])
                if den_lo > 0 or den_hi < INF:
                    sys_.add({sys_.keys[k]: 1.0 for k in ks}, den_lo - 1e-9, den_hi + 1e-9)
        if "All" in cols and groups:
            for l in levels + (["missing"] if has_missing else []):
                coeffs = {sys_.keys[(v, l, g)]: 1.0 for g in groups}
                coeffs[sys_.keys[(v, l, "All")]] = -1.0
                sys_.add(coeffs, 0.0)
    if "All" in cols and groups and n_row:
        coeffs = {sys_.keys[n_key(g)]: 1.0 for g in groups}
        coeffs[sys_.keys[n_key("All")]] = -1.0
        sys_.add(coeffs, 0.0)
    res = sys_.bounds({k: k for k in dict.fromkeys(keys)})
    return res if res is not None else {}


# ----------------------------------------------------------------------------------------------------------------
# 3. attrition: consecutive remaining counts publish the number excluded by each step

def attrition(bundle: Path, name: str = "attrition") -> dict:
    "Excluded by each step: {(step index, column): (lo, hi)}, step i going from row i-1 to row i."
    path = Path(bundle) / f"{name}.csv"
    if not path.is_file():
        return {}
    rules = rules_of(bundle)
    t = read_table(path, index_col=None)
    out = {}
    for col in [c for c in t.columns if c in ("persons", "records", "subjects", "count")]:
        sys_ = Counts()
        iv = [count_interval(x, rules["rounding"], may_be_3sf(t[[col]])) for x in t[col]]
        for i, v in enumerate(iv):
            sys_.var(i, v)
        for i in range(1, len(iv)):             # remaining counts never grow
            sys_.add({sys_.keys[i - 1]: 1.0, sys_.keys[i]: -1.0}, 0.0, INF)
        res = sys_.bounds({(i, col): {i - 1: 1.0, i: -1.0} for i in range(1, len(iv))})
        out.update(res or {})
    return out


# ----------------------------------------------------------------------------------------------------------------
# 4. differencing: two Table 1s of cohorts that differ by a few people

def differencing(bundle_a: Path, bundle_b: Path, name: str = "table1") -> dict:
    """Counts of the people in cohort A but not in B (B is A with one more restriction, public knowledge):
    {(variable, level, column): (lo, hi)}, from each table's cell intervals (the percentages attack first)."""
    a, b = percentages(bundle_a, name), percentages(bundle_b, name)
    if not a or not b:
        return {}
    n_a = next((v for k, v in a.items() if k[0] == "n" and k[2] == "All"), None)
    n_b = next((v for k, v in b.items() if k[0] == "n" and k[2] == "All"), None)
    most = n_a[1] - n_b[0] if n_a and n_b else INF
    out = {}
    for key in a.keys() & b.keys():
        (alo, ahi), (blo, bhi) = a[key], b[key]
        lo, hi = max(alo - bhi, 0), min(ahi - blo, most)
        out[key] = (lo, hi) if lo <= hi else UNKNOWN
    return out


# ----------------------------------------------------------------------------------------------------------------
# 5. net benefit: the decision curve at full precision with n and events gives TP and FP at every threshold

def _split_counts(bundle: Path, rules: dict):
    path = Path(bundle) / "split.csv"
    if not path.is_file():
        return None, None
    t = read_table(path)
    if "test" not in t.index:
        return None, None
    row = t.loc["test"]
    sf3 = may_be_3sf(t)
    n = count_interval(row.get("records", row.get("n")), rules["rounding"], sf3)
    e = count_interval(row.get("events"), rules["rounding"], sf3)
    return n, e


def _pairs(nb: tuple, t: float, n: int, e: int) -> np.ndarray:
    "(TP, FP) integer pairs with TP/n - FP/n * t/(1-t) inside the interval `nb`."
    w = t / (1 - t)
    fp = np.arange(0, n - e + 1)
    tol = 1e-9 * max(1.0, n)
    lo = np.ceil(n * nb[0] + fp * w - tol)
    hi = np.floor(n * nb[1] + fp * w + tol)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, e)
    ok = lo <= hi
    fp, lo, hi = fp[ok], lo[ok].astype(int), hi[ok].astype(int)
    if len(fp) == 0:
        return np.zeros((0, 2), dtype=int)
    span = hi - lo
    if span.max() > 200:                               # nothing pinned: give the whole box
        return np.array([[0, 0], [e, n - e]])
    tp = np.concatenate([lo + j for j in range(span.max() + 1)])
    fpp = np.concatenate([fp for _ in range(span.max() + 1)])
    keep = tp <= np.concatenate([hi for _ in range(span.max() + 1)])
    return np.unique(np.column_stack([tp[keep], fpp[keep]]), axis=0)


def _dominated(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    "For each pair of `a`, whether some pair of `b` has TP <= and FP <= it (b at a higher threshold)."
    if len(b) == 0:
        return np.zeros(len(a), dtype=bool)
    order = np.argsort(b[:, 0], kind="stable")
    tps, prefmin = b[order, 0], np.minimum.accumulate(b[order, 1])
    j = np.searchsorted(tps, a[:, 0], side="right") - 1
    return (j >= 0) & (prefmin[np.maximum(j, 0)] <= a[:, 1])


def _chain_prune(sets: list[np.ndarray]) -> list[np.ndarray]:
    "TP and FP never grow with the threshold: keep only pairs with a compatible pair at the neighbouring thresholds."
    changed = True
    while changed:
        changed = False
        for i in range(len(sets) - 1):
            a, b = sets[i], sets[i + 1]
            ka = _dominated(a, b)
            kb = _dominated(-b, -a)
            if not ka.all() or not kb.all():
                sets[i], sets[i + 1] = a[ka], b[kb]
                changed = True
    return sets


def net_benefit(bundle: Path) -> dict:
    "{(model, threshold, quantity): (lo, hi)} for quantity in tp, fp, fn, tn, from the decision curve and the split."
    rules = rules_of(bundle)
    path = Path(bundle) / "decision_curve.csv"
    if not path.is_file():
        return {}
    t = read_table(path, index_col=None)
    n_iv, e_iv = _split_counts(bundle, rules)
    thresholds = [parse_number(x) for x in t["threshold"]]
    if n_iv is None or any(x is None for x in thresholds):
        return {}
    ts = [(lo + hi) / 2 for lo, hi in thresholds]
    if e_iv is None and "treat_all" in t.columns:      # prevalence from "treat all": pi = (nb_all + w) / (1 + w)
        v = parse_number(t["treat_all"].iloc[0], statistic=True)
        if v is not None:
            w = ts[0] / (1 - ts[0])
            lo, hi = (v[0] + w) / (1 + w), (v[1] + w) / (1 + w)
            e_iv = (math.ceil(lo * n_iv[0] - 1e-6), math.floor(hi * n_iv[1] + 1e-6))
    if e_iv is None:
        return {}
    combos = [(n, e) for n in range(n_iv[0], n_iv[1] + 1) for e in range(e_iv[0], e_iv[1] + 1) if 0 <= e <= n]
    if len(combos) > 400:
        return {}
    models = [c for c in t.columns if c not in ("threshold", "treat_all", "treat_none")]
    out = {}
    for model in models:
        nbs = [parse_number(x, statistic=True) for x in t[model]]
        acc = {}
        for n, e in combos:
            sets = [(_pairs(nb, th, n, e) if nb is not None else None) for nb, th in zip(nbs, ts)]
            idx = [i for i, s in enumerate(sets) if s is not None]
            if any(len(sets[i]) == 0 for i in idx):
                continue                                           # (n, e) inconsistent with the curve
            pruned = _chain_prune([sets[i] for i in idx])
            if any(len(s) == 0 for s in pruned):
                continue
            for i, s in zip(idx, pruned):
                q = {"tp": s[:, 0], "fp": s[:, 1], "fn": e - s[:, 0], "tn": n - e - s[:, 1]}
                for k, v in q.items():
                    key = (model, round(ts[i], 10), k)
                    lo, hi = int(v.min()), int(v.max())
                    acc[key] = (min(acc[key][0], lo), max(acc[key][1], hi)) if key in acc else (lo, hi)
        out.update(acc)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 6. fairness: rates of subgroups give n, events, TP and FP; hidden levels follow from the overall row

_RATE_COLS = ("tpr", "fpr", "ppv", "selection_rate")


def _row_candidates(n_iv, e_iv, rates: dict, n_max: int) -> np.ndarray | None:
    "Integer (n, events, TP, FP) quadruples consistent with a subgroup row's published counts and rates."
    if n_iv is None and all(rates.get(k) is None for k in _RATE_COLS):
        return None
    n_lo, n_hi = (n_iv if n_iv else (1, n_max))
    n_hi = min(n_hi, n_max) if n_hi < INF else n_max
    ns = np.arange(max(n_lo, 1), n_hi + 1)
    N, E = np.meshgrid(ns, np.arange(0, n_hi + 1), indexing="ij")
    N, E = N.ravel(), E.ravel()
    keep = E <= N
    if e_iv:
        keep &= (E >= e_iv[0]) & (E <= e_iv[1])
    N, E = N[keep], E[keep]
    if len(N) > 3_000_000:
        return None

    def expand(base: np.ndarray, rate, lim):
        "Integers k in [0, lim] with k / base inside `rate` (all of them if the rate is hidden), as (row index, k)."
        if rate is None:
            span = int(lim.max()) + 1 if len(lim) else 1
            if span > 400:
                return None
            idx = np.repeat(np.arange(len(base)), span)
            k = np.tile(np.arange(span), len(base))
            ok = k <= lim[idx]
            return idx[ok], k[ok]
        lo = np.ceil(rate[0] * base - 1e-9)
        hi = np.floor(rate[1] * base + 1e-9)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, lim)
        width = int(np.max(hi - lo, initial=0)) + 1
        if width > 400:
            return None
        idx = np.repeat(np.arange(len(base)), width)
        k = np.repeat(lo, width) + np.tile(np.arange(width), len(base))
        ok = (k <= hi[idx]) & (base[idx] > 0) | ((base[idx] == 0) & (k == 0))
        return idx[ok], k[ok].astype(int)

    tp = expand(E, rates.get("tpr"), E)
    if tp is None:
        return None
    i, TP = tp
    N1, E1 = N[i], E[i]
    fp = expand(N1 - E1, rates.get("fpr"), N1 - E1)
    if fp is None:
        return None
    j, FP = fp
    N2, E2, TP2 = N1[j], E1[j], TP[j]
    ok = np.ones(len(N2), dtype=bool)
    sel, ppv = rates.get("selection_rate"), rates.get("ppv")
    if sel is not None:
        s = (TP2 + FP) / N2
        ok &= (s >= sel[0] - 1e-9) & (s <= sel[1] + 1e-9)
    if ppv is not None:
        pos = TP2 + FP
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(pos > 0, TP2 / np.maximum(pos, 1), np.nan)
        ok &= (pos > 0) & (q >= ppv[0] - 1e-9) & (q <= ppv[1] + 1e-9)
    return np.column_stack([N2[ok], E2[ok], TP2[ok], FP[ok]])


def fairness(bundle: Path, name: str = "subgroup_report") -> dict:
    """{(variable, group, quantity): (lo, hi)} for n, events, tp, fp, fn, tn of every row of the subgroup report.

    Per row: every (n, events, TP, FP) consistent with its published counts and rates (TPR = TP/events,
    FPR = FP/non-events, PPV = TP/(TP+FP), selection rate = (TP+FP)/n). Per variable: its levels add up to the overall
    row, so hidden levels follow by subtraction (LP over the rows' bounds)."""
    path = Path(bundle) / f"{name}.csv"
    if not path.is_file():
        return {}
    rules = rules_of(bundle)
    t = read_table(path, index_col=None)
    sf3 = may_be_3sf(t[[c for c in ("n", "events") if c in t.columns]])
    rows = []
    for _, r in t.iterrows():
        rates = {k: parse_number(r.get(k), statistic=True) for k in _RATE_COLS if k in t.columns}
        rows.append(dict(variable=str(r["variable"]), group=str(r["group"]),
                         n=count_interval(r.get("n"), rules["rounding"], sf3), e=count_interval(r.get("events"), rules["rounding"], sf3),
                         rates=rates))
    overall = next((r for r in rows if r["variable"] == "overall"), rows[0] if rows else None)
    if overall is None:
        return {}
    n_max = overall["n"][1] if overall["n"] and overall["n"][1] < INF else None
    if n_max is None:
        return {}
    for r in rows:
        cand = _row_candidates(r["n"], r["e"], r["rates"], n_max)
        r["cand"] = cand if cand is not None and len(cand) else None
    out = {}
    Q = {"n": {"n": 1.0}, "events": {"e": 1.0}, "tp": {"tp": 1.0}, "fp": {"fp": 1.0},
         "fn": {"e": 1.0, "tp": -1.0}, "tn": {"n": 1.0, "e": -1.0, "fp": -1.0}}
    for var in dict.fromkeys(r["variable"] for r in rows):
        if var == overall["variable"]:
            block = [overall]
        else:
            block = [overall] + [r for r in rows if r["variable"] == var]
        sys_ = Counts()
        for k, r in enumerate(block):
            for q in ("n", "e", "tp", "fp"):
                sys_.var((k, q))
            c = r["cand"]
            if c is not None:
                for col, q in enumerate(("n", "e", "tp", "fp")):
                    sys_.var((k, q), (int(c[:, col].min()), int(c[:, col].max())))
            else:
                if r["n"]: sys_.var((k, "n"), r["n"])
                if r["e"]: sys_.var((k, "e"), r["e"])
            ix = lambda q, k=k: sys_.keys[(k, q)]
            sys_.add({ix("e"): 1.0, ix("n"): -1.0}, -INF, 0.0)           # events <= n
            sys_.add({ix("tp"): 1.0, ix("e"): -1.0}, -INF, 0.0)          # TP <= events
            sys_.add({ix("fp"): 1.0, ix("n"): -1.0, ix("e"): 1.0}, -INF, 0.0)   # FP <= non-events
        if len(block) > 1:
            for q in ("n", "e", "tp", "fp"):
                coeffs = {sys_.keys[(k, q)]: 1.0 for k in range(1, len(block))}
                coeffs[sys_.keys[(0, q)]] = -1.0
                sys_.add(coeffs, 0.0)
        targets = {(k, name_): {(k, q): a for q, a in expr.items()} for k in range(len(block)) for name_, expr in Q.items()}
        res = sys_.bounds(targets)
        if res is None:
            continue
        for (k, name_), iv in res.items():
            r = block[k]
            if k == 0 and var != overall["variable"]:
                continue
            out[(r["variable"], r["group"], name_)] = iv
    return out


# ----------------------------------------------------------------------------------------------------------------
# 7. rounding: under a rounding rule every published count must be a multiple of the base

_COUNT_COLUMNS = {"persons", "records", "events", "n", "at_risk", "censored", "count", "non_events"}


def rounding(bundle: Path, base: int = 5) -> list[dict]:
    """Published counts that are not multiples of `base`, and Table-1 percentages no multiple-of-`base`
    denominator reproduces: [{file, cell, value, why}]."""
    out = []
    for path in sorted(Path(bundle).glob("*.csv")):
        t = read_table(path, index_col=None)
        if list(t.columns[:2]) == ["variable", "level"]:          # a Table 1
            for i, r in t.iterrows():
                var, level = str(r["variable"]), str(r["level"])
                if _summary_row(level):
                    continue
                for c in t.columns[2:]:
                    printed = re.sub(r"\s*\(.*%\s*\)\s*$", "", str(r[c]).strip())
                    if not re.fullmatch(_NUM, printed):
                        continue                                    # hidden or redacted ('[c]', '<8'): not a count shown
                    k, p = parse_count_percent(r[c], sf3=False)
                    if k is None:
                        continue
                    if k[0] != k[1] or k[0] % base:
                        out.append(dict(file=path.name, cell=(var, level, c), value=r[c], why="count not a multiple of base"))
                    if p is not None and k[0] > 0:
                        n_cell = t[(t["variable"] == "n")][c]
                        n_iv = count_interval(n_cell.iloc[0], sf3=False) if len(n_cell) else None
                        top = n_iv[1] if n_iv else 10 * k[1] + base
                        ok = any(p[0] - 1e-9 <= 100 * k[0] / d <= p[1] + 1e-9 for d in range(base, top + base + 1, base) if d >= k[0])
                        if not ok:
                            out.append(dict(file=path.name, cell=(var, level, c), value=r[c],
                                            why="percentage not derived from counts rounded to the base"))
            continue
        for c in t.columns:
            if c not in _COUNT_COLUMNS:
                continue
            for i, v in enumerate(t[c]):
                if not re.fullmatch(_NUM, str(v).strip()):
                    continue
                k = count_interval(v, sf3=False)
                if k is not None and (k[0] != k[1] or k[0] % base):
                    out.append(dict(file=path.name, cell=(i, c), value=v, why="count not a multiple of base"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# 8. linked tables: a crosstab without margins plus its two one-way tables

def _one_way(path: Path, rounding_: int | None) -> dict:
    t = read_table(path)
    col, sf3 = t.columns[0], may_be_3sf(t)
    return {str(i): count_interval(v, rounding_, sf3) for i, v in t[col].items() if str(i) != "All"}


def linked_tables(bundle: Path, crosstab_name: str, rows_name: str, columns_name: str) -> dict:
    "{(row level, column level): (lo, hi)} for every cell of the crosstab, given its one-way tables (LP)."
    rules = rules_of(bundle)
    paths = [Path(bundle) / f"{n}.csv" for n in (crosstab_name, rows_name, columns_name)]
    if not paths[0].is_file():
        return {}
    x = read_table(paths[0])
    x = x.loc[[i for i in x.index if str(i) != "All"], [c for c in x.columns if str(c) != "All"]]
    sys_ = Counts()
    keys = []
    for i in x.index:
        for c in x.columns:
            keys.append((str(i), str(c)))
            sys_.var((str(i), str(c)), count_interval(x.loc[i, c], rules["rounding"], may_be_3sf(x)))
    for path, axis in ((paths[1], 0), (paths[2], 1)):
        if not path.is_file():
            continue
        for level, tot in _one_way(path, rules["rounding"]).items():
            members = [k for k in keys if k[axis] == level]
            if not members or tot is None:
                continue
            sys_.add({sys_.keys[k]: 1.0 for k in members}, tot[0], tot[1])
    return sys_.bounds({k: k for k in keys}) or {}


# ----------------------------------------------------------------------------------------------------------------
# 9. extremes: dependence tables whose outer bin edges are the sample minimum and maximum

def _edges(label: str):
    "(left, right) printed edges of a bin label as number intervals; None for an open or non-numeric side."
    s = str(label).strip().replace("\u2212", "-")
    nums = re.findall(r"(?<![\w.])" + _NUM, s)
    if re.match(r"^[\(\[]", s) and len(nums) == 2:
        return parse_number(nums[0], statistic=True), parse_number(nums[1], statistic=True)
    return None


def extremes(bundle: Path) -> dict:
    "{feature: {'min': (lo, hi), 'max': (lo, hi)}}: the printed lowest and highest bin edges of each dependence table."
    out = {}
    for feature, path in released_csvs(bundle, "dependence_").items():
        t = read_table(path, index_col=None)
        if "bin" not in t.columns:
            continue
        edges = [e for e in (_edges(b) for b in t["bin"]) if e is not None]
        lefts = [e[0] for e in edges if e[0] is not None]
        rights = [e[1] for e in edges if e[1] is not None]
        if not lefts or not rights:
            continue
        lo_edge = min(lefts, key=lambda iv: iv[0])
        hi_edge = max(rights, key=lambda iv: iv[1])
        # pandas widens the lowest edge of a qcut by 0.001 before printing it: the minimum is up to that above
        out[feature] = {"min": (lo_edge[0], lo_edge[1] + 0.0011), "max": hi_edge}
    return out


# ----------------------------------------------------------------------------------------------------------------
# 10. Kaplan-Meier: at-risk arithmetic between published rows

def kaplan_meier(bundle: Path, step_days: int | None = None) -> dict:
    """Per at-risk table: residuals at_risk(k) - at_risk(k+1) - events(k+1) - censored(k+1) between consecutive published
    rows, and (with the public grid step) the hidden counts H_k = N - at_risk(k) - sum(events + censored up to k)
    with the sign flipped: people whose follow-up ended on [start of row k's interval, its time] (for an unmerged row
    that is exactly its grid day). Returns {table: {'residual': {(t_k, t_k1): (lo, hi)}, 'hidden': {t_k: (lo, hi)}}}."""
    rules = rules_of(bundle)
    out = {}
    for name, path in released_csvs(bundle, "at_risk_").items():
        t = read_table(path, index_col=None)
        if not {"time", "at_risk", "events", "censored"} <= set(t.columns) or len(t) < 2:
            continue
        times = [parse_number(x, sf3=False) for x in t["time"]]
        sf3 = may_be_3sf(t[["at_risk", "events", "censored"]])
        a = [count_interval(x, rules["rounding"], sf3) for x in t["at_risk"]]
        d = []
        for e, c in zip(t["events"], t["censored"]):
            e, c = count_interval(e, rules["rounding"], sf3), count_interval(c, rules["rounding"], sf3)
            d.append(None if e is None or c is None else (e[0] + c[0], e[1] + c[1]))
        # Two layouts are possible: a row's events and censorings happened since the previous row (the old layout), or
        # in the interval that starts at the row's time (a life table). The attacker uses the one the arithmetic
        # fits exactly: if every row's at-risk count is the previous one minus that previous row's events and
        # censorings, the table is a life table and its arithmetic holds nothing more; otherwise the old layout's
        # residuals are counts of people whose follow-up ended exactly on a grid day.
        def residuals(shift):
            r = {}
            for k in range(len(t) - 1):
                dk = d[k + shift]
                if None in (a[k], a[k + 1], dk, times[k], times[k + 1]):
                    continue
                r[(times[k][0], times[k + 1][0])] = (a[k][0] - a[k + 1][1] - dk[1], a[k][1] - a[k + 1][0] - dk[0])
            return r
        life = residuals(0)
        life_table = bool(life) and all(lo <= 0 <= hi for lo, hi in life.values())
        res, hidden = (life if life_table else residuals(1)), {}
        if a[0] is not None and all(x is not None for x in d):
            cum = [0, 0]
            for k in range(len(t)):
                if k == 0 or a[k] is None:
                    cum = [cum[0] + d[k][0], cum[1] + d[k][1]]
                    continue
                # old layout: H_k = at_risk(k) + sum(D up to k) - N; life table: at_risk(k) + sum(D before k) - N
                upto = cum if life_table else [cum[0] + d[k][0], cum[1] + d[k][1]]
                hidden[times[k][0]] = (a[k][0] + upto[0] - a[0][1], a[k][1] + upto[1] - a[0][0])
                cum = [cum[0] + d[k][0], cum[1] + d[k][1]]
        out[name] = {"residual": res, "hidden": hidden}
    return out


# ----------------------------------------------------------------------------------------------------------------
# 11. planted rows: person-level values that reached a released report

def planted_rows(bundle: Path, planted_ids: list[int]) -> set[int]:
    "The planted person ids found in any released file of `bundle` (text files, embedded images stripped)."
    found = set()
    if not Path(bundle).is_dir():
        return found
    ids = {str(i): i for i in planted_ids} | {f"{i:,}": i for i in planted_ids}
    pattern = re.compile(r"(?<![\d,.])(" + "|".join(sorted(map(re.escape, ids), key=len, reverse=True)) + r")(?![\d])")
    for p in sorted(Path(bundle).rglob("*")):
        if not p.is_file() or p.suffix.lower() in (".png", ".jpg", ".jpeg", ".pdf"):
            continue
        raw = p.read_bytes()
        if p.suffix == ".gz":
            import gzip
            raw = gzip.decompress(raw)
        text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "", raw.decode("utf-8", "replace"))
        found |= {ids[m.group(1)] for m in pattern.finditer(text)}
    return found


# ----------------------------------------------------------------------------------------------------------------
# judging: what counts as a disclosure

def exposures(recovered: dict, truth: dict, threshold: int) -> dict:
    """The recovered counts that disclose: truth small (< threshold, zero included), inside the recovered interval, and the
    interval narrower than the threshold (fewer than `threshold` possible values). {key: (lo, hi, truth)}."""
    out = {}
    for key, (lo, hi) in recovered.items():
        if key not in truth:
            continue
        v = truth[key]
        if v < threshold and lo <= v <= hi and (hi - lo + 1) < threshold:
            out[key] = (lo, hi, v)
    return out


def exact(recovered: dict) -> dict:
    "The recovered counts pinned to a single value."
    return {k: lo for k, (lo, hi) in recovered.items() if lo == hi}


def extreme_exposures(recovered: dict, values: dict, threshold: int) -> dict:
    """Outer bin edges that give away a sample extreme held by fewer than `threshold` people: the true minimum (maximum)
    lies in the printed edge's interval and fewer than `threshold` explained rows have a value there.
    `values`: {feature: sorted non-missing values (or at least the `threshold` lowest and highest)}.
    {(feature, 'min'|'max'): (lo, hi, true extreme, people in the interval)}."""
    out = {}
    for f, sides in recovered.items():
        v = np.asarray(values.get(f, []), dtype=float)
        if not len(v):
            continue
        for side, (lo, hi) in sides.items():
            m = v.min() if side == "min" else v.max()
            k = int(((v >= lo - 1e-9) & (v <= hi + 1e-9)).sum())
            if lo - 1e-9 <= m <= hi + 1e-9 and k < threshold:
                out[(f, side)] = (lo, hi, float(m), k)
    return out


def km_exposures(recovered: dict, threshold: int) -> dict:
    """At-risk arithmetic that pins a small non-zero count: an interval without 0 whose values are all small
    (|v| < threshold) and that holds fewer than `threshold` values. {(table, kind, key): (lo, hi)}."""
    out = {}
    for table, parts in recovered.items():
        for kind, cells in parts.items():
            for key, (lo, hi) in cells.items():
                if not (lo <= 0 <= hi) and max(abs(lo), abs(hi)) < threshold and hi - lo + 1 < threshold:
                    out[(table, kind, key)] = (lo, hi)
    return out
