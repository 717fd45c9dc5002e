"""Subgroup report bootstrap: all resamples scored as arrays (healthbench.fairness) against one resample at a time
with healthbench.stats.auroc and calibration (the previous implementation), in the same process.

python bench/fairness_bootstrap.py [people]    (default 6,000 people, 200 resamples, sex/ethnicity/IMD groups)
"""
import math, sys, time
import numpy as np, pandas as pd
import healthbench.fairness as F
from healthbench.errors import InputError
from healthbench.stats import auroc, calibration

def one_at_a_time(y, p, yhat, idx):
    "Every metric on each resample, one resample at a time (the baseline)."
    rows = []
    for i in idx:
        yi, pi, hi = y[i], p[i], yhat[i]
        out, k = dict.fromkeys(F.METRICS, math.nan), yi.sum()
        if 0 < k < len(yi):
            out["auroc"] = auroc(yi, pi).value
            try: c = calibration(yi, pi)
            except InputError: c = None
            if c: out.update(citl=c["citl"], cal_intercept=c["intercept"], cal_slope=c["slope"])
        tp, pos = float((yi * hi).sum()), float(hi.sum())
        out.update(oe=k / pi.sum(), tpr=tp / k if k else math.nan, fpr=(pos - tp) / (len(yi) - k) if k < len(yi) else math.nan,
                   ppv=tp / pos if pos else math.nan, selection_rate=pos / len(yi))
        rows.append([out[m] for m in F.METRICS])
    return np.array(rows).reshape(len(idx), len(F.METRICS))

def main(n: int = 6000, repeats: int = 3):
    rng = np.random.default_rng(0)
    p = rng.random(n) * .3; y = rng.binomial(1, p)
    g = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "ethnicity": rng.choice(list("ABCDE"), n), "imd": rng.integers(1, 6, n)})
    timings, tables = {}, {}
    vectorised = F._replicates
    for name, fn in (("arrays", vectorised), ("one at a time", one_at_a_time)) * repeats:
        F._replicates = fn
        t = time.perf_counter()
        tables[name] = F.subgroup_report(y, p, g, threshold=.1, n_boot=200).table
        timings.setdefault(name, []).append(time.perf_counter() - t)
    F._replicates = vectorised
    num = tables["arrays"].select_dtypes("number").columns
    diff = np.nanmax(np.abs(tables["arrays"][num].to_numpy(float) - tables["one at a time"][num].to_numpy(float)))
    med = {k: float(np.median(v)) for k, v in timings.items()}
    print(f"subgroup_report, {n:,} people, 200 resamples, {repeats} runs each (median):")
    for k, v in timings.items(): print(f"  {k:<14} {med[k]:6.2f} s   runs {', '.join(f'{x:.2f}' for x in v)}")
    print(f"  ratio one at a time / arrays: {med['one at a time'] / med['arrays']:.1f}x; largest difference in any value {diff:.1e}")

if __name__ == "__main__": main(int(sys.argv[1]) if len(sys.argv) > 1 else 6000)
