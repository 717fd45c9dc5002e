"""The real template runs the attacks read, shared by `make_controls.py` (old code, stored) and `tests/test_attacks.py`
(whatever code is installed). Each scenario is the public parameters an attacker would know, plus the row-level
truth computed from data that stays in the TRE (see truth.py).

All runs use one small synthetic CDM (5,000 persons, seed 1); template runs are made one at a time."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

PERSONS, SEED = 5000, 1
GROUPS = ("sex", "ethnicity", "imd_quintile", "age_band")
FAIRNESS = {"model": "logistic", "threshold": 0.1, "n_boot": 50}
EXPLAIN = {"rows": 2000, "top": 5, "model": "gradient_boosting"}
SURVIVAL = {"group": "sex", "step_days": 365, "horizon_days": 3650}
PREDICT = {"folds": 3, "horizon_days": 1825}
PLANTED_IDS = list(range(7700001, 7701000))        # 999 made-up person ids, planted into a release


def make_cdm(path: Path) -> Path:
    from healthbench.synth import generate
    path.parent.mkdir(parents=True, exist_ok=True)
    generate(PERSONS, seed=SEED, path=path, progress=False, overwrite=True)
    return path


def template(name: str, params: dict, out: Path) -> Path:
    from healthbench.templates import run
    return Path(run(name, params, out, progress=False).run_dir)


def example_cohort(no_ckd: bool = False) -> dict:
    """The characterise template's example cohort (incident type 2 diabetes, aged 40-80, no prior MI or stroke); with
    `no_ckd` also "no chronic kidney disease up to index", which on this CDM excludes 4 people."""
    from healthbench.cohort import Cohort, at_most
    from healthbench.concepts import concept_set
    t2dm = concept_set("type 2 diabetes", 201826)
    cvd = concept_set("MI or stroke", 4329847, 381316)
    b = (Cohort.builder("Incident type 2 diabetes, aged 40-80" + (", no CKD" if no_ckd else ""))
         .entry(t2dm, "condition", prior_days=365).age(40, 80)
         .require("no MI or stroke before", at_most(0, cvd, "condition", window=(None, -1))))
    if no_ckd:
        b = b.require("no chronic kidney disease", at_most(0, concept_set("chronic kidney disease", 46271022), "condition",
                                                             window=(None, 0)))
    return json.loads(b.build().to_json())


# ----------------------------------------------------------------------------------------------------------------
# linked tables through the Session API (not a template)

def linked_data() -> pd.DataFrame:
    "Synthetic people of one small ethnic group (healthbench.synth, 3,000 persons, seed 1): IMD x sex has small cells."
    from healthbench.synth import simulate_persons
    p = simulate_persons(3000, seed=1)
    p = p[p.ethnicity == "mixed"].reset_index(drop=True)
    return pd.DataFrame({"imd_quintile": p.imd_quintile.astype(int), "sex": p.male.map({0: "female", 1: "male"})})


def linked_release(data: pd.DataFrame, folder: Path) -> Path | None:
    "A crosstab without margins and its two one-way tables, recorded and finalised (None if finalise refuses)."
    from healthbench.disclosure import Session, crosstab
    s = Session(folder=folder / "outputs")
    s.table("imd_by_sex", crosstab(data, "imd_quintile", "sex"))
    s.table("sex", crosstab(data, "sex"))
    s.table("imd", crosstab(data, "imd_quintile"))
    return s.finalise(folder / "release")


def linked_truth(data: pd.DataFrame) -> dict:
    t = pd.crosstab(data.imd_quintile, data.sex)
    return {(str(i), str(c)): int(t.loc[i, c]) for i in t.index for c in t.columns}


# ----------------------------------------------------------------------------------------------------------------
# planted rows

def planted_frame() -> pd.DataFrame:
    "999 person-level rows: id, age, outcome, predicted risk."
    rng = np.random.default_rng(7)
    return pd.DataFrame({"person_id": PLANTED_IDS, "age": rng.integers(40, 81, len(PLANTED_IDS)),
                         "outcome": rng.integers(0, 2, len(PLANTED_IDS)),
                         "predicted_risk": rng.uniform(0.001, 0.6, len(PLANTED_IDS)).round(4)})


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def plant(predict_run: Path, copy_to: Path, forge: bool) -> Path:
    """A copy of a predict run whose released `metrics.csv` is replaced by 999 person-level rows; with `forge`, its
    checksums, SHA256SUMS and results.json sha256 are rewritten to match (a consistent tampered bundle)."""
    shutil.copytree(predict_run, copy_to)
    rel = copy_to / "release"
    target = rel / "metrics.csv"
    planted_frame().to_csv(target, index=False)
    if forge:
        h = _sha(target)
        (rel / "checksums" / "metrics.csv.txt").write_text(h)
        sums = [(f"{h}  metrics.csv" if line.endswith("  metrics.csv") else line)
                for line in (rel / "SHA256SUMS").read_text().splitlines()]
        (rel / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        res = json.loads((rel / "results.json").read_text())
        for r in res["results"].values():
            if r.get("properties", {}).get("name") == "metrics":
                r["sha256"] = h
                for f in r.get("files", []):
                    if f.get("name") == "metrics.csv" and "sha256" in f:
                        f["sha256"] = h
        (rel / "results.json").write_text(json.dumps(res, indent=2))
    return copy_to
