"""Metrics, summary.json, cross-fold tables and plots; built in later issues."""
