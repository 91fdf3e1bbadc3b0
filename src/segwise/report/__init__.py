"""Figures and reports for runs."""
