"""Toy OMOP v5.3 CDMs: pandas tables written to a DuckDB file with every v5.3 table and OMOP's types, so that circepy
(through `tests/circe/oracle.py`) and the reference evaluator read the same data."""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "circe"))
import typed_cdm  # noqa: E402

_SCHEMA = None


def omop53() -> dict[str, list[tuple[str, str]]]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = typed_cdm.omop53_schema()
        # OMOP's location_history (v5.4 names it; Circe's place-of-service location joins it)
        _SCHEMA.setdefault("location_history", [("location_id", "BIGINT"), ("relationship_type_concept_id", "BIGINT"),
                                                ("domain_id", "VARCHAR"), ("entity_id", "BIGINT"),
                                                ("start_date", "DATE"), ("end_date", "DATE")])
    return _SCHEMA


def write_duckdb(tables: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Every OMOP v5.3 table (empty unless given), then the given rows; columns the tables lack stay NULL."""
    path = Path(path)
    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path))
    try:
        schema = omop53()
        for table, cols in schema.items():
            con.execute(f'create table "{table}" (' + ", ".join(f'"{c}" {t}' for c, t in cols) + ")")
        for table, df in tables.items():
            if table not in schema:
                raise ValueError(f"{table} is not an OMOP v5.3 table")
            known = {c for c, _ in schema[table]}
            extra = [c for c in df.columns if c not in known]
            if extra:
                raise ValueError(f"{table} has no columns {extra}")
            if df.empty:
                continue
            con.register("_src", df)
            cols = ", ".join(f'"{c}"' for c in df.columns)
            con.execute(f'insert into "{table}" ({cols}) select {cols} from _src')
            con.unregister("_src")
    finally:
        con.close()
    return path
