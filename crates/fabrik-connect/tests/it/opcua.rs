//! The connector end to end: values and quality, Bad/Uncertain status, a refused node id,
//! recovery after a server restart, Basic256Sha256 with a trusted and an untrusted server
//! certificate, browse, and shutdown of every task.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fabrik_connect::opcua::{
    BrowseSecurity, OpcUaClient, OpcUaConfig, Quality, Reading, Value, browse,
    trust_server_certificate,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::opcua_peer::{Peer, PeerOptions};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fabrik_connect=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

struct Running {
    client: OpcUaClient,
    rx: mpsc::Receiver<Reading>,
    shutdown: CancellationToken,
}

impl Running {
    fn start(toml_text: &str) -> Running {
        let config: OpcUaConfig = toml::from_str(toml_text).unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let client = OpcUaClient::start(&config, tx, shutdown.clone()).unwrap();
        Running {
            client,
            rx,
            shutdown,
        }
    }

    /// The first reading matching `pred` within `timeout`.
    async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Reading) -> bool,
    ) -> Option<Reading> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) if pred(&r) => return Some(r),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Readings until `done` holds for everything collected, or `timeout`.
    async fn collect(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Reading]) -> bool,
    ) -> Vec<Reading> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut all = Vec::new();
        while !done(&all) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => all.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        all
    }

    /// Cancels and checks that every task ends within 5 s.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.client.stopped())
            .await
            .expect("every OPC UA task ends within 5 s of shutdown");
    }
}

fn server_toml(
    id: &str,
    endpoint: &str,
    pki: &Path,
    extra: &str,
    items: &[(&str, &str)],
) -> String {
    let mut s = format!(
        r#"
[[servers]]
id = "{id}"
endpoint = "{endpoint}"
pki_dir = "{pki}"
device = "{id}-dev"
publishing_interval_ms = 100
reconnect_min_ms = 200
reconnect_max_ms = 1000
request_timeout_ms = 3000
keep_alive_ms = 1000
{extra}
"#,
        pki = pki.display()
    );
    for (node, signal) in items {
        s.push_str(&format!(
            "[[servers.items]]\nnode_id = \"{node}\"\nsignal = \"{signal}\"\nsampling_interval_ms = 100\n"
        ));
    }
    s
}

const PUMP_ITEMS: &[(&str, &str)] = &[
    ("ns=2;s=Pump1.Pressure", "pressure"),
    ("ns=2;s=Pump1.Count", "count"),
    ("ns=2;s=Pump1.Running", "running"),
    ("ns=2;s=Pump1.Mode", "mode"),
];

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// At least two Good readings of each signal of `device`.
fn each_signal_twice(readings: &[Reading], device: &str, signals: &[&str]) -> bool {
    signals.iter().all(|s| {
        readings
            .iter()
            .filter(|r| &*r.device_id == device && &*r.signal == *s && r.quality == Quality::Good)
            .count()
            >= 2
    })
}

async fn plain_peer(dir: &Path, bad: bool) -> Peer {
    Peer::start(PeerOptions {
        port: 0,
        security: "none",
        cert_dir: dir.join("server"),
        bad,
        user: None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_arrive_with_good_quality_and_typed_values() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), false).await;
    let mut run = Running::start(&server_toml(
        "plc",
        &peer.endpoint(),
        &dir.path().join("pki"),
        "",
        PUMP_ITEMS,
    ));
    let signals = ["pressure", "count", "running", "mode"];
    let readings = run
        .collect(Duration::from_secs(20), |r| {
            each_signal_twice(r, "plc-dev", &signals)
        })
        .await;
    assert!(
        each_signal_twice(&readings, "plc-dev", &signals),
        "not every signal arrived twice: {readings:#?}"
    );
    let now = now_ns();
    for r in readings.iter().filter(|r| r.quality == Quality::Good) {
        assert_eq!(r.status, "Good");
        assert!(
            (r.timestamp_ns - now).abs() < 60_000_000_000,
            "timestamp far from now: {r:?}"
        );
        let typed = match (&*r.signal, &r.value) {
            ("pressure", Some(Value::F64(v))) => v.is_finite(),
            ("count", Some(Value::I64(v))) => *v >= 0,
            ("running", Some(Value::Bool(_))) => true,
            ("mode", Some(Value::Str(s))) => s.starts_with("mode-"),
            _ => false,
        };
        assert!(typed, "wrong value type: {r:?}");
    }
    // The Int32 counter moves: the server changes it every 100 ms.
    let counts: Vec<i64> = readings
        .iter()
        .filter_map(|r| match (&*r.signal, &r.value) {
            ("count", Some(Value::I64(v))) => Some(*v),
            _ => None,
        })
        .collect();
    assert!(counts.windows(2).any(|w| w[1] > w[0]), "{counts:?}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_uncertain_status_map_to_quality() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), true).await;
    let mut run = Running::start(&server_toml(
        "plc",
        &peer.endpoint(),
        &dir.path().join("pki"),
        "",
        &[
            ("ns=2;s=Pump1.Broken", "broken"),
            ("ns=2;s=Pump1.Stale", "stale"),
        ],
    ));
    let broken = run
        .wait_for(Duration::from_secs(20), |r| &*r.signal == "broken")
        .await
        .expect("a reading of the Bad variable");
    assert_eq!(broken.quality, Quality::Bad, "{broken:?}");
    assert_eq!(broken.status, "BadSensorFailure");
    let stale = run
        .wait_for(Duration::from_secs(10), |r| &*r.signal == "stale")
        .await
        .expect("a reading of the Uncertain variable");
    assert_eq!(stale.quality, Quality::Uncertain, "{stale:?}");
    assert_eq!(stale.status, "UncertainLastUsableValue");
    assert!(matches!(stale.value, Some(Value::F64(_))), "{stale:?}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_node_id_is_reported_bad_and_named() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), false).await;
    let mut run = Running::start(&server_toml(
        "plc",
        &peer.endpoint(),
        &dir.path().join("pki"),
        "",
        &[
            ("ns=2;s=Pump1.DoesNotExist", "ghost"),
            ("ns=2;s=Pump1.Count", "count"),
        ],
    ));
    let readings = run
        .collect(Duration::from_secs(20), |all| {
            all.iter().any(|r| &*r.signal == "ghost")
                && all
                    .iter()
                    .any(|r| &*r.signal == "count" && r.quality == Quality::Good)
        })
        .await;
    let ghost = readings
        .iter()
        .find(|r| &*r.signal == "ghost")
        .unwrap_or_else(|| panic!("no reading for the unknown node: {readings:#?}"));
    assert_eq!(ghost.quality, Quality::Bad);
    assert!(ghost.value.is_none());
    assert!(
        ghost.status.contains("ns=2;s=Pump1.DoesNotExist")
            && ghost.status.contains("BadNodeIdUnknown"),
        "{}",
        ghost.status
    );
    println!("unknown node reported as: {}", ghost.status);
    assert!(
        readings
            .iter()
            .any(|r| &*r.signal == "count" && r.quality == Quality::Good),
        "the good item must still deliver: {readings:#?}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_recovers_without_restarting_the_client() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), false).await;
    let mut run = Running::start(&server_toml(
        "plc",
        &peer.endpoint(),
        &dir.path().join("pki"),
        "",
        PUMP_ITEMS,
    ));
    run.wait_for(Duration::from_secs(20), |r| {
        &*r.signal == "count" && r.quality == Quality::Good
    })
    .await
    .expect("Good readings before the restart");

    // Two rounds: recovery must work again after a recovered outage.
    let mut peer = peer;
    for round in 1..=2 {
        let options = peer.kill().await;
        let killed_at = Instant::now();
        let lost = run
            .wait_for(Duration::from_secs(10), |r| r.quality == Quality::Bad)
            .await
            .expect("a Bad reading announcing the lost connection");
        println!(
            "round {round}: after kill: {} ({:?})",
            lost.status,
            killed_at.elapsed()
        );

        // Down for a while (longer than the backoff cap), then back on the same port.
        tokio::time::sleep(Duration::from_secs(2)).await;
        while run.rx.try_recv().is_ok() {}
        peer = Peer::start(options).await;
        let ready_at = Instant::now();
        let ready_ns = now_ns();
        let fresh = run
            .wait_for(Duration::from_secs(10), |r| {
                &*r.signal == "count" && r.quality == Quality::Good && r.timestamp_ns >= ready_ns
            })
            .await;
        let recovery = ready_at.elapsed();
        let fresh = fresh.unwrap_or_else(|| {
            panic!("round {round}: no fresh Good sample within 10 s of the restart")
        });
        println!(
            "round {round}: OPC UA recovery: first fresh sample {recovery:?} after the restarted server was listening ({:?} after the kill): {fresh:?}",
            killed_at.elapsed()
        );
        assert!(recovery < Duration::from_secs(10));
        // The restored subscription delivers all items, not just one.
        let signals = ["pressure", "count", "running", "mode"];
        let after = run
            .collect(Duration::from_secs(10), |r| {
                each_signal_twice(r, "plc-dev", &signals)
            })
            .await;
        assert!(each_signal_twice(&after, "plc-dev", &signals), "{after:#?}");
    }
    run.stop().await;
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_sign_and_encrypt_with_trusted_server_cert() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(PeerOptions {
        port: 0,
        security: "sign,encrypt",
        cert_dir: dir.path().join("server"),
        bad: false,
        user: None,
    })
    .await;
    // The operator drops the server certificate into trusted/ under any name.
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(pki.join("trusted")).unwrap();
    std::fs::copy(peer.cert_path(), pki.join("trusted/plant-server.der")).unwrap();
    // Two servers (two tasks) on the same peer: SignAndEncrypt and Sign.
    let mut toml_text = server_toml(
        "enc",
        &peer.endpoint(),
        &pki,
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\ntrust_server = \"trust_list\"",
        PUMP_ITEMS,
    );
    toml_text.push_str(&server_toml(
        "sign",
        &peer.endpoint(),
        &pki,
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"Sign\"",
        PUMP_ITEMS,
    ));
    let mut run = Running::start(&toml_text);
    let signals = ["pressure", "count", "running", "mode"];
    let readings = run
        .collect(Duration::from_secs(40), |r| {
            each_signal_twice(r, "enc-dev", &signals) && each_signal_twice(r, "sign-dev", &signals)
        })
        .await;
    assert!(
        each_signal_twice(&readings, "enc-dev", &signals),
        "SignAndEncrypt delivered nothing: {readings:#?}"
    );
    assert!(
        each_signal_twice(&readings, "sign-dev", &signals),
        "Sign delivered nothing: {readings:#?}"
    );
    assert!(
        std::fs::read_dir(pki.join("rejected"))
            .unwrap()
            .next()
            .is_none(),
        "nothing was rejected"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_server_cert_is_refused_then_trusted_by_the_operator() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(PeerOptions {
        port: 0,
        security: "encrypt",
        cert_dir: dir.path().join("server"),
        bad: false,
        user: None,
    })
    .await;
    let pki = dir.path().join("pki");
    let toml_text = server_toml(
        "enc",
        &peer.endpoint(),
        &pki,
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"",
        &[("ns=2;s=Pump1.Count", "count")],
    );
    let mut run = Running::start(&toml_text);
    let readings = run.collect(Duration::from_secs(8), |_| false).await;
    assert!(
        readings.iter().all(|r| r.quality == Quality::Bad),
        "an untrusted server delivered data: {readings:#?}"
    );
    let refused = readings
        .first()
        .unwrap_or_else(|| panic!("no Bad reading reports the refusal"));
    println!("untrusted server reported as: {}", refused.status);
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "the refused certificate lands in rejected/"
    );

    // The operator trusts it; the running connector picks it up at its next retry.
    let trusted_at = Instant::now();
    trust_server_certificate(&pki, &peer.cert_path()).unwrap();
    let good = run
        .wait_for(Duration::from_secs(30), |r| r.quality == Quality::Good)
        .await;
    assert!(good.is_some(), "a trusted server must deliver");
    println!(
        "connected {:?} after the certificate was trusted",
        trusted_at.elapsed()
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_stores_the_server_cert() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(PeerOptions {
        port: 0,
        security: "encrypt",
        cert_dir: dir.path().join("server"),
        bad: false,
        user: None,
    })
    .await;
    let pki = dir.path().join("pki");
    let mut run = Running::start(&server_toml(
        "enc",
        &peer.endpoint(),
        &pki,
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\ntrust_server = \"trust_on_first_use\"",
        &[("ns=2;s=Pump1.Count", "count")],
    ));
    let good = run
        .wait_for(Duration::from_secs(30), |r| r.quality == Quality::Good)
        .await;
    assert!(good.is_some(), "trust on first use must connect");
    let trusted = std::fs::read_dir(pki.join("trusted")).unwrap().count();
    assert_eq!(trusted, 1, "the server certificate is now in trusted/");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_lists_the_pump_variables() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), false).await;
    let pki = dir.path().join("pki");
    let anonymous = BrowseSecurity::default();
    let objects = browse(
        &peer.endpoint(),
        "i=85",
        &pki,
        Duration::from_secs(5),
        &anonymous,
    )
    .await
    .unwrap();
    assert!(
        objects.iter().any(|n| n.node_id == "ns=2;s=Pump1"
            && n.browse_name == "2:Pump1"
            && n.node_class == "Object"),
        "{objects:#?}"
    );
    let vars = browse(
        &peer.endpoint(),
        "ns=2;s=Pump1",
        &pki,
        Duration::from_secs(5),
        &anonymous,
    )
    .await
    .unwrap();
    let by_name: HashMap<_, _> = vars
        .iter()
        .map(|n| {
            (
                n.browse_name.as_str(),
                (n.node_id.as_str(), n.node_class.as_str()),
            )
        })
        .collect();
    assert_eq!(
        by_name.get("2:Pressure"),
        Some(&("ns=2;s=Pump1.Pressure", "Variable")),
        "{vars:#?}"
    );
    assert!(by_name.contains_key("2:Mode"), "{vars:#?}");
    // Each variable's type, and what an analog item declares (decision 0094).
    let flow = vars
        .iter()
        .find(|n| n.browse_name == "2:Flow")
        .expect("Flow is browsed");
    let declared = flow.declared.as_ref().expect("a variable's declarations");
    assert_eq!(declared.data_type.as_deref(), Some("Double"));
    assert_eq!(declared.eu_range, Some(Ok((0.0, 80.0))));
    assert_eq!(declared.unit.as_deref(), Some("l/min"));
    let running = vars
        .iter()
        .find(|n| n.browse_name == "2:Running")
        .and_then(|n| n.declared.as_ref())
        .expect("Running's declarations");
    assert_eq!(running.data_type.as_deref(), Some("Boolean"));
    assert_eq!(running.eu_range, None);
    let pump = objects
        .iter()
        .find(|n| n.node_id == "ns=2;s=Pump1")
        .expect("Pump1");
    assert_eq!(pump.declared, None, "an object declares no range");
    let err = browse(
        "opc.tcp://127.0.0.1:1/none/",
        "i=85",
        &pki,
        Duration::from_secs(2),
        &anonymous,
    )
    .await
    .unwrap_err();
    println!("browse of a dead endpoint: {err}");
}

/// A TCP proxy whose open connections can be cut (a network blip: both ends stay up).
struct Proxy {
    port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = std::sync::Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            conns,
            accept,
        }
    }

    /// Drops every open connection (both sockets close).
    fn cut(&self) -> usize {
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in &conns {
            c.abort();
        }
        conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_blip_recovers_with_the_same_server() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), false).await;
    let proxy = Proxy::start(peer.port).await;
    let endpoint = format!("opc.tcp://127.0.0.1:{}/fabrik/", proxy.port);
    let mut run = Running::start(&server_toml(
        "plc",
        &endpoint,
        &dir.path().join("pki"),
        "",
        PUMP_ITEMS,
    ));
    run.wait_for(Duration::from_secs(20), |r| {
        &*r.signal == "count" && r.quality == Quality::Good
    })
    .await
    .expect("Good readings through the proxy");
    for round in 1..=2 {
        let cut = proxy.cut();
        let cut_at = Instant::now();
        let cut_ns = now_ns();
        assert!(cut > 0, "the session went through the proxy");
        let fresh = run
            .wait_for(Duration::from_secs(10), |r| {
                &*r.signal == "count" && r.quality == Quality::Good && r.timestamp_ns > cut_ns
            })
            .await;
        assert!(
            fresh.is_some(),
            "round {round}: no fresh sample within 10 s of the cut"
        );
        println!(
            "round {round}: network blip: fresh sample {:?} after the cut",
            cut_at.elapsed()
        );
        // Drain, then check all four signals flow again.
        let signals = ["pressure", "count", "running", "mode"];
        let after = run
            .collect(Duration::from_secs(10), |r| {
                each_signal_twice(r, "plc-dev", &signals)
            })
            .await;
        assert!(each_signal_twice(&after, "plc-dev", &signals), "{after:#?}");
    }
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_deadband_suppresses_small_changes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = plain_peer(dir.path(), false).await;
    // Pump1.Step moves +0.1 per 100 ms tick and +10 every 10th tick.
    let toml_text = format!(
        r#"
[[servers]]
id = "plc"
endpoint = "{}"
pki_dir = "{}"
device = "pump"
publishing_interval_ms = 100
[[servers.items]]
node_id = "ns=2;s=Pump1.Step"
signal = "step"
sampling_interval_ms = 50
deadband = 4.5
[[servers.items]]
node_id = "ns=2;s=Pump1.Step"
signal = "step_all"
sampling_interval_ms = 50
"#,
        peer.endpoint(),
        dir.path().join("pki").display()
    );
    let mut run = Running::start(&toml_text);
    let good = |r: &&Reading, signal: &str| r.quality == Quality::Good && &*r.signal == signal;
    let readings = run
        .collect(Duration::from_secs(20), |all| {
            all.iter().filter(|r| good(r, "step")).count() >= 4
        })
        .await;
    let values = |signal: &str| -> Vec<f64> {
        readings
            .iter()
            .filter(|r| good(r, signal))
            .filter_map(|r| match r.value {
                Some(Value::F64(v)) => Some(v),
                _ => None,
            })
            .collect()
    };
    let (filtered, all) = (values("step"), values("step_all"));
    assert!(filtered.len() >= 4, "{readings:#?}");
    // Without the filter the 0.1 steps arrive; with it only the jumps of 10.
    assert!(all.windows(2).any(|w| w[1] - w[0] < 1.0), "{all:?}");
    assert!(
        filtered.windows(2).all(|w| w[1] - w[0] > 4.5),
        "deadband not applied: {filtered:?}"
    );
    assert!(
        all.len() > 3 * filtered.len(),
        "{} vs {}",
        all.len(),
        filtered.len()
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_password_is_required_and_accepted() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(PeerOptions {
        port: 0,
        security: "encrypt",
        cert_dir: dir.path().join("server"),
        bad: false,
        user: Some("fabrik:s3cret"),
    })
    .await;
    let pki = dir.path().join("pki");
    trust_server_certificate(&pki, &peer.cert_path()).unwrap();
    let secure = "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"";
    let items = &[("ns=2;s=Pump1.Count", "count")];

    let mut run = Running::start(&server_toml(
        "user",
        &peer.endpoint(),
        &pki,
        &format!("{secure}\nusername = \"fabrik\"\npassword = \"s3cret\""),
        items,
    ));
    let good = run
        .wait_for(Duration::from_secs(30), |r| r.quality == Quality::Good)
        .await;
    assert!(good.is_some(), "the right password must log in");
    run.stop().await;

    let mut run = Running::start(&server_toml(
        "user",
        &peer.endpoint(),
        &pki,
        &format!("{secure}\nusername = \"fabrik\"\npassword = \"wrong\""),
        items,
    ));
    let readings = run.collect(Duration::from_secs(6), |_| false).await;
    assert!(
        !readings.is_empty() && readings.iter().all(|r| r.quality == Quality::Bad),
        "a wrong password must not deliver data: {readings:#?}"
    );
    println!("wrong password reported as: {}", readings[0].status);
    run.stop().await;

    // Commissioning a locked-down server: browse over SignAndEncrypt as the user.
    use fabrik_connect::opcua::config::{SecurityMode, SecurityPolicyName};
    let secured = BrowseSecurity {
        policy: SecurityPolicyName::Basic256Sha256,
        mode: SecurityMode::SignAndEncrypt,
        user: Some(("fabrik".into(), "s3cret".into())),
        ..BrowseSecurity::default()
    };
    let vars = browse(
        &peer.endpoint(),
        "ns=2;s=Pump1",
        &pki,
        Duration::from_secs(5),
        &secured,
    )
    .await
    .expect("browsed as the user over an encrypted channel");
    assert!(
        vars.iter()
            .any(|n| n.node_id == "ns=2;s=Pump1.Count" && n.node_class == "Variable"),
        "{vars:#?}"
    );
    let anonymous = BrowseSecurity {
        user: None,
        ..secured
    };
    let refused = browse(
        &peer.endpoint(),
        "ns=2;s=Pump1",
        &pki,
        Duration::from_secs(5),
        &anonymous,
    )
    .await;
    assert!(refused.is_err(), "anonymous is refused: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_start_is_reported_then_connected_when_it_comes_up() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Refused until the server below starts on it.
    let (reservation, port) = crate::ports::reserved_port();
    let endpoint = format!("opc.tcp://127.0.0.1:{port}/fabrik/");
    let mut run = Running::start(&server_toml(
        "late",
        &endpoint,
        &dir.path().join("pki"),
        "",
        PUMP_ITEMS,
    ));
    // One Bad reading per item, once, naming the endpoint.
    let bad = run
        .collect(Duration::from_secs(10), |r| r.len() >= PUMP_ITEMS.len())
        .await;
    assert_eq!(bad.len(), PUMP_ITEMS.len(), "{bad:#?}");
    assert!(
        bad.iter()
            .all(|r| r.quality == Quality::Bad && r.status.contains(&endpoint))
    );
    println!("server down at start reported as: {}", bad[0].status);
    let more = run.collect(Duration::from_secs(2), |_| false).await;
    assert!(more.is_empty(), "the outage is reported once: {more:#?}");

    drop(reservation);
    let peer = Peer::start(PeerOptions {
        port,
        security: "none",
        cert_dir: dir.path().join("server"),
        bad: false,
        user: None,
    })
    .await;
    let ready_at = Instant::now();
    let good = run
        .wait_for(Duration::from_secs(10), |r| r.quality == Quality::Good)
        .await;
    assert!(good.is_some(), "connected once the server came up");
    println!(
        "first Good sample {:?} after the late server was listening",
        ready_at.elapsed()
    );

    // Dropping the receiver also ends the task.
    let Running {
        client,
        rx,
        shutdown,
    } = run;
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), client.stopped())
        .await
        .expect("the task ends once the readings receiver is gone");
    assert!(!shutdown.is_cancelled());
    drop(peer);
}

/// A plain peer and a client whose `items` (node, signal, range keys) are writable, besides
/// `count`; returned once the session is up (writes go out on the session the subscription
/// uses).
async fn writing_to_the_peer(dir: &Path, items: &[(&str, &str, &str)]) -> (Peer, Running) {
    let peer = plain_peer(dir, false).await;
    let mut toml_text = server_toml(
        "plc",
        &peer.endpoint(),
        &dir.join("pki"),
        "",
        &[("ns=2;s=Pump1.Count", "count")],
    );
    for (node, signal, range) in items {
        toml_text.push_str(&format!(
            "[[servers.items]]\nnode_id = \"{node}\"\nsignal = \"{signal}\"\nwritable = true\n{range}"
        ));
    }
    let mut run = Running::start(&toml_text);
    run.wait_for(Duration::from_secs(20), |r| {
        &*r.signal == "count" && r.quality == Quality::Good
    })
    .await
    .expect("the session connects");
    (peer, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_items_are_written_in_the_nodes_type_and_read_back() {
    use fabrik_connect::opcua::OpcUaError;
    use fabrik_connect::setpoint::SetValue;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (peer, mut run) = writing_to_the_peer(
        dir.path(),
        &[
            (
                "ns=2;s=Pump1.Setpoint",
                "setpoint",
                "min = 2.0\nmax = 6.5\n",
            ),
            (
                "ns=2;s=Pump1.Speed",
                "speed",
                "min = -1000.0\nmax = 1000.0\n",
            ),
            ("ns=2;s=Pump1.Enable", "enable", ""),
            ("ns=2;s=Pump1.Limit", "limit", "min = 0.0\nmax = 1000.0\n"),
            ("ns=2;s=Pump1.Recipe", "recipe", ""),
            ("ns=2;s=Pump1.Locked", "locked", "min = 0.0\nmax = 10.0\n"),
            ("ns=2;s=Pump1.Pressure", "unranged", ""),
            ("ns=2;s=Pump1.Fresh", "fresh", "min = 0.0\nmax = 10.0\n"),
        ],
    )
    .await;
    let writer = run.client.writer();

    let written = writer
        .write("plc-dev", "setpoint", SetValue::Number(5.5))
        .await
        .expect("Double written");
    assert_eq!(
        (written.read_back, written.confirmed),
        (Ok(Value::F64(5.5)), true)
    );
    // An Int16 node takes the number as an Int16 (a Double would be BadTypeMismatch).
    let written = writer
        .write("plc-dev", "speed", SetValue::Number(-300.0))
        .await
        .expect("Int16 written");
    assert_eq!(
        (written.read_back, written.confirmed),
        (Ok(Value::I64(-300)), true)
    );
    // A node without a value yet: its DataType says it holds a Double.
    let written = writer
        .write("plc-dev", "fresh", SetValue::Number(2.5))
        .await
        .expect("a node waiting for its first value written");
    assert_eq!(
        (written.read_back, written.confirmed),
        (Ok(Value::F64(2.5)), true)
    );
    let written = writer
        .write("plc-dev", "enable", SetValue::Bool(true))
        .await
        .expect("Boolean written");
    assert_eq!(
        (written.read_back, written.confirmed),
        (Ok(Value::Bool(true)), true)
    );
    // A String node takes text (decision 0095).
    let written = writer
        .write("plc-dev", "recipe", SetValue::Text("B-200 ünïcode".into()))
        .await
        .expect("String written");
    assert_eq!(
        (written.read_back, written.confirmed),
        (Ok(Value::Str("B-200 ünïcode".into())), true)
    );
    // The server keeps Limit at most 500: the write is answered, but the node holds its own.
    let clamped = writer
        .write("plc-dev", "limit", SetValue::Number(900.0))
        .await
        .expect("UInt16 answered");
    assert!(!clamped.confirmed, "{clamped:?}");
    assert_eq!(clamped.read_back, Ok(Value::I64(500)), "{clamped:?}");

    // Refused by the server: the node is not writable.
    match writer
        .write("plc-dev", "locked", SetValue::Number(3.0))
        .await
    {
        Err(OpcUaError::WriteRefused { status, .. }) => {
            assert!(
                status.starts_with("BadNotWritable") || status.starts_with("BadUserAccessDenied"),
                "{status}"
            );
        }
        other => panic!("expected the server to refuse, got {other:?}"),
    }
    // Refused before anything is sent.
    for (signal, value, says) in [
        (
            "setpoint",
            SetValue::Number(7.0),
            "outside the point's range 2..=6.5",
        ),
        (
            "speed",
            SetValue::Number(1.5),
            "the node holds a Int16: 1.5 is not a whole number",
        ),
        ("enable", SetValue::Number(1.0), "give true or false"),
        (
            "enable",
            SetValue::Text("true".into()),
            "give true or false",
        ),
        (
            "recipe",
            SetValue::Number(7.0),
            "the node holds a String: give text",
        ),
        (
            "recipe",
            SetValue::Text("x".repeat(1001)),
            "the text has 1001 characters; at most 1000 are written",
        ),
        (
            "setpoint",
            SetValue::Text("5".into()),
            "the node holds a Double: give a number",
        ),
        (
            "unranged",
            SetValue::Number(1.0),
            "declares no `min` and `max`",
        ),
    ] {
        let e = writer.write("plc-dev", signal, value).await.unwrap_err();
        assert!(
            matches!(e, OpcUaError::InvalidValue { .. }) && e.to_string().contains(says),
            "{signal}: {e}"
        );
    }
    let e = writer
        .write("plc-dev", "count", SetValue::Number(1.0))
        .await
        .unwrap_err();
    assert!(matches!(e, OpcUaError::NotWritable { .. }), "{e}");
    let e = writer
        .write("other", "count", SetValue::Number(1.0))
        .await
        .unwrap_err();
    assert!(matches!(e, OpcUaError::UnknownDevice(_)), "{e}");

    // The subscription sees what was written.
    run.wait_for(Duration::from_secs(10), |r| {
        &*r.signal == "setpoint" && r.value == Some(Value::F64(5.5))
    })
    .await
    .expect("the written setpoint is reported by the subscription");
    // Once the session is gone, a write is refused at once, not queued.
    drop(peer);
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match writer
                .write("plc-dev", "setpoint", SetValue::Number(3.0))
                .await
            {
                Err(OpcUaError::NotConnected { .. }) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "a write with the server gone is refused as not connected"
    );
    run.stop().await;
}

/// Analog items declare their range (`EURange`) and unit: the writer reads them when the session
/// connects (so the list of setpoints shows them) and again at each write, and keeps every
/// write inside the declared range, alone or together with a configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_inside_the_eu_range_their_nodes_declare() {
    use fabrik_connect::opcua::OpcUaError;
    use fabrik_connect::opcua::declared::Declared;
    use fabrik_connect::setpoint::SetValue;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_peer, mut run) = writing_to_the_peer(
        dir.path(),
        &[
            ("ns=2;s=Pump1.Flow", "flow", ""),
            ("ns=2;s=Pump1.Valve", "valve", "min = 10.0\nmax = 200.0\n"),
            ("ns=2;s=Pump1.Odd", "odd", ""),
            (
                "ns=2;s=Pump1.Setpoint",
                "setpoint",
                "min = 2.0\nmax = 6.5\n",
            ),
            ("ns=2;s=Pump1.Enable", "enable", ""),
            ("ns=2;s=Pump1.Hidden", "hidden", "min = 0.0\nmax = 10.0\n"),
        ],
    )
    .await;
    let writer = run.client.writer();

    // Read on connecting, before any write: the node's type too.
    let declared = |signal: &str| {
        writer
            .items()
            .into_iter()
            .find(|i| &*i.signal == signal)
            .expect("a writable item")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while declared("flow").declared.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the declarations are read on connecting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flow = declared("flow");
    assert_eq!(
        flow.declared,
        Some(Declared {
            data_type: Some("Double".into()),
            eu_range: Some(Ok((0.0, 80.0))),
            unit: Some("l/min".into()),
        })
    );
    assert_eq!(flow.write_range(), Some(((0.0, 80.0), "device")));
    assert_eq!(
        declared("valve").write_range(),
        Some(((10.0, 100.0), "configuration and device"))
    );
    assert_eq!(
        declared("enable").declared.and_then(|d| d.data_type),
        Some("Boolean".to_owned())
    );
    let odd = declared("odd").declared.expect("read");
    assert_eq!(
        odd.eu_range,
        Some(Err("its EURange's low 50 is above its high 10".to_owned()))
    );
    // A plain variable declares its type only: its configured range alone.
    let setpoint = declared("setpoint");
    assert_eq!(
        setpoint.declared,
        Some(Declared {
            data_type: Some("Double".into()),
            ..Declared::default()
        })
    );
    assert_eq!(setpoint.write_range(), Some(((2.0, 6.5), "configuration")));
    // A property the server would not read is not "no range": listed as not known.
    let hidden = declared("hidden").declared.expect("listed");
    assert_eq!(hidden.data_type.as_deref(), Some("Double"));
    assert!(
        matches!(&hidden.eu_range, Some(Err(why)) if why.contains("its EURange could not be read: BadNotReadable")),
        "{hidden:?}"
    );

    // No range configured: the node's EURange is the range a write may set.
    let written = writer
        .write("plc-dev", "flow", SetValue::Number(75.0))
        .await
        .expect("a value inside the EURange is written");
    assert_eq!(
        (written.read_back, written.confirmed),
        (Ok(Value::F64(75.0)), true)
    );
    // The controller narrowed Flow's EURange to 0..70 once written: each write reads it again.
    let e = writer
        .write("plc-dev", "flow", SetValue::Number(75.0))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "75 is outside the node's EURange 0..=70 (the range its server declares for it)"
        ),
        "{e}"
    );
    assert_eq!(
        declared("flow").write_range(),
        Some(((0.0, 70.0), "device"))
    );
    let written = writer
        .write("plc-dev", "valve", SetValue::Number(60.0))
        .await
        .expect("a value inside both ranges is written");
    assert!(written.confirmed, "{written:?}");
    for (signal, value, says) in [
        ("valve", 150.0, "outside the node's EURange 0..=100"),
        ("valve", 5.0, "5 is outside the point's range 10..=200"),
        (
            "odd",
            20.0,
            "declares no `min` and `max`, and its EURange's low 50 is above its high 10",
        ),
    ] {
        let e = writer
            .write("plc-dev", signal, SetValue::Number(value))
            .await
            .unwrap_err();
        assert!(
            matches!(e, OpcUaError::InvalidValue { .. }) && e.to_string().contains(says),
            "{signal} = {value}: {e}"
        );
    }
    // A range configured, but the node's EURange could not be read: it may be narrower, so
    // nothing is written.
    let e = writer
        .write("plc-dev", "hidden", SetValue::Number(5.0))
        .await
        .unwrap_err();
    assert!(
        matches!(e, OpcUaError::ReadBefore { .. })
            && e.to_string()
                .contains("its EURange could not be read: BadNotReadable"),
        "{e}"
    );
    // The accepted write is the node's value, as the subscription reports.
    run.wait_for(Duration::from_secs(10), |r| {
        &*r.signal == "flow" && r.value == Some(Value::F64(75.0))
    })
    .await
    .expect("the written flow is reported");
    run.stop().await;
}
