"""Builder cohorts in ATLAS: `atlas.to_atlas(cohort)` run by OHDSI's Circe (circepy) gives the cohort healthbench's
`cohort.generate` gives — the same rows, and the same ATLAS attrition (persons and records after the qualifying events
and after each rule, each rule on its own, and failing only it).

The cohorts are made with `Cohort.builder` and exercise what the builder can say: first or every occurrence, the
earliest-record limit, prior and post observation, a value range on the entry, age and sex, rules with at least /
at most / exactly counts, open, negative, zero and positive windows, nested all/any groups, and each exit (fixed days,
observation end, an event, death). The CDMs are the random typed ones of `tests/test_engine_circe.py`
(`circe_json.random_rows`: ties, missing end dates, nulls, events outside observation). Needs the circepy venv
(`HB_CIRCE_VENV`, else `.circe-venv`, made by tests/circe/make_venv.sh); skipped without it unless HB_REQUIRE_CIRCE=1.

Run: PYTHONPATH=. pytest tests/test_to_atlas.py
"""
import json
import os
import sys
import warnings
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "circe"))
import compare  # noqa: E402
from circe_json import random_rows, toy_cdm  # noqa: E402

from healthbench.atlas import from_atlas, read_expression, to_atlas, write_expression  # noqa: E402
from healthbench.cdm import connect  # noqa: E402
from healthbench.cohort import Cohort, all_of, any_of, at_least, at_most, exactly, generate  # noqa: E402
from healthbench.concepts import concept_set  # noqa: E402

CONDITIONS = concept_set("conditions", 100)                 # 100 and its descendants 101, 102
C103 = concept_set("c103", 103, descendants=False)
DRUGS = concept_set("drugs", 200)                           # 200 and 201
PROCEDURES = concept_set("procedures", 300, 301, descendants=False)
M400 = concept_set("m400", 400, descendants=False)
O500 = concept_set("o500", 500, descendants=False)
VISITS = concept_set("visits", 9201, 9202, descendants=False)
DEVICES = concept_set("devices", 600, 601, descendants=False)
NOT_102 = concept_set("c100 not 102", 100, exclude=[102])

B = Cohort.builder
COHORTS = {
    "first condition, 30 days prior, age 40-80, 180 days": B("a").entry(CONDITIONS, "condition", prior_days=30).age(40, 80).exit_after(180),
    "every drug, earliest, female, a condition in the year before": B("b").entry(DRUGS, "drug", occurrence="all", limit="earliest")
        .sex("female").require("condition in the year before", at_least(1, CONDITIONS, "condition", window=(-365, 0))),
    "every condition, no drug before, procedure or two visits, exit at a drug":
        B("c").entry(NOT_102, "condition", occurrence="all")
        .require("no drug before", at_most(0, DRUGS, "drug", window=(None, -1)))
        .require("procedure soon or two visits around", any_of(at_least(1, PROCEDURES, "procedure", window=(0, 30)),
                                                               exactly(2, VISITS, "visit", window=(-30, 30))))
        .exit_at_event(DRUGS, "drug"),
    "first measurement up to 120, exit at death": B("d").entry(M400, "measurement", value=(None, 120)).exit_at_death(),
    "every device, 30 days after, nested groups, exit the same day": B("e").entry(DEVICES, "device", occurrence="all", post_days=30)
        .require("observation and (conditions or no measurement)",
                 all_of(at_least(1, O500, "observation", window=(None, None)),
                        any_of(at_least(2, CONDITIONS, "condition", window=(-180, 180)), at_most(0, M400, "measurement", window=(-30, 0)))))
        .exit_after(0),
    "first visit, male, no c103 ever, 2 to 5 years old records": B("f").entry(VISITS, "visit", prior_days=10, post_days=10)
        .sex("male").age(None, 60).require("no c103", exactly(0, C103, "condition")),
    "every condition, on the index day a drug, observation end": B("g").entry(CONDITIONS, "condition", occurrence="all")
        .require("a drug that day", at_least(1, DRUGS, "drug", window=(0, 0))).exit_at_observation_end(),
}
COHORTS = {name: b.build() for name, b in COHORTS.items()}
SEEDS = (1, 2, 3)


def _venv_ok() -> bool:
    venv = Path(os.environ.get("HB_CIRCE_VENV") or HERE.parent / ".circe-venv")
    return (venv / "bin" / "python").exists()


@pytest.fixture(scope="module")
def cdms(tmp_path_factory):
    return {seed: toy_cdm(tmp_path_factory.mktemp(f"seed{seed}") / "toy.duckdb", **random_rows(seed)) for seed in SEEDS}


@pytest.fixture(scope="module")
def circe(cdms):
    if not _venv_ok() and os.environ.get("HB_REQUIRE_CIRCE") != "1":
        pytest.skip("no circepy venv (bash tests/circe/make_venv.sh, or HB_CIRCE_VENV)")
    texts = {name: json.dumps(to_atlas(c)) for name, c in COHORTS.items()}
    return {seed: compare.circe_results(path, texts) for seed, path in cdms.items()}


def ours(path, cohort):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with connect(path) as cdm:
            r = generate(cdm, cohort)
            return r.to_pandas(), r.attrition


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(COHORTS))
def test_to_atlas_runs_in_circe_as_in_healthbench(cdms, circe, seed, name):
    res = circe[seed][name].raise_for_error()
    rows, att = ours(cdms[seed], COHORTS[name])
    atlas_steps = att.iloc[:len(COHORTS[name].to_expression().inclusion_rules) + 1].reset_index(drop=True)   # without 'cohort'
    compare.assert_same_as_circe(res, rows, atlas_steps)


def test_cohorts_select_someone(circe):
    "Every cohort has qualifying events, and each rule holds for some event, on at least one CDM (else it tests little)."
    weak = []
    for name, c in COHORTS.items():
        got = [circe[s][name].attrition for s in SEEDS if circe[s][name].ok]
        if not any(a.records.iloc[0] > 0 for a in got): weak.append((name, "no qualifying events"))
        for k in range(len(c.to_expression().inclusion_rules)):
            if not any(a.rule_records.iloc[k + 1] > 0 for a in got): weak.append((name, k))
    assert not weak, weak


@pytest.mark.parametrize("name", list(COHORTS))
def test_round_trips(name):
    "ATLAS JSON read back is the builder cohort's expression, and `from_atlas` gives back the builder cohort itself."
    c = COHORTS[name]
    written = to_atlas(c)
    text = json.dumps(written)
    assert write_expression(read_expression(text)[0]) == written
    back = from_atlas(text, name=c.name)
    assert to_atlas(back) == written
    assert [r.rule for r in back.inclusion_rules] == [r.rule for r in c.inclusion_rules]
    assert (back.entry, back.demographics, back.exit) == (c.entry, c.demographics, c.exit)
