"""Benchmarks comparing fanout's local backend with ProcessPoolExecutor and joblib.

Run ``python bench/run.py`` from the repository root; see ``bench/run.py`` for the scenarios.
"""
