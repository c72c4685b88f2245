//! `fabrik bench mqtt`: many publishing connections against an MQTT broker (Fabrik's endpoint
//! or any other, e.g. Mosquitto), one single-reading JSON message per publish.
//!
//! The publishers speak MQTT 3.1.1 (or 5, `--mqtt-version 5`) directly on their sockets with
//! pre-encoded packets, written in bursts (QoS 0) or as far as the in-flight window allows
//! (QoS 1): on a two-core machine the load generator shares the CPU with the broker under test,
//! and a full client per connection would measure the client rather than the broker. With
//! `--traceparent` every MQTT 5 publish carries a sampled W3C trace context of its own, as a
//! traced device fleet would send (decision 0077), so the cost of message traces is measured.
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
    /// MQTT version of the publishers: `3.1.1` or `5`.
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    mqtt_version: String,
    /// Every publish carries a sampled W3C `traceparent` user property with a trace of its
    /// own (needs `--mqtt-version 5`).
    #[arg(long)]
    traceparent: bool,
    /// Unacknowledged QoS 1 publishes per connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// QoS 0 publishes written to a socket at once.
    #[arg(long, default_value_t = 16)]
    burst: usize,
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
    let version = if args.mqtt_version == "5" {
        raw::Version::V5
    } else {
        raw::Version::V311
    };
    if args.traceparent && version != raw::Version::V5 {
        bail!("--traceparent needs --mqtt-version 5: MQTT 3.1.1 has no user properties");
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
    let per_connection = args.messages.div_ceil(args.connections.max(1));
    let total = per_connection * args.connections;
    let mut connections = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let stream = raw::connect(
            &args.broker,
            version,
            &format!("bench-{run_id}-{i}"),
            args.username.as_deref(),
            args.password.as_deref(),
        )
        .await
        .with_context(|| format!("connection {i}"))?;
        connections.push(stream);
    }
    let connect_time = connect_started.elapsed();

    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (stream, receive_maximum)) in connections.into_iter().enumerate() {
        let topic = format!("devices/bench-{run_id}-{i}/telemetry");
        let errors = errors.clone();
        let publisher = raw::Publisher {
            version,
            qos: args.qos,
            // An MQTT 5 broker may take fewer unacknowledged publishes than asked for.
            inflight: args
                .inflight
                .min(receive_maximum.map_or(usize::MAX, usize::from))
                .max(1),
            burst: args.burst.max(1),
            // Distinct per run and connection, so every message starts a trace of its own.
            trace_prefix: args
                .traceparent
                .then(|| (u64::from(run_id) << 32) | (i as u64 + 1)),
        };
        tasks.push(tokio::spawn(async move {
            match publisher.publish_all(stream, &topic, per_connection).await {
                Ok(latencies) => latencies,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %topic, "Publisher failed.");
                    errors.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
            }
        }));
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
        let http = args.endpoint.client()?;
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
    if let Some(t) = subscriber_task {
        let _ = t.await;
    }

    let rate = |n: f64, d: Duration| n / d.as_secs_f64().max(1e-9);
    let result = serde_json::json!({
        "broker": args.broker,
        "connections": args.connections,
        "qos": args.qos,
        "mqtt_version": args.mqtt_version,
        "traceparent": args.traceparent,
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
            "{} connections, MQTT {}{}, QoS {}: {} messages in {:.2} s = {:.0} msg/s accepted ({} errors); connect {:.2} s",
            args.connections,
            args.mqtt_version,
            if args.traceparent {
                " with traceparent"
            } else {
                ""
            },
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

/// MQTT 3.1.1 and 5 on a bare socket: just enough to connect, publish and count
/// acknowledgements.
mod raw {
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The protocol version the publishers speak.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Version {
        V311,
        V5,
    }

    /// MQTT 5's user property identifier.
    const USER_PROPERTY: u8 = 0x26;

    fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                break;
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A packet's remaining length at the start of `bytes`: the length and how many bytes
    /// encode it, `Ok(None)` when more bytes are needed.
    fn remaining_length(bytes: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
        let mut length = 0usize;
        for (i, byte) in bytes.iter().take(4).enumerate() {
            length |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some((length, i + 1)));
            }
        }
        if bytes.len() >= 4 {
            bail!("malformed remaining length");
        }
        Ok(None)
    }

    /// The Receive Maximum among an MQTT 5 CONNACK's properties (`body` after the flags and
    /// the reason code), if the broker set one; `None` also when a property is not one a
    /// CONNACK may carry (the rest cannot be walked).
    fn receive_maximum(properties: &[u8]) -> Option<u16> {
        let (length, at) = remaining_length(properties).ok()??;
        let properties = properties.get(at..at + length)?;
        let mut at = 0;
        while at < properties.len() {
            let id = properties[at];
            at += 1;
            let two = |at: usize| -> Option<usize> {
                let b = properties.get(at..at + 2)?;
                Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
            };
            at += match id {
                0x21 => return two(at).and_then(|v| u16::try_from(v).ok()),
                0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
                0x13 | 0x22 => 2,
                0x11 | 0x27 => 4,
                // Strings and binary data: a two-byte length first.
                0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 2 + two(at)?,
                // A user property: two strings.
                0x26 => {
                    let key = 2 + two(at)?;
                    key + 2 + two(at + key)?
                }
                _ => return None,
            };
        }
        None
    }

    /// Reads one whole packet: its first byte and its body.
    async fn read_packet(stream: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
        let kind = stream.read_u8().await?;
        let mut encoded = Vec::with_capacity(4);
        let length = loop {
            encoded.push(stream.read_u8().await?);
            if let Some((length, _)) = remaining_length(&encoded)? {
                break length;
            }
        };
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        Ok((kind, body))
    }

    /// Connects with a clean session and waits for a successful CONNACK; returns the stream
    /// and the broker's Receive Maximum (MQTT 5: the QoS 1 publishes it takes unacknowledged
    /// at once).
    pub(super) async fn connect(
        broker: &str,
        version: Version,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<(TcpStream, Option<u16>)> {
        let mut stream = TcpStream::connect(broker)
            .await
            .with_context(|| format!("cannot connect to {broker}"))?;
        stream.set_nodelay(true)?;
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(if version == Version::V5 { 5 } else { 4 });
        let mut flags = 0x02u8;
        if username.is_some() {
            flags |= 0x80;
        }
        if password.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        if version == Version::V5 {
            body.push(0); // no CONNECT properties
        }
        put_str(&mut body, client_id.as_bytes());
        if let Some(u) = username {
            put_str(&mut body, u.as_bytes());
        }
        if let Some(p) = password {
            put_str(&mut body, p.as_bytes());
        }
        let mut packet = vec![0x10];
        put_remaining_length(&mut packet, body.len());
        packet.extend_from_slice(&body);
        stream.write_all(&packet).await?;
        // An MQTT 5 CONNACK carries properties (the broker's limits), so its length varies.
        let (kind, connack) =
            tokio::time::timeout(Duration::from_secs(30), read_packet(&mut stream))
                .await
                .context("no CONNACK within 30 s")??;
        if kind != 0x20 || connack.len() < 2 || connack[1] != 0 {
            bail!("refused: packet {kind:02x}, CONNACK {connack:02x?}");
        }
        let receive_maximum = match version {
            Version::V5 => receive_maximum(&connack[2..]),
            Version::V311 => None,
        };
        Ok((stream, receive_maximum))
    }

    /// How one connection publishes.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Publisher {
        pub(super) version: Version,
        pub(super) qos: u8,
        /// Unacknowledged QoS 1 publishes at most.
        pub(super) inflight: usize,
        /// QoS 0 publishes per socket write.
        pub(super) burst: usize,
        /// With a value, every publish carries a sampled `traceparent` whose trace id starts
        /// with it and ends with the message's number (MQTT 5 only).
        pub(super) trace_prefix: Option<u64>,
    }

    impl Publisher {
        fn publish_packet(&self, out: &mut Vec<u8>, topic: &str, n: usize, packet_id: Option<u16>) {
            let payload = format!("{{\"v\":{n}}}");
            let mut properties = Vec::new();
            if let Some(prefix) = self.trace_prefix {
                // A trace and a span of the publisher's own per message; `01`: sampled.
                let traceparent = format!("00-{prefix:016x}{:016x}-{:016x}-01", n + 1, n + 1);
                properties.push(USER_PROPERTY);
                put_str(&mut properties, b"traceparent");
                put_str(&mut properties, traceparent.as_bytes());
            }
            let mut properties_length = Vec::new();
            if self.version == Version::V5 {
                put_remaining_length(&mut properties_length, properties.len());
            }
            out.push(if packet_id.is_some() { 0x32 } else { 0x30 });
            let length = 2
                + topic.len()
                + if packet_id.is_some() { 2 } else { 0 }
                + properties_length.len()
                + properties.len()
                + payload.len();
            put_remaining_length(out, length);
            put_str(out, topic.as_bytes());
            if let Some(id) = packet_id {
                out.extend_from_slice(&id.to_be_bytes());
            }
            out.extend_from_slice(&properties_length);
            out.extend_from_slice(&properties);
            out.extend_from_slice(payload.as_bytes());
        }

        /// Publishes `count` single-reading JSON messages; for QoS 1 returns each PUBACK
        /// latency in microseconds.
        pub(super) async fn publish_all(
            &self,
            mut stream: TcpStream,
            topic: &str,
            count: usize,
        ) -> anyhow::Result<Vec<u64>> {
            let mut out = Vec::with_capacity(self.burst * (topic.len() + 96));
            let mut latencies = Vec::new();
            if self.qos == 0 {
                let mut n = 0;
                while n < count {
                    out.clear();
                    for _ in 0..self.burst.min(count - n) {
                        self.publish_packet(&mut out, topic, n, None);
                        n += 1;
                    }
                    stream.write_all(&out).await?;
                }
            } else {
                let mut sent_at = vec![None::<Instant>; 65_536];
                let (mut sent, mut acked) = (0usize, 0usize);
                let mut next_id: u16 = 1;
                let mut input = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                while acked < count {
                    out.clear();
                    while sent < count && sent - acked < self.inflight {
                        let id = next_id;
                        next_id = next_id.checked_add(1).unwrap_or(1);
                        self.publish_packet(&mut out, topic, sent, Some(id));
                        sent_at[usize::from(id)] = Some(Instant::now());
                        sent += 1;
                    }
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                    }
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("the broker closed the connection after {acked} acknowledgements");
                    }
                    input.extend_from_slice(&chunk[..n]);
                    let mut at = 0;
                    while input.len() - at >= 2 {
                        let kind = input[at];
                        let Some((length, length_bytes)) = remaining_length(&input[at + 1..])?
                        else {
                            break;
                        };
                        let start = at + 1 + length_bytes;
                        if input.len() < start + length {
                            break;
                        }
                        let body = &input[start..start + length];
                        match kind {
                            // MQTT 5 adds a reason code (success when left out).
                            0x40 if length >= 2 => {
                                let id = u16::from_be_bytes([body[0], body[1]]);
                                if let Some(&reason) = body.get(2).filter(|&&r| r >= 0x80) {
                                    bail!("PUBACK of packet {id} with reason code {reason:#04x}");
                                }
                                if let Some(t) = sent_at[usize::from(id)].take() {
                                    latencies.push(
                                        u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
                                    );
                                    acked += 1;
                                }
                            }
                            0xE0 => bail!(
                                "the broker disconnected after {acked} acknowledgements (reason {:02x?})",
                                body.first()
                            ),
                            _ => {}
                        }
                        at = start + length;
                    }
                    input.drain(..at);
                }
            }
            // DISCONNECT: the broker has everything before it.
            stream.write_all(&[0xE0, 0x00]).await?;
            let _ = stream.shutdown().await;
            Ok(latencies)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_receive_maximum_is_found_among_other_properties() {
            // Properties: topic alias maximum 10, an assigned client id "ab", a user property
            // ("k", "v"), receive maximum 20.
            let properties = [
                18, 0x22, 0, 10, 0x12, 0, 2, b'a', b'b', 0x26, 0, 1, b'k', 0, 1, b'v', 0x21, 0, 20,
            ];
            assert_eq!(receive_maximum(&properties), Some(20));
            assert_eq!(receive_maximum(&[0]), None, "none set");
            assert_eq!(
                receive_maximum(&[3, 0x24, 1, 0x7F]),
                None,
                "an unknown property"
            );
            assert_eq!(receive_maximum(&[3, 0x21, 0]), None, "cut short");
        }

        #[test]
        fn remaining_lengths_of_several_bytes_are_read() {
            assert_eq!(remaining_length(&[2]).ok(), Some(Some((2, 1))));
            assert_eq!(remaining_length(&[0x80 | 8, 1]).ok(), Some(Some((136, 2))));
            assert_eq!(
                remaining_length(&[0x80]).ok(),
                Some(None),
                "more bytes needed"
            );
            assert!(remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        }
    }
}
