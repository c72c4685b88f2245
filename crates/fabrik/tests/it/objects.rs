//! Segments in S3-compatible object storage, against a real S3 API server (moto's, from
//! PyPI; MinIO has no package here): a `fabrik run` with `[store.objects]` persists its
//! segments under its bucket prefix and none on the local disk, queries read them back,
//! acknowledged rows survive `kill -9`, objects it does not list are reported and left alone,
//! a prefix another store claimed or a bucket that does not exist stops the start with an
//! error naming it, and while the bucket is unreachable writes are refused past a bound
//! instead of filling memory, a restart still works, and nothing acknowledged is lost.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mqtt::http;
use crate::support::{Peer, Process, fabrik_bin, free_port, post_status, venv_tool};

/// moto's S3 server (`MOTO_SERVER`, else the test venv's `moto_server`).
fn s3_server(port: u16) -> Peer {
    let mut command = Command::new(venv_tool("MOTO_SERVER", "moto_server"));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Peer::listening(
        command,
        port,
        "moto_server must be installed (pip install 'moto[server]'; .ci/run does)",
    )
}

/// Creates bucket `plant` at `endpoint`.
fn create_plant_bucket(endpoint: &str) {
    let (status, body) = s3(reqwest::Method::PUT, &format!("{endpoint}/plant"), "");
    assert_eq!(status, 200, "create bucket: {body}");
}

/// moto's S3 server on a free port with bucket `plant`: the server, and its endpoint.
fn s3_with_plant_bucket() -> (Peer, String) {
    let port = free_port();
    let server = s3_server(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    create_plant_bucket(&endpoint);
    (server, endpoint)
}

/// An unsigned request to the S3 server (moto takes them): status and body.
fn s3(method: reqwest::Method, url: &str, body: &str) -> (u16, String) {
    crate::support::send_blocking(|client| client.request(method, url).body(body.to_owned()))
}

/// The whole listing of `prefix` in `bucket` as S3 answers it (keys, ETags, sizes and times):
/// equal before and after means nothing was written there.
fn listing(endpoint: &str, bucket: &str, prefix: &str) -> String {
    let (status, xml) = s3(
        reqwest::Method::GET,
        &format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}"),
        "",
    );
    assert_eq!(status, 200, "{xml}");
    xml
}

/// The keys under `prefix` in `bucket`.
fn keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    listing(endpoint, bucket, prefix)
        .split("<Key>")
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
    let (_s3, endpoint) = s3_with_plant_bucket();
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
    // An object under the store's segments that its manifest does not list is named in the
    // log and left in place (in a bucket it may be a newer copy's segment); what else lies
    // under the prefix is not the store's business.
    let stray = format!("{endpoint}/plant/line-1/segments/t99/p0/0000000000000099.parquet");
    assert_eq!(s3(reqwest::Method::PUT, &stray, "not parquet").0, 200);
    let note = format!("{endpoint}/plant/line-1/README.txt");
    assert_eq!(s3(reqwest::Method::PUT, &note, "the plant's notes").0, 200);
    let node = start(&data, &env);
    assert_eq!(count(&node.url), 1500);
    let stored = keys(&endpoint, "plant", "line-1/");
    assert!(
        stored.iter().any(|k| k.contains("t99")),
        "the leftover was deleted: {stored:?}"
    );
    let log = node.drain_log().join("\n");
    assert!(
        log.contains("left in place") && log.contains("t99"),
        "{log}"
    );
    assert!(
        stored.iter().any(|k| k == "line-1/README.txt"),
        "{stored:?}"
    );
    admin(&node.url, "persist");
    admin(&node.url, "compact");
    assert_eq!(count(&node.url), 1500);
    assert_eq!(local_parquet_files(&data), 0);

    // Another data directory on the same prefix would overwrite this store's segments:
    // refused, naming the owner.
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

/// `count` rows of table `m` as one body (values from `from`).
fn body(from: i64, count: i64) -> String {
    lines(from, from + count)
}

/// A TCP forwarder in front of the S3 server that can cut the network: while down it closes
/// every connection, open or new (a fault the server itself cannot produce while keeping
/// what it stores).
struct Outage {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Outage {
    fn forward(listen: u16, target: u16) -> Outage {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let outage = Outage {
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            open: std::sync::Arc::default(),
        };
        let listener = TcpListener::bind(("127.0.0.1", listen)).expect("forwarder");
        let (up, open) = (outage.up.clone(), outage.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                if !up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let mut guard = open.lock().expect("open");
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        guard.push(clone);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        outage
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().expect("open").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn an_unreachable_bucket_holds_writes_back_instead_of_memory_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _s3 = s3_server(port);
    let forwarded = free_port();
    let network = Outage::forward(forwarded, port);
    let endpoint = format!("http://127.0.0.1:{forwarded}");
    create_plant_bucket(&endpoint);
    let mut env = objects_env(&endpoint, "s3://plant/line-2");
    env.push(("FABRIK__STORE__FLUSH_BUFFER_SIZE", "64KiB".into()));
    let data = dir.path().join("line-2");
    let node = start(&data, &env);
    assert_eq!(post_status(&node.url, "/api/v1/write", &body(0, 200)), 200);
    admin(&node.url, "persist");

    // The network to the bucket fails. Writes are acknowledged (the WAL holds them) until
    // the rows waiting for a persist pass four flushes' worth; then they are refused with
    // 507, not held in memory without end.
    network.down();
    let mut acknowledged = 200;
    let mut refusal = None;
    for _ in 0..400 {
        let code = post_status(&node.url, "/api/v1/write", &body(acknowledged, 500));
        if code != 200 {
            refusal = Some(code);
            break;
        }
        acknowledged += 500;
    }
    assert_eq!(refusal, Some(507), "writes never held back");
    // Killed while the bucket is unreachable: it starts again (its claim unchecked).
    node.kill9();
    let node = start(&data, &env);
    // The network is back: every acknowledged row is there, the backlog is persisted and
    // writes are taken again.
    network.restore();
    assert_eq!(count(&node.url), acknowledged as u64);
    admin(&node.url, "persist");
    assert_eq!(
        post_status(&node.url, "/api/v1/write", &body(acknowledged, 10)),
        200
    );
    assert_eq!(count(&node.url), acknowledged as u64 + 10);
    assert!(
        keys(&endpoint, "plant", "line-2/segments/").len() >= 2,
        "the backlog was not persisted"
    );
}

/// A first start that recorded its claim but stopped before the marker was written (killed,
/// or the bucket failed) finishes the claim at the next start instead of locking itself out.
#[test]
fn an_unfinished_first_claim_is_finished_by_the_next_start() {
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_with_plant_bucket();
    let data = dir.path().join("line-3");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("objects.json"),
        r#"{"url": "s3://plant/line-3", "store_id": "5eed", "confirmed": false}"#,
    )
    .expect("claim");
    let env = objects_env(&endpoint, "s3://plant/line-3");
    let node = start(&data, &env);
    // The marker names the recorded id (moto refuses unsigned reads of objects, so another
    // store's refusal reads it out).
    let out = start_refused(&dir.path().join("other"), &env);
    assert!(out.contains("already belongs to store 5eed"), "{out}");
    assert_eq!(post_status(&node.url, "/api/v1/write", &body(0, 10)), 200);
    admin(&node.url, "persist");
    assert_eq!(count(&node.url), 10);
}

/// `fabrik store restore` with the environment `env` and data directory `data_dir`: whether it
/// succeeded, and its output.
fn restore(data_dir: &Path, env: &[(&'static str, String)]) -> (bool, String) {
    let mut command = Command::new(fabrik_bin());
    command
        .args(["store", "restore"])
        .env("FABRIK__STORE__DATA_DIR", data_dir);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("fabrik store restore");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Deletes an object with a signed request (moto refuses unsigned deletes), through boto3 in
/// the test venv (moto's own dependency).
fn delete_object(endpoint: &str, bucket: &str, key: &str) {
    let python = crate::support::python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, boto3\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                 aws_access_key_id='fabrik-test', aws_secret_access_key='fabrik-test-secret')\n\
             s3.delete_object(Bucket=sys.argv[2], Key=sys.argv[3])",
            endpoint,
            bucket,
            key,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}` (FABRIK_PYTHON): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store ids whose manifest copies lie under `prefix`.
fn manifest_copies(endpoint: &str, prefix: &str) -> Vec<String> {
    keys(endpoint, "plant", prefix)
        .iter()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .strip_prefix("manifest-")?
                .strip_suffix(".json")
                .map(str::to_owned)
        })
        .collect()
}

/// A node whose disk died is brought back on another from the bucket: everything persisted is
/// there, the restored store owns the prefix, and the old node, should it still run, can no
/// longer write segments there.
#[test]
fn a_lost_data_directory_is_restored_from_the_bucket() {
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_with_plant_bucket();
    let env = objects_env(&endpoint, "s3://plant/line-4");

    // Nothing stored under a prefix yet: nothing to restore, and nothing made.
    let (ok, out) = restore(&dir.path().join("empty"), &env);
    assert!(!ok, "{out}");
    assert!(out.contains("no store to restore"), "{out}");
    assert!(!dir.path().join("empty").join("objects.json").exists());

    let old = dir.path().join("old");
    let node = start(&old, &env);
    assert_eq!(post_status(&node.url, "/api/v1/write", &body(0, 1000)), 200);
    admin(&node.url, "persist");
    assert_eq!(
        post_status(&node.url, "/api/v1/write", &body(1000, 200)),
        200
    );
    admin(&node.url, "persist");
    let old_id = manifest_copies(&endpoint, "line-4/");
    assert_eq!(old_id.len(), 1, "{:?}", keys(&endpoint, "plant", "line-4/"));
    // Acknowledged, but only in the WAL of the disk about to be lost.
    assert_eq!(
        post_status(&node.url, "/api/v1/write", &body(1200, 50)),
        200
    );

    // The old node is cut off, not dead: it still runs while another takes over.
    let new = dir.path().join("new");
    let (ok, out) = restore(&new, &env);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("Restored store {}", old_id[0])),
        "{out}"
    );
    assert!(out.contains("1200 rows"), "{out}");
    // A restore stopped after it took the prefix over, before it recorded so (its local claim
    // still unconfirmed), is finished by running it again: the marker names the store it came
    // from.
    let record = new.join("objects.json");
    let mut claim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("claim")).expect("json");
    let new_id = claim["store_id"].as_str().expect("id").to_owned();
    claim["confirmed"] = false.into();
    std::fs::write(&record, claim.to_string()).expect("unconfirm");
    let (ok, resumed) = restore(&new, &env);
    assert!(ok, "{resumed}");
    assert!(
        resumed.contains(&format!("Restored store {}", old_id[0]))
            && resumed.contains(&format!("is now store {new_id}"))
            && resumed.contains("1200 rows"),
        "{resumed}"
    );
    // A second restore into the restored directory would fork the store: refused.
    let (ok, again) = restore(&new, &env);
    assert!(!ok, "{again}");
    assert!(again.contains("holds a store"), "{again}");

    let restored = start(&new, &env);
    assert_eq!(count(&restored.url), 1200);
    assert_eq!(
        post_status(&restored.url, "/api/v1/write", &body(1200, 300)),
        200
    );
    admin(&restored.url, "persist");
    assert_eq!(count(&restored.url), 1500);

    // The old node's next persist is refused, naming the store that took the prefix over.
    let (status, text) = http(
        &node.url,
        reqwest::Method::POST,
        "/api/v1/admin/persist",
        None,
    );
    assert_eq!(status, 503, "{text}");
    assert!(text.to_string().contains("now belongs to store"), "{text}");
    let copies = manifest_copies(&endpoint, "line-4/");
    assert_eq!(copies.len(), 2, "{copies:?}");
    // The old node cannot start on the prefix again either.
    node.kill9();
    let out = start_refused(&old, &env);
    assert!(out.contains("the prefix belongs to store"), "{out}");

    // What the restored store wrote is its own and survives kill -9.
    restored.kill9();
    let restored = start(&new, &env);
    assert_eq!(count(&restored.url), 1500);
    admin(&restored.url, "compact");
    assert_eq!(count(&restored.url), 1500);
    assert_eq!(local_parquet_files(&new), 0);
}

/// Clips and files go to the bucket before the listing that names them: a node restored from
/// the bucket serves them again, and one past its table's retention is deleted there too.
#[test]
fn blobs_go_to_the_bucket_with_their_listing_and_come_back_after_a_restore() {
    use crate::clips::{clip, files_under, get_blob, post_blob};
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_with_plant_bucket();
    let mut env = objects_env(&endpoint, "s3://plant/line-5");
    env.extend([
        (
            "FABRIK__STORE__TABLES__ACOUSTIC__RETENTION",
            "1h".to_owned(),
        ),
        ("FABRIK__STORE__BLOB_SWEEP_INTERVAL", "1s".to_owned()),
        ("FABRIK__STORE__BLOB_MIN_AGE", "1s".to_owned()),
    ]);
    let old = dir.path().join("old");
    let node = start(&old, &env);
    let now = crate::support::now_ns();
    let mut stored = Vec::new();
    for (time, media, bytes) in [
        (now, "audio/wav", clip(1)),
        // Another row of the series: a second later, or it would replace the first.
        (
            now - 1_000_000_000,
            "image/png",
            b"\x89PNG frame of the pump".to_vec(),
        ),
        // Past the table's retention: swept from the disk and from the bucket.
        (now - 2 * 3600 * 1_000_000_000, "audio/wav", clip(2)),
    ] {
        let (status, answer) = post_blob(
            &node.url,
            &format!("table=acoustic&device=pump-01&signal=mic&time={time}"),
            media,
            bytes.clone(),
        );
        assert_eq!(status, 201, "{answer}");
        let id = answer["id"].as_str().expect("id").to_owned();
        stored.push((id, media, bytes));
    }
    let key = |id: &str| blob_key("line-5", id);
    // Only a persist takes them there, with the listing.
    assert!(keys(&endpoint, "plant", "line-5/blobs/").is_empty());
    admin(&node.url, "persist");
    crate::mqtt::eventually(
        "the kept blobs are in the bucket, the expired one is not",
        || {
            let there = keys(&endpoint, "plant", "line-5/blobs/");
            there.contains(&key(&stored[0].0))
                && there.contains(&key(&stored[1].0))
                && !there.contains(&key(&stored[2].0))
                && get_blob(&node.url, &stored[2].0).0 == 404
        },
    );
    assert!(
        crate::support::metric(&node.url, "fabrik_blobs_uploaded_total").is_some_and(|n| n >= 2.0)
    );
    // A live blob the bucket lacks (a store from before blobs were copied there; here one
    // removed by hand) is copied there by the next sweep.
    delete_object(&endpoint, "plant", &key(&stored[1].0));
    crate::mqtt::eventually("the sweep copies the live blob back", || {
        keys(&endpoint, "plant", "line-5/blobs/").contains(&key(&stored[1].0))
    });
    node.kill9();

    let new = dir.path().join("new");
    let (ok, out) = restore(&new, &env);
    assert!(ok, "{out}");
    let restored = start(&new, &env);
    // A blob in the bucket that no row names (its listing was never persisted) is swept from
    // there; those the restored rows name stay, though the new disk has none of them yet.
    let stray = format!("line-5/blobs/sha256/ab/{}", "c".repeat(62));
    assert_eq!(
        s3(
            reqwest::Method::PUT,
            &format!("{endpoint}/plant/{stray}"),
            "unnamed"
        )
        .0,
        200
    );
    crate::mqtt::eventually("the unnamed blob is swept from the bucket", || {
        !keys(&endpoint, "plant", "line-5/blobs/").contains(&stray)
    });
    let there = keys(&endpoint, "plant", "line-5/blobs/");
    assert!(
        there.contains(&key(&stored[0].0)) && there.contains(&key(&stored[1].0)),
        "{there:?}"
    );
    assert_eq!(files_under(&new.join("blobs")), 0);
    for (id, media, bytes) in &stored[..2] {
        let (status, served_media, served) = get_blob(&restored.url, id);
        assert_eq!((status, served_media.as_str()), (200, *media), "{id}");
        assert!(served == *bytes, "{id}: other bytes");
    }
    assert_eq!(get_blob(&restored.url, &stored[2].0).0, 404);
    // Read once from the bucket, kept on the new disk (each blob and its media type).
    assert_eq!(files_under(&new.join("blobs")), 4);
}

/// Past `[store.objects] local_blob_limit` the disk gives up the least recently stored or read
/// blobs the bucket holds, and the API reads them back from the bucket; a blob the bucket does
/// not hold stays on the disk, however old. The bucket's sweep keeps the evicted blobs the rows
/// still name.
#[test]
fn blobs_past_the_local_limit_leave_the_disk_least_recently_used_first() {
    use crate::clips::{get_blob, post_blob, request_blob};
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_with_plant_bucket();
    let mut env = objects_env(&endpoint, "s3://plant/line-6");
    // No sweep before the last part (it copies live blobs the bucket lacks there): only the
    // persists the test asks for start an eviction pass.
    env.push((
        "FABRIK__STORE__OBJECTS__LOCAL_BLOB_LIMIT",
        "25KB".to_owned(),
    ));
    let data = dir.path().join("data");
    let node = start(&data, &env);
    let now = crate::support::now_ns();
    let on_disk = |id: &str| blob_on_disk(&data, id);
    let key = |id: &str| blob_key("line-6", id);
    let frames: Vec<(String, Vec<u8>)> = (1..=4_u8)
        .map(|k| {
            // Bytes that differ along the frame, so a range read at the wrong offset shows.
            let bytes: Vec<u8> = (0..10_000_u32)
                .map(|i| ((i * 7 + u32::from(k) * 13) % 251) as u8)
                .collect();
            let time = now - i64::from(10 - k) * 1_000_000_000;
            let (status, answer) = post_blob(
                &node.url,
                &format!("table=camera&device=press-01&signal=frame&time={time}"),
                "image/png",
                bytes.clone(),
            );
            assert_eq!(status, 201, "{answer}");
            // Distinct modification times, which order the eviction.
            std::thread::sleep(Duration::from_millis(20));
            (answer["id"].as_str().expect("id").to_owned(), bytes)
        })
        .collect();
    let id = |k: usize| frames[k - 1].0.as_str();
    let read = |k: usize| {
        let (status, media, bytes) = get_blob(&node.url, id(k));
        assert_eq!((status, media.as_str()), (200, "image/png"), "frame {k}");
        assert!(
            bytes == frames[k - 1].1,
            "frame {k} came back with other bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Frame 1 read again: now the most recently used.
    read(1);
    // 40 kB over a 25 kB limit, but none is in the bucket before a persist.
    assert!((1..=4).all(|k| on_disk(id(k))));
    admin(&node.url, "persist");
    let metric = |name: &str| crate::support::metric(&node.url, name);
    // The counters move at the end of a pass, after the files went.
    crate::mqtt::eventually("frames 2 and 3 leave the disk, 1 and 4 stay", || {
        metric("fabrik_blobs_evicted_total") == Some(2.0)
            && metric("fabrik_blob_local_bytes") == Some(20_000.0)
    });
    assert!(!on_disk(id(2)) && !on_disk(id(3)) && on_disk(id(1)) && on_disk(id(4)));

    // A range of an evicted frame is read from the bucket and does not bring the frame back
    // to the disk; HEAD and revalidation answer from the bucket too.
    let ranged = request_blob(
        &node.url,
        id(2),
        Method::GET,
        &[("range", "bytes=1000-1999")],
    );
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.header("content-range"), "bytes 1000-1999/10000");
    assert_eq!(ranged.header("content-type"), "image/png");
    assert!(ranged.bytes == frames[1].1[1000..2000], "other bytes");
    let tail = request_blob(&node.url, id(3), Method::GET, &[("range", "bytes=-10")]);
    assert_eq!(tail.status, 206);
    assert!(tail.bytes == frames[2].1[9990..], "other bytes");
    let past = request_blob(&node.url, id(2), Method::GET, &[("range", "bytes=10000-")]);
    assert_eq!(
        (past.status, past.header("content-range")),
        (416, "bytes */10000")
    );
    let head = request_blob(&node.url, id(2), Method::HEAD, &[]);
    assert_eq!(
        (
            head.status,
            head.header("content-length"),
            head.header("content-type")
        ),
        (200, "10000", "image/png")
    );
    let etag = format!("\"{}\"", id(2));
    let cached = request_blob(&node.url, id(2), Method::GET, &[("if-none-match", &etag)]);
    assert_eq!(cached.status, 304);
    assert!(!on_disk(id(2)) && !on_disk(id(3)));

    // Frame 4, the least recently used now, is no longer in the bucket (removed by hand). The
    // evicted frames come back from the bucket whole, to the disk: four readers of frame 2 at
    // once wait for one copy rather than each make one.
    delete_object(&endpoint, "plant", &key(id(4)));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| read(2));
        }
    });
    read(3);
    assert_eq!(metric("fabrik_blob_restores_total"), Some(2.0));
    assert_eq!(metric("fabrik_blob_restored_bytes_total"), Some(20_000.0));
    // Each copy back wakes a pass, without a persist: frame 4 stays, as the only copy; 1 and 2
    // go, 3 (read last) fits.
    crate::mqtt::eventually("frames 1 and 2 leave the disk, 3 and 4 stay", || {
        metric("fabrik_blobs_evicted_total") == Some(4.0)
            && metric("fabrik_blob_local_bytes") == Some(20_000.0)
    });
    assert!(!on_disk(id(1)) && !on_disk(id(2)) && on_disk(id(3)) && on_disk(id(4)));
    drop(node);

    // Sweeps with a short minimum age delete bucket blobs no row names; the evicted frames
    // are named, and stay. The sweep copies frame 4 back to the bucket, as a live blob the
    // bucket lacks.
    env.extend([
        ("FABRIK__STORE__BLOB_SWEEP_INTERVAL", "1s".to_owned()),
        ("FABRIK__STORE__BLOB_MIN_AGE", "1s".to_owned()),
    ]);
    let node = start(&data, &env);
    crate::mqtt::eventually("the sweep copies frame 4 back", || {
        keys(&endpoint, "plant", "line-6/blobs/").contains(&key(id(4)))
    });
    std::thread::sleep(Duration::from_secs(3));
    let there = keys(&endpoint, "plant", "line-6/blobs/");
    assert_eq!(there.len(), 4, "{there:?}");
    for (id, bytes) in &frames {
        let (status, _, served) = get_blob(&node.url, id);
        assert_eq!(status, 200, "{id}");
        assert!(served == *bytes, "{id}: other bytes");
    }
}

/// The key of blob `id` (`sha256:<hex>`) in the bucket under a store's `prefix`.
fn blob_key(prefix: &str, id: &str) -> String {
    let hex = id.trim_start_matches("sha256:");
    format!("{prefix}/blobs/sha256/{}/{}", &hex[..2], &hex[2..])
}

/// Whether blob `id` (`sha256:<hex>`) is on the disk of the store in `data`.
fn blob_on_disk(data: &Path, id: &str) -> bool {
    let hex = id.trim_start_matches("sha256:");
    data.join("blobs/sha256")
        .join(&hex[..2])
        .join(&hex[2..])
        .exists()
}

/// Every file under `dir`.
fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The segment files under `dir`, by name (their ids grow with each persist), with sizes.
fn parquet_files(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = files_in(dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
        .map(|path| {
            let size = std::fs::metadata(&path).expect("metadata").len();
            (
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                size,
            )
        })
        .collect();
    found.sort();
    found
}

/// With `[store.objects] segment_cache` the disk keeps copies of the segments just written and
/// those read, so queries of them need no bucket (they answer while it is unreachable), and
/// past the limit the least recently used copies go; a query of an evicted one reads the
/// bucket again and keeps it.
#[test]
fn queries_read_cached_segments_without_the_bucket() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _s3 = s3_server(port);
    let forwarded = free_port();
    let network = Outage::forward(forwarded, port);
    let endpoint = format!("http://127.0.0.1:{forwarded}");
    create_plant_bucket(&endpoint);
    let mut env = objects_env(&endpoint, "s3://plant/line-7");
    env.push(("FABRIK__STORE__OBJECTS__SEGMENT_CACHE", "10MB".into()));
    let data = dir.path().join("data");
    let cache = data.join("segment-cache");
    let node = start(&data, &env);
    let sum = |url: &str, table: &str| {
        let rows = crate::mqtt::query(
            url,
            &format!("SELECT count(*) AS n, sum(v) AS s FROM {table}"),
        );
        (
            rows[0]["n"].as_u64().expect("n"),
            rows[0]["s"].as_f64().expect("s") as u64,
        )
    };
    // Three tables, each persisted on its own: one segment each, newest last.
    let mut segment_of = std::collections::HashMap::new();
    for (k, table) in ["m1", "m2", "m3"].into_iter().enumerate() {
        let rows: String = (0..300)
            .map(|i| format!("{table},dev=d{} v={i} {}\n", i % 3, 1_000_000 + i))
            .collect();
        assert_eq!(post_status(&node.url, "/api/v1/write", &rows), 200);
        admin(&node.url, "persist");
        let copies = parquet_files(&cache);
        assert_eq!(copies.len(), k + 1, "{copies:?}");
        let new = copies
            .iter()
            .find(|(name, _)| !segment_of.values().any(|(known, _)| known == name))
            .expect("a new copy")
            .clone();
        segment_of.insert(table, new);
    }
    assert_eq!(keys(&endpoint, "plant", "line-7/segments/").len(), 3);
    let metric = |url: &str, name: &str| crate::support::metric(url, name).unwrap_or(0.0);
    // Every query of a persisted table is answered from the disk, even with the bucket gone.
    network.down();
    for table in ["m1", "m2", "m3"] {
        assert_eq!(sum(&node.url, table), (300, 299 * 300 / 2), "{table}");
    }
    assert!(metric(&node.url, "fabrik_segment_cache_hits_total") >= 3.0);
    assert_eq!(metric(&node.url, "fabrik_segment_cache_misses_total"), 0.0);
    network.restore();
    drop(node);

    // Restarted with room for only the two newest copies: the oldest (m1's) leaves at the
    // start. Reading m1 again fetches it from the bucket and keeps it, and the least recently
    // used copy (m2's) goes instead.
    // (Half of m1's size more: the three segments' sizes may differ by a few bytes.)
    let room = segment_of["m2"].1 + segment_of["m3"].1 + segment_of["m1"].1 / 2;
    let limit = room.to_string();
    let mut env = env.clone();
    env.retain(|(key, _)| *key != "FABRIK__STORE__OBJECTS__SEGMENT_CACHE");
    env.push(("FABRIK__STORE__OBJECTS__SEGMENT_CACHE", limit));
    let node = start(&data, &env);
    let names =
        |copies: Vec<(String, u64)>| copies.into_iter().map(|(name, _)| name).collect::<Vec<_>>();
    assert_eq!(
        names(parquet_files(&cache)),
        vec![segment_of["m2"].0.clone(), segment_of["m3"].0.clone()]
    );
    assert_eq!(sum(&node.url, "m3"), (300, 299 * 300 / 2));
    // m1 is not on the disk now: with the bucket gone its query fails, as the bucket's fault.
    network.down();
    let (status, answer) = http(
        &node.url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(serde_json::json!({ "sql": "SELECT count(*) FROM m1" })),
    );
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("s3://plant/line-7")),
        "{answer}"
    );
    network.restore();
    assert_eq!(sum(&node.url, "m1"), (300, 299 * 300 / 2));
    assert!(metric(&node.url, "fabrik_segment_cache_misses_total") >= 1.0);
    assert_eq!(
        names(parquet_files(&cache)),
        vec![segment_of["m1"].0.clone(), segment_of["m3"].0.clone()]
    );
    // A copy removed behind the cache's back is read from the bucket again.
    std::fs::remove_file(
        files_in(&cache)
            .into_iter()
            .find(|path| path.ends_with(&segment_of["m3"].0))
            .expect("m3's copy"),
    )
    .expect("remove");
    assert_eq!(sum(&node.url, "m3"), (300, 299 * 300 / 2));
}

/// An `Authorization` header naming the store's access key with no valid signature: moto
/// does not check signatures, but keeps objects private to the key that wrote them.
const AS_THE_STORE: &str = "AWS4-HMAC-SHA256 Credential=fabrik-test/20260101/us-east-1/s3/\
                            aws4_request, SignedHeaders=host, Signature=0";

/// An object in the bucket, read as the store's access key: status, its `x-amz-meta-sha256`,
/// body.
fn bucket_object(url: &str) -> (u16, Option<String>, String) {
    let answer = crate::support::send_blocking_answer(|client| {
        client.get(url).header("authorization", AS_THE_STORE)
    });
    let sha256 = Some(answer.header("x-amz-meta-sha256").to_owned()).filter(|h| !h.is_empty());
    (
        answer.status,
        sha256,
        String::from_utf8_lossy(&answer.bytes).into_owned(),
    )
}

/// Blobs travel to the bucket with their SHA-256 as metadata. An object there under a blob's
/// name with other bytes (of the same size) never lets the disk's copy go, and the next persist
/// naming the blob replaces it with the disk's bytes.
#[test]
fn a_blob_the_bucket_holds_other_bytes_for_stays_on_the_disk_until_copied_again() {
    use crate::clips::post_blob;
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_with_plant_bucket();
    let mut env = objects_env(&endpoint, "s3://plant/line-8");
    env.push((
        "FABRIK__STORE__OBJECTS__LOCAL_BLOB_LIMIT",
        "15KB".to_owned(),
    ));
    let data = dir.path().join("data");
    let node = start(&data, &env);
    let now = crate::support::now_ns();
    let frame = |k: u32| -> String {
        (0..10_000_u32)
            .map(|i| char::from(b'a' + ((i * 7 + k) % 26) as u8))
            .collect()
    };
    let store = |k: u32, time: i64| {
        let (status, answer) = post_blob(
            &node.url,
            &format!("table=camera&device=press-02&signal=frame&time={time}"),
            "image/png",
            frame(k).into_bytes(),
        );
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().expect("id").to_owned()
    };
    let hex = |id: &str| id.trim_start_matches("sha256:").to_owned();
    let object = |id: &str| format!("{endpoint}/plant/{}", blob_key("line-8", id));
    let on_disk = |id: &str| blob_on_disk(&data, id);
    let a = store(1, now - 10_000_000_000);
    admin(&node.url, "persist");
    let (status, sha256, body) = bucket_object(&object(&a));
    assert_eq!((status, sha256.as_deref()), (200, Some(hex(&a).as_str())));
    assert!(body == frame(1));
    // Replaced in the bucket by other bytes of the same size, claiming another hash.
    let (status, answer) = crate::support::send_blocking(|client| {
        client
            .put(object(&a))
            .header("authorization", AS_THE_STORE)
            .header("x-amz-meta-sha256", "0".repeat(64))
            .body(frame(2))
    });
    assert_eq!(status, 200, "{answer}");
    std::thread::sleep(Duration::from_millis(20));
    // Frame 3 takes the disk past the limit: frame 1, the older, cannot go; frame 3 goes.
    let c = store(3, now - 5_000_000_000);
    admin(&node.url, "persist");
    let metric = |name: &str| crate::support::metric(&node.url, name);
    crate::mqtt::eventually("frame 3 leaves the disk", || {
        metric("fabrik_blobs_evicted_total") == Some(1.0)
    });
    assert!(on_disk(&a) && !on_disk(&c));
    assert!(metric("fabrik_blob_eviction_errors_total").is_some_and(|n| n >= 1.0));
    // Named by a new row, frame 1 is copied again over the wrong bytes.
    assert_eq!(store(1, now), a);
    admin(&node.url, "persist");
    let (status, sha256, body) = bucket_object(&object(&a));
    assert_eq!((status, sha256.as_deref()), (200, Some(hex(&a).as_str())));
    assert!(body == frame(1), "the bucket still holds other bytes");
    // Frame 3, evicted, is replaced in the bucket by other bytes: a range of it, which has no
    // hash to check, is refused by the hash the object was uploaded as, and so is HEAD.
    let (status, answer) = crate::support::send_blocking(|client| {
        client
            .put(object(&c))
            .header("authorization", AS_THE_STORE)
            .header("x-amz-meta-sha256", "0".repeat(64))
            .body(frame(4))
    });
    assert_eq!(status, 200, "{answer}");
    for (method, headers) in [
        (reqwest::Method::GET, &[("range", "bytes=0-99")][..]),
        (reqwest::Method::HEAD, &[][..]),
    ] {
        let answer = crate::clips::request_blob(&node.url, &c, method.clone(), headers);
        assert_eq!(answer.status, 503, "{method}");
    }
    // A whole read is refused by that claim before the body is read; and once the object
    // claims to be the blob while holding other bytes, by the bytes' own hash as they are
    // copied back to the disk. Nothing of them stays there, under the blob's name or another.
    let answer = crate::clips::request_blob(&node.url, &c, reqwest::Method::GET, &[]);
    let text = String::from_utf8_lossy(&answer.bytes);
    assert_eq!(answer.status, 503, "{text}");
    assert!(
        text.contains(&format!("uploaded as sha256:{}", "0".repeat(64))),
        "{text}"
    );
    let (status, answer) = crate::support::send_blocking(|client| {
        client
            .put(object(&c))
            .header("authorization", AS_THE_STORE)
            .header("x-amz-meta-sha256", hex(&c))
            .body(frame(4))
    });
    assert_eq!(status, 200, "{answer}");
    let answer = crate::clips::request_blob(&node.url, &c, reqwest::Method::GET, &[]);
    let text = String::from_utf8_lossy(&answer.bytes);
    assert_eq!(answer.status, 503, "{text}");
    let other = format!(
        "their hash is {}",
        fabrik_core::BlobId::of(frame(4).as_bytes())
    );
    assert!(text.contains(&other), "{text}");
    assert!(!on_disk(&c));
    let hex_c = hex(&c);
    let shard = data.join("blobs/sha256").join(&hex_c[..2]);
    let leftovers: Vec<_> = std::fs::read_dir(&shard)
        .expect("shard")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&hex_c[2..]))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Query nodes (decision 0079): `[store.objects] read_only` nodes answer SQL over the prefix
/// another node's store writes, see what it persists within their refresh interval, take no
/// writes, write nothing to the bucket, keep answering while the writer is down, and a query
/// that meets a segment the writer compacted away reads the manifest again instead of failing.
#[test]
fn query_nodes_read_the_prefix_another_store_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_with_plant_bucket();
    let mut env = objects_env(&endpoint, "s3://plant/line-6");
    let mut reader_env = env.clone();
    reader_env.push(("FABRIK__STORE__OBJECTS__READ_ONLY", "true".into()));
    reader_env.push(("FABRIK__STORE__OBJECTS__REFRESH_INTERVAL", "1s".into()));
    let reader_env: Vec<(&str, &str)> = reader_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start_reader = |name: &str, extra: &[(&'static str, &'static str)]| {
        let mut env = reader_env.clone();
        env.extend_from_slice(extra);
        Process::start_with_args(&dir.path().join(name), &["--target", "http"], &env)
    };

    // No store owns the prefix yet: nothing to read.
    let owned: Vec<(&'static str, String)> = reader_env
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    let out = start_refused(&dir.path().join("early"), &owned);
    assert!(
        out.contains("no store owns the prefix") && out.contains("s3://plant/line-6"),
        "{out}"
    );

    // The writer compacts when the test says (its deletions wait a minute's grace).
    env.push(("FABRIK__STORE__COMPACTION_INTERVAL", "1h".into()));
    let writer_data = dir.path().join("writer");
    let writer = start(&writer_data, &env);
    assert_eq!(
        post_status(&writer.url, "/api/v1/write", &body(0, 1000)),
        200
    );
    admin(&writer.url, "persist");

    let reader = start_reader("reader", &[]);
    let banner = reader.drain_log().join("\n");
    assert!(
        banner.contains("read-only query node over s3://plant/line-6"),
        "{banner}"
    );
    assert_eq!(count(&reader.url), 1000);
    // Acknowledged by the writer but not persisted: not in the bucket, so not here yet.
    assert_eq!(
        post_status(&writer.url, "/api/v1/write", &body(1000, 500)),
        200
    );
    assert_eq!(count(&reader.url), 1000);
    admin(&writer.url, "persist");
    crate::mqtt::eventually_for("the reader sees 1500 rows", Duration::from_secs(30), || {
        count(&reader.url) == 1500
    });
    // Each says where it stands: the reader at the owner's persisted WAL record, nothing
    // buffered, its manifest read just now.
    let store = |url: &str| {
        let (status, body) = http(url, reqwest::Method::GET, "/api/v1/store", None);
        assert_eq!(status, 200, "{body}");
        body
    };
    let (owner, seen) = (store(&writer.url), store(&reader.url));
    assert_eq!(owner["role"], "owner", "{owner}");
    assert_eq!(owner["bucket"], "s3://plant/line-6", "{owner}");
    assert_eq!(seen["role"], "read_only", "{seen}");
    assert_eq!(seen["bucket"], owner["bucket"]);
    assert_eq!(seen["store_id"], owner["store_id"]);
    assert_eq!(seen["persisted_seq"], owner["persisted_seq"]);
    assert_eq!(seen["buffered_rows"], 0);
    assert!(seen["read_at"].as_i64() > Some(0), "{seen}");
    assert_eq!(seen["tables"][0]["name"], "m", "{seen}");
    assert_eq!(seen["tables"][0]["rows"], 1500, "{seen}");
    let (ok, text) = crate::support::client_command(&reader.url, &["store", "status"]);
    assert!(ok, "{text}");
    let owner_id = owner["store_id"].as_str().expect("store id");
    assert!(
        text.contains(&format!(
            "read-only query node over s3://plant/line-6, owned by store {owner_id}"
        )),
        "{text}"
    );
    // A reader that reads its manifest only at the start; the writer has two segments of `m`
    // in one partition now, which its next compaction merges.
    let slow = start_reader(
        "slow-reader",
        &[("FABRIK__STORE__OBJECTS__REFRESH_INTERVAL", "1h")],
    );
    let replaced: Vec<String> = keys(&endpoint, "plant", "line-6/segments/")
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    assert_eq!(replaced.len(), 2, "{replaced:?}");

    // A table and a column the writer made later appear once persisted.
    assert_eq!(
        post_status(&writer.url, "/api/v1/write", "pump,device=p1 rpm=1450 7\n"),
        200
    );
    admin(&writer.url, "persist");
    crate::mqtt::eventually_for(
        "the reader sees table pump",
        Duration::from_secs(30),
        || {
            let (status, rows) = http(
                &reader.url,
                reqwest::Method::POST,
                "/api/v1/query",
                Some(serde_json::json!({"sql": "SELECT rpm FROM pump"})),
            );
            status == 200 && rows.to_string().contains("1450")
        },
    );

    // Writes are refused for good (403), naming the owner, and leave nothing behind; so are
    // a persist and a blob.
    let (status, text) = http(
        &reader.url,
        reqwest::Method::POST,
        "/api/v1/samples",
        Some(serde_json::json!({"samples": [{"measurement": "m", "fields": {"v": 1.0}}]})),
    );
    assert_eq!(status, 403, "{text}");
    let text = text.to_string();
    assert!(
        text.contains("only reads object storage s3://plant/line-6")
            && text.contains("owns the prefix"),
        "{text}"
    );
    assert_eq!(
        post_status(&reader.url, "/api/v1/write", &body(5000, 1)),
        403
    );
    // Refused before it is read: a new column does not reach the reader's tables.
    assert_eq!(
        post_status(&reader.url, "/api/v1/write", "m,dev=d1 intruder=1 5\n"),
        403
    );
    let (status, text) = http(
        &reader.url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(serde_json::json!({"sql": "SELECT intruder FROM m"})),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = http(
        &reader.url,
        reqwest::Method::POST,
        "/api/v1/admin/persist",
        None,
    );
    assert_eq!(status, 403, "{text}");
    let (status, answer) = crate::clips::post_blob(
        &reader.url,
        "table=photos&device=p1&signal=camera",
        "application/octet-stream",
        b"a frame".to_vec(),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        files_in(&dir.path().join("reader").join("blobs")).is_empty(),
        "a refused blob was kept"
    );
    assert_eq!(count(&reader.url), 1500);

    // The writer's compaction merges the two segments; one after its grace deletes them.
    admin(&writer.url, "compact");
    let mut checks = 0;
    crate::mqtt::eventually_for(
        "the replaced segments deleted",
        Duration::from_secs(150),
        || {
            checks += 1;
            if checks % 20 == 0 {
                admin(&writer.url, "compact");
            }
            let now = keys(&endpoint, "plant", "line-6/segments/");
            replaced.iter().all(|k| !now.contains(k))
        },
    );
    // The slow reader's manifest still names them: its query reads the manifest again.
    assert_eq!(count(&slow.url), 1500);
    assert!(
        crate::support::metric(&slow.url, "fabrik_store_reader_query_retries_total")
            .is_some_and(|n| n >= 1.0),
        "the query did not go through the retry"
    );

    // With the writer gone, the readers still answer from the bucket, and write nothing
    // there while they refresh.
    writer.kill9();
    let before = listing(&endpoint, "plant", "line-6/");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&reader.url), 1500);
    assert_eq!(count(&slow.url), 1500);
    assert_eq!(listing(&endpoint, "plant", "line-6/"), before);
    assert_eq!(manifest_copies(&endpoint, "line-6/").len(), 1);

    // A person's erasure erases the reader's own registry and leaves the rows to the owner.
    let (status, erased) = http(
        &reader.url,
        reqwest::Method::DELETE,
        "/api/v1/people/ana",
        None,
    );
    assert_eq!(status, 200, "{erased}");
    assert!(
        erased["notes"].to_string().contains("read-only query node"),
        "{erased}"
    );

    // The writer's disk is lost: a restore hands the prefix to a new store (its manifest
    // copied before the marker names it). The readers follow it at their next refresh, before
    // it has even started, and keep answering.
    let (ok, out) = restore(&dir.path().join("restored"), &env);
    assert!(ok, "{out}");
    let new_id = out
        .split("is now store ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the restored store's id")
        .to_owned();
    assert_ne!(new_id, owner_id);
    crate::mqtt::eventually_for(
        "the reader follows the new owner",
        Duration::from_secs(30),
        || store(&reader.url)["store_id"] == new_id.as_str(),
    );
    assert_eq!(count(&reader.url), 1500);

    // A reader's data directory holds only caches: a writer's is refused.
    let out = start_refused(&writer_data, &owned);
    assert!(
        out.contains("holds a store") && out.contains("of its own"),
        "{out}"
    );
}
