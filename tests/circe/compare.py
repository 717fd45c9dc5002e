"""Compare cohorts with Circe's: call the circepy oracle from healthbench's venv, diff rows and attrition.

Runs in healthbench's venv and depends on nothing of healthbench: the oracle (`oracle.py`) runs in the circepy venv
through a subprocess, and the comparisons take plain DataFrames.

    from tests.circe.compare import circe_cohort, assert_same_cohort, assert_same_attrition
    rows, attrition = circe_cohort("gibleed.duckdb", open("def.json").read())   # Circe's answer
    assert_same_cohort(rows, my_rows)          # rows as multisets; AssertionError with a readable diff
    assert_same_attrition(attrition, my_attrition)

Rows are `subject_id, cohort_start_date, cohort_end_date` (`person_id`, `start_date`, `end_date` are accepted too);
attrition is ATLAS's: step 0 "qualifying events", then one step per inclusion rule with the persons and records left
(see oracle.py for the exact definition). Many definitions on one CDM: `circe_cohorts` (one oracle process).
The circepy venv is `$HB_CIRCE_VENV` or `<project root>/.circe-venv`; it is made by `make_venv.sh` if missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ROW_COLUMNS = ["subject_id", "cohort_start_date", "cohort_end_date"]
ATTRITION_COLUMNS = ["step", "rule_sequence", "name", "persons", "records", "rule_persons", "rule_records",
                     "gain_persons", "gain_records"]
_ALIASES = {"person_id": "subject_id", "start_date": "cohort_start_date", "end_date": "cohort_end_date"}


class CirceError(RuntimeError):
    """circepy could not run a definition: `.stage` (parse, build, translate, execute, timeout, ...), `.result`."""

    def __init__(self, result: dict):
        self.result = result
        err = result.get("error") or {}
        self.stage = err.get("stage")
        where = f" (statement {err['statement_index']})" if err.get("statement_index") is not None else ""
        super().__init__(f"circepy failed at {self.stage}{where}: {err.get('type')}: {err.get('message')}")


@dataclass
class CirceResult:
    """One definition's oracle result: rows and attrition as DataFrames, and the raw JSON (stats, stages...)."""
    rows: pd.DataFrame | None
    attrition: pd.DataFrame | None
    raw: dict = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.raw.get("status") == "ok"

    def raise_for_error(self) -> CirceResult:
        if not self.ok:
            raise CirceError(self.raw)
        return self


def circe_python(venv: str | os.PathLike | None = None) -> Path:
    """The circepy venv's python, made with make_venv.sh the first time."""
    venv = Path(venv or os.environ.get("HB_CIRCE_VENV") or ROOT / ".circe-venv")
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making the circepy venv at {venv} (tests/circe/make_venv.sh)", file=sys.stderr)
        subprocess.run(["bash", str(HERE / "make_venv.sh"), str(venv)], check=True, stdout=sys.stderr)
    return python


def _oracle_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_oracle(cdm_path, json_paths: list[Path], out_dir: Path, *, cohort_id: int, timeout: float | None,
                threads: int, stages: bool, venv) -> None:
    cmd = [str(circe_python(venv)), str(HERE / "oracle.py"), "--cdm", str(Path(cdm_path).resolve()),
           "--out-dir", str(out_dir), "--cohort-id", str(cohort_id), "--threads", str(threads), "--rows-parquet",
           "--quiet"]
    listing = out_dir.parent / "definitions.txt"
    listing.write_text("".join(f"{p}\n" for p in json_paths))
    cmd += ["--json-list", str(listing)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    if stages:
        cmd += ["--stages"]
    proc = subprocess.run(cmd, env=_oracle_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"oracle.py exited {proc.returncode}:\n{proc.stderr[-4000:]}")


def _load(out: Path) -> CirceResult:
    raw = json.loads(out.read_text())
    if raw.get("status") != "ok":
        return CirceResult(None, None, raw)
    rows = raw["rows"]
    if "parquet" in rows:
        frame = pd.read_parquet(rows["parquet"])
    else:
        frame = pd.DataFrame(rows)
    frame = normalise_rows(frame)
    attrition = pd.DataFrame(raw["attrition"], columns=ATTRITION_COLUMNS)
    for c in ATTRITION_COLUMNS:
        if c != "name":
            attrition[c] = attrition[c].astype("Int64")
    if raw.get("stages") and out.with_suffix(".stages").exists():
        raw["stages_dir"] = str(out.with_suffix(".stages"))
    return CirceResult(frame, attrition, raw)


def circe_results(cdm_path: str | os.PathLike, definitions: dict[str, str] | list[str], *, cohort_id: int = 1,
                  timeout: float | None = None, threads: int = 1, stages: bool = False, venv=None,
                  keep: str | os.PathLike | None = None) -> dict[str, CirceResult]:
    """Run many definitions (name -> Circe JSON text; a list is named "0", "1", ...) in one oracle process.

    Errors do not raise: check `.ok` or call `.raise_for_error()`. `stages=True` keeps every stage table of circepy's
    pipeline as Parquet (`result.raw["stages_dir"]`), which needs `keep` (a folder that is not deleted)."""
    if isinstance(definitions, list):
        definitions = {str(i): text for i, text in enumerate(definitions)}
    if stages and keep is None:
        raise ValueError("stages=True needs keep=FOLDER, where the stage tables are written")
    with tempfile.TemporaryDirectory(prefix="hb-circe-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        (work / "definitions").mkdir(parents=True, exist_ok=True)
        (work / "results").mkdir(exist_ok=True)
        paths = []
        for i, (name, text) in enumerate(definitions.items()):
            p = work / "definitions" / f"def{i}.json"
            p.write_text(text if isinstance(text, str) else json.dumps(text))
            paths.append(p)
        _run_oracle(cdm_path, paths, work / "results", cohort_id=cohort_id, timeout=timeout, threads=threads,
                    stages=stages, venv=venv)
        return {name: _load(work / "results" / f"def{i}.json") for i, name in enumerate(definitions)}


def circe_result(cdm_path: str | os.PathLike, json_text: str, **kw) -> CirceResult:
    """One definition's full oracle result (see `circe_results` for the keywords)."""
    return circe_results(cdm_path, {"definition": json_text}, **kw)["definition"]


def circe_cohort(cdm_path: str | os.PathLike, json_text: str, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Circe's cohort rows (subject_id, cohort_start_date, cohort_end_date; sorted) and ATLAS attrition for one
    definition on a DuckDB CDM file (read only). Raises `CirceError` when circepy fails on it."""
    res = circe_result(cdm_path, json_text, **kw).raise_for_error()
    return res.rows, res.attrition


def circe_cohorts(cdm_path: str | os.PathLike, definitions: dict[str, str] | list[str], **kw
                  ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame] | CirceError]:
    """`circe_cohort` for many definitions in one process: name -> (rows, attrition), or the CirceError."""
    out = {}
    for name, res in circe_results(cdm_path, definitions, **kw).items():
        out[name] = (res.rows, res.attrition) if res.ok else CirceError(res.raw)
    return out


def normalise_rows(rows) -> pd.DataFrame:
    """Cohort rows as a DataFrame of int64 subject_id and datetime64[s] dates, sorted, index 0..n-1.

    Accepts a DataFrame (or anything with `.to_pandas()`), with `person_id`/`start_date`/`end_date` for names."""
    if hasattr(rows, "to_pandas") and not isinstance(rows, pd.DataFrame):
        rows = rows.to_pandas()
    frame = pd.DataFrame(rows).rename(columns=lambda c: _ALIASES.get(str(c).lower(), str(c).lower()))
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"cohort rows need columns {ROW_COLUMNS}; missing {missing} in {list(frame.columns)}")
    frame = frame[ROW_COLUMNS].copy()
    frame["subject_id"] = frame["subject_id"].astype("int64")
    for c in ROW_COLUMNS[1:]:
        frame[c] = pd.to_datetime(frame[c]).astype("datetime64[s]").dt.normalize()
    return frame.sort_values(ROW_COLUMNS, kind="stable").reset_index(drop=True)


def _keys(frame: pd.DataFrame) -> Counter:
    return Counter(zip(frame["subject_id"].tolist(), frame["cohort_start_date"].dt.strftime("%Y-%m-%d").tolist(),
                       frame["cohort_end_date"].dt.strftime("%Y-%m-%d").tolist()))


def rows_digest(rows) -> str:
    """sha256 of the sorted rows, one "subject_id,YYYY-MM-DD,YYYY-MM-DD\\n" line each: the `rows_sha256` column of
    tests/circe/library_*.csv, so a cohort can be checked against those reference numbers without circepy."""
    h = hashlib.sha256()
    for key in sorted(_keys(normalise_rows(rows)).elements()):
        h.update(f"{key[0]},{key[1]},{key[2]}\n".encode())
    return h.hexdigest()


@dataclass
class CohortDiff:
    """Rows of two cohorts compared as multisets."""
    names: tuple[str, str]
    counts: dict
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    persons: list

    @property
    def equal(self) -> bool:
        return self.only_a.empty and self.only_b.empty

    def report(self, rows_a: pd.DataFrame, rows_b: pd.DataFrame, max_persons: int = 10) -> str:
        a, b = self.names
        c = self.counts
        lines = [(f"cohorts differ: {a} {c['records_a']} rows / {c['persons_a']} persons, "
                  f"{b} {c['records_b']} rows / {c['persons_b']} persons; {len(self.only_a)} rows only in {a}, "
                  f"{len(self.only_b)} rows only in {b}, {len(self.persons)} persons differ")]
        for pid in self.persons[:max_persons]:
            lines.append(f"  subject_id {pid}:")
            for name, rows, only in ((a, rows_a, self.only_a), (b, rows_b, self.only_b)):
                own = rows[rows["subject_id"] == pid]
                extra = _keys(only[only["subject_id"] == pid])  # how many copies of each row the other lacks
                shown = []
                for s, e in zip(own["cohort_start_date"], own["cohort_end_date"]):
                    key = (pid, f"{s:%Y-%m-%d}", f"{e:%Y-%m-%d}")
                    shown.append(f"{key[1]}..{key[2]}" + ("*" if extra[key] > 0 else ""))
                    extra[key] -= 1
                lines.append(f"    {name:>8}: {', '.join(shown) or '(none)'}")
        if len(self.persons) > max_persons:
            lines.append(f"  ... and {len(self.persons) - max_persons} more persons")
        lines.append("  (* = row not in the other cohort)")
        return "\n".join(lines)


def diff_cohorts(rows_a, rows_b, *, names: tuple[str, str] = ("circe", "other")) -> CohortDiff:
    """Compare two cohorts' rows as multisets (a row twice in one and once in the other is a difference)."""
    a, b = normalise_rows(rows_a), normalise_rows(rows_b)
    ka, kb = _keys(a), _keys(b)
    only_a, only_b = ka - kb, kb - ka

    def frame(counter: Counter) -> pd.DataFrame:
        return normalise_rows(pd.DataFrame(list(counter.elements()), columns=ROW_COLUMNS)) if counter else \
            a.iloc[0:0]
    persons = sorted({k[0] for k in only_a} | {k[0] for k in only_b})
    counts = {"records_a": len(a), "records_b": len(b), "persons_a": a["subject_id"].nunique(),
              "persons_b": b["subject_id"].nunique()}
    return CohortDiff(names, counts, frame(only_a), frame(only_b), persons)


def assert_same_cohort(rows_a, rows_b, *, names: tuple[str, str] = ("circe", "other"), max_persons: int = 10) -> None:
    """Assert two cohorts have the same rows (as multisets); the error shows counts and the first differing persons."""
    d = diff_cohorts(rows_a, rows_b, names=names)
    if not d.equal:
        raise AssertionError(d.report(normalise_rows(rows_a), normalise_rows(rows_b), max_persons))


def attrition_side_by_side(att_a: pd.DataFrame, att_b: pd.DataFrame, *, columns=("persons", "records"),
                           names: tuple[str, str] = ("circe", "other")) -> pd.DataFrame:
    """Two attrition tables step by step (by position: qualifying events, then each rule in order)."""
    a, b = names
    n = max(len(att_a), len(att_b))
    out = pd.DataFrame({"step": range(n)})
    label = att_a["name"] if "name" in att_a else att_b.get("name")
    if label is not None:
        out["name"] = list(label) + [None] * (n - len(label))
    for c in columns:
        for name, att in ((a, att_a), (b, att_b)):
            values = list(att[c]) if c in att else []
            out[f"{c}_{name}"] = pd.array(values + [None] * (n - len(values)), dtype="Int64")
    out["same"] = [all(out.at[i, f"{c}_{a}"] == out.at[i, f"{c}_{b}"] if pd.notna(out.at[i, f"{c}_{a}"])
                       and pd.notna(out.at[i, f"{c}_{b}"]) else False for c in columns) for i in range(n)]
    return out


def assert_same_attrition(att_a: pd.DataFrame, att_b: pd.DataFrame, *, columns=("persons", "records"),
                          names: tuple[str, str] = ("circe", "other")) -> None:
    """Assert two attrition tables give the same persons and records at every step."""
    side = attrition_side_by_side(att_a, att_b, columns=columns, names=names)
    if not side["same"].all():
        raise AssertionError("attrition differs:\n" + side.to_string(index=False))


def assert_same_as_circe(result, rows, attrition, *, names: tuple[str, str] = ("circe", "healthbench")) -> None:
    """circepy's `result` (a CirceResult) and another engine's cohort `rows` and ATLAS `attrition` (qualifying events,
    then each rule) agree: the rows, persons and records at every step, and each rule on its own and failing only it."""
    assert_same_cohort(result.rows, rows, names=names)
    assert_same_attrition(result.attrition, attrition, names=names)
    if len(attrition) > 1:
        assert_same_attrition(result.attrition.iloc[1:].reset_index(drop=True), attrition.iloc[1:].reset_index(drop=True),
                              names=names, columns=("rule_persons", "rule_records", "gain_persons", "gain_records"))
