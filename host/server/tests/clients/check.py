"""Real SQL clients from PyPI against a running weir host: psql, psycopg 3 in its default
(transactional) mode, SQLAlchemy Core, asyncpg and the ADBC Flight SQL driver.

Run by tests/all/clients.rs with the host's addresses; every answer is compared with what
`POST /v1/sql` answers for the same query as an Arrow IPC stream (the truth), and writes are
checked to be refused with the same message everywhere. Exits non-zero on the first mismatch.

    python check.py --http 127.0.0.1:PORT --pg PORT --flight PORT
"""

import argparse
import asyncio
import csv
import datetime
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.ipc

TYPED = "SELECT * FROM typed ORDER BY id"
QUERIES = [
    TYPED,
    "SELECT order_id, customer_id, status, amount, placed_at, paid_at, cancel_reason FROM orders ORDER BY order_id",
    "SELECT status, count(*) AS n, min(amount) AS low, max(amount) AS high FROM orders GROUP BY status ORDER BY status",
    "SELECT * FROM \"typed-columns\".typed ORDER BY id",
]
WRITES = [
    "INSERT INTO typed (id) VALUES ('x')",
    "CREATE TABLE t (a INT)",
    "COPY (SELECT 1) TO '/tmp/weir-copy-test.csv'",
    "DELETE FROM orders",
    "SET default_transaction_read_only = off",
]


def http_post(http, sql, accept):
    request = urllib.request.Request(
        f"http://{http}/v1/sql",
        data=json.dumps({"sql": sql}).encode(),
        headers={"accept": accept, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def truth(http, sql):
    """The answer of POST /v1/sql as an Arrow table."""
    status, body = http_post(http, sql, "application/vnd.apache.arrow.stream")
    assert status == 200, f"{sql}: HTTP {status}: {body!r}"
    return pa.ipc.open_stream(body).read_all()


def rows(table):
    return [tuple(row.values()) for row in table.to_pylist()]


def same(what, sql, got, want):
    if got != want:
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                raise AssertionError(f"{what}: {sql}: row {i} differs:\n  got  {g!r}\n  want {w!r}")
        raise AssertionError(f"{what}: {sql}: {len(got)} rows, want {len(want)}")
    print(f"ok   {what}: {sql} ({len(got)} rows)")


def parse_text(value, kind):
    """A JSON or CSV value of Arrow type `kind` as the Python value Arrow gives."""
    if value is None:
        return None
    if value == "" and not (pa.types.is_string(kind) or pa.types.is_binary(kind)):
        return None
    if pa.types.is_timestamp(kind):
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)
    if pa.types.is_binary(kind):
        return bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if pa.types.is_boolean(kind):
        return value if isinstance(value, bool) else value == "true"
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_floating(kind):
        return float(value)
    return value


def check_http_json_csv(http):
    for sql in QUERIES:
        want = truth(http, sql)
        status, body = http_post(http, sql, "application/json")
        assert status == 200, body
        objects = json.loads(body)
        got = [tuple(parse_text(o.get(f.name), f.type) for f in want.schema) for o in objects]
        same("HTTP JSON", sql, got, rows(want))
        status, body = http_post(http, sql, "text/csv")
        assert status == 200, body
        records = list(csv.reader(io.StringIO(body.decode())))
        assert records[0] == want.schema.names, records[0]
        # CSV cannot tell an empty string or byte string from a null: compare them as one.
        def blank(v):
            return "" if v is None or v == "" or v == b"" else v
        got = [tuple(blank(parse_text(v, f.type)) for v, f in zip(r, want.schema)) for r in records[1:]]
        expect = [tuple(blank(v) for v in r) for r in rows(want)]
        same("HTTP CSV", sql, got, expect)


def check_psql(http, pg):
    def psql(*args):
        out = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(pg), "-U", "weir", "-d", "weir", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"psql {args}: {out.stderr}"
        return out.stdout
    listed = psql("-At", "-F", ",", "-c", r"\dt")
    for table in ["public,orders,table", "public,typed,table", "typed-columns,typed,table", "orders,orders,table"]:
        assert any(line.startswith(table) for line in listed.splitlines()), f"\\dt lacks {table}:\n{listed}"
    described = psql("-c", r"\d typed")
    for column, kind in [("n", "bigint"), ("x", "double precision"), ("flag", "boolean"),
                         ("at", "timestamp with time zone"), ("raw", "bytea"), ("s_null", "text")]:
        assert any(line.split("|")[0].strip() == column and kind in line for line in described.splitlines()), \
            f"\\d typed lacks {column} {kind}:\n{described}"
    schemas = psql("-At", "-c", r"\dn")
    assert "typed-columns" in schemas and "public" in schemas, schemas
    print("ok   psql: \\dt, \\d typed, \\dn")
    sql = QUERIES[2]
    want = truth(http, sql)
    records = list(csv.reader(io.StringIO(psql("--csv", "-c", sql))))
    got = [tuple(parse_text(v, f.type) for v, f in zip(r, want.schema)) for r in records[1:]]
    same("psql", sql, got, rows(want))


def check_psycopg(http, pg):
    import psycopg
    conninfo = f"host=127.0.0.1 port={pg} user=weir dbname=weir"
    # Default mode: the driver opens a transaction before the first statement.
    with psycopg.connect(conninfo) as conn:
        for binary in (False, True):
            for sql in QUERIES:
                got = conn.execute(sql, binary=binary).fetchall()
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                same(f"psycopg ({'binary' if binary else 'text'})", sql, got, rows(truth(http, sql)))
        sql = "SELECT id, n, x FROM typed WHERE n > %s AND flag = %s AND id <> %s ORDER BY id"
        got = conn.execute(sql, (-5, True, "zzz")).fetchall()
        want = truth(http, "SELECT id, n, x FROM typed WHERE n > -5 AND flag = true AND id <> 'zzz' ORDER BY id")
        same("psycopg (parameters)", sql, got, rows(want))
        conn.commit()
        conn.execute("SET application_name = 'weir-check'")
        assert conn.execute("SHOW application_name").fetchone() == ("weir-check",)
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("16")
        assert conn.execute("SHOW TRANSACTION ISOLATION LEVEL").fetchone() == ("read committed",)
        conn.rollback()
        # statement_timeout is honoured.
        conn.execute("SET statement_timeout = '100ms'")
        try:
            conn.execute("SELECT count(*) FROM range(100000) a, range(100000) b").fetchall()
            raise AssertionError("a 10^10-row join finished within statement_timeout = 100ms")
        except psycopg.errors.QueryCanceled as e:
            print(f"ok   psycopg: statement_timeout cancels ({str(e).strip()})")
        conn.rollback()
        # A failed statement aborts the transaction until ROLLBACK, as in Postgres.
        try:
            conn.execute("SELECT no_such_column FROM typed")
            raise AssertionError("a wrong query was answered")
        except psycopg.errors.Error:
            pass
        try:
            conn.execute("SELECT 1")
            raise AssertionError("a statement ran in an aborted transaction")
        except psycopg.errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.rollback()
        print("ok   psycopg: settings, SHOW, statement_timeout, aborted transactions")


def produce_typed(http, ident, n):
    line = json.dumps({"type": "Typed", "key": ident, "data": {
        "id": ident, "n": n, "x": 1.0, "flag": True, "at": 0, "raw": [1], "nulls": False}})
    request = urllib.request.Request(f"http://{http}/v1/topics/typed/events", data=line.encode(),
                                     headers={"Authorization": "Bearer " + os.environ["WEIR_TOKEN"],
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def wait_rows(conn, at_least):
    started = time.time()
    while True:
        count = conn.execute("SELECT count(*) FROM typed").fetchone()[0]
        if count >= at_least:
            return count
        assert time.time() - started < 30, f"typed never reached {at_least} rows (has {count})"
        time.sleep(0.05)


def check_snapshots(http, pg):
    """REPEATABLE READ pins the transaction's first snapshot; READ COMMITTED does not."""
    import psycopg
    conninfo = f"host=127.0.0.1 port={pg} user=weir dbname=weir"
    with psycopg.connect(conninfo, autocommit=True) as watcher, psycopg.connect(conninfo) as conn:
        before = watcher.execute("SELECT count(*) FROM typed").fetchone()[0]
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # BEGIN ISOLATION LEVEL REPEATABLE READ
        assert conn.execute("SELECT count(*) FROM typed").fetchone()[0] == before
        produce_typed(http, f"zz-snapshot-{time.time_ns()}", 1)
        wait_rows(watcher, before + 1)
        assert conn.execute("SELECT count(*) FROM typed").fetchone()[0] == before, "REPEATABLE READ saw a new row"
        conn.commit()
        assert conn.execute("SELECT count(*) FROM typed").fetchone()[0] == before + 1
        conn.commit()
        # READ COMMITTED (the default): each statement reads the tables as they are.
        conn.isolation_level = None
        produce_typed(http, f"zz-snapshot-{time.time_ns()}", 2)
        wait_rows(watcher, before + 2)
        assert conn.execute("SELECT count(*) FROM typed").fetchone()[0] == before + 2
        conn.commit()
    print("ok   psycopg: REPEATABLE READ pins one snapshot, READ COMMITTED reads each statement's own")


def check_sqlalchemy(http, pg):
    import sqlalchemy as sa
    engine = sa.create_engine(f"postgresql+psycopg://weir@127.0.0.1:{pg}/weir")
    names = sa.inspect(engine).get_table_names()
    assert "typed" in names and "orders" in names, names
    with engine.connect() as conn:
        columns = [r[0] for r in conn.execute(sa.text(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'typed' ORDER BY ordinal_position"))]
        typed = sa.table("typed", *[sa.column(c) for c in columns])
        query = sa.select(typed).where(typed.c.n > sa.bindparam("low")).order_by(typed.c.id)
        got = [tuple(r) for r in conn.execute(query, {"low": -5})]
    want = truth(http, "SELECT * FROM typed WHERE n > -5 ORDER BY id")
    same("SQLAlchemy Core", str(query).replace("\n", " "), got, rows(want))


async def asyncpg_checks(http, pg):
    import asyncpg
    conn = await asyncpg.connect(host="127.0.0.1", port=pg, user="weir", database="weir")
    try:
        for sql in QUERIES:
            statement = await conn.prepare(sql)
            got = [tuple(r) for r in await statement.fetch()]
            same("asyncpg (binary)", sql, got, rows(truth(http, sql)))
        statement = await conn.prepare("SELECT id, at, raw FROM typed WHERE at >= $1 AND raw <> $2 ORDER BY id")
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        got = [tuple(r) for r in await statement.fetch(epoch, b"\x07")]
        want = truth(http, "SELECT id, at, raw FROM typed WHERE at >= '1970-01-01T00:00:00Z' AND raw <> X'07' ORDER BY id")
        same("asyncpg (parameters)", "SELECT id, at, raw FROM typed WHERE at >= $1 AND raw <> $2", got, rows(want))
    finally:
        await conn.close()


def check_adbc(http, flight):
    import adbc_driver_flightsql.dbapi as flightsql
    import warnings
    warnings.simplefilter("ignore")  # "cannot disable autocommit": weir's Flight SQL has no transactions
    with flightsql.connect(f"grpc://127.0.0.1:{flight}") as conn:
        with conn.cursor() as cur:
            for sql in QUERIES:
                cur.execute(sql)
                table = cur.fetch_arrow_table()
                want = truth(http, sql)
                assert table.schema.equals(want.schema), f"{sql}: schema\n{table.schema}\nwant\n{want.schema}"
                same("ADBC Flight SQL", sql, rows(table), rows(want))
            sql = "SELECT id, n FROM typed WHERE n > $1 ORDER BY id"
            cur.execute(sql, parameters=(-5,))
            same("ADBC Flight SQL (parameters)", sql, [tuple(r) for r in cur.fetchall()],
                 rows(truth(http, "SELECT id, n FROM typed WHERE n > -5 ORDER BY id")))
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        listed = {(s["db_schema_name"], t["table_name"])
                  for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]}
        for entry in [("public", "typed"), ("public", "orders"), ("typed-columns", "typed"), ("orders", "orders")]:
            assert entry in listed, f"GetTables lacks {entry}: {sorted(listed)}"
        schema = conn.adbc_get_table_schema("typed", db_schema_filter="public")
        assert schema.equals(truth(http, TYPED).schema), schema
        print("ok   ADBC Flight SQL: GetObjects lists every table, GetTableSchema matches")


def refusal_http(http, sql):
    status, body = http_post(http, sql, "application/json")
    assert status == 400, f"HTTP {sql}: {status} {body!r}"
    return json.loads(body)["error"]["message"]


def check_writes_refused(http, pg, flight):
    import asyncpg
    import psycopg
    import adbc_driver_flightsql.dbapi as flightsql
    for sql in WRITES:
        message = refusal_http(http, sql)
        assert "read-only" in message or "must stay on" in message, f"HTTP {sql}: {message}"
        with psycopg.connect(f"host=127.0.0.1 port={pg} user=weir dbname=weir", autocommit=True) as conn:
            try:
                conn.execute(sql)
                raise AssertionError(f"psycopg ran {sql}")
            except psycopg.errors.Error as e:
                assert message in str(e), f"psycopg {sql}: {e} (HTTP said {message})"
                assert e.sqlstate == "25006", f"{sql}: SQLSTATE {e.sqlstate}"

        async def refuse():
            conn = await asyncpg.connect(host="127.0.0.1", port=pg, user="weir", database="weir")
            try:
                await conn.execute(sql)
                raise AssertionError(f"asyncpg ran {sql}")
            except asyncpg.PostgresError as e:
                assert message in str(e), f"asyncpg {sql}: {e}"
            finally:
                await conn.close()
        asyncio.run(refuse())
        with flightsql.connect(f"grpc://127.0.0.1:{flight}") as conn, conn.cursor() as cur:
            try:
                cur.execute(sql)
                cur.fetchall()
                raise AssertionError(f"ADBC ran {sql}")
            except flightsql.Error as e:
                assert message in str(e), f"ADBC {sql}: {e}"
        print(f"ok   refused on HTTP, pg (psycopg, asyncpg) and Flight SQL: {sql}: {message}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--pg", type=int, required=True)
    parser.add_argument("--flight", type=int, required=True)
    args = parser.parse_args()
    check_http_json_csv(args.http)
    check_psql(args.http, args.pg)
    check_psycopg(args.http, args.pg)
    check_sqlalchemy(args.http, args.pg)
    asyncio.run(asyncpg_checks(args.http, args.pg))
    check_adbc(args.http, args.flight)
    check_writes_refused(args.http, args.pg, args.flight)
    check_snapshots(args.http, args.pg)
    print("all clients agree with POST /v1/sql")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
