"""Code lists of every UK coding system on healthbench's UK-shaped synthetic CDM (`healthbench.synth`, nbs/02_synth:
Read v2 / SNOMED CT in primary care, ICD-10 and OPCS-4 from hospital episodes, dm+d prescriptions).

For each list, the truth is read without healthbench: `as_recorded` must select exactly the persons whose events'
source values (plain DuckDB SQL on the generated file) are the list's codes, spelled as the test writes them by hand;
`mapped` must select exactly the persons with the standard concepts this file's hand-written expectation says the
codes map to. The mapping report must show the deliberately unmapped codes as 'no mapping' and the deprecated dm+d
ids as replaced.
"""
import warnings

import duckdb
import pytest

from healthbench.cdm import connect
from healthbench.codelists import CodeList, EmptyCodeListWarning, codelist_events, map_codes, mapping_report
from healthbench.synth import generate

N_PERSONS, SEED = 4_000, 11

# standard concepts (real OMOP ids) each list maps to, written by hand from the codes' meaning
T2DM, ESSENTIAL_HT, CKD3 = 201826, 320128, 443597
AMI, MI, CEREBRAL_INFARCTION, CEREBRAL_HAEMORRHAGE, STROKE = 312327, 4329847, 443454, 376713, 381316
PCI, CABG = 4216130, 4336464
ATORVASTATIN, SIMVASTATIN, METFORMIN = 1545958, 1539403, 1503297


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return generate(N_PERSONS, seed=SEED, path=tmp_path_factory.mktemp("uk") / "uk.duckdb", progress=False)


@pytest.fixture(scope="module")
def cdm(path):
    with connect(path) as c:
        yield c


def persons(path, table: str, where: str) -> set[int]:
    "The persons with a row of `table` matching `where`, by plain DuckDB SQL."
    con = duckdb.connect(str(path), read_only=True)
    try: return {p for (p,) in con.execute(f"SELECT DISTINCT person_id FROM {table} WHERE {where}").fetchall()}
    finally: con.close()


def scalar(path, query: str):
    con = duckdb.connect(str(path), read_only=True)
    try: return con.execute(query).fetchone()[0]
    finally: con.close()


def selected(cdm, codelist: CodeList, strategy: str, **options) -> set[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyCodeListWarning)
        events = codelist_events(cdm, map_codes(cdm, codelist, **options), strategy)
    return {int(p) for p in events.to_pyarrow()["person_id"].to_pylist()}


def concept_in(ids) -> str: return f"IN ({', '.join(map(str, ids))})"


# (name, system, codes, {table: as-recorded SQL condition on its source value}, {table: (concept column, standard ids)})
CASES = [
    ("snomed", "SNOMED", ["44054006", "59621000"],
     {"condition_occurrence": "condition_source_value IN ('44054006', '59621000')"},
     {"condition_occurrence": ("condition_concept_id", [T2DM, ESSENTIAL_HT])}),
    # a 3-character category (every I21.x), a dotted and a dotless 4-character code, and I64 (HES writes I64X)
    ("icd10", "ICD10", ["I21", "I63.9", "I619", "I64"],
     {"condition_occurrence": "starts_with(condition_source_value, 'I21') OR condition_source_value IN ('I639', 'I619', 'I64X')"},
     {"condition_occurrence": ("condition_concept_id", [AMI, MI, CEREBRAL_INFARCTION, CEREBRAL_HAEMORRHAGE, STROKE])}),
    # a 5-character Read code stands for its 7-character forms; a 7-character code is itself
    ("read", "Read", ["C10F.", "G20..00", "1Z12."],
     {"condition_occurrence": "starts_with(condition_source_value, 'C10F.') OR condition_source_value = 'G20..00' "
                              "OR starts_with(condition_source_value, '1Z12.')"},
     {"condition_occurrence": ("condition_concept_id", [T2DM, ESSENTIAL_HT, CKD3])}),
    ("opcs4", "OPCS4", ["K75.1", "K753", "K40.2"],
     {"procedure_occurrence": "procedure_source_value IN ('K751', 'K753', 'K402')"},
     {"procedure_occurrence": ("procedure_concept_id", [PCI, CABG])}),
    ("dmd", "dm+d", ["39733011000001106", "325278007"],
     {"drug_exposure": "drug_source_value IN ('39733011000001106', '325278007')"},
     {"drug_exposure": ("drug_concept_id", [ATORVASTATIN, METFORMIN])}),
    # measurements: Read before April 2018, SNOMED CT after (systolic blood pressure, standard concept LOINC 3004249)
    ("read measurement", "Read", ["2469."],
     {"measurement": "starts_with(measurement_source_value, '2469.')"},
     {"measurement": ("measurement_concept_id", [3004249])}),
]


@pytest.mark.parametrize("name, system, codes, recorded, standard", CASES, ids=[c[0] for c in CASES])
def test_as_recorded_selects_the_persons_whose_source_values_are_the_codes(cdm, path, name, system, codes, recorded, standard):
    truth = set().union(*(persons(path, t, w) for t, w in recorded.items()))
    assert truth, f"the synthetic CDM should record {name} codes"
    assert selected(cdm, CodeList(name, system, codes), "as_recorded") == truth


@pytest.mark.parametrize("name, system, codes, recorded, standard", CASES, ids=[c[0] for c in CASES])
def test_mapped_selects_the_persons_with_the_standard_concepts_the_codes_map_to(cdm, path, name, system, codes, recorded, standard):
    truth = set().union(*(persons(path, t, f"{col} {concept_in(ids)}") for t, (col, ids) in standard.items()))
    assert truth
    assert selected(cdm, CodeList(name, system, codes), "mapped") == truth


CTV3_MAP = "ctv3_code,snomed_code\nX40J5,44054006\nXE0Uc,59621000\n"   # type 2 diabetes, essential hypertension


def test_ctv3_through_a_map_to_snomed(cdm, path, tmp_path):
    ctv3_map = tmp_path / "ctv3_to_snomed.csv"
    ctv3_map.write_text(CTV3_MAP)
    cl = CodeList("ctv3", "CTV3", ["X40J5", "XE0Uc"])
    # CTV3 is never recorded here; its SNOMED codes are (primary care from April 2018)
    assert selected(cdm, cl, "as_recorded", ctv3_map=ctv3_map) == persons(
        path, "condition_occurrence", "condition_source_value IN ('44054006', '59621000')")
    assert selected(cdm, cl, "mapped", ctv3_map=ctv3_map) == persons(
        path, "condition_occurrence", f"condition_concept_id {concept_in([T2DM, ESSENTIAL_HT])}")


def test_unmapped_codes_are_reported_as_no_mapping(cdm, path):
    cl = CodeList("hypertension and PCI, unmapped codes", "Read", ["G20z.", "G20.."])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyCodeListWarning)
        report = mapping_report(cdm, cl).set_index("code")
    assert report.loc["G20z.", "status"] == "no mapping"
    assert report.loc["G20..", "status"] == "mapped"
    assert report.loc["G20..", "standard_concept_ids"] == [ESSENTIAL_HT]
    # the unmapped code is still found as recorded
    assert report.loc["G20z.", "events_as_recorded"] == scalar(
        path, "SELECT count(*) FROM condition_occurrence WHERE condition_source_value = 'G20z.00'") > 0
    assert report.loc["G20z.", "events_mapped"] == 0
    opcs = mapping_report(cdm, CodeList("PCI", "OPCS4", ["K75.8", "K75.1"])).set_index("code")
    assert opcs.loc["K75.8", "status"] == "no mapping"
    assert opcs.loc["K75.1", "status"] == "mapped"
    assert opcs.loc["K75.8", "persons_as_recorded"] == scalar(
        path, "SELECT count(DISTINCT person_id) FROM procedure_occurrence WHERE procedure_source_value = 'K758'") > 0


def test_deprecated_dmd_ids_are_reported_as_replaced_and_map_through_their_successor(cdm, path):
    codes = ["320030001", "319996000", "39733011000001106"]   # earlier ids of atorvastatin 20mg and simvastatin 10mg; current atorvastatin 20mg
    cl = CodeList("statins incl. earlier VMP ids", "dm+d", codes)
    report = mapping_report(cdm, cl).set_index("code")
    assert report.loc["320030001", "replaced"] and report.loc["319996000", "replaced"]
    assert not report.loc["39733011000001106", "replaced"]
    assert report.loc["320030001", "status"] == report.loc["319996000", "status"] == "mapped"
    assert report.loc["320030001", "standard_concept_ids"] == [ATORVASTATIN]
    assert report.loc["319996000", "standard_concept_ids"] == [SIMVASTATIN]
    assert selected(cdm, cl, "as_recorded") == persons(path, "drug_exposure", f"drug_source_value IN ({', '.join(repr(c) for c in codes)})")
    assert selected(cdm, cl, "mapped") == persons(path, "drug_exposure", f"drug_concept_id {concept_in([ATORVASTATIN, SIMVASTATIN])}")


def test_the_data_are_uk_shaped(path):
    "Read v2 only before April 2018 in primary care, ICD-10 only at hospital stays, every event with a source code."
    q = lambda s: scalar(path, s)
    assert q("""SELECT count(*) FROM condition_occurrence c JOIN concept s ON s.concept_id = c.condition_source_concept_id
                WHERE s.vocabulary_id = 'Read' AND c.condition_start_date >= DATE '2018-04-01'""") == 0
    assert q("""SELECT count(*) FROM condition_occurrence c JOIN concept s ON s.concept_id = c.condition_source_concept_id
                JOIN visit_occurrence v USING (visit_occurrence_id)
                WHERE s.vocabulary_id = 'ICD10' AND v.visit_concept_id <> 9201""") == 0
    for t, d in (("condition_occurrence", "condition"), ("drug_exposure", "drug"), ("measurement", "measurement"),
                 ("procedure_occurrence", "procedure")):
        assert q(f"SELECT count(*) FROM {t} WHERE {d}_source_value IS NULL OR coalesce({d}_source_concept_id, 0) = 0") == 0
