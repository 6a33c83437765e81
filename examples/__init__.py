"""Runnable examples of revstore.sqlalchemy on the real cases (docs/sqlalchemy.md,
"Examples"); tests/sqlalchemy/test_examples_*.py race them on every backend."""
