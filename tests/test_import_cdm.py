"""`import_cdm` / `healthbench import-cdm` beyond the notebook's examples: the packaged specifications still equal
their derivation from DataQualityDashboard's files, a v5.4 database written by `healthbench synth` survives a round
trip through Parquet and CSV files, .zip and DuckDB sources, a value that cannot be converted is named and leaves the
source and `--out` as they were, and the progress bar.

Real data come from ../shared/data/ (HB_SHARED_DATA moves it); see tests/test_real_cdm.py for GiBleed and MIMIC as a whole.
"""
import csv, hashlib, io, os, shutil, zipfile, contextlib
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from healthbench.cdm import connect
from healthbench.cdm_import import import_cdm
from healthbench.cli import main
from healthbench.errors import CDMImportError, InputError
from healthbench.schema import CDM_TABLES, FIELDS_HEADER, derive_fields, omop_fields
from healthbench.synth import generate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data"))
MIMIC = DATA / "omop" / "mimic_iv_demo_5.3"
SMALL_TABLES = ("person", "observation_period", "cdm_source", "death", "location", "care_site")


def _require(p: Path) -> Path:
    if not p.exists(): pytest.fail(f"real test data missing: {p} (the project's ../shared/data/, or set HB_SHARED_DATA)")
    return p


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path, name: str) -> list[str]:
    "Files an import into `folder / name` may have left: the database, its WAL, temporary files and folders."
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((name, f".{name}")))


def test_packaged_fields_are_derived_from_dqd():
    rows = derive_fields(_require(DATA / "dqd"))
    for version, derived in rows.items():
        with open(Path(__file__).resolve().parents[1] / "healthbench" / "omop" / f"fields_v{version}.csv", newline="") as f:
            r = csv.reader(f)
            assert tuple(next(r)) == FIELDS_HEADER
            packaged = [(t, fl, d, req == "yes", o) for t, fl, d, req, o in r]
        assert packaged == derived, f"healthbench/omop/fields_v{version}.csv is out of date: run the notest cell of nbs/01_schema.ipynb"
        assert sum(map(len, omop_fields(version).values())) == len(derived)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    "A v5.4 CDM from the synthetic generator, and its tables exported one file per table as Parquet and as CSV."
    d = tmp_path_factory.mktemp("synth")
    db = generate(400, seed=3, path=d / "synth.duckdb", progress=False)
    (d / "parquet").mkdir(); (d / "csv").mkdir()
    with duckdb.connect(str(db), read_only=True) as con:
        for t in CDM_TABLES:
            con.execute(f"COPY {t} TO '{d / 'parquet' / f'{t}.parquet'}' (FORMAT parquet)")
            con.execute(f"COPY {t} TO '{d / 'csv' / f'{t.upper()}.csv'}' (FORMAT csv, HEADER)")   # any case of table name
    return d, db


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_synthetic_v54_round_trip(synthetic, fmt):
    d, db = synthetic
    before = checksums(d / fmt)
    report = import_cdm(d / fmt, d / f"from_{fmt}.duckdb", progress=False)
    assert checksums(d / fmt) == before
    assert report.version == "5.4"
    assert report.version_reasons[0] == "cdm_source.cdm_version is '5.4'" and "v5.4 columns or tables present" in report.version_reasons[1]
    assert report.notes == []
    assert sorted(report.tables.table) == sorted(CDM_TABLES)
    with duckdb.connect(str(d / f"from_{fmt}.duckdb"), read_only=True) as con:
        con.execute(f"ATTACH '{db}' AS original (READ_ONLY)")
        for t in CDM_TABLES:     # the same rows, value for value, both ways
            assert con.execute(f"SELECT count(*) FROM (SELECT * FROM {t} EXCEPT ALL SELECT * FROM original.{t})").fetchone() == (0,), t
            assert con.execute(f"SELECT count(*) FROM (SELECT * FROM original.{t} EXCEPT ALL SELECT * FROM {t})").fetchone() == (0,), t
        assert con.execute("SELECT data_type FROM information_schema.columns WHERE table_catalog = current_database() "
                           "AND table_name = 'person' AND column_name = 'person_id'").fetchone() == ("BIGINT",)
    from healthbench.cohort import Cohort, generate as generate_cohort
    from healthbench.concepts import concept_set
    from healthbench import vocabulary as V
    cohort = Cohort.builder("t2dm").entry(concept_set("t2dm", V.CONDITION["type2_diabetes"]), "condition").age(40, 80).build()
    with connect(d / f"from_{fmt}.duckdb") as imported, connect(db) as original:
        assert imported.version == "5.4" and imported.problems() == []
        a, b = generate_cohort(imported, cohort), generate_cohort(original, cohort)
        pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas(), check_dtype=False)
        assert list(a.attrition.persons) == list(b.attrition.persons)


@pytest.fixture()
def small_mimic(tmp_path):
    "A few of MIMIC's small tables, copied (the shared folder is never touched)."
    src = tmp_path / "mimic_small"; src.mkdir()
    for t in SMALL_TABLES: shutil.copy(_require(MIMIC) / f"{t}.csv", src / f"{t}.csv")
    return src


def test_uncastable_value_is_named_and_nothing_changes(small_mimic, tmp_path):
    lines = (small_mimic / "person.csv").read_text().splitlines(keepends=True)
    first_id = lines[3].split(",", 1)
    lines[3] = "abc," + first_id[1]                   # the third person's id
    (small_mimic / "person.csv").write_text("".join(lines))
    before = checksums(small_mimic)
    out = tmp_path / "out"; out.mkdir()
    with pytest.raises(CDMImportError) as e:
        import_cdm(small_mimic, out / "mimic.duckdb", progress=False)
    assert str(e.value).startswith("cannot import person from person.csv: column person_id (VARCHAR) has 1 value that "
                                   "cannot be converted to BIGINT, e.g. 'abc'. Nothing was written"), str(e.value)
    assert checksums(small_mimic) == before
    assert leftovers(out, "mimic.duckdb") == []
    # from the command line: one line, status 2
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["import-cdm", str(small_mimic), "--out", str(out / "mimic.duckdb"), "--quiet"])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "e.g. 'abc'" in err.getvalue()
    assert checksums(small_mimic) == before and leftovers(out, "mimic.duckdb") == []


def test_decimal_ids_and_dates_that_do_not_parse(small_mimic, tmp_path):
    p = small_mimic / "observation_period.csv"
    rows = p.read_text().splitlines()
    rows[1] = rows[1].replace(rows[1].split(",")[0], rows[1].split(",")[0] + ".0", 1)    # 123.0: fine
    p.write_text("\n".join(rows) + "\n")
    report = import_cdm(small_mimic, tmp_path / "ok.duckdb", progress=False)
    assert int(report.tables.set_index("table").rows["observation_period"]) == len(rows) - 1
    rows[2] = rows[2].replace(rows[2].split(",")[2], "2150-02-30")                        # no such day
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(CDMImportError, match=r"column observation_period_start_date \(VARCHAR\) has 1 value that cannot be "
                                             r"converted to DATE, e.g. '2150-02-30'"):
        import_cdm(small_mimic, tmp_path / "bad.duckdb", progress=False)


def test_zip_source(small_mimic, tmp_path):
    z = tmp_path / "mimic.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for p in sorted(small_mimic.iterdir()): f.write(p, f"mimic/{p.name}")
        f.writestr("__MACOSX/mimic/._person.csv", "resource fork")
    before = hashlib.sha256(z.read_bytes()).hexdigest()
    a = import_cdm(z, tmp_path / "from_zip.duckdb", progress=False)
    b = import_cdm(small_mimic, tmp_path / "from_folder.duckdb", progress=False)
    assert a.tables.drop(columns="source").equals(b.tables.drop(columns="source")) and a.version == "5.3"
    assert hashlib.sha256(z.read_bytes()).hexdigest() == before
    assert leftovers(tmp_path, ".from_zip") == [] and not [p for p in tmp_path.iterdir() if "unzip" in p.name]


def test_duckdb_source_read_only(small_mimic, tmp_path):
    naive = tmp_path / "naive.duckdb"
    with duckdb.connect(str(naive)) as con:       # as a user would load them: DuckDB's own type guesses, upper-case names
        for p in small_mimic.iterdir(): con.execute(f"CREATE TABLE {p.stem.upper()} AS SELECT * FROM read_csv('{p}')")
    before = hashlib.sha256(naive.read_bytes()).hexdigest()
    report = import_cdm(naive, tmp_path / "typed.duckdb", progress=False)
    assert hashlib.sha256(naive.read_bytes()).hexdigest() == before
    assert sorted(report.tables.table) == sorted(SMALL_TABLES) and report.version == "5.3"
    with duckdb.connect(str(tmp_path / "typed.duckdb"), read_only=True) as con:
        assert con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'location' "
                           "AND column_name = 'zip'").fetchone() == ("VARCHAR",)          # all empty: DuckDB guessed VARCHAR
    with pytest.raises(InputError, match="has no schema 'cdm'"):
        import_cdm(naive, tmp_path / "x.duckdb", schema="cdm", progress=False)


def test_overwrite_replaces_only_when_complete(small_mimic, tmp_path):
    out = tmp_path / "cdm.duckdb"
    import_cdm(small_mimic, out, progress=False)
    first = hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="already exists"):
        import_cdm(small_mimic, out, progress=False)
    (small_mimic / "death.csv").write_text("person_id,death_date\n1,yesterday\n")
    with pytest.raises(CDMImportError, match="e.g. 'yesterday'"):
        import_cdm(small_mimic, out, overwrite=True, progress=False)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == first and leftovers(tmp_path, "cdm.duckdb") == ["cdm.duckdb"]
    (small_mimic / "death.csv").write_text("person_id,death_date\n1,2150-01-01\n")
    import_cdm(small_mimic, out, overwrite=True, progress=False)
    with duckdb.connect(str(out), read_only=True) as con: assert con.execute("SELECT count(*) FROM death").fetchone() == (1,)


def test_progress_bar(small_mimic, tmp_path, capsys):
    import_cdm(small_mimic, tmp_path / "p.duckdb")
    err = capsys.readouterr().err
    assert "import-cdm" in err and f"{len(SMALL_TABLES)}/{len(SMALL_TABLES)}" in err
