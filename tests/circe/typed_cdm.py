"""Typed OMOP CDM v5.3 DuckDB files from the shared test data, for circepy and healthbench alike.

The shared CDMs are kept exactly as published (`../shared/data/omop/`): GiBleed's Parquet files store ids as DOUBLE
and all-null columns as BOOLEAN or VARCHAR, MIMIC's CSV files carry no types at all. circepy's SQL fails on those
(e.g. `value_as_number` as BOOLEAN compared with a number), so the Circe cross-check needs the same data with OMOP's
types. This module writes one DuckDB file per CDM with the official v5.3 types of DataQualityDashboard's field list
(`dqd/OMOP_CDMv5.3_Field_Level.csv`, `cdmDatatype`: integer/bigint -> BIGINT, float -> DOUBLE, varchar -> VARCHAR,
date -> DATE, datetime -> TIMESTAMP); that list has no vocabulary, metadata or results tables, whose v5.3 types are
written out below (`EXTRA_TABLES`).

Conversions are exact or refused: a DOUBLE id that is not a whole number, or a text that does not parse as its type,
raises. An all-null column becomes a NULL of its type whatever the publisher's type was. A DOUBLE whose values are all
whole numbers that must become text (GiBleed's `observation_source_value`, `relationship.is_hierarchical`) is written
without the ".0" (`3.0` -> `"3"`). Columns that the spec has and the source lacks are added as NULLs; columns the
source has and the spec does not are kept as they are. Tables of the spec that the source lacks (MIMIC has no
`measurement`, `observation` or `concept_ancestor`) are created empty unless `add_missing_tables=False`, as OMOP's DDL
would have created them; the report says which.

The files are built with whichever duckdb runs this module. Build them with healthbench's venv (duckdb 1.x): circepy's
duckdb 2.x reads those files (the oracle attaches them read-only), the other way round is not guaranteed.

Usage:
    python tests/circe/typed_cdm.py gibleed [--out PATH]         # default: typed_cdm_dir()/gibleed_5.3.duckdb
    python tests/circe/typed_cdm.py mimic [--out PATH] [--keep-missing-tables-absent]
    python tests/circe/typed_cdm.py synthetic [--out PATH]       # healthbench's synthetic CDM (healthbench's venv)
    python tests/circe/typed_cdm.py SOURCE_DIR --out PATH        # any folder of one Parquet or CSV file per table
From Python: `typed_gibleed()`, `typed_mimic()`, `typed_synthetic()` (built once, then reused while the sources are unchanged) or
`build_typed_cdm(source_dir, out_path)`.

Replace with `healthbench.cdm.import_cdm` once it is on main (it is being built for the real-CDM issue): this
module exists only so the reference side can run before that.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data"))  # ../shared/data beside the project
FIELD_LEVEL = SHARED / "dqd" / "OMOP_CDMv5.3_Field_Level.csv"
SOURCES = {"gibleed": SHARED / "omop" / "gibleed_5.3", "mimic": SHARED / "omop" / "mimic_iv_demo_5.3"}
BUILDER_VERSION = "1"  # bump when the conversion changes, so cached files are rebuilt

# OMOP CDM v5.3 tables absent from DQD's field list (vocabulary, metadata, results), with their v5.3 types.
_I, _F, _V, _D, _T = "BIGINT", "DOUBLE", "VARCHAR", "DATE", "TIMESTAMP"
EXTRA_TABLES: dict[str, list[tuple[str, str]]] = {
    "concept": [("concept_id", _I), ("concept_name", _V), ("domain_id", _V), ("vocabulary_id", _V),
                ("concept_class_id", _V), ("standard_concept", _V), ("concept_code", _V),
                ("valid_start_date", _D), ("valid_end_date", _D), ("invalid_reason", _V)],
    "concept_ancestor": [("ancestor_concept_id", _I), ("descendant_concept_id", _I),
                         ("min_levels_of_separation", _I), ("max_levels_of_separation", _I)],
    "concept_relationship": [("concept_id_1", _I), ("concept_id_2", _I), ("relationship_id", _V),
                             ("valid_start_date", _D), ("valid_end_date", _D), ("invalid_reason", _V)],
    "concept_synonym": [("concept_id", _I), ("concept_synonym_name", _V), ("language_concept_id", _I)],
    "concept_class": [("concept_class_id", _V), ("concept_class_name", _V), ("concept_class_concept_id", _I)],
    "domain": [("domain_id", _V), ("domain_name", _V), ("domain_concept_id", _I)],
    "vocabulary": [("vocabulary_id", _V), ("vocabulary_name", _V), ("vocabulary_reference", _V),
                   ("vocabulary_version", _V), ("vocabulary_concept_id", _I)],
    "relationship": [("relationship_id", _V), ("relationship_name", _V), ("is_hierarchical", _V),
                     ("defines_ancestry", _V), ("reverse_relationship_id", _V), ("relationship_concept_id", _I)],
    "drug_strength": [("drug_concept_id", _I), ("ingredient_concept_id", _I), ("amount_value", _F),
                      ("amount_unit_concept_id", _I), ("numerator_value", _F), ("numerator_unit_concept_id", _I),
                      ("denominator_value", _F), ("denominator_unit_concept_id", _I), ("box_size", _I),
                      ("valid_start_date", _D), ("valid_end_date", _D), ("invalid_reason", _V)],
    "source_to_concept_map": [("source_code", _V), ("source_concept_id", _I), ("source_vocabulary_id", _V),
                              ("source_code_description", _V), ("target_concept_id", _I),
                              ("target_vocabulary_id", _V), ("valid_start_date", _D), ("valid_end_date", _D),
                              ("invalid_reason", _V)],
    "cdm_source": [("cdm_source_name", _V), ("cdm_source_abbreviation", _V), ("cdm_holder", _V),
                   ("source_description", _V), ("source_documentation_reference", _V), ("cdm_etl_reference", _V),
                   ("source_release_date", _D), ("cdm_release_date", _D), ("cdm_version", _V),
                   ("vocabulary_version", _V)],
    "metadata": [("metadata_concept_id", _I), ("metadata_type_concept_id", _I), ("name", _V),
                 ("value_as_string", _V), ("value_as_concept_id", _I), ("metadata_date", _D),
                 ("metadata_datetime", _T)],
    "cohort": [("cohort_definition_id", _I), ("subject_id", _I), ("cohort_start_date", _D), ("cohort_end_date", _D)],
    "cohort_definition": [("cohort_definition_id", _I), ("cohort_definition_name", _V),
                          ("cohort_definition_description", _V), ("definition_type_concept_id", _I),
                          ("cohort_definition_syntax", _V), ("subject_concept_id", _I),
                          ("cohort_initiation_date", _D)],
    "cohort_attribute": [("cohort_definition_id", _I), ("subject_id", _I), ("cohort_start_date", _D),
                         ("cohort_end_date", _D), ("attribute_definition_id", _I), ("value_as_number", _F),
                         ("value_as_concept_id", _I)],
    "attribute_definition": [("attribute_definition_id", _I), ("attribute_name", _V), ("attribute_description", _V),
                             ("attribute_type_concept_id", _I), ("attribute_syntax", _V)],
}
# Only these are created empty when the source lacks them: the CDM proper and the vocabulary (results tables such as
# cohort are the analyst's, not the data's).
_NOT_CREATED_WHEN_MISSING = {"cohort", "cohort_definition", "cohort_attribute", "attribute_definition"}


def duckdb_type(cdm_datatype: str) -> str:
    """OMOP's `cdmDatatype` (any case, with or without a length) as a DuckDB type."""
    t = cdm_datatype.strip().lower()
    if t in ("integer", "int", "bigint"):
        return _I
    if t == "float":
        return _F
    if t.startswith(("varchar", "string")):
        return _V
    if t == "date":
        return _D
    if t == "datetime":
        return _T
    raise ValueError(f"unknown cdmDatatype {cdm_datatype!r} in {FIELD_LEVEL.name}")


def omop53_schema(field_level: Path = FIELD_LEVEL) -> dict[str, list[tuple[str, str]]]:
    """table -> [(column, DuckDB type)] for every OMOP v5.3 table, in the spec's column order."""
    schema: dict[str, list[tuple[str, str]]] = {}
    with open(field_level, newline="") as fh:
        for row in csv.DictReader(fh):
            schema.setdefault(row["cdmTableName"].lower(), []).append(
                (row["cdmFieldName"].lower(), duckdb_type(row["cdmDatatype"])))
    for table, cols in EXTRA_TABLES.items():
        schema.setdefault(table, cols)
    return schema


def _source_files(source: Path) -> dict[str, Path]:
    files = {p.stem.lower(): p for p in sorted(source.iterdir()) if p.suffix.lower() in (".parquet", ".csv")}
    if not files:
        raise FileNotFoundError(f"no .parquet or .csv tables in {source}")
    return files


def _fingerprint(source: Path) -> str:
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for name, p in sorted(_source_files(source).items()):
        st = p.stat()
        h.update(f"{name}:{st.st_size}:{int(st.st_mtime)};".encode())
    h.update(FIELD_LEVEL.read_bytes())
    return h.hexdigest()[:16]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _column_expr(con, view: str, col: str, src_type: str, target: str) -> str:
    """SQL for one converted column; raises if the conversion would change a value."""
    c = _q(col)
    n_values = con.execute(f"select count({c}) from {view}").fetchone()[0]
    if n_values == 0:
        return f"CAST(NULL AS {target})"
    if src_type == "BOOLEAN":
        raise ValueError(f"{view}.{col} holds non-null BOOLEAN values; OMOP says {target}")
    if src_type in ("DOUBLE", "FLOAT") and target in (_I, _V):
        fractional = con.execute(f"select count(*) from {view} where {c} <> trunc({c})").fetchone()[0]
        if fractional:
            if target == _I:
                raise ValueError(f"{view}.{col}: {fractional} values are not whole numbers; OMOP says {target}")
            return f"CAST({c} AS VARCHAR)"
        return f"CAST(CAST({c} AS BIGINT) AS {target})"
    if src_type == "VARCHAR" and target != _V:
        bad = con.execute(f"select count(*) from {view} where {c} is not null and try_cast({c} as {target}) is null"
                          ).fetchone()[0]
        if bad:
            example = con.execute(f"select {c} from {view} where {c} is not null and try_cast({c} as {target}) is null"
                                  " limit 1").fetchone()[0]
            raise ValueError(f"{view}.{col}: {bad} values do not parse as {target}, e.g. {example!r}")
    return f"CAST({c} AS {target})"


def build_typed_cdm(source: str | os.PathLike, out: str | os.PathLike, *, add_missing_tables: bool = True) -> dict:
    """Write a typed OMOP v5.3 DuckDB at `out` from a folder of one Parquet or CSV file per table.

    Returns a report: per table the source rows, columns added as NULL, columns kept that the spec lacks, columns
    whose type changed, and which spec tables the source lacks (created empty, or left absent).
    """
    source, out = Path(source), Path(out)
    schema = omop53_schema()
    files = _source_files(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    report: dict = {"source": str(source), "tables": {}, "missing_tables_created_empty": [],
                    "missing_tables_absent": [], "fingerprint": _fingerprint(source), "builder": BUILDER_VERSION,
                    "duckdb": duckdb.__version__}
    con = duckdb.connect(str(tmp))
    try:
        for name, path in files.items():
            view = _q(f"src_{name}")
            if path.suffix.lower() == ".parquet":
                con.execute(f"create temp table {view} as select * from read_parquet({_lit(path)})")
            else:
                con.execute(f"create temp table {view} as select * from read_csv({_lit(path)}, header=true, "
                            "all_varchar=true)")
            src_cols = {r[0].lower(): (r[0], r[1]) for r in con.execute(f"describe {view}").fetchall()}
            spec = schema.get(name)
            entry = {"rows": con.execute(f"select count(*) from {view}").fetchone()[0], "added_null": [],
                     "kept_unknown": [], "retyped": {}}
            exprs = []
            if spec is None:
                entry["not_in_spec"] = True
                exprs = [_q(orig) for orig, _ in src_cols.values()]
            else:
                for col, target in spec:
                    if col not in src_cols:
                        exprs.append(f"CAST(NULL AS {target}) AS {_q(col)}")
                        entry["added_null"].append(col)
                        continue
                    orig, src_type = src_cols[col]
                    exprs.append(f"{_column_expr(con, view, orig, src_type, target)} AS {_q(col)}")
                    if src_type != target:
                        entry["retyped"][col] = f"{src_type} -> {target}"
                known = {c for c, _ in spec}
                for col, (orig, _src_type) in src_cols.items():
                    if col not in known:
                        exprs.append(_q(orig))
                        entry["kept_unknown"].append(col)
            con.execute(f"create table {_q(name)} as select {', '.join(exprs)} from {view}")
            report["tables"][name] = entry
        for name, spec in schema.items():
            if name in files:
                continue
            if add_missing_tables and name not in _NOT_CREATED_WHEN_MISSING:
                cols = ", ".join(f"{_q(c)} {t}" for c, t in spec)
                con.execute(f"create table {_q(name)} ({cols})")
                report["missing_tables_created_empty"].append(name)
            else:
                report["missing_tables_absent"].append(name)
        con.execute("checkpoint")
    finally:
        con.close()
    os.replace(tmp, out)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    Path(str(out) + ".json").write_text(json.dumps(report, indent=1))
    return report


def typed_cdm_dir() -> Path:
    """Where `typed_gibleed()`/`typed_mimic()` keep their files: $HB_CIRCE_CDM_DIR, else <tmp>/healthbench-circe-cdm."""
    return Path(os.environ.get("HB_CIRCE_CDM_DIR", Path(tempfile.gettempdir()) / "healthbench-circe-cdm"))


def _cached(which: str, add_missing_tables: bool, folder: str | os.PathLike | None) -> Path:
    source = SOURCES[which]
    suffix = "" if add_missing_tables else "_absent_tables"
    out = Path(folder or typed_cdm_dir()) / f"{source.name}{suffix}.duckdb"
    sidecar = Path(str(out) + ".json")
    if out.exists() and sidecar.exists():
        try:
            if json.loads(sidecar.read_text()).get("fingerprint") == _fingerprint(source):
                return out
        except (OSError, ValueError):
            pass
    build_typed_cdm(source, out, add_missing_tables=add_missing_tables)
    return out


def typed_gibleed(folder: str | os.PathLike | None = None, *, add_missing_tables: bool = True) -> Path:
    """Path of typed GiBleed (OMOP v5.3, 2,694 persons), built on first use, reused while its sources are unchanged."""
    return _cached("gibleed", add_missing_tables, folder)


def typed_mimic(folder: str | os.PathLike | None = None, *, add_missing_tables: bool = True) -> Path:
    """Path of typed MIMIC-IV demo (OMOP v5.3, 100 persons); its absent measurement, observation and concept_ancestor
    tables are created empty unless `add_missing_tables=False`."""
    return _cached("mimic", add_missing_tables, folder)


SYNTHETIC = {"n_persons": 5000, "seed": 14}  # the synthetic CDM of the library cross-check (library_synthetic.csv)


def build_synthetic_cdm(out: str | os.PathLike, *, n_persons: int = SYNTHETIC["n_persons"],
                        seed: int = SYNTHETIC["seed"]) -> dict:
    """healthbench's own synthetic CDM (`healthbench.synth.generate`, OMOP v5.4) as a file circepy can read: generated,
    imported with `healthbench.cdm.import_cdm` (official v5.4 types), and every v5.4 table that the generator does not
    write (procedure_occurrence, device_exposure, visit_detail, specimen, the eras, concept_relationship, ...) created
    empty with its official types, since circepy's SQL reads them whatever the definition. Needs healthbench (its venv).

    Returns a report with `table_checksums` (`healthbench.synth.table_checksums` of the generated tables): equal
    checksums = the same data circepy's answers were recorded on."""
    from healthbench.cdm import import_cdm
    from healthbench.schema import official_type, omop_fields
    from healthbench.synth import generate, table_checksums
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    raw = out.with_name(f".{out.name}.{os.getpid()}.raw.duckdb")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    for p in (raw, tmp):
        p.unlink(missing_ok=True)
    try:
        generate(n_persons, seed=seed, path=raw, progress=False)
        checksums = table_checksums(raw)
        import_cdm(raw, tmp, version="5.4", progress=False)
        con = duckdb.connect(str(tmp))
        try:
            have = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
            created = []
            for name, fields in omop_fields("5.4").items():
                if name in have or name in _NOT_CREATED_WHEN_MISSING:
                    continue
                cols = ", ".join(f"{_q(f)} {official_type(d)}" for f, d, _ in fields)
                con.execute(f"create table {_q(name)} ({cols})")
                created.append(name)
            con.execute("checkpoint")
        finally:
            con.close()
    finally:
        raw.unlink(missing_ok=True)
    os.replace(tmp, out)
    report = {"source": "healthbench.synth.generate", "n_persons": n_persons, "seed": seed, "cdm_version": "5.4",
              "table_checksums": checksums, "missing_tables_created_empty": sorted(created),
              "builder": BUILDER_VERSION, "duckdb": duckdb.__version__, "seconds": round(time.perf_counter() - t0, 2)}
    Path(str(out) + ".json").write_text(json.dumps(report, indent=1))
    return report


def typed_synthetic(folder: str | os.PathLike | None = None, *, n_persons: int = SYNTHETIC["n_persons"],
                    seed: int = SYNTHETIC["seed"]) -> Path:
    """Path of the synthetic CDM (`build_synthetic_cdm`), built on first use and reused while healthbench's generator
    gives the same tables (checked by regenerating them: about a second at 5,000 persons)."""
    from healthbench.synth import generate, table_checksums
    out = Path(folder or typed_cdm_dir()) / f"synthetic_{n_persons}_{seed}.duckdb"
    sidecar = Path(str(out) + ".json")
    if out.exists() and sidecar.exists():
        try:
            recorded = json.loads(sidecar.read_text()).get("table_checksums")
            with tempfile.TemporaryDirectory() as d:
                now = table_checksums(generate(n_persons, seed=seed, path=Path(d) / "s.duckdb", progress=False))
            if recorded == now:
                return out
        except (OSError, ValueError):
            pass
    build_synthetic_cdm(out, n_persons=n_persons, seed=seed)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="'gibleed', 'mimic', 'synthetic' or a folder of one Parquet/CSV file per table")
    p.add_argument("--out", help="DuckDB file to write (default: typed_cdm_dir()/<source name>.duckdb)")
    p.add_argument("--keep-missing-tables-absent", action="store_true",
                   help="do not create the spec tables that the source lacks")
    a = p.parse_args(argv)
    add = not a.keep_missing_tables_absent
    if a.source == "synthetic":
        out = Path(a.out) if a.out else typed_synthetic()
        report = build_synthetic_cdm(out) if a.out else json.loads(Path(str(out) + ".json").read_text())
        print(f"{out}: synthetic CDM of {report['n_persons']:,} persons (seed {report['seed']}) in {report['seconds']} s; "
              f"created empty: {', '.join(report['missing_tables_created_empty'])}")
        return 0
    if a.source in SOURCES and not a.out:
        out = _cached(a.source, add, None)
        report = json.loads(Path(str(out) + ".json").read_text())
    else:
        source = SOURCES.get(a.source, Path(a.source))
        out = Path(a.out) if a.out else typed_cdm_dir() / f"{Path(source).name}.duckdb"
        report = build_typed_cdm(source, out, add_missing_tables=add)
    retyped = sum(len(t["retyped"]) for t in report["tables"].values())
    print(f"{out}: {len(report['tables'])} tables from {report['source']} ({retyped} columns retyped) in "
          f"{report['seconds']} s; created empty: {', '.join(report['missing_tables_created_empty']) or '-'}; "
          f"absent: {', '.join(report['missing_tables_absent']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
