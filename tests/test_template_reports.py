"""The run reports of the characterise, survival, explain and fairness templates are documents a researcher can publish.

Each template runs for real on a small synthetic CDM; its `report.html` is then read as a reader reads it (the HTML
tables' cells as text, the embedded figures as bytes) and compared with the release bundle, read independently: the
bundle's CSV files, its PNG figures and the SVG copy of the Kaplan-Meier figure (text kept as text, so the numbers at
risk it draws can be read back). Checked: the characterise report shows the participant-flow figure and the incidence
table; the survival report shows the participant-flow figure, the Kaplan-Meier figure and the hazard ratios; the figure's
numbers at risk are the released at-risk tables' numbers ('[c]' where disclosure control merged an interval away); its
curves pass through the actuarial estimates worked out here from the released at-risk tables, joined by straight lines
(dashed across a merged interval), never steps; suppressed cells read '[c]', never NaN; age bands are in age order; no
code, script or local path is in a report. The explain and fairness
reports (from a predict run) show exactly the released figures, each with its numbered caption and released with the kind
it draws (SHAP importance 'bar', binned dependence 'dependence', subgroup forest plots 'forest'); their tables match the
released CSVs cell by cell, a suppressed bin or subgroup reads '[c]'; a failed run's report shows its error.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
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
    _shows_released_png(rep, released, "participant_flow", "Figure 1.")
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


def _shows_released_png(rep: _Report, released: dict, output: str, figure: str):
    "The report shows exactly one image under `figure` ('Figure 2.'), byte for byte the released PNG of `output`."
    png = [f for f in released[output] if f.suffix == ".png"][0]
    shown = [b for alt, b in rep.images if alt.startswith(figure)]
    assert [hashlib.sha256(b).hexdigest() for b in shown] == [hashlib.sha256(png.read_bytes()).hexdigest()], (output, figure)


def test_survival_report_shows_the_km_figure_and_the_hazard_ratios(reports):
    rd = reports["survival"]
    rep, text = _read(rd)
    released = read_release(rd / "release")
    _shows_released_png(rep, released, "km_age_band", "Figure 2.")
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
    s1 = rep.table("Table S2. Released at-risk tables")["rows"]
    assert [r[0] for r in s1 if len(r) == 1] == AGE_BANDS


def test_survival_report_shows_the_participant_flow(reports):
    "The survival report shows the cohort's participant flow as characterise does: the released figure and the released counts."
    rd = reports["survival"]
    rep, text = _read(rd)
    released = read_release(rd / "release")
    _shows_released_png(rep, released, "participant_flow", "Figure 1.")
    assert "Figure 1. Participant flow" in re.sub(r"<[^>]+>", "", text)
    flow = rep.table("Table S1. Participant flow")
    rows = _csv([f for f in released["attrition"] if f.suffix == ".csv"][0])
    assert len(rows) >= 2 and [r[1:] for r in flow["rows"]] == [[_count(r["persons"]), _count(r["records"])] for r in rows]


SVG, XLINK = "{http://www.w3.org/2000/svg}", "{http://www.w3.org/1999/xlink}"


def _svg_curves(svg: Path) -> dict:
    """What a KM figure's SVG draws, in data units: per level its dots [(x, y)], its line segments [((x0, y0), (x1, y1),
    dashed)] and the x of its band's corners; x in the axis' own unit (days or years), y in %. The pixel-to-data map is
    read off the SVG's own tick marks and their labels, as a reader reads the axes."""
    root = ET.parse(svg).getroot()
    def ticks(prefix, coord):
        out = []
        for g in root.iter(SVG + "g"):
            if not g.get("id", "").startswith(prefix): continue
            label = "".join("".join(t.itertext()) for t in g.iter(SVG + "text")).strip()
            use = next(g.iter(SVG + "use"), None)
            if use is None or not re.fullmatch(r"-?\d+(\.\d+)?", label): continue
            out.append((float(use.get(coord)), float(label)))
        return out
    fx, fy = (np.poly1d(np.polyfit(*zip(*ticks(p, c)), 1)) for p, c in (("xtick_", "x"), ("ytick_", "y")))
    nums = lambda d: [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)]
    curves = {}
    for g in root.iter(SVG + "g"):
        kind, _, level = g.get("id", "").partition("|")
        if kind not in ("km", "km_line", "km_ci"): continue
        c = curves.setdefault(level, {})
        if kind == "km": c["dots"] = [(fx(float(u.get("x"))), fy(float(u.get("y")))) for u in g.iter(SVG + "use")]
        elif kind == "km_line":
            c["segments"] = []
            for path in g.iter(SVG + "path"):
                v = nums(path.get("d"))
                assert len(v) == 4, "a segment is one straight line from one point to the next"
                c["segments"].append(((fx(v[0]), fy(v[1])), (fx(v[2]), fy(v[3])), "stroke-dasharray" in (path.get("style") or "")))
        else: c["band_x"] = [fx(x) for path in g.iter(SVG + "path") for x in nums(path.get("d"))[0::2]]
    return curves


def _actuarial(rows: list[dict], horizon: float) -> list[tuple[float, float]]:
    "By hand: (day, cumulative incidence %) at the start of each released interval and at the horizon, risk set n - c/2."
    rows = [r for r in rows if float(r["time"]) < horizon]
    s, out = 1.0, [(float(rows[0]["time"]), 0.0)]
    for k, r in enumerate(rows):
        n = float(r["at_risk"]) - float(r["censored"]) / 2
        s *= 1 - float(r["events"]) / n
        out.append((float(rows[k + 1]["time"]) if k + 1 < len(rows) else horizon, 100 * (1 - s)))
    return out


def _check_km_curves(run_dir: Path, group_stem: str, horizon: float, step: float) -> int:
    "The released KM figure's curves against the released at-risk tables; returns how many dashed (merged) segments it has."
    released = read_release(run_dir / "release")
    curves = _svg_curves([f for f in released[f"km_{group_stem}"] if f.suffix == ".svg"][0])
    scale = 365.25 if horizon >= 730 else 1.0
    tables = {n: _csv([f for f in fs if f.suffix == ".csv"][0]) for n, fs in released.items() if n.startswith(f"at_risk_{group_stem}_")}
    assert tables and len(curves) == len(tables), (sorted(curves), sorted(tables))
    dashed = 0
    for level, c in curves.items():
        stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", level.replace("<", "under").replace("+", "plus")).strip("_")
        want = _actuarial(tables[f"at_risk_{group_stem}_{stem}"], horizon)
        got = c["dots"]
        assert len(got) == len(want), level
        for (gx, gy), (wx, wy) in zip(got, want):      # the dots are the estimates at the released time points
            assert abs(gx * scale - wx) < 0.003 * horizon and abs(gy - wy) < 1e-3, (level, (gx * scale, gy), (wx, wy))
        segs = c["segments"]                            # straight lines from each dot to the next: no step anywhere
        assert len(segs) == len(got) - 1
        for (a, b, d), p, q in zip(segs, got[:-1], got[1:]):
            assert np.allclose(a, p, atol=1e-4) and np.allclose(b, q, atol=1e-4), level
        for (a, b, d), (wa, _), (wb, _) in zip(segs, want[:-1], want[1:]):
            assert d == (wb - wa > step + 1e-9), (level, wa, wb)      # dashed exactly across a merged interval
            dashed += d
        xs = sorted({round(x, 6) for x, _ in got})      # the band has corners only where the curve has dots
        assert all(min(abs(x - y) for y in xs) < 1e-4 for x in c["band_x"]), level
    return dashed


def test_km_curves_pass_through_the_released_estimates(reports):
    _check_km_curves(reports["survival"], "age_band", 3650, 365)      # yearly intervals; small age bands have merged ones


def test_km_curves_across_merged_intervals_are_dashed_straight_lines(reports, tmp_path):
    "30-day intervals on 6,000 people: disclosure control merges many, and the figure draws each as one dashed straight line."
    cdm = reports["survival"].parent / "cdm.duckdb"
    rd = run("survival", {"cdm_path": str(cdm), "horizon_days": 700, "step_days": 30}, tmp_path / "s", progress=False).run_dir
    assert _check_km_curves(rd, "sex", 700, 30) > 0
    rep, text = _read(rd)
    plain = re.sub(r"<[^>]+>", "", text)
    assert "joined by straight lines" in plain and "(dashed) span a longer interval (days since entry:" in plain


# --- explain and fairness: run reports of a model, from a predict run --------------------------------------------------

@pytest.fixture(scope="module")
def model_reports(tmp_path_factory) -> dict[str, Path]:
    "A predict run on a small synthetic CDM, then explain (every feature's dependence, few rows: small bins) and fairness on it."
    d = tmp_path_factory.mktemp("model_reports")
    cdm = d / "cdm.duckdb"
    generate(6000, 3, str(cdm), progress=False)
    predict = run("predict", {"cdm_path": str(cdm), "folds": 3, "seed": 0}, d / "predict", progress=False).run_dir
    return {"predict": predict,
            "explain": run("explain", {"predict_run": str(predict), "rows": 300, "top": 40}, d / "explain", progress=False).run_dir,
            "fairness": run("fairness", {"predict_run": str(predict), "n_boot": 50}, d / "fairness", progress=False).run_dir}


def _kinds(run_dir: Path) -> dict[str, str]:
    import json
    results = json.loads((run_dir / "release" / "results.json").read_text())["results"].values()
    return {r["properties"]["name"]: r["type"] for r in results}


@pytest.mark.parametrize("name", ["explain", "fairness"])
def test_model_reports_are_documents(model_reports, name):
    "No script, code, repr or local path; every table captioned, no empty or NaN cell, no pandas index column."
    rd = model_reports[name]
    rep, text = _read(rd)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//""", text), "loads something from the web"
    for local in (str(rd), str(model_reports["predict"]), str(rd.parent), "/tmp/", "/work/", str(Path.home()) + "/"):
        assert local not in text, f"{name}'s report holds the local path {local!r}"
    for code in ("Output(", "import ", "session.", "RunResult", "<pre", "Counted("):
        assert code not in text, f"{name}'s report shows {code!r}"
    assert rep.tables and all(t["caption"].strip() for t in rep.tables)
    cells = [c for t in rep.tables for r in t["head"] + t["rows"] for c in r]
    assert not [c for c in cells if re.search(r"\b(nan|NaN|None|<NA>)\b|Unnamed", c)]
    for t in rep.tables:
        assert all(c for r in t["rows"] if len(r) > 1 for c in r), f"an empty cell in {t['caption'][:50]!r}"
        assert t["head"][0][1:] and all(t["head"][0][1:]), f"an empty heading in {t['caption'][:50]!r}"


@pytest.mark.parametrize("name", ["explain", "fairness"])
def test_model_reports_show_each_released_figure_once_with_its_caption(model_reports, name):
    "The figures shown are exactly the released PNGs (no per-person beeswarm), each under 'Figure k.', k = 1, 2, ... in order."
    rd = model_reports[name]
    rep, _ = _read(rd)
    released = read_release(rd / "release")
    pngs = {hashlib.sha256(f.read_bytes()).hexdigest(): n for n, fs in released.items() for f in fs if f.suffix == ".png"}
    shown = [(alt, hashlib.sha256(b).hexdigest()) for alt, b in rep.images]
    assert sorted(h for _, h in shown) == sorted(pngs), "the report shows a figure that is not released, or misses one"
    assert [re.match(r"Figure (\d+)\. \S", alt).group(1) for alt, _ in shown] == [str(k) for k in range(1, len(shown) + 1)]
    by_name = {pngs[h]: alt for alt, h in shown}
    if name == "explain":
        import joblib
        est = joblib.load(model_reports["predict"] / "models" / "gradient_boosting.joblib").steps[-1][1]
        assert type(est).__name__ == "HistGradientBoostingClassifier"     # its SHAP values are on the log-odds scale
        assert "Global importance" in by_name["importance_plot"] and "log-odds" in by_name["importance_plot"]
        assert all("log-odds" in alt for n, alt in by_name.items() if n.startswith("dependence_"))
    else:
        assert set(by_name) == {"subgroups_auroc", "subgroups_citl", "subgroups_cal_slope", "subgroups_tpr"}
        assert "AUROC" in by_name["subgroups_auroc"] and "Calibration slope" in by_name["subgroups_cal_slope"]


def test_model_report_figures_are_released_with_the_kind_they_draw(model_reports):
    "SHAP importance bars are 'bar', binned dependence 'dependence', subgroup forest plots 'forest'; tables are 'table'."
    from healthbench.release import FIGURE_KINDS
    ex, fa = _kinds(model_reports["explain"]), _kinds(model_reports["fairness"])
    assert ex["importance_plot"] == "bar"
    deps = [n for n in ex if n.startswith("dependence_") and n.endswith("_plot")]
    assert deps and {ex[n] for n in deps} == {"dependence"}
    assert {fa[f"subgroups_{m}"] for m in ("auroc", "citl", "cal_slope", "tpr")} == {"forest"}
    for kinds in (ex, fa):
        assert "histogram" not in kinds.values()
        assert all(k == "table" for n, k in kinds.items() if not n.endswith("_plot") and not n.startswith("subgroups_"))
        assert {"bar", "dependence", "forest"} <= set(FIGURE_KINDS)


def test_explain_report_shows_suppressed_bins_as_c(model_reports):
    "Every released dependence table is in Table S1, bin by bin, in the order of the released importance; a suppressed bin reads [c]."
    rd = model_reports["explain"]
    rep, text = _read(rd)
    released = read_release(rd / "release")
    order = [r["feature"] for r in _csv([f for f in released["importance"] if f.suffix == ".csv"][0])]
    deps = [_csv([f for f in released[f"dependence_{f}"] if f.suffix == ".csv"][0]) for f in order if f"dependence_{f}" in released]
    s1 = rep.table("Table S1. Binned SHAP dependence")["rows"]
    groups, g = [], None
    for r in s1:
        if len(r) == 1: g = []; groups.append(g)
        else: g.append(r)
    assert len(groups) == len(deps)
    hidden = 0
    for got, want in zip(groups, deps):
        assert [r[0] for r in got] == [w["bin"][:1].upper() + w["bin"][1:] for w in want]       # as a row label: 'Female'
        for r, w in zip(got, want):
            assert r[1] == _count(w["n"])
            if w["n"] == "[c]": hidden += 1; assert r[3] == "[c]"
            else: assert r[3] == f"{w['mean_shap']} ({w['lo']} to {w['hi']})"
    assert hidden, "300 rows and every feature: some bin must be small enough to suppress"
    assert re.search(rf"\[c\]</b>: {hidden} bin counts suppressed by disclosure control \(uk_default rules\)", text)


def test_fairness_report_shows_suppressed_subgroups_as_c(model_reports):
    "Table 1 has a row per released subgroup with its counts and AUROC as released; what is suppressed or not analysed reads [c], with the reason."
    rd = model_reports["fairness"]
    rep, text = _read(rd)
    released = read_release(rd / "release")
    rows = _csv([f for f in released["subgroup_report"] if f.suffix == ".csv"][0])
    t1 = rep.table("Table 1. Discrimination and calibration")
    assert t1["head"][0][:4] == ["Subgroup", "Records", "Events", "AUROC (95% CI)"]
    shown = {r[0]: r for r in t1["rows"] if len(r) > 1}
    def name(r):
        if r["variable"] == "overall": return "Overall"
        return f"IMD quintile {r['group']}" if r["variable"] == "imd_quintile" else r["group"][:1].upper() + r["group"][1:]
    assert len(shown) == len(rows)
    c = lambda x: "[c]" if x in ("", "[c]") else _count(x)
    for r in rows:
        got = shown[name(r)]
        assert got[1:3] == [c(r["n"]), c(r["events"])], name(r)
        auroc = [r["auroc"], r["auroc_lo"], r["auroc_hi"]]
        assert got[3] == ("[c]" if {"", "[c]"} & set(auroc) else f"{auroc[0]} ({auroc[1]} to {auroc[2]})")
    not_analysed = [name(r) for r in rows if r["reason"].startswith("fewer")]
    assert not_analysed, "a test split this small has a subgroup with fewer than 10 events"
    for n in not_analysed: assert all(x == "[c]" for x in shown[n][3:]) and n in text


def test_failed_explain_run_report_shows_its_error(tmp_path):
    "A run that fails still writes its report, and the report says why (the error), with no script."
    from healthbench.errors import TemplateRunError
    (tmp_path / "not_a_predict_run").mkdir()
    with pytest.raises(TemplateRunError):
        run("explain", {"predict_run": str(tmp_path / "not_a_predict_run")}, tmp_path / "run", progress=False)
    text = (tmp_path / "run" / "report.html").read_text()
    assert "TemplateError" in text and "predict_run must be a folder written by the predict template" in text
    assert "<script" not in text.lower()
