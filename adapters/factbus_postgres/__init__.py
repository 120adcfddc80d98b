"""factbus's PostgreSQL store: ``postgresql://...``, shared by the workers of a group.

See :mod:`factbus_postgres.store` for the URL options and the concurrency contract.

:raises MissingDriver: on import, when asyncpg is not installed
    (``pip install 'factbus[postgres]'``).
"""

from factbus_postgres.store import PostgresConfig, PostgresStore, PostgresTransaction

__all__ = ["PostgresConfig", "PostgresStore", "PostgresTransaction"]
