"""The jobs HTTP API (a Chalice app) and the dashboard it serves."""
