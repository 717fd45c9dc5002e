"""The ibis/DuckDB/sqlglot combination we pin works for what healthbench needs.

ibis 12.0 with sqlglot 30.x fails in DuckDB `create_table` ("DROP VIEW IF EXISTS" parser error) and duckdb 2.0
removed an API ibis 12.0 calls; these tests fail if the installed versions regress.
"""
import ibis
import pandas as pd
import pyarrow as pa


def test_create_table_in_a_work_database(tmp_path):
    con = ibis.duckdb.connect(str(tmp_path / "work.duckdb"))
    t = con.create_table("cohort", pa.table({"person_id": [1, 2, 3], "cohort_start_date": pd.to_datetime(["2020-01-01"] * 3).date}))
    assert con.list_tables() == ["cohort"]
    assert t.count().execute() == 3
    con.create_table("cohort", t.filter(t.person_id > 1), overwrite=True)
    assert con.table("cohort").count().execute() == 2
    con.disconnect()


def test_read_only_refuses_writes(tmp_path):
    p = tmp_path / "src.duckdb"
    con = ibis.duckdb.connect(str(p))
    con.create_table("x", pa.table({"a": [1]}))
    con.disconnect()
    ro = ibis.duckdb.connect(str(p), read_only=True)
    try:
        ro.create_table("y", pa.table({"a": [1]}))
    except Exception as e:
        assert "read-only" in str(e)
    else:
        raise AssertionError("a read-only DuckDB connection accepted a write")
    finally:
        ro.disconnect()
