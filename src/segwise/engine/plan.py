"""TEMP cli-merge: the plan moves here from data/plan.py (helper engine); the lead keeps that version."""

from ..data.plan import make_plan, write_plan

__all__ = ["make_plan", "write_plan"]
