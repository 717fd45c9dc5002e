"""A Jupyter-native workbench for health-data research on OMOP CDM: synthetic data, cohorts, disclosure control, templates."""

__version__ = "0.1.0"

__all__ = ['load_ipython_extension', 'load_ipython_extension']

# %% ../nbs/10_widgets.ipynb #612238d5
def load_ipython_extension(ipython):
    "`%load_ext healthbench`: register the `%healthbench` magic."
    from healthbench.widgets import load_ipython_extension as load
    load(ipython)

# %% ../nbs/10_widgets.ipynb #612238d5
def load_ipython_extension(ipython):
    "`%load_ext healthbench`: register the `%healthbench` magic."
    from healthbench.widgets import load_ipython_extension as load
    load(ipython)