//! The registry's database operations on SQLite and on PostgreSQL (decision 0055): audit
//! appends, device events, the per-second activity flush, device reads and listings.
//! `bench/registry.sh` runs it on both; `FABRIK_BENCH_POSTGRES_URL` names an empty
//! PostgreSQL database, else it runs on an SQLite file in a temporary directory.

use std::time::{Duration, Instant};

use fabrik_registry::{AuditEvent, DeviceFilter, Location, NewDevice, Registry};

/// Devices registered (each costs an argon2id hash, so not many).
const DEVICES: usize = 200;

fn report(what: &str, latencies: &mut [Duration], per_op: usize) {
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<34} {:>10.0} {:>9.0} µs {:>9.0} µs",
        (latencies.len() * per_op) as f64 / total.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}

async fn timed<F: std::future::Future<Output = ()>>(
    n: usize,
    mut op: impl FnMut(usize) -> F,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        op(i).await;
        latencies.push(start.elapsed());
    }
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = match std::env::var("FABRIK_BENCH_POSTGRES_URL") {
        Ok(url) => Location::Postgres {
            url,
            audit_key: dir.path().join("audit.key"),
        },
        Err(_) => Location::File(dir.path().join("registry.db")),
    };
    let registry = Registry::open_at(&location).await.expect("open");
    println!("registry on {}", location.display());
    println!(
        "{:<34} {:>10} {:>12} {:>12}",
        "operation", "per second", "p50", "p99"
    );
    for n in 0..DEVICES {
        registry
            .add(NewDevice {
                id: format!("pump-{n:04}"),
                device_type: Some("pump".into()),
                ..NewDevice::default()
            })
            .await
            .expect("add");
    }
    let mut audit = timed(2_000, |n| {
        let registry = registry.clone();
        async move {
            registry
                .audit(AuditEvent {
                    actor: "admin-token".into(),
                    action: "PUT /api/v1/pipelines/{name}".into(),
                    target: format!("/api/v1/pipelines/p{n}"),
                    status: 200,
                })
                .await
                .expect("audit");
        }
    })
    .await;
    report("audit entry appended", &mut audit, 1);
    let mut events = timed(5_000, |n| {
        let registry = registry.clone();
        async move {
            registry
                .event(&format!("pump-{:04}", n % DEVICES), "connected", "bench")
                .await
                .expect("event");
        }
    })
    .await;
    report("device event written", &mut events, 1);
    let mut flushes = timed(50, |_| {
        let registry = registry.clone();
        async move {
            for n in 0..DEVICES {
                registry.count_message(&format!("pump-{n:04}"), false);
            }
            registry.flush_activity().await.expect("flush");
        }
    })
    .await;
    report("activity flush (devices/s)", &mut flushes, DEVICES);
    let mut reads = timed(5_000, |n| {
        let registry = registry.clone();
        async move {
            registry
                .get(&format!("pump-{:04}", n % DEVICES))
                .await
                .expect("get");
        }
    })
    .await;
    report("device read", &mut reads, 1);
    let mut lists = timed(200, |_| {
        let registry = registry.clone();
        async move {
            let all = registry.list(&DeviceFilter::default()).await.expect("list");
            assert_eq!(all.len(), DEVICES);
        }
    })
    .await;
    report("all devices listed (devices/s)", &mut lists, DEVICES);
    let start = Instant::now();
    let check = registry.verify_audit().await.expect("verify");
    assert!(check.intact);
    println!(
        "{:<34} {:>10.0}",
        "audit chain verified (entries/s)",
        check.entries as f64 / start.elapsed().as_secs_f64()
    );
    registry.close().await;
}
