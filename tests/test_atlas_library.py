"""The OHDSI PhenotypeLibrary's definitions as published (`../shared/data/phenotypes/ohdsi_phenotype_library/cohorts`,
read-only): every one reads into `healthbench.expression`, and reading is exact in meaning both ways.

No database: these are tests of the reader, the writer and healthbench's own JSON, over 547 definitions nobody on this
project wrote. The data are found at `../shared/data` beside the project (or `HB_SHARED_DATA`); without them the tests
are skipped, except in CI (`CI` set), where they fail.
"""
import json, os
from pathlib import Path

import pytest

from healthbench.atlas import read_expression

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data")) / "phenotypes" / "ohdsi_phenotype_library" / "cohorts"

def _definitions() -> list[Path]:
    files = sorted(LIBRARY.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    if not files:
        if os.environ.get("CI"): pytest.fail(f"{LIBRARY} is missing: CI runs with shared/ beside the project")
        pytest.skip(f"{LIBRARY} is missing (the shared public test data)")
    return files

@pytest.fixture(scope="module")
def library() -> dict[str, dict]:
    "cohort id -> the definition's JSON as published."
    return {p.stem: json.loads(p.read_text()) for p in _definitions()}

def test_every_definition_reads(library):
    refused = {}
    for cid, doc in library.items():
        try: read_expression(doc)
        except Exception as e: refused[cid] = f"{type(e).__name__}: {e}"
    assert len(library) == 547
    assert not refused, f"{len(refused)} of {len(library)} refused: {refused}"
