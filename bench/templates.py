"""Benchmark of the template runner (`healthbench.templates`): the overhead of a run and the speed-up of a parallel sweep.

Run from the repository root:

    python bench/templates.py                                  # defaults: --repeats 5 --sweep-repeats 3 --persons 3000
    python bench/templates.py --repeats 1 --sweep-repeats 1    # quick check

1. Overhead of a run. `healthbench.templates.run(template, params, new_folder, progress=False)` costs what the
   template's code costs plus the vehicle: validating the parameters (`papermill.inspect_notebook`), a fresh
   kernel (process start, IPython, the template's imports), papermill, the nbconvert HTML report, hashing the
   outputs and writing the manifest. Baseline, in this same process: the *same* code cells, executed with
   `exec` in a fresh namespace dict, with the working directory set to a new empty folder as papermill does.
   The code is made identical by letting papermill itself read the notebook and inject the parameters
   (`papermill.parameterize.parameterize_notebook`, the same run parameters `run()` passes, `out_dir` = the
   folder) and by passing every cell through IPython's input transformer, as the kernel does; printed output is
   captured. The template's code is then the same, only the execution vehicle differs. Both vehicles' result
   tables (`outputs/*.csv`, `outputs/*.json` except the log) are compared byte for byte, so the two did the
   same work. Two templates:
     (a) tiny: a notebook this script writes to a temp dir -- a parameters cell and one cell that builds a small
         table and records it with `template_session(out_dir, rules).table(...)` -- so overhead dominates;
     (b) the bundled `characterise` template with `persons=3000` (it builds its own synthetic CDM).
   Repeats alternate the two vehicles (so both see the same machine load), after one untimed warm-up of each
   (--warmup): the in-process baseline does not pay imports again after the first run, while every kernel
   does -- importing the template's libraries is part of what a fresh kernel costs. For run() the manifest's
   `seconds` (papermill alone) is reported too, so the rest (validation, HTML, hashing, manifest) is visible.
   overhead = median run() - median in-process; ratio = median run() / median in-process.

2. Sweep speed-up. `sweep("characterise", {"seed": [1, 2, 3, 4], "persons": [3000]}, new_folder, n_jobs=1,
   progress=False)` vs the same with `n_jobs=2`, each call into a new folder, serial and parallel alternating,
   medians over --sweep-repeats; speed-up = serial / parallel. Every run of every sweep must succeed.
   cwd: papermill's `execute_notebook(cwd=...)` changes the working directory of the whole process
   (`os.chdir`) for the duration of a run, and sets the cwd of its process-wide local file handler
   (`papermill.iorw.local_file_io_cwd`), both restoring the old value on exit; sweep() drives parallel runs from
   threads, so when runs overlap a parallel sweep can leave either with a value it did not start with, e.g. one of
   its run folders (and a kernel can start in another run's folder: it inherits the process's cwd). Once that folder is deleted, later runs fail
   ("FileNotFoundError ... failed at start"). The script restores both after every sweep (the handler's by reading
   its private `_cwd` and setting it back with its `cwd()` setter) and reports each time it had to.

Each run gets its own new folder (run() refuses non-empty ones) inside one temp dir that is removed afterwards;
every run folder is deleted as soon as it has been checked. Timings are wall clock (`time.perf_counter`); other
processes on the machine can slow either side, so the load average is printed before and after.
Not part of the test suite.
"""
from __future__ import annotations
import argparse, contextlib, gc, hashlib, io, os, platform, shutil, statistics, sys, tempfile, time
from pathlib import Path

def log(msg: str): print(msg, file=sys.stderr, flush=True)


def tiny_template(folder: Path, n: int) -> Path:
    "Write the tiny template notebook: a parameters cell and one cell that records a small table."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(f'n: int = {n}  # number of people\nseed: int = 1  # random seed\n'
                                       'rules: str = "uk_default"  # disclosure rules\n'
                                       'out_dir: str = ""  # run folder')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny template"), params,
                nbformat.v4.new_code_cell(
                    "import numpy as np, pandas as pd\n"
                    "from healthbench.templates import template_out_dir, template_session\n"
                    "out = template_out_dir(out_dir)\n"
                    "session = template_session(out, rules)\n"
                    "g = pd.Series(np.random.default_rng(seed).choice(list('abc'), n), name='g')\n"
                    "session.table('counts', g.value_counts().sort_index().to_frame('count'), json=True)")]
    path = folder / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def code_cells(template, params: dict, out_dir: Path) -> list:
    "The code the kernel runs for `run(template, params, out_dir)`: papermill's parameterised cells, IPython-transformed."
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    from IPython.core.inputtransformer2 import TransformerManager
    from healthbench.templates import template_path, validate
    path = template_path(template)
    full = validate(path, params)                       # exactly what run() passes to papermill ...
    if "out_dir" in full: full["out_dir"] = str(out_dir)  # ... with its run folder
    nb = load_notebook_node(str(path))                 # as papermill.execute_notebook reads it
    nb = parameterize_notebook(nb, full, kernel_name="python3", language="python")
    tm = TransformerManager()
    return [compile(tm.transform_cell(c.source), f"<{path.stem} cell {i}>", "exec")
            for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


def in_process(template, params: dict, out_dir: Path) -> float:
    "Seconds to exec the template's code cells here, in a fresh namespace, with `out_dir` as working directory."
    out_dir.mkdir(parents=True)
    out_dir = out_dir.resolve()
    cells = code_cells(template, params, out_dir)      # prepared outside the timing: not part of either vehicle
    ns = {"__name__": "__main__"}
    cwd = os.getcwd()
    try:
        t0 = time.perf_counter()
        os.chdir(out_dir)
        with contextlib.redirect_stdout(io.StringIO()):
            for code in cells: exec(code, ns)
        seconds = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
        ns.clear(); gc.collect()                        # close the template's DuckDB connections before cleanup
    return seconds


def via_run(template, params: dict, out_dir: Path) -> tuple[float, float]:
    "Seconds of `run(...)` (total, and papermill alone from the manifest)."
    from healthbench.templates import run
    t0 = time.perf_counter()
    r = run(template, params, out_dir, progress=False)
    seconds = time.perf_counter() - t0
    assert r.status == "succeeded", r
    return seconds, r.manifest["seconds"]


def result_tables(run_dir: Path) -> dict[str, str]:
    out = run_dir / "outputs"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*"))
            if p.suffix in (".csv", ".json") and p.name != "output_log.json"}


def bench_overhead(label: str, template, params: dict, tmp: Path, repeats: int, warmup: int) -> dict:
    runs, papermill_s, inproc, check = [], [], [], None
    for r in range(warmup + repeats):
        timed = r >= warmup
        d_run, d_in = tmp / f"{label}_run_{r}", tmp / f"{label}_inproc_{r}"
        order = ("run", "in") if r % 2 == 0 else ("in", "run")
        for what in order:
            if what == "run": total, pm = via_run(template, params, d_run)
            else: ins = in_process(template, params, d_in)
        if check is None:                               # same work on both sides?
            a, b = result_tables(d_run), result_tables(d_in)
            check = (f"{len(a)} result tables identical" if a == b and a else
                     f"RESULT TABLES DIFFER: run() {sorted(a)} vs in-process {sorted(b)}; "
                     f"differing: {sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))}")
        shutil.rmtree(d_run); shutil.rmtree(d_in)
        tag = f"repeat {r - warmup + 1}/{repeats}" if timed else "warm-up (not timed)"
        log(f"  {label}: {tag}: run() {total:.2f} s (papermill {pm:.2f} s), in-process {ins:.3f} s")
        if timed: runs.append(total); papermill_s.append(pm); inproc.append(ins)
    return {"label": label, "run_s": statistics.median(runs), "papermill_s": statistics.median(papermill_s),
            "in_s": statistics.median(inproc), "runs": runs, "inproc": inproc, "check": check}


def _where(path, tmp: Path) -> str:
    p = Path(path)
    return f"<tmp>/{p.relative_to(tmp)}" if p.is_relative_to(tmp) else str(p)


def bench_sweep(grid: dict, tmp: Path, repeats: int) -> dict:
    from healthbench.templates import sweep
    times = {1: [], 2: []}
    from papermill.iorw import papermill_io
    local = papermill_io.get_handler("local")           # papermill's process-wide local file handler
    n_runs, cwd, io_cwd, leaked = None, os.getcwd(), local._cwd, []
    for r in range(repeats):
        for n_jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
            d = tmp / f"sweep_{n_jobs}_{r}"
            t0 = time.perf_counter()
            df = sweep("characterise", grid, d, n_jobs=n_jobs, progress=False)
            times[n_jobs].append(time.perf_counter() - t0)
            if os.getcwd() != cwd:                      # see "cwd" in the module docstring
                leaked.append(f"n_jobs={n_jobs}: working directory {_where(os.getcwd(), tmp)}")
                os.chdir(cwd)
            if local._cwd != io_cwd:
                leaked.append(f"n_jobs={n_jobs}: papermill's local handler cwd {_where(local._cwd, tmp)}")
                local.cwd(io_cwd)
            bad = df[df.status != "succeeded"]
            assert bad.empty, f"sweep runs failed:\n{bad.to_string()}"
            n_runs = len(df)
            shutil.rmtree(d)
            log(f"  sweep repeat {r + 1}/{repeats}, n_jobs={n_jobs}: {times[n_jobs][-1]:.1f} s "
                f"({n_runs} runs; per run {', '.join(f'{s:.1f}' for s in df.seconds)} s)")
    return {"serial_s": statistics.median(times[1]), "parallel_s": statistics.median(times[2]),
            "serial": times[1], "parallel": times[2], "n_runs": n_runs,
            "leaked": leaked}


def machine_info() -> str:
    from importlib.metadata import version
    v = {p: version(p) for p in ("papermill", "nbclient", "nbconvert", "ipykernel", "jupyter_client", "pandas")}
    return (f"nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))})  python={platform.python_version()}  "
            + "  ".join(f"{k}={x}" for k, x in v.items()) + f"  platform={platform.platform()}")


def load() -> str: return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="run()/in-process pairs per template (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed run()/in-process pairs per template first")
    p.add_argument("--sweep-repeats", type=int, default=3, help="serial/parallel sweep pairs (medians reported)")
    p.add_argument("--persons", type=int, default=3000, help="persons of characterise's synthetic CDM")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="the sweep's grid of seeds")
    p.add_argument("--tiny-n", type=int, default=200, help="rows of the tiny template's table")
    a = p.parse_args(argv)
    print(machine_info())
    print(f"load average (1/5/15 min) at start: {load()}  -- other processes may be using the machine\n", flush=True)
    grid = {"seed": a.seeds, "persons": [a.persons]}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hb_templates_bench_") as d:
        tmp = Path(d)
        tiny = tiny_template(tmp, a.tiny_n)
        log("overhead of a run:")
        res = [bench_overhead("tiny", tiny, {"seed": 3}, tmp, a.repeats, a.warmup),
               bench_overhead(f"characterise persons={a.persons}", "characterise", {"persons": a.persons}, tmp,
                              a.repeats, a.warmup)]
        log("sweep:")
        sw = bench_sweep(grid, tmp, a.sweep_repeats)

    print(f"1. overhead of a run: medians over {a.repeats} repeat(s) after {a.warmup} warm-up; "
          "overhead = run() - in-process; ratio = run() / in-process")
    cols = ("template", "run() s", "papermill s", "rest s", "in-process s", "overhead s", "ratio")
    fmt = "{:<27} {:>8} {:>11} {:>7} {:>12} {:>10} {:>8}"
    print(fmt.format(*cols))
    for r in res:
        print(fmt.format(r["label"], f"{r['run_s']:.2f}", f"{r['papermill_s']:.2f}",
                         f"{r['run_s'] - r['papermill_s']:.2f}", f"{r['in_s']:.3f}",
                         f"{r['run_s'] - r['in_s']:.2f}", f"{r['run_s'] / r['in_s']:.1f}x"))
    print("   (papermill s = the manifest's `seconds`: kernel start + execution; rest = validation, nbconvert HTML, "
          "hashing, manifest)")
    for r in res:
        print(f"   {r['label']}: {r['check']}; runs (s): run() " + " ".join(f"{x:.2f}" for x in r["runs"])
              + " | in-process " + " ".join(f"{x:.3f}" for x in r["inproc"]))

    print(f"\n2. sweep of characterise over {grid} ({sw['n_runs']} runs): medians over {a.sweep_repeats} repeat(s)")
    fmt = "{:>10} {:>10} {:>9} {:>6}"
    print(fmt.format("n_jobs=1 s", "n_jobs=2 s", "speed-up", "cores"))
    print(fmt.format(f"{sw['serial_s']:.1f}", f"{sw['parallel_s']:.1f}", f"{sw['serial_s'] / sw['parallel_s']:.2f}x",
                     str(len(os.sched_getaffinity(0)))))
    print("   runs (s): n_jobs=1 " + " ".join(f"{x:.1f}" for x in sw["serial"])
          + " | n_jobs=2 " + " ".join(f"{x:.1f}" for x in sw["parallel"]))
    if sw["leaked"]:
        print(f"   NOTE: parallel sweeps changed process-wide state ({len(sw['leaked'])} time(s) in {2 * a.sweep_repeats} "
              f"sweeps; restored by this script, see 'cwd' in the docstring): {'; '.join(sw['leaked'])}")
    print(f"\nload average (1/5/15 min) at end: {load()}; total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
