"""Benchmarks for mailgateway, run side by side with django-helpdesk.

`python -m benchmarks` runs every registered measure on one generated corpus and prints a
table; see `benchmarks/README.md`. The package is not part of the installed product: it is
run from a checkout, so it may depend on tools the product does not (a throwaway venv for
the peer, psycopg for a scratch PostgreSQL database).
"""
