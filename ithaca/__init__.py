"""ithaca: a PostgreSQL connection pooler that reads Odyssey's configuration language."""

__version__ = "0.1.0"
