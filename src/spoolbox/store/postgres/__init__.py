"""The PostgreSQL store, for several spooler processes or machines on one queue:
:class:`PostgresStore` (the async face, :mod:`.store`) over a connection pool and
one transaction per operation (:mod:`.connection`), the operations as async functions
(:mod:`.transactions`), the tables and their migrations (:mod:`.schema`) and their
queries (:mod:`.queries`).  Needs the ``postgres`` extra (psycopg 3 and psycopg-pool).
"""

from .connection import describe
from .schema import SCHEMA_VERSION
from .store import PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore", "describe"]
