"""The bundled analysis templates, run for real: from Python (`run`), from the CLI and from plain papermill.

Each run starts a real kernel, builds a small synthetic CDM and writes a run folder. Checked here: every template
keeps its `parameters` tag; each runs all three ways; the same parameters give byte-identical result tables
(and `healthbench verify` says so); a failing cell leaves a partial notebook and a `failed` manifest naming the
cell, and the CLI exits non-zero with that message; bad parameters are refused before any kernel starts; every
exported table and figure is in the disclosure log and only passing outputs reach the release bundle.

On real data (`test_gibleed_*`, marked `gibleed` by name and `slow`): OHDSI's Eunomia GiBleed (v5.3.1, Parquet, from
`../shared/data/`) as a typed DuckDB — made by `healthbench.cdm.import_cdm` where it exists, else by `_typed_duckdb`
below, a stand-in for it — runs the five templates from the CLI with a new-user cohort of celecoxib, a GI-bleed outcome
and the `default` (data-driven) covariates: each completes, passes disclosure control and verifies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from healthbench.disclosure import verify_bundle
from healthbench.errors import CDMNotFoundError, ConceptError, InputError, TemplateRunError
from healthbench.templates import TEMPLATE_DIR, available, parameters, run, validate

TEMPLATES = ["characterise", "predict", "survival", "explain", "fairness"]     # each run all three ways
ALL = sorted(TEMPLATES + ["report", "quality"])
EXE = shutil.which("healthbench") or str(Path(sys.executable).with_name("healthbench"))
SMALL = {"characterise": {"persons": 3000}, "predict": {"persons": 4000, "folds": 3}, "survival": {"persons": 3000},
         "explain": {"persons": 3000, "rows": 500}, "fairness": {"persons": 3000, "n_boot": 50}}


def _tables(run_dir: Path) -> dict[str, bytes]:
    out = run_dir / "outputs"
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix in (".csv", ".json") and p.name != "output_log.json"}


def test_bundled_templates_listed_with_parameters():
    names = available().name.tolist()
    assert names == ALL
    for t in ALL:
        p = parameters(t)
        assert {"cdm_path", "rules", "seed", "out_dir"} <= set(p), (t, p)
        assert all(v["help"] for v in p.values()), f"{t}: every parameter needs a help comment"


@pytest.mark.parametrize("name", ALL)
def test_every_template_keeps_its_parameters_tag(name):
    nb = nbformat.read(TEMPLATE_DIR / f"{name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: the parameters cell lost its tag (papermill would silently run the defaults)"
    assert "nbdev_export" not in "".join(c.source for c in nb.cells)


BAD = [  # (template, parameters, error class, message fragment): each refused by validate, before any kernel starts
    ("characterise", {"groop": "sex"}, InputError, r"no parameter\(s\) \['groop'\]; valid parameters: cdm_path \(str"),
    ("characterise", {"persons": "lots"}, InputError, "parameter 'persons' must be int"),
    ("characterise", {"cohort_json": '{"schema_version": 1, "name": "x", "bogus": 1}'}, InputError,
     "parameter 'cohort_json' is not a valid cohort definition"),
    ("survival", {"cohort_json": "missing.json"}, InputError, "neither cohort JSON nor an existing file"),
    ("survival", {"group": "blood_group"}, InputError, r"parameter 'group' must be one of \['sex', 'ethnicity', 'imd_quintile', 'age_band'\]"),
    ("explain", {"model": "forest"}, InputError, "parameter 'model' must be one of"),
    ("characterise", {"cdm_path": "no/such/cdm.duckdb"}, CDMNotFoundError, "no CDM database at no/such/cdm.duckdb"),
    ("predict", {"outcome": "GI bleeding"}, InputError, "parameter 'outcome': outcome 'GI bleeding' is none of"),
    ("predict", {"outcome": '{"concept_ids": [192671], "domian": "condition"}'}, InputError, r"unknown key\(s\) \['domian'\]"),
    ("survival", {"outcome": "condition:192671"}, ConceptError, r"parameter 'outcome': concept set 'condition 192671' resolves to no concepts in this CDM: none of its concept ids \[192671\] is in this CDM's vocabulary"),
    ("fairness", {"covariates": "everything"}, InputError, "parameter 'covariates' must be one of"),
    ("characterise", {"covariates": '[{"name": "mi", "domain": "condition"}]'}, InputError, r"covariates\[0\].concept_ids must be"),
    ("explain", {"covariates": '[{"name": "mi", "domain": "condition", "concept_ids": [4329847, 7]}]'}, ConceptError,
     r"parameter 'covariates' \('mi'\): concept set 'mi': 1 concept ids not in this CDM's vocabulary: \[7\]"),
]


@pytest.mark.parametrize("name,params,error,message", BAD, ids=[f"{b[0]}-{'-'.join(b[1])}-{i}" for i, b in enumerate(BAD)])
def test_bad_parameters_refused_before_a_kernel_starts(name, params, error, message, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(error, match=message):
        run(name, params, tmp_path / "run")
    assert time.perf_counter() - t0 < 3, "validation must not start a kernel"
    assert not (tmp_path / "run").exists(), "a refused run leaves no run folder"


@pytest.mark.parametrize("name", TEMPLATES)
def test_runs_from_python_and_is_reproducible(name, tmp_path):
    r1 = run(name, SMALL[name], tmp_path / "r1", progress=False)
    r2 = run(name, SMALL[name], tmp_path / "r2", progress=False)
    assert r1.status == r2.status == "succeeded"
    t1, t2 = _tables(r1.run_dir), _tables(r2.run_dir)
    assert t1 and t1 == t2, "same parameters and data must give byte-identical result tables"
    m = r1.manifest
    for key in ("template_sha256", "parameters", "versions", "seed", "started", "finished", "cdm_fingerprint", "cohort_sha256"):
        assert m.get(key) is not None, key
    assert {"notebook.ipynb", "report.html"} <= set(m["outputs"])
    log = r1.outputs
    assert len(log) and set(log.status) <= {"pass", "fail", "review"}
    # every exported table is in the disclosure log, and only passing ones reach the release bundle
    logged = {Path(f).stem for f in log.file}
    assert {Path(n).stem for n in t1} <= logged
    bundle = r1.run_dir / "release"
    assert verify_bundle(bundle) == []
    released = json.loads((bundle / "results.json").read_text())["results"]
    assert all(r["status"] != "fail" for r in released.values())
    failed = set(log[log.status == "fail"].name)
    assert not any((bundle / f"{n}.csv").exists() or (bundle / f"{n}.png").exists() for n in failed)


@pytest.mark.parametrize("name", TEMPLATES)
def test_runs_from_plain_papermill(name, tmp_path):
    out = tmp_path / "pm"
    out.mkdir()
    args = [sys.executable, "-m", "papermill", str(TEMPLATE_DIR / f"{name}.ipynb"), str(out / "nb.ipynb"),
            "-k", "python3", "--cwd", str(out), "-p", "out_dir", str(out), "--no-progress-bar"]
    for k, v in SMALL[name].items(): args += ["-p", k, str(v)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _tables(out), "plain papermill run wrote no result tables"
    nb = nbformat.read(out / "nb.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and f"persons = {SMALL[name]['persons']}" in injected[0].source


@pytest.mark.parametrize("name", TEMPLATES)
def test_runs_from_the_cli_and_verifies(name, tmp_path):
    args = [EXE, "run", name, "--out", str(tmp_path / "cli"), "--quiet"]
    for k, v in SMALL[name].items(): args += ["-p", k, str(v)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "succeeded" in p.stdout and "release bundle" in p.stdout
    if name == "characterise":    # verify re-runs: once is enough for the suite's time
        v = subprocess.run([EXE, "verify", str(tmp_path / "cli"), "--quiet"],
                           capture_output=True, text=True, timeout=900)
        assert v.returncode == 0 and "all result tables identical" in v.stdout, v.stdout + v.stderr


def test_failing_cell_is_reported(tmp_path):
    "A cohort nobody enters passes validation (it is a valid definition) and fails in the cell that finds it empty."
    from healthbench.templates import bp_cohort
    nobody = bp_cohort()
    nobody.name, nobody.demographics.age_min, nobody.demographics.age_max = "nobody", 120, 130
    with pytest.raises(TemplateRunError, match="ValueError: cohort 'nobody' has no records after its criteria") as e:
        run("survival", {"cohort_json": nobody.to_json(), "persons": 500}, tmp_path / "bad", progress=False)
    m = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failure"]["cell_index"] is not None
    nb = nbformat.read(tmp_path / "bad" / "notebook.ipynb", as_version=4)
    assert "has no records after its criteria" in nb.cells[m["failure"]["cell_index"]].source
    assert str(e.value).startswith(f"template 'survival' failed at cell {m['failure']['cell_index']}")
    (tmp_path / "nobody.json").write_text(nobody.to_json())
    p = subprocess.run([EXE, "run", "survival", "-p", "cohort_json", str(tmp_path / "nobody.json"),
                        "-p", "persons", "500", "--out", str(tmp_path / "bad_cli"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "has no records after its criteria" in p.stderr


def test_survival_by_a_group_whose_levels_are_not_names(tmp_path):
    "Age bands ('<50', '70+') and ONS ethnic groups (commas, spaces) become valid output names; the run used to fail."
    r = run("survival", {"group": "age_band", "persons": 1500}, tmp_path / "s", progress=False)
    assert r.status == "succeeded"
    assert {"at_risk_age_band_under50", "at_risk_age_band_70plus", "km_age_band"} <= set(r.outputs.name)


def test_report_is_assembled_from_released_outputs_only(report_run):
    "The report run makes the other runs, then reads only their release bundles; its numbers are theirs."
    import pandas as pd
    r = report_run
    rel = r.run_dir / "release"
    assert verify_bundle(rel) == []
    html = (rel / "tripod_ai_report.html").read_text()
    for n in range(1, 13): assert f"<h2>{n}. " in html, f"section {n} missing"
    # the AUROC of each model in the report is the one in the predict run's released metrics table
    metrics = pd.read_csv(r.run_dir / "runs" / "predict" / "release" / "metrics.csv", index_col=[0, 1])
    for model in ("logistic", "gradient_boosting"):
        v, lo, hi = metrics.loc[(model, "AUROC (DeLong 95% CI)"), ["value", "lo", "hi"]]
        assert f"{v:.3g} ({lo:.3g} to {hi:.3g})" in html
    card = json.loads((rel / "model_card_json.json").read_text())
    assert {"model_details", "intended_use", "factors", "metrics", "evaluation_data", "training_data",
            "quantitative_analyses", "ethical_considerations", "caveats_and_recommendations"} == set(card)
    # characterise ran on the model's cohort
    m = {k: json.loads((r.run_dir / "runs" / k / "manifest.json").read_text()) for k in ("characterise", "predict")}
    assert m["characterise"]["cohort_sha256"] == m["predict"]["cohort_sha256"]
    assert "different cohort definitions" not in html


# --- real data: Eunomia GiBleed (v5.3.1, Parquet as published) -------------------------------------------------------

GIBLEED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omop" / "gibleed_5.3"
GI_BLEEDING, CELECOXIB = 192671, 1118084        # SNOMED 74474003 'Gastrointestinal hemorrhage'; RxNorm ingredient
_V53_NAMES = {"visit_occurrence": {"admitted_from_concept_id": "admitting_source_concept_id",
                                   "admitted_from_source_value": "admitting_source_value",
                                   "discharged_to_concept_id": "discharge_to_concept_id",
                                   "discharged_to_source_value": "discharge_to_source_value"}}


def _typed_duckdb(source: Path, out: Path) -> Path:
    """A stand-in for `healthbench.cdm.import_cdm` (used instead when it exists): the Parquet files as a DuckDB CDM that
    today's `connect()` accepts — the tables healthbench reads in its v5.4 layout and types (v5.3 visit columns renamed,
    `cdm_version_concept_id` 0), every other table with ids as BIGINT, dates as DATE and all-null BOOLEAN columns as text."""
    import duckdb
    from healthbench.schema import OMOP_V54, create_table_sql
    kinds = {"integer": "BIGINT", "float": "DOUBLE", "date": "DATE", "datetime": "TIMESTAMP"}
    con = duckdb.connect(str(out))
    try:
        for path in sorted(source.glob("*.parquet")):
            table, src = path.stem.lower(), f"read_parquet('{path}')"
            have = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
            if table in OMOP_V54:
                con.execute(create_table_sql(table))
                cols = []
                for col, ddl, _ in OMOP_V54[table]:
                    name = col if col in have else _V53_NAMES.get(table, {}).get(col)
                    cols.append(f'CAST("{name}" AS {kinds.get(ddl, "VARCHAR")})' if name in have else
                                "0" if col == "cdm_version_concept_id" else f"CAST(NULL AS {kinds.get(ddl, 'VARCHAR')})")
                con.execute(f"INSERT INTO {table} SELECT {', '.join(cols)} FROM {src}")
            else:
                cols = [f'CAST("{c}" AS {"BIGINT" if c.endswith("_id") and t != "VARCHAR" else "DATE" if c.endswith("_date") else "TIMESTAMP" if c.endswith("_datetime") else "VARCHAR" if t == "BOOLEAN" else t}) AS "{c}"'
                        for c, t in have.items()]
                con.execute(f"CREATE TABLE {table} AS SELECT {', '.join(cols)} FROM {src}")
    finally: con.close()
    return out


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory) -> Path:
    "GiBleed as a typed DuckDB CDM in a temporary folder (never written next to the shared data)."
    assert GIBLEED.is_dir(), f"the shared test data are missing: {GIBLEED} (see ../shared/data/README.md)"
    out = tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb"
    try: from healthbench.cdm import import_cdm
    except ImportError: return _typed_duckdb(GIBLEED, out)
    import inspect
    import_cdm(GIBLEED, out, **({"progress": False} if "progress" in inspect.signature(import_cdm).parameters else {}))
    return out


@pytest.fixture(scope="module")
def gibleed_inputs(gibleed, tmp_path_factory) -> dict:
    "The cohort (a file) and the GI-bleed outcome in the forms a user would write: short, JSON, codelist CSV, cohort JSON."
    from healthbench.cohort import Cohort, at_most
    from healthbench.concepts import concept_set
    d = tmp_path_factory.mktemp("gibleed_inputs")
    gi = concept_set("GI bleeding", GI_BLEEDING)
    cohort = (Cohort.builder("New users of celecoxib").entry(concept_set("celecoxib", CELECOXIB), "drug", prior_days=365)
              .require("no GI bleeding before", at_most(0, gi, "condition", window=(None, -1))).build())
    (d / "celecoxib.json").write_text(cohort.to_json())
    from healthbench.atlas import to_atlas   # the same cohort as ATLAS exports it: what a network shares
    (d / "celecoxib_atlas.json").write_text(json.dumps({"name": cohort.name, "expression": to_atlas(cohort)}))
    (d / "gi_bleeding.csv").write_text("code,term\n74474003,Gastrointestinal hemorrhage\n")
    (d / "gi_bleeding_cohort.json").write_text(Cohort.builder("GI bleeding").entry(gi, "condition").build().to_json())
    return {"cdm": str(gibleed), "cohort": str(d / "celecoxib.json"), "cohort_atlas": str(d / "celecoxib_atlas.json"),
            "short": f"condition:{GI_BLEEDING}",
            "json": json.dumps({"name": "GI bleeding", "domain": "condition", "concept_ids": [GI_BLEEDING]}),
            "codelist": str(d / "gi_bleeding.csv"), "cohort_outcome": str(d / "gi_bleeding_cohort.json")}


def test_atlas_cohort_json_is_accepted_and_refused_by_path(gibleed_inputs):
    "cohort_json may be ATLAS JSON: read as the builder cohort it means; what a template's cohort cannot hold is named."
    from healthbench.atlas import to_atlas
    from healthbench.cohort import Cohort
    from healthbench.errors import InputError
    full = validate("characterise", {"cdm_path": gibleed_inputs["cdm"], "cohort_json": gibleed_inputs["cohort_atlas"],
                                     "outcome": gibleed_inputs["short"]})
    from healthbench.templates import template_cohort
    mine = Cohort.from_json(Path(gibleed_inputs["cohort"]).read_text())
    assert to_atlas(template_cohort(full["cohort_json"], None)) == to_atlas(mine)
    doc = json.loads(Path(gibleed_inputs["cohort_atlas"]).read_text())
    doc["expression"]["CollapseSettings"]["EraPad"] = 30
    with pytest.raises(InputError, match=r"cohort_json' is ATLAS JSON .*CollapseSettings.EraPad"):
        validate("characterise", {"cdm_path": gibleed_inputs["cdm"], "cohort_json": json.dumps(doc), "outcome": gibleed_inputs["short"]})


def test_gibleed_data_driven_covariates_match_sql(gibleed, gibleed_inputs):
    "On a real vocabulary: the indicators chosen in the database are those plain SQL finds, and their values in the dataset agree."
    import duckdb
    from healthbench.cdm import connect
    from healthbench.cohort import Cohort, generate
    from healthbench.features import data_driven_covariates, extract, indicator_name, parse_outcome
    with connect(str(gibleed)) as cdm:
        result = generate(cdm, Cohort.from_json(Path(gibleed_inputs["cohort"]).read_text()))
        dd = data_driven_covariates(cdm, result)
        data = extract(cdm, result, dd, parse_outcome(gibleed_inputs["short"], (1, 365)))
        tables = set(cdm.tables)
    assert len(data) == 1800 and 300 < data.outcome.sum() < 400, "GiBleed's celecoxib new users and their GI bleeds"
    con = duckdb.connect(str(gibleed), read_only=True)
    con.register("k", data[["person_id", "cohort_start_date"]])
    n = data.person_id.nunique()
    floor = max(10, -(-n // 100))
    want = []
    for domain, table, ccol, dcol in [("condition", "condition_occurrence", "condition_concept_id", "condition_start_date"),
                                      ("drug", "drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
                                      ("procedure", "procedure_occurrence", "procedure_concept_id", "procedure_date"),
                                      ("measurement", "measurement", "measurement_concept_id", "measurement_date")]:
        if table not in tables: continue       # procedure_occurrence: reachable once connect() opens every OMOP table
        want += [(domain, c, n_, indicator_name(domain, c, name)) for c, n_, name in con.execute(f"""
            select e.{ccol} c, count(distinct e.person_id) n, any_value(concept_name) from {table} e
            join k on e.person_id = k.person_id left join concept on concept_id = e.{ccol}
            where e.{ccol} <> 0 and e.{dcol} between k.cohort_start_date::date - 365 and k.cohort_start_date::date
            group by 1 having n >= {floor} and n <= {n - floor} order by n desc, c limit 10""").fetchall()]
    con.close()
    assert [(r.domain, r.concept_id, r.persons, r.name) for r in dd.concepts.itertuples()] == want
    assert {"condition", "drug", "measurement"} <= set(dd.concepts.domain)
    assert CELECOXIB not in set(dd.concepts.concept_id)
    assert dd.names[:4] == ["age", "sex", "ethnicity", "prior_observation_days"]        # no IMD in GiBleed, and a note says so
    assert any(n.startswith("imd_quintile: no IMD record") for n in dd.notes)
    for r in dd.concepts.itertuples():
        assert data[data[r.name] == 1].person_id.nunique() == r.persons


def test_gibleed_parameters_checked_against_its_vocabulary(gibleed_inputs, tmp_path):
    "On a CDM that is not the synthetic one, the examples are refused and concepts are checked, before any kernel starts."
    g = gibleed_inputs
    t0 = time.perf_counter()
    for name, params, error, message in [
            ("characterise", {}, InputError, "'cohort_json' and 'outcome' must be given on"),
            ("predict", {"outcome": g["short"]}, InputError, "'cohort_json' must be given on"),
            ("survival", {"cohort_json": g["cohort"]}, InputError, "'outcome' must be given on"),
            ("predict", {"cohort_json": g["cohort"], "outcome": "condition:201826"}, ConceptError,   # type 2 diabetes: not in GiBleed
             r"parameter 'outcome': concept set 'condition 201826' resolves to no concepts in this CDM: none of its concept ids \[201826\] is in this CDM's vocabulary"),
            ("characterise", {"cohort_json": g["cohort"], "outcome": g["short"], "group": "imd_quintile"}, InputError,
             "parameter 'group': this CDM records no imd_quintile")]:
        with pytest.raises(error, match=message):
            run(name, {"cdm_path": g["cdm"], **params}, tmp_path / "run")
    assert time.perf_counter() - t0 < 15 and not (tmp_path / "run").exists()


GIBLEED_RUNS = {   # template -> its parameters besides the CDM (the outcome in a different form each time)
    "characterise": {"cohort_json": "cohort_atlas", "outcome": "short", "outcome_days": "365"},   # the cohort as ATLAS JSON
    "predict": {"cohort_json": "cohort", "outcome": "json", "horizon_days": "365", "folds": "3"},
    "survival": {"cohort_json": "cohort", "outcome": "codelist", "horizon_days": "365", "step_days": "30"},
    "explain": {"predict_run": "predict", "rows": "500"},
    "fairness": {"cohort_json": "cohort", "outcome": "cohort_outcome", "horizon_days": "365", "n_boot": "50", "threshold": "0.2"},
}


@pytest.fixture(scope="module")
def gibleed_runs(gibleed_inputs, tmp_path_factory) -> dict[str, tuple]:
    """The five templates run on GiBleed from the CLI with `default` covariates, then `healthbench verify`, two at a time (CI
    has two cores); each in its own project folder, so no run's release ledger depends on which finished first."""
    from concurrent.futures import ThreadPoolExecutor
    base, ran = tmp_path_factory.mktemp("gibleed_runs"), {}
    folder = {name: base / name / "run" for name in GIBLEED_RUNS}

    def one(name):
        if name == "explain": ran["predict"].result()        # explains the predict run's model
        args = [EXE, "run", name, "--out", str(folder[name]), "--quiet"] + (["-p", "cdm_path", gibleed_inputs["cdm"]] if name != "explain" else [])
        for k, v in GIBLEED_RUNS[name].items():
            args += ["-p", k, str(folder[v]) if k == "predict_run" else gibleed_inputs.get(v, v)]
        r = subprocess.run(args, capture_output=True, text=True, timeout=900)
        v = subprocess.run([EXE, "verify", str(folder[name]), "--quiet"], capture_output=True, text=True, timeout=900) if r.returncode == 0 else None
        return folder[name], r, v
    with ThreadPoolExecutor(2) as ex:
        for name in ("predict", "characterise", "survival", "fairness", "explain"):     # predict first: explain waits for it
            ran[name] = ex.submit(one, name)
        return {name: f.result() for name, f in ran.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GIBLEED_RUNS))
def test_gibleed_templates_run_pass_disclosure_control_and_verify(name, gibleed_runs):
    run_dir, p, v = gibleed_runs[name]
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "succeeded"
    if name != "explain":        # explain used the predict run's model
        assert m["outcome"]["concept_set"]["include"] == [GI_BLEEDING] or m["outcome"]["concept_set"]["codes"] == {"SNOMED": ["74474003"]}
        assert m["covariates"]["source"] == "data-driven" and len(m["covariates"]["concepts"]) >= 10
    log = json.loads((run_dir / "outputs" / "output_log.json").read_text())["results"]
    # every table and figure passes; a custom output (predict's model specification) goes to review with its comment, as ACRO's do
    assert log and all(r["status"] == "pass" or (r["type"] == "custom" and r["status"] == "review" and r.get("comments"))
                       for r in log.values()), {r["properties"]["name"]: (r["type"], r["status"]) for r in log.values()}
    bundle = run_dir / "release"
    assert verify_bundle(bundle) == []
    released = {r["properties"]["name"] for r in json.loads((bundle / "results.json").read_text())["results"].values()}
    assert {"characterise": {"attrition", "table1", "incidence_overall", "incidence_ethnicity"}, "predict": {"metrics", "split"},
            "survival": {"cox_hazard_ratios", "km_sex"}, "explain": {"importance"}, "fairness": {"subgroup_report"}}[name] <= released
    assert v.returncode == 0 and "all result tables identical" in v.stdout, v.stdout + v.stderr


def test_gibleed_icd10_codelist_outcome_checked_before_a_kernel(gibleed_inputs, tmp_path, monkeypatch):
    "outcome as an ICD-10 code list (SYSTEM:FILE, or guessed): mapped on the CDM and checked before any kernel starts."
    from healthbench.cdm import connect
    from healthbench.features import parse_outcome
    from healthbench.templates import record_provenance
    g = gibleed_inputs
    (tmp_path / "gi_bleed.csv").write_text("code,term\nK92.2,Gastrointestinal haemorrhage\n")
    (tmp_path / "ulcer.csv").write_text("icd10_code,term\nK25.0,Gastric ulcer\n")      # a column names the system; not in GiBleed
    full = validate("survival", {"cdm_path": g["cdm"], "cohort_json": g["cohort"], "outcome": f"icd10:{tmp_path / 'gi_bleed.csv'}"})
    assert full["outcome"] == f"icd10:{tmp_path / 'gi_bleed.csv'}"
    with pytest.raises(ConceptError, match=r"parameter 'outcome': code list 'ulcer' \(ICD10\): none of its 1 codes is a ICD10 or ICD10CM concept"):
        run("survival", {"cdm_path": g["cdm"], "cohort_json": g["cohort"], "outcome": str(tmp_path / "ulcer.csv")}, tmp_path / "run")
    with pytest.raises(InputError, match="outcome: code list file .*nosuch.csv' does not exist"):
        run("survival", {"cdm_path": g["cdm"], "cohort_json": g["cohort"], "outcome": "icd10:nosuch.csv"}, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    outcome = parse_outcome(full["outcome"])
    with connect(g["cdm"]) as cdm: prov = record_provenance(tmp_path, cdm=cdm, outcome=outcome)
    m = prov["outcome_codelist_mapping"]
    assert (m["strategy"], m["summary"]["mapped"], m["summary"]["standard concepts"]) == ("mapped", 1, 1)
    assert m["codes"] == [{"code": "K92.2", "excluded": False, "status": "mapped", "standard_concept_ids": [GI_BLEEDING]}]
    assert not any(k.startswith(("persons", "events")) for k in m["summary"])   # counts of people stay out of provenance
    assert json.loads((tmp_path / "provenance.json").read_text())["outcome"]["concept_set"]["codelist"]["codes"] == ["K92.2"]
    from healthbench.templates import _absolute_codelist          # the kernel runs in the run folder: a relative FILE is made absolute
    monkeypatch.chdir(tmp_path)
    assert _absolute_codelist("icd10:gi_bleed.csv") == f"icd10:{tmp_path / 'gi_bleed.csv'}"
    assert _absolute_codelist("condition:192671") == "condition:192671" and _absolute_codelist("icd10:nosuch.csv") == "icd10:nosuch.csv"
    assert json.loads(_absolute_codelist('{"codelist": "gi_bleed.csv", "system": "icd10"}')) == {"codelist": str(tmp_path / "gi_bleed.csv"), "system": "icd10"}


def test_codelist_outcome_real_run(tmp_path, monkeypatch):
    "A papermill run with a code list outcome (SYSTEM:FILE, FILE relative to here): provenance keeps what its codes reached."
    monkeypatch.chdir(tmp_path)
    Path("cvd.csv").write_text("code,term\n22298006,Myocardial infarction\n230690007,Cerebrovascular accident\n")
    r = run("characterise", {"persons": 3000, "outcome": "snomedct:cvd.csv"}, tmp_path / "run", progress=False)
    assert r.manifest["status"] == "succeeded" and r.manifest["parameters"]["outcome"] == f"snomedct:{tmp_path / 'cvd.csv'}"
    prov = json.loads((r.run_dir / "provenance.json").read_text())
    assert prov["outcome"]["concept_set"]["codelist"] == {"system": "SNOMED", "codes": ["22298006", "230690007"], "exclude": [],
                                                          "strategy": "mapped"}
    m = prov["outcome_codelist_mapping"]
    assert (m["summary"]["mapped"], [c["standard_concept_ids"] for c in m["codes"]]) == (2, [[4329847], [381316]])
    assert not list((r.run_dir / "release").glob("*codelist*"))    # the mapping stays in the run folder, unreleased


# --- the report documents a researcher publishes: predict's run report, the TRIPOD+AI report, the model card -------------

@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    "One report run on a small synthetic CDM (it makes the characterise, predict, explain and fairness runs first), citing that CDM's AI-readiness card."
    base = tmp_path_factory.mktemp("report")
    q = run("quality", {"persons": 4000}, base / "quality", progress=False)          # the same synthetic CDM (persons, seed 1)
    assert q.status == "succeeded"
    r = run("report", {"persons": 4000, "quality_run": str(q.run_dir)}, base / "report", progress=False)
    assert r.status == "succeeded"
    r.quality_dir = q.run_dir
    return r


def test_tripod_report_cites_the_data_readiness_card(report_run):
    "Section 1a quotes the released card's data items and its bundle's sha256; the card describes the model's CDM (no warning)."
    import hashlib
    text = (report_run.run_dir / "work" / "tripod_ai_report.html").read_text()
    sec = _section(text, "1a")
    q = report_run.quality_dir / "release"
    assert hashlib.sha256((q / "SHA256SUMS").read_bytes()).hexdigest()[:16] in sec
    assert "different CDM" not in sec
    card = json.loads((q / "readiness_card_json.json").read_text())
    rows = [r for r in _html_tables(sec)[0]["rows"] if r and r[0][0] == "td"]
    assert [r[0][1] for r in rows] == [i["item"] for i in card["items"] if i["filled_by"] == "healthbench"]
    assert "composition.csv" in " ".join(r[2][1] for r in rows)             # the card's released composition table


class _Tables(__import__("html.parser").parser.HTMLParser):
    "Every table of an HTML page as rows of (tag, text) cells; with the table's caption."
    def __init__(self):
        super().__init__(); self.tables, self._cell, self._caption = [], None, None
    def handle_starttag(self, tag, attrs):
        if tag == "table": self.tables.append({"caption": "", "rows": []})
        elif tag == "tr" and self.tables: self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables: self._cell = [tag, ""]
        elif tag == "caption": self._caption = ""
    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append((self._cell[0], self._cell[1].strip())); self._cell = None
        elif tag == "caption" and self._caption is not None: self.tables[-1]["caption"], self._caption = self._caption, None
    def handle_data(self, data):
        if self._cell is not None: self._cell[1] += data
        elif self._caption is not None: self._caption += data


def _html_tables(text: str) -> list[dict]:
    p = _Tables(); p.feed(text); return p.tables


def _section(text: str, n) -> str:
    "Section n of the TRIPOD+AI report (its h2 to the next)."
    start = text.index(f"<h2>{n}. ")
    nxt = text.find("<h2>", start + 4)
    return text[start:nxt if nxt > 0 else len(text)]


def test_predict_report_shows_its_calibration_and_decision_curve(report_run):
    "predict's run report shows the released figures themselves (not an Output repr), and curves are released as 'line'."
    import base64
    pr = report_run.run_dir / "runs" / "predict"
    page = (pr / "report.html").read_text()
    assert "Output(" not in page
    for name in ("calibration_logistic", "calibration_gradient_boosting", "decision_curve_plot"):
        png = (pr / "release" / f"{name}.png").read_bytes()
        assert base64.b64encode(png).decode() in page, f"{name}: the released figure is not in the run report"
    assert "Calibration of the logistic regression model" in page and "Decision curve on the test split" in page
    kinds = {r["properties"]["name"]: r["type"] for r in json.loads((pr / "release" / "results.json").read_text())["results"].values()}
    assert kinds["decision_curve_plot"] == kinds["calibration_logistic"] == kinds["calibration_gradient_boosting"] == "line"
    assert "histogram" not in kinds.values()


def test_tripod_report_states_the_fitted_model(report_run):
    "The model specification in the report is the one in the saved pipelines, read here with joblib and get_params()."
    import html as h
    import joblib
    models = report_run.run_dir / "runs" / "predict" / "models"
    import re
    text = h.unescape(re.sub(r"<[^>]+>", "", _section((report_run.run_dir / "release" / "tripod_ai_report.html").read_text(), 5)))
    lr = joblib.load(models / "logistic.joblib")
    p = lr.named_steps["model"].get_params()
    pen = p["penalty"] if p["penalty"] != "deprecated" else {0.0: "l2", 1.0: "l1"}[float(p["l1_ratio"])]  # scikit-learn >= 1.8: l1_ratio
    assert f"{ {'l2': 'L2 (ridge)', 'l1': 'L1 (lasso)'}[pen] } penalty, C = {p['C']}" in text
    assert f"solver {p['solver']}" in text and f"up to {p['max_iter']} iterations" in text
    encode = lr.named_steps["encode"]
    assert "scale" in encode.named_transformers_["num"].named_steps
    assert "standardised (centred on the training mean and divided by the training SD)" in text
    onehot = encode.named_transformers_["cat"].named_steps["onehot"]
    assert onehot.drop is None and "one indicator per level and no reference level" in text
    cat_columns = next(cols for name, _, cols in encode.transformers_ if name == "cat")
    for column, levels in zip(cat_columns, onehot.categories_):
        assert f"{column} ({len(levels)} indicators: {', '.join(levels)})" in text
        for level in levels: assert f"{column} = {level}" in text          # each level has its own coefficient
    assert "sex = female" in text and "sex = male" in text                  # both sex dummies
    g = joblib.load(models / "gradient_boosting.joblib").named_steps["model"].get_params()
    for k in ("learning_rate", "max_iter", "max_depth", "min_samples_leaf", "l2_regularization", "random_state"):
        assert f"{k} = {g[k]}" in text, k
    seed = json.loads((report_run.run_dir / "runs" / "predict" / "manifest.json").read_text())["seed"]
    assert f"random seed {seed}" in text


def test_tripod_report_and_model_card_read_as_documents(report_run):
    "No local path, no 'nan', no empty header row, age bands in age order, [c] for suppressed cells, a card without a '0' column."
    import html as h
    import re
    import pandas as pd
    rel = report_run.run_dir / "release"
    report, card_html, card_json = ((rel / f).read_text() for f in ("tripod_ai_report.html", "model_card.html", "model_card_json.json"))
    for name, text in (("report", report), ("card", card_html), ("card json", card_json)):
        for local in ("/tmp/", "/work/", str(Path.home()) + "/", str(report_run.run_dir)):
            assert local not in text, f"{name} holds the local path {local!r}"
        assert re.search(r"\bnan\b", text, re.I) is None, f"{name} shows nan"
    for name, text in (("report", report), ("card", card_html)):
        tables = _html_tables(text)
        assert tables and all(t["caption"].strip() for t in tables), f"{name}: a table without a caption"
        for t in tables:
            heads = [r for r in t["rows"] if r and all(tag == "th" for tag, _ in r)]
            assert len(heads) == 1 and all(x for _, x in heads[0]), f"{name}: {t['caption'][:40]!r} has {len(heads)} header rows or an empty heading"
            assert all(any(x for _, x in r) for r in t["rows"]), f"{name}: an empty row in {t['caption'][:40]!r}"
            assert not any(x in ("–", "nan", "NaN") for r in t["rows"] for _, x in r)
    assert "0" not in {x for t in _html_tables(card_html) for r in t["rows"] for tag, x in r if tag == "th"}
    for heading in ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
                    "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"):
        assert f"<h2>{heading}</h2>" in card_html
    # Table 1: age bands in age order (the released table, read here, lists them as text sorts them)
    t1 = pd.read_csv(report_run.run_dir / "runs" / "characterise" / "release" / "table1.csv", dtype=str, keep_default_na=False)
    bands = t1[t1.iloc[:, 0] == "age_band"].iloc[:, 1].tolist()
    assert len(bands) >= 3
    by_age = sorted(bands, key=lambda b: int(re.search(r"\d+", b).group()) - (1 if b.startswith("<") else 0))
    s3 = h.unescape(_section(report, 3))
    rows = [[x for _, x in r] for t in _html_tables(_section(report, 3)) for r in t["rows"]]
    shown = [r[1] for r in rows if len(r) > 1 and r[1] in bands]
    assert shown == by_age, shown
    assert "Systolic blood pressure, mmHg" in s3 and "Age, years" in s3
    missing = [r for r in rows if len(r) > 1 and r[1] == "missing"]
    assert missing and all(("%" in c) or c == "[c]" for r in missing for c in r[2:-1]), missing
    # suppressed cells keep healthbench's marker
    sub = (report_run.run_dir / "runs" / "fairness" / "release" / "subgroup_report.csv").read_text()
    if "[c]" in sub: assert "<td class='n'>[c]</td>" in _section(report, 9)


# --- predict's and report's run reports are documents (template metadata "report": "document") ------------------------

_UNSEPARATED = re.compile(r"(?<![\d.,e-])\d{4,}(?![\d.])")     # a whole number of 1,000 or more printed without separators


def _no_local_paths(text: str, run_dir: Path):
    for local in (str(run_dir), str(run_dir.parent), "/tmp/", "/work/", str(Path.home()) + "/"):
        assert local not in text, f"the page holds the local path {local!r}"


def _cells(text: str) -> list[str]:
    return [x for t in _html_tables(text) for r in t["rows"] for _, x in r]


def test_predict_run_report_is_a_document(report_run):
    "Results and prose only: no code, no script, no local path; numbered captions; released values as released; [c] explained."
    import pandas as pd
    pr = report_run.run_dir / "runs" / "predict"
    page = (pr / "report.html").read_text()
    assert "<script" not in page and "cdn.jsdelivr" not in page and "https://" not in page.split("<body", 1)[1]
    _no_local_paths(page, pr)
    assert "import joblib" not in page and "session.table(" not in page            # no code cells
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)      # the figures' bytes are not text
    for bad in ("Output(", "Unnamed:", "<NA>", "dtype:", "NaN"): assert bad not in text, bad
    tables = _html_tables(page)
    assert all(t["caption"].strip() for t in tables)
    for n in range(1, 6): assert any(t["caption"].startswith(f"Table {n}.") for t in tables), f"Table {n} missing"
    for n in range(1, 4): assert f"<b>Figure {n}.</b>" in page, f"Figure {n} missing"
    assert "Calibration of the logistic regression model" in page and "Decision curve on the test split" in page
    # the split's counts as released, with thousands separators (the released CSV read here, without healthbench)
    split = pd.read_csv(pr / "release" / "split.csv", dtype=str).set_index("group")
    cells = _cells(page)
    total = int(split.loc["All", "records"])
    assert total >= 1000 and f"{total:,}" in cells and str(total) not in cells
    # every released coefficient is shown, to its released value: a suppressed marker only where the release has one
    coef = pd.read_csv(pr / "release" / "logistic_coefficients.csv", dtype=str)
    t5 = next(t for t in tables if t["caption"].startswith("Table 5."))
    shown = [r[1][1] for r in t5["rows"][1:]]
    assert [f"{float(v):.3g}" for v in coef["coefficient"]] == shown
    labels = [r[0][1] for r in t5["rows"][1:]]
    assert "Systolic blood pressure, per SD" in labels and "Sex: female" in labels and not any("_" in x for x in labels)
    # a suppressed calibration bin is counted in the figure's note
    bins = pd.read_csv(pr / "release" / "calibration_bins_logistic.csv", dtype=str, keep_default_na=False)
    hidden = int((bins["observed"] == "[c]").sum())
    if hidden: assert f"{hidden} of {len(bins)} bins suppressed by disclosure control" in page
    # the model specification (a custom output) is shown readably: rare one-hot levels listed in a table cell, not as JSON
    spec = json.loads((pr / "release" / "model_specification.json").read_text())
    eth = spec["models"]["logistic"]["categorical"]["levels"]["ethnicity"]
    assert any(c.startswith(f"one indicator per level ({len(eth)}):") and all(l in c for l in eth) for c in cells)
    assert '"models"' not in text and "{'" not in text


def test_report_run_report_is_a_document(report_run):
    "The report run's page shows the TRIPOD+AI report's sections and the disclosure log, and nothing of the code."
    page = (report_run.run_dir / "report.html").read_text()
    assert "<script" not in page and "https://" not in page.split("<body", 1)[1]
    _no_local_paths(page, report_run.run_dir)
    assert "import functools" not in page and "def table(" not in page and "session.custom(" not in page   # no code
    for n in range(1, 13): assert f"<h2>{n}. " in page, f"section {n} missing"
    assert "Outputs of this run and their disclosure checks" in page and "tripod_ai_report" in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    for bad in ("Unnamed:", "<NA>", "NaN", "dtype:", "{'"): assert bad not in text, bad


def test_tripod_report_missing_data_and_counts_read_as_a_reader_expects(report_run):
    "Missing data by labelled variable with units (not raw names); every count of 1,000 or more has thousands separators."
    import pandas as pd
    report = (report_run.run_dir / "release" / "tripod_ai_report.html").read_text()
    t1 = pd.read_csv(report_run.run_dir / "runs" / "characterise" / "release" / "table1.csv", dtype=str, keep_default_na=False)
    with_missing = list(dict.fromkeys(t1[t1.iloc[:, 1] == "missing"].iloc[:, 0]))
    by_hand = {"smoking": "Smoking status", "total_cholesterol": "Total cholesterol, mmol/L", "hdl_cholesterol": "HDL cholesterol, mmol/L",
               "bmi": "Body mass index, kg/m²", "hba1c": "HbA1c, mmol/mol", "systolic_bp": "Systolic blood pressure, mmHg"}
    assert with_missing and set(with_missing) <= set(by_hand)
    miss = _html_tables(_section(report, 4))[0]
    assert [r[0][1] for r in miss["rows"][1:]] == [by_hand[v] for v in with_missing]
    s3 = _section(report, 3)
    assert not any(raw in _cells(s3) for raw in with_missing + ["age", "age_band", "imd_quintile"])
    for n in (1, 3, 4, 9):
        bad = [c for c in _cells(_section(report, n)) if re.match(r"^-?\d", c) and _UNSEPARATED.search(c)]   # numeric cells
        assert not bad, f"section {n}: counts without thousands separators {bad[:5]}"
    subgroups = [r[0][1] for t in _html_tables(_section(report, 9)) for r in t["rows"][1:] if r[0][1]]
    assert subgroups == ["Overall", "Sex", "Ethnicity (ONS 2021 group)", "IMD quintile (1 = most deprived)"], subgroups
    att = pd.read_csv(report_run.run_dir / "runs" / "characterise" / "release" / "attrition.csv", dtype=str)
    persons = int(att["persons"].iloc[0])
    assert persons >= 1000 and f"{persons:,}" in _cells(_section(report, 1))


def test_failed_predict_run_report_says_why(tmp_path):
    "Document mode keeps the error: a predict run on a cohort nobody enters fails, and its report.html says why."
    from healthbench.templates import bp_cohort
    nobody = bp_cohort()
    nobody.name, nobody.demographics.age_min, nobody.demographics.age_max = "nobody", 120, 130
    with pytest.raises(TemplateRunError) as e:
        run("predict", {"cohort_json": nobody.to_json(), "persons": 500}, tmp_path / "bad", progress=False)
    m = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert m["status"] == "failed"
    page = (tmp_path / "bad" / "report.html").read_text()
    assert "<script" not in page
    ename, evalue = m["failure"]["error"].split(": ", 1)
    assert ename in page and evalue.split("\n")[0][:40] in __import__("html").unescape(page)
