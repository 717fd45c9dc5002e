"""A Jupyter-native workbench for health-data research on OMOP CDM: synthetic data, cohorts, disclosure control, templates."""

__version__ = "0.1.0"
