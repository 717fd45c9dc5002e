"""Concept sets and cohorts on real OMOP CDMs that nobody here wrote (`../shared/data/omop`, read-only).

GiBleed (OHDSI Eunomia, CDM v5.3.1, Parquet with ids stored as DOUBLE) has a vocabulary trimmed to the 444 concepts
its events use, while its `concept_ancestor` keeps their ancestors: COPD (255573) is not a row of its `concept`
table. The MIMIC-IV demo (v5.3.1, CSV) has no `concept_ancestor` and a `concept` table of MIMIC's local concepts
only, though its events carry standard concept ids.

Each is loaded into a DuckDB CDM in a temp folder with the types healthbench reads (BIGINT ids, DATE dates), as
`healthbench import-cdm` will write it, and the engine's answers are checked against plain SQL on the source files.
The acceptance figure: COPD {255573, 258780} with descendants selects 125 persons on GiBleed, as OHDSI's Circe does.

The data are found at `../shared/data` beside the project (or `HB_SHARED_DATA`); without them the tests are skipped,
except under CI, where that is a failure.
"""
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from healthbench.cdm import connect
from healthbench.cohort import Cohort, at_least, generate
from healthbench.concepts import concept_set, resolve, search_concepts
from healthbench.errors import EmptyConceptSetWarning, UnknownConceptWarning

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HB_SHARED_DATA", ROOT.parent / "shared" / "data")) / "omop"
GIBLEED, MIMIC = DATA / "gibleed_5.3", DATA / "mimic_iv_demo_5.3"
COPD = (255573, 258780)

TEXT_IDS = {"vocabulary_id", "domain_id", "concept_class_id", "relationship_id"}   # the OMOP "_id" columns that are text


def _need(folder: Path):
    if not folder.is_dir():
        if os.environ.get("CI"): pytest.fail(f"{folder} is missing: CI runs with shared/ beside the project")
        pytest.skip(f"{folder} is missing (the shared public test data)")


def typed_cdm(out: Path, sources: dict[str, str]):
    """A DuckDB file at `out` holding each table of `sources` (name -> a DuckDB table expression reading the source
    file), with ids cast to BIGINT, dates to DATE, datetimes to TIMESTAMP and all-null boolean columns to VARCHAR."""
    with duckdb.connect(str(out)) as con:
        for name, src in sources.items():
            cols = []
            for col, typ, *_ in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall():
                c = col.lower()
                kind = ("BIGINT" if c.endswith("_id") and c not in TEXT_IDS else "DATE" if c.endswith("_date")
                        else "TIMESTAMP" if c.endswith("_datetime") else "VARCHAR" if typ == "BOOLEAN" else None)
                cols.append(f'CAST("{col}" AS {kind}) AS {c}' if kind else f'"{col}" AS {c}')
            con.execute(f"CREATE TABLE {name} AS SELECT {', '.join(cols)} FROM {src}")
    return connect(out, validate=False)


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory):
    _need(GIBLEED)
    tables = ["person", "observation_period", "condition_occurrence", "procedure_occurrence", "concept", "concept_ancestor"]
    cdm = typed_cdm(tmp_path_factory.mktemp("gibleed") / "gibleed.duckdb",
                    {t: f"read_parquet('{GIBLEED / (t + '.parquet')}')" for t in tables})
    yield cdm
    cdm.close()


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    _need(MIMIC)
    tables = ["person", "observation_period", "condition_occurrence", "concept"]
    cdm = typed_cdm(tmp_path_factory.mktemp("mimic") / "mimic.duckdb",
                    {t: f"read_csv('{MIMIC / (t + '.csv')}', header=true)" for t in tables})
    yield cdm
    cdm.close()


def plain(sql: str):
    "One value from plain DuckDB SQL on the source files ({G}: GiBleed's folder, {M}: MIMIC's)."
    with duckdb.connect() as con:
        return con.execute(sql.replace("{G}", str(GIBLEED)).replace("{M}", str(MIMIC))).fetchone()[0]


@contextmanager
def strict():
    "Concept warnings become errors: the acceptance cases must resolve cleanly."
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyConceptSetWarning)
        warnings.simplefilter("error", UnknownConceptWarning)
        yield


def test_copd_on_gibleed_gives_125_persons_as_plain_sql(gibleed):
    # independent: the two ids and every descendant concept_ancestor lists for them, on the Parquet files as published
    ids = "(255573, 258780)"
    persons = plain(f"""SELECT count(DISTINCT person_id) FROM '{{G}}/condition_occurrence.parquet'
        WHERE condition_concept_id IN {ids}
           OR condition_concept_id IN (SELECT descendant_concept_id FROM '{{G}}/concept_ancestor.parquet'
                                       WHERE ancestor_concept_id IN {ids})""")
    in_period = plain(f"""SELECT count(DISTINCT co.person_id) FROM '{{G}}/condition_occurrence.parquet' co
        JOIN '{{G}}/observation_period.parquet' op ON op.person_id = co.person_id
         AND co.condition_start_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date
        WHERE co.condition_concept_id IN (SELECT descendant_concept_id FROM '{{G}}/concept_ancestor.parquet'
                                          WHERE ancestor_concept_id IN {ids}) OR co.condition_concept_id IN {ids}""")
    assert persons == in_period == 125
    with strict():
        result = generate(gibleed, Cohort.builder("COPD").entry(concept_set("COPD", *COPD), "condition", occurrence="all").build())
    att = result.attrition
    assert att.persons.tolist()[0] == in_period and att.step.tolist()[0] == "qualifying events"
    assert result.to_pandas().person_id.nunique() == 125
    # every condition occurrence of the set in an observation period is a record (Circe's events, ties included) ...
    in_set = f"""(co.condition_concept_id IN (SELECT descendant_concept_id FROM '{{G}}/concept_ancestor.parquet'
                                              WHERE ancestor_concept_id IN {ids}) OR co.condition_concept_id IN {ids})"""
    joined = f"""FROM '{{G}}/condition_occurrence.parquet' co JOIN '{{G}}/observation_period.parquet' op ON op.person_id = co.person_id
         AND co.condition_start_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date WHERE {in_set}"""
    assert att.records.iloc[0] == plain(f"SELECT count(*) {joined}")
    # ... and, all ending at their observation period's end, they merge into one cohort row per person and period
    periods = plain(f"SELECT count(*) FROM (SELECT DISTINCT co.person_id, op.observation_period_id {joined})")
    assert len(result.to_pandas()) == att.records.iloc[-1] == periods


def test_root_missing_from_gibleeds_concept_table_keeps_its_descendants(gibleed):
    assert plain("SELECT count(*) FROM '{G}/concept.parquet' WHERE concept_id = 255573") == 0
    assert plain("SELECT count(*) FROM '{G}/concept_ancestor.parquet' WHERE ancestor_concept_id = 255573") > 0
    below = plain("""SELECT list(DISTINCT CAST(ca.descendant_concept_id AS BIGINT) ORDER BY 1) FROM '{G}/concept_ancestor.parquet' ca
        JOIN '{G}/concept.parquet' c ON c.concept_id = ca.descendant_concept_id WHERE ca.ancestor_concept_id = 255573""")
    assert below == [261325]                            # pulmonary emphysema
    with strict():
        assert resolve(gibleed, concept_set("COPD (root only)", 255573)) == below
    assert resolve(gibleed, concept_set("COPD", *COPD)) == [258780, 261325]
    # without descendants the root, absent from `concept`, stands for nothing here: an empty set, and why
    with pytest.warns(EmptyConceptSetWarning, match="not rows of this CDM's concept table") as got:
        assert resolve(gibleed, concept_set("COPD root", 255573, descendants=False)) == []
    assert got[0].message.reason == "no descendants"


def test_search_finds_a_concept_id_typed_as_text_on_gibleed(gibleed):
    found = search_concepts(gibleed, "258780")
    assert found.concept_id.tolist()[0] == 258780 and found.concept_name.iloc[0] == "Emphysematous bronchitis"
    assert search_concepts(gibleed, "255573").empty   # not a concept of this vocabulary


def test_procedure_cohort_on_gibleed_matches_plain_sql(gibleed):
    # every cholecystectomy (4242997, with laparoscopic cholecystectomy below it) inside an observation period
    chole = concept_set("cholecystectomy", 4242997)
    want = plain("""SELECT count(DISTINCT po.person_id) FROM '{G}/procedure_occurrence.parquet' po
        JOIN '{G}/observation_period.parquet' op ON op.person_id = po.person_id
         AND po.procedure_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date
        WHERE po.procedure_concept_id IN (SELECT descendant_concept_id FROM '{G}/concept_ancestor.parquet' WHERE ancestor_concept_id = 4242997)""")
    result = generate(gibleed, Cohort.builder("chole").entry(chole, "procedure", occurrence="all").build())
    assert want > 0 and result.attrition.persons.tolist()[-1] == want
    # COPD records with a wound suture (4125906) within a year either side, in the record's observation period
    suture = concept_set("suture of open wound", 4125906)
    near = generate(gibleed, Cohort.builder("COPD").entry(concept_set("COPD", *COPD), "condition", occurrence="all")
                    .require("suture within a year", at_least(1, suture, "procedure", window=(-365, 365))).build())
    want_near = plain("""SELECT count(DISTINCT co.person_id) FROM '{G}/condition_occurrence.parquet' co
        JOIN '{G}/observation_period.parquet' op ON op.person_id = co.person_id
         AND co.condition_start_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date
        JOIN '{G}/procedure_occurrence.parquet' po ON po.person_id = co.person_id
         AND po.procedure_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date
         AND po.procedure_date BETWEEN co.condition_start_date - 365 AND co.condition_start_date + 365
        WHERE po.procedure_concept_id IN (SELECT descendant_concept_id FROM '{G}/concept_ancestor.parquet' WHERE ancestor_concept_id = 4125906)
          AND co.condition_concept_id IN (SELECT descendant_concept_id FROM '{G}/concept_ancestor.parquet' WHERE ancestor_concept_id IN (255573, 258780))""")
    assert want_near > 0 and near.attrition.persons.tolist()[-1] == want_near


def test_standard_concepts_on_mimic_give_an_empty_cohort_that_says_why(mimic):
    # MIMIC's events carry COPD's standard ids, but its vocabulary has neither them nor a hierarchy: as with Circe,
    # the codeset is empty; healthbench says so instead of failing
    assert plain("SELECT count(*) FROM read_csv('{M}/condition_occurrence.csv') WHERE condition_concept_id IN (255573, 258780, 261325)") > 0
    assert plain("SELECT count(*) FROM read_csv('{M}/concept.csv') WHERE concept_id IN (255573, 258780, 261325)") == 0
    assert not (MIMIC / "concept_ancestor.csv").exists()
    cohort = (Cohort.builder("COPD").entry(concept_set("COPD", *COPD), "condition", occurrence="all")
              .require("a blood pressure reading", at_least(1, concept_set("SBP", 3004249), "measurement")).build())
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        result = generate(mimic, cohort)
    assert len(result.to_pandas()) == 0
    assert result.attrition.persons.tolist() == [0, 0]   # qualifying events, the rule
    empty = [w.message for w in got if issubclass(w.category, EmptyConceptSetWarning)]
    assert sorted(m.concept_set for m in empty) == ["COPD", "SBP"]
    assert all(m.reason == "not in this vocabulary" and "this CDM has no concept_ancestor table" in str(m) for m in empty)
    assert any("no measurement table" in str(w.message) for w in got)
