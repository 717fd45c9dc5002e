"""healthbench's disclosure verdicts against ACRO's, table by table (run in the ACRO venv: tests/acro/run.sh).

Not named test_*.py on purpose: the main suite's venv has no ACRO, so only tests/acro/run.sh collects this file
(by naming it on pytest's command line), in the second virtual environment with ACRO and pandas 2.3.

For each fixture table both libraries build the table from the same microdata, and we assert: the same numbers,
the same verdict (pass / review / fail) and, rule by rule, the same flagged cells. ACRO 1.0 names its checks after
the SDC ontology; healthbench's `threshold` covers ACRO's MinimumThresholdCheck and PresenceOfZeroCheck (a zero
cell fails the minimum count), and when negative values make ACRO's dominance checks "review", the cells they
flag are healthbench's `negative` cells. Two tables differ by design; `DIFFERENT` says how and why, and the test
asserts exactly that difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from acro_reference import ACRO_VERSION, acro_verdict  # noqa: E402
from fixtures import SPECS, make_microdata  # noqa: E402

from healthbench.disclosure import Rules, crosstab, uk_default  # noqa: E402

DATA = make_microdata()
_CONFIG = {"zeros_are_disclosive": "zeros_disclosive", "check_missing_values": "check_missing",
           "safe_threshold": "threshold", "safe_nk_n": "nk_n", "safe_nk_k": "nk_k", "safe_pratio_p": "p_ratio"}

# tables where healthbench deliberately differs from ACRO 1.0.2: spec name -> (why, healthbench's verdict)
DIFFERENT = {
    "zero_cell_zeros_not_disclosive": (
        "with zeros not disclosive ACRO still fails a zero cell on its minimum-count check (0 < 10); healthbench "
        "treats zeros_disclosive=False as 'a zero cell is safe'", "pass"),
    "pivot_count_of_values": (
        "aggfunc='count' shows counts of non-missing values (5 per cell here); ACRO checks the row counts (50) and "
        "passes, healthbench checks the counts shown and fails", "fail"),
}


def rules_for(spec: dict) -> Rules:
    over = {_CONFIG[k]: v for k, v in spec.get("acro_config", {}).items()}
    return Rules(**{**uk_default().to_dict(), **over})


def healthbench_check(spec: dict):
    aggfunc = spec.get("aggfunc")
    if spec["kind"] == "pivot_table" and aggfunc is None: aggfunc = "mean"
    return crosstab(DATA, spec["index"], spec.get("columns"), values=spec.get("values"), aggfunc=aggfunc,
                    margins=spec.get("margins", False), rules=rules_for(spec), name=spec["name"])


def acro_cells(v: dict) -> dict[str, list]:
    "ACRO's flagged cells under healthbench's rule names."
    c, checks = v["cells"], v["checks"]
    out = {"threshold": sorted({tuple(x) for k in ("MinimumThresholdCheck", "PresenceOfZeroCheck") for x in c.get(k, [])})}
    dominance_review = any(str(checks.get(k, "")).startswith("review") for k in ("NKCheck", "PPercentCheck"))
    if dominance_review:
        out["negative"] = sorted({tuple(x) for k in ("NKCheck", "PPercentCheck") for x in c.get(k, [])})
    else:
        out["nk-rule"] = sorted(map(tuple, c.get("NKCheck", [])))
        out["p-ratio"] = sorted(map(tuple, c.get("PPercentCheck", [])))
    out["missing"] = sorted(map(tuple, c.get("MissingCheck", [])))
    return {k: x for k, x in out.items() if x}


def hb_cells(chk) -> dict[str, list]:
    return {k: sorted(map(tuple, x)) for k, x in chk.cells.items() if x}


def test_acro_version():
    print(f"ACRO {ACRO_VERSION}, pandas {pd.__version__}")
    assert pd.__version__.startswith("2.3"), "the cross-check runs on pandas 2.3 (ACRO pins pandas <= 2.3.3)"


def test_enough_tables():
    assert len(SPECS) >= 10 and len(SPECS) - len(DIFFERENT) >= 10


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_same_table_and_verdict(spec):
    v = acro_verdict(DATA, spec)
    chk = healthbench_check(spec)
    ours = chk.table.to_numpy(dtype=float)
    theirs = np.array([[np.nan if x is None else x for x in row] for row in v["table"]["data"]], dtype=float)
    assert ours.shape == theirs.shape, (chk.table, v["table"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, equal_nan=True)
    if spec["name"] in DIFFERENT:
        why, ours_verdict = DIFFERENT[spec["name"]]
        assert chk.verdict == ours_verdict and v["status"] != ours_verdict, (why, chk.verdict, v["status"])
        return
    assert chk.verdict == v["status"], (chk.summary, v["summary"])
    assert hb_cells(chk) == acro_cells(v), (chk.reasons, v["outcome"])
