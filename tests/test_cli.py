"""CLI integration: the installed `healthbench` console script, run as a user would, in a subprocess."""
import json, os, shutil, subprocess, sys, time
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
    "The demo refuses to replace what it did not make; with --overwrite it moves the old ones aside, then runs."
    demo = tmp_path / "healthbench-demo"
    (demo / "runs" / "my_study").mkdir(parents=True)
    (demo / "runs" / "my_study" / "results.csv").write_text("a user's results\n")
    (demo / "cdm.duckdb").write_bytes(b"a user's database")
    r = run("demo", "--persons", "4000", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("healthbench demo: error: 'healthbench-demo/cdm.duckdb', 'healthbench-demo/runs' already exist")
    assert "--overwrite" in r.stderr
    assert (demo / "cdm.duckdb").read_bytes() == b"a user's database"
    assert (demo / "runs" / "my_study" / "results.csv").read_text() == "a user's results\n"
    r = run("demo", "--persons", "4000", "--quiet", "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    old_db = [p for p in demo.iterdir() if p.name.startswith("cdm-replaced-") and p.suffix == ".duckdb"]
    old_runs = [p for p in demo.iterdir() if p.name.startswith("runs-replaced-")]
    assert len(old_db) == len(old_runs) == 1
    assert old_db[0].read_bytes() == b"a user's database"                        # moved, never deleted
    assert (old_runs[0] / "my_study" / "results.csv").read_text() == "a user's results\n"
    assert f"moved healthbench-demo/cdm.duckdb aside to healthbench-demo/{old_db[0].name}" in r.stdout
    assert f"moved healthbench-demo/runs aside to healthbench-demo/{old_runs[0].name}" in r.stdout
    assert (demo / "cdm.duckdb").exists()
    lines = r.stdout.splitlines()
    assert any(l.split()[:2] == ["person", "4,000"] for l in lines)
    assert "tripod_ai_report.html" in r.stdout
    assert "per 1,000 person-years" in r.stdout
    runs = demo / "runs"
    for name in ("characterise", "predict", "survival", "explain", "fairness", "report"):   # the demo ends with the report
        assert (runs / name / "report.html").exists() and (runs / name / "release" / "results.json").exists(), name
        assert f"{runs.relative_to(tmp_path) / name / 'release'}" in r.stdout
    for name in ("characterise", "predict", "survival", "explain", "fairness", "report"):   # a line per template, naming it
        assert any(l.split()[:1] == [name] and l.split()[2:3] == ["s"] for l in lines), name
    assert "All six templates in" in r.stdout
    # the report describes the model's cohort with the demo's own characterise run (not one of its own)
    report = json.loads((runs / "report" / "manifest.json").read_text())["parameters"]
    assert report["characterise_run"] == str((runs / "characterise").resolve())
    char = json.loads((runs / "characterise" / "manifest.json").read_text())["parameters"]
    pred = json.loads((runs / "predict" / "provenance.json").read_text())
    assert json.loads(char["cohort_json"])["name"] == pred["cohort"]["name"], (char["cohort_json"][:200], pred.get("cohort"))
    if os.name == "posix":   # kernels talk over IPC sockets, so ipykernel has no unencrypted-TCP warning to print
        assert "without encryption" not in r.stderr, r.stderr[-2000:]
    assert "KeyboardInterrupt" not in r.stderr + r.stdout, r.stderr[-2000:]     # no kernel is interrupted on its way out


BAD_INPUT = [   # (argv, what the one line on stderr must say); files named here are written by the `bad_files` fixture
    (["synth", "--persons", "1000000000000", "--out", "x.duckdb"], "--persons must be at most 100,000,000"),
    (["synth", "--persons", "10", "--seed", "-1", "--out", "x.duckdb"], "--seed must be 0 or a positive whole number"),
    (["synth", "--persons", "10", "--out", "file.txt/x.duckdb"], "'file.txt' is a file, not a folder"),
    (["synth", "--persons", "10", "--out", "/proc/x.duckdb"], "cannot write in '/proc'"),
    (["demo", "--persons", "1000000000000", "--out", "d/cdm.duckdb"], "--persons must be at most 100,000,000"),
    (["demo", "--seed", "-5", "--out", "d/cdm.duckdb"], "--seed must be 0 or a positive whole number"),
    (["demo", "--out", "file.txt/cdm.duckdb", "--skip-templates"], "'file.txt' is a file, not a folder"),
    (["demo", "--out", "/proc/healthbench/cdm.duckdb", "--skip-templates"], "cannot create the folder '/proc/healthbench'"),
    (["demo", "--out", "file.txt", "--skip-templates"], "'file.txt' already exists"),
    (["run", "characterise", "-p", "persons", "[1, 2", "--out", "r"], "-p persons '[1, 2': not a valid YAML value"),
    (["run", "characterise", "-p", "persons", "many", "--out", "r"], "parameter 'persons' must be int"),
    (["run", "characterise", "-f", "broken.yaml", "--out", "r"], "is not valid YAML"),
    (["run", "characterise", "-f", "latin1.yaml", "--out", "r"], "is not UTF-8 text (byte 0xe9"),
    (["run", "characterise", "-f", "utf16.yaml", "--out", "r"], "is UTF-16 text; save it as UTF-8"),
    (["run", "characterise", "-f", "image.png", "--out", "r"], "is not text (it holds NUL bytes"),
    (["run", "characterise", "-f", "list.yaml", "--out", "r"], "must be a mapping of name: value lines; it holds a YAML list"),
    (["run", "characterise", "-f", "scalar.yaml", "--out", "r"], "must be a mapping of name: value lines; it holds a YAML str"),
    (["run", "characterise", "--out", "file.txt"], "run folder 'file.txt' exists and is not a folder"),
    (["run", "characterise", "--out", "file.txt/run"], "cannot create run folder 'file.txt/run'"),
    (["run", "characterise", "--out", "/proc/healthbench/run"], "cannot create run folder '/proc/healthbench/run'"),
    (["run", "notjson.ipynb", "--out", "r"], "template 'notjson.ipynb' is not a Jupyter notebook (NotJSONError"),
    (["run", "other.ipynb", "--out", "r"], "template 'other.ipynb' is not a Jupyter notebook (ValidationError"),
    (["run", "nosuch", "--out", "r"], "no template named 'nosuch'"),
    (["verify", "broken_manifest"], "manifest.json' is not valid JSON"),
    (["verify", "partial_manifest"], "lacks ['template_sha256', 'parameters', 'status']"),
    (["verify", "file.txt"], "has no manifest.json: not a run folder"),
]


@pytest.fixture
def bad_files(tmp_path):
    files = {"file.txt": b"a file", "broken.yaml": b"persons: [1, 2\n", "latin1.yaml": "group: caf\u00e9\n".encode("latin-1"),
             "utf16.yaml": "persons: 2000\n".encode("utf-16"), "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64),
             "list.yaml": b"- persons\n- 2000\n", "scalar.yaml": b"persons 2000\n", "notjson.ipynb": b"{not json",
             "other.ipynb": b'{"a": 1}', "broken_manifest/manifest.json": b"{not json",
             "partial_manifest/manifest.json": b'{"template": "characterise"}'}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_is_one_named_line(bad_files, argv, message):
    "Each bad input: exit status 2, one line `healthbench CMD: error: ...` naming the problem, no traceback, nothing written."
    t0 = time.perf_counter()
    r = run(*argv, cwd=bad_files)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"healthbench {argv[0]}: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert not any((bad_files / p).exists() for p in ("x.duckdb", "d", "r")), "bad input must not write anything"
    assert time.perf_counter() - t0 < 30


def test_version():
    r = subprocess.run([EXE, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("healthbench ")


# ---- healthbench codelist: a code list file or folder mapped on a real DuckDB CDM ----
GIBLEED = Path(os.environ.get("HB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "omop" / "gibleed_5.3"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "codelists"


def _summary(stdout: str, measure: str) -> list[str]:
    "The values of one summary line (`  persons mapped:   479`) for each list printed, in order."
    return [l.split(":", 1)[1].strip() for l in stdout.splitlines() if l.startswith(f"  {measure}:")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from healthbench.synth import generate
    path = tmp_path_factory.mktemp("synthetic") / "cdm.duckdb"
    generate(1500, seed=3, path=path, progress=False)
    return path


def test_codelist_synthetic(synthetic, tmp_path):
    "A SNOMED list's persons are the persons with a condition of its (standard) concepts, counted with plain SQL."
    (tmp_path / "t2dm.csv").write_text("code,term\n44054006,Type 2 diabetes\n22298006,Myocardial infarction\n")
    with duckdb.connect(str(synthetic), read_only=True) as con:
        (truth,), = con.execute("SELECT count(DISTINCT person_id) FROM condition_occurrence WHERE condition_concept_id IN (201826, 4329847)").fetchall()
    assert truth > 0
    r = run("codelist", "t2dm.csv", "--cdm", str(synthetic), "--system", "snomedct", "--out", "report.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _summary(r.stdout, "persons mapped") == [str(truth)] and _summary(r.stdout, "mapped") == ["2"]
    assert "== t2dm (SNOMED, 2 codes) ==" in r.stdout and "disclosure control" in r.stdout
    report = (tmp_path / "report.csv").read_text()
    assert report.splitlines()[0].startswith("code_list,coding_system,code,") and report.count("\n") == 3
    # --out is never overwritten; a list whose system cannot be told asks for --system
    r = run("codelist", "t2dm.csv", "--cdm", str(synthetic), "--system", "snomedct", "--out", "report.csv", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "healthbench codelist: error: --out 'report.csv' already exists; choose another name (nothing is overwritten)\n"
    assert (tmp_path / "report.csv").read_text() == report
    r = run("codelist", "t2dm.csv", "--cdm", str(synthetic), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "numeric ids that could be SNOMED CT or dm+d): pass --system" in r.stderr


CODELIST_BAD_INPUT = [
    (["codelist", "nosuch.csv", "--cdm", "{cdm}"], "code list 'nosuch.csv' does not exist"),
    (["codelist", "lists", "--cdm", "{cdm}"], "cannot tell the coding system of 1 file"),
    (["codelist", "mi.txt", "--cdm", "{cdm}", "--system", "klingon"], "unknown coding system 'klingon'"),
    (["codelist", "mi.txt", "--cdm", "{cdm}", "--system", "icd10", "--code-column", "x"], "--code-column applies to CSV files"),
    (["codelist", "mi.txt", "--cdm", "nosuch.duckdb", "--system", "icd10"], "nosuch.duckdb"),
    (["codelist", "mi.txt", "--cdm", "{cdm}", "--system", "ctv3"], "in CTV3, which OMOP has no vocabulary for: pass --ctv3-map FILE"),
    (["codelist", "mi.txt", "--cdm", "{cdm}", "--system", "ctv3", "--ctv3-map", "nosuch.csv"], "--ctv3-map 'nosuch.csv' does not exist"),
    (["codelist", "mi.txt", "--cdm", "{cdm}", "--system", "icd10", "--out", "file.txt/r.csv"], "'file.txt' is a file, not a folder"),
    (["codelist", "mi.txt", "--cdm", "{cdm}", "--system", "bnf", "--bnf-map", "lists"], "--bnf-map 'lists' is not a file"),
]


@pytest.mark.parametrize("argv, message", CODELIST_BAD_INPUT, ids=[" ".join(a)[:60] for a, _ in CODELIST_BAD_INPUT])
def test_codelist_bad_input(synthetic, tmp_path, argv, message):
    (tmp_path / "mi.txt").write_text("I21.0\n")
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "asthma.csv").write_text("code\nH33..\n")
    r = run(*[a.replace("{cdm}", str(synthetic)) for a in argv], cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("healthbench codelist: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr, r.stderr


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory):
    "GiBleed as published: each Parquet file a DuckDB table, as tests/test_codelists_gibleed.py reads it."
    if not GIBLEED.is_dir(): pytest.fail(f"real test data missing: {GIBLEED} (the project's ../shared/data/, or set HB_SHARED_DATA)")
    out = tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb"
    with duckdb.connect(str(out)) as con:
        con.execute("SET threads = 1")
        for p in sorted(GIBLEED.glob("*.parquet")): con.execute(f"CREATE TABLE {p.stem} AS SELECT * FROM '{p}'")
    return out


def test_codelist_gibleed_folder(gibleed, tmp_path):
    "An OpenSAFELY-style folder on GiBleed: K92.2 reaches its 479 GI-bleed persons, mapped and as recorded."
    folder = tmp_path / "codelists"
    folder.mkdir()
    (folder / "codelists.txt").write_text("opensafely/gi-bleed/2020-04-15\n")
    (folder / "opensafely-gi-bleed.csv").write_bytes((FIXTURES / "gi_bleed_icd10_new.csv").read_bytes())   # code,term: K922, K25, I850
    (folder / "gi-bleed-dotted.txt").write_text("K92.2\nI85.0\n")                                          # guessed ICD-10 (chapter I)
    r = run("codelist", "codelists", "--cdm", str(gibleed), "--out", "report.csv", cwd=tmp_path)
    assert r.returncode == 2, r.stdout   # opensafely-gi-bleed.csv: undotted K922, K25 name no system
    assert "opensafely-gi-bleed.csv" in r.stderr and "--system" in r.stderr and not (tmp_path / "report.csv").exists()
    r = run("codelist", "codelists", "--cdm", str(gibleed), "--system", "icd10", "--out", "report.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n== ") == 2
    assert _summary(r.stdout, "persons mapped") == ["479", "479"] and _summary(r.stdout, "persons as recorded") == ["479", "479"]
    assert _summary(r.stdout, "unmapped") == ["I85.0", "K25, I850"]
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and any(l.startswith("opensafely-gi-bleed,ICD10,K922,") for l in rows)
    r = run("codelist", str(FIXTURES / "gi_bleed_read_old.csv"), "--cdm", str(gibleed), cwd=tmp_path)   # 'Read code' column: Read v2
    assert r.returncode == 0 and "(Read, 3 codes)" in r.stdout, r.stderr


def test_example_params_file_is_valid(synthetic):
    "The README's example parameters file reads (as `-f` reads it) and passes predict's checks on a synthetic CDM."
    from healthbench.cli import _params_file
    from healthbench.templates import validate
    params = _params_file(str(Path(__file__).resolve().parents[1] / "examples" / "predict.yaml"))
    assert params == {"cdm_path": "cdm.duckdb", "seed": 1, "horizon_days": 1825}     # the commented lines are examples
    full = validate("predict", {**params, "cdm_path": str(synthetic)})
    assert (full["seed"], full["horizon_days"], full["cdm_path"]) == (1, 1825, str(synthetic))
