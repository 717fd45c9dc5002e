"""Run safety, for real: racing runs, plain papermill into a claimed folder, a kernel killed mid-cell, Ctrl-C and
SIGTERM while a cell runs, and `verify` given a run folder that carries its own code.

Everything here uses real kernels (papermill), real subprocesses and real signals; nothing is mocked. The templates
are tiny notebooks written into `tmp_path`, so each kernel run costs seconds, not the bundled templates' minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from healthbench.errors import InputError, Interrupted, TemplateError, TemplateRunError
from healthbench.templates import CLAIM_FILE, _sha256, run

EXE = shutil.which("healthbench") or str(Path(sys.executable).with_name("healthbench"))
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and /proc")


def template(folder: Path, name: str, *cells: str, params: str = "") -> Path:
    "A template notebook: a parameters cell (`out_dir` plus `params`), then `cells`, the first claiming the run folder."
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(f'out_dir: str = ""  # run folder\n{params}'.strip())
    p.metadata["tags"] = ["parameters"]
    setup = ("import os, time\nfrom healthbench.templates import template_out_dir\nout = template_out_dir(out_dir)\n"
             "with open(os.path.join(out, 'starts.txt'), 'a') as f: f.write('started\\n')\n"
             "open(os.path.join(out, 'kernel.pid'), 'w').write(str(os.getpid()))")
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), p, nbformat.v4.new_code_cell(setup),
                *[nbformat.v4.new_code_cell(c) for c in cells]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


SLEEP = "open(os.path.join(out, 'sleeping'), 'w').close()\ntime.sleep(120)"


def wait_for(path: Path, timeout: float = 90) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout: raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)
    time.sleep(0.5)          # the cell is now inside time.sleep


def alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    try: return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError): return False


def wait_dead(pid: int, timeout: float = 20) -> bool:
    t0 = time.monotonic()
    while alive(pid):
        if time.monotonic() - t0 > timeout: return False
        time.sleep(0.1)
    return True


def cell_index(run_dir: Path, text: str) -> int:
    nb = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
    return next(i for i, c in enumerate(nb.cells) if text in c.source)


def intact(run_dir: Path) -> None:
    "Every output the manifest lists has the sha256 it lists."
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "succeeded", m.get("failure")
    for rel, digest in m["outputs"].items(): assert _sha256(run_dir / rel) == digest, rel


# --- a kernel killed in the middle of a cell -------------------------------------------------------------------------

def test_kernel_killed_mid_cell_fails_the_run_and_is_not_rerun(tmp_path):
    nb = template(tmp_path, "slow", SLEEP)
    out, result = tmp_path / "run", {}
    def go():
        try: run(nb, {}, out, progress=False)
        except BaseException as e: result["error"] = e
    t0 = time.monotonic()
    th = threading.Thread(target=go)
    th.start()
    wait_for(out / "sleeping")
    pid = int((out / "kernel.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    th.join(90)
    assert not th.is_alive()
    assert time.monotonic() - t0 < 60, "the notebook was run again after the kernel died"
    e = result["error"]
    cell = cell_index(out, "time.sleep")
    assert isinstance(e, TemplateRunError)
    assert f"the kernel died while running cell {cell} (killed by SIGKILL" in str(e), str(e)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failure"]["cell_index"] == cell and "kernel died" in m["failure"]["error"]
    assert m["kernel"]["starts"] == 1 and m["finished"]
    assert (out / "starts.txt").read_text() == "started\n", "the notebook's cells ran twice"


def test_kernel_killed_mid_cell_through_the_cli(tmp_path):
    nb = template(tmp_path, "slow", SLEEP)
    out = tmp_path / "run"
    p = subprocess.Popen([EXE, "run", str(nb), "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_for(out / "sleeping")
    os.kill(int((out / "kernel.pid").read_text()), signal.SIGKILL)
    stdout, stderr = p.communicate(timeout=90)
    assert p.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert f"healthbench run: error: template 'slow' failed at cell {cell_index(out, 'time.sleep')}: DeadKernelError: the kernel died" in stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    assert (out / "starts.txt").read_text() == "started\n"


# --- Ctrl-C and SIGTERM while a cell runs ----------------------------------------------------------------------------

@pytest.mark.parametrize("sig, status, to_group", [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False),
                                                   (signal.SIGINT, 130, True)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-to-process-group"])
def test_signal_interrupts_a_cli_run(tmp_path, sig, status, to_group):
    "The CLI shuts the kernel down, marks the manifest interrupted, prints one line and exits 128 + signal."
    nb = template(tmp_path, "slow", SLEEP)
    out = tmp_path / "run"
    # as from a terminal: SIGINT handled by default even when this test runs where it is ignored (a background CI job
    # without job control ignores SIGINT, its children inherit that, and healthbench rightly leaves an ignored signal ignored)
    p = subprocess.Popen([EXE, "run", str(nb), "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=to_group,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(out / "sleeping")
    kernel = int((out / "kernel.pid").read_text())
    t0 = time.monotonic()
    if to_group: os.killpg(p.pid, sig)            # what a terminal's Ctrl-C does
    else: p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == status, (p.returncode, stderr)
    assert time.monotonic() - t0 < 30
    assert "Traceback" not in stderr, stderr
    cell = cell_index(out, "time.sleep")
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert lines == [f"healthbench run: template 'slow' interrupted by {sig.name} at cell {cell}; its kernel was shut down "
                     f"and the manifest in {str(out.resolve())!r} says 'interrupted'"], stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["finished"] and m["seconds"] > 0
    assert m["interruption"] == {"signal": sig.name, "cell_index": cell}
    assert wait_dead(kernel), "the kernel outlived the interrupted run"


def test_sigterm_interrupts_run_called_from_python(tmp_path):
    "run() in a plain Python program (SIGTERM not handled): the manifest is marked and Interrupted is raised."
    nb = template(tmp_path, "slow", SLEEP)
    out = tmp_path / "run"
    script = ("import sys\nfrom healthbench.templates import run\nfrom healthbench.errors import Interrupted\n"
              f"try: run({str(nb)!r}, {{}}, {str(out)!r}, progress=False)\n"
              "except Interrupted as e: print('Interrupted', e.signum, e.run_dir); sys.exit(99)\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "sleeping")
    kernel = int((out / "kernel.pid").read_text())
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 99, stderr
    assert stdout.strip() == f"Interrupted {int(signal.SIGTERM)} {out.resolve()}"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["interruption"]["signal"] == "SIGTERM" and m["finished"]
    assert wait_dead(kernel)


# --- racing for one run folder ---------------------------------------------------------------------------------------

WHO = ("open(os.path.join(out, 'who.txt'), 'w').write(who)\nos.makedirs(os.path.join(out, 'outputs'), exist_ok=True)\n"
       "open(os.path.join(out, 'outputs', 'who.csv'), 'w').write(f'who\\n{who}\\n')\ntime.sleep(1)")


@pytest.mark.parametrize("exists", [False, True], ids=["new-folder", "existing-empty-folder"])
def test_two_runs_racing_for_one_folder(tmp_path, exists):
    "Two threads call run() into the same folder at the same moment: exactly one runs, the other gets a TemplateError."
    nb = template(tmp_path, "who", WHO, params='who: str = ""  # who ran')
    out = tmp_path / "shared"
    if exists: out.mkdir()
    go, results = threading.Barrier(2), {}
    def racer(who):
        go.wait()
        try: results[who] = run(nb, {"who": who}, out, progress=False)
        except BaseException as e: results[who] = e
    threads = [threading.Thread(target=racer, args=(w,)) for w in ("a", "b")]
    for t in threads: t.start()
    for t in threads: t.join(120)
    won = [w for w, r in results.items() if not isinstance(r, BaseException)]
    lost = [w for w, r in results.items() if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1, results
    assert type(results[lost[0]]) is TemplateError, repr(results[lost[0]])
    assert "is already claimed by" in str(results[lost[0]])
    assert (out / "who.txt").read_text() == won[0]
    assert (out / "starts.txt").read_text() == "started\n"
    intact(out)


def test_two_cli_runs_racing_for_one_out(tmp_path):
    nb = template(tmp_path, "who", WHO, params='who: str = ""  # who ran')
    out = tmp_path / "shared"
    ps = {w: subprocess.Popen([EXE, "run", str(nb), "-p", "who", w, "--out", str(out), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in ("a", "b")}
    done = {w: (p, *p.communicate(timeout=120)) for w, p in ps.items()}
    codes = sorted(p.returncode for p, _, _ in done.values())
    assert codes == [0, 2], {w: (p.returncode, e) for w, (p, _, e) in done.items()}
    winner = next(w for w, (p, _, _) in done.items() if p.returncode == 0)
    loser_err = next(e for w, (p, _, e) in done.items() if p.returncode == 2)
    assert "Traceback" not in loser_err
    assert loser_err.startswith("healthbench run: error: run folder") and "claimed" in loser_err, loser_err
    assert (out / "who.txt").read_text() == winner
    intact(out)


# --- plain papermill into a claimed folder ---------------------------------------------------------------------------

def test_plain_papermill_cannot_overwrite_a_run(tmp_path):
    nb = template(tmp_path, "who", WHO, params='who: str = ""  # who ran')
    r = run(nb, {"who": "first"}, tmp_path / "run", progress=False)
    before = {rel: _sha256(r.run_dir / rel) for rel in r.manifest["outputs"]}
    p = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "second.ipynb"), "-k", "python3",
                        "-p", "out_dir", str(r.run_dir), "-p", "who", "second", "--no-progress-bar"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "TemplateError" in p.stderr and "is already claimed by healthbench run" in p.stderr, p.stderr[-2000:]
    assert {rel: _sha256(r.run_dir / rel) for rel in before} == before
    assert (r.run_dir / "who.txt").read_text() == "first"
    # the same with papermill's --cwd in the run folder and a relative out_dir, as a user might type it
    p = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "third.ipynb"), "-k", "python3",
                        "--cwd", str(r.run_dir), "-p", "out_dir", ".", "--no-progress-bar"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "is already claimed by healthbench run" in p.stderr
    assert {rel: _sha256(r.run_dir / rel) for rel in before} == before
    # a run folder made before claims existed (no claim file) is refused for its files
    (r.run_dir / CLAIM_FILE).unlink()
    p = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "fourth.ipynb"), "-k", "python3",
                        "-p", "out_dir", str(r.run_dir), "--no-progress-bar"], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "is not empty (kernel.pid, manifest.json, outputs, report.html" in p.stderr, p.stderr[-2000:]
    assert {rel: _sha256(r.run_dir / rel) for rel in before} == before


# --- verify never runs a received folder's code ----------------------------------------------------------------------

def test_verify_refuses_a_planted_notebook_and_runs_a_named_one(tmp_path):
    marker = tmp_path / "MARKER"
    nb = template(tmp_path, "who", WHO, params='who: str = ""  # who ran')
    r = run(nb, {"who": "me"}, tmp_path / "run", progress=False)
    planted = template(tmp_path, "planted", f"open({str(marker)!r}, 'w').write('ran')", params='who: str = ""  # who ran')
    m = json.loads((r.run_dir / "manifest.json").read_text())
    received = tmp_path / "received"
    shutil.copytree(r.run_dir, received)
    for change in ({"template_file": str(planted)}, {"template_file": None, "template": str(planted)},
                   {"template_file": None, "template": "planted"}):
        (received / "manifest.json").write_text(json.dumps({**m, **change}))
        p = subprocess.run([EXE, "verify", str(received), "--quiet"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith("healthbench verify: error: ") and "--template PATH" in p.stderr, p.stderr
        assert not marker.exists(), "verify ran the received folder's notebook"
    with pytest.raises(TemplateError, match="not a bundled template"):
        from healthbench.templates import verify
        verify(received)
    assert not marker.exists()
    # the notebook the user names is run
    (received / "manifest.json").write_text(json.dumps(m))
    p = subprocess.run([EXE, "verify", str(received), "--template", str(nb), "--quiet"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "all result tables identical" in p.stdout, p.stdout + p.stderr


def test_kernel_runs_numerical_libraries_on_one_thread(tmp_path, monkeypatch):
    "A template's kernel gets one thread per numerical library (OpenMP spin-waits oversubscribe shared cores); HB_KERNEL_THREADS overrides."
    from healthbench.synth import generate
    cdm = generate(200, seed=1, path=tmp_path / "cdm.duckdb", progress=False)
    cell = ("import json, threadpoolctl, sklearn.ensemble\n"
            "from healthbench.templates import template_cdm\n"
            "info = threadpoolctl.threadpool_info()\n"
            f"duck = template_cdm({str(cdm)!r}, out).backend.raw_sql(\"SELECT current_setting('threads')\").fetchone()[0]\n"
            "json.dump({'env': os.environ.get('OMP_NUM_THREADS'), 'openmp': sorted({i['num_threads'] for i in info if i['user_api'] == 'openmp'}),"
            " 'duckdb': duck}, open(os.path.join(out, 'threads.json'), 'w'))")
    nb = template(tmp_path, "threads", cell)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("HB_KERNEL_THREADS", raising=False)
    run(nb, {}, tmp_path / "one", progress=False)
    got = json.loads((tmp_path / "one" / "threads.json").read_text())
    assert got["env"] == "1" and got["openmp"] == [1] and got["duckdb"] == 1, got     # DuckDB too: not a thread per core
    monkeypatch.setenv("HB_KERNEL_THREADS", "2")
    run(nb, {}, tmp_path / "two", progress=False)
    got = json.loads((tmp_path / "two" / "threads.json").read_text())
    assert got["env"] == "2" and got["openmp"] == [2] and got["duckdb"] == 2, got
    monkeypatch.setenv("HB_KERNEL_THREADS", "lots")
    with pytest.raises(InputError, match="HB_KERNEL_THREADS"):
        run(nb, {}, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_failed_run_is_set_aside_and_repeated(tmp_path):
    "A run that failed does not block its re-run: its folder is renamed to <folder>.failed-N (nothing deleted) and recorded."
    nb = template(tmp_path, "flaky", "if fail: raise ValueError('boom')\nopen(os.path.join(out, 'done.txt'), 'w').write('ok')",
                  params="fail: bool = True")
    with pytest.raises(TemplateRunError, match="boom"):
        run(nb, {}, tmp_path / "r", progress=False)
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["status"] == "failed"
    r = run(nb, {"fail": False}, tmp_path / "r", progress=False)
    assert r.status == "succeeded" and (tmp_path / "r" / "done.txt").read_text() == "ok"
    old = tmp_path / "r.failed-1"
    assert json.loads((old / "manifest.json").read_text())["status"] == "failed" and not (old / "done.txt").exists()
    assert r.manifest["previous_attempt"] == str(old.resolve())
    # a succeeded run is never set aside: its folder is refused as before
    with pytest.raises(TemplateError, match="already claimed"):
        run(nb, {"fail": False}, tmp_path / "r", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r")) == ["r", "r.failed-1"]


def test_kernel_folders_are_removed_at_exit(tmp_path):
    "The private kernelspec and IPC folders a process makes in the temp folder are gone when it exits (561 were left in /tmp)."
    nb = template(tmp_path, "quick", "x = 1")
    code = ("import os, sys, json\nfrom healthbench.templates import run, kernel_name, _kernel_manager_base\n"
            f"run({str(nb)!r}, {{}}, {str(tmp_path / 'r')!r}, progress=False)\n"
            "spec = os.environ['JUPYTER_PATH'].split(os.pathsep)[0]\n"
            "ipc = os.path.dirname(_kernel_manager_base()().ip) if os.name == 'posix' else ''\n"
            "print(json.dumps([spec, ipc]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    spec, ipc = json.loads(p.stdout.strip().splitlines()[-1])
    assert "healthbench-kernels-" in spec and "hb-ipc-" in ipc
    assert not os.path.exists(spec) and not os.path.exists(ipc)


def test_session_working_folder_in_temp_is_removed_once_finalised(tmp_path):
    "A Session without a folder works in the temp folder; that folder goes at exit once finalised (its outputs are in the bundle), else stays."
    code = ("import json, pandas as pd\nfrom healthbench.release import Session\n"
            "a, b = Session(), Session()\n"
            "t = pd.DataFrame({'n': [40, 50]}, index=['x', 'y'])\n"
            "a.table('t', t, counts=t); b.table('t', t, counts=t)\n"
            f"a.finalise({str(tmp_path / 'bundle')!r})\n"
            "print(json.dumps([str(a.folder), str(b.folder)]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    done, kept = json.loads(p.stdout.strip().splitlines()[-1])
    assert not os.path.exists(done) and (tmp_path / "bundle" / "t.csv").exists()
    assert os.path.isdir(kept) and os.listdir(kept)          # not finalised: its outputs are kept
    shutil.rmtree(kept)


def test_cell_timeout_names_the_cell_and_passing_runs_are_not_interrupted(tmp_path, capfd):
    """A cell that runs past `timeout` fails the run at that cell (it has no error output of its own), and its kernel is
    gone. A passing run's kernel is shut down without the interrupt jupyter_client sends first, which made ipykernel
    print "KeyboardInterrupt caught in kernel" in runs that succeeded."""
    nb = template(tmp_path, "sleepy", "x = 1", "time.sleep(120)")
    with pytest.raises(TemplateRunError, match=r"failed at cell \d+: CellTimeoutError") as e:
        run(nb, {}, tmp_path / "slow", timeout=3, progress=False)
    executed = nbformat.read(tmp_path / "slow" / "notebook.ipynb", as_version=4)
    sleeper = [i for i, c in enumerate(executed.cells) if c.source == "time.sleep(120)"]
    assert len(sleeper) == 1 and f"failed at cell {sleeper[0]}:" in str(e.value)
    m = json.loads((tmp_path / "slow" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failure"]["cell_index"] == sleeper[0]
    pid = int((tmp_path / "slow" / "kernel.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    capfd.readouterr()
    for k in range(3):
        assert run(template(tmp_path, f"quick{k}", "x = 1"), {}, tmp_path / f"quick{k}", progress=False).status == "succeeded"
    out, err = capfd.readouterr()
    assert "KeyboardInterrupt" not in out + err, err[-2000:]
