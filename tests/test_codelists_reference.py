"""Code-list mapping against a plain-Python reference, on random toy CDMs.

The reference below re-states the chapter's semantics (nbs/04a_codelists.ipynb) directly on Python lists, without
healthbench's code or a database: ICD-10 codes compared upper case without the dot, 3-character codes as prefixes;
source concepts of the system's vocabularies; 'Maps to' from a source concept and from its 'Concept replaced by'
successors, a standard concept standing for itself when it has none; excluded codes' source concepts removed; events
`mapped` by standard concept, `as_recorded` by source concept or source value (events an excluded code matches
exactly left out). Random vocabularies, events and lists (seeded; HB_CODELIST_EXAMPLES sets how many, 100 by default)
must give the same (code, event) pairs under both strategies.
"""
import datetime as dt, os, random, warnings

import ibis
import pytest

from healthbench.cdm import CDM
from healthbench.codelists import CodeList, codelist_events, map_codes
from healthbench.schema import official_type, table_fields

EXAMPLES = int(os.environ.get("HB_CODELIST_EXAMPLES", "100"))
CATEGORIES = ["K92", "K25", "I10", "J45"]
CODES = CATEGORIES + [f"{c}.{d}" for c in CATEGORIES[:2] + ["J45"] for d in range(4)]
STANDARD = [100 + i for i in range(6)]


def norm(code: str) -> str:
    c = code.strip().upper().replace(".", "")
    return c[:3] if len(c) == 4 and c.endswith("X") else c


def code_matches(list_code: str, concept_code: str) -> bool:
    k, c = norm(list_code), norm(concept_code)
    return c == k or (len(k) == 3 and c[:3] == k)


def value_matches(list_code: str, value: str, exact_only: bool = False) -> bool:
    k, v = norm(list_code), value.upper().replace(".", "")
    return v == k or (not exact_only and len(k) == 3 and value[:3].upper() == k)


def reference(vocab, rels, events, codes, exclude, strategy):
    source = {c: {i for i, (voc, code, _, _) in vocab.items() if voc in ("ICD10", "ICD10CM") and code_matches(c, code)}
              for c in codes + exclude}
    dropped = {s for c in exclude for s in source[c]}
    def replaced(s, seen=()):
        nxt = [b for a, b, kind in rels if a == s and kind == "Concept replaced by"]
        return [s] if not nxt or s in seen else [r for n in nxt for r in replaced(n, (*seen, s))]
    def standard(s):
        chain = [s] + ([r for r in replaced(s) if r != s] if vocab[s][3] else [])
        maps = {b for a, b, kind in rels if a in chain and kind == "Maps to"}
        if not maps: maps = {x for x in chain if x in vocab and vocab[x][2] == "S"}
        return maps
    got = set()
    for c in codes:
        src = source[c] - dropped
        for eid, (pid, std, src_id, value) in events.items():
            if strategy == "mapped" and any(std in standard(s) for s in src): got.add((c, eid))
            if strategy == "as_recorded" and (src_id in src or value_matches(c, value)): got.add((c, eid))
    if strategy == "as_recorded":
        gone = {eid for c in exclude for eid, (_, _, src_id, value) in events.items()
                if src_id in source[c] or value_matches(c, value, exact_only=True)}
        got = {(c, e) for c, e in got if e not in gone}
    return got


def random_case(rng: random.Random):
    vocab = {s: ("SNOMED", str(s), "S", None) for s in STANDARD}   # id -> (vocabulary, code, standard, invalid reason)
    rels, k = [], 1000
    for code in CODES:
        for voc in ("ICD10", "ICD10CM"):
            if rng.random() < 0.7:
                k += 1
                vocab[k] = (voc, code, None, "U" if rng.random() < 0.15 else None)
                for t in rng.sample(STANDARD, rng.choice([0, 1, 1, 1, 2])): rels.append((k, t, "Maps to"))
    deprecated = [i for i, v in vocab.items() if v[3]]
    current = [i for i, v in vocab.items() if v[0] != "SNOMED" and not v[3]]
    for d in deprecated:
        if current and rng.random() < 0.8: rels.append((d, rng.choice(current), "Concept replaced by"))
    spell = lambda c: rng.choice([c, c.replace(".", ""), c.lower(), c.replace(".", "") + ("X" if len(c) == 3 else "")])
    sources = [i for i, v in vocab.items() if v[0] != "SNOMED"]
    events = {e: (rng.randint(1, 8), rng.choice(STANDARD + [0]), rng.choice(sources + [0]) if sources else 0, spell(rng.choice(CODES)))
              for e in range(1, rng.randint(2, 25))}
    codes = list(dict.fromkeys(spell(c) for c in rng.sample(CODES, rng.randint(1, 5))))
    exclude = [c for c in dict.fromkeys(rng.sample(CODES, rng.randint(0, 2))) if norm(c) not in {norm(x) for x in codes}]
    return vocab, rels, events, codes, exclude


def toy_cdm(vocab, rels, events) -> CDM:
    con = ibis.duckdb.connect()
    con.raw_sql("SET threads = 1")
    day = dt.date(2020, 1, 1)
    rows = {"person": [], "observation_period": [],
            "concept": [dict(concept_id=i, concept_name=f"c{i}", domain_id="Condition", vocabulary_id=v, concept_class_id="toy",
                             standard_concept=s, concept_code=c, valid_start_date=day, valid_end_date=day, invalid_reason=r)
                        for i, (v, c, s, r) in vocab.items()],
            "concept_relationship": [dict(concept_id_1=a, concept_id_2=b, relationship_id=kind, valid_start_date=day, valid_end_date=day)
                                     for a, b, kind in rels],
            "condition_occurrence": [dict(condition_occurrence_id=e, person_id=p, condition_concept_id=s, condition_source_concept_id=src,
                                          condition_source_value=v, condition_start_date=day, condition_type_concept_id=32817)
                                     for e, (p, s, src, v) in events.items()]}
    for table, items in rows.items():
        cols = table_fields(table, "5.4")
        con.raw_sql(f"CREATE TABLE {table} (" + ", ".join(f"{c} {official_type(t)}" for c, t in cols.items()) + ")")
        for r in items:
            con.con.execute(f"INSERT INTO {table} ({', '.join(r)}) VALUES ({', '.join('?' * len(r))})", list(r.values()))
    return CDM(con)


@pytest.mark.parametrize("seed", range(EXAMPLES))
def test_codelist_events_agree_with_reference(seed):
    rng = random.Random(seed)
    vocab, rels, events, codes, exclude = random_case(rng)
    cdm = toy_cdm(vocab, rels, events)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = map_codes(cdm, CodeList("random", "ICD10", codes, exclude))
        for strategy in ("mapped", "as_recorded"):
            got = codelist_events(cdm, m, strategy, warn=False).to_pyarrow().to_pydict()
            assert set(zip(got["code"], got["event_id"])) == reference(vocab, rels, events, codes, exclude, strategy), \
                (strategy, codes, exclude)
