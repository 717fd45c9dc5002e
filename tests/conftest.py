"""The suite's pytest setup: with HB_HYPOTHESIS_DERANDOMIZE=1 (set by tests/run_all.sh) hypothesis draws the same examples
on every run, so a red CI is reproducible and what was checked before landing is what CI checks; without it (a developer
running pytest) every run explores new examples."""
import os

from hypothesis import settings

settings.register_profile("derandomized", derandomize=True)
if os.environ.get("HB_HYPOTHESIS_DERANDOMIZE") == "1":
    settings.load_profile("derandomized")
