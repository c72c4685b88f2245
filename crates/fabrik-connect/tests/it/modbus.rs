//! Integration tests of the Modbus poller against real peers: pymodbus TCP servers
//! (`tests/peers/modbus_server.py`) started by each test on ephemeral ports and killed at its end.
//!
//! Python comes from `FABRIK_PYTHON` (default `python3`); without pymodbus the tests fail with
//! the install command, they never pass silently.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use fabrik_connect::modbus::{
    DataType, DeviceConfig, MapConfig, ModbusConfig, ModbusPoller, Order, PointConfig, Quality,
    Reading, Table, Value,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const INSTALL_HINT: &str = "run .ci/run (it creates a venv with pymodbus and sets \
FABRIK_PYTHON), or: python3 -m venv ~/.cache/fabrik-venv && \
~/.cache/fabrik-venv/bin/pip install pymodbus && \
export FABRIK_PYTHON=~/.cache/fabrik-venv/bin/python";

/// A pymodbus server process owned by the test; killed on drop.
struct Peer {
    child: Child,
    port: u16,
    /// The server's stderr, printed if the test fails.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Peer {
    fn start() -> Self {
        let python = std::env::var("FABRIK_PYTHON").unwrap_or_else(|_| "python3".into());
        let probe = Command::new(&python)
            .args(["-c", "import pymodbus"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `{python}` (FABRIK_PYTHON): {e}; {INSTALL_HINT}")
            });
        assert!(
            probe.status.success(),
            "`{python}` has no pymodbus ({}); install it: {INSTALL_HINT}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus_server.py");
        let mut child = Command::new(&python)
            .args([script, "--port", "0"])
            .stdin(Stdio::piped()) // the server exits when this closes
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start modbus_server.py");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "modbus_server.py printed no PORT line within 20 s; stderr:\n{}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                )
            });
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from modbus_server.py: {line:?}"));
        Self {
            child,
            port,
            stderr,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
            eprintln!(
                "--- modbus_server.py (port {}) stderr ---\n{text}",
                self.port
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pt(name: &str, table: Table, address: u16, t: DataType) -> PointConfig {
    PointConfig {
        name: name.into(),
        table,
        address,
        data_type: t,
        length: None,
        byte_order: None,
        word_order: None,
        scale: None,
        offset: None,
        unit: None,
        writable: false,
        min: None,
        max: None,
    }
}

fn ordered(mut p: PointConfig, byte: Order, word: Order) -> PointConfig {
    p.byte_order = Some(byte);
    if matches!(
        p.data_type,
        DataType::U32 | DataType::I32 | DataType::F32 | DataType::F64
    ) {
        p.word_order = Some(word);
    }
    p
}

fn device(id: &str, address: String, interval_ms: u64, points: Vec<PointConfig>) -> DeviceConfig {
    DeviceConfig {
        id: id.into(),
        measurement: "modbus".into(),
        address,
        unit_id: 1,
        timeout_ms: 300,
        reconnect_min_ms: 100,
        reconnect_max_ms: 800,
        maps: vec![MapConfig {
            poll_interval_ms: interval_ms,
            max_gap: 8,
            points,
        }],
    }
}

/// Collects readings until `deadline` or until `done` says enough.
async fn collect(
    rx: &mut mpsc::Receiver<Reading>,
    within: Duration,
    mut done: impl FnMut(&[Reading]) -> bool,
) -> Vec<Reading> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while !done(&out) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => out.push(r),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

fn first_good<'a>(readings: &'a [Reading], signal: &str) -> &'a Reading {
    readings
        .iter()
        .find(|r| &*r.signal == signal && r.quality == Quality::Good)
        .unwrap_or_else(|| {
            let seen: Vec<_> = readings.iter().filter(|r| &*r.signal == signal).collect();
            panic!("no Good reading of `{signal}`; seen: {seen:#?}")
        })
}

async fn stop(poller: ModbusPoller, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), poller.stopped())
        .await
        .expect("every device task stops within 2 s of shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_against_pymodbus() {
    use DataType::*;
    use Order::{Big as B, Little as L};
    use Table::*;
    let peer = Peer::start();

    let mut str_be = pt("str_be", Holding, 32, String);
    str_be.length = Some(4);
    let mut str_le = ordered(pt("str_le", Holding, 36, String), L, B);
    str_le.length = Some(2);
    let mut scaled = pt("scaled", Holding, 38, U16);
    scaled.scale = Some(0.1);
    scaled.offset = Some(-20.0);
    scaled.unit = Some("degC".into());
    let registers = vec![
        pt("u16_be", Holding, 0, U16),
        pt("i16_be", Holding, 1, I16),
        ordered(pt("u16_le", Holding, 2, U16), L, B),
        ordered(pt("i16_le", Holding, 3, I16), L, B),
        pt("u32_bb", Holding, 4, U32),
        ordered(pt("u32_bl", Holding, 6, U32), B, L),
        pt("i32_bb", Holding, 8, I32),
        ordered(pt("i32_ll", Holding, 10, I32), L, L),
        pt("f32_bb", Holding, 12, F32),
        ordered(pt("f32_bl", Holding, 14, F32), B, L),
        ordered(pt("f32_lb", Holding, 16, F32), L, B),
        ordered(pt("f32_ll", Holding, 18, F32), L, L),
        pt("f64_bb", Holding, 20, F64),
        ordered(pt("f64_bl", Holding, 24, F64), B, L),
        ordered(pt("f64_ll", Holding, 28, F64), L, L),
        str_be,
        str_le,
        scaled,
        pt("zero_after_gap", Holding, 40, I32),
        pt("in_u16", Input, 0, U16),
        ordered(pt("in_f64_ll", Input, 28, F64), L, L),
        pt("in_bool", Input, 38, Bool),
    ];
    let bits = vec![
        pt("c0", Coil, 0, Bool),
        pt("c1", Coil, 1, Bool),
        pt("c3", Coil, 3, Bool),
        pt("c9", Coil, 9, Bool),
        pt("d0", Discrete, 0, Bool),
        pt("d1", Discrete, 1, Bool),
        pt("d15", Discrete, 15, Bool),
    ];
    let bit_names: Vec<std::string::String> = bits.iter().map(|p| p.name.clone()).collect();
    let mut dev = device("plc-1", peer.address(), 100, registers);
    dev.maps.push(MapConfig {
        poll_interval_ms: 150,
        max_gap: 8,
        points: bits,
    });
    let names: Vec<std::string::String> = dev
        .maps
        .iter()
        .flat_map(|m| m.points.iter().map(|p| p.name.clone()))
        .collect();
    let config = ModbusConfig { devices: vec![dev] };

    let (tx, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let before_ns = now_ns();
    let poller = ModbusPoller::start(&config, tx, shutdown.clone()).expect("valid config");
    let readings = collect(&mut rx, Duration::from_secs(10), |rs| {
        names.iter().all(|n| {
            rs.iter()
                .any(|r| &*r.signal == n.as_str() && r.quality == Quality::Good)
        })
    })
    .await;
    stop(poller, shutdown).await;

    let bad: Vec<_> = readings
        .iter()
        .filter(|r| r.quality != Quality::Good)
        .collect();
    assert!(bad.is_empty(), "unexpected Bad readings: {bad:#?}");
    let expect: Vec<(&str, Value)> = vec![
        ("u16_be", Value::I64(51234)),
        ("i16_be", Value::I64(-1234)),
        ("u16_le", Value::I64(0x1234)),
        ("i16_le", Value::I64(-2)),
        ("u32_bb", Value::I64(3_000_000_000)),
        ("u32_bl", Value::I64(3_000_000_000)),
        ("i32_bb", Value::I64(-123_456_789)),
        ("i32_ll", Value::I64(-123_456_789)),
        ("f32_bb", Value::F64(3.5)),
        ("f32_bl", Value::F64(-1.25)),
        ("f32_lb", Value::F64(1234.5)),
        ("f32_ll", Value::F64(0.15625)),
        ("f64_bb", Value::F64(-std::f64::consts::E)),
        ("f64_bl", Value::F64(1e100)),
        ("f64_ll", Value::F64(6.02214076e23)),
        ("str_be", Value::Str("FABRIK-7".into())),
        ("str_le", Value::Str("pump".into())),
        ("zero_after_gap", Value::I64(0)),
        ("in_u16", Value::I64(51234)),
        ("in_f64_ll", Value::F64(6.02214076e23)),
        ("in_bool", Value::Bool(true)),
        ("c0", Value::Bool(true)),
        ("c1", Value::Bool(false)),
        ("c3", Value::Bool(true)),
        ("c9", Value::Bool(true)),
        ("d0", Value::Bool(false)),
        ("d1", Value::Bool(true)),
        ("d15", Value::Bool(true)),
    ];
    for (signal, value) in expect {
        let r = first_good(&readings, signal);
        assert_eq!(r.value.as_ref(), Some(&value), "{signal}");
        assert_eq!(&*r.device_id, "plc-1");
        assert_eq!(r.reason, None);
        assert!(
            r.timestamp_ns >= before_ns && r.timestamp_ns <= now_ns(),
            "{signal}"
        );
    }
    let scaled = first_good(&readings, "scaled");
    match scaled.value {
        Some(Value::F64(v)) => assert!((v - 80.0).abs() < 1e-9, "scaled = {v}"),
        ref other => panic!("scaled = {other:?}"),
    }
    assert_eq!(scaled.unit.as_deref(), Some("degC"));
    // The two maps run on their own intervals: both produced readings repeatedly.
    assert!(
        bit_names
            .iter()
            .all(|n| readings.iter().any(|r| &*r.signal == n.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_response_is_a_bad_reading_with_the_code() {
    let peer = Peer::start();
    let config = ModbusConfig {
        devices: vec![device(
            "plc-2",
            peer.address(),
            100,
            vec![
                pt("ok", Table::Holding, 0, DataType::U16),
                pt("missing", Table::Holding, 1000, DataType::U16),
                pt("missing_coil", Table::Coil, 500, DataType::Bool),
            ],
        )],
    };
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let poller = ModbusPoller::start(&config, tx, shutdown.clone()).expect("valid config");
    // Three polls' worth: the exception must not drop the connection or the good point.
    let readings = collect(&mut rx, Duration::from_secs(10), |rs| rs.len() >= 9).await;
    stop(poller, shutdown).await;

    assert!(readings.len() >= 9, "{readings:#?}");
    for r in &readings {
        match &*r.signal {
            "ok" => {
                assert_eq!(r.quality, Quality::Good, "{r:#?}");
                assert_eq!(r.value, Some(Value::I64(51234)));
            }
            "missing" | "missing_coil" => {
                assert_eq!(r.quality, Quality::Bad, "{r:#?}");
                assert_eq!(r.value, None);
                let reason = r.reason.as_deref().unwrap_or_default();
                assert!(
                    reason.contains("Modbus exception 0x02 (illegal data address)")
                        && reason.contains("device `plc-2`"),
                    "{reason}"
                );
            }
            other => panic!("unexpected signal {other}"),
        }
    }
    println!(
        "exception reason: {}",
        readings
            .iter()
            .find_map(|r| r.reason.clone())
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_device_does_not_delay_the_healthy_one_and_recovers() {
    const INTERVAL_MS: i64 = 100;
    let healthy = Peer::start();
    let dying = Peer::start();
    let points = || {
        vec![
            pt("u16", Table::Holding, 0, DataType::U16),
            pt("f32", Table::Holding, 12, DataType::F32),
        ]
    };
    let config = ModbusConfig {
        devices: vec![
            device("healthy", healthy.address(), INTERVAL_MS as u64, points()),
            device("dying", dying.address(), INTERVAL_MS as u64, points()),
        ],
    };
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let poller = ModbusPoller::start(&config, tx, shutdown.clone()).expect("valid config");

    let mut readings = collect(&mut rx, Duration::from_millis(1500), |_| false).await;
    let stopped_at = now_ns();
    dying.signal("-STOP");
    readings.extend(collect(&mut rx, Duration::from_millis(2500), |_| false).await);
    let resumed_at = now_ns();
    dying.signal("-CONT");
    readings.extend(collect(&mut rx, Duration::from_millis(2500), |_| false).await);
    stop(poller, shutdown).await;
    // All senders are gone once every task stopped: the channel closes.
    assert!(rx.recv().await.is_none(), "channel closes after shutdown");

    // The healthy device: always Good, and its polls keep the 100 ms grid.
    let mut times: Vec<i64> = readings
        .iter()
        .filter(|r| &*r.device_id == "healthy")
        .inspect(|r| assert_eq!(r.quality, Quality::Good, "{r:#?}"))
        .map(|r| r.timestamp_ns)
        .collect();
    times.dedup();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let max_gap_ms = gaps.iter().copied().max().unwrap_or(0) as f64 / 1e6;
    let outage_gaps: Vec<i64> = times
        .windows(2)
        .filter(|w| w[0] >= stopped_at && w[1] <= resumed_at)
        .map(|w| w[1] - w[0])
        .collect();
    let outage_max_ms = outage_gaps.iter().copied().max().unwrap_or(0) as f64 / 1e6;
    let mean_ms = gaps.iter().sum::<i64>() as f64 / gaps.len().max(1) as f64 / 1e6;
    println!(
        "healthy: {} polls in {:.2} s, mean gap {mean_ms:.1} ms, max gap {max_gap_ms:.1} ms \
         (during the outage: {} polls, max gap {outage_max_ms:.1} ms)",
        times.len(),
        (times.last().unwrap_or(&0) - times.first().unwrap_or(&0)) as f64 / 1e9,
        outage_gaps.len() + 1,
    );
    assert!(
        outage_gaps.len() >= 20,
        "healthy device polled during the outage"
    );
    assert!(
        max_gap_ms < 2.0 * INTERVAL_MS as f64,
        "healthy device kept its schedule: max gap {max_gap_ms} ms, gaps {gaps:?}"
    );

    // The dying device: Good, then Bad (timeouts, then waiting to reconnect), then Good again.
    let dying: Vec<&Reading> = readings
        .iter()
        .filter(|r| &*r.device_id == "dying")
        .collect();
    assert!(
        dying
            .iter()
            .any(|r| r.timestamp_ns < stopped_at && r.quality == Quality::Good),
        "dying device was Good before SIGSTOP"
    );
    let bad: Vec<&&Reading> = dying
        .iter()
        .filter(|r| r.timestamp_ns >= stopped_at && r.timestamp_ns < resumed_at)
        .filter(|r| r.quality == Quality::Bad)
        .collect();
    assert!(!bad.is_empty(), "dying device reported Bad while stopped");
    assert!(
        bad.iter().any(|r| r
            .reason
            .as_deref()
            .is_some_and(|s| s.contains("timeout after 300 ms"))),
        "a timeout reason: {bad:#?}"
    );
    assert!(
        bad.iter().all(|r| r.value.is_none()
            && r.reason
                .as_deref()
                .is_some_and(|s| s.contains("device `dying`"))),
        "{bad:#?}"
    );
    let recovered = dying
        .iter()
        .find(|r| r.timestamp_ns > resumed_at && r.quality == Quality::Good)
        .expect("dying device recovered after SIGCONT");
    println!(
        "dying: {} Bad readings while stopped (first: {:?}); Good again {:.0} ms after SIGCONT",
        bad.len(),
        bad[0].reason,
        (recovered.timestamp_ns - resumed_at) as f64 / 1e6
    );
    let last = dying.last().expect("readings");
    assert_eq!(last.quality, Quality::Good, "ends Good: {last:#?}");

    // MissedTickBehavior::Skip: after the outage the dying device is back on the grid it
    // started on (t0 + k × 100 ms), not shifted by the timeouts it sat through.
    let t0 = dying[0].timestamp_ns;
    let period = INTERVAL_MS * 1_000_000;
    let settled = recovered.timestamp_ns + 2 * period;
    let phases_ms: Vec<f64> = dying
        .iter()
        .filter(|r| r.timestamp_ns > settled)
        .map(|r| {
            let phase = (r.timestamp_ns - t0).rem_euclid(period);
            phase.min(period - phase) as f64 / 1e6
        })
        .collect();
    println!(
        "dying: off-grid by at most {:.1} ms after recovery",
        phases_ms.iter().copied().fold(0.0, f64::max)
    );
    assert!(!phases_ms.is_empty());
    assert!(
        phases_ms.iter().all(|&p| p < 20.0),
        "back on the start grid after recovery: {phases_ms:?}"
    );
}

#[tokio::test]
async fn unreachable_device_backs_off_exponentially_and_stops_on_shutdown() {
    // A port that nobody listens on, held for the whole test.
    let (_reservation, port) = crate::ports::reserved_port();
    let config = ModbusConfig {
        devices: vec![device(
            "ghost",
            format!("127.0.0.1:{port}"),
            50,
            vec![pt("x", Table::Input, 0, DataType::U16)],
        )],
    };
    let (tx, mut rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let poller = ModbusPoller::start(&config, tx, shutdown.clone()).expect("valid config");
    let is_attempt = |r: &Reading| {
        r.reason
            .as_deref()
            .is_some_and(|s| s.starts_with("device `ghost`: cannot connect"))
    };
    // Six attempts take 100 + 200 + 400 + 800 + 800 ms plus ticks; the deadline only guards
    // against a hang, it is not the measure.
    let readings = collect(&mut rx, Duration::from_secs(30), |seen| {
        seen.iter().filter(|r| is_attempt(r)).count() >= 6
    })
    .await;
    assert!(
        readings
            .iter()
            .all(|r| r.quality == Quality::Bad && r.value.is_none())
    );
    let reasons: Vec<&str> = readings
        .iter()
        .filter_map(|r| r.reason.as_deref())
        .collect();
    assert!(
        reasons[0].contains("device `ghost`: cannot connect to 127.0.0.1"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(
            |r| r.starts_with("device `ghost`: not connected, next attempt in")
                && r.contains("(last error: cannot connect to 127.0.0.1")
        ),
        "{reasons:?}"
    );
    // Connect attempts: 100 ms after the first failure, then doubling up to the 800 ms cap.
    // An attempt happens on the first 50 ms tick after the delay, or later on a loaded
    // machine, so the gaps are only bounded below: that is what the backoff guarantees, and
    // 100, 200, 400, 800, 800 fails for a backoff that does not double. The cap is checked on
    // the announced delays, which never exceed it whatever the load.
    let attempts: Vec<i64> = readings
        .iter()
        .filter(|r| is_attempt(r))
        .map(|r| r.timestamp_ns)
        .collect();
    let gaps_ms: Vec<f64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    println!(
        "ghost: connect attempts {} apart (ms): {gaps_ms:.0?}",
        attempts.len()
    );
    let expected = [100.0, 200.0, 400.0, 800.0, 800.0];
    assert!(gaps_ms.len() >= expected.len(), "{gaps_ms:?}");
    for (gap, backoff) in gaps_ms.iter().zip(expected) {
        assert!(
            *gap >= backoff - 5.0,
            "gap {gap} ms for backoff {backoff} ms: {gaps_ms:?}"
        );
    }
    let announced_ms: Vec<u64> = reasons
        .iter()
        .filter_map(|r| r.split("next attempt in ").nth(1))
        .filter_map(|rest| rest.split(" ms").next()?.parse().ok())
        .collect();
    assert!(!announced_ms.is_empty(), "{reasons:?}");
    assert!(announced_ms.iter().all(|&ms| ms <= 800), "{announced_ms:?}");
    // Shutdown while the task waits in `send` on a full channel still ends it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(poller, shutdown).await;
}

#[test]
fn invalid_config_is_refused_before_anything_starts() {
    let config = ModbusConfig {
        devices: vec![device(
            "bad",
            "127.0.0.1".into(),
            0,
            vec![pt("s", Table::Holding, 0, DataType::String)],
        )],
    };
    let (tx, _rx) = mpsc::channel(1);
    // No runtime here: `start` must fail on validation before it would spawn.
    let err = ModbusPoller::start(&config, tx, CancellationToken::new()).expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("device `bad`: `address`"), "{text}");
    assert!(
        text.contains("device `bad`: point `s`: a string needs `length`"),
        "{text}"
    );
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A point declared writable, with the range operators may set.
fn writable(mut p: PointConfig, range: Option<(f64, f64)>) -> PointConfig {
    p.writable = true;
    if let Some((min, max)) = range {
        (p.min, p.max) = (Some(min), Some(max));
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_pymodbus_are_read_back_and_refused_where_they_must_be() {
    use fabrik_connect::modbus::{ModbusError, SetValue};
    let peer = Peer::start();
    let mut speed = writable(
        pt("speed", Table::Holding, 42, DataType::U16),
        Some((0.0, 200.0)),
    );
    speed.scale = Some(0.1);
    let flow = writable(
        ordered(
            pt("flow", Table::Holding, 43, DataType::F32),
            Order::Big,
            Order::Little,
        ),
        Some((-10.0, 10.0)),
    );
    let clamped = writable(
        pt("clamped", Table::Holding, 45, DataType::U16),
        Some((0.0, 1000.0)),
    );
    let locked = writable(
        pt("locked", Table::Holding, 46, DataType::U16),
        Some((0.0, 10.0)),
    );
    let pump = writable(pt("pump", Table::Coil, 5, DataType::Bool), None);
    // The peer's "pump" string, two registers, bytes little-endian: text is written into it.
    let mut label = writable(
        ordered(
            pt("label", Table::Holding, 36, DataType::String),
            Order::Little,
            Order::Big,
        ),
        None,
    );
    label.length = Some(2);
    let config = ModbusConfig {
        devices: vec![device(
            "plc-w",
            peer.address(),
            100,
            vec![
                speed,
                flow,
                clamped,
                locked,
                pump,
                label,
                pt("fixed", Table::Holding, 0, DataType::U16),
            ],
        )],
    };
    let (tx, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let poller = ModbusPoller::start(&config, tx, shutdown.clone()).expect("valid config");
    let writer = poller.writer();
    // Keep the readings flowing: the task must not wait on a full channel.
    let drain = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(r) = rx.recv().await {
            seen.push(r);
        }
        seen
    });

    // A scaled register: 123.4 is 1234 on the wire, and read back as 123.4.
    let written = writer
        .write("plc-w", "speed", SetValue::Number(123.4))
        .await
        .expect("speed written");
    assert_eq!(written.read_back, Ok(Value::F64(123.4)));
    assert!(written.confirmed);
    // A float over two registers, words swapped.
    let written = writer
        .write("plc-w", "flow", SetValue::Number(-2.5))
        .await
        .expect("flow written");
    assert_eq!(written.read_back, Ok(Value::F64(-2.5)));
    assert!(written.confirmed);
    // A coil.
    let written = writer
        .write("plc-w", "pump", SetValue::Bool(true))
        .await
        .expect("pump switched");
    assert_eq!(written.read_back, Ok(Value::Bool(true)));
    assert!(written.confirmed);
    // Text in a string point (decision 0095): its registers, NUL-padded, read back as written.
    for text in ["Lime", "ok"] {
        let written = writer
            .write("plc-w", "label", SetValue::Text(text.into()))
            .await
            .expect("label written");
        assert_eq!(written.read_back, Ok(Value::Str(text.into())));
        assert!(written.confirmed);
    }
    // The device keeps at most 500: the write is answered, but not confirmed.
    let written = writer
        .write("plc-w", "clamped", SetValue::Number(900.0))
        .await
        .expect("clamped answered");
    assert_eq!(written.read_back, Ok(Value::I64(500)));
    assert!(!written.confirmed, "a clamped value is not the one written");
    // A register the device refuses to write.
    match writer.write("plc-w", "locked", SetValue::Number(3.0)).await {
        Err(ModbusError::Exception {
            code: 0x02,
            request,
            ..
        }) => {
            assert_eq!(request, "write holding 46..47");
        }
        other => panic!("expected exception 0x02, got {other:?}"),
    }
    // Refused before anything is sent.
    for (signal, value, want) in [
        (
            "speed",
            SetValue::Number(200.5),
            "outside the point's range 0..=200",
        ),
        ("speed", SetValue::Number(12.34), "cannot be stored exactly"),
        ("pump", SetValue::Number(1.0), "give true or false"),
        (
            "label",
            SetValue::Text("Lemon".into()),
            "the text is 5 bytes in UTF-8; the point's 2 registers hold 4",
        ),
        ("speed", SetValue::Text("12".into()), "give a number"),
    ] {
        let e = writer
            .write("plc-w", signal, value.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(e, ModbusError::InvalidValue { .. }) && e.to_string().contains(want),
            "{signal} = {value}: {e}"
        );
    }
    let e = writer
        .write("plc-w", "fixed", SetValue::Number(1.0))
        .await
        .unwrap_err();
    assert!(matches!(e, ModbusError::NotWritable { .. }), "{e}");
    let e = writer
        .write("plc-x", "speed", SetValue::Number(1.0))
        .await
        .unwrap_err();
    assert!(matches!(e, ModbusError::UnknownDevice(_)), "{e}");

    // The polls saw the written values: the writes changed the device, not just an echo.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop(poller, shutdown).await;
    let seen = drain.await.expect("drain");
    let last = |signal: &str| {
        seen.iter()
            .rev()
            .find(|r| &*r.signal == signal && r.quality == Quality::Good)
            .and_then(|r| r.value.clone())
    };
    assert_eq!(last("speed"), Some(Value::F64(123.4)));
    assert_eq!(last("flow"), Some(Value::F64(-2.5)));
    assert_eq!(last("pump"), Some(Value::Bool(true)));
    assert_eq!(
        last("locked"),
        Some(Value::I64(7)),
        "the refused write changed nothing"
    );
    // The writer outlives its tasks, and says so.
    let e = writer
        .write("plc-w", "speed", SetValue::Number(1.0))
        .await
        .unwrap_err();
    assert!(matches!(e, ModbusError::Stopped(_)), "{e}");
}

/// A device whose poller soon waits to hand on a poll (its readings channel holds one and
/// nobody empties it, as behind a store that cannot keep up), with one writable point,
/// `speed`, holding 0.
struct Backlogged {
    _peer: Peer,
    poller: ModbusPoller,
    rx: mpsc::Receiver<Reading>,
    shutdown: CancellationToken,
}

impl Backlogged {
    async fn start(id: &str) -> Self {
        let peer = Peer::start();
        let speed = writable(
            pt("speed", Table::Holding, 42, DataType::U16),
            Some((0.0, 1000.0)),
        );
        let config = ModbusConfig {
            devices: vec![device(id, peer.address(), 50, vec![speed])],
        };
        let (tx, rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let poller = ModbusPoller::start(&config, tx, shutdown.clone()).expect("valid config");
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self {
            _peer: peer,
            poller,
            rx,
            shutdown,
        }
    }

    /// Lets the poller go on for 2 s, stops it, and checks that every poll read 0: no write
    /// reached the device.
    async fn assert_never_written(mut self) {
        let readings = collect(&mut self.rx, Duration::from_secs(2), |_| false).await;
        stop(self.poller, self.shutdown).await;
        let values: Vec<_> = readings
            .iter()
            .filter(|r| r.quality == Quality::Good)
            .map(|r| r.value.clone())
            .collect();
        assert!(values.len() >= 5, "{readings:#?}");
        assert!(
            values.iter().all(|v| *v == Some(Value::I64(0))),
            "a write reached the device: {values:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_waits_past_its_deadline_is_given_up_and_never_made() {
    use fabrik_connect::modbus::{ModbusError, SetValue};
    let device = Backlogged::start("plc-e").await;
    let asked = Instant::now();
    let e = device
        .poller
        .writer()
        .write("plc-e", "speed", SetValue::Number(77.0))
        .await
        .unwrap_err();
    assert!(matches!(e, ModbusError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("nothing was written"), "{e}");
    assert!(
        asked.elapsed() >= Duration::from_secs(5),
        "the deadline is at least 5 s"
    );
    // The task gets going again and finds the write given up.
    device.assert_never_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_went_away_before_it_started_is_never_made() {
    use fabrik_connect::modbus::SetValue;
    let device = Backlogged::start("plc-g").await;
    let writer = device.poller.writer();
    let caller =
        tokio::spawn(async move { writer.write("plc-g", "speed", SetValue::Number(55.0)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    caller.abort();
    assert!(caller.await.is_err_and(|e| e.is_cancelled()));
    // Well before the write's 5 s deadline the task gets going again and dequeues it: only
    // the caller's giving up keeps it from being made.
    device.assert_never_written().await;
}
