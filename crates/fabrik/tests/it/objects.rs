//! Segments in S3-compatible object storage, against a real S3 API server (moto's, from
//! PyPI; MinIO has no package here): a `fabrik run` with `[store.objects]` persists its
//! segments under its bucket prefix and none on the local disk, queries read them back,
//! acknowledged rows survive `kill -9`, leftovers under its own prefix are cleared while
//! other objects are left alone, and a prefix another store claimed or a bucket that does not
//! exist stops the start with an error naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mqtt::http;
use crate::support::{Peer, Process, fabrik_bin, free_port, post_status};

/// moto's S3 server: `MOTO_SERVER`, else beside `FABRIK_PYTHON` (the test venv, which
/// .ci/run installs), else on PATH.
fn moto_server_path() -> PathBuf {
    if let Ok(path) = std::env::var("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    if let Ok(python) = std::env::var("FABRIK_PYTHON") {
        let beside = Path::new(&python).with_file_name("moto_server");
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("moto_server")
}

fn s3_server(port: u16) -> Peer {
    let mut command = Command::new(moto_server_path());
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Peer::listening(
        command,
        port,
        "moto_server must be installed (pip install 'moto[server]'; .ci/run does)",
    )
}

/// An unsigned request to the S3 server (moto takes them): status and body.
fn s3(method: reqwest::Method, url: &str, body: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let r = crate::support::http_client()
            .request(method, url)
            .body(body.to_owned())
            .send()
            .await
            .expect("S3 request");
        let status = r.status().as_u16();
        (status, r.text().await.expect("S3 body"))
    })
}

/// The keys under `prefix` in `bucket`.
fn keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, xml) = s3(
        reqwest::Method::GET,
        &format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}"),
        "",
    );
    assert_eq!(status, 200, "{xml}");
    xml.split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
        .collect()
}

fn objects_env(endpoint: &str, url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "fabrik-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "fabrik-test-secret".into()),
        ("FABRIK__STORE__OBJECTS__URL", url.into()),
        ("FABRIK__STORE__OBJECTS__ENDPOINT", endpoint.into()),
        ("FABRIK__STORE__OBJECTS__ALLOW_HTTP", "true".into()),
        // Persisted by the admin API, when the test says.
        ("FABRIK__STORE__FLUSH_INTERVAL", "1h".into()),
    ]
}

fn start(data_dir: &Path, env: &[(&'static str, String)]) -> Process {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Process::start(data_dir, &env)
}

/// `fabrik run` that must fail to start: its output (stdout and stderr).
fn start_refused(data_dir: &Path, env: &[(&'static str, String)]) -> String {
    let mut command = Command::new(fabrik_bin());
    command
        .arg("run")
        .env("FABRIK__STORE__DATA_DIR", data_dir)
        .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
        .env("FABRIK__MQTT__LISTEN", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn fabrik");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(!status.success(), "started:\n{text}");
            return text;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fabrik neither started nor stopped within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines(from: i64, to: i64) -> String {
    (from..to)
        .map(|i| format!("m,dev=d{} v={i} {}\n", i % 5, 1_000_000 + i))
        .collect()
}

fn count(url: &str) -> u64 {
    let rows = crate::mqtt::query(url, "SELECT count(*) AS n, sum(v) AS s FROM m");
    let row = &rows[0];
    let n = row["n"].as_u64().expect("n");
    let s = row["s"].as_f64().expect("s") as u64;
    // Every row once: the sum of 0..n.
    assert_eq!(s, n * n.saturating_sub(1) / 2, "{rows:?}");
    n
}

fn admin(url: &str, what: &str) {
    let (status, body) = http(
        url,
        reqwest::Method::POST,
        &format!("/api/v1/admin/{what}"),
        None,
    );
    assert_eq!(status, 204, "{what}: {body}");
}

fn local_parquet_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                local_parquet_files(&path)
            } else {
                usize::from(path.extension().is_some_and(|e| e == "parquet"))
            }
        })
        .sum()
}

#[test]
fn segments_live_under_a_bucket_prefix_that_one_store_claims() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _s3 = s3_server(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let (status, body) = s3(reqwest::Method::PUT, &format!("{endpoint}/plant"), "");
    assert_eq!(status, 200, "create bucket: {body}");
    let env = objects_env(&endpoint, "s3://plant/line-1");
    let data = dir.path().join("line-1");

    let node = start(&data, &env);
    assert_eq!(
        post_status(&node.url, "/api/v1/write", &lines(0, 1000)),
        200
    );
    admin(&node.url, "persist");
    let stored = keys(&endpoint, "plant", "line-1/");
    assert!(
        stored.iter().any(|k| k == "line-1/fabrik-store.json"),
        "{stored:?}"
    );
    let segments: Vec<&String> = stored
        .iter()
        .filter(|k| k.starts_with("line-1/segments/") && k.ends_with(".parquet"))
        .collect();
    assert!(!segments.is_empty(), "no segment in the bucket: {stored:?}");
    assert_eq!(
        local_parquet_files(&data),
        0,
        "a segment was written to the local disk"
    );
    assert_eq!(count(&node.url), 1000);

    // Acknowledged rows only in the WAL, then kill -9: all there after the restart, the
    // persisted ones read from the bucket.
    assert_eq!(
        post_status(&node.url, "/api/v1/write", &lines(1000, 1500)),
        200
    );
    node.kill9();
    // A leftover of an interrupted persist under the store's segments is cleared at the
    // start; what else lies under the prefix is not the store's to delete.
    let stray = format!("{endpoint}/plant/line-1/segments/t99/p0/0000000000000099.parquet");
    assert_eq!(s3(reqwest::Method::PUT, &stray, "not parquet").0, 200);
    let note = format!("{endpoint}/plant/line-1/README.txt");
    assert_eq!(s3(reqwest::Method::PUT, &note, "the plant's notes").0, 200);
    let node = start(&data, &env);
    assert_eq!(count(&node.url), 1500);
    let stored = keys(&endpoint, "plant", "line-1/");
    assert!(
        !stored.iter().any(|k| k.contains("t99")),
        "the leftover stayed: {stored:?}"
    );
    assert!(
        stored.iter().any(|k| k == "line-1/README.txt"),
        "{stored:?}"
    );
    admin(&node.url, "persist");
    admin(&node.url, "compact");
    assert_eq!(count(&node.url), 1500);
    assert_eq!(local_parquet_files(&data), 0);

    // Another data directory on the same prefix would delete this store's segments as
    // leftovers: refused, naming the owner.
    let out = start_refused(&dir.path().join("intruder"), &env);
    assert!(out.contains("already belongs to store"), "{out}");
    assert!(out.contains("s3://plant/line-1"), "{out}");
    // A bucket that does not exist.
    let out = start_refused(
        &dir.path().join("nowhere"),
        &objects_env(&endpoint, "s3://no-such-bucket/line-9"),
    );
    assert!(out.contains("s3://no-such-bucket/line-9"), "{out}");
    assert!(out.contains("the bucket does not exist"), "{out}");
    // This data directory cannot be opened with its segments on the local disk instead.
    node.kill9();
    let out = start_refused(&data, &[]);
    assert!(out.contains("s3://plant/line-1"), "{out}");
    // The refusals touched nothing: the store still has every row.
    let node = start(&data, &env);
    assert_eq!(count(&node.url), 1500);
}
