"""The AI-readiness card (`healthbench run quality`) on the synthetic CDM and on GiBleed as published.

Each run goes through the real CLI and kernel. Checked against what was released, read independently: the composition
against persons counted in plain SQL on the CDM; the card's JSON lists every item and marks the curator's; the DQD
results file in the release loads back (`read_dqd_json`), holds every check, and no count in it is one that disclosure
control hid (an adversary reading it finds no count from 1 to 9 and no percentage of a hidden count); the report is a
document (no code, no local paths) showing each released figure under its caption; a site's threshold file with its
provenance columns shows who set a threshold; a curator's file fills the curator's fields.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from healthbench.quality_results import read_dqd_json
from healthbench.readiness import card_items, CURATOR_FIELDS, TO_COMPLETE
from tests.test_template_reports import _read

DATA = Path(os.environ.get("HB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DQD, GIBLEED = DATA / "dqd", DATA / "omop" / "gibleed_5.3"
EXE = shutil.which("healthbench") or str(Path(sys.executable).with_name("healthbench"))
THRESHOLD = 10            # uk_default's minimum count


def _run(out: Path, *params: tuple[str, str]) -> subprocess.CompletedProcess:
    args = [EXE, "run", "quality", "--out", str(out), "--quiet"]
    for k, v in params: args += ["-p", k, v]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("quality_synth")
    site = pd.read_csv(DQD / "OMOP_CDMv5.4_Field_Level.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    row = (site.cdmTableName == "PERSON") & (site.cdmFieldName == "race_concept_id")
    site["thresholdSetBy"], site["thresholdReason"] = "", ""
    site.loc[row, ["isForeignKeyThreshold", "thresholdSetBy", "thresholdReason"]] = ["10", "R. Patel (TRE data team)", "local race codes kept"]
    site.to_csv(tmp / "site_field.csv", index=False)
    (tmp / "curator.yml").write_text("intended_uses: cardiovascular risk models for adults in English primary care\n")
    _run(tmp / "run", ("persons", "3000"), ("dqd_folder", str(DQD)), ("dqd_thresholds", str(tmp / "site_field.csv")),
         ("curator", str(tmp / "curator.yml")))
    return tmp / "run"


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("quality_gibleed")
    r = subprocess.run([EXE, "import-cdm", str(GIBLEED), "--out", str(tmp / "gibleed.duckdb")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _run(tmp / "run", ("cdm_path", str(tmp / "gibleed.duckdb")), ("dqd_folder", str(DQD)), ("outcome", "condition:192671"))
    return tmp / "run"


def _released(run: Path, name: str, **kw) -> pd.DataFrame:
    return pd.read_csv(run / "release" / f"{name}.csv", dtype=str, keep_default_na=False, **kw)


def test_synthetic_composition_is_the_persons_counted_in_sql(synth):
    comp = _released(synth, "composition", index_col=[0, 1])
    with duckdb.connect(str(synth / "data" / "synthetic.duckdb"), read_only=True) as con:
        sex = dict(con.sql("SELECT gender_concept_id, count(*) FROM person GROUP BY 1").fetchall())
        eth = dict(con.sql("SELECT race_source_value, count(*) FROM person GROUP BY 1").fetchall())
        n = con.sql("SELECT count(DISTINCT person_id) FROM observation_period").fetchone()[0]
    assert int(comp.loc[("All", "All"), "Persons"]) == n
    assert int(comp.loc[("sex", "Female"), "Persons"]) == sex[8532] and int(comp.loc[("sex", "Male"), "Persons"]) == sex[8507]
    for level, k in eth.items():
        shown = comp.loc[("ethnicity", level), "Persons"]
        assert shown == "[c]" or int(shown) == k, (level, shown, k)
    assert comp.loc[("ethnicity", "White"), "Reference %"] == "81.7"        # Census 2021, bundled


def test_card_json_lists_every_item_and_marks_the_curators(synth):
    card = json.loads((synth / "release" / "readiness_card_json.json").read_text())
    items = {i["item"]: i for i in card["items"]}
    assert set(items) == set(card_items().Item)
    assert items["Intended uses"]["value"] == "cardiovascular risk models for adults in English primary care"
    for key, item in CURATOR_FIELDS.items():
        if key != "intended_uses": assert items[item]["value"] == TO_COMPLETE, item
    assert {"3c", "5a", "5b", "6a", "6b", "7"} <= {x.strip() for i in card["items"] for x in i["tripod_ai"].split(",")}
    for name in card["released_files"].values(): assert (synth / "release" / name).is_file(), name


@pytest.mark.parametrize("which", ["synth", "gibleed"])
def test_released_dqd_json_loads_back_and_reveals_no_hidden_count(which, request):
    run = request.getfixturevalue(which)
    back = read_dqd_json(run / "release" / "dqd_results_json.json")
    internal = read_dqd_json(run / "work" / "dqd_results_internal.json")
    assert len(back) == len(internal) == (2535 if which == "synth" else 2005)
    same = back.status == internal.status
    assert (same | (back.status == "suppressed")).all()
    sup = back[~same]               # a suppressed status hides passed-with-violations or failed, with the count it would bound
    assert internal[~same].status.isin(["passed with violations", "failed"]).all() and sup.numViolatedRows.isna().all()
    na = back[back.status == "not applicable"]
    assert na.numViolatedRows.isna().all() and na.numDenominatorRows.isna().all()     # no zero that no check saw
    assert (back.status == "error").sum() == 0
    assert back[back.status == "not applicable"].notApplicableReason.notna().all()
    every = _released(run, "dqd_checks", index_col=0)
    for col, shown in (("numViolatedRows", "Violating rows"), ("numDenominatorRows", "Rows checked")):
        rows = back[~back.checkName.isin(["cdmTable", "cdmField"])]      # those say 1 of 1 when a table is absent: no count of rows
        counts = rows.set_index("checkId")[col].dropna().astype(int)
        small = counts[(counts > 0) & (counts < THRESHOLD)]
        assert small.empty, f"{col}: released small counts {small.head().to_dict()}"
        hidden = every.index[every[shown] == "[c]"]
        assert back.set_index("checkId").loc[hidden, col].isna().all()
    # a percentage would give a hidden count away with the rows checked: it is hidden with it
    b = back.set_index("checkId")
    assert b.loc[b.numViolatedRows.isna() & b.status.isin(["passed with violations", "failed"]), "pctViolatedRows"].isna().all()
    assert (every["Violating rows"] == "[c]").sum() > 0            # there were small counts to hide


def test_site_threshold_and_its_provenance_are_shown(synth):
    checks = _released(synth, "dqd_checks", index_col=0)
    row = checks.loc["field_isforeignkey_person_race_concept_id"]
    assert row["Threshold"] == "10%; R. Patel (TRE data team), local race codes kept", row["Threshold"]
    internal = read_dqd_json(synth / "work" / "dqd_results_internal.json").set_index("checkId")
    r = internal.loc["field_isforeignkey_person_race_concept_id"]
    assert r.thresholdValue == 10 and r.provenance == {"thresholdSetBy": "R. Patel (TRE data team)", "thresholdReason": "local race codes kept"}
    # with DQD's 0% the foreign-key check on race fails (synthetic ethnicities without an OMOP race concept); 10% passes it
    with duckdb.connect(str(synth / "data" / "synthetic.duckdb"), read_only=True) as con:
        bad, n = con.sql("SELECT count(*) FILTER (WHERE race_concept_id NOT IN (SELECT concept_id FROM concept)), count(*) FROM person").fetchone()
    assert r.numViolatedRows == bad and r.numDenominatorRows == n
    assert r.status == ("passed with violations" if 0 < bad * 100 <= 10 * n else "failed" if bad else "passed")


@pytest.mark.parametrize("which", ["synth", "gibleed"])
def test_card_report_is_a_document_with_its_figures(which, request):
    run = request.getfixturevalue(which)
    rep, text = _read(run)
    for caption in ("Table 1.", "Table 2.", "Table 3.", "Table 5.", "Table 6.", "Table 7.", "Table 8.", "Table S1."):
        rep.table(caption)
    assert "<pre" not in text and "Traceback" not in text and str(run) not in text and "/tmp/" not in text
    figures = {alt.split(".")[0]: png for alt, png in rep.images}
    assert figures["Figure 1"] == (run / "release" / "composition_figure.png").read_bytes()
    assert figures["Figure 2"] == (run / "release" / "records_by_year_figure.png").read_bytes()
    assert len(rep.images) == len(set(png for _, png in rep.images))       # each figure once


def test_gibleed_card_describes_its_persons_and_outcome(gibleed):
    comp = _released(gibleed, "composition", index_col=[0, 1])
    person = pd.read_parquet(GIBLEED / "person.parquet")
    assert int(comp.loc[("All", "All"), "Persons"]) == len(person)
    assert int(comp.loc[("sex", "Female"), "Persons"]) == int((person.gender_concept_id == 8532).sum())
    assert comp.loc[("imd_quintile", "Not recorded"), "%"] == "100.0"        # a US CDM records no IMD
    prev = _released(gibleed, "outcome_prevalence", index_col=[0, 1, 2])
    cond = pd.read_parquet(GIBLEED / "condition_occurrence.parquet")
    anc = pd.read_parquet(GIBLEED / "concept_ancestor.parquet")
    ids = set(anc[anc.ancestor_concept_id == 192671].descendant_concept_id.astype(int)) | {192671}
    expected = cond[cond.condition_concept_id.astype(int).isin(ids)].person_id.nunique()
    assert int(prev.xs("All", level=1).iloc[0]["with_record"]) == expected
