"""Real browser: the CohortBuilder widget in a real JupyterLab, driven by headless Chromium through Playwright.

A synthetic CDM and a notebook that displays `CohortBuilder(cdm, cohort)` are written to a temporary folder; JupyterLab
is started on 127.0.0.1 with a random port and token; Chromium opens the notebook, runs all cells, moves the age
slider with the keyboard and clicks "add inclusion rule". The cohort JSON shown in the page must reflect both changes,
and the count shown must be the engine's own count for that JSON, formatted by `display_count`.

Needs Debian's `chromium` (`apt-get install chromium`) and the `playwright` Python package (the `dev` extra); no
browser download. Without chromium the test is skipped, unless `HB_REQUIRE_BROWSER=1` (set by `.ci/run`), where it
fails. Skip it locally with `-m 'not browser'`. At a common laptop width (1366 px), in each section of the builder, every
control must lie inside the notebook's output area and none may overlap another. Screenshots go to the test's tmp_path
and to `tests/browser-artifacts/` (`cohort_builder.png`, `cohort_builder_layout.png`).
"""
import json, os, re, shutil, signal, socket, subprocess, sys, time, secrets, urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "browser-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDGET_IMPORT = "from healthbench.widgets import CohortBuilder"
AGE_MIN, AGE_MAX, STEPS = 40, 80, 5          # the notebook's cohort has age 40–80; ArrowRight ×5 on the lower handle


@pytest.fixture
def chromium() -> str:
    "Debian's chromium (before JupyterLab is started, so that a skip costs nothing)."
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe: return exe
    if os.environ.get("HB_REQUIRE_BROWSER") == "1":
        pytest.fail("HB_REQUIRE_BROWSER=1 but no `chromium` on PATH (apt-get install chromium)")
    pytest.skip("no `chromium` on PATH: apt-get install chromium (or deselect with -m 'not browser')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r: return json.loads(r.read() or b"null")


def _kernels(base: str, token: str) -> list:
    "The server's kernels; [] while it cannot say (a starting server has answered 500 here once)."
    try: return _get(f"{base}/api/kernels?token={token}") or []
    except OSError: return []


def _stat(pid: int):
    "(parent pid, start time) of a process, from /proc; None if it is gone."
    try: f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError): return None
    return int(f[1]), f[19]


def _descendants(pid: int) -> dict[int, str]:
    "The processes below `pid`, as {pid: start time} (empty without /proc)."
    stats = {int(d.name): _stat(int(d.name)) for d in Path("/proc").glob("[0-9]*")}
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        kids = {c: st[1] for c, st in stats.items() if st and st[0] == p}
        out.update(kids); todo += list(kids)
    return out


def _notebook(cdm_path: Path) -> dict:
    import nbformat
    cells = [
        "from healthbench.cdm import connect\n"
        "from healthbench.concepts import concept_set\n"
        "from healthbench.cohort import Cohort\n" + WIDGET_IMPORT,
        f"cdm = connect({str(cdm_path)!r})",
        'sbp = concept_set("systolic BP", 3004249, descendants=False)\n'
        f'cohort = Cohort.builder("BP").entry(sbp, "measurement").age({AGE_MIN}, {AGE_MAX}).build()',
        "b = CohortBuilder(cdm, cohort)\nb",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab on 127.0.0.1 serving tmp_path/work, isolated from the user's Jupyter config; stopped afterwards."
    work, home = tmp_path / "work", tmp_path / "jupyter"
    work.mkdir(); home.mkdir()
    # no announcements/news toast (page config in our own config dir), nothing read from ~/.jupyter
    (home / "config" / "labconfig").mkdir(parents=True)
    (home / "config" / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"), "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
         "--ServerApp.open_browser=False", "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                _get(f"{base}/api/status?token={token}", timeout=2); break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 90 s:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield base, token, work
    finally:
        # kernels run in sessions of their own: note them, ask the server to shut down, then kill what is left
        children = _descendants(proc.pid)
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
            proc.wait(timeout=15)
        except Exception: pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None: break
            try: os.killpg(proc.pid, sig)
            except ProcessLookupError: break
            try: proc.wait(timeout=10)
            except subprocess.TimeoutExpired: pass
        for pid, started in children.items():     # a kernel the server left behind (the same process, not a reused id)
            st = _stat(pid)
            if st and st[1] == started:
                try: os.kill(pid, signal.SIGKILL)
                except OSError: pass
        log.close()


# the status label's texts, in order, as the page shows them (a MutationObserver, so short-lived states are seen too)
STATUS_LOG_JS = """() => {
  window.__hbStatus = [];
  const read = () => { const el = document.querySelector('.hb-status');
    const t = el ? el.textContent.trim() : null;
    if (t !== null && window.__hbStatus[window.__hbStatus.length - 1] !== t) window.__hbStatus.push(t); };
  new MutationObserver(read).observe(document.body, {subtree: true, childList: true, characterData: true});
  read();
}"""
STATE_JS = """() => { const q = s => document.querySelector(s);
  return {status: q('.hb-status')?.textContent.trim() ?? null, count: q('.hb-count')?.textContent.trim() ?? null,
          json: q('.hb-json textarea')?.value ?? q('textarea.hb-json')?.value ?? null,
          rules: document.querySelectorAll('.hb-rule').length, log: window.__hbStatus || []}; }"""


# the builder's controls in its output area: each inside the area, none overlapping another (boxes in CSS pixels)
LAYOUT_JS = """() => {
  const area = document.querySelector('.hb-count')?.closest('.jp-OutputArea-output');
  if (!area) return {controls: 0, problems: ['no output area holding the builder']};
  const sel = ['.widget-button', '.widget-toggle-button', '.widget-text input', '.widget-textarea textarea',
    '.widget-dropdown select', '.widget-select select', '.widget-slider', '.widget-checkbox', '.widget-radio-box',
    '.widget-tagsinput', '.widget-label', '.widget-html-content'].join(',');
  const shown = [...area.querySelectorAll(sel)].filter(e => { const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden'; });
  const leaves = shown.filter(e => !shown.some(o => o !== e && e.contains(o)));
  const a = area.getBoundingClientRect(), problems = [];
  const name = e => (e.className && e.className.baseVal === undefined ? e.className : e.tagName).toString().slice(0, 60)
    + ' "' + (e.textContent || e.value || '').trim().slice(0, 30) + '"';
  const boxes = leaves.map(e => [e, e.getBoundingClientRect()]);
  for (const [e, r] of boxes)
    if (r.left < a.left - 1 || r.right > a.right + 1) problems.push(`outside the output area: ${name(e)} [${Math.round(r.left)}-${Math.round(r.right)}] vs [${Math.round(a.left)}-${Math.round(a.right)}]`);
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [e, r] = boxes[i], [f, q] = boxes[j];
    const w = Math.min(r.right, q.right) - Math.max(r.left, q.left), h = Math.min(r.bottom, q.bottom) - Math.max(r.top, q.top);
    if (w > 1 && h > 1) problems.push(`overlap ${Math.round(w)}x${Math.round(h)} px: ${name(e)} / ${name(f)}`);
  }
  return {controls: leaves.length, problems};
}"""


def _settle(page, cond, what: str, timeout: float = 60):
    """Wait until `cond(state)` holds and the status says "up to date" — twice, 0.6 s apart (more than the debounce),
    so that a stale "up to date" between the change and its debounced regeneration is not taken for the answer."""
    deadline, seen = time.monotonic() + timeout, 0
    while True:
        s = page.evaluate(STATE_JS)
        try: ok = bool(s["status"] == "up to date" and s["count"] and re.search(r"\d", s["count"]) and cond(s))
        except Exception: ok = False          # e.g. the JSON not there yet
        seen = seen + 1 if ok else 0
        if seen >= 2: return s
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page state: {s}")
        time.sleep(0.6 if ok else 0.2)


def _definition(state):
    from healthbench.cohort import Cohort
    assert state["json"], f"no .hb-json textarea value in the page: {state}"
    return Cohort.from_json(state["json"])


def test_cohort_builder_in_jupyterlab(tmp_path, chromium, lab):
    from playwright.sync_api import sync_playwright
    from healthbench.synth import generate as generate_cdm
    from healthbench.cdm import connect
    from healthbench.cohort import generate
    from healthbench.disclosure import display_count
    import nbformat

    base, token, work = lab
    cdm_path = tmp_path / "cdm.duckdb"
    generate_cdm(3000, seed=3, path=cdm_path, progress=False)
    nbformat.write(_notebook(cdm_path), work / "builder.ipynb")
    shot = tmp_path / "cohort_builder.png"
    console = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True, timeout=120_000)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})     # a common laptop screen
            page.set_default_timeout(60_000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{base}/lab/tree/builder.ipynb?token={token}", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # the notebook's kernel is up and idle (the server's view of it, and the notebook toolbar's)
            deadline = time.monotonic() + 120
            while not any(k.get("execution_state") == "idle" for k in _kernels(base, token)):
                assert time.monotonic() < deadline, "no idle kernel after 120 s"
                time.sleep(0.3)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

            # Run → Run All Cells, from the menu bar as a person would
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            page.wait_for_selector(".hb-count", timeout=120_000)
            page.evaluate(STATUS_LOG_JS)
            s0 = _settle(page, lambda s: True, "the first count", timeout=90)
            before = _definition(s0)
            assert (before.demographics.age_min, before.demographics.age_max) == (AGE_MIN, AGE_MAX), s0["json"]
            rules_before, rows_before = len(before.inclusion_rules), s0["rules"]

            # the age slider: focus the lower handle, ArrowRight ×STEPS
            slider = page.locator(".hb-age")
            if not slider.is_visible():             # in a folded section: open it
                page.locator(".jupyter-widget-Collapse-header", has_text=re.compile(r"^\s*demographics\s*$")).click()
            handle = slider.locator(".noUi-handle-lower")
            if handle.count() == 0: handle = slider.locator(".noUi-handle").first
            handle.focus()
            page.evaluate("() => { window.__hbStatus = []; }")
            for _ in range(STEPS):
                handle.press("ArrowRight")
            want_min = AGE_MIN + STEPS
            s1 = _settle(page, lambda s: _definition(s).demographics.age_min == want_min,
                         f"age_min {want_min} in the JSON")
            assert any(t.startswith("updating") for t in s1["log"]), \
                f"the status never said 'updating…' after the slider moved: {s1['log']}"

            # add an inclusion rule
            page.evaluate("() => { window.__hbStatus = []; }")
            add = page.locator(".hb-add-rule")
            if not add.is_visible():                # in a folded section (an Accordion): open it as a person would
                page.locator(".jupyter-widget-Collapse-header", has_text=re.compile(r"^\s*inclusion rules\s*$")).click()
            add.click()
            s2 = _settle(page, lambda s: len(_definition(s).inclusion_rules) == rules_before + 1,
                         "one more inclusion rule in the JSON")
            assert any(t.startswith("updating") for t in s2["log"]), \
                f"the status never said 'updating…' after the rule was added: {s2['log']}"

            # the screenshot: file browser folded away (window.jupyterapp), the widget in view
            page.evaluate("() => window.jupyterapp?.commands.execute('application:toggle-left-area')")
            page.wait_for_timeout(500)
            page.locator(".hb-count").scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)

            # layout at 1366 px, in every section of the builder as a person opens them: each control inside the
            # output area, and no two controls overlapping
            headers = page.locator(".hb-count").locator("xpath=ancestor::div[contains(@class,'jp-OutputArea-output')]") \
                          .locator(".jupyter-widget-Collapse-header")
            problems, sections = [], max(headers.count(), 1)
            for k in range(sections):
                if headers.count():
                    h = headers.nth(k)
                    if "jupyter-widget-Collapse-open" not in (h.locator("xpath=..").get_attribute("class") or ""): h.click()
                    page.wait_for_timeout(400)
                got = page.evaluate(LAYOUT_JS)
                problems += [f"section {k}: {p}" for p in got["problems"]]
                assert got["controls"] > 0, f"section {k}: no controls measured"
            page.screenshot(path=str(tmp_path / "cohort_builder_layout.png"), full_page=False)
            ARTIFACTS.mkdir(exist_ok=True); shutil.copyfile(tmp_path / "cohort_builder_layout.png", ARTIFACTS / "cohort_builder_layout.png")
            assert not problems, "builder layout at 1366 px:\n" + "\n".join(problems[:20])
        finally:
            if not shot.exists():                   # a failure: the page as it was, for the artifacts
                try: page.screenshot(path=str(shot))
                except Exception: pass
            (tmp_path / "browser-console.log").write_text("\n".join(console))
            if shot.exists():
                ARTIFACTS.mkdir(exist_ok=True); shutil.copyfile(shot, ARTIFACTS / "cohort_builder.png")
            browser.close()

    after = _definition(s2)
    assert (after.demographics.age_min, after.demographics.age_max) == (want_min, AGE_MAX)
    assert len(after.inclusion_rules) == rules_before + 1
    assert s2["rules"] == rows_before + 1, f".hb-rule rows: {rows_before} before, {s2['rules']} after"
    # the default rule: at least 1 event of the first concept set, in the entry domain, any time before index
    rule = after.inclusion_rules[-1].rule
    assert (rule.concept_set, rule.domain, rule.op, rule.n, rule.window.start, rule.window.end) == \
        (after.concept_sets[0].name, after.entry.domain, "at_least", 1, None, -1), rule
    # the counts shown are the engine's for the JSON shown, after the slider (a large count) and after the rule
    with connect(cdm_path) as cdm:
        for state in (s1, s2):
            expected = display_count(generate(cdm, _definition(state)).attrition.iloc[-1].persons)
            assert re.search(rf"(^|[^\d,<]){re.escape(expected)} persons", state["count"]), \
                f"page shows {state['count']!r}; the engine gives {expected} persons for the JSON shown beside it"
