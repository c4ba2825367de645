"""Forgetting, weight change and the report."""
