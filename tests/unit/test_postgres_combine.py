"""Which writes put off kunpay's PostgreSQL client sends as one statement, and how
(kunpay_worker/storage/postgres.py; tests/integration/test_postgres_client.py runs them)."""

from __future__ import annotations

import asyncpg

from kunpay_worker.storage.postgres import _combined, _stale


class Moved(Exception):
    pass


INSERT = 'INSERT INTO "outbox" ("kind","body") VALUES ($1,$2) RETURNING "id"'
UPDATE = 'UPDATE "transactions" SET "status"=$1 WHERE "id"=$2 AND "status"=$3'


def test_values_are_numbered_on_and_returning_dropped() -> None:
    moved = Moved()
    combined = _combined([(INSERT, ["E", "{}"], None), (UPDATE, ["OK", "t", "P"], moved)])
    assert combined is not None
    sql, values = combined
    assert values == ["E", "{}", "OK", "t", "P"]
    assert sql == (
        'WITH w1 AS (INSERT INTO "outbox" ("kind","body") VALUES ($1,$2) RETURNING 1), '
        'w2 AS (UPDATE "transactions" SET "status"=$3 WHERE "id"=$4 AND "status"=$5 RETURNING 1) '
        # Each part read in turn, so that they run in order; the UPDATE's count checked.
        "SELECT (SELECT count(*) FROM w1), CASE WHEN (SELECT count(*) FROM w2) = 1 THEN 0 "
        "ELSE ('kunpay-stale-2/' || (SELECT count(*) FROM w2))::int END"
    )
    assert 'RETURNING "id"' not in sql  # no generated id is read back (db.add's contract)


def test_inserts_alone_are_read_in_order_and_checked_for_nothing() -> None:
    combined = _combined([(INSERT, [1, 2], None), (INSERT, [3, 4], None)])
    assert combined is not None
    assert combined[0].endswith(" SELECT (SELECT count(*) FROM w1), (SELECT count(*) FROM w2)")


def test_declined_where_one_statement_could_differ() -> None:
    insert_transactions = 'INSERT INTO "transactions" ("id") VALUES ($1)'
    # An UPDATE would not see another write of its table made in the same statement.
    assert _combined([(insert_transactions, [1], None), (UPDATE, [1, 2, 3], Moved())]) is None
    assert _combined([(UPDATE, [1, 2, 3], Moved()), (UPDATE, [1, 2, 3], Moved())]) is None
    # Not as Tortoise writes a plain write with every value a parameter.
    assert _combined([("SELECT $1", [1], None)]) is None
    assert _combined([('UPDATE "t" SET "a"=\'$1\' WHERE "b"=$1', [1], None)]) is None
    assert _combined([('INSERT INTO "t" ("a") VALUES ($1); DROP TABLE "t"', [1], None)]) is None
    assert _combined([('INSERT INTO "t" ("a","b") VALUES ($1,$3)', [1, 2], None)]) is None


def test_the_error_of_a_stale_update_names_it() -> None:
    first, second = Moved("first"), Moved("second")
    writes = [(UPDATE, [1, 2, 3], first), (INSERT, [1, 2], None), (UPDATE, [1, 2, 3], second)]
    error = asyncpg.exceptions.InvalidTextRepresentationError(
        'invalid input syntax for type integer: "kunpay-stale-3/0"'
    )
    assert _stale(error, writes) is second
    # The server's own language and quotes (lc_messages = 'fr_FR.UTF-8').
    french = asyncpg.exceptions.InvalidTextRepresentationError(
        "syntaxe en entrée invalide pour le type integer : « kunpay-stale-1/0 »"
    )
    assert _stale(french, writes) is first
    other = asyncpg.exceptions.InvalidTextRepresentationError(
        'invalid input syntax for type uuid: "nope"'
    )
    assert _stale(other, writes) is None
    assert _stale(asyncpg.exceptions.UniqueViolationError("kunpay-stale-1/0"), writes) is None
