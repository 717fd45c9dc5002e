"""Independent reference verdicts from ACRO (PyPI ``acro``, SACRO project) for healthbench's disclosure control.

Runs only in the second virtual environment made by ``tests/acro/make_venv.sh`` (ACRO pins pandas<=2.3.3).

``acro_verdict(data, spec)`` builds one table with ACRO, suppression OFF, and reads ACRO's own record of it
(``acro.results.get_index(-1)``: ``.status``, ``.summary``, ``.sdc`` = ``{"summary": {check: n}, "cells":
{check: [[row, col], ...]}}``, ``.outcome`` = per-cell strings, ``.output[0]`` = the table).

Rule names are ACRO's own. ACRO >= 1.0 names its checks after the statbarn SDC ontology
(``MinimumThresholdCheck``, ``NKCheck``, ``PPercentCheck``, ``PresenceOfZeroCheck``, ...); ACRO 0.4.x called them
``threshold``, ``nk-rule``, ``p-ratio``, ``all-values-are-same``, ``negative``, ``missing``. ``LEGACY_NAMES`` maps
one to the other, and the verdict carries both ``cells`` (ACRO's names) and ``cells_legacy``.

Configuration: ACRO's ``default.yaml`` (``ACRO(config="default")`` reads ``<site-packages>/acro/default.yaml``):
safe_threshold 10, safe_nk_n 2, safe_nk_k 0.90, safe_pratio_p 0.10, check_missing_values False,
zeros_are_disclosive True. ``spec["acro_config"]`` and then ``overrides`` change keys of that dict for one call
(the checks read the same dict object).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import pandas as pd

# ``import acro`` calls logging.basicConfig(level=INFO) (adds a root handler) and
# warnings.simplefilter("ignore", FutureWarning); undo the root-logger part so the caller's logging is untouched.
_root = logging.getLogger()
_root_handlers, _root_level = list(_root.handlers), _root.level
_filters = list(warnings.filters)
import acro  # noqa: E402
from acro.version import __version__ as ACRO_VERSION  # noqa: E402

_root.handlers[:] = _root_handlers
_root.setLevel(_root_level)
warnings.filters[:] = _filters
for _name in ("acro", "acro:records"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__all__ = ["ACRO_VERSION", "LEGACY_NAMES", "acro_verdict", "acro_session", "frame_to_split"]

LEGACY_NAMES: dict[str, str] = {
    "MinimumThresholdCheck": "threshold",
    "NKCheck": "nk-rule",
    "PPercentCheck": "p-ratio",
    "PresenceOfZeroCheck": "zeros",
    "AllSameValuesCheck": "all-values-are-same",
    "MissingCheck": "missing",
    "MinimumDoFCheck": "dof",
}

# checks that never flag a cell (informational: their masks are all-False by construction)
INFORMATIONAL_CHECKS = {"RequiredZeroCheck", "PresenceOfLinkedTableCheck", "StatbarnDataCheck"}


def acro_session(overrides: dict | None = None) -> acro.ACRO:
    """A quiet ACRO session with suppression off and default.yaml's parameters (plus ``overrides``)."""
    session = acro.ACRO(config="default", suppress=False)
    for name in ("acro", "acro:records"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if overrides:
        unknown = set(overrides) - set(session.config)
        if unknown:
            raise KeyError(f"not ACRO config keys: {sorted(unknown)}")
        session.config.update(overrides)  # session.sdc_checks.risk_appetite is this same dict
    return session


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _label(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_label(v) for v in x]
    return _scalar(x)


def _scalar(x: Any) -> Any:
    if x is None:
        return None
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(x, float) and math.isnan(x):
        return None
    if x is pd.NA or x is pd.NaT:
        return None
    return x


def frame_to_split(df: pd.DataFrame) -> dict:
    """``{"index": [...], "columns": [...], "data": [[...]]}``; tuple labels become lists, NaN becomes None."""
    return {
        "index_names": [_scalar(n) for n in df.index.names],
        "column_names": [_scalar(n) for n in df.columns.names],
        "index": [_label(v) for v in df.index],
        "columns": [_label(v) for v in df.columns],
        "data": [[_scalar(v) for v in row] for row in df.itertuples(index=False, name=None)],
    }


def run_spec(session: acro.ACRO, data: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Make the table of ``spec`` with ``session`` (records it in ``session.results``)."""
    kind = spec.get("kind", "crosstab")
    index = _as_list(spec.get("index"))
    columns = _as_list(spec.get("columns"))
    values = spec.get("values")
    aggfunc = spec.get("aggfunc")
    margins = bool(spec.get("margins", False))
    if kind == "crosstab":
        return session.crosstab(
            [data[c] for c in index],
            [data[c] for c in columns],
            values=None if values is None else data[values],
            aggfunc=aggfunc,
            margins=margins,
        )
    if kind == "pivot_table":
        return session.pivot_table(
            data,
            values=values,
            index=index,
            columns=columns or None,
            aggfunc=aggfunc if aggfunc is not None else "mean",
            margins=margins,
        )
    raise ValueError(f"unknown table kind {kind!r}")


def acro_verdict(data: pd.DataFrame, spec: dict, overrides: dict | None = None) -> dict:
    """ACRO's verdict on the table ``spec`` over microdata ``data`` (suppression off).

    Returns ``{"status", "summary", "table", "cells", "cells_legacy", "counts", "outcome", "checks",
    "acro_version"}``: ``status`` is ACRO's ("pass" | "fail" | "review"); ``cells`` maps each check ACRO
    ran to the positional ``[row, col]`` cells its mask flags (positions in ``table["data"]``);
    ``counts`` is ACRO's per-check cell count (``sdc["summary"]``); ``outcome`` is ACRO's per-cell string
    table ("ok" or "MinimumThresholdCheck; NKCheck; "); ``checks`` is ACRO's per-check status.
    """
    session = acro_session({**spec.get("acro_config", {}), **(overrides or {})})
    with warnings.catch_warnings():
        # pandas FutureWarnings from ACRO's crosstab(aggfunc=np.sum/np.max) calls, not ours
        warnings.simplefilter("ignore", FutureWarning)
        table = run_spec(session, data, spec)
    record = session.results.get_index(-1)
    sdc = record.sdc
    cells = {name: [list(map(int, rc)) for rc in rc_list] for name, rc_list in sdc["cells"].items()}
    return {
        "name": spec.get("name"),
        "status": record.status,
        "summary": record.summary,
        "table": frame_to_split(table),
        "cells": cells,
        "cells_legacy": {LEGACY_NAMES[k]: v for k, v in cells.items() if k in LEGACY_NAMES},
        "counts": dict(sdc["summary"]),
        "outcome": frame_to_split(record.outcome),
        "checks": dict(record.fair.get("check_status", {})),
        "acro_version": ACRO_VERSION,
    }
