"""Code lists on Eunomia GiBleed as published (../shared/data/omop/gibleed_5.3, read its README): its
`condition_occurrence` records the GI-bleed events with the ICD10CM source concept `K92.2` (35208414), which maps to the
standard SNOMED concept 192671. The truth — which persons a list of `K92.2` must reach by each strategy — is counted
with plain DuckDB SQL on the Parquet files as published, never with healthbench: for `mapped`, the persons with a
condition whose standard concept is a `Maps to` target of an ICD10/ICD10CM concept coded `K92.2`; for `as_recorded`,
the persons with a condition whose source concept is such a concept or whose source value is `K92.2`/`K922`.

healthbench reads GiBleed twice: imported (`import_cdm`, official types) and as published (a DuckDB made with
`CREATE TABLE x AS SELECT * FROM 'x.parquet'`, ids as DOUBLE, `invalid_reason` as BOOLEAN). The data folder can be moved
with HB_SHARED_DATA; without the data these tests fail, since CI must run them.
"""
import os, warnings
from pathlib import Path

import duckdb
import pytest

from healthbench.cdm import connect, import_cdm
from healthbench.codelists import (CodeList, EmptyCodeListWarning, STRATEGIES, codelist_events, map_codes, mapping_report,
                                   read_hdruk, read_opencodelists, read_plain)
from healthbench.concepts import resolve
from healthbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data"))
GIBLEED = DATA / "omop" / "gibleed_5.3"
FIXTURES = ROOT / "tests" / "fixtures" / "codelists"
GI_BLEED_PERSONS = 479   # issue 15; pinned by test_truth_is_the_issues_479


def _require(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.fail(f"real test data missing: {folder} (the project's ../shared/data/, or set HB_SHARED_DATA)")
    return folder


def _sql(query: str) -> list:
    con = duckdb.connect()
    con.execute("SET threads = 1")
    try: return con.execute(query.replace("{dir}", str(_require(GIBLEED)))).fetchall()
    finally: con.close()


K922_CONCEPTS = """SELECT concept_id FROM '{dir}/concept.parquet'
                   WHERE vocabulary_id IN ('ICD10', 'ICD10CM') AND concept_code IN ('K92.2', 'K922')"""
TRUTH = {
    "mapped": f"""SELECT DISTINCT person_id FROM '{{dir}}/condition_occurrence.parquet' WHERE condition_concept_id IN (
                  SELECT concept_id_2 FROM '{{dir}}/concept_relationship.parquet'
                  WHERE relationship_id = 'Maps to' AND concept_id_1 IN ({K922_CONCEPTS}))""",
    "as_recorded": f"""SELECT DISTINCT person_id FROM '{{dir}}/condition_occurrence.parquet'
                       WHERE condition_source_concept_id IN ({K922_CONCEPTS}) OR condition_source_value IN ('K92.2', 'K922')""",
}


def truth(strategy: str) -> set[int]:
    return {int(p) for (p,) in _sql(TRUTH[strategy])}


def reasons(caught) -> list[str]:
    "The causes named by the EmptyCodeListWarnings among `caught` (ibis and pandas may warn too)."
    return [x.message.reason for x in caught if issubclass(x.category, EmptyCodeListWarning)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb"
    import_cdm(_require(GIBLEED), out, progress=False)
    return connect(out)


@pytest.fixture(scope="module")
def as_published(tmp_path_factory):
    out = tmp_path_factory.mktemp("gibleed_raw") / "gibleed.duckdb"
    con = duckdb.connect(str(out))
    con.execute("SET threads = 1")
    for p in sorted(_require(GIBLEED).glob("*.parquet")):
        con.execute(f"CREATE TABLE {p.stem} AS SELECT * FROM '{p}'")
    con.close()
    return connect(out)


@pytest.fixture(params=["imported", "as_published"])
def cdm(request):
    return request.getfixturevalue(request.param)


def test_truth_is_the_issues_479():
    assert len(truth("mapped")) == len(truth("as_recorded")) == GI_BLEED_PERSONS
    assert truth("mapped") == truth("as_recorded")
    (events, persons), = _sql("SELECT count(*), count(DISTINCT person_id) FROM '{dir}/condition_occurrence.parquet' "
                              "WHERE condition_source_value = 'K92.2'")
    assert (events, persons) == (GI_BLEED_PERSONS, GI_BLEED_PERSONS)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("code", ["K92.2", "K922"])
def test_k922_reaches_the_gi_bleed_persons(cdm, code, strategy):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyCodeListWarning)
        m = map_codes(cdm, CodeList("gi bleed", "ICD10", [code]))
        persons = set(codelist_events(cdm, m, strategy).to_pandas().person_id)
    assert persons == truth(strategy)
    assert len(persons) == GI_BLEED_PERSONS


def test_mapped_concept_set_is_the_standard_concept(imported):
    m = map_codes(imported, CodeList("gi bleed", "ICD10", ["K922"]))
    (std,), = _sql("SELECT concept_id_2 FROM '{dir}/concept_relationship.parquet' "
                   f"WHERE relationship_id = 'Maps to' AND concept_id_1 IN ({K922_CONCEPTS})")
    assert m.standard_concept_ids == [int(std)]
    assert resolve(imported, m.concept_set()) == [int(std)]


def test_opencodelists_file_report(imported):
    cl = read_opencodelists(FIXTURES / "gi_bleed_icd10_new.csv", "icd10")
    report = mapping_report(imported, cl)
    row = report.set_index("code").loc["K922"]
    assert (row.status, row.persons_mapped, row.persons_as_recorded) == ("mapped", GI_BLEED_PERSONS, GI_BLEED_PERSONS)
    s = report.attrs["summary"]
    assert (s["codes read"], s["found in vocabulary"], s["mapped"], s["unmapped"]) == (3, 1, 1, ["K25", "I850"])
    assert (s["persons mapped"], s["persons as recorded"]) == (GI_BLEED_PERSONS, GI_BLEED_PERSONS)
    assert s["standard concepts by domain"] == {"Condition": 1}


def test_plain_and_prefix_lists(imported):
    # K92.2 and K92.0 (not in GiBleed's vocabulary), and the 3-character K92, which takes K92.2 as OpenSAFELY matches it
    for cl in (read_plain(FIXTURES / "gi_bleed_icd10.txt", "ICD10"), CodeList("k92", "ICD10", ["K92"])):
        for strategy in STRATEGIES:
            assert set(codelist_events(imported, map_codes(imported, cl), strategy).to_pandas().person_id) == truth(strategy)


def test_hdruk_export(imported):
    icd, snomed = read_hdruk(FIXTURES / "hdruk_PH1_codes.json")
    r = mapping_report(imported, icd)
    assert r.set_index("code").status.to_dict() == {"K92.2": "mapped", "K92.0": "not in vocabulary", "K92.8": "excluded"}
    assert r.attrs["summary"]["persons mapped"] == GI_BLEED_PERSONS
    # a SNOMED list reaches the same persons mapped; as recorded it finds nothing, since GiBleed records ICD10CM — and says so
    with pytest.warns(EmptyCodeListWarning, match=r"as recorded\): the codes are not present in the data") as w:
        r = mapping_report(imported, snomed)
    assert reasons(w) == ["not in data"]
    assert (r.attrs["summary"]["persons mapped"], r.attrs["summary"]["persons as recorded"]) == (GI_BLEED_PERSONS, 0)


def test_empty_results_name_their_cause(imported):
    with pytest.warns(EmptyCodeListWarning, match="has no Read concepts") as w:
        map_codes(imported, CodeList("gi bleed", "Read", ["J68..00"]))
    assert reasons(w) == ["unknown vocabulary"]
    with pytest.warns(EmptyCodeListWarning, match="none of its 1 codes is a ICD10 or ICD10CM concept") as w:
        map_codes(imported, CodeList("x", "ICD10", ["Z99.9"]))
    assert reasons(w) == ["not in vocabulary"]
    with pytest.raises(InputError, match="pass ctv3_map="):
        map_codes(imported, CodeList("ctv3", "CTV3", ["XaIJK"]))
