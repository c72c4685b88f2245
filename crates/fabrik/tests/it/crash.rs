//! Crash safety: SIGKILL `fabrik run` at random moments while batches are being written and
//! persisted, restart, and check that every acknowledged batch is there exactly once and
//! every unacknowledged batch is there whole or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::support::{Process, TOKEN};

const LINES_PER_BATCH: usize = 500;

fn batch_body(batch: u64) -> String {
    (0..LINES_PER_BATCH)
        .map(|k| {
            format!(
                "crash,batch=b{batch},dev=d{} v={k}i {}\n",
                k % 10,
                batch * 1_000_000 + k as u64
            )
        })
        .collect()
}

async fn count_by_batch(url: &str) -> BTreeMap<u64, i64> {
    let r = crate::support::http_client()
        .post(format!("{url}/api/v1/query"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"sql": "SELECT batch, count(*) AS n FROM crash GROUP BY batch"}))
        .send()
        .await
        .expect("query");
    assert_eq!(r.status(), 200);
    let rows: Vec<serde_json::Value> = r.json().await.expect("json");
    rows.iter()
        .map(|row| {
            let b = row["batch"]
                .as_str()
                .expect("batch")
                .trim_start_matches('b')
                .parse()
                .expect("id");
            (b, row["n"].as_i64().expect("n"))
        })
        .collect()
}

#[test]
fn every_acknowledged_point_survives_sigkill_exactly_once() {
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("crash test seed: {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let attempted: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut next_batch = 0u64;
    // A small flush threshold so persistence (rotation, Parquet, WAL deletion) happens during
    // the kills too.
    let env = [
        ("FABRIK__STORE__FLUSH_BUFFER_SIZE", "2MiB"),
        ("FABRIK__STORE__FLUSH_INTERVAL", "1s"),
    ];
    for round in 0..4 {
        let p = Process::start(dir.path(), &env);
        let url = p.url.clone();
        let kill_after = Duration::from_millis(rng.random_range(150..900));
        let first = next_batch;
        next_batch += 10_000;
        rt.block_on(async {
            let mut writers = Vec::new();
            for w in 0..3u64 {
                let url = url.clone();
                let acked = acked.clone();
                let attempted = attempted.clone();
                writers.push(tokio::spawn(async move {
                    let client = crate::support::http_client();
                    let mut batch = first + w;
                    loop {
                        attempted.lock().expect("lock").insert(batch);
                        let sent = client
                            .post(format!("{url}/api/v1/write"))
                            .bearer_auth(TOKEN)
                            .body(batch_body(batch))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 200 => {
                                acked.lock().expect("lock").insert(batch);
                            }
                            Ok(r) => panic!("batch {batch} refused with {}", r.status()),
                            Err(_) => return, // the server died: this batch is unacknowledged
                        }
                        batch += 3;
                    }
                }));
            }
            tokio::time::sleep(kill_after).await;
            eprintln!("round {round}: SIGKILL after {kill_after:?}");
            p.kill9();
            for w in writers {
                let _ = w.await;
            }
        });
    }
    let p = Process::start(dir.path(), &[]);
    let counts = rt.block_on(count_by_batch(&p.url));
    let acked = acked.lock().expect("lock").clone();
    let attempted = attempted.lock().expect("lock").clone();
    assert!(
        acked.len() > 10,
        "the test acknowledged too few batches to mean anything: {}",
        acked.len()
    );
    for b in &acked {
        assert_eq!(
            counts.get(b).copied(),
            Some(LINES_PER_BATCH as i64),
            "acknowledged batch {b}"
        );
    }
    for (b, n) in &counts {
        assert!(attempted.contains(b), "batch {b} was never sent");
        assert_eq!(
            *n, LINES_PER_BATCH as i64,
            "batch {b} is partial: all or nothing per request"
        );
    }
    // Clients retry after a crash: re-sending acknowledged batches must not duplicate them.
    rt.block_on(async {
        let client = crate::support::http_client();
        for b in acked.iter().take(5) {
            let r = client
                .post(format!("{}/api/v1/write", p.url))
                .bearer_auth(TOKEN)
                .body(batch_body(*b))
                .send()
                .await
                .expect("resend");
            assert_eq!(r.status(), 200);
        }
        let again = count_by_batch(&p.url).await;
        for b in acked.iter().take(5) {
            assert_eq!(
                again.get(b).copied(),
                Some(LINES_PER_BATCH as i64),
                "re-sent batch {b}"
            );
        }
    });
    eprintln!(
        "acknowledged {} batches, {} stored",
        acked.len(),
        counts.len()
    );
    p.kill9();
}
