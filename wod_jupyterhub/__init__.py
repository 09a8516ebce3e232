"""Workshops-on-Demand for JupyterHub."""

__version__ = "0.1.0"
