//! The HTTP API against an in-process server on an ephemeral port.

use std::io::Write;

use crate::support::{Server, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_is_queryable_as_a_table_with_time_tags_and_fields() {
    let s = Server::start().await;
    let r = s
        .post("/api/v1/write?precision=s")
        .body("cpu,host=a,region=eu usage=1.5,cores=4i,on=true,label=\"x y\" 1700000000\ncpu,host=b usage=2.5 1700000001\n")
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.expect("json");
    assert_eq!(report["points"], 2);
    let rows = s
        .query("SELECT host, region, usage, cores, \"on\", label, time FROM cpu ORDER BY host")
        .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["host"], "a");
    assert_eq!(rows[0]["region"], "eu");
    assert_eq!(rows[0]["usage"], 1.5);
    assert_eq!(rows[0]["cores"], 4);
    assert_eq!(rows[0]["on"], true);
    assert_eq!(rows[0]["label"], "x y");
    assert_eq!(rows[0]["time"], "2023-11-14T22:13:20");
    assert_eq!(rows[1]["region"], serde_json::Value::Null);
    // Lineage columns: source and raw-message id of the request.
    let lineage = s
        .query("SELECT DISTINCT _source, _raw_id, _quality FROM cpu")
        .await;
    assert_eq!(lineage.len(), 1);
    assert_eq!(lineage[0]["_source"], "http");
    assert_eq!(lineage[0]["_raw_id"], report["raw_id"]);
    assert_eq!(lineage[0]["_quality"], "good");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_columns_extend_the_schema_and_type_conflicts_are_rejected_whole() {
    let s = Server::start().await;
    assert_eq!(s.write("m v=1 1").await.status(), 200);
    assert_eq!(s.write("m,t=x w=2i 2").await.status(), 200);
    let rows = s.query("SELECT t, v, w FROM m ORDER BY time").await;
    assert_eq!(rows[0]["w"], serde_json::Value::Null);
    assert_eq!(rows[1]["t"], "x");
    // One good line and one conflicting line: nothing of the request is stored.
    let r = s.write("m v=5 10\nm v=6i 11").await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    let msg = body["error"].as_str().expect("error");
    assert!(msg.contains("line 2") && msg.contains("`v`"), "{msg}");
    let r = s.write("m v=7i 12").await;
    assert_eq!(r.status(), 400);
    let msg = r.text().await.expect("text");
    assert!(msg.contains("float") && msg.contains("integer"), "{msg}");
    assert_eq!(s.count("SELECT count(*) FROM m").await, 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_line_protocol_names_line_and_column_and_stores_nothing() {
    let s = Server::start().await;
    let r = s.write("ok v=1 1\nok v=2 2\nok v=\"unterminated 3\n").await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        body["error"],
        "line 3, column 6: field `v`: unterminated string"
    );
    let r = s
        .post("/api/v1/query")
        .json(&serde_json::json!({"sql": "SELECT * FROM ok"}))
        .send()
        .await
        .expect("q");
    assert_eq!(r.status(), 400, "table must not exist");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_series_and_time_written_twice_keeps_the_last_value() {
    let s = Server::start().await;
    s.write("d,dev=p1 v=1 100\nd,dev=p2 v=2 100").await;
    s.write("d,dev=p1 v=10 100").await;
    let rows = s.query("SELECT dev, v FROM d ORDER BY dev").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["v"], 10.0);
    assert_eq!(rows[1]["v"], 2.0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_arrow_results_by_accept_header() {
    let s = Server::start().await;
    s.write("m,h=a v=1 1000000000\nm,h=b v=2 2000000000").await;
    let csv = s
        .post("/api/v1/query")
        .header("accept", "text/csv")
        .json(&serde_json::json!({"sql": "SELECT h, v FROM m ORDER BY h"}))
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(csv.text().await.expect("text"), "h,v\na,1.0\nb,2.0\n");
    let arrow = s
        .post("/api/v1/query")
        .header("accept", fabrik_api::routes::ARROW_STREAM)
        .json(&serde_json::json!({"sql": "SELECT h, v FROM m ORDER BY h"}))
        .send()
        .await
        .expect("arrow");
    let bytes = arrow.bytes().await.expect("bytes");
    let reader =
        fabrik_store::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("ipc");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema().field(0).name(), "h");
    // A table before its first write: a 400 that says so in this product's terms.
    let missing = s
        .post("/api/v1/query")
        .json(&serde_json::json!({"sql": "SELECT * FROM inferences"}))
        .send()
        .await
        .expect("missing");
    assert_eq!(missing.status(), 400);
    let body: serde_json::Value = missing.json().await.expect("json");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("table `inferences` not found: a table exists once rows"),
        "{body}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_endpoints_precision_gzip_and_samples() {
    let s = Server::start().await;
    let r = s
        .post("/write?db=x&precision=ms")
        .body("a v=1 1500")
        .send()
        .await
        .expect("v1");
    assert_eq!(r.status(), 204);
    let r = s
        .client
        .post(format!(
            "{}/api/v2/write?org=o&bucket=b&precision=us",
            s.url
        ))
        .header("authorization", format!("Token {TOKEN}"))
        .body("a v=2 2500")
        .send()
        .await
        .expect("v2");
    assert_eq!(r.status(), 204);
    // InfluxDB 1.x clients authenticate with u/p query parameters.
    let r = s
        .client
        .post(format!("{}/write?u=me&p={TOKEN}", s.url))
        .body("a v=3 3")
        .send()
        .await
        .expect("p");
    assert_eq!(r.status(), 204);
    // Only there: elsewhere a token in the URL (which proxies and access logs keep) is not
    // taken.
    let r = s
        .client
        .get(format!("{}/api/v1/tables?p={TOKEN}", s.url))
        .send()
        .await
        .expect("p elsewhere");
    assert_eq!(r.status(), 401);
    // A misspelt precision would store milliseconds as nanoseconds: refused, nothing stored.
    let r = s
        .post("/api/v1/write?precison=ms")
        .body("a v=9 1732500000000")
        .send()
        .await
        .expect("misspelt");
    assert_eq!(r.status(), 400);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"a v=4 4").expect("gzip");
    let r = s
        .post("/api/v1/write")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .await
        .expect("gz");
    assert_eq!(r.status(), 200);
    let r = s
        .post("/api/v1/samples")
        .json(&serde_json::json!({"samples": [
            {"measurement": "a", "fields": {"v": 5.5}, "time": 5},
            {"measurement": "pump", "tags": {"device": "p-7"}, "fields": {"rpm": 1450, "ok": true}, "time": 6, "quality": "uncertain"}
        ]}))
        .send()
        .await
        .expect("samples");
    assert_eq!(r.status(), 200);
    let rows = s
        .query("SELECT CAST(time AS BIGINT) AS t, v FROM a ORDER BY time")
        .await;
    let times: Vec<i64> = rows.iter().map(|r| r["t"].as_i64().expect("t")).collect();
    assert_eq!(times, vec![3, 4, 5, 2_500_000, 1_500_000_000]);
    let pump = s.query("SELECT device, rpm, ok, _quality FROM pump").await;
    assert_eq!(pump[0]["rpm"], 1450);
    assert_eq!(pump[0]["_quality"], "uncertain");
    let r = s
        .post("/api/v1/samples")
        .json(&serde_json::json!({"samples": [{"measurement": "a", "fields": {"v": 1.0}}, {"measurement": "a", "fields": {"v": [1]}}]}))
        .send()
        .await
        .expect("bad samples");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("t").contains("samples[1]"));
    let r = s
        .post("/api/v1/write?precision=h")
        .body("a v=1 1")
        .send()
        .await
        .expect("bad precision");
    assert_eq!(r.status(), 400);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ready_and_metrics_answer_without_a_token() {
    let s = Server::start().await;
    let c = &s.client;
    assert_eq!(
        c.get(format!("{}/metrics", s.url))
            .send()
            .await
            .expect("m")
            .status(),
        200
    );
    let ready = c
        .get(format!("{}/ready", s.url))
        .send()
        .await
        .expect("r")
        .status();
    assert!(
        ready == 200 || ready == 503,
        "ready answers without a token: {ready}"
    );
    for (method, path) in [
        ("POST", "/api/v1/write"),
        ("POST", "/write"),
        ("POST", "/api/v2/write"),
        ("POST", "/api/v1/samples"),
        ("POST", "/api/v1/query"),
        ("GET", "/api/v1/tables"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/services"),
        ("POST", "/api/v1/admin/persist"),
    ] {
        let url = format!("{}{path}", s.url);
        let req = if method == "GET" {
            c.get(&url)
        } else {
            c.post(&url).body("m v=1")
        };
        assert_eq!(
            req.send().await.expect("req").status(),
            401,
            "{method} {path} without token"
        );
        let req = if method == "GET" {
            c.get(&url)
        } else {
            c.post(&url).body("m v=1")
        };
        assert_eq!(
            req.bearer_auth("wrong").send().await.expect("req").status(),
            401,
            "{method} {path} with a wrong token"
        );
    }
    assert_eq!(
        s.count("SELECT count(*) FROM information_schema.tables WHERE table_name = 'm'")
            .await,
        0
    );
    // A path or method that does not exist gets the usual JSON error body too.
    for (request, status, says) in [
        (
            c.get(format!("{}/api/v1/alertz", s.url)),
            404,
            "no route GET /api/v1/alertz",
        ),
        (
            c.get(format!("{}/api/v1/tables/", s.url)),
            404,
            "without the trailing `/`",
        ),
        (
            c.patch(format!("{}/api/v1/tables", s.url)),
            405,
            "/api/v1/tables does not take PATCH",
        ),
    ] {
        let response = request.bearer_auth(TOKEN).send().await.expect("req");
        assert_eq!(response.status(), status);
        let body: serde_json::Value = response.json().await.expect("a JSON error body");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{body}"
        );
    }
    s.shutdown().await;
}

/// Announces a `/api/v1/write` body of `length` bytes over a raw socket, sends none of it,
/// and returns the response's status code: a declared length over the limit is refused up
/// front. (Sending a large body through an HTTP client raced the server's early answer: the
/// server may close while the body is still being written, and the client then reports a
/// broken pipe instead of the 413.)
async fn declared_length_write(url: &str, length: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut response = vec![0; 1024];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read(&mut response),
    )
    .await
    .expect("an answer before the body")
    .expect("read");
    response.truncate(read);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// POSTs `body` to `/api/v1/write` with `Transfer-Encoding: chunked` over a raw socket (the
/// HTTP client always sends a length); returns the response's status code.
async fn chunked_write(url: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for chunk in body.as_bytes().chunks(64 * 1024) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer and stop reading before the whole body is sent.
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_bad_sql_gets_400_with_the_engine_message() {
    let s = Server::start().await; // 1 MiB limit
    let big = "m v=1 1\n".repeat(200_000);
    assert_eq!(declared_length_write(&s.url, big.len()).await, 413);
    // A small gzip body that inflates past the limit is refused too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(big.as_bytes()).expect("gzip");
    let r = s
        .post("/api/v1/write")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("gz"))
        .send()
        .await
        .expect("gz");
    assert_eq!(r.status(), 413);
    // A chunked body has no length to refuse up front: it is cut off at the limit.
    assert_eq!(chunked_write(&s.url, &big).await, 413);
    assert_eq!(
        chunked_write(&s.url, "chunked v=1 1\nchunked v=2 2\n").await,
        200
    );
    assert_eq!(s.count("SELECT count(*) AS n FROM chunked").await, 2);
    s.write("m v=1 1").await;
    for (sql, needle) in [
        ("SELECT * FROM nope", "nope"),
        ("SELECT nope FROM m", "nope"),
        ("SELEC 1", "SELEC"),
        ("CREATE TABLE x (a INT)", "DDL"),
        ("COPY m TO '/tmp/x.csv'", ""),
    ] {
        let r = s
            .post("/api/v1/query")
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("q");
        assert_eq!(r.status(), 400, "{sql}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert!(
            body["error"].as_str().expect("error").contains(needle),
            "{sql}: {body}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_timeout_is_cancelled_without_harming_ingest() {
    let dir = tempfile::tempdir().expect("dir");
    let mut options = fabrik_store::StoreOptions::new(dir.path());
    options.query_timeout = std::time::Duration::from_millis(200);
    let s = Server::with_options(options, 1 << 20).await;
    let r = s
        .post("/api/v1/query")
        .json(&serde_json::json!({"sql": "SELECT count(*) FROM generate_series(1, 20000000000) a"}))
        .send()
        .await
        .expect("q");
    assert_eq!(r.status(), 408);
    assert!(r.text().await.expect("t").contains("timeout"));
    assert_eq!(s.write("after v=1 1").await.status(), 200);
    assert_eq!(s.count("SELECT count(*) FROM after").await, 1);
    s.shutdown().await;
}

#[tokio::test]
async fn the_committed_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let current = fabrik_api::openapi::document();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &current).expect("write openapi");
        return;
    }
    assert!(
        committed == current,
        "docs/api/openapi.json is stale: run `fabrik openapi > docs/api/openapi.json` (or UPDATE_OPENAPI=1 cargo test) and commit it"
    );
    let doc: serde_json::Value = serde_json::from_str(&current).expect("valid json");
    for path in [
        "/api/v1/write",
        "/api/v1/query",
        "/api/v1/samples",
        "/write",
        "/api/v2/write",
        "/ready",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_replaces_the_token_until_sign_out() {
    let s = Server::start().await;
    let plain = crate::support::http_client();
    let sign_in = |token: &str| {
        plain
            .post(format!("{}/api/v1/session", s.url))
            .json(&serde_json::json!({ "token": token }))
            .send()
    };
    assert_eq!(sign_in("wrong").await.expect("send").status(), 401);
    let r = sign_in(TOKEN).await.expect("send");
    assert_eq!(r.status(), 200);
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    assert!(
        !cookie.contains(TOKEN),
        "the cookie must not carry the token"
    );
    let with_cookie = |path: &str| {
        plain
            .get(format!("{}{path}", s.url))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(
        with_cookie("/api/v1/tables").await.expect("send").status(),
        200
    );
    let me: serde_json::Value = with_cookie("/api/v1/session")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "admin", "{me}");
    let out = plain
        .delete(format!("{}/api/v1/session", s.url))
        .header("cookie", cookie.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(out.status(), 204);
    assert_eq!(
        with_cookie("/api/v1/tables").await.expect("send").status(),
        401
    );
    // A made-up session id is refused too.
    let forged = plain
        .get(format!("{}/api/v1/tables", s.url))
        .header("cookie", "fabrik_session=00ff")
        .send()
        .await
        .expect("send");
    assert_eq!(forged.status(), 401);
    s.shutdown().await;
}

/// The next `n` events of a Server-Sent Events response, as (id, data), each within 10 s;
/// `buffer` keeps what was read beyond them.
async fn next_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    n: usize,
) -> Vec<(Option<String>, serde_json::Value)> {
    let mut events = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let chunk: String = buffer.drain(..end + 2).collect();
            let id = chunk
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|id| id.trim().to_owned());
            if let Some(data) = chunk.lines().find_map(|l| l.strip_prefix("data:")) {
                events.push((id, serde_json::from_str(data.trim()).expect("json")));
                if events.len() == n {
                    return events;
                }
            }
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .expect("chunk")
            .expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_stream_sends_each_new_row_as_a_server_sent_event() {
    let s = Server::start().await;
    let r = s
        .post("/api/v1/devices")
        .json(&serde_json::json!({"id": "pump-9", "type": "pump"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let r = s
        .post("/api/v1/write")
        .body("pump,device=pump-9 vibration_rms=0.25,running=true\npump,device=other vibration_rms=9\n")
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 200);
    let mut response = s
        .client
        .get(format!("{}/api/v1/devices/pump-9/stream", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let mut buffer = String::new();
    let first = next_events(&mut response, &mut buffer, 1).await;
    let (first_id, event) = &first[0];
    assert_eq!(event["values"]["vibration_rms"], 0.25, "{event}");
    assert_eq!(event["values"]["running"], true, "{event}");
    assert!(event["time"].is_string(), "{event}");
    let first_id = first_id.clone().expect("events carry an id");
    // Rows stored after it each come as an event, in order, even when a newer row follows
    // within the same second: a value reported on its own (here the mode) is not lost.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let r = s
        .post("/api/v1/write")
        .body(format!(
            "pump,device=pump-9 mode=\"auto\" {now_ns}\npump,device=pump-9 vibration_rms=0.5 {}\n",
            now_ns + 1_000_000
        ))
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 200);
    let later: Vec<serde_json::Value> = next_events(&mut response, &mut buffer, 2)
        .await
        .into_iter()
        .map(|(_, event)| event["values"].clone())
        .collect();
    let expected = [
        serde_json::json!({"mode": "auto"}),
        serde_json::json!({"vibration_rms": 0.5}),
    ];
    assert_eq!(later, expected);
    // A reconnect that names the last event it received (as EventSource does) goes on after
    // that row, rather than at the newest: nothing in between is lost.
    let mut resumed = s
        .client
        .get(format!("{}/api/v1/devices/pump-9/stream", s.url))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", &first_id)
        .send()
        .await
        .expect("stream");
    assert_eq!(resumed.status(), 200);
    let mut resumed_buffer = String::new();
    let again: Vec<serde_json::Value> = next_events(&mut resumed, &mut resumed_buffer, 2)
        .await
        .into_iter()
        .map(|(_, event)| event["values"].clone())
        .collect();
    assert_eq!(again, expected);
    drop(resumed);
    let refused = s
        .client
        .get(format!("{}/api/v1/devices/pump-9/stream", s.url))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("stream");
    assert_eq!(refused.status(), 400);
    let missing = s
        .client
        .get(format!("{}/api/v1/devices/nope/stream", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("stream");
    assert_eq!(missing.status(), 404);
    // The stream ends when the server stops: an open dashboard does not hold the stop (it
    // used to, until the stop deadline, leaving the store unclosed).
    s.stop.cancel();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match response.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the server's stop");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_latest_values_are_each_signals_newest_report_however_old() {
    let s = Server::start().await;
    for id in ["filler-1", "filler-2"] {
        let r = s
            .post("/api/v1/devices")
            .json(&serde_json::json!({"id": id, "type": "filler"}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201);
    }
    // A point reported once an hour ago (a recipe, as an OPC UA data change), then rows that
    // leave it null; another device's newer recipe; a row of ours in a later write.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    let hour_ago = now_ns - 3_600_000_000_000;
    let body = format!(
        "filler,device=filler-1 recipe=\"Cola 0.5 l\",speed=100i {hour_ago}\n\
         filler,device=filler-1 speed=120i {}\n\
         filler,device=filler-1 running=true {}\n\
         filler,device=filler-2 recipe=\"Water\" {now_ns}\n",
        hour_ago + 1_000_000_000,
        hour_ago + 2_000_000_000,
    );
    let r = s
        .post("/api/v1/write")
        .body(body)
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 200);
    let persisted = s
        .post("/api/v1/admin/persist")
        .send()
        .await
        .expect("persist");
    assert_eq!(persisted.status(), 204);
    let r = s
        .post("/api/v1/write")
        .body(format!("filler,device=filler-1 speed=130i {now_ns}\n"))
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 200);

    let latest: serde_json::Value = s
        .get("/api/v1/devices/filler-1/latest")
        .send()
        .await
        .expect("latest")
        .json()
        .await
        .expect("json");
    assert_eq!(latest["device"], "filler-1");
    assert_eq!(latest["table"], "filler");
    let values = &latest["values"];
    assert_eq!(values["recipe"]["value"], "Cola 0.5 l", "{latest}");
    assert_eq!(values["recipe"]["time_ns"], hour_ago, "{latest}");
    assert!(
        values["recipe"]["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{latest}"
    );
    assert_eq!(values["speed"]["value"], 130, "{latest}");
    assert_eq!(values["speed"]["time_ns"], now_ns, "{latest}");
    assert_eq!(values["running"]["value"], true, "{latest}");
    assert_eq!(
        values.as_object().map(|v| v.len()),
        Some(3),
        "the lineage columns are not signals: {latest}"
    );

    // The same from a named table; a device with no rows has no values; unknowns are 404.
    let other: serde_json::Value = s
        .get("/api/v1/devices/filler-2/latest?table=filler")
        .send()
        .await
        .expect("latest")
        .json()
        .await
        .expect("json");
    assert_eq!(other["values"]["recipe"]["value"], "Water", "{other}");
    assert!(other["values"]["speed"].is_null(), "{other}");
    let r = s
        .post("/api/v1/devices")
        .json(&serde_json::json!({"id": "filler-3", "type": "filler"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let none: serde_json::Value = s
        .get("/api/v1/devices/filler-3/latest")
        .send()
        .await
        .expect("latest")
        .json()
        .await
        .expect("json");
    assert_eq!(none["values"], serde_json::json!({}), "{none}");
    // The endpoint's query is answered from the last rows, not by reading the segments.
    let sql = fabrik_api::latest::latest_sql("filler", "filler-1", &["recipe", "speed"]);
    let plan: String = s
        .query(&format!("EXPLAIN {sql}"))
        .await
        .iter()
        .map(|row| row["plan"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!plan.contains("parquet"), "{plan}");
    for (path, status) in [
        ("/api/v1/devices/nope/latest", 404),
        ("/api/v1/devices/o'brien/latest?table=filler", 404),
        ("/api/v1/devices/filler-1/latest?table=nope", 404),
        ("/api/v1/devices/filler-1/latest?tabel=filler", 400),
    ] {
        let r = s.get(path).send().await.expect("latest");
        assert_eq!(r.status(), status, "{path}");
    }
    s.shutdown().await;
}
