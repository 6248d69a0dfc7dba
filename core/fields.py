"""Model fields every app shares."""

from django.db import models


class ExactCharField(models.CharField):
    """Text compared byte for byte: idempotency keys, fingerprints and external ids.

    MySQL/MariaDB compare `utf8mb4_unicode_ci` text case- and accent-insensitively, so
    `Key-A` would find `key-a` and `kéy-a`; these columns use the binary collation there.
    SQLite compares bytes already."""

    def db_parameters(self, connection):
        parameters = super().db_parameters(connection)
        if connection.vendor == "mysql":
            parameters["collation"] = "utf8mb4_bin"
        return parameters


# Idempotency keys a client sends (1–255 characters) are stored under this prefix, so they can
# never equal a key the system writes itself (`stripe-checkout:<session>`, `stripe-clawback:<event>` …).
CLIENT_KEY_PREFIX = "client:"
# A charge or hold sent without a key gets one of its own under this prefix (`call:<time><random>`), so
# that after a lost connection it can be run again safely: a first run that did commit is found
# by its key and replayed, never repeated (`billing.ledger.posting._key_of_call`).
CALL_KEY_PREFIX = "call:"
KEY_MAX_LENGTH = 255 + len(CLIENT_KEY_PREFIX)
