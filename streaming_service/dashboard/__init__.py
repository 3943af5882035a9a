"""The dashboard: a page (`static/`) and the read-only JSON API behind it (`api`, `queries`)."""
