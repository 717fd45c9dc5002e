"""CLI integration: the installed `healthbench` console script, run as a user would, in a subprocess."""
import os, shutil, subprocess, sys
from pathlib import Path

import duckdb
import pytest

EXE = shutil.which("healthbench") or str(Path(sys.executable).with_name("healthbench"))


def run(*args, cwd):
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_synth_writes_a_cdm_and_refuses_to_overwrite(tmp_path):
    r = run("synth", "--persons", "1500", "--seed", "5", "--out", "cdm.duckdb", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "1,500 persons" in r.stdout
    assert "persons/s" in r.stderr or "%" in r.stderr          # the progress bar went to stderr
    with duckdb.connect(str(tmp_path / "cdm.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from person").fetchone()[0] == 1500
    before = (tmp_path / "cdm.duckdb").read_bytes()
    r = run("synth", "--persons", "10", "--out", "cdm.duckdb", cwd=tmp_path)
    assert r.returncode == 2
    assert "already exists" in r.stderr and "--overwrite" in r.stderr
    assert (tmp_path / "cdm.duckdb").read_bytes() == before
    r = run("synth", "--persons", "10", "--out", "cdm.duckdb", "--overwrite", "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.parametrize("persons, message", [("0", "at least 1"), ("-3", "at least 1")])
def test_synth_bad_persons(tmp_path, persons, message):
    r = run("synth", "--persons", persons, "--out", "x.duckdb", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_synth_missing_folder(tmp_path):
    r = run("synth", "--persons", "10", "--out", "nowhere/x.duckdb", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_demo_summarises(tmp_path):
    r = run("demo", "--persons", "4000", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "healthbench-demo" / "cdm.duckdb").exists()
    lines = r.stdout.splitlines()
    assert any(l.split()[:2] == ["person", "4,000"] for l in lines)
    assert "tripod_ai_report.html" in r.stdout
    assert "per 1,000 person-years" in r.stdout
    runs = tmp_path / "healthbench-demo" / "runs"
    for name in ("characterise", "predict", "survival", "explain", "fairness", "report"):   # the demo ends with the report
        assert (runs / name / "report.html").exists() and (runs / name / "release" / "results.json").exists(), name
        assert f"{runs / name / 'release'}" in r.stdout
    if os.name == "posix":   # kernels talk over IPC sockets, so ipykernel has no unencrypted-TCP warning to print
        assert "without encryption" not in r.stderr, r.stderr[-2000:]


def test_version():
    r = subprocess.run([EXE, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("healthbench ")
