"""Alembic revisions of the artnote catalog.

A package so that `open_catalog()` can find it next to the installed library
(`importlib.resources.files("migrations")`) and upgrade any catalog to head.
"""
