"""The bundled analysis templates, run for real: from Python (`run`), from the CLI and from plain papermill.

Each run starts a real kernel, builds a small synthetic CDM and writes a run folder. Checked here: every template
keeps its `parameters` tag; each runs all three ways; the same parameters give byte-identical result tables
(and `healthbench verify` says so); a failing cell leaves a partial notebook and a `failed` manifest naming the
cell, and the CLI exits non-zero with that message; bad parameters are refused before any kernel starts; every
exported table and figure is in the disclosure log and only passing outputs reach the release bundle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from healthbench.disclosure import verify_bundle
from healthbench.errors import InputError, TemplateRunError
from healthbench.templates import TEMPLATE_DIR, available, parameters, run, validate

TEMPLATES = ["characterise", "predict", "survival", "explain", "fairness"]     # each run all three ways
ALL = sorted(TEMPLATES + ["report"])
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


def test_bad_parameters_refused_before_a_kernel_starts(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"no parameter\(s\) \['groop'\]; valid parameters: cdm_path \(str"):
        run("characterise", {"groop": "sex"}, tmp_path / "a")
    with pytest.raises(InputError, match="parameter 'persons' must be int"):
        run("characterise", {"persons": "lots"}, tmp_path / "b")
    with pytest.raises(InputError, match="parameter 'cohort_json' is not a valid cohort definition"):
        run("characterise", {"cohort_json": '{"schema_version": 1, "name": "x", "bogus": 1}'}, tmp_path / "c")
    with pytest.raises(InputError, match="neither cohort JSON nor an existing file"):
        validate("survival", {"cohort_json": "missing.json"})
    assert time.perf_counter() - t0 < 5, "validation must not start kernels"
    assert not any((tmp_path / d).exists() for d in "abc")


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
    with pytest.raises(TemplateRunError, match="ValueError: group must be one of") as e:
        run("survival", {"group": "blood_group", "persons": 500}, tmp_path / "bad", progress=False)
    m = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failure"]["cell_index"] is not None
    nb = nbformat.read(tmp_path / "bad" / "notebook.ipynb", as_version=4)
    assert "group must be one of" in nb.cells[m["failure"]["cell_index"]].source
    assert str(e.value).startswith(f"template 'survival' failed at cell {m['failure']['cell_index']}")
    p = subprocess.run([EXE, "run", "survival", "-p", "group", "blood_group",
                        "-p", "persons", "500", "--out", str(tmp_path / "bad_cli"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "group must be one of" in p.stderr


def test_report_is_assembled_from_released_outputs_only(tmp_path):
    "The report run makes the other runs, then reads only their release bundles; its numbers are theirs."
    import re
    import pandas as pd
    r = run("report", {"persons": 4000}, tmp_path / "report", progress=False)
    assert r.status == "succeeded"
    rel = r.run_dir / "release"
    assert verify_bundle(rel) == []
    html = (rel / "tripod_ai_report.html").read_text()
    for n in range(1, 13): assert f"<h2>{n}. " in html, f"section {n} missing"
    # the AUROC of each model in the report is the one in the predict run's released metrics table
    metrics = pd.read_csv(r.run_dir / "runs" / "predict" / "release" / "metrics.csv", index_col=[0, 1])
    for model in ("logistic", "gradient_boosting"):
        v = metrics.loc[(model, "AUROC (DeLong 95% CI)"), "value"]
        assert f"{v:.3f}" in html
    card = json.loads((rel / "model_card_json.json").read_text())
    assert {"model_details", "intended_use", "factors", "metrics", "evaluation_data", "training_data",
            "quantitative_analyses", "ethical_considerations", "caveats_and_recommendations"} == set(card)
    # characterise ran on the model's cohort
    m = {k: json.loads((r.run_dir / "runs" / k / "manifest.json").read_text()) for k in ("characterise", "predict")}
    assert m["characterise"]["cohort_sha256"] == m["predict"]["cohort_sha256"]
    assert "different cohort definitions" not in html
