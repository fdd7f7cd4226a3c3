"""Reporting helpers for finished experiment results (statistics only; the tables are scripts/make_tables.py)."""
