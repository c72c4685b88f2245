//! `fabrik bench mqtt`: many publishing connections against an MQTT broker (Fabrik's endpoint
//! or any other, e.g. Mosquitto), one single-reading JSON message per publish.
//!
//! Reports the publish rate the broker accepted (QoS 1: acknowledged; Fabrik acknowledges only
//! once a message is stored, so that is publish-to-durable), PUBACK latency percentiles, the
//! rate a subscriber on `devices/+/telemetry` received, and, with `--url`, the end-to-end rate:
//! the time until every message is a row in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use fabrik_connect::client::{ClientEvent, ClientOptions, MqttClient};
use tokio_util::sync::CancellationToken;

use crate::client::Endpoint;

/// Arguments of `fabrik bench mqtt`.
#[derive(Debug, Args)]
pub(crate) struct MqttArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Publishing connections.
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// Messages in total (spread over the connections).
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Unacknowledged QoS 1 publishes per connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// User name of every connection (Fabrik: `admin`, with the admin token as password).
    #[arg(long)]
    username: Option<String>,
    /// Password of every connection.
    #[arg(long)]
    password: Option<String>,
    /// Also count deliveries to one subscriber of `devices/+/telemetry`.
    #[arg(long)]
    subscribe: bool,
    /// Wait until the store holds every message (Fabrik only; needs --url and a token).
    #[arg(long)]
    verify_store: bool,
    /// Table the messages land in (with the default mappings: the device type, else
    /// `telemetry`).
    #[arg(long, default_value = "telemetry")]
    table: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    endpoint: Endpoint,
}

fn options(args: &MqttArgs, client_id: String) -> ClientOptions {
    let mut o = ClientOptions::new(args.broker.clone(), client_id);
    o.username = args.username.clone();
    o.password = args.password.clone();
    o.keep_alive = Duration::from_secs(60);
    o
}

async fn connected(events: &mut tokio::sync::mpsc::Receiver<ClientEvent>) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(ClientEvent::Connected)) => return Ok(()),
            Ok(Some(ClientEvent::Disconnected(reason))) => bail!("refused: {reason}"),
            Ok(Some(ClientEvent::Message(_))) => {}
            Ok(None) => bail!("client stopped"),
            Err(_) => bail!("no CONNACK within 30 s"),
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs the benchmark.
pub(crate) async fn run(args: MqttArgs) -> anyhow::Result<()> {
    if args.qos > 1 {
        bail!("--qos must be 0 or 1");
    }
    let stop = CancellationToken::new();
    let run_id = std::process::id();
    let received = Arc::new(AtomicU64::new(0));
    // Nanoseconds after `origin` at which the subscriber got its latest message.
    let origin = Instant::now();
    let last_received_ns = Arc::new(AtomicU64::new(0));
    let mut subscriber_task = None;
    if args.subscribe {
        let (sub, mut events) = MqttClient::start(
            options(&args, format!("bench-sub-{run_id}")),
            stop.child_token(),
        )
        .context("subscriber")?;
        connected(&mut events).await.context("subscriber")?;
        sub.subscribe(vec![("devices/+/telemetry".into(), 0)])
            .await
            .map_err(anyhow::Error::msg)?;
        let counter = received.clone();
        let last = last_received_ns.clone();
        subscriber_task = Some(tokio::spawn(async move {
            let _keep = sub;
            while let Some(event) = events.recv().await {
                if let ClientEvent::Message(m) = event {
                    counter.fetch_add(1, Ordering::Relaxed);
                    last.store(
                        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    if let Some(done) = m.done {
                        let _ = done.send(Ok(()));
                    }
                }
            }
        }));
        // Let the SUBACK arrive before publishing starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let connect_started = Instant::now();
    let mut clients = Vec::with_capacity(args.connections);
    let mut pending = Vec::new();
    for i in 0..args.connections {
        let (client, events) = MqttClient::start(
            options(&args, format!("bench-{run_id}-{i}")),
            stop.child_token(),
        )
        .context("client")?;
        pending.push(events);
        clients.push(client);
    }
    for (i, events) in pending.iter_mut().enumerate() {
        connected(events)
            .await
            .with_context(|| format!("connection {i}"))?;
    }
    // Drain events in the background so the clients never block on a full event channel.
    let drains: Vec<_> = pending
        .into_iter()
        .map(|mut events| tokio::spawn(async move { while events.recv().await.is_some() {} }))
        .collect();
    let connect_time = connect_started.elapsed();

    let per_connection = args.messages.div_ceil(args.connections.max(1));
    let total = per_connection * args.connections;
    let lanes = if args.qos == 1 {
        args.inflight.max(1)
    } else {
        1
    };
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let topic = format!("devices/bench-{run_id}-{i}/telemetry");
        for lane in 0..lanes {
            let client = client.clone();
            let topic = topic.clone();
            let errors = errors.clone();
            let qos = args.qos;
            let count = per_connection / lanes + usize::from(lane < per_connection % lanes);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(if qos == 1 { count } else { 0 });
                for n in 0..count {
                    let payload = format!("{{\"v\":{}}}", n * lanes + lane);
                    let sent = Instant::now();
                    if client.publish(&topic, payload, qos, false).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    } else if qos == 1 {
                        latencies
                            .push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                }
                latencies
            }));
        }
    }
    let mut latencies = Vec::with_capacity(if args.qos == 1 { total } else { 0 });
    for t in tasks {
        latencies.extend(t.await.context("publisher task")?);
    }
    let publish_time = started.elapsed();
    latencies.sort_unstable();

    // Deliveries to the subscriber: wait until they stop growing.
    let mut delivered_time = None;
    if args.subscribe {
        let mut last = received.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = received.load(Ordering::Relaxed);
            if now as usize >= total || now == last {
                let last_at = Duration::from_nanos(last_received_ns.load(Ordering::Relaxed));
                delivered_time = Some(last_at.saturating_sub(started.duration_since(origin)));
                break;
            }
            last = now;
        }
    }

    let mut stored = None;
    let mut stored_time = None;
    if args.verify_store {
        let http = reqwest::Client::new();
        let sql = format!(
            "SELECT count(*) AS n FROM \"{}\" WHERE device LIKE 'bench-{run_id}-%'",
            args.table
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let response = args
                .endpoint
                .request(&http, reqwest::Method::POST, "/api/v1/query")
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
                .context("query")?;
            let rows: serde_json::Value = response.json().await.unwrap_or_default();
            let n = rows[0]["n"].as_u64().unwrap_or(0);
            if n as usize >= total || Instant::now() > deadline {
                stored = Some(n);
                stored_time = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    for d in drains {
        let _ = d.await;
    }
    if let Some(t) = subscriber_task {
        let _ = t.await;
    }

    let rate = |n: f64, d: Duration| n / d.as_secs_f64().max(1e-9);
    let result = serde_json::json!({
        "broker": args.broker,
        "connections": args.connections,
        "qos": args.qos,
        "messages": total,
        "errors": errors.load(Ordering::Relaxed),
        "connect_seconds": connect_time.as_secs_f64(),
        "publish_seconds": publish_time.as_secs_f64(),
        "publish_rate": rate(total as f64, publish_time),
        "puback_p50_ms": percentile(&latencies, 0.5),
        "puback_p99_ms": percentile(&latencies, 0.99),
        "delivered": args.subscribe.then(|| received.load(Ordering::Relaxed)),
        "delivered_rate": delivered_time.map(|d| rate(received.load(Ordering::Relaxed) as f64, d)),
        "stored": stored,
        "stored_rate": stored_time.zip(stored).map(|(d, n)| rate(n as f64, d)),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} connections, QoS {}: {} messages in {:.2} s = {:.0} msg/s accepted ({} errors); connect {:.2} s",
            args.connections,
            args.qos,
            total,
            publish_time.as_secs_f64(),
            rate(total as f64, publish_time),
            errors.load(Ordering::Relaxed),
            connect_time.as_secs_f64()
        );
        if args.qos == 1 {
            println!(
                "PUBACK latency: p50 {:.2} ms, p99 {:.2} ms",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99)
            );
        }
        if let (Some(d), true) = (delivered_time, args.subscribe) {
            let n = received.load(Ordering::Relaxed);
            println!(
                "subscriber received {n} in {:.2} s = {:.0} msg/s",
                d.as_secs_f64(),
                rate(n as f64, d)
            );
        }
        if let (Some(n), Some(d)) = (stored, stored_time) {
            println!(
                "stored {n} of {total} rows after {:.2} s = {:.0} msg/s end to end",
                d.as_secs_f64(),
                rate(n as f64, d)
            );
        }
    }
    Ok(())
}
