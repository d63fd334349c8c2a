"""Feast definitions only (feast apply imports features.py from this folder)."""
