"""Django's MySQL backend, connecting to the first host of `HOSTS` that answers and is ready.

For a MariaDB Galera cluster: each app server lists the nodes with its own first. A node that
is down (connection refused, timed out) or up but not serving (`wsrep_ready` OFF: joining, or cut
off from the cluster's primary component) is skipped, and one that serves but is not Synced (a
state-transfer donor, desynced) is used only when no node is Synced; so a new connection — every
request's with CONN_MAX_AGE=0, or after a persistent one fails its check — goes to the next
node. A connection lost mid-request is not moved mid-transaction: its transaction is rolled back
by the server (or committed, if the answer was lost after COMMIT). Charges and holds are then run
again on a new connection, replaying their first run if it committed (they always carry an
idempotency key); other requests answer 503 (the ledger's `LedgerBusy`), and the client's retry
reconnects. Every connection reads causally (`wsrep_sync_wait`, set in `config.settings`).
"""

from __future__ import annotations

import logging

from django.db.backends.mysql import base as mysql

logger = logging.getLogger("billing")


class DatabaseWrapper(mysql.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        hosts = self.settings_dict.get("HOSTS") or [(conn_params.get("host"), conn_params.get("port"))]
        failure: Exception | None = None
        fallback = None  # a node that serves but is not Synced (a donor, desynced): only if no other
        for host, port in hosts:
            try:
                connection = super().get_new_connection({**conn_params, "host": host, "port": port})
            except mysql.Database.OperationalError as exc:
                logger.warning("[Billing] Database host %s:%s unreachable, trying the next: %s", host, port, exc)
                failure = exc
                continue
            state = _state(connection)
            if state == SYNCED:
                if fallback is not None:
                    fallback.close()
                return connection
            if state == SERVING and fallback is None:
                fallback = connection
                continue
            logger.warning("[Billing] Database host %s:%s is not serving (%s); trying the next", host, port, state)
            connection.close()
            failure = mysql.Database.OperationalError(1047, f"{host}:{port} is not ready for use")
        if fallback is not None:
            return fallback
        raise failure

    def is_usable(self):
        # Also asked before reusing a persistent connection (CONN_HEALTH_CHECKS) and after an
        # error: a node that answers pings but left the cluster is not usable.
        return super().is_usable() and _state(self.connection) in (SYNCED, SERVING)


SYNCED, SERVING, NOT_SERVING = "synced", "serving, not synced", "not serving"


def _state(connection) -> str:
    """SYNCED for a Galera node in the Synced state and for any server without Galera; SERVING
    for a node that takes queries but is a donor or desynced (with rsync state transfer a donor
    blocks writes); NOT_SERVING otherwise (joining, or cut off from the cluster's primary part)."""
    cursor = connection.cursor()
    try:
        cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        row = cursor.fetchone()
        if row is None or row[1] != "ON":
            return SYNCED
        cursor.execute("SHOW STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')")
        status = dict(cursor.fetchall())
    except mysql.Database.Error:
        return NOT_SERVING
    finally:
        cursor.close()
    if status.get("wsrep_ready") != "ON":
        return NOT_SERVING
    return SYNCED if status.get("wsrep_local_state") == "4" else SERVING
