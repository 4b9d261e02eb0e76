"""The database layer: tables, engine setup, migrations and query functions."""
