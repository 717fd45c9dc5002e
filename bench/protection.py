"""Time disclosure control's protection (linear programmes per hidden cell) on a Table 1 with several small groups.

    python bench/protection.py [--people 1800] [--repeats 3]

The baseline, run in the same process, is the same `publish` with `intervals` solved by scipy's `linprog` (one call per
cell and direction, as before HiGHS was used directly). Prints the median seconds of each and their ratio, and checks
both hide the same cells. Not a test.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import numpy as np
import pandas as pd

import healthbench.disclosure as D
from healthbench.counted import publish
from healthbench.disclosure import uk_default
from healthbench.stats import table_one


def scipy_intervals(values, unknown, eqs, targets=None):
    "The baseline: scipy's linprog for each target and direction."
    from scipy.optimize import linprog
    unknown = set(unknown)
    targets = sorted(unknown, key=repr) if targets is None else [t for t in targets if t in unknown]
    comp, out = D._components(unknown, eqs), {}
    for t in targets:
        cells = sorted(comp[t], key=repr)
        members = set(cells)
        A, b = D._linear_system(values, cells, [e for e in eqs if any(c in members for c in list(e[0]) + [e[1]])])
        if not len(A): out[t] = (0.0, math.inf); continue
        k, lo_hi = cells.index(t), []
        for sign in (1, -1):
            obj = np.zeros(len(cells)); obj[k] = sign
            r = linprog(obj, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
            lo_hi.append((math.inf if sign == -1 else 0.0) if r.status == 3 else sign * r.fun)
        out[t] = tuple(lo_hi)
    return out


def table(people: int):
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"person_id": np.arange(people),
                      "eth": rng.choice(["White", "Asian", "Black", "Mixed", "Other"], people, p=[.975, .008, .008, .007, .002]),
                      "sex": rng.choice(["F", "M"], people), "smoking": rng.choice(["never", "ex", "current", None], people, p=[.5, .3, .15, .05]),
                      "imd": rng.choice([1, 2, 3, 4, 5], people).astype(float), "age": rng.normal(60, 10, people),
                      "bmi": np.where(rng.random(people) < .1, np.nan, rng.normal(27, 4, people))})
    for c in "abcdefghij": d[c] = rng.choice([0, 1], people, p=[.9, .1])
    return table_one(d, "eth", ["sex", "smoking", "imd"] + list("abcdefghij"), ["age", "bmi"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=1800); ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    t1 = table(a.people)
    fast, slow, hidden = [], [], {}
    original = D.intervals
    for r in range(a.repeats):
        for label, fn, times in (("highs", original, fast), ("scipy", scipy_intervals, slow)):
            D.intervals = fn
            t = time.perf_counter(); p = publish(t1, uk_default()); times.append(time.perf_counter() - t)
            hidden[label] = p.primary | p.secondary
    D.intervals = original
    print(f"{len(hidden['highs'])} counts hidden (identical: {hidden['highs'] == hidden['scipy']})")
    print(f"highspy: median {statistics.median(fast):.2f} s; scipy linprog: median {statistics.median(slow):.2f} s; "
          f"ratio {statistics.median(slow) / statistics.median(fast):.1f}x")


if __name__ == "__main__":
    main()
