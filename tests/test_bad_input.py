"""Bad input to the library API, class by class (issue 12, item 7): every bad input gives a healthbench error that
names it.

One parametrized test per class of input -- ATLAS (Circe) JSON, code list files, concept search, cohort JSON, the
synthetic generator. Each case is (id, call, expected class, fragment of the message); the class is checked
exactly, so that malformed ATLAS JSON is not reported as merely `UnsupportedAtlasFeature`, and the fragment names
the problem (and, for definitions, the JSON path of it). The cases are built here from valid inputs (the ATLAS
fixture `incident_t2dm.json`, a small cohort definition), so each differs from a valid one in one way.

The sweeps at the end look for classes of failure nobody listed: they replace every node of valid ATLAS and
cohort definitions, and every argument of the generator, the codelist reader and concept search, with each of a
set of bad values, and require each call to succeed or raise a `HealthbenchError` -- never a bare Python or
database exception.
"""
from __future__ import annotations

import codecs
import copy
import io
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

from healthbench.atlas import from_atlas
from healthbench.cdm import connect
from healthbench.cohort import Cohort
from healthbench.concepts import ConceptSet, from_codelist, search_concepts
from healthbench.errors import (CohortDefinitionError, ConceptError, HealthbenchError, InputError,
                                UnsupportedAtlasFeature)
from healthbench.synth import generate

FIXTURES = Path(__file__).parent / "fixtures" / "atlas"
ATLAS = json.loads((FIXTURES / "incident_t2dm.json").read_text())


def check(call, cls, fragment):
    "`call()` raises exactly `cls` (a healthbench error) with `fragment` in its message."
    with pytest.raises(HealthbenchError) as e:
        call()
    assert type(e.value) is cls, f"{type(e.value).__name__}: {e.value}"
    assert fragment in str(e.value), str(e.value)


# ============================================================================ 1. ATLAS (Circe) JSON
def atlas(edit) -> dict:
    "The fixture, with `edit` applied to its expression."
    d = copy.deepcopy(ATLAS)
    edit(d["expression"])
    return d


def setitem(path: tuple, value):
    "An edit setting the item at `path` (keys and indices) of the expression; `...` deletes it."
    def edit(e):
        for k in path[:-1]: e = e[k]
        if value is ...: del e[path[-1]]
        else: e[path[-1]] = value
    return edit


ITEM = ("ConceptSets", 0, "expression", "items", 0)
CONCEPT = ITEM + ("concept",)
RULE1 = ("InclusionRules", 1, "expression", "CriteriaList", 0)   # a correlated criterion with a window
RULE2 = ("InclusionRules", 2, "expression", "CriteriaList", 0)   # one with a value range
AGE = ("InclusionRules", 0, "expression", "DemographicCriteriaList", 0, "Age")


def deep_atlas(levels: int) -> str:
    "The fixture as JSON text, its second inclusion rule replaced by `levels` nested groups."
    d = atlas(setitem(("InclusionRules", 1, "expression"), "__DEEP__"))
    deep = '{"Type": "ALL", "Groups": [' * levels + '{"Type": "ALL", "CriteriaList": []}' + "]}" * levels
    return json.dumps(d).replace('"__DEEP__"', deep)


def deep_dict(levels: int) -> dict:
    inner = {"Type": "ALL", "CriteriaList": []}
    for _ in range(levels): inner = {"Type": "ALL", "Groups": [inner]}
    return atlas(setitem(("InclusionRules", 1, "expression"), inner))


CDE = CohortDefinitionError
ATLAS_CASES = [
    ("not-json", lambda: from_atlas("{oops"), CDE, "not valid JSON"),
    ("bytes-not-utf8", lambda: from_atlas(b'{"name": "\xe9"}'), CDE, "not valid JSON: the bytes are not text in UTF-8"),
    ("json-list", lambda: from_atlas("[1, 2]"), CDE, "expected an ATLAS cohort definition, a JSON object; got a list"),
    ("json-string", lambda: from_atlas('"cohort"'), CDE, "got the string 'cohort'"),
    ("json-number", lambda: from_atlas("42"), CDE, "got the number 42"),
    ("json-null", lambda: from_atlas("null"), CDE, "got null"),
    ("expression-not-json", lambda: from_atlas({"name": "x", "expression": "{oops"}), CDE, "expression: not valid JSON"),
    ("expression-list", lambda: from_atlas({"name": "x", "expression": []}), CDE, "expression: expected an object, got a list"),
    ("ConceptSets-object", lambda: from_atlas(atlas(setitem(("ConceptSets",), {"id": 0}))), CDE,
     "ConceptSets: expected a list, got an object"),
    ("concept-set-string", lambda: from_atlas(atlas(setitem(("ConceptSets", 0), "Type 2 diabetes"))), CDE,
     "ConceptSets[0]: expected an object, got the string 'Type 2 diabetes'"),
    ("items-object", lambda: from_atlas(atlas(setitem(ITEM[:-1], {}))), CDE,
     "ConceptSets[0].expression.items: expected a list, got an object"),
    ("item-number", lambda: from_atlas(atlas(setitem(ITEM, 201826))), CDE,
     "ConceptSets[0].expression.items[0]: expected an object, got the number 201826"),
    ("item-without-concept", lambda: from_atlas(atlas(setitem(CONCEPT, ...))), CDE,
     "ConceptSets[0].expression.items[0].concept.CONCEPT_ID: required field is missing"),
    ("concept-without-id", lambda: from_atlas(atlas(setitem(CONCEPT + ("CONCEPT_ID",), ...))), CDE,
     "ConceptSets[0].expression.items[0].concept.CONCEPT_ID: required field is missing"),
    ("concept-list", lambda: from_atlas(atlas(setitem(CONCEPT, [201826]))), CDE,
     "ConceptSets[0].expression.items[0].concept: expected an object, got a list"),
    ("CONCEPT_ID-string", lambda: from_atlas(atlas(setitem(CONCEPT + ("CONCEPT_ID",), "201826"))), CDE,
     "items[0].concept.CONCEPT_ID: expected a whole number, got '201826'"),
    ("CONCEPT_ID-float", lambda: from_atlas(atlas(setitem(CONCEPT + ("CONCEPT_ID",), 201826.0))), CDE,
     "CONCEPT_ID: expected a whole number, got 201826.0"),
    ("CONCEPT_ID-bool", lambda: from_atlas(atlas(setitem(CONCEPT + ("CONCEPT_ID",), True))), CDE,
     "CONCEPT_ID: expected a whole number, got True"),
    ("CONCEPT_ID-negative", lambda: from_atlas(atlas(setitem(CONCEPT + ("CONCEPT_ID",), -201826))), CDE,
     "CONCEPT_ID: concept ids run from 1 to 9223372036854775807, got -201826"),
    ("CONCEPT_ID-2**63", lambda: from_atlas(atlas(setitem(CONCEPT + ("CONCEPT_ID",), 2**63))), CDE,
     "concept ids run from 1 to 9223372036854775807, got 9223372036854775808"),
    ("CONCEPT_ID-huge-text", lambda: from_atlas(json.dumps(ATLAS).replace("201826", "1" + "0" * 40)), CDE,
     "concept ids run from 1 to 9223372036854775807, got 1" + "0" * 40),
    ("isExcluded-string", lambda: from_atlas(atlas(setitem(ITEM + ("isExcluded",), "false"))), CDE,
     "items[0].isExcluded: expected true or false, got the string 'false'"),
    ("concept-set-id-twice", lambda: from_atlas(atlas(setitem(("ConceptSets", 1, "id"), 0))), CDE,
     "ConceptSets[1].id: concept set id 0 is used twice"),
    ("concept-set-id-string", lambda: from_atlas(atlas(setitem(("ConceptSets", 1, "id"), "1"))), CDE,
     "ConceptSets[1].id: expected a whole number, got the string '1'"),
    ("PrimaryCriteria-missing", lambda: from_atlas(atlas(setitem(("PrimaryCriteria",), ...))), CDE,
     "PrimaryCriteria: required field is missing"),
    ("PrimaryCriteria-list", lambda: from_atlas(atlas(setitem(("PrimaryCriteria",), []))), CDE,
     "PrimaryCriteria: expected an object, got a list"),
    ("PrimaryCriteria-string", lambda: from_atlas(atlas(setitem(("PrimaryCriteria",), "first T2DM"))), CDE,
     "PrimaryCriteria: expected an object, got the string 'first T2DM'"),
    ("CriteriaList-empty", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "CriteriaList"), []))), CDE,
     "PrimaryCriteria.CriteriaList: a cohort needs a primary criterion"),
    ("CriteriaList-object", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "CriteriaList"),
                                                             {"ConditionOccurrence": {"CodesetId": 0}}))), CDE,
     "PrimaryCriteria.CriteriaList: expected a list, got an object"),
    ("primary-criterion-string", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "CriteriaList", 0), "ConditionOccurrence"))),
     CDE, "PrimaryCriteria.CriteriaList[0]: expected an object, got the string 'ConditionOccurrence'"),
    ("correlated-criterion-number", lambda: from_atlas(atlas(setitem(RULE1, 5))), CDE,
     "InclusionRules[1].expression.CriteriaList[0]: expected an object, got the number 5"),
    ("correlated-without-Criteria", lambda: from_atlas(atlas(setitem(RULE1 + ("Criteria",), ...))), CDE,
     "InclusionRules[1].expression.CriteriaList[0].Criteria: required field is missing"),
    ("group-CriteriaList-object", lambda: from_atlas(atlas(setitem(RULE1[:-1], {}))), CDE,
     "InclusionRules[1].expression.CriteriaList: expected a list, got an object"),
    ("CodesetId-unknown", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "CriteriaList", 0, "ConditionOccurrence", "CodesetId"), 7))),
     CDE, "PrimaryCriteria.CriteriaList[0].ConditionOccurrence.CodesetId: unknown CodesetId 7; the concept set ids are [0, 1, 2, 3]"),
    ("CodesetId-list", lambda: from_atlas(atlas(setitem(RULE1 + ("Criteria", "ConditionOccurrence", "CodesetId"), [1]))), CDE,
     "Criteria.ConditionOccurrence.CodesetId: expected a whole number, got a list"),
    ("window-Days-string", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow", "Start", "Days"), "365"))), CDE,
     "InclusionRules[2].expression.CriteriaList[0].StartWindow.Start.Days: expected a whole number, got the string '365'"),
    ("window-Days-float", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow", "End", "Days"), 0.5))), CDE,
     "StartWindow.End.Days: expected a whole number, got the number 0.5"),
    ("window-Days-huge", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow", "Start", "Days"), 10**30))), CDE,
     "StartWindow.Start.Days: must be at most 36500 days, got 1000000000000000000000000000000"),
    ("window-Coeff-string", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow", "Start", "Coeff"), "-1"))), CDE,
     "StartWindow.Start.Coeff: expected -1 (days before) or 1 (days after), got the string '-1'"),
    ("window-Coeff-2", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow", "Start", "Coeff"), 2))), CDE,
     "StartWindow.Start.Coeff: expected -1 (days before) or 1 (days after), got the number 2"),
    ("window-Start-number", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow", "Start"), -365))), CDE,
     "StartWindow.Start: expected an object, got the number -365"),
    ("StartWindow-list", lambda: from_atlas(atlas(setitem(RULE2 + ("StartWindow",), [-365, 0]))), CDE,
     "InclusionRules[2].expression.CriteriaList[0].StartWindow: expected an object, got a list"),
    ("Occurrence-Count-string", lambda: from_atlas(atlas(setitem(RULE2 + ("Occurrence", "Count"), "1"))), CDE,
     "Occurrence.Count: expected a whole number, got the string '1'"),
    ("Occurrence-Count-huge", lambda: from_atlas(atlas(setitem(RULE2 + ("Occurrence", "Count"), 10**7))), CDE,
     "Occurrence.Count: must be at most 1000000, got 10000000"),
    ("Occurrence-Type-list", lambda: from_atlas(atlas(setitem(RULE2 + ("Occurrence", "Type"), [2]))), CDE,
     "Occurrence.Type: expected 0 (exactly), 1 (at most) or 2 (at least), got a list"),
    ("ObservationWindow-negative", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "ObservationWindow", "PriorDays"), -1))),
     CDE, "PrimaryCriteria.ObservationWindow.PriorDays: must be at least 0 days, got -1"),
    ("ObservationWindow-string", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "ObservationWindow", "PostDays"), "30"))),
     CDE, "PrimaryCriteria.ObservationWindow.PostDays: expected a whole number, got the string '30'"),
    ("ObservationWindow-float", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "ObservationWindow", "PriorDays"), 365.5))),
     CDE, "PrimaryCriteria.ObservationWindow.PriorDays: expected a whole number, got the number 365.5"),
    ("ObservationWindow-list", lambda: from_atlas(atlas(setitem(("PrimaryCriteria", "ObservationWindow"), [365, 0]))), CDE,
     "PrimaryCriteria.ObservationWindow: expected an object, got a list"),
    ("Age-Value-string", lambda: from_atlas(atlas(setitem(AGE + ("Value",), "40"))), CDE,
     "DemographicCriteriaList[0].Age.Value: expected a whole number, got the string '40'"),
    ("Age-Extent-200", lambda: from_atlas(atlas(setitem(AGE + ("Extent",), 200))), CDE,
     "DemographicCriteriaList[0].Age.Extent: must be at most 130, got 200"),
    ("ValueAsNumber-string", lambda: from_atlas(atlas(setitem(RULE2 + ("Criteria", "Measurement", "ValueAsNumber", "Value"), "140"))),
     CDE, "Measurement.ValueAsNumber.Value: expected a number, got the string '140'"),
    ("ValueAsNumber-NaN", lambda: from_atlas(json.dumps(ATLAS).replace('"Value": 140', '"Value": NaN')), CDE,
     "Measurement.ValueAsNumber.Value: expected a finite number, got nan"),
    ("Gender-string-id", lambda: from_atlas(atlas(setitem(AGE[:-1] + ("Gender",), [{"CONCEPT_ID": "8507"}]))), CDE,
     "DemographicCriteriaList[0].Gender[0].CONCEPT_ID: expected a concept id (8507 male, 8532 female), got the string '8507'"),
    ("InclusionRules-object", lambda: from_atlas(atlas(setitem(("InclusionRules",), {}))), CDE,
     "InclusionRules: expected a list, got an object"),
    ("EndStrategy-DateOffset-null", lambda: from_atlas(atlas(setitem(("EndStrategy",), {"DateOffset": None}))), CDE,
     "EndStrategy.DateOffset: required field is missing"),
    ("EndStrategy-Offset-string", lambda: from_atlas(atlas(setitem(("EndStrategy",), {"DateOffset": {"DateField": "StartDate", "Offset": "30"}}))),
     CDE, "EndStrategy.DateOffset.Offset: expected a whole number, got the string '30'"),
    ("nested-300-text", lambda: from_atlas(deep_atlas(300)), CDE, "nested too deeply"),
    ("nested-2000-text", lambda: from_atlas(deep_atlas(2000)), CDE, "nested too deeply"),
    ("nested-300-dict", lambda: from_atlas(deep_dict(300)), CDE, "expression: nested too deeply: more than 64 levels"),
    ("nested-2000-dict", lambda: from_atlas(deep_dict(2000)), CDE, "expression: nested too deeply: more than 64 levels"),
    ("source-number", lambda: from_atlas(123), InputError, "from_atlas needs ATLAS JSON text, the path of a JSON file or a dict; got int"),
    ("source-missing-file", lambda: from_atlas(FIXTURES / "no_such_cohort.json"), InputError, "no_such_cohort.json does not exist"),
    ("source-missing-file-str", lambda: from_atlas(str(FIXTURES / "no_such_cohort.json")), InputError, "does not exist"),
    ("source-folder", lambda: from_atlas(FIXTURES), InputError, "is a folder"),
    ("name-number", lambda: from_atlas(ATLAS, name=5), InputError, "name must be a non-empty string or None; got 5"),
]


@pytest.mark.parametrize("call, cls, fragment", [c[1:] for c in ATLAS_CASES], ids=[c[0] for c in ATLAS_CASES])
def test_atlas(call, cls, fragment):
    check(call, cls, fragment)


def test_atlas_still_imports_and_still_refuses_what_is_unsupported():
    "Malformed input is a `CohortDefinitionError`; a well-formed but untranslated feature stays `UnsupportedAtlasFeature`."
    assert from_atlas(ATLAS).entry.prior_observation_days == 365
    assert from_atlas(json.dumps(ATLAS).encode("utf-16")).name == ATLAS["name"]   # bytes with a byte-order mark
    assert from_atlas(FIXTURES / "af_with_procedure.json").inclusion_rules[0].rule.domain == "procedure"
    era = json.loads(json.dumps(ATLAS)); era["expression"]["EndStrategy"] = {"CustomEra": {"DrugCodesetId": 0}}
    check(lambda: from_atlas(era), UnsupportedAtlasFeature, "EndStrategy.CustomEra")


# ============================================================================ 2. code lists
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
CSV = "code,term\n44054006,Diabète de type 2\n22298006,Infarctus du myocarde\n"

CODELIST_CASES = [
    ("random-bytes", random.Random(1).randbytes(4000), InputError, "line 1: a NUL byte; this is not a text file"),
    ("random-bytes-without-NUL", bytes(b for b in random.Random(2).randbytes(4000) if b), InputError,
     "is not text in UTF-8 or Latin-1"),
    ("png", PNG, InputError, "line 3: a NUL byte; this is not a text file"),
    ("windows-1252", "code,term\n44054006,\u2018Type 2\u2019 diabetes\n".encode("cp1252"), InputError,
     "line 2: '\\x91' is not text in UTF-8 or Latin-1"),
    ("utf-16-without-bom", CSV.encode("utf-16-le"), InputError, "(or it is UTF-16 without a byte-order mark)"),
    ("utf-16-bom-odd-bytes", codecs.BOM_UTF16_LE + "code\n1\n".encode("utf-16-le") + b"\x00", InputError,
     "line 3: not valid UTF-16 text, although the file starts with a UTF-16 byte-order mark"),
    ("utf-8-bom-then-latin-1", codecs.BOM_UTF8 + CSV.encode("latin-1"), InputError, "not valid UTF-8-SIG text"),
    ("mixed-utf-8-and-latin-1", CSV.encode("utf-8") + "1234,Rétinopathie\n".encode("latin-1"), InputError,
     "line 4: byte 0xe9 is not UTF-8, yet line 2 is UTF-8 text: the file mixes encodings"),
    ("no-code-column", b"snomed_id,term\n44054006,x\n", InputError, "has no 'code' column; columns are ['snomed_id', 'term']"),
    ("empty", b"", InputError, "is empty: a code list needs a header row"),
    ("blank-lines", b"\n \n\n", InputError, "is empty"),
    ("field-over-csv-limit", b"code\n1\n" + b"x" * 200_000 + b"\n", InputError, "line 3: not a CSV file this reader understands"),
    ("header-only", b"code,term\n", ConceptError, "has no codes in its 'code' column"),
]


@pytest.mark.parametrize("data, cls, fragment", [c[1:] for c in CODELIST_CASES], ids=[c[0] for c in CODELIST_CASES])
def test_codelist_file(tmp_path, data, cls, fragment):
    path = tmp_path / "list.csv"
    path.write_bytes(data)
    check(lambda: from_codelist(path), cls, fragment)
    assert str(path) in str(pytest.raises(HealthbenchError, from_codelist, path).value)   # the message names the file


@pytest.mark.parametrize("call, fragment", [
    (lambda tmp: from_codelist(tmp / "missing.csv"), "missing.csv does not exist"),
    (lambda tmp: from_codelist(tmp), "is a folder; give the CSV file in it"),
    (lambda tmp: from_codelist(5), "from_codelist needs a file path or an open file; got int"),
    (lambda tmp: from_codelist(None), "got NoneType"),
    (lambda tmp: from_codelist(io.StringIO("code\n1\x00\n")), "line 2: '\\x00' is not text"),
    (lambda tmp: from_codelist(io.StringIO(CSV), code_column=5), "code_column must be a non-empty string; got 5"),
    (lambda tmp: from_codelist(io.StringIO(CSV), vocabulary=""), "vocabulary must be a non-empty string; got ''"),
    (lambda tmp: from_codelist(io.StringIO(CSV), descendants="no"), "descendants must be True or False; got 'no'"),
], ids=["missing", "folder", "number", "none", "text-with-NUL", "code_column", "vocabulary", "descendants"])
def test_codelist_arguments(tmp_path, call, fragment):
    check(lambda: call(tmp_path), InputError, fragment)


@pytest.mark.parametrize("data", [CSV.encode("utf-8"), codecs.BOM_UTF8 + CSV.encode("utf-8"), CSV.encode("utf-16"),
                                  codecs.BOM_UTF16_BE + CSV.encode("utf-16-be"), CSV.encode("utf-32")],
                         ids=["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom", "utf-32-bom"])
def test_codelist_encodings_with_byte_order_marks_are_read(tmp_path, data):
    (tmp_path / "list.csv").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_codelist(tmp_path / "list.csv").codes == {"SNOMED": ["22298006", "44054006"]}
    assert from_codelist(io.BytesIO(data)).codes == {"SNOMED": ["22298006", "44054006"]}


def test_codelist_latin_1_is_read_with_a_warning_naming_file_and_line(tmp_path):
    (tmp_path / "latin1.csv").write_bytes(CSV.encode("latin-1"))
    with pytest.warns(UserWarning, match=r"latin1\.csv is not UTF-8 \(line 2: byte 0xe8\); it was read as Latin-1"):
        assert from_codelist(tmp_path / "latin1.csv").codes == {"SNOMED": ["22298006", "44054006"]}


# ============================================================================ 3. concept search
@pytest.fixture(scope="module")
def cdm(tmp_path_factory):
    with connect(generate(200, seed=1, path=tmp_path_factory.mktemp("cdm") / "cdm.duckdb", progress=False)) as c:
        yield c


SEARCH_CASES = [
    ("NUL", lambda cdm: search_concepts(cdm, "\x00"), "search text contains a NUL character"),
    ("NUL-inside", lambda cdm: search_concepts(cdm, "stat\x00in"), "search text contains a NUL character"),
    ("empty", lambda cdm: search_concepts(cdm, ""), "search text must be a non-empty string; got ''"),
    ("blank", lambda cdm: search_concepts(cdm, "   "), "search text must be a non-empty string"),
    ("number", lambda cdm: search_concepts(cdm, 201826), "search text must be a non-empty string; got 201826"),
    ("bytes", lambda cdm: search_concepts(cdm, b"statin"), "search text must be a non-empty string; got b'statin'"),
    ("none", lambda cdm: search_concepts(cdm, None), "got None"),
    ("limit-0", lambda cdm: search_concepts(cdm, "statin", limit=0), "limit must be a whole number of rows from 1 to 10,000; got 0"),
    ("limit-negative", lambda cdm: search_concepts(cdm, "statin", limit=-1), "limit must be a whole number of rows from 1 to 10,000; got -1"),
    ("limit-bool", lambda cdm: search_concepts(cdm, "statin", limit=True), "got True"),
    ("limit-float", lambda cdm: search_concepts(cdm, "statin", limit=2.5), "got 2.5"),
    ("limit-string", lambda cdm: search_concepts(cdm, "statin", limit="10"), "got '10'"),
    ("limit-huge", lambda cdm: search_concepts(cdm, "statin", limit=10**30), "got 1000000000000000000000000000000"),
    ("limit-none", lambda cdm: search_concepts(cdm, "statin", limit=None), "got None"),
    ("standard_only-string", lambda cdm: search_concepts(cdm, "statin", standard_only="no"), "standard_only must be True or False; got 'no'"),
    ("domain-number", lambda cdm: search_concepts(cdm, "statin", domain=5), "unknown domain 5"),
]


@pytest.mark.parametrize("call, fragment", [c[1:] for c in SEARCH_CASES], ids=[c[0] for c in SEARCH_CASES])
def test_search_concepts(cdm, call, fragment):
    check(lambda: call(cdm), InputError, fragment)


def test_search_concepts_good_input_still_works(cdm):
    assert search_concepts(cdm, "44054006").concept_id.tolist() == [201826]    # a code typed as text
    assert len(search_concepts(cdm, "statin", limit=np.int64(2))) == 2
    assert len(search_concepts(cdm, "x'; DROP TABLE concept; --")) == 0


# ============================================================================ 4. cohort JSON
COHORT = {
    "schema_version": 1, "name": "Type 2 diabetes with a high reading", "description": "",
    "concept_sets": [{"name": "type 2 diabetes", "include": [201826]}, {"name": "systolic BP", "include": [3004249]}],
    "entry": {"concept_set": "type 2 diabetes", "domain": "condition", "prior_observation_days": 365},
    "demographics": {"age": {"min": 40, "max": 80}, "sex": None, "ethnicity": None, "imd_quintile": None},
    "inclusion_rules": [
        {"name": "high BP", "rule": {"criterion": {"concept_set": "systolic BP", "domain": "measurement",
                                                   "window": {"start": -365, "end": 0}, "count": {"op": "at_least", "n": 1},
                                                   "value": {"min": 140, "max": None}}}}],
    "exit": {"strategy": "fixed", "days": 365},
}
CRIT = ("inclusion_rules", 0, "rule", "criterion")


def cohort(path: tuple, value) -> dict:
    "The cohort definition with the item at `path` set to `value`."
    d = copy.deepcopy(COHORT)
    t = d
    for k in path[:-1]: t = t[k]
    t[path[-1]] = value
    return d


def cohort_text(path: tuple, literal: str) -> str:
    "The cohort definition as JSON text, the item at `path` written as `literal` (NaN, 1e400, ...)."
    return json.dumps(cohort(path, "__X__")).replace('"__X__"', literal)


def deep_rule(levels: int) -> dict:
    rule = {"criterion": {"concept_set": "systolic BP", "domain": "measurement"}}
    for _ in range(levels): rule = {"all": [rule]}
    return cohort(CRIT[:-1], rule)


def deep_text(levels: int) -> str:
    leaf = '{"criterion": {"concept_set": "systolic BP", "domain": "measurement"}}'
    return json.dumps(cohort(CRIT[:-1], "__X__")).replace('"__X__"', '{"all": [' * levels + leaf + "]}" * levels)


def cyclic() -> dict:
    d = copy.deepcopy(COHORT)
    d["inclusion_rules"][0]["rule"] = {"all": []}
    d["inclusion_rules"][0]["rule"]["all"].append(d["inclusion_rules"][0]["rule"])
    return d


fd, fj = Cohort.from_dict, Cohort.from_json
COHORT_CASES = [
    ("window-1e400", lambda: fj(cohort_text(CRIT + ("window", "start"), "1e400")),
     "inclusion_rules[0].rule.criterion.window.start: expected a whole number, got the number inf"),
    ("window-10**30", lambda: fd(cohort(CRIT + ("window", "end"), 10**30)),
     "inclusion_rules[0].rule.criterion.window.end: must be at most 36500 days, got 1000000000000000000000000000000"),
    ("window-below-bound", lambda: fd(cohort(CRIT + ("window", "start"), -36_501)),
     "window.start: must be at least -36500 days, got -36501"),
    ("window-string", lambda: fd(cohort(CRIT + ("window", "start"), "-365")),
     "window.start: expected a whole number, got the string '-365'"),
    ("window-list", lambda: fd(cohort(CRIT + ("window",), [-365, 0])),
     "inclusion_rules[0].rule.criterion.window: expected an object, got a list"),
    ("prior-days-10**30", lambda: fd(cohort(("entry", "prior_observation_days"), 10**30)),
     "entry.prior_observation_days: must be at most 36500 days"),
    ("prior-days-string", lambda: fd(cohort(("entry", "prior_observation_days"), "365")),
     "entry.prior_observation_days: expected a whole number, got the string '365'"),
    ("exit-days-1e400", lambda: fj(cohort_text(("exit", "days"), "1e400")), "exit.days: expected a whole number, got the number inf"),
    ("exit-days-huge", lambda: fd(cohort(("exit", "days"), 10**30)), "exit.days: must be at most 36500 days"),
    ("age-10**30", lambda: fd(cohort(("demographics", "age", "max"), 10**30)), "demographics.age.max: must be at most 130, got 1000"),
    ("age-131", lambda: fd(cohort(("demographics", "age", "max"), 131)), "demographics.age.max: must be at most 130, got 131"),
    ("age-1e400", lambda: fj(cohort_text(("demographics", "age", "min"), "1e400")),
     "demographics.age.min: expected a whole number, got the number inf"),
    ("age-huge-int-literal", lambda: fj(cohort_text(("demographics", "age", "min"), "9" * 5000)),
     "not valid JSON for healthbench: a number has more than 4,300 digits"),
    ("concept-id-10**30", lambda: fd(cohort(("concept_sets", 0, "include"), [10**30])),
     "concept_sets[0]: concept set 'type 2 diabetes': include must be integer concept ids from 1 to 9223372036854775807"),
    ("concept-id-0", lambda: fd(cohort(("concept_sets", 0, "include"), [0])), "include must be integer concept ids from 1 to"),
    ("concept-id-text", lambda: fd(cohort(("concept_sets", 0, "include"), ["201826"])), "got ['201826']"),
    ("include-not-list", lambda: fd(cohort(("concept_sets", 0, "include"), 201826)), "include must be a list of concept ids; got 201826"),
    ("codes-string", lambda: fd(cohort(("concept_sets", 0, "codes"), {"SNOMED": "44054006"})),
     "codes['SNOMED'] must be a list of codes; got '44054006'"),
    ("codes-list", lambda: fd(cohort(("concept_sets", 0, "codes"), ["44054006"])), "codes must map vocabulary ids to lists of codes"),
    ("count-10**30", lambda: fd(cohort(CRIT + ("count", "n"), 10**30)), "count.n: must be at most 1000000"),
    ("count-negative", lambda: fd(cohort(CRIT + ("count", "n"), -1)), "count.n: must be at least 0, got -1"),
    ("value-NaN", lambda: fj(cohort_text(CRIT + ("value", "min"), "NaN")),
     "inclusion_rules[0].rule.criterion.value.min: expected a finite number, got nan"),
    ("value-Infinity", lambda: fj(cohort_text(CRIT + ("value", "max"), "Infinity")), "value.max: expected a finite number, got inf"),
    ("value-minus-Infinity", lambda: fj(cohort_text(CRIT + ("value", "min"), "-Infinity")), "value.min: expected a finite number, got -inf"),
    ("value-1e400", lambda: fj(cohort_text(CRIT + ("value", "max"), "1e400")), "value.max: expected a finite number, got inf"),
    ("value-10**30", lambda: fd(cohort(CRIT + ("value", "min"), 10**30)), "value.min: must be between -1e+15 and 1e+15"),
    ("schema_version-true", lambda: fd(cohort(("schema_version",), True)), "schema_version: expected a whole number, got true"),
    ("schema_version-string", lambda: fd(cohort(("schema_version",), "1")), "schema_version: expected a whole number, got the string '1'"),
    ("schema_version-float", lambda: fd(cohort(("schema_version",), 1.0)), "schema_version: expected a whole number, got the number 1.0"),
    ("schema_version-null", lambda: fd(cohort(("schema_version",), None)), "schema_version: expected a whole number, got null"),
    ("schema_version-future", lambda: fd(cohort(("schema_version",), 2)),
     "schema_version: unknown schema version 2, newer than this healthbench, which reads version 1: upgrade healthbench"),
    ("schema_version-0", lambda: fd(cohort(("schema_version",), 0)), "schema_version: unknown schema version 0; this healthbench reads version 1"),
    ("descendants-no", lambda: fd(cohort(("concept_sets", 0, "descendants"), "no")),
     "concept_sets[0]: concept set 'type 2 diabetes': descendants must be True or False; got 'no'"),
    ("descendants-1", lambda: fd(cohort(("concept_sets", 0, "descendants"), 1)), "descendants must be True or False; got 1"),
    ("entry-list", lambda: fd(cohort(("entry",), [])), "entry: expected an object, got a list"),
    ("demographics-list", lambda: fd(cohort(("demographics",), [])), "demographics: expected an object, got a list"),
    ("sex-string", lambda: fd(cohort(("demographics", "sex"), "male")), "demographics.sex: expected a list, got the string 'male'"),
    ("sex-nested-list", lambda: fd(cohort(("demographics", "sex"), [["male"]])), "demographics.sex[0]: ['male'] is not one of ['male', 'female']"),
    ("imd-true", lambda: fd(cohort(("demographics", "imd_quintile"), [True])), "demographics.imd_quintile[0]: True is not one of [1, 2, 3, 4, 5]"),
    ("imd-float", lambda: fd(cohort(("demographics", "imd_quintile"), [1.0])), "demographics.imd_quintile[0]: 1.0 is not one of"),
    ("description-number", lambda: fd(cohort(("description",), 5)), "description: expected a string, got the number 5"),
    ("rule-name-number", lambda: fd(cohort(("inclusion_rules", 0, "name"), 5)), "inclusion_rules[0].name: expected a non-empty string, got the number 5"),
    ("name-with-NUL", lambda: fd(cohort(("name",), "T2DM\x00")), "name: contains a NUL character"),
    ("unknown-key", lambda: fd(cohort(CRIT + ("window", "begin"), 0)),
     "inclusion_rules[0].rule.criterion.window.begin: unknown field; allowed here: ['end', 'start']"),
    ("unknown-top-level-key", lambda: fd(cohort(("version",), 1)), "version: unknown field"),
    ("nested-300-dict", lambda: fd(deep_rule(300)), "inclusion_rules: nested too deeply: more than 64 levels of objects and lists"),
    ("nested-2000-dict", lambda: fd(deep_rule(2000)), "inclusion_rules: nested too deeply: more than 64 levels"),
    ("nested-300-text", lambda: fj(deep_text(300)), "inclusion_rules: nested too deeply: more than 64 levels"),
    ("nested-2000-text", lambda: fj(deep_text(2000)), "nested too deeply: JSON with more than 64 levels of objects and lists is refused"),
    ("cycle", lambda: fd(cyclic()), "inclusion_rules: nested too deeply"),
    ("not-an-object", lambda: fd([COHORT]), "expected an object, got a list"),
    ("json-not-text", lambda: fj(5), "expected JSON text, got the number 5"),
    ("json-bytes-not-utf8", lambda: fj(b'{"name": "\xe9"}'), "not valid JSON: the bytes are not text in UTF-8"),
    ("not-json", lambda: fj("{not json"), "not valid JSON"),
]


@pytest.mark.parametrize("call, fragment", [c[1:] for c in COHORT_CASES], ids=[c[0] for c in COHORT_CASES])
def test_cohort_json(call, fragment):
    check(call, CohortDefinitionError, fragment)


def test_cohort_json_bounds_admit_their_limits():
    "The bounds are inclusive: the extreme values are accepted and round-trip."
    d = cohort(CRIT + ("window",), {"start": -36_500, "end": 36_500})
    d["demographics"]["age"] = {"min": 0, "max": 130}
    d["concept_sets"][0]["include"] = [1, 2**63 - 1]
    d["inclusion_rules"][0]["rule"]["criterion"]["count"]["n"] = 1_000_000
    c = Cohort.from_dict(d)
    assert Cohort.from_json(c.to_json()) == c
    assert Cohort.from_json(("\ufeff" + c.to_json()).encode("utf-8")) == c     # bytes with a byte-order mark


# ============================================================================ 5. the synthetic generator
SYNTH_CASES = [
    ("persons-10**12", dict(n_persons=10**12), "n_persons must be at most 100,000,000 (about 38 GB on disk); got 1,000,000,000,000"),
    ("persons-10**5000", dict(n_persons=10**5000), "got a number of more than 4,000 digits"),
    ("persons-bool", dict(n_persons=True), "n_persons must be a whole number of persons, e.g. 10_000; got True"),
    ("persons-float", dict(n_persons=1000.0), "n_persons must be a whole number of persons, e.g. 10_000; got 1000.0"),
    ("persons-string", dict(n_persons="1000"), "got '1000'"),
    ("persons-none", dict(n_persons=None), "got None"),
    ("persons-0", dict(n_persons=0), "n_persons must be at least 1; got 0"),
    ("seed-negative", dict(seed=-1), "seed must be a non-negative integer, at most 2**63 - 1; got -1"),
    ("seed-2**64", dict(seed=2**64), "got 18,446,744,073,709,551,616"),
    ("seed-bool", dict(seed=True), "seed must be a non-negative integer, at most 2**63 - 1; got True"),
    ("seed-float", dict(seed=1.5), "got 1.5"),
    ("seed-string", dict(seed="1"), "got '1'"),
    ("path-folder", dict(path="{tmp}"), "is a folder; give a file name such as"),
    ("path-in-missing-folder", dict(path="{tmp}/no_such_folder/cdm.duckdb"), "folder {tmp}/no_such_folder does not exist"),
    ("path-under-a-file", dict(path="{tmp}/a_file/cdm.duckdb"), "a_file is a file, not a folder"),
    ("path-number", dict(path=5), "path must be a file name, a str or a Path; got int"),
    ("path-none", dict(path=None), "got NoneType"),
    ("path-NUL", dict(path="cdm\x00.duckdb"), "path contains a NUL character"),
    ("overwrite-string", dict(overwrite="yes"), "overwrite must be True or False; got 'yes'"),
    ("progress-number", dict(progress=0), "progress must be True or False; got 0"),
]


def synth_args(tmp_path, **kw) -> dict:
    (tmp_path / "a_file").write_text("not a folder")
    args = dict(n_persons=10, seed=0, path=tmp_path / "cdm.duckdb", progress=False)
    args.update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kw.items()})
    return args


@pytest.mark.parametrize("kw, fragment", [c[1:] for c in SYNTH_CASES], ids=[c[0] for c in SYNTH_CASES])
def test_synth_generate(tmp_path, kw, fragment):
    args = synth_args(tmp_path, **kw)
    check(lambda: generate(**args), InputError, fragment.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]   # nothing written


# ============================================================================ sweeps: nothing escapes the hierarchy
BAD = [None, True, False, 0, -1, 2.5, 10**30, -10**30, 2**63, float("nan"), float("inf"), "", "x", "\x00",
       [], [1], {}, {"a": 1}, [[[]]]]


def paths(x, p=()):
    "Every path (tuple of keys and indices) into `x`, the root first."
    yield p
    if isinstance(x, dict):
        for k, v in x.items(): yield from paths(v, p + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x): yield from paths(v, p + (i,))


def replaced(x, p, v):
    if not p: return v
    x = copy.deepcopy(x)
    t = x
    for k in p[:-1]: t = t[k]
    t[p[-1]] = v
    return x


def escapes(call) -> str | None:
    "None if `call()` returns or raises a healthbench error; else the foreign exception."
    try: call()
    except HealthbenchError: return None
    except Exception as e: return f"{type(e).__name__}: {e}"[:200]
    return None


@pytest.mark.parametrize("doc, read", [
    (ATLAS, from_atlas),
    (json.loads((FIXTURES / "statin_initiators.json").read_text()), from_atlas),
    (COHORT, Cohort.from_dict),
], ids=["atlas-incident_t2dm", "atlas-statin_initiators", "cohort"])
def test_every_node_replaced_by_bad_values_gives_only_healthbench_errors(doc, read):
    foreign = {}
    for p in paths(doc):
        for v in BAD:
            got = escapes(lambda: read(replaced(doc, p, v)))
            if got: foreign.setdefault(got, []).append((p, v))
    assert not foreign, "\n".join(f"{k} at {v[:3]}" for k, v in foreign.items())


def test_every_argument_replaced_by_bad_values_gives_only_healthbench_errors(tmp_path, cdm, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a bad value that is a valid file name ("x") is written here
    (tmp_path / "list.csv").write_text(CSV)
    calls = {
        "generate": (lambda **kw: generate(**{**synth_args(tmp_path), "n_persons": 10, "overwrite": True, **kw}),
                     ["n_persons", "seed", "path", "overwrite", "progress"]),
        "from_codelist": (lambda **kw: from_codelist(**{"source": tmp_path / "list.csv", **kw}),
                          ["source", "name", "vocabulary", "code_column", "category_column", "category", "descendants", "on_unknown"]),
        "search_concepts": (lambda **kw: search_concepts(**{"cdm": cdm, "text": "statin", **kw}),
                            ["text", "domain", "standard_only", "limit"]),
        "ConceptSet": (lambda **kw: ConceptSet(**{"name": "x", "include": [201826], **kw}),
                       ["name", "include", "codes", "descendants", "exclude", "on_unknown", "codelist"]),
        "ConceptSet.codelist": (lambda **kw: ConceptSet(name="x", codelist={"system": "ICD10", "codes": ["K92.2"], **kw}),
                                ["system", "codes", "exclude", "strategy"]),
    }
    foreign = {}
    for fn, (call, args) in calls.items():
        for a in args:
            for v in BAD:
                got = escapes(lambda: call(**{a: v}))
                if got: foreign.setdefault(got, []).append((fn, a, v))
    assert not foreign, "\n".join(f"{k} at {v[:3]}" for k, v in foreign.items())
