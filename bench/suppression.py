"""How much disclosure control hides in the default characterise and predict runs, for two checkouts of healthbench.

    python bench/suppression.py OLD_CHECKOUT NEW_CHECKOUT [--out DIR]

Each checkout's templates run with their defaults (synthetic CDM, seed 1) in a kernel that imports that checkout
(PYTHONPATH), one after the other. For every released CSV the script counts the cells of the table body and the
cells hidden: '[c]' (the marker a suppressed cell gets since the release ledger) or, for a checkout without that marker, an empty cell
(there an empty cell is also a value that does not apply, e.g. a confidence interval of a Brier score, so its
figure is an upper bound), and prints a table per template and output with both checkouts side by side. Not a
test: a measurement for the notes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd


def run(checkout: Path, template: str, out: Path) -> None:
    code = (f"from healthbench.templates import run; run({template!r}, {{}}, {str(out)!r}, progress=False)")
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=out.parent)


def cells(release: Path) -> dict[str, tuple[int, int]]:
    "Per released CSV: (cells in the table body, cells hidden)."
    out = {}
    for f in sorted(release.glob("*.csv")):
        t = pd.read_csv(f, dtype=str, keep_default_na=False)
        body = t.iloc[:, 1:] if len(t.columns) > 1 else t
        marked = int(body.isin(["[c]"]).to_numpy().sum())
        hidden = marked if marked or any("[c]" in g.read_text() for g in release.glob("*.csv")) else int(body.isin([""]).to_numpy().sum())
        out[f.stem] = (int(body.size), hidden)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old", type=Path); ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="hb-suppression-"))
    rows = []
    for template in ("characterise", "predict"):
        got = {}
        for label, checkout in (("old", a.old), ("new", a.new)):
            d = work / label / template
            d.parent.mkdir(parents=True, exist_ok=True)
            run(checkout.resolve(), template, d)
            got[label] = cells(d / "release")
            log = json.loads((d / "outputs" / "output_log.json").read_text())["results"]
            got[label + "_status"] = {r["properties"]["name"]: r["status"] for r in log.values()}
        for name in sorted(set(got["old"]) | set(got["new"])):
            o, n = got["old"].get(name), got["new"].get(name)
            rows.append(dict(template=template, output=name, old_cells=o[0] if o else None, old_hidden=o[1] if o else None,
                             new_cells=n[0] if n else None, new_hidden=n[1] if n else None,
                             new_status=got["new_status"].get(name, "not made")))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    for t, g in df.groupby("template"):
        print(f"{t}: old {int(g.old_hidden.sum())} of {int(g.old_cells.sum())} cells hidden; "
              f"new {int(g.new_hidden.sum())} of {int(g.new_cells.sum())}")
    print(f"(run folders in {work})")


if __name__ == "__main__":
    main()
