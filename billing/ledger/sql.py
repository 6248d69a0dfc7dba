"""How the ledger's verbs reach the database: a verb is a short list of SQL statements (a plan).

Each money verb on the hot path (charge, hold, capture, release) is written once, as portable
SQL whose WHERE clauses carry the rules ("only if the credits are available", "only if the
hold is still pending"). `run_plan` executes a plan in one transaction:

- on MariaDB as one compound statement (`BEGIN NOT ATOMIC … END`): one round trip, its own
  START TRANSACTION … COMMIT (or, inside a caller's transaction, a savepoint). An exit handler
  rolls the transaction back on any error before the error reaches us, so nothing is ever
  half-written;
- elsewhere (SQLite for `make run`) statement by statement inside `transaction.atomic()`.

A step that must change exactly one row stops the plan when it does not: everything before it
is rolled back and `PlanStopped.step` says which step refused, so the verb can explain why
(too few credits, hold no longer pending …) with a read — the rule itself is never repeated in
Python. Steps with `returns=True` hand back their one row (`INSERT … RETURNING` or `SELECT`),
sent by the block only after its COMMIT: nothing reaches the client while the wallet is locked.

Errors that leave the connection in doubt (lost connection, killed query, "commands out of
sync") are told apart by `is_connection_error`; the ledger closes the connection then, so the
next use reconnects cleanly (the server rolls back whatever was uncommitted). A block whose
answer ends early is one of them: on a Galera node a transaction aborted by another node's
write may be replayed and committed after its answer was cut short, so its outcome is unknown.

`is_broken_trigger_cache` recognises a MariaDB 10.11 fault: a statement killed (KILL QUERY, a
time limit) while the server loads a table's triggers can leave that table's cached copy with
a trigger it failed to parse, and every write to the table then fails ("Unknown trigger has an
error in its body") until the copy leaves the table cache. `reopen_trigger_tables` closes the
cached copies (FLUSH LOCAL TABLES, on the node that refused); the retry layer does so once per
call, then runs the transaction again.

**Stored plans.** A compound statement is parsed whole on every call (about a quarter of the
server's time for a charge). A plan run with `stored=True` — one whose SQL is the same for every
call, its values all parameters (charge, hold, capture, release) — runs as a stored procedure
instead: the same block, its `%s` turned into the procedure's parameters, created on first use
under a name derived
from its text and its parameters' types (`ledger_plan_<hash>`, SQL SECURITY INVOKER), and called
(`CALL …`): MariaDB keeps it parsed for the connection. Created on a connection of its own (DDL
commits), it needs `CREATE ROUTINE`; a server that refuses it (or `BILLING_STORED_PLANS=false`) is
sent the block as before. Dropping the procedures is harmless: the next call creates them again.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.conf import settings
from django.db import DatabaseError, Error, IntegrityError, InterfaceError, OperationalError, transaction

# The block's last row starts with this, so no step's RETURNING row can pass for it.
_END_MARK = "plan-end"

# "Column … cannot be null": from a plan's statement, the sign that it was interrupted.
_NULL_IN_NOT_NULL = 1048

# MariaDB client/server errors after which the connection's state is unknown (or, 1047, the
# Galera node behind it no longer serves: closed, so the next connection goes to another node).
_CONNECTION_ERRORS = {
    1047,  # WSREP has not yet prepared node for application use
    1053,  # server shutdown in progress
    1317,  # query execution was interrupted (KILL QUERY)
    1927,  # connection was killed
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,  # commands out of sync
    2055,  # lost connection (system error)
}

# Query execution was interrupted: also how a block reports an error after its COMMIT.
_INTERRUPTED = 1317

# MariaDB's parse error, also raised for a table whose cached triggers failed to parse.
_PARSE_ERROR = 1064
_BROKEN_TRIGGER = "has an error in its body"
# The tables that carry triggers (the ledger's immutable rows); FLUSH TABLES waits this long at
# most for transactions using them to end (new statements on them queue behind it meanwhile).
TRIGGER_TABLES = ("credit_transactions", "credit_draws")
_FLUSH_LOCK_WAIT_SECONDS = 1

logger = logging.getLogger("billing")

# Stored plans: MariaDB's "PROCEDURE … does not exist" (dropped, or not yet on this Galera node) and
# the refusals that mean the database user may not create or call procedures.
_NO_SUCH_ROUTINE = 1305
_ROUTINE_REFUSED = {1044, 1142, 1227, 1370}  # creating one: access denied; calling one: 1370
_CALL_REFUSED = 1370  # EXECUTE denied (an access error from the body's own statements is not this)
# A procedure that could not be created (other than refused) is not tried again for this long.
_CREATE_BACKOFF_SECONDS = 60
_CREATE_LOCK_WAIT_SECONDS = 1
_CREATE_CONNECT_TIMEOUT_SECONDS = 2
_ROUTINE_PREFIX = "ledger_plan_"
# More distinct stored plans than this in one process means a plan marked stored is not the same
# for every call (a value written into its SQL): the rest run as compound statements, logged.
_MAX_ROUTINES = 256
# (database alias, plan SQL, parameter types) → procedure name; aliases whose user may not create
# or call procedures (the plans run as compound statements there from then on).
_routines: dict[tuple[str, str, tuple[str, ...]], str] = {}
_routines_refused: set[str] = set()
_too_many_logged: list[bool] = []
# procedure name → when its creation last failed; database alias → (text parameters' type, sql_mode)
_create_failed: dict[str, float] = {}
_text_types: dict[str, tuple[str, str]] = {}


@dataclass(frozen=True)
class Step:
    sql: str
    params: list[Any] = field(default_factory=list)
    # The plan goes on only if this statement changed exactly one row.
    must_change_one_row: bool = True
    # The statement yields one row (INSERT … RETURNING columns of at most one row, SELECT columns
    # FROM …) that the plan hands back. On MariaDB the row is kept in session variables and sent
    # after the COMMIT (`compound_sql`): integers and text come back as they are, a date as text.
    returns: bool = False
    # `sql` is a condition (a boolean expression), not a statement: the plan goes on only if it holds.
    is_condition: bool = False
    # A returning step whose row may be missing (None); any other returning step without its row
    # means the plan did not run as written (reported as a lost connection, error 2014).
    row_optional: bool = False

    def __post_init__(self):
        if self.returns and self.must_change_one_row:
            raise ValueError("A returning step cannot also be checked by its row count.")
        if self.is_condition and self.returns:
            raise ValueError("A condition returns nothing.")
        if self.returns and returned_columns(self.sql) is None:
            # Checked here, so a plan SQLite runs fails as it would on MariaDB (`_kept_row`).
            raise ValueError(f"A returning step is INSERT … RETURNING columns or SELECT columns FROM …: {self.sql!r}")


@dataclass(frozen=True)
class Branch:
    """One step of a plan with two ways to the same outcome: `then` when `condition` (SQL, a
    boolean expression with `condition_params`) holds, else `otherwise` — a short way for the
    common case next to the general one. Each way is plain statements and conditions (none
    returns a row); a checked statement or condition that fails in the way taken stops the plan
    at this step."""

    condition: str
    then: tuple[Step, ...]
    otherwise: tuple[Step, ...]
    condition_params: tuple[Any, ...] = ()
    # As a step of the plan: it returns no row, and it may stop the plan (`_stopped_at`).
    returns: ClassVar[bool] = False
    is_condition: ClassVar[bool] = False
    must_change_one_row: ClassVar[bool] = True
    row_optional: ClassVar[bool] = False

    def __post_init__(self):
        if any(not isinstance(step, Step) or step.returns for step in (*self.then, *self.otherwise)):
            raise ValueError("A branch's ways are plain statements and conditions: none returns a row.")

    @property
    def params(self) -> list[Any]:
        """In the order of the block's text: the condition's, then each way's."""
        return [*self.condition_params, *(param for step in (*self.then, *self.otherwise) for param in step.params)]


@dataclass(frozen=True)
class Followup:
    """Statements a plan needs only now and then (a threshold crossed): `steps()` run, in the
    plan's transaction, only if `condition` (SQL, no parameters) holds once the plan's steps are
    done. On MariaDB the plan's compound statement then leaves its transaction open and answers
    so; the follow-up runs in a second round trip and commits. The common case costs one
    evaluation of `condition`: the follow-up's statements are not even sent (a compound
    statement is parsed whole on every call, executed or not).

    `steps` are plain statements (no checked step): they never stop the plan."""

    condition: str
    steps: Callable[[], list[Step]]


class PlanStopped(Exception):
    """Step `step` (0-based) changed no row: nothing of the plan was kept."""

    def __init__(self, step: int):
        super().__init__(f"The plan stopped at step {step}.")
        self.step = step


def is_connection_error(exc: BaseException) -> bool:
    """The connection's state (and so the outcome of what it ran) is unknown. The client library
    raises "commands out of sync" (2014) as a ProgrammingError, hence any database error's code."""
    if isinstance(exc, InterfaceError):
        return True
    return isinstance(exc, DatabaseError) and bool(exc.args) and exc.args[0] in _CONNECTION_ERRORS


def is_broken_trigger_cache(exc: BaseException) -> bool:
    """A write refused because a table's cached triggers failed to parse (see the module's
    docstring): nothing was written, and the write succeeds once the table is reopened."""
    return (
        isinstance(exc, DatabaseError)
        and len(exc.args) > 1
        and exc.args[0] == _PARSE_ERROR
        and _BROKEN_TRIGGER in str(exc.args[1])
    )


def reopen_trigger_tables() -> bool:
    """Close this node's cached copies of the tables with triggers (FLUSH LOCAL TABLES: not
    replicated, so neither a read replica nor the other Galera nodes wait for it; it needs the
    RELOAD privilege); the next statement reopens them and parses their triggers again. Run on
    the caller's own connection — the node that refused the write — and only outside any
    transaction, so that none of ours is in its way. It waits at most
    `_FLUSH_LOCK_WAIT_SECONDS` for other transactions using the tables (statements on them queue
    behind it meanwhile). True if done; a failure is logged, and the caller's answer is 503."""
    db = transaction.get_connection()
    if db.vendor != "mysql" or db.in_atomic_block or (db.connection is not None and not db.get_autocommit()):
        return False
    tables = ", ".join(TRIGGER_TABLES)
    try:
        with db.cursor() as cursor:
            wait = f"SET STATEMENT lock_wait_timeout = {_FLUSH_LOCK_WAIT_SECONDS} FOR"
            cursor.execute(f"{wait} FLUSH LOCAL TABLES {tables}")
    except Error as exc:
        logger.error(
            "[Billing] Could not reopen %s after a trigger failed to parse (%s); run FLUSH TABLES %s on that node",
            tables,
            exc,
            tables,
        )
        return False
    logger.warning("[Billing] Reopened %s: a cached trigger had failed to parse", tables)
    return True


@functools.cache
def compound_supported() -> bool:
    """The database takes a plan as one compound statement (MariaDB ≥ 10.5). Known once per
    process: its server does not change under it."""
    db = transaction.get_connection()
    return db.vendor == "mysql" and db.mysql_is_mariadb and db.mysql_version >= (10, 5)


@functools.cache
def vendor() -> str:
    """The database the plans run on ("mysql" for MariaDB, "sqlite"): the default database's
    engine, fixed for the process (looked up once: a verb asks several times per call)."""
    return transaction.get_connection().vendor


def remember_inserted_id(name: str, table: str) -> tuple[list[Step], str]:
    """Steps to put right after an INSERT into `table`, and the SQL that reads the id it
    generated in the plan's later steps (whose own INSERTs would change LAST_INSERT_ID()).
    On MariaDB a session variable; on SQLite, whose plans run alone (one writer at a time),
    the table's highest id."""
    if vendor() == "mysql":
        return [Step(f"SET @{name} = LAST_INSERT_ID()", must_change_one_row=False)], f"@{name}"
    return [], f"(SELECT MAX(id) FROM {table})"


def bind(name: str, value: int) -> tuple[list[Step], str]:
    """Steps that give the plan's later steps the integer `value`, and the SQL that reads it: on
    MariaDB a session variable set from a parameter, so that the plan's SQL is the same for every
    value (as a stored plan needs); on SQLite, whose plans are never stored, the number itself."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected an integer, got {value!r}.")
    if vendor() == "mysql":
        return [Step(f"SET @{name} = %s", [value], must_change_one_row=False)], f"@{name}"
    return [], str(value)


def run_plan(steps: list[Step], followup: Followup | None = None, *, stored: bool = False) -> list[tuple]:
    """Run `steps` — and the `followup` if its condition holds after them — in one transaction;
    the rows of the returning steps, in order (the follow-up's after the plan's, when it ran).
    `stored`: the plan's SQL (steps and follow-up condition) is the same for every call, its
    values all parameters, so on MariaDB it may run as a stored procedure (see the module).

    Raises `PlanStopped` (nothing kept) when a checked step changed no row, or the database's
    own error (IntegrityError, deadlock, a lost connection …) with nothing kept."""
    db = transaction.get_connection()
    if compound_supported():
        if db.in_atomic_block or not db.get_autocommit():
            with transaction.atomic():
                rows, more = _compound(db, steps, own_transaction=False, followup=followup, stored=stored)
                return rows + _compound(db, followup.steps(), own_transaction=False)[0] if more else rows
        try:
            rows, more = _compound(db, steps, own_transaction=True, followup=followup, stored=stored)
            if more:  # the plan's transaction is still open: the follow-up, then COMMIT
                rows += _compound(db, followup.steps(), own_transaction=False)[0]
                with db.cursor() as cursor:
                    cursor.execute("COMMIT")
        except PlanStopped:
            raise  # the block rolled itself back
        except BaseException:
            # Whatever happened after the block (a time limit, a lost answer), no transaction of
            # the plan may outlive the call: roll back, or close the connection if that fails
            # (unless `_compound` closed it already).
            if db.connection is not None:
                try:
                    with db.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                except DatabaseError:
                    with contextlib.suppress(DatabaseError):
                        db.close()
            raise
        return rows
    with transaction.atomic():
        rows = _one_by_one(db, steps)
        if followup is not None:
            with db.cursor() as cursor:
                cursor.execute(f"SELECT CASE WHEN {followup.condition} THEN 1 ELSE 0 END")
                due = cursor.fetchone()[0] == 1
            if due:
                rows += _one_by_one(db, followup.steps())
        return rows


def _one_by_one(db, steps: list[Step | Branch]) -> list[tuple]:
    returned = []
    with db.cursor() as cursor:
        for index, step in enumerate(steps):
            if isinstance(step, Branch):
                way = step.then if _holds(cursor, step.condition, step.condition_params) else step.otherwise
                if not all(_done(cursor, inner) for inner in way):
                    raise PlanStopped(index)
                continue
            if not _done(cursor, step):
                raise PlanStopped(index)
            if step.returns:
                returned.append(cursor.fetchone())
    _require_rows(steps, returned)
    return returned


def _holds(cursor, condition: str, params) -> bool:
    cursor.execute(f"SELECT CASE WHEN {condition} THEN 1 ELSE 0 END", list(params))
    return cursor.fetchone()[0] == 1


def _done(cursor, step: Step) -> bool:
    """Run `step` alone: False if it is a condition that does not hold, or a checked statement
    that did not change one row (a returning step's row is left to fetch)."""
    if step.is_condition:
        return _holds(cursor, step.sql, step.params)
    cursor.execute(step.sql, step.params)
    return step.returns or not step.must_change_one_row or cursor.rowcount == 1


def compound_sql(steps: list[Step], *, own_transaction: bool, followup: str | None = None) -> str:
    """The plan as one MariaDB compound statement. `reached` counts the steps done up to the last
    checked one done (an unchecked statement cannot stop the plan: its error ends the block, so
    only the checked steps, and the last step, set it — `_stopped_at` looks past the unchecked
    ones); the block commits only when all steps were done and no follow-up is due, then sends
    one row: the end mark, `reached`, `more` (whether the `followup` condition holds) and the
    returning steps' rows (`_kept_row`; `_compound` takes them apart).

    In its own transaction the block sends nothing while it holds its locks: a result sent then
    wakes the waiting client, which on a busy machine takes the CPU from the thread holding the
    wallet's lock, and every charge of that wallet waits behind it (at 8 processes on one wallet,
    one row sent before the COMMIT cost about a quarter of the charges per second). So a returning
    step's row is kept in session variables inside the transaction and sent after the COMMIT, in
    one SELECT that reads no table (on Galera it has nothing to wait for). Inside a caller's
    transaction, or with a follow-up due, the transaction is still open when the row is sent.

    An error after the COMMIT (the final SELECT interrupted) cannot undo it: it is raised as 1317
    ("interrupted"), an unknown outcome, so the verb is run again only if it can find its own
    committed run — never as the deadlock or lock wait (1213, 1205) the ledger retries as if
    nothing had been written."""
    body = []
    closing = []
    sent = []
    for index, step in enumerate(steps, start=1):
        if isinstance(step, Branch):
            # Each way sets `reached` only once all its statements were done; the rest of the
            # plan runs only then.
            body.append(f"IF {step.condition} THEN {_way(step.then, index)} ELSE {_way(step.otherwise, index)} END IF;")
            if index < len(steps):
                body.append(f"IF reached = {index} THEN")
                closing.append("END IF;")
            continue
        if step.is_condition:
            body.append(f"IF {step.sql} THEN SET reached = {index};")
            closing.append("END IF;")
            continue
        if step.returns:
            keep, columns = _kept_row(step.sql, index)
            body.append(f"{keep};")
            sent += columns
        else:
            body.append(f"{step.sql};")
        if step.must_change_one_row:
            body.append(f"IF ROW_COUNT() = 1 THEN SET reached = {index};")
            closing.append("END IF;")
        elif index == len(steps):
            body.append(f"SET reached = {index};")
    head = ["BEGIN NOT ATOMIC", "DECLARE reached INT DEFAULT 0;", "DECLARE more INT DEFAULT 0;"]
    tail = []
    if followup is not None:
        tail.append(f"IF reached = {len(steps)} AND ({followup}) THEN SET more = 1; END IF;")
    if own_transaction:
        head += [
            "DECLARE committed INT DEFAULT 0;",
            "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN IF committed = 1 THEN "
            f"RESIGNAL SET MYSQL_ERRNO = {_INTERRUPTED}, MESSAGE_TEXT = 'The plan committed; its answer failed.'; "
            "END IF; ROLLBACK; RESIGNAL; END;",
            "START TRANSACTION;",
        ]
        # With a follow-up due the transaction stays open for it (`run_plan` commits or rolls back).
        # An interruption after the COMMIT cuts the answer short: the end mark never arrives, and
        # the outcome is unknown (`_compound`), as after a lost connection.
        tail.append(f"IF reached < {len(steps)} THEN ROLLBACK; ELSEIF more = 0 THEN COMMIT; SET committed = 1; END IF;")
    tail.append(f"SELECT '{_END_MARK}', reached, more{''.join(', ' + column for column in sent)};")
    return " ".join(head + body + list(reversed(closing)) + tail + ["END"])


# compound_sql's blocks by the shape of their plans: a verb's plan has the same shape on every
# call (its values are parameters), so its block is written once per process.
_blocks: dict[tuple, str] = {}
_MAX_BLOCKS = 1024


def _block(steps: list[Step | Branch], *, own_transaction: bool, followup: str | None) -> str:
    """`compound_sql` of the plan, remembered by what it depends on (not the parameters)."""
    key = (tuple(_shape(step) for step in steps), own_transaction, followup)
    sql = _blocks.get(key)
    if sql is None:
        if len(_blocks) >= _MAX_BLOCKS:  # plans whose SQL varies: keep memory bounded
            _blocks.clear()
        sql = _blocks[key] = compound_sql(steps, own_transaction=own_transaction, followup=followup)
    return sql


def _shape(step: Step | Branch) -> tuple:
    """What `compound_sql` reads of a step."""
    if isinstance(step, Branch):
        return (step.condition, tuple(map(_shape, step.then)), tuple(map(_shape, step.otherwise)))
    return (step.sql, step.returns, step.is_condition, step.must_change_one_row)


def _way(steps: tuple[Step, ...], index: int) -> str:
    """A branch's way (step `index` of the plan) as statements: each checked statement and
    condition nests the rest, and the innermost sets `reached` to the branch's index."""
    body, closing = [], []
    for step in steps:
        if step.is_condition:
            body.append(f"IF {step.sql} THEN")
            closing.append("END IF;")
            continue
        body.append(f"{step.sql};")
        if step.must_change_one_row:
            body.append("IF ROW_COUNT() = 1 THEN")
            closing.append("END IF;")
    return " ".join([*body, f"SET reached = {index};", *reversed(closing)])


# A returning step as `_kept_row` can keep it: an INSERT of at most one row into a table with an
# AUTO_INCREMENT `id` (not given by the INSERT), RETURNING columns; or a SELECT of columns that
# finds at most one row. Column names only, no expressions.
_INSERT_RETURNING = re.compile(r"(INSERT INTO (\w+) \((?:\w+, )*\w+\) .*) RETURNING (\w+(?:, \w+)*)", re.DOTALL)
_SELECT_COLUMNS = re.compile(r"SELECT (\w+(?:, \w+)*) (FROM .*)", re.DOTALL)
# Or, on MariaDB, a SELECT of the plan's own variables (values it kept, always one row).
_SELECT_VARIABLES = re.compile(r"SELECT (@\w+(?:, @\w+)*)")


@functools.lru_cache(maxsize=512)
def returned_columns(sql: str) -> int | None:
    """How many columns the returning step `sql` returns, or None if `_kept_row` cannot keep it."""
    if (inserted := _INSERT_RETURNING.fullmatch(sql)) is not None:
        insert, _, columns = inserted.groups()
        listed = insert.split("(", 1)[1].split(")", 1)[0].split(", ")
        if "id" in listed or "ON DUPLICATE KEY" in insert.upper():
            return None  # LAST_INSERT_ID() would not be this row's (or ROW_COUNT() not 1)
        return len(columns.split(", "))
    variables = _SELECT_VARIABLES.fullmatch(sql) if vendor() == "mysql" else None  # SQLite has none
    if (selected := _SELECT_COLUMNS.fullmatch(sql) or variables) is not None:
        return len(selected.group(1).split(", "))
    return None


@functools.lru_cache(maxsize=512)
def _kept_row(sql: str, index: int) -> tuple[str, tuple[str, ...]]:
    """The returning step `sql` (step `index`) as statements that keep its row in session
    variables (`@plan_<index>_<n>`, and `@plan_<index>_found` = 1 if there was one), and the
    variables the block's last SELECT sends (found first). Its values are integers or text here
    (a date would come back as text): every returning step of the ledger's plans returns ids,
    credits or a name. The row is the step's own, read in its transaction: an INSERT's row read
    back by the id it was given (LAST_INSERT_ID(), unchanged by that read)."""
    width = returned_columns(sql)
    if width is None:
        raise ValueError(f"A returning step must be INSERT … RETURNING columns or SELECT columns FROM …: {sql!r}")
    found = f"@plan_{index}_found"
    into = [f"@plan_{index}_{n}" for n in range(width)]
    if inserted := _INSERT_RETURNING.fullmatch(sql):
        insert, table, columns = inserted.groups()
        keep = (
            f"SET {found} = 0; {insert}; IF ROW_COUNT() = 1 THEN SELECT {columns}, 1 INTO {', '.join(into)}, {found} "
            f"FROM {table} WHERE id = LAST_INSERT_ID(); END IF"
        )
    elif variables := _SELECT_VARIABLES.fullmatch(sql):
        pairs = zip(into, variables.group(1).split(", "), strict=True)
        keep = f"SET {found} = 1, {', '.join(f'{kept} = {variable}' for kept, variable in pairs)}"
    else:
        columns, rest = _SELECT_COLUMNS.fullmatch(sql).groups()
        keep = f"SET {found} = 0; SELECT {columns}, 1 INTO {', '.join(into)}, {found} {rest}"
    return keep, (found, *into)


def _compound(
    db, steps: list[Step], *, own_transaction: bool, followup: Followup | None = None, stored: bool = False
) -> tuple[list, bool]:
    """Run the plan as one compound statement (or its stored procedure): the returning steps'
    rows, and whether the follow-up is due."""
    params = [param for step in steps for param in step.params]
    condition = followup.condition if followup else None
    # Only a stored plan's SQL is known to be the same on every call: the others (ids written
    # into them) are written each time, not remembered.
    write = _block if stored else compound_sql
    sql = write(steps, own_transaction=own_transaction, followup=condition)
    try:
        with db.cursor() as cursor:
            _send(db, cursor, sql, params, stored=stored)
            results = []
            try:
                while True:
                    if cursor.description:
                        results.append(cursor.fetchall())
                    if not cursor.nextset():
                        break
            except (DatabaseError, InterfaceError) as exc:
                # A deadlock or certification conflict that arrives between the block's result
                # sets leaves the client library refusing the connection's next statement (and
                # may itself come as "commands out of sync"): closed (so rolled back), and the
                # next use reconnects.
                if not (isinstance(exc, OperationalError) or is_connection_error(exc)):
                    raise
                with contextlib.suppress(DatabaseError):
                    db.close()
                raise
    except IntegrityError as exc:
        if exc.args and exc.args[0] == _NULL_IN_NOT_NULL:
            # No step writes NULL where it may not, unless interrupted: a statement killed
            # (KILL QUERY, a Galera brute-force abort) while a subquery or window was computed
            # can go on with NULL for its value. Reported as the interruption it is (nothing of
            # the block was committed: the error came before its COMMIT).
            raise OperationalError(1317, f"A statement of the plan was interrupted: {exc.args[1:]}") from exc
        raise
    if len(results) != 1 or len(results[0]) != 1 or results[0][0][:1] != (_END_MARK,):
        # The block's answer ended before its last SELECT without an error reaching us (seen on
        # a Galera node whose transaction another node's write aborted, a "brute-force abort").
        # It may have been committed: its COMMIT comes before that SELECT, and Galera replays a
        # transaction aborted after it was certified, the answer of the statements replayed
        # never reaching the client (a capture whose answer lacked its last SELECT was found
        # captured). So the outcome is unknown, as after a lost connection: closed (which rolls
        # back whatever it left open), and the verb run again only if it can tell its own
        # committed run (an idempotency key, the hold's state) — or, inside a caller's
        # transaction, refused, for the caller's atomic block to roll back.
        if own_transaction:
            with contextlib.suppress(DatabaseError):
                db.close()
        raise OperationalError(2014, "The compound statement did not report its steps; its outcome is unknown.")
    _, reached, more, *sent = results[0][0]
    if reached < len(steps):
        raise PlanStopped(_stopped_at(steps, reached))
    returned = []
    for step in steps:
        if step.returns:  # its found flag, then its columns (`compound_sql`)
            width = returned_columns(step.sql)
            found, values, sent = sent[0], tuple(sent[1 : 1 + width]), sent[1 + width :]
            returned.append(values if found == 1 else None)
    _require_rows(steps, returned)
    return returned, bool(more)


def _send(db, cursor, sql: str, params: list, *, stored: bool) -> None:
    """Send the plan's block: as a call of its stored procedure when it may be one (created first
    if missing), else as it is. A CALL refused because the procedure does not exist, or may not
    be called, ran nothing."""
    name = _routine_name(db, sql, params) if stored else None
    if name is not None:
        values = [value for value in params if value is not None]  # a NULL is written into the body
        call = f"CALL {name}({', '.join(['%s'] * len(values))})"
        for attempt in range(2):
            try:
                cursor.execute(call, values)
                return
            except DatabaseError as exc:
                code = exc.args[0] if exc.args else None
                if code == _CALL_REFUSED:
                    _refuse_routines(db, exc)
                    break
                if code != _NO_SUCH_ROUTINE:
                    raise
            if attempt or not _create_routine(db, name, sql, params):
                break  # still missing (another Galera node's DDL not applied here yet): the block itself
    cursor.execute(sql, params)


def stored_plans_enabled(db) -> bool:
    return settings.BILLING_STORED_PLANS and db.alias not in _routines_refused and compound_supported()


_BIGINT = range(-(2**63), 2**63)


def _param_type(value: Any) -> str | None:
    """The kind of SQL parameter a stored plan declares for a value like `value`: "NULL" (none:
    the body says NULL there, as the block does), "BIGINT", "BOOLEAN", "TEXT", "BLOB" — or None
    for a value only the block takes (a float, a Decimal, an integer beyond BIGINT, which the
    block's literal refuses as it always did, not as a parameter's out-of-range error)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT" if value in _BIGINT else None
    if isinstance(value, str | uuid.UUID | datetime.date):
        # Sent as a quoted string either way; converted where a column or comparison needs a
        # UUID, date or time, as the block's literal is.
        return "TEXT"
    if isinstance(value, bytes | bytearray | memoryview):
        return "BLOB"
    return None


# The parameter types of most values, by their class alone (an int may be beyond BIGINT).
_COMMON_TYPES = {type(None): "NULL", bool: "BOOLEAN", int: "BIGINT", str: "TEXT", bytes: "BLOB"}


def _param_types(params: list) -> tuple[str | None, ...]:
    """`_param_type` of each value, the common classes looked up at once (a verb's every call)."""
    types = []
    for value in params:
        kind = _COMMON_TYPES.get(type(value))
        if kind is None or (kind == "BIGINT" and value not in _BIGINT):
            kind = _param_type(value)
        types.append(kind)
    return tuple(types)


def _text_type(db) -> tuple[str, str] | None:
    """The SQL type of a stored plan's text parameters on `db` — LONGTEXT in the character set
    and collation of the ledger's tables (a parameter's collation ranks with a column's: another
    one would be refused as an "illegal mix of collations", where the block's literal gives way)
    — and the session's sql_mode (which a procedure keeps from its creation). Read once per
    process; None if the ledger's tables are not there."""
    if db.alias not in _text_types:
        with db.cursor() as cursor:
            cursor.execute(
                "SELECT c.CHARACTER_SET_NAME, t.TABLE_COLLATION, @@SESSION.sql_mode FROM information_schema.TABLES t "
                "JOIN information_schema.COLLATIONS c ON c.COLLATION_NAME = t.TABLE_COLLATION "
                "WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = 'credit_transactions'"
            )
            row = cursor.fetchone()
        if row is None:
            return None
        charset, collation, sql_mode = row
        _text_types[db.alias] = (f"LONGTEXT CHARACTER SET {charset} COLLATE {collation}", sql_mode)
    return _text_types[db.alias]


def _routine_name(db, sql: str, params: list) -> str | None:
    """The name of the stored procedure for the block `sql` with parameters like `params`, or None
    when the block is to be sent as it is (stored plans off, a parameter of another type, too many,
    its creation failed a moment ago)."""
    if not stored_plans_enabled(db):
        return None
    types = _param_types(params)
    key = (db.alias, sql, types)
    name = _routines.get(key)
    if name is None:
        if None in types or (text := _text_type(db)) is None:
            return None
        if len(_routines) >= _MAX_ROUTINES:
            if not _too_many_logged:
                _too_many_logged.append(True)
                logger.error("[Billing] More than %s distinct stored plans: a plan marked stored varies", _MAX_ROUTINES)
            return None
        digest = hashlib.sha256(repr((sql, types, text)).encode()).hexdigest()[:32]
        name = _routines[key] = f"{_ROUTINE_PREFIX}{digest}"
    failed = _create_failed.get(name)
    if failed is not None and time.monotonic() - failed < _CREATE_BACKOFF_SECONDS:
        return None
    return name


def routine_definition(sql: str, params: list, *, text_type: str = "LONGTEXT") -> tuple[str, str]:
    """The stored procedure's parameter list and body for the block `sql` run with `params`: each
    `%s` becomes a parameter (`p_1` …) — or NULL where its value is None, as the block would say
    (a typed NULL parameter could not be written to every column) — and each `%%` a `%`."""
    values = iter(params)
    arguments = []
    declared = {"BIGINT": "BIGINT", "BOOLEAN": "BOOLEAN", "TEXT": text_type, "BLOB": "LONGBLOB"}

    def parameter(match: re.Match) -> str:
        if match.group(1) == "%":
            return "%"
        value = next(values)
        if value is None:
            return "NULL"
        arguments.append(f"IN p_{len(arguments) + 1} {declared[_param_type(value)]}")
        return f"p_{len(arguments)}"

    try:
        body = re.sub(r"%([%s])", parameter, sql)
    except StopIteration:
        raise ValueError(f"The block has more placeholders than its {len(params)} parameters.") from None
    if next(values, _END_MARK) is not _END_MARK:
        raise ValueError(f"The block has fewer placeholders than its {len(params)} parameters.")
    return ", ".join(arguments), body


def _create_routine(db, name: str, sql: str, params: list) -> bool:
    """Create the stored procedure `name` (if no other process has) on a connection of its own: a
    CREATE commits, and must not end the caller's transaction. It waits at most a second for a
    lock (a caller may hold the wallet's). True if it exists now; after any other failure than a
    refusal it is not tried again for a minute (the block is sent meanwhile)."""
    text_type, _ = _text_type(db)
    arguments, body = routine_definition(sql, params, text_type=text_type)
    connection = None
    try:
        connection = db.get_new_connection(
            {**db.get_connection_params(), "connect_timeout": _CREATE_CONNECT_TIMEOUT_SECONDS}
        )
        with contextlib.closing(connection.cursor()) as cursor:
            cursor.execute(f"SET SESSION lock_wait_timeout = {_CREATE_LOCK_WAIT_SECONDS}")
            cursor.execute(
                f"CREATE PROCEDURE IF NOT EXISTS {name}({arguments}) MODIFIES SQL DATA SQL SECURITY INVOKER "
                f"COMMENT 'billing ledger plan, created on first use; safe to drop' {body}"
            )
    except (DatabaseError, db.Database.Error) as exc:  # the new connection is not Django's: its own errors
        if exc.args and exc.args[0] in _ROUTINE_REFUSED:
            _refuse_routines(db, exc)
        else:
            _create_failed[name] = time.monotonic()
            logger.warning(
                "[Billing] Could not create stored plan %s (%s); sent as a compound statement for %s s",
                name,
                exc,
                _CREATE_BACKOFF_SECONDS,
            )
        return False
    finally:
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
    _create_failed.pop(name, None)
    logger.info("[Billing] Created stored plan %s", name)
    return True


def _refuse_routines(db, exc: BaseException) -> None:
    if db.alias not in _routines_refused:
        _routines_refused.add(db.alias)
        logger.warning(
            "[Billing] Stored plans are off for database %r: %s (grant CREATE ROUTINE and EXECUTE, "
            "or set BILLING_STORED_PLANS=false)",
            db.alias,
            exc,
        )


def _require_rows(steps: list[Step], returned: list) -> None:
    """Every returning step (not `row_optional`) gave its row. Seen missing only on a Galera node
    whose transaction another node's write aborted mid-block: the outcome is unknown, so the
    connection is treated as lost (closed, and so rolled back) and the call refused (503)."""
    expected = [step for step in steps if step.returns]
    if len(expected) != len(returned) or any(
        row is None and not step.row_optional for step, row in zip(expected, returned, strict=True)
    ):
        raise OperationalError(2014, "A step of the plan returned no row; its outcome is unknown.")


def _stopped_at(steps: list[Step], reached: int) -> int:
    # The steps up to the `reached`th completed (it counts only checked ones, `compound_sql`): the
    # next checked step is the one that refused.
    for index in range(reached, len(steps)):
        if steps[index].must_change_one_row or steps[index].is_condition:
            return index
    return reached
