"""The run reports of the characterise and survival templates are documents a researcher can publish.

Each template runs for real on a small synthetic CDM; its `report.html` is then read as a reader reads it (the HTML
tables' cells as text, the embedded figures as bytes) and compared with the release bundle, read independently: the
bundle's CSV files, its PNG figures and the SVG copy of the Kaplan-Meier figure (text kept as text, so the numbers at
risk it draws can be read back). Checked: the characterise report shows the participant-flow figure and the incidence
table; the survival report shows the Kaplan-Meier figure and the hazard ratios; the figure's numbers at risk are the
released at-risk tables' numbers ('[c]' where disclosure control merged an interval away); suppressed cells read
'[c]', never NaN; age bands are in age order; no code, script or local path is in a report.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from healthbench.release import read_release
from healthbench.synth import generate
from healthbench.templates import run

AGE_BANDS = ["<50", "50-59", "60-69", "70+"]


class _Report(HTMLParser):
    "A report's tables (caption, header cells, body rows as cell texts) and its embedded images (alt text, bytes)."
    def __init__(self):
        super().__init__()
        self.tables, self.images, self._cell, self._row, self._in = [], [], None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table": self.tables.append({"caption": "", "head": [], "rows": []}); self._in.append("table")
        elif tag == "caption": self._in.append("caption")
        elif tag in ("thead", "tbody"): self._in.append(tag)
        elif tag == "tr": self._row = []
        elif tag in ("td", "th"): self._cell = []
        elif tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.images.append((a.get("alt", ""), base64.b64decode(a["src"].split(",", 1)[1])))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(re.sub(r"\s+", " ", "".join(self._cell)).strip()); self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            (self.tables[-1]["head"] if "thead" in self._in else self.tables[-1]["rows"]).append(self._row); self._row = None
        elif tag in ("table", "caption", "thead", "tbody") and self._in: self._in.pop()

    def handle_data(self, data):
        if self._cell is not None: self._cell.append(data)
        elif self._in and self._in[-1] == "caption": self.tables[-1]["caption"] += data

    def table(self, starts: str) -> dict:
        found = [t for t in self.tables if t["caption"].strip().startswith(starts)]
        assert len(found) == 1, f"one table captioned {starts!r} expected; captions: {[t['caption'][:40] for t in self.tables]}"
        return found[0]


def _read(run_dir: Path) -> tuple[_Report, str]:
    text = (run_dir / "report.html").read_text()
    p = _Report(); p.feed(text)
    return p, re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", text)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f: return list(csv.DictReader(f))


def _count(text: str) -> str:
    "A released count as a reader sees it: thousands separated, '[c]' as it is."
    return text if text == "[c]" else f"{int(float(text)):,}"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reports")
    cdm = d / "cdm.duckdb"
    generate(6000, 3, str(cdm), progress=False)
    return {name: run(name, {"cdm_path": str(cdm), "group": "age_band"}, d / name, progress=False).run_dir
            for name in ("characterise", "survival")}


def test_characterise_report_shows_the_flow_figure_and_the_incidence_tables(reports):
    rd = reports["characterise"]
    rep, text = _read(rd)
    released = read_release(rd / "release")          # checksums and verdicts verified before anything is read
    flow_png = [f for f in released["participant_flow"] if f.suffix == ".png"][0]
    shown = [b for alt, b in rep.images if alt.startswith("Figure 1.")]
    assert [hashlib.sha256(b).hexdigest() for b in shown] == [hashlib.sha256(flow_png.read_bytes()).hexdigest()]
    # the flow's counts, as a table too
    flow = rep.table("Table S1. Participant flow")
    rows = _csv([f for f in released["attrition"] if f.suffix == ".csv"][0])
    assert [r[1:] for r in flow["rows"]] == [[_count(r["persons"]), _count(r["records"])] for r in rows]
    # every released incidence table, row by row, under its heading; the overall row first
    inc = rep.table("Table 2. Incidence")
    body = inc["rows"]
    overall = _csv([f for f in released["incidence_overall"] if f.suffix == ".csv"][0])[0]
    assert body[0][:3] == ["Overall", _count(overall["persons"]), _count(overall["events"])]
    headings = {"incidence_sex": "Sex", "incidence_age_band": "Age band", "incidence_imd_quintile": "IMD quintile (1 = most deprived)"}
    for name, heading in headings.items():
        if name not in released: continue        # withheld: the report says so instead
        want = [(r[next(iter(r))], _count(r["persons"]), _count(r["events"]))
                for r in _csv([f for f in released[name] if f.suffix == ".csv"][0]) if r[next(iter(r))] != "All"]
        at = [i for i, r in enumerate(body) if r == [heading]]
        assert len(at) == 1, heading
        got = body[at[0] + 1: at[0] + 1 + len(want)]
        assert sorted((g[0], g[1], g[2]) for g in got) == sorted((lv[:1].upper() + lv[1:], p, e) for lv, p, e in want)
        for g in got:                             # a rate is shown exactly when its events are
            assert (g[4] == "[c]") == (g[2] == "[c]") and (g[4] == "[c]" or re.fullmatch(r"[\d.]+ \([\d.]+–[\d.]+\)", g[4]))
    assert "Table 1. Characteristics" in text and "<pre" not in text and "<script" not in text
    assert str(rd) not in text and str(rd.parent) not in text     # no local path in the document


def test_survival_report_shows_the_km_figure_and_the_hazard_ratios(reports):
    rd = reports["survival"]
    rep, text = _read(rd)
    released = read_release(rd / "release")
    km_png = [f for f in released["km_age_band"] if f.suffix == ".png"][0]
    shown = [b for alt, b in rep.images if alt.startswith("Figure 1.")]
    assert [hashlib.sha256(b).hexdigest() for b in shown] == [hashlib.sha256(km_png.read_bytes()).hexdigest()]
    hr = rep.table("Table 1. Hazard ratios")
    assert hr["head"][0] == ["Term", "Hazard ratio (95% CI)", "p"]
    want = _csv([f for f in released["cox_hazard_ratios"] if f.suffix == ".csv"][0])
    assert len(hr["rows"]) == len(want) == 5
    for got, w in zip(hr["rows"], want):
        assert got[1] == f"{w['hr']} ({w['lo']}–{w['hi']})"
        assert got[2] == ("<0.001" if float(w["p"]) < 0.001 else f"{float(w['p']):.3f}")
    assert hr["rows"][0][0] == "Age, per year" and hr["rows"][1][0] == "Sex: Male"
    assert "<script" not in text and str(rd) not in text
    assert "<title>Survival: Kaplan-Meier by group and a Cox model</title>" in text


def test_km_figure_numbers_at_risk_are_the_released_at_risk_tables(reports):
    rd = reports["survival"]
    released = read_release(rd / "release")
    svg = [f for f in released["km_age_band"] if f.suffix == ".svg"]
    assert svg, "the KM figure is released as SVG too"
    ns = {"s": "http://www.w3.org/2000/svg"}
    drawn = {}
    for g in ET.parse(svg[0]).getroot().iter("{http://www.w3.org/2000/svg}g"):
        gid = g.get("id", "")
        if gid.startswith("at_risk|"):
            _, level, day = gid.split("|")
            drawn[(level, float(day))] = "".join("".join(t.itertext()) for t in g.iterfind(".//s:text", ns)).strip()
    grid = [float(d) for d in range(0, 3651, 365)]
    files = {"under50": "<50", "50-59": "50-59", "60-69": "60-69", "70plus": "70+"}
    for stem, level in files.items():
        table = {float(r["time"]): r["at_risk"] for r in _csv([f for f in released[f"at_risk_age_band_{stem}"] if f.suffix == ".csv"][0])}
        for day in grid:
            assert drawn[(level, day)] == (_count(table[day]) if day in table else "[c]"), (level, day)
    assert len(drawn) == len(files) * len(grid)
    # the rows under the axis are in age order
    root = ET.parse(svg[0]).getroot()
    labels = [t for t in ("".join(x.itertext()).strip() for x in root.iter("{http://www.w3.org/2000/svg}text")) if t in AGE_BANDS]
    assert labels[-4:] == AGE_BANDS           # the at-risk table's row labels, top to bottom


def test_suppressed_cells_read_c_never_nan(reports):
    for name, rd in reports.items():
        rep, text = _read(rd)
        cells = [c for t in rep.tables for r in t["head"] + t["rows"] for c in r]
        assert cells and not [c for c in cells if re.search(r"\b(nan|NaN|None|<NA>)\b", c)], name
        assert not re.search(r">\s*(nan|NaN)\s*<", text), name
    rep, text = _read(reports["characterise"])
    t1 = rep.table("Table 1. Characteristics")
    assert any(c == "[c]" for r in t1["rows"] for c in r[1:])      # a cohort this small has small cells
    assert re.search(r"\[c\]</b>: \d+ cells suppressed by disclosure control \(uk_default rules\) because they count fewer than 10", text)


def test_age_bands_in_age_order(reports):
    rep, _ = _read(reports["characterise"])
    t1 = rep.table("Table 1. Characteristics")
    assert [h.split("(n =")[0].strip() for h in t1["head"][-1][1:5]] == AGE_BANDS
    inc = rep.table("Table 2. Incidence")["rows"]
    i = inc.index(["Age band"])
    assert [r[0] for r in inc[i + 1:i + 5]] == AGE_BANDS
    released = read_release(reports["characterise"] / "release")
    header = next(csv.reader(open([f for f in released["table1"] if f.suffix == ".csv"][0])))
    assert header[2:6] == AGE_BANDS           # the released table itself is in age order, not text order
    rep, _ = _read(reports["survival"])
    s1 = rep.table("Table S1. Released at-risk tables")["rows"]
    assert [r[0] for r in s1 if len(r) == 1] == AGE_BANDS
