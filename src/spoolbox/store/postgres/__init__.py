"""The PostgreSQL store, for several spooler processes or machines on one queue:
:class:`PostgresStore` (the async face, :mod:`.store`) over a connection pool and one
transaction per operation (:mod:`.connection`), wake-ups across nodes by LISTEN/NOTIFY
(:mod:`.wakeups`), the operations as async functions (:mod:`.transactions`), the
tables and their migrations (:mod:`.schema`) and their queries (:mod:`.queries`).
Needs the ``postgres`` extra (psycopg 3 and psycopg-pool).
"""

from .connection import describe
from .schema import SCHEMA_VERSION
from .store import PostgresStore
from .wakeups import ANY, ROUTE

__all__ = ["ANY", "ROUTE", "SCHEMA_VERSION", "PostgresStore", "describe"]
