"""Django's MySQL backend, connecting to the first host of `HOSTS` that answers and is ready.

For a MariaDB Galera cluster: each app server lists the nodes with its own first. A node that
is down (connection refused, timed out) or up but not serving (`wsrep_ready` OFF: joining,
desynced, or cut off from the cluster's primary component) is skipped, so a new connection —
every request's, with CONN_MAX_AGE=0 — goes to the next node. A connection lost mid-request is
never moved: its transaction is rolled back by the server and the request answered 503 (the
ledger's `LedgerBusy`), and the client's retry reconnects.
"""

from __future__ import annotations

import logging

from django.db.backends.mysql import base as mysql

logger = logging.getLogger("billing")


class DatabaseWrapper(mysql.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        hosts = self.settings_dict.get("HOSTS") or [(conn_params.get("host"), conn_params.get("port"))]
        failure: Exception | None = None
        for host, port in hosts:
            try:
                connection = super().get_new_connection({**conn_params, "host": host, "port": port})
            except mysql.Database.OperationalError as exc:
                logger.warning("[Billing] Database host %s:%s unreachable, trying the next: %s", host, port, exc)
                failure = exc
                continue
            if _serving(connection):
                return connection
            logger.warning("[Billing] Database host %s:%s is not serving (wsrep_ready OFF); next", host, port)
            connection.close()
            failure = mysql.Database.OperationalError(1047, f"{host}:{port} is not ready for use")
        raise failure


def _serving(connection) -> bool:
    """False for a Galera node that is not ready for queries; True for any other server."""
    cursor = connection.cursor()
    try:
        cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        row = cursor.fetchone()
        if row is None or row[1] != "ON":
            return True
        cursor.execute("SHOW STATUS LIKE 'wsrep_ready'")
        row = cursor.fetchone()
        return row is not None and row[1] == "ON"
    except mysql.Database.Error:
        return False
    finally:
        cursor.close()
