"""The Circe oracle: OHDSI's reference answer for a Circe (ATLAS) cohort definition on a DuckDB OMOP CDM.

Runs inside the circepy venv (`tests/circe/make_venv.sh`); it must not import healthbench. For each definition it
renders circepy's SQL exactly as OHDSI tools do (`cohort_expression_from_json` -> `build_cohort_query` with
`generate_stats=True` -> SqlRender `render` -> `translate(sql, "duckdb")` -> `split_sql`), runs the statements one by
one on a fresh in-memory DuckDB connection to which the CDM file is attached READ_ONLY (catalog `cdm`; nothing is
ever written into the given file; results go to the in-memory schema `results`), and writes one JSON file:

    status        "ok" | "error"
    error         {stage: parse|build|translate|execute|timeout|read, type, message, statement_index, statement}
    persons, records                      of the final cohort (null on error)
    rows          {subject_id: [...], cohort_start_date: ["YYYY-MM-DD", ...], cohort_end_date: [...]}
                  (sorted; with --rows-parquet they go to <out>.rows.parquet instead and `rows` names that file)
    inclusion_rules   [{rule_sequence, name, description}]   (also written to results.cohort_inclusion, as WebAPI does)
    stats         the results tables Circe writes when generate_stats is on, as lists of records:
                  cohort_inclusion_result (cohort_definition_id, inclusion_rule_mask, person_count, mode_id),
                  cohort_inclusion_stats (cohort_definition_id, rule_sequence, person_count, gain_count, person_total,
                  mode_id), cohort_summary_stats (cohort_definition_id, base_count, final_count, mode_id),
                  cohort_censor_stats (cohort_definition_id, lost_count). mode_id 0 = all events, 1 = best event per
                  person. Circe writes the first three only when the definition has inclusion rules.
    attrition     ATLAS's attrition: step 0 "qualifying events" (the qualified_events table: after the primary
                  events' observation window, primary limit, additional criteria and qualified limit), then one step
                  per inclusion rule in order: persons and records left when rules 0..k all hold, read off
                  cohort_inclusion_result's masks (persons = mode 1, records = mode 0), plus the persons/records
                  satisfying rule k on its own (cohort_inclusion_stats.person_count) and the gain count (those
                  failing only rule k).
    stages        {temp table: {records, persons}} for every temp table of circepy's pipeline, counted by the oracle
                  just before circepy's own cleanup drops it (qualified_events, inclusion_events, included_events,
                  strategy_ends, cohort_rows, final_cohort, ...); with --stages the rows too (<out>.stages/*.parquet)
    codesets      {codeset_id: number of concepts} as circepy resolved each concept set on this CDM
    seconds       {build, execute, total} (build: parse, render and translate; ~0 when sql_cached); n_statements;
                  versions; cdm; definition

Single definition:
    python tests/circe/oracle.py --cdm X.duckdb --json def.json --out result.json
Batch (one process, one fresh connection and one output file per definition, <out-dir>/<json stem>.json):
    python tests/circe/oracle.py --cdm X.duckdb --json a.json b.json ... --out-dir DIR
    python tests/circe/oracle.py --cdm X.duckdb --json-list FILE_OF_PATHS --out-dir DIR
A per-definition `--timeout` interrupts DuckDB, `--build-timeout` circepy's SQL generation; `--threads` sets DuckDB's
threads (default 1: shared machines).
circepy's translation to DuckDB is cached by definition text (`sql_cache_dir()`; `--no-sql-cache` to bypass).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import duckdb
from circe.api import build_cohort_query, cohort_expression_from_json
from circe.cohortdefinition import BuildExpressionQueryOptions
from circe.sqlrender import render, split_sql, translate

CDM_CATALOG = "cdm"  # the attached CDM; circepy's @cdm_database_schema and @vocabulary_database_schema
RESULTS = "results"  # in-memory schema for the cohort table and Circe's statistics tables

# The results tables that Circe writes into (OHDSI WebAPI's results DDL: Circe only deletes and inserts).
RESULTS_DDL = f"""
create schema {RESULTS};
create table {RESULTS}.cohort (cohort_definition_id bigint, subject_id bigint, cohort_start_date date,
                               cohort_end_date date);
create table {RESULTS}.cohort_inclusion (cohort_definition_id bigint, rule_sequence int, name varchar,
                                         description varchar);
create table {RESULTS}.cohort_inclusion_result (cohort_definition_id bigint, inclusion_rule_mask bigint,
                                                person_count bigint, mode_id int);
create table {RESULTS}.cohort_inclusion_stats (cohort_definition_id bigint, rule_sequence int, person_count bigint,
                                               gain_count bigint, person_total bigint, mode_id int);
create table {RESULTS}.cohort_summary_stats (cohort_definition_id bigint, base_count bigint, final_count bigint,
                                             mode_id int);
create table {RESULTS}.cohort_censor_stats (cohort_definition_id bigint, lost_count bigint);
"""
STATS_TABLES = ("cohort_inclusion_result", "cohort_inclusion_stats", "cohort_summary_stats", "cohort_censor_stats")
# circepy's cleanup of a temp table: "DELETE FROM t;" (TRUNCATE translated) then "DROP TABLE t;"
_CLEANUP = re.compile(r"^\s*(?:delete\s+from|truncate\s+table|drop\s+table)\s+([a-z_][a-z0-9_]*)\s*;?\s*$",
                      re.IGNORECASE)


def versions() -> dict:
    return {p: version(p) for p in ("ohdsi-circepy", "duckdb", "sqlglot")} | {"python": sys.version.split()[0]}


def sql_cache_dir() -> Path | None:
    """Where translated SQL is cached: $HB_CIRCE_SQL_CACHE ("" or "0" turns the cache off), else
    <tmp>/healthbench-circe-sql. circepy's SqlRender translation is pure Python and slow on long definitions (a minute
    for a 43-rule one), and its output depends only on the definition, the options and the circepy version."""
    value = os.environ.get("HB_CIRCE_SQL_CACHE")
    if value in ("", "0"):
        return None
    return Path(value) if value else Path(tempfile.gettempdir()) / "healthbench-circe-sql"


def render_sql(json_text: str, cohort_id: int = 1, cache: Path | None = None) -> tuple[object, list[str], bool]:
    """circepy's expression and DuckDB statements for one definition, and whether they came from the cache.

    Raises with `.oracle_stage` (parse, build, translate) set on the exception."""
    stage = "parse"
    try:
        expression = cohort_expression_from_json(json_text)
        key = hashlib.sha256(f"{version('ohdsi-circepy')}|{cohort_id}|{CDM_CATALOG}|{RESULTS}|{json_text}".encode())
        cached = cache / f"{key.hexdigest()[:32]}.json" if cache else None
        if cached is not None and cached.exists():
            try:
                return expression, json.loads(cached.read_text()), True
            except (OSError, ValueError):
                pass
        stage = "build"
        options = BuildExpressionQueryOptions()
        options.cdm_schema = CDM_CATALOG
        options.vocabulary_schema = CDM_CATALOG
        options.result_schema = RESULTS
        options.target_table = f"{RESULTS}.cohort"
        options.cohort_id = cohort_id
        options.generate_stats = True
        sql = build_cohort_query(expression, options)
        stage = "translate"
        statements = [s for s in split_sql(translate(render(sql), "duckdb")) if s.strip()]
    except Exception as exc:
        exc.oracle_stage = stage
        raise
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(statements))
        os.replace(tmp, cached)
    return expression, statements, False


def _records(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def _stage_counts(con, table: str, save_dir: Path | None) -> dict:
    cols = [r[0].lower() for r in con.execute(f"describe {table}").fetchall()]
    if "person_id" in cols:
        n, p = con.execute(f"select count(*), count(distinct person_id) from {table}").fetchone()
        out = {"records": n, "persons": p}
    else:
        out = {"records": con.execute(f"select count(*) from {table}").fetchone()[0]}
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"copy (select * from {table}) to '{save_dir / (table.lower() + '.parquet')}' (format parquet)")
    return out


def attrition_from_stats(inclusion_rules: list[dict], stats: dict, qualified: dict) -> list[dict]:
    """ATLAS's attrition: qualifying events, then persons/records left after each inclusion rule in order."""
    steps = [{"step": 0, "rule_sequence": None, "name": "qualifying events", "persons": qualified.get("persons"),
              "records": qualified.get("records"), "rule_persons": None, "rule_records": None,
              "gain_persons": None, "gain_records": None}]
    result = stats.get("cohort_inclusion_result") or []
    per_rule = {(r["mode_id"], r["rule_sequence"]): r for r in stats.get("cohort_inclusion_stats") or []}
    for k, rule in enumerate(inclusion_rules):
        need = (1 << (k + 1)) - 1
        left = {mode: sum(r["person_count"] for r in result if r["mode_id"] == mode
                          and (int(r["inclusion_rule_mask"]) & need) == need) for mode in (0, 1)}
        steps.append({"step": k + 1, "rule_sequence": k, "name": rule["name"], "persons": left[1],
                      "records": left[0],
                      "rule_persons": per_rule.get((1, k), {}).get("person_count"),
                      "rule_records": per_rule.get((0, k), {}).get("person_count"),
                      "gain_persons": per_rule.get((1, k), {}).get("gain_count"),
                      "gain_records": per_rule.get((0, k), {}).get("gain_count")})
    return steps


class BuildTimeout(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float | None):
    """Interrupt circepy's (pure Python) SQL generation after `seconds` (main thread only; else no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise BuildTimeout(f"circepy's SQL generation took longer than {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_definition(cdm: str | os.PathLike, json_text: str, *, cohort_id: int = 1, timeout: float | None = None,
                   build_timeout: float | None = None, threads: int | None = 1, stages_dir: Path | None = None,
                   sql_out: Path | None = None, sql_cache: Path | None = None) -> dict:
    """Run one definition; never raises for a definition's own failure (it is reported in the result)."""
    t0 = time.perf_counter()
    res: dict = {"status": "error", "error": None, "persons": None, "records": None, "rows": None,
                 "inclusion_rules": [], "stats": {}, "attrition": [], "stages": {}, "codesets": {},
                 "n_statements": None, "seconds": {}, "cohort_id": cohort_id}
    try:
        with _alarm(build_timeout):
            expression, statements, sql_cached = render_sql(json_text, cohort_id, sql_cache)
    except Exception as exc:  # noqa: BLE001 - any failure of circepy on a definition is that definition's result
        stage = "timeout" if isinstance(exc, BuildTimeout) else getattr(exc, "oracle_stage", "build")
        res["error"] = {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:4000]}
        res["seconds"] = {"build": round(time.perf_counter() - t0, 3), "total": round(time.perf_counter() - t0, 3)}
        return res
    t_built = time.perf_counter()
    res["sql_cached"] = sql_cached
    res["n_statements"] = len(statements)
    if sql_out is not None:
        sql_out.write_text(";\n".join(s.rstrip().rstrip(";") for s in statements) + ";\n")
    rules = [{"rule_sequence": i, "name": r.name, "description": r.description}
             for i, r in enumerate(expression.inclusion_rules or [])]
    res["inclusion_rules"] = rules
    res["codesets"] = {str(c.id): 0 for c in expression.concept_sets or []}

    con = duckdb.connect(":memory:")  # fresh per definition: circepy's temp tables (Codesets...) die with it
    timer = None
    timed_out = threading.Event()
    if timeout:
        def _interrupt():
            timed_out.set()
            con.interrupt()
        timer = threading.Timer(timeout, _interrupt)
        timer.daemon = True
    index, statement = -1, ""
    try:
        if threads:
            con.execute(f"set threads={int(threads)}")
        path = str(Path(cdm).resolve()).replace("'", "''")
        con.execute(f"attach '{path}' as {CDM_CATALOG} (read_only)")
        con.execute(RESULTS_DDL)
        for r in rules:
            con.execute(f"insert into {RESULTS}.cohort_inclusion values (?, ?, ?, ?)",
                        [cohort_id, r["rule_sequence"], r["name"], r["description"]])
        if timer:
            timer.start()
        for index, statement in enumerate(statements):
            m = _CLEANUP.match(statement)
            if m and m.group(1).lower() not in res["stages"] and "." not in m.group(1):
                table = m.group(1).lower()
                if table == "codesets":
                    res["codesets"].update({str(k): v for k, v in con.execute(
                        "select codeset_id, count(*) from Codesets group by 1 order by 1").fetchall()})
                res["stages"][table] = _stage_counts(con, table, stages_dir)
            con.execute(statement)
        index, statement = -1, ""
        if timer:
            timer.cancel()
        rows = con.execute(f"select subject_id, cohort_start_date, cohort_end_date from {RESULTS}.cohort "
                           "order by 1, 2, 3").fetchall()
        res["rows"] = {"subject_id": [r[0] for r in rows],
                       "cohort_start_date": [r[1].isoformat() for r in rows],
                       "cohort_end_date": [r[2].isoformat() for r in rows]}
        res["records"] = len(rows)
        res["persons"] = len({r[0] for r in rows})
        res["stats"] = {t: _records(con, f"select * from {RESULTS}.{t} order by all") for t in STATS_TABLES}
        res["attrition"] = attrition_from_stats(rules, res["stats"], res["stages"].get("qualified_events", {}))
        summary = {r["mode_id"]: r for r in res["stats"]["cohort_summary_stats"]}
        q = res["stages"].get("qualified_events", {})
        if summary and (summary[0]["base_count"], summary[1]["base_count"]) != (q.get("records"), q.get("persons")):
            raise AssertionError(f"oracle: Circe's base counts {summary} differ from qualified_events {q}")
        res["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - as above: reported, and the batch goes on
        if timer:
            timer.cancel()
        stage = "timeout" if timed_out.is_set() else ("execute" if index >= 0 else "setup")
        res["error"] = {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:4000],
                        "statement_index": index if index >= 0 else None,
                        "statement": statement.strip()[:2000] if index >= 0 else None}
        if stage == "setup":
            res["error"]["traceback"] = traceback.format_exc()[-2000:]
    finally:
        con.close()
    t_end = time.perf_counter()
    res["seconds"] = {"build": round(t_built - t0, 3), "execute": round(t_end - t_built, 3),
                      "total": round(t_end - t0, 3)}
    return res


def run_file(cdm: str | os.PathLike, json_path: Path, out: Path, *, rows_parquet: bool = False, stages: bool = False,
             save_sql: bool = False, **kw) -> dict:
    """Run the definition in `json_path` and write its result to `out` (JSON)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.with_suffix("")
    try:
        json_text = json_path.read_text()
    except OSError as exc:
        res = {"status": "error", "error": {"stage": "read", "type": type(exc).__name__, "message": str(exc)}}
    else:
        res = run_definition(cdm, json_text, stages_dir=Path(str(base) + ".stages") if stages else None,
                             sql_out=Path(str(base) + ".sql") if save_sql else None, **kw)
    res["definition"] = str(json_path)
    res["cdm"] = str(cdm)
    res["versions"] = versions()
    if rows_parquet and res.get("rows") is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows = res["rows"]
        table = pa.table({"subject_id": pa.array(rows["subject_id"], pa.int64()),
                          "cohort_start_date": pa.array(rows["cohort_start_date"]).cast(pa.date32()),
                          "cohort_end_date": pa.array(rows["cohort_end_date"]).cast(pa.date32())})
        rows_path = Path(str(base) + ".rows.parquet")
        pq.write_table(table, rows_path)
        res["rows"] = {"parquet": str(rows_path)}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(res, default=str))
    os.replace(tmp, out)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run Circe (circepy) cohort definitions on a DuckDB OMOP CDM.")
    p.add_argument("--cdm", required=True, help="DuckDB CDM file (attached read-only)")
    p.add_argument("--json", nargs="+", default=[], help="Circe cohort definition JSON file(s)")
    p.add_argument("--json-list", help="file with one definition path per line (batch mode)")
    p.add_argument("--out", help="result JSON (one definition)")
    p.add_argument("--out-dir", help="folder for <json stem>.json results (batch mode)")
    p.add_argument("--cohort-id", type=int, default=1)
    p.add_argument("--timeout", type=float, default=None, help="seconds per definition, then DuckDB is interrupted")
    p.add_argument("--build-timeout", type=float, default=None,
                   help="seconds for circepy's SQL generation (render + translate) per definition")
    p.add_argument("--threads", type=int, default=1, help="DuckDB threads (0: DuckDB's default)")
    p.add_argument("--rows-parquet", action="store_true", help="cohort rows to <out>.rows.parquet, not the JSON")
    p.add_argument("--stages", action="store_true", help="also save every stage table's rows as Parquet")
    p.add_argument("--save-sql", action="store_true", help="also save the translated SQL as <out>.sql")
    p.add_argument("--no-sql-cache", action="store_true", help="translate again even if the SQL is cached")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    paths = [Path(x) for x in a.json]
    if a.json_list:
        paths += [Path(x.strip()) for x in Path(a.json_list).read_text().splitlines() if x.strip()]
    if not paths:
        p.error("give --json or --json-list")
    if not Path(a.cdm).is_file():
        p.error(f"--cdm: no such file: {a.cdm}")
    if len(paths) == 1 and a.out:
        outs = [Path(a.out)]
    elif a.out_dir:
        outs = [Path(a.out_dir) / f"{path.stem}.json" for path in paths]
    else:
        p.error("give --out for one definition or --out-dir for several")
    kw = {"cohort_id": a.cohort_id, "timeout": a.timeout, "build_timeout": a.build_timeout,
          "threads": a.threads or None, "rows_parquet": a.rows_parquet, "stages": a.stages, "save_sql": a.save_sql,
          "sql_cache": None if a.no_sql_cache else sql_cache_dir()}
    n_ok = 0
    for i, (path, out) in enumerate(zip(paths, outs), 1):
        res = run_file(a.cdm, path, out, **kw)
        n_ok += res["status"] == "ok"
        if not a.quiet:
            err = res.get("error") or {}
            what = (f"{res['persons']} persons, {res['records']} records" if res["status"] == "ok"
                    else f"{err.get('stage')}: {err.get('type')}: {str(err.get('message')).splitlines()[0][:160]}")
            print(f"[{i}/{len(paths)}] {path.name}: {res['status']} {what} "
                  f"({res.get('seconds', {}).get('total', 0):.2f} s)", flush=True)
    if not a.quiet:
        print(f"{n_ok} ok, {len(paths) - n_ok} error", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
