//! SQL over the read models: golden queries, HTTP formats, read-only enforcement, limits, and
//! consistency while ingesting. The data comes from the real `orders` wasm plugin through the
//! real pipeline.

use std::sync::Arc;
use std::time::Duration;

use weir_host::api::{ARROW_STREAM, ApiState};
use weir_host::pipeline::Pipeline;
use weir_host::sample::OrderStream;
use weir_sql::query::{Catalog, Encoding, QueryError, QueryLimits, SqlEngine, encode_stream};

use crate::support::{load, repo, runtime};

/// A published orders read model of `n` generated events, and an engine over it.
fn orders_engine(n: usize, limits: QueryLimits) -> Arc<SqlEngine> {
    let runtime = runtime();
    let catalog = Arc::new(Catalog::default());
    let mut pipeline = Pipeline::new(catalog.clone());
    pipeline.add(load(&runtime, "orders")).unwrap();
    for batch in OrderStream::take_events(42, 200, n).chunks(500) {
        let outcome = pipeline.process(batch);
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    }
    pipeline.publish().unwrap();
    Arc::new(SqlEngine::new(catalog, limits).unwrap())
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn golden_queries() {
    let engine = orders_engine(5_000, QueryLimits::default());
    let rt = tokio();
    let dir = repo().join("host/server/tests/sql");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "sql"));
    files.sort();
    assert!(files.len() >= 5);
    let mut mismatches = Vec::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap();
        let answer = rt.block_on(engine.query(&sql)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rendered = weir_sql::query::to_table(&answer).unwrap() + "\n";
        let expected_path = file.with_extension("out");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&expected_path, &rendered).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if rendered != expected {
            mismatches.push(format!("{}:\n{rendered}", expected_path.display()));
        }
    }
    assert!(mismatches.is_empty(), "answers differ (BLESS=1 rewrites them):\n{}", mismatches.join("\n"));
}

#[test]
fn queries_are_read_only() {
    let engine = orders_engine(500, QueryLimits::default());
    let rt = tokio();
    for sql in [
        "CREATE TABLE x (a INT)",
        "DROP TABLE orders",
        "INSERT INTO orders (order_id) VALUES ('x')",
        "DELETE FROM orders",
        "COPY orders TO '/tmp/weir-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let err = rt.block_on(engine.query(sql)).expect_err(sql);
        assert!(matches!(err, QueryError::ReadOnly(_)), "{sql}: {err}");
        assert!(err.to_string().starts_with("weir's SQL is read-only"), "{sql}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/weir-copy.csv").exists());
    let err = rt.block_on(engine.query("SELECT * FROM nowhere")).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
    let err = rt.block_on(engine.query("SELEC 1")).unwrap_err();
    assert!(matches!(err, QueryError::Sql(_)), "{err}");
}

/// Rows of an answer as CSV lines, header first.
fn csv_lines(engine: &SqlEngine, rt: &tokio::runtime::Runtime, sql: &str) -> Vec<String> {
    let answer = rt.block_on(engine.query(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = String::from_utf8(weir_sql::query::to_csv(&answer).unwrap()).unwrap();
    text.lines().map(str::to_string).collect()
}

#[test]
fn catalog_queries_describe_the_read_models() {
    // What psql's \dt and \d, JDBC's getTables/getColumns and schema browsers ask, in their
    // shape: pg_catalog joins, catalog functions, information_schema.
    let engine = orders_engine(500, QueryLimits::default());
    let rt = tokio();
    let schemas = csv_lines(&engine, &rt, "SELECT nspname FROM pg_catalog.pg_namespace ORDER BY nspname");
    assert_eq!(schemas, ["nspname", "information_schema", "orders", "pg_catalog", "public"]);
    let tables = csv_lines(
        &engine,
        &rt,
        "SELECT n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' \
         ORDER BY 1, 2",
    );
    assert_eq!(
        tables,
        [
            "nspname,relname,relkind",
            "orders,customer_revenue,r",
            "orders,orders,r",
            "public,customer_revenue,r",
            "public,orders,r"
        ]
    );
    let columns = csv_lines(
        &engine,
        &rt,
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = 'orders' AND n.nspname = 'public' AND a.attnum > 0 ORDER BY a.attnum",
    );
    assert_eq!(
        columns,
        [
            "attname,type,attnotnull",
            "order_id,text,true",
            "customer_id,text,true",
            "status,text,true",
            "amount,double precision,true",
            "currency,text,true",
            "placed_at,timestamp with time zone,true",
            "paid_at,timestamp with time zone,false",
            "shipped_at,timestamp with time zone,false",
            "cancel_reason,text,false"
        ]
    );
    // The id found by one query finds the table in the next (psql's \d does this).
    let oid = csv_lines(
        &engine,
        &rt,
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname = 'customer_revenue' ORDER BY c.oid LIMIT 1",
    )[1]
    .clone();
    let by_oid = csv_lines(&engine, &rt, &format!("SELECT relname FROM pg_catalog.pg_class WHERE oid = {oid}"));
    assert_eq!(by_oid, ["relname", "customer_revenue"]);
    let info = csv_lines(
        &engine,
        &rt,
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    );
    assert_eq!(
        info,
        [
            "table_schema,table_name",
            "orders,customer_revenue",
            "orders,orders",
            "public,customer_revenue",
            "public,orders"
        ]
    );
    let typed = csv_lines(
        &engine,
        &rt,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY ordinal_position",
    );
    assert_eq!(
        typed,
        [
            "column_name,data_type,is_nullable",
            "order_id,text,NO",
            "customer_id,text,NO",
            "status,text,NO",
            "amount,double precision,NO",
            "currency,text,NO",
            "placed_at,timestamp with time zone,NO",
            "paid_at,timestamp with time zone,YES",
            "shipped_at,timestamp with time zone,YES",
            "cancel_reason,text,YES"
        ]
    );
    let functions = csv_lines(
        &engine,
        &rt,
        "SELECT current_schema() AS s, current_database() AS d, pg_catalog.pg_get_userbyid(CAST(10 AS INT)) IS NOT NULL AS u, \
         has_table_privilege('orders', 'SELECT') AS p, version() LIKE 'PostgreSQL 16.%' AS v",
    );
    assert_eq!(functions, ["s,d,u,p,v", "public,weir,true,true,true"]);
    // SHOW works without a session; BEGIN and SET need one.
    assert_eq!(csv_lines(&engine, &rt, "SHOW server_version"), ["server_version", "16.6"]);
    for sql in ["BEGIN", "SET application_name = 'x'", "COMMIT"] {
        let err = rt.block_on(engine.query(sql)).expect_err(sql);
        assert!(matches!(err, QueryError::Session(_)), "{sql}: {err}");
    }
    let err = rt.block_on(engine.query("SHOW no_such_setting")).unwrap_err();
    assert_eq!(err.to_string(), "unrecognized configuration parameter \"no_such_setting\"");
}

#[test]
fn queries_past_their_limits_are_cancelled() {
    let rt = tokio();
    let slow = orders_engine(3_000, QueryLimits { timeout_ms: 50, memory_bytes: 512 << 20 });
    let err = rt
        .block_on(slow.query("SELECT count(*) FROM orders a, orders b, orders c WHERE a.amount + b.amount > c.amount"))
        .unwrap_err();
    assert_eq!(err.to_string(), "query cancelled after its time limit of 50 ms");

    // 16 KiB: the join's build side (about 1,000 orders) takes several times that.
    let small = orders_engine(3_000, QueryLimits { timeout_ms: 10_000, memory_bytes: 16 << 10 });
    let err = rt
        .block_on(small.query(
            "SELECT a.order_id, count(*) FROM orders a JOIN orders b ON a.customer_id = b.customer_id GROUP BY a.order_id",
        ))
        .unwrap_err();
    assert!(matches!(err, QueryError::Memory { limit: 16384, .. }), "{err}");
}

#[test]
fn answers_stay_consistent_while_ingesting() {
    let runtime = runtime();
    let catalog = Arc::new(Catalog::default());
    let mut pipeline = Pipeline::new(catalog.clone());
    pipeline.add(load(&runtime, "orders")).unwrap();
    pipeline.publish().unwrap();
    let engine = SqlEngine::new(catalog, QueryLimits::default()).unwrap();
    let events = OrderStream::take_events(5, 300, 30_000);
    let ingest = std::thread::spawn(move || {
        for batch in events.chunks(250) {
            assert!(pipeline.process(batch).failures.is_empty());
            pipeline.publish().unwrap();
        }
    });
    let rt = tokio();
    let mut last_count = 0;
    let mut checks = 0;
    while !ingest.is_finished() || checks < 5 {
        let answer = rt
            .block_on(engine.query(
                "SELECT (SELECT count(*) FROM orders) AS orders, \
                        (SELECT coalesce(sum(amount), 0) FROM orders WHERE status IN ('paid', 'shipped')) AS paid, \
                        (SELECT coalesce(sum(revenue), 0) FROM customer_revenue) AS revenue, \
                        (SELECT coalesce(sum(orders_placed), 0) FROM customer_revenue) AS placed",
            ))
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&weir_sql::query::to_json(&answer).unwrap()).unwrap();
        let row = &json[0];
        let (orders, paid, revenue, placed) = (
            row["orders"].as_i64().unwrap(),
            row["paid"].as_f64().unwrap(),
            row["revenue"].as_f64().unwrap(),
            row["placed"].as_i64().unwrap(),
        );
        assert!(
            (paid - revenue).abs() < 1e-6 * paid.max(1.0),
            "torn snapshot: paid orders {paid} vs revenue {revenue}"
        );
        assert_eq!(orders, placed, "torn snapshot: {orders} orders but {placed} placed");
        assert!(orders >= last_count, "went back in time: {orders} after {last_count}");
        last_count = orders;
        checks += 1;
    }
    ingest.join().unwrap();
    assert!(checks >= 5);
}

/// The HTTP API over `state` on a loopback port of `rt`: its address, and what stops it.
fn serve_http(
    rt: &tokio::runtime::Runtime,
    state: Arc<ApiState>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(weir_host::api::serve(
        "127.0.0.1:0".parse().unwrap(),
        state,
        move |addr| tx.send(addr).unwrap(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    (rx.recv_timeout(Duration::from_secs(10)).unwrap(), stop_tx)
}

#[test]
fn http_sql_in_three_formats_and_tables() {
    let engine = orders_engine(2_000, QueryLimits::default());
    let rt = tokio();
    let state = Arc::new(ApiState {
        status: Default::default(),
        sql: engine,
        sink: None,
        token: None,
        reads_need_token: false,
        admin: None,
        hosts: weir_host::api::AllowedHosts::loopback(),
    });
    let (addr, stop_tx) = serve_http(&rt, state);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let post = |accept: &str, body: &str| {
        let mut response = agent
            .post(&format!("http://{addr}/v1/sql"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .send(body.as_bytes())
            .unwrap();
        (response.status().as_u16(), response.body_mut().read_to_vec().unwrap())
    };
    let sql = r#"{"sql": "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY status"}"#;

    let (status, body) = post("application/json", sql);
    assert_eq!(status, 200);
    let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rows[0]["status"], "cancelled");
    let total: i64 = rows.as_array().unwrap().iter().map(|r| r["n"].as_i64().unwrap()).sum();

    let (status, body) = post("text/csv", sql);
    assert_eq!(status, 200);
    let csv = String::from_utf8(body).unwrap();
    assert!(csv.starts_with("status,n\ncancelled,"), "{csv}");

    let (status, body) = post(ARROW_STREAM, sql);
    assert_eq!(status, 200);
    let answer = weir_sql::query::from_arrow_ipc(&body).unwrap();
    assert_eq!(answer.rows(), rows.as_array().unwrap().len());

    let (status, body) = post("application/json", r#"{"sql": "DROP TABLE orders"}"#);
    assert_eq!(status, 400);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().starts_with("weir's SQL is read-only"), "{error}");

    // Like `curl -d` or a cross-origin form, without a JSON content type: a browser sends that
    // without asking the server first, so it is refused (issue 32).
    let mut response = agent
        .post(&format!("http://{addr}/v1/sql"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(r#"{"sql": "SELECT 1 AS one"}"#.as_bytes())
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let text = response.body_mut().read_to_string().unwrap();
    assert!(text.contains("reads a body of type application/json"), "{text}");

    let (status, body) = post("application/json", r#"{"query": "SELECT 1"}"#);
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("the body must be JSON like"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    let mut response = agent.get(&format!("http://{addr}/v1/tables")).call().unwrap();
    let tables: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
    let orders = tables.as_array().unwrap().iter().find(|t| t["name"] == "orders").expect("orders table");
    assert_eq!(orders["qualified_name"], "orders.orders");
    assert_eq!(orders["rows"].as_i64().unwrap(), total);
    // The next offset to apply: all 2,000 events are reflected.
    assert_eq!(orders["positions"][0]["offset"], 2_000);
    assert_eq!(orders["columns"][0]["name"], "order_id");
    let _ = stop_tx.send(());
}

#[test]
fn clashing_table_names_are_refused_at_load() {
    let runtime = runtime();
    let mut pipeline = Pipeline::new(Arc::new(Catalog::default()));
    pipeline.add(load(&runtime, "infinite-loop")).unwrap();
    let err = pipeline.add(load(&runtime, "panic")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "table seen is declared by both infinite-loop and panic; table names must be unique across plugins"
    );
}

/// What a listener reachable beyond this machine does: every read needs the admin token (HTTP
/// bearer, Postgres password). The guards are started on loopback here, as
/// tests must; `weir serve` turns them on when it binds a non-loopback address.
#[test]
fn guarded_listeners_need_the_admin_token_for_reads_too() {
    let engine = orders_engine(100, QueryLimits::default());
    let rt = tokio();
    let secret = "a-test-admin-token-0123456789";
    let state = Arc::new(ApiState {
        status: Default::default(),
        sql: engine.clone(),
        sink: None,
        token: Some(weir_host::auth::AdminToken::new(secret)),
        reads_need_token: true,
        admin: None,
        hosts: weir_host::api::AllowedHosts::loopback(),
    });
    let (addr, stop_tx) = serve_http(&rt, state);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |path: &str, token: Option<&str>| {
        let mut request = agent.get(&format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    };
    let (code, body) = get("/v1/tables", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs the admin token"), "{body}");
    assert_eq!(get("/v1/tables", Some("not-the-token-at-all")).0, 401);
    assert_eq!(get("/v1/tables", Some(secret)).0, 200);
    assert_eq!(get("/healthz", None).0, 200, "health checks need no token");

    let pg = rt
        .block_on(weir_sql::postgres::start_guarded("127.0.0.1:0".parse().unwrap(), engine, Some(secret.into())))
        .unwrap();
    let psql = |password: &str| {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg.addr().port().to_string(), "-U", "weir", "-d", "weir"])
            .args(["-X", "-A", "-t", "-w", "-c", "SELECT count(*) FROM orders"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql (Debian's postgresql-client) must be installed; test.sh installs it")
    };
    let refused = psql("wrong");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Password authentication failed"), "{refused:?}");
    let answered = psql(secret);
    assert!(answered.status.success(), "{}", String::from_utf8_lossy(&answered.stderr));
    let count: u64 = String::from_utf8_lossy(&answered.stdout).trim().parse().expect("a count");
    assert!(count > 0);
    let _ = stop_tx.send(());
}

#[test]
fn each_query_has_a_memory_limit_of_its_own() {
    let rt = tokio();
    let engine = orders_engine(100, QueryLimits { timeout_ms: 60_000, memory_bytes: 40 << 20 });
    // A hash join holds its build side (here more than half the limit) while it streams its answer.
    let join = "SELECT a.value FROM range(1000000) a JOIN range(1000000) b ON a.value = b.value";
    rt.block_on(async {
        let alone = engine.stream(join).await.unwrap().collect().await;
        assert!(alone.is_ok(), "the join alone does not fit its limit: {:?}", alone.err());
        // The first is still streaming (holding its build side) while the second runs.
        let first = encode_stream(engine.stream(join).await.unwrap(), Encoding::Json).await.unwrap();
        let second = engine.stream(join).await.unwrap().collect().await;
        assert!(second.is_ok(), "a query was refused memory another query holds: {:?}", second.err());
        drop(first);
    });
}

#[test]
fn an_answer_is_held_to_the_memory_limit_too() {
    let rt = tokio();
    let engine = orders_engine(100, QueryLimits { timeout_ms: 60_000, memory_bytes: 16 << 20 });
    // One value of 64 MB: computed outside any operator's reservation, so only its size can tell.
    for sql in ["SELECT repeat('x', 64000000) AS big", "SELECT repeat('x', 40000) AS s FROM range(2000)"] {
        let err = rt.block_on(async { engine.stream(sql).await?.collect().await }).unwrap_err();
        assert!(matches!(err, QueryError::Memory { limit, .. } if limit == 16 << 20), "{sql}: {err}");
        assert!(err.to_string().contains("bytes"), "{err}");
    }
    // Answers within it stream as before.
    let answer = rt.block_on(engine.query("SELECT repeat('x', 1000) AS s FROM range(100)")).unwrap();
    assert_eq!(answer.rows(), 100);
}
