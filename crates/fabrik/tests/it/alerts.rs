//! Alerting end to end in a real `fabrik run`: a fault in replayed data → inference → alert
//! firing → an Alertmanager-style webhook to a real local HTTP receiver naming the signal that
//! contributed most; acknowledgement with feedback (kept in `alert_labels`); and a notification
//! that the receiver refused surviving a restart in the outbox until it is delivered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::mqtt::{eventually, http, query};
use crate::support::{Process, now_ns, start_configured};

const SECOND: i64 = 1_000_000_000;

/// A minimal HTTP/1.1 receiver: records every request body and answers 200 when `accept` is
/// set, 503 otherwise.
struct Receiver {
    url: String,
    accept: Arc<AtomicBool>,
    /// (answered with 200?, body)
    requests: Arc<Mutex<Vec<(bool, serde_json::Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let accept = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (accept_flag, log) = (accept.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let ok = accept_flag.load(Ordering::SeqCst);
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                log.lock().expect("log").push((ok, json));
                let status = if ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Receiver {
            url,
            accept,
            requests,
        }
    }

    fn delivered(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .expect("log")
            .iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, body)| body.clone())
            .collect()
    }

    fn attempts(&self) -> usize {
        self.requests.lock().expect("log").len()
    }
}

fn history(start_ns: i64) -> String {
    let mut body = String::new();
    for t in 0..600i64 {
        let wobble = ((t * 7919) % 13) as f64 / 13.0;
        for device in ["pump-a", "pump-b"] {
            let fault = if device == "pump-a" && t >= 500 {
                3.0
            } else {
                0.0
            };
            body.push_str(&format!(
                "pump,device={device} vibration={},current={} {}\n",
                2.0 + wobble * 0.2 + fault,
                10.0 + wobble,
                start_ns + t * SECOND
            ));
        }
    }
    body
}

fn notifier(url: &str) -> String {
    format!(
        r#"
[[alerting.notifiers]]
name = "ops"
kind = "webhook"
url = "{url}"
timeout = "2s"
"#
    )
}

const PIPELINE_AND_RULE: &str = r#"
[[pipelines]]
name = "pumps"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std", "max"]
training_windows = 20
interval = "200ms"
lateness = "0s"
start = "earliest"

[[alerting.rules]]
name = "pump-anomaly"
table = "inferences"
value = "score / threshold"
key = "device"
filter = "pipeline = 'pumps'"
condition = "above"
threshold = 1.0
clear = 0.8
severity = "critical"
context = ["top_signal", "contributions", "window_id", "pipeline"]
interval = "200ms"
start = "earliest"
"#;

#[test]
fn a_fault_becomes_a_webhook_naming_its_signal_and_survives_a_restart_undelivered() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let first = dir.path().join("first.toml");
    std::fs::write(
        &first,
        format!("{PIPELINE_AND_RULE}{}", notifier(&receiver.url)),
    )
    .expect("config");
    let p = Process::start_with_args(&data, &["--config", first.to_str().expect("utf-8")], &[]);
    let now = now_ns();
    let start = (now - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &history(start)),
        200
    );

    eventually("an alert fires for pump-a", || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?state=firing",
            None,
        );
        alerts.as_array().is_some_and(|a| !a.is_empty())
    });
    let (_, alerts) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/alerts?state=firing",
        None,
    );
    let alerts = alerts.as_array().expect("list").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["key"], "pump-a");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["annotations"]["top_signal"], "vibration", "{alert}");
    let id = alert["id"].as_str().expect("id").to_owned();
    // The alert starts at the first faulty window (its inference is stamped at the window's end).
    assert!(id.starts_with("pump-anomaly~pump-a~"), "{id}");

    // The receiver refuses: the notification was attempted and stays queued.
    eventually("a delivery attempt", || receiver.attempts() >= 1);
    assert!(receiver.delivered().is_empty());
    // The operator sees why: the notifier's queue and its receiver's answer, and where it
    // sends without the URL's path (which may hold a secret). The receiver has answered
    // before the notifier has read the answer, so the status is awaited.
    eventually("the failed attempt in the notifier's status", || {
        let (_, notifiers) = http(&p.url, reqwest::Method::GET, "/api/v1/notifiers", None);
        notifiers[0]["last_failed_at"].is_string()
    });
    let (code, notifiers) = http(&p.url, reqwest::Method::GET, "/api/v1/notifiers", None);
    assert_eq!(code, 200, "{notifiers}");
    let ops = &notifiers[0];
    assert_eq!(ops["name"], "ops", "{notifiers}");
    assert_eq!(ops["kind"], "webhook", "{notifiers}");
    assert!(ops["queued"].as_u64().is_some_and(|n| n >= 1), "{ops}");
    assert!(ops["retrying"].as_u64().is_some_and(|n| n >= 1), "{ops}");
    assert!(
        ops["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{ops}"
    );
    assert!(
        ops["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("http://127.0.0.1:") && !t.contains("hook")),
        "{ops}"
    );
    let (ok, text) = crate::support::client_command(&p.url, &["alert", "notifiers"]);
    assert!(
        ok && text.contains("503") && text.contains("1 notifier(s)"),
        "{text}"
    );
    // All of it is on /metrics for Prometheus: the pipeline's work, the alert, the failure.
    let metric = |series: &str| crate::support::metric(&p.url, series);
    eventually("the pipeline's counters are exported", || {
        metric("fabrik_pipeline_inferences_total{pipeline=\"pumps\"}") == Some(80.0)
    });
    assert_eq!(
        metric("fabrik_pipeline_anomalies_total{pipeline=\"pumps\"}"),
        Some(10.0)
    );
    assert_eq!(
        metric("fabrik_pipeline_samples_total{pipeline=\"pumps\"}"),
        Some(1200.0)
    );
    assert_eq!(
        metric("fabrik_pipeline_problem{pipeline=\"pumps\"}"),
        Some(0.0)
    );
    eventually(
        "the firing alert and the failed delivery are exported",
        || {
            metric("fabrik_alerts_firing{rule=\"pump-anomaly\",severity=\"critical\"}") == Some(1.0)
                && metric("fabrik_notifications_total{notifier=\"ops\",outcome=\"failed\"}")
                    .is_some_and(|failed| failed >= 1.0)
                && metric("fabrik_alert_outbox_pending") == Some(1.0)
        },
    );
    assert_eq!(
        metric("fabrik_alert_transitions_total{rule=\"pump-anomaly\",state=\"firing\"}"),
        Some(1.0)
    );

    // Acknowledge with feedback, as the alert e-mail tells operators to; the verdict is data.
    let cli = |args: &[&str]| crate::support::client_command(&p.url, args);
    let (ok, text) = cli(&["alert", "ack", "--feedback", "maybe", &id]);
    assert!(!ok && text.contains("true_positive"), "{text}");
    let (ok, text) = cli(&[
        "alert",
        "ack",
        &id,
        "--feedback",
        "true_positive",
        "--comment",
        "bearing noise",
        "--by",
        "ana",
    ]);
    assert!(ok && text.contains("as true_positive"), "{text}");
    let (_, acked) = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{id}"),
        None,
    );
    assert_eq!(acked["ack"]["feedback"], "true_positive", "{acked}");
    assert_eq!(acked["ack"]["comment"], "bearing noise", "{acked}");
    let labels = query(
        &p.url,
        "SELECT device, rule, true_positive, alert_id, \"by\" FROM alert_labels",
    );
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert_eq!(labels[0]["device"], "pump-a");
    assert_eq!(labels[0]["true_positive"], true);
    assert_eq!(labels[0]["alert_id"].as_str(), Some(id.as_str()));
    // The verdict joins the inference that raised the alert: same device and time, and it
    // names the pipeline and window.
    let joined = query(
        &p.url,
        "SELECT i.flag, i.window_id, l.window_id AS labelled, l.pipeline FROM alert_labels l \
         JOIN inferences i ON i.device = l.device AND i.time = l.time",
    );
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(joined[0]["flag"], true, "{joined:?}");
    assert_eq!(joined[0]["pipeline"], "pumps", "{joined:?}");
    assert_eq!(joined[0]["window_id"], joined[0]["labelled"], "{joined:?}");
    // A second verdict does not overwrite the first by accident; with --replace it does.
    let (ok, text) = cli(&[
        "alert",
        "ack",
        &id,
        "--feedback",
        "false_positive",
        "--by",
        "bo",
    ]);
    assert!(!ok && text.contains("acknowledged by ana"), "{text}");
    let (ok, text) = cli(&[
        "alert",
        "ack",
        &id,
        "--feedback",
        "false_positive",
        "--by",
        "bo",
        "--replace",
    ]);
    assert!(ok, "{text}");
    let labels = query(&p.url, "SELECT true_positive, \"by\" FROM alert_labels");
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert_eq!(labels[0]["by"], "bo", "{labels:?}");
    let (ok, text) = cli(&[
        "alert",
        "ack",
        &id,
        "--feedback",
        "true_positive",
        "--by",
        "ana",
        "--replace",
    ]);
    assert!(ok, "{text}");
    // The README's precision per pipeline.
    let precision = query(
        &p.url,
        "SELECT pipeline, count(*) AS verdicts, \
         avg(CASE WHEN true_positive THEN 1.0 ELSE 0.0 END) AS precision \
         FROM alert_labels GROUP BY pipeline",
    );
    assert_eq!(
        precision,
        vec![serde_json::json!({"pipeline": "pumps", "verdicts": 1, "precision": 1.0})]
    );
    let (code, _) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/alerts/nope/ack",
        Some(serde_json::json!({"feedback": "false_positive"})),
    );
    assert_eq!(code, 404);
    let (ok, text) = cli(&[
        "alert",
        "silence",
        "--device",
        "pump-b",
        "--duration",
        "1h",
        "--comment",
        "maintenance",
    ]);
    assert!(ok && text.starts_with("silence s-"), "{text}");
    // A second silence, listed and then ended from the CLI; the first stays.
    let (ok, text) = cli(&["alert", "silence", "--rule", "pump-*", "--duration", "1h"]);
    assert!(ok, "{text}");
    let second = text
        .split_whitespace()
        .nth(1)
        .expect("silence id")
        .to_owned();
    let (ok, text) = cli(&["alert", "silences"]);
    assert!(
        ok && text.contains("maintenance")
            && text.contains("pump-*")
            && text.contains("2 silence(s)"),
        "{text}"
    );
    let (ok, text) = cli(&["alert", "unsilence", &second]);
    assert!(ok && text.contains(&second), "{text}");
    let (ok, text) = cli(&["alert", "silences"]);
    assert!(
        ok && text.contains("1 silence(s)") && !text.contains(&second),
        "{text}"
    );
    // Ended, not erased: the shift log keeps who silenced what, and who ended it early.
    let (ok, text) = cli(&["alert", "silences", "--all"]);
    assert!(
        ok && text.contains(&second) && text.contains("ended early by admin-token"),
        "{text}"
    );
    let (ok, text) = cli(&["alert", "unsilence", &second]);
    assert!(!ok && text.contains("already ended"), "{text}");
    let (ok, text) = cli(&["alert", "unsilence", "s-nope"]);
    assert!(!ok && text.contains("404"), "{text}");
    // A device no rule has seen and no registry knows: in force, with a warning.
    let (ok, text) = cli(&[
        "alert",
        "silence",
        "--device",
        "pmup-b",
        "--duration",
        "2m30s",
    ]);
    assert!(
        ok && text.contains("warning: device `pmup-b` matches no device"),
        "{text}"
    );
    let (ok, text) = cli(&["alert", "silence", "--device", "pump-b", "--duration", "1m"]);
    assert!(ok && !text.contains("warning"), "{text}");
    let (ok, text) = cli(&["alert", "silence", "--rule", "pmp-*", "--duration", "1m"]);
    assert!(
        ok && text.contains("warning: rule pattern `pmp-*` matches no alert rule"),
        "{text}"
    );
    // A maintenance window set ahead: listed with when it begins; an end before its start
    // and a silence with no length are refused.
    let rfc = |offset_s: i64| format!("{}Z", time_text(now_ns() + offset_s * SECOND));
    let (from, until) = (rfc(600), rfc(3000));
    let (ok, text) = cli(&[
        "alert", "silence", "--device", "pump-b", "--from", &from, "--until", &until,
    ]);
    assert!(
        ok && text.contains(" from ") && text.contains(" until "),
        "{text}"
    );
    let (ok, text) = cli(&["alert", "silences"]);
    // Listed with its start, to the second (the listing adds milliseconds).
    assert!(ok && text.contains(&from[..19]), "{text}");
    for (body, says) in [
        (
            serde_json::json!({"device": "pump-b", "starts_at": until, "ends_at": from}),
            "is not after",
        ),
        (
            serde_json::json!({"device": "pump-b"}),
            "`duration` or an `ends_at`",
        ),
        (
            serde_json::json!({"device": "pump-b", "starts_at": "tonight", "duration": "1h"}),
            "not an RFC 3339 time",
        ),
    ] {
        let (code, error) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/silences",
            Some(body),
        );
        assert!(
            code == 400 && error["error"].as_str().is_some_and(|e| e.contains(says)),
            "{error}"
        );
    }
    for listing in ["/api/v1/silences?all=false", "/api/v1/alert-rules?since=1h"] {
        let (code, body) = http(&p.url, reqwest::Method::GET, listing, None);
        assert_eq!(code, 400, "{listing}: {body}");
    }
    let (code, _) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/silences",
        Some(serde_json::json!({"duration": "soon"})),
    );
    assert_eq!(code, 400);
    // A filter the listing does not have is refused, not ignored.
    let (code, body) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/alerts?since=1h",
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("since")),
        "{body}"
    );
    for (listing, says) in [
        ("/api/v1/alerts?limit=5000", "expected 1 to 1000"),
        ("/api/v1/alerts?changed_after=yesterday", "RFC 3339"),
        ("/api/v1/alerts?after_id=x", "goes with changed_after"),
    ] {
        let (code, body) = http(&p.url, reqwest::Method::GET, listing, None);
        assert_eq!(code, 400, "{listing}: {body}");
        assert!(body.to_string().contains(says), "{listing}: {body}");
    }
    // The alert's updated_at is the cursor: nothing changed after it.
    let (_, all) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
    let newest = &all[0];
    let (code, after) = http(
        &p.url,
        reqwest::Method::GET,
        &format!(
            "/api/v1/alerts?changed_after={}&after_id={}",
            newest["updated_at"].as_str().expect("updated_at"),
            newest["id"].as_str().expect("id")
        ),
        None,
    );
    assert_eq!(code, 200, "{after}");
    assert_eq!(after, serde_json::json!([]), "{all}");
    let (status, _) = p.terminate();
    assert!(status.success());

    // Restart without the pipeline: nothing new is scored, and the rule, still configured,
    // keeps its alert firing, so anything delivered now came from the outbox. (Without the
    // rule the alert would resolve at the start, as a removed rule's alerts do.)
    receiver.accept.store(true, Ordering::SeqCst);
    let second = dir.path().join("second.toml");
    // Reading from now on: replaying the stored inferences would resolve the alert.
    let rule = PIPELINE_AND_RULE[PIPELINE_AND_RULE.find("[[alerting.rules]]").expect("rule")..]
        .replace("start = \"earliest\"", "start = \"now\"");
    std::fs::write(&second, format!("{rule}{}", notifier(&receiver.url))).expect("config");
    let p = Process::start_with_args(&data, &["--config", second.to_str().expect("utf-8")], &[]);
    eventually(
        "the queued notification is delivered after the restart",
        || !receiver.delivered().is_empty(),
    );
    let delivered = receiver.delivered();
    let body = &delivered[0];
    assert_eq!(body["version"], "4", "{body}");
    assert_eq!(body["status"], "firing", "{body}");
    let first_alert = &body["alerts"][0];
    assert_eq!(first_alert["labels"]["alertname"], "pump-anomaly");
    assert_eq!(first_alert["labels"]["device"], "pump-a");
    assert_eq!(first_alert["labels"]["severity"], "critical");
    assert_eq!(first_alert["annotations"]["top_signal"], "vibration");
    assert!(
        first_alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("vibration")),
        "{body}"
    );
    // The acknowledgement and the silence were kept.
    let (_, kept) = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{id}"),
        None,
    );
    assert_eq!(kept["ack"]["by"], "ana", "{kept}");
    let (_, silences) = http(&p.url, reqwest::Method::GET, "/api/v1/silences", None);
    assert_eq!(silences[0]["key"], "pump-b", "{silences}");
    assert_eq!(silences[0]["comment"], "maintenance", "{silences}");
    // The CLI sees the same alert.
    let (ok, text) = crate::support::client_command(&p.url, &["alert", "list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&id) && text.contains("true_positive"),
        "{text}"
    );
    // Filtered by device and rule patterns.
    let (ok, text) = crate::support::client_command(
        &p.url,
        &["alert", "list", "--device", "pump-*", "--rule", "*anomaly"],
    );
    assert!(
        ok && text.contains(&id) && text.contains("1 alert(s)"),
        "{text}"
    );
    let (ok, text) =
        crate::support::client_command(&p.url, &["alert", "list", "--device", "motor-*"]);
    assert!(ok && text.contains("0 alert(s)"), "{text}");
    let (ok, text) = crate::support::client_command(&p.url, &["alert", "list", "--limit", "1"]);
    assert!(
        ok && text.contains("1 alert(s), the --limit: there may be more"),
        "{text}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// The aiosmtpd peer: its port, the CA file of its certificate (empty with `--plain`), and
/// the lines it prints (`MAIL {json}` per accepted message, `EVENT {json}` per EHLO or AUTH).
struct SmtpPeer {
    child: std::process::Child,
    port: u16,
    ca: String,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl SmtpPeer {
    fn start(args: &[&str]) -> SmtpPeer {
        let python = crate::support::python();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fabrik-alert/tests/peers/smtp_server.py"
        );
        let mut child = std::process::Command::new(&python)
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{python}` (FABRIK_PYTHON): {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = || {
            lines
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the SMTP peer starts (is aiosmtpd installed? .ci/run installs it)")
        };
        let port = next()
            .strip_prefix("PORT ")
            .expect("PORT line")
            .parse()
            .expect("port");
        let ca = next()
            .strip_prefix("CA")
            .expect("CA line")
            .trim()
            .to_owned();
        SmtpPeer {
            child,
            port,
            ca,
            lines,
            seen: Vec::new(),
        }
    }

    fn collect(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    fn records(&mut self, kind: &str) -> Vec<serde_json::Value> {
        self.collect();
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(kind))
            .map(|json| serde_json::from_str(json.trim()).expect("peer JSON"))
            .collect()
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub` for one message on `filter` (retained ones included), as `topic payload`.
fn one_mqtt_message(mqtt: &str, filter: &str) -> std::process::Child {
    let (host, port) = mqtt.rsplit_once(':').expect("host:port");
    std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-u",
            "admin",
            "-P",
            crate::support::TOKEN,
            "-t",
            filter,
            "-q",
            "1",
            "-v",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

/// The topics of the retained messages that match `filter`, sorted.
fn retained_topics(mqtt: &str, filter: &str) -> Vec<String> {
    let (host, port) = mqtt.rsplit_once(':').expect("host:port");
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-u",
            "admin",
            "-P",
            crate::support::TOKEN,
            "-t",
            filter,
            "--retained-only",
            "-v",
            "-W",
            "2",
        ])
        .output()
        .expect("mosquitto_sub");
    let mut topics: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split(' ').next().map(str::to_owned))
        .collect();
    topics.sort();
    topics
}

fn finish(sub: std::process::Child) -> (String, serde_json::Value) {
    let out = sub.wait_with_output().expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (topic, payload) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("no message: `{text}`"));
    (
        topic.to_owned(),
        serde_json::from_str(payload).expect("alert JSON"),
    )
}

/// A reminder e-mail says it is one, and every e-mail has its own Message-ID, threaded by the
/// incident (a review: four reminders shared the first one's ID, which a mailbox may drop).
/// Fabrik with the `oven-hot` rule and an e-mail notifier `shift-lead` on `mail` (`notifier`
/// adds its `to` and any other keys), oven-1 reported too hot.
fn oven_too_hot_mailed(dir: &std::path::Path, mail: &SmtpPeer, notifier: &str) -> Process {
    let p = start_configured(
        dir,
        &format!(
            r#"
[[alerting.rules]]
name = "oven-hot"
table = "oven"
value = "celsius"
key = "device"
condition = "above"
threshold = 80.0
interval = "200ms"
start = "earliest"

[[alerting.notifiers]]
name = "shift-lead"
kind = "email"
url = "smtp://localhost:{mail_port}"
ca = "{ca}"
username = "fabrik"
password = "s3cret"
from = "fabrik@plant.example"
{notifier}
"#,
            mail_port = mail.port,
            ca = mail.ca,
        ),
    );
    assert_eq!(
        crate::support::post_status(
            &p.url,
            "/api/v1/write",
            &format!("oven,device=oven-1 celsius=95 {}\n", now_ns())
        ),
        200
    );
    p
}

/// A reminder e-mail says it is one, and every e-mail has its own Message-ID, threaded by the
/// incident (a review: four reminders shared the first one's ID, which a mailbox may drop).
#[test]
fn reminder_emails_are_their_own_messages_and_say_they_remind() {
    let mut mail = SmtpPeer::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let _p = oven_too_hot_mailed(
        dir.path(),
        &mail,
        "to = [\"lead@plant.example\"]\nrepeat_interval = \"1s\"",
    );
    eventually("a firing e-mail and two reminders", || {
        mail.records("MAIL ").len() >= 3
    });
    let mails = mail.records("MAIL ");
    let subjects: Vec<&str> = mails.iter().filter_map(|m| m["subject"].as_str()).collect();
    assert!(subjects[0].starts_with("[FIRING] oven-hot"), "{subjects:?}");
    assert!(
        subjects[1..]
            .iter()
            .all(|s| s.starts_with("[FIRING REMINDER] oven-hot")),
        "{subjects:?}"
    );
    assert!(
        mails[1]["body"]
            .as_str()
            .is_some_and(|b| b.starts_with("Still firing: a reminder")),
        "{}",
        mails[1]
    );
    let ids: std::collections::BTreeSet<&str> = mails
        .iter()
        .filter_map(|m| m["message_id"].as_str())
        .collect();
    assert_eq!(ids.len(), mails.len(), "{mails:?}");
    assert!(
        mails
            .iter()
            .all(|m| m["references"] == mails[0]["references"]
                && m["auto_submitted"] == "auto-generated")
    );
}

/// A recipient the mail server refuses does not keep the page from the others: the message
/// goes to them, and the notifier's status names the refusal (a review: one closed mailbox
/// held every e-mail of its notifier back, retried for ever).
#[test]
fn a_refused_recipient_does_not_hold_back_the_others() {
    let mut mail = SmtpPeer::start(&["--reject", "gone@plant.example"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = oven_too_hot_mailed(
        dir.path(),
        &mail,
        "to = [\"gone@plant.example\", \"lead@plant.example\"]",
    );
    eventually("the e-mail to the other recipient", || {
        !mail.records("MAIL ").is_empty()
    });
    assert_eq!(
        mail.records("MAIL ")[0]["rcpt_tos"],
        serde_json::json!(["lead@plant.example"])
    );
    eventually(
        "the notifier names the refusal, with nothing queued",
        || {
            let (_, notifiers) = http(&p.url, reqwest::Method::GET, "/api/v1/notifiers", None);
            let status = &notifiers[0];
            status["queued"] == 0
                && status["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("<gone@plant.example> refused: 550"))
        },
    );
}

#[test]
fn alerts_reach_mqtt_subscribers_and_mailboxes_and_credentials_never_travel_in_clear() {
    let mut mail = SmtpPeer::start(&[]);
    let mut relay = SmtpPeer::start(&["--plain"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alerting.rules]]
name = "oven-hot"
table = "oven"
value = "celsius"
key = "device"
condition = "above"
threshold = 80.0
clear = 70.0
severity = "critical"
interval = "200ms"
start = "earliest"

[[alerting.notifiers]]
name = "scada"
kind = "mqtt"
topic = "plant/alerts/{{severity}}/{{rule}}/{{device}}"
retain = true

[[alerting.notifiers]]
name = "hmi"
kind = "mqtt"
topic = "plant/state/{{device}}/{{rule}}/{{status}}"
retain = true

[[alerting.notifiers]]
name = "shift-lead"
kind = "email"
url = "smtp://localhost:{mail_port}"
ca = "{ca}"
username = "fabrik"
password = "s3cret"
from = "fabrik@plant.example"
to = ["lead@plant.example", "maintenance@plant.example"]

[[alerting.notifiers]]
name = "old-relay"
kind = "email"
url = "smtp://localhost:{relay_port}"
username = "fabrik"
password = "s3cret"
from = "fabrik@plant.example"
to = ["lead@plant.example"]
"#,
            mail_port = mail.port,
            ca = mail.ca,
            relay_port = relay.port,
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let p = Process::start_with_args(&data, &["--config", config.to_str().expect("utf-8")], &[]);
    let mqtt = p.mqtt.clone().expect("mqtt endpoint");
    let subscriber = one_mqtt_message(&mqtt, "plant/alerts/#");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let now = now_ns();
    assert_eq!(
        crate::support::post_status(
            &p.url,
            "/api/v1/write",
            &format!("oven,device=oven-1 celsius=95 {now}\n")
        ),
        200
    );

    // MQTT: the flat alert JSON on a topic built from the alert.
    let (topic, firing) = finish(subscriber);
    assert_eq!(topic, "plant/alerts/critical/oven-hot/oven-1");
    assert_eq!(firing["status"], "firing", "{firing}");
    assert_eq!(firing["device"], "oven-1");
    assert_eq!(firing["value"], 95.0);
    let id = firing["id"].as_str().expect("id").to_owned();

    // E-mail: over STARTTLS, authenticated, to both recipients.
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while mail.records("MAIL ").is_empty() {
        log.extend(p.log.try_iter());
        assert!(
            std::time::Instant::now() < deadline,
            "no e-mail; Fabrik said:\n{}",
            log.join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let m = &mail.records("MAIL ")[0];
    assert_eq!(m["tls"], true, "{m}");
    assert_eq!(m["user"], "fabrik", "{m}");
    assert_eq!(m["mail_from"], "fabrik@plant.example");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["lead@plant.example", "maintenance@plant.example"])
    );
    assert_eq!(m["alert"], id);
    assert!(
        m["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("[FIRING] oven-hot on oven-1: value 95")),
        "{m}"
    );
    assert!(
        m["body"]
            .as_str()
            .is_some_and(|b| b.contains("Device:    oven-1") && b.contains(&id)),
        "{m}"
    );

    // Cooling down resolves it: a second e-mail, and the retained message now says resolved.
    assert_eq!(
        crate::support::post_status(
            &p.url,
            "/api/v1/write",
            &format!("oven,device=oven-1 celsius=60 {}\n", now + SECOND)
        ),
        200
    );
    eventually("the resolved e-mail", || mail.records("MAIL ").len() >= 2);
    let resolved = &mail.records("MAIL ")[1];
    assert!(
        resolved["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("[RESOLVED] oven-hot on oven-1")),
        "{resolved}"
    );
    let (topic, last) = finish(one_mqtt_message(&mqtt, "plant/alerts/critical/#"));
    assert_eq!(topic, "plant/alerts/critical/oven-hot/oven-1");
    assert_eq!(last["status"], "resolved", "{last}");
    assert_eq!(last["id"], id.as_str());
    // With the status in the topic, the resolution also deleted the retained firing message:
    // a client connecting now is not told the alert is firing.
    eventually("only the resolved state is retained", || {
        retained_topics(&mqtt, "plant/state/#") == ["plant/state/oven-1/oven-hot/resolved"]
    });

    // The relay without STARTTLS got a connection but neither credentials nor a message, and
    // Fabrik said why; the notification stays queued for it.
    eventually("the refused relay is logged", || {
        log.extend(p.drain_log());
        log.iter().any(|l| l.contains("does not offer STARTTLS"))
    });
    assert!(
        !relay.records("EVENT ").is_empty(),
        "the relay was contacted"
    );
    assert!(
        relay
            .records("EVENT ")
            .iter()
            .all(|e| e.get("auth").is_none()),
        "{:?}",
        relay.seen
    );
    assert!(relay.records("MAIL ").is_empty());
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A heartbeat (`absent`) rule across a restart: a device that last reported an hour ago,
/// before this process started, is missed from its last report; one that reports again
/// resolves it.
#[test]
fn a_heartbeat_rule_misses_a_device_that_went_silent_before_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        r#"
[[alerting.rules]]
name = "heartbeat"
table = "beat"
value = "1"
key = "device"
condition = "absent"
threshold = 30
interval = "200ms"
"#,
    )
    .expect("config");
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().expect("utf-8")];
    let now = now_ns();
    let an_hour_ago = now - 3600 * SECOND;
    let p = Process::start_with_args(&data, &args, &[]);
    assert_eq!(
        crate::support::post_status(
            &p.url,
            "/api/v1/write",
            &format!("beat,device=gw-1 up=1 {an_hour_ago}\nbeat,device=gw-2 up=1 {now}\n"),
        ),
        200
    );
    let (status, _) = p.terminate();
    assert!(status.success());

    // Restarted, the rule reads only new rows; gw-1's silence began an hour ago all the same.
    let p = Process::start_with_args(&data, &args, &[]);
    let mut missed = serde_json::Value::Null;
    eventually("the silent gateway is missed", || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?state=firing",
            None,
        );
        missed = alerts
            .as_array()
            .and_then(|a| a.iter().find(|x| x["key"] == "gw-1").cloned())
            .unwrap_or_default();
        !missed.is_null()
    });
    let started = missed["started_at"].as_str().expect("started_at");
    let written = time_text(an_hour_ago);
    assert!(
        started.starts_with(&written[..16]),
        "silent since its last report ({written}): {missed}"
    );
    // gw-2 reported a moment ago: not silent for 30 s yet.
    let (_, alerts) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
    assert!(
        alerts
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["key"] != "gw-2")),
        "{alerts}"
    );
    // Restarted while the alert fires, the silence goes on: the same alert stays firing,
    // neither resolved by the restart nor fired anew.
    let (status, _) = p.terminate();
    assert!(status.success());
    let p = Process::start_with_args(&data, &args, &[]);
    std::thread::sleep(std::time::Duration::from_secs(2)); // ten evaluations
    let (_, alerts) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
    let gw1: Vec<&serde_json::Value> = alerts
        .as_array()
        .map(|a| a.iter().filter(|x| x["key"] == "gw-1").collect())
        .unwrap_or_default();
    assert_eq!(gw1.len(), 1, "{alerts}");
    assert_eq!(gw1[0]["id"], missed["id"], "{alerts}");
    assert_eq!(gw1[0]["state"], "firing", "{alerts}");
    // A report ends the silence.
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", "beat,device=gw-1 up=1\n"),
        200
    );
    eventually("the gateway's alert resolves", || {
        let (_, alert) = http(
            &p.url,
            reqwest::Method::GET,
            &format!(
                "/api/v1/alerts/{}",
                missed["id"].as_str().expect("id").replace('~', "%7E")
            ),
            None,
        );
        alert["state"] == "resolved"
    });
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// `ns` as RFC 3339 UTC text, to the second.
fn time_text(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// A heartbeat rule with `expect` misses registered devices of its selection and listed ones
/// that never reported, ignores the other registered devices, and forgets a device removed
/// from the registry (its alert resolves).
#[test]
fn a_heartbeat_rule_expects_registered_devices_that_never_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(
        dir.path(),
        r#"
[[alerting.rules]]
name = "expected-beat"
table = "beat"
value = "1"
condition = "absent"
threshold = 2
interval = "200ms"
expect = { site = "north", devices = ["gw-listed"] }
"#,
    );
    let register = |id: &str, site: &str| {
        let (code, body) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({"id": id, "site": site})),
        );
        assert_eq!(code, 201, "{body}");
    };
    register("gw-north", "north");
    register("gw-south", "south");
    // Every alert as (key, id, state).
    let alerts = || -> Vec<(String, String, String)> {
        let (_, alerts) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
        let text = |x: &serde_json::Value, k: &str| x[k].as_str().unwrap_or_default().to_owned();
        alerts
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| (text(x, "key"), text(x, "id"), text(x, "state")))
                    .collect()
            })
            .unwrap_or_default()
    };
    let firing_id = |key: &str| {
        alerts()
            .into_iter()
            .find(|(k, _, state)| k == key && state == "firing")
            .map(|(_, id, _)| id)
    };
    let state_of = |id: &str| {
        alerts()
            .into_iter()
            .find(|(_, i, _)| i == id)
            .map(|(_, _, state)| state)
            .unwrap_or_default()
    };
    eventually(
        "the expected devices that never reported are missed",
        || firing_id("gw-north").is_some() && firing_id("gw-listed").is_some(),
    );
    let north = firing_id("gw-north").expect("firing");
    // Its table does not even exist: nothing was ever written. A report resolves it.
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", "beat,device=gw-north up=1\n"),
        200
    );
    eventually("gw-north's report resolves its alert", || {
        state_of(&north) == "resolved"
    });
    // A device registered later is expected from then on; removed, it is forgotten.
    register("gw-north-2", "north");
    eventually("the new device is missed", || {
        firing_id("gw-north-2").is_some()
    });
    let added = firing_id("gw-north-2").expect("firing");
    let (code, _) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/devices/gw-north-2",
        None,
    );
    assert_eq!(code, 204);
    eventually("the removed device's alert resolves", || {
        state_of(&added) == "resolved"
    });
    std::thread::sleep(std::time::Duration::from_secs(3)); // past the threshold again
    let all = alerts();
    assert!(
        all.iter().all(|(key, _, _)| key != "gw-south"),
        "a device outside the selection is not expected: {all:?}"
    );
    assert!(
        all.iter()
            .filter(|(key, _, _)| key == "gw-north-2")
            .all(|(_, id, _)| *id == added),
        "the removed device is not missed again: {all:?}"
    );
    assert!(firing_id("gw-listed").is_some(), "{all:?}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// An `unchanged` rule fires on a sensor that keeps reporting one value (a stuck sensor),
/// dated from when it froze, and not on one whose readings vary.
#[test]
fn a_frozen_sensor_is_alerted_from_when_it_froze() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(
        dir.path(),
        r#"
[[alerting.rules]]
name = "pressure-frozen"
table = "pump"
value = "pressure"
condition = "unchanged"
threshold = 20
interval = "200ms"
start = "earliest"
"#,
    );
    // A minute at 1 Hz: pump-x varies throughout; pump-y freezes at 1.0235 from second 30.
    let start = (now_ns() - 3600 * SECOND) / SECOND * SECOND;
    let mut rows = String::new();
    for t in 0..60i64 {
        let varying = 1.0 + ((t * 7919) % 13) as f64 / 1000.0;
        let frozen = if t >= 30 { 1.0235 } else { varying };
        let time = start + t * SECOND;
        rows.push_str(&format!(
            "pump,device=pump-x pressure={varying} {time}\npump,device=pump-y pressure={frozen} {time}\n"
        ));
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &rows),
        200
    );
    let firing = || firing_alerts(&p.url);
    eventually("the frozen sensor is alerted", || !firing().is_empty());
    std::thread::sleep(std::time::Duration::from_secs(1)); // five more evaluations
    let alerts = firing();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["key"], "pump-y", "{alerts:?}");
    assert_eq!(
        alerts[0]["id"].as_str(),
        Some(format!("pressure-frozen~pump-y~{}", start + 30 * SECOND).as_str()),
        "dated from the first frozen reading: {alerts:?}"
    );
    // A different reading resolves it.
    assert_eq!(
        crate::support::post_status(
            &p.url,
            "/api/v1/write",
            &format!("pump,device=pump-y pressure=1.02 {}\n", start + 60 * SECOND)
        ),
        200
    );
    eventually("the new reading resolves it", || firing().is_empty());
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A rule's value is an SQL expression over several signals of a row: the alert fires on the
/// product of two, which neither signal alone decides, and carries the product as its value.
#[test]
fn a_rule_on_an_expression_over_two_signals_fires_on_their_combination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(
        dir.path(),
        r#"
[[alerting.rules]]
name = "electrical-load"
table = "pump"
value = "vibration * current"
condition = "above"
threshold = 40
interval = "200ms"
start = "earliest"
annotations = { summary = "{device}: electrical load {value}", team = "maintenance" }
"#,
    );
    let now = now_ns();
    // Products 30, 45 and 36: only pump-y's passes 40, though pump-z has the highest vibration
    // and pump-x the highest current.
    let rows = format!(
        "pump,device=pump-x vibration=3,current=10 {now}\n\
         pump,device=pump-y vibration=5,current=9 {now}\n\
         pump,device=pump-z vibration=9,current=4 {now}\n"
    );
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &rows),
        200
    );
    let firing = || firing_alerts(&p.url);
    eventually("the combined load fires", || !firing().is_empty());
    std::thread::sleep(std::time::Duration::from_secs(2)); // ten more evaluations
    let alerts = firing();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["key"], "pump-y", "{alerts:?}");
    assert_eq!(alerts[0]["value"], 45.0, "{alerts:?}");
    // Annotations from the configuration file, rendered.
    let annotations = &alerts[0]["annotations"];
    assert_eq!(
        annotations["summary"], "pump-y: electrical load 45",
        "{annotations}"
    );
    assert_eq!(annotations["team"], "maintenance", "{annotations}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A crash loses no alert: rows acknowledged just before a `kill -9`, which the rule had not
/// read yet, are evaluated after the restart (it resumes where it stopped, not at "now"), and
/// a pending alert keeps counting its `for` without a fresh row, as a device that reports
/// only on change never sends one.
#[test]
fn a_crash_loses_neither_unread_rows_nor_pending_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = r#"
[[alerting.rules]]
name = "level-high"
table = "tank"
value = "level"
key = "device"
condition = "above"
threshold = 5
interval = "200ms"

[[alerting.rules]]
name = "level-held"
table = "tank"
value = "level"
key = "device"
condition = "above"
threshold = 50
for = "6s"
interval = "200ms"
"#;
    let p = start_configured(dir.path(), config);
    let write = |url: &str, rows: &str| {
        assert_eq!(crate::support::post_status(url, "/api/v1/write", rows), 200);
    };
    // Pending under `level-held` (and firing under `level-high`), then a crash.
    write(&p.url, &format!("tank,device=t-1 level=80 {}\n", now_ns()));
    eventually("t-1 is pending under level-held", || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?state=pending&rule=level-held",
            None,
        );
        alerts.as_array().is_some_and(|a| a.len() == 1)
    });
    // t-2's row is acknowledged and the process killed before the rule's next read.
    write(&p.url, &format!("tank,device=t-2 level=9 {}\n", now_ns()));
    p.kill9();

    let p = start_configured(dir.path(), config);
    eventually("t-1 fires under level-held, t-2 under level-high", || {
        let firing: Vec<(String, String)> = firing_alerts(&p.url)
            .iter()
            .map(|a| {
                (
                    a["rule"].as_str().unwrap_or_default().to_owned(),
                    a["key"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        firing.contains(&("level-held".into(), "t-1".into()))
            && firing.contains(&("level-high".into(), "t-2".into()))
    });
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// Nothing leaves an alert stuck: a row dated a year ahead (a device clock reset) does not
/// hide the key's later rows, and a configured rule that watches something else after a
/// restart resolves the alerts of what it watched before. A DELETE takes no dry run.
#[test]
fn neither_a_clock_a_year_ahead_nor_a_rule_changed_while_down_leaves_alerts_stuck() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = |filter: &str| {
        format!(
            "[[alerting.rules]]\nname = \"level-high\"\ntable = \"tank\"\nvalue = \"level\"\n\
             condition = \"above\"\nthreshold = 5\ninterval = \"200ms\"\n{filter}"
        )
    };
    let p = start_configured(dir.path(), &rule(""));
    let write = |url: &str, rows: &str| {
        assert_eq!(crate::support::post_status(url, "/api/v1/write", rows), 200);
    };
    let year = 365 * 24 * 3600 * SECOND;
    write(
        &p.url,
        &format!("tank,device=t-9 level=1 {}\n", now_ns() + year),
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    write(
        &p.url,
        &format!(
            "tank,device=t-9 level=9 {now}\ntank,device=t-8 level=9 {now}\n",
            now = now_ns()
        ),
    );
    let firing_keys = |url: &str| -> Vec<String> {
        let mut keys: Vec<String> = firing_alerts(url)
            .iter()
            .map(|a| a["key"].as_str().unwrap_or_default().to_owned())
            .collect();
        keys.sort();
        keys
    };
    eventually("both fire", || firing_keys(&p.url) == ["t-8", "t-9"]);
    let (status, error) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/alert-rules/level-high?dry_run=true",
        None,
    );
    assert_eq!(status, 400, "{error}");
    let (status, _) = p.terminate();
    assert!(status.success());

    let p = start_configured(dir.path(), &rule("filter = \"device = 'none'\"\n"));
    eventually("the old alerts resolve", || firing_keys(&p.url).is_empty());
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A report-by-exception table (rows carry only the signal that changed): with
/// `fill = "previous"` an expression over two signals takes each one's last reported value,
/// also one reported before the rule was defined; without it such rows have no value.
#[test]
fn an_expression_over_signals_reported_by_exception_fills_in_their_last_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(dir.path(), "");
    let write = |rows: &str| {
        assert_eq!(
            crate::support::post_status(&p.url, "/api/v1/write", rows),
            200
        );
    };
    let t0 = now_ns();
    write(&format!("line,device=filler-1 good=100,rejects=1 {t0}\n"));
    let rule = |name: &str, fill: Option<&str>| {
        let mut rule = serde_json::json!({
            "name": name,
            "table": "line",
            "value": "CAST(rejects AS DOUBLE) / good * 100",
            "condition": "above",
            "threshold": 5,
            "interval": "200ms",
        });
        if let Some(fill) = fill {
            rule["fill"] = fill.into();
        }
        let (status, body) = http(
            &p.url,
            reqwest::Method::PUT,
            &format!("/api/v1/alert-rules/{name}"),
            Some(rule),
        );
        assert_eq!(status, 201, "{body}");
    };
    rule("scrap-filled", Some("previous"));
    rule("scrap-sparse", None);
    let (status, error) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/beat?dry_run=true",
        Some(serde_json::json!({
            "table": "line", "value": "1", "condition": "absent", "threshold": 5,
            "fill": "previous",
        })),
    );
    assert_eq!(status, 400, "{error}");
    // A heartbeat expecting the devices of a site no device is registered at watches nobody.
    let (status, dry) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/beat?dry_run=true",
        Some(serde_json::json!({
            "table": "line", "value": "1", "condition": "absent", "threshold": 5,
            "expect": {"site": "no-such-site"},
        })),
    );
    assert_eq!(status, 200, "{dry}");
    assert!(
        dry["warnings"]
            .to_string()
            .contains("`expect` matches no registered"),
        "{dry}"
    );
    // A proposed action (decision 0092) on a point no connector declares writable is taken,
    // with a warning: applying it would be refused.
    let (status, dry) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/hot-line?dry_run=true",
        Some(serde_json::json!({
            "table": "line", "value": "temp", "condition": "above", "threshold": 90,
            "action": {"signal": "heater", "value": false},
        })),
    );
    assert_eq!(status, 200, "{dry}");
    assert!(
        dry["warnings"].to_string().contains(
            "rule `hot-line` proposes setting `heater`, which no connector declares writable"
        ),
        "{dry}"
    );
    // Checked as it runs: over the filled page, where the table's name qualifies nothing.
    let (status, dry) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/qualified?dry_run=true",
        Some(serde_json::json!({
            "table": "line", "value": "\"line\".rejects / good", "condition": "above",
            "threshold": 5, "fill": "previous",
        })),
    );
    assert_eq!(status, 200, "{dry}");
    assert!(
        dry["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("does not fit")),
        "{dry}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Rejects climb to 8 % of the good count, which is not reported again.
    write(&format!("line,device=filler-1 rejects=8 {}\n", now_ns()));
    eventually("the filled rule fires", || {
        firing_alerts(&p.url)
            .iter()
            .any(|a| a["rule"] == "scrap-filled" && a["value"] == 8.0)
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sparse: Vec<serde_json::Value> = firing_alerts(&p.url)
        .into_iter()
        .filter(|a| a["rule"] == "scrap-sparse")
        .collect();
    assert!(sparse.is_empty(), "{sparse:?}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// The alerts firing now.
fn firing_alerts(url: &str) -> Vec<serde_json::Value> {
    let (_, alerts) = http(
        url,
        reqwest::Method::GET,
        "/api/v1/alerts?state=firing",
        None,
    );
    alerts.as_array().cloned().unwrap_or_default()
}

/// Alert rules defined through the API: checked field by field (the value as SQL), dry-run
/// warnings about the table, a firing alert that carries over a replacement and a restart
/// without a second notification, and a removal that resolves it and tells the receiver. The
/// configuration file's rule cannot be changed through the API. The CLI reads a rules file.
#[test]
fn alert_rules_are_defined_replaced_and_removed_at_run_time() {
    let receiver = Receiver::start();
    receiver.accept.store(true, Ordering::SeqCst);
    // Two routed receivers: one for pump-a's alerts only, one for `info` alerts only.
    let pump_a = Receiver::start();
    pump_a.accept.store(true, Ordering::SeqCst);
    let info_only = Receiver::start();
    info_only.accept.store(true, Ordering::SeqCst);
    let config = format!(
        "{}\n[[alerting.notifiers]]\nname = \"pump-a-team\"\nurl = \"{}\"\n\
         devices = [\"pump-a\"]\n\
         \n[[alerting.notifiers]]\nname = \"info-log\"\nurl = \"{}\"\n\
         severities = [\"info\"]\n\
         \n[[alerting.rules]]\nname = \"configured\"\ntable = \"pump\"\n\
         value = \"pressure\"\ncondition = \"above\"\nthreshold = 100\n",
        notifier(&receiver.url),
        pump_a.url,
        info_only.url
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(dir.path(), &config);
    let put = |url: &str, path: &str, body: serde_json::Value| {
        http(url, reqwest::Method::PUT, path, Some(body))
    };
    let hot = |threshold: f64, severity: &str| {
        serde_json::json!({
            "name": "hot", "table": "pump", "value": "pressure", "condition": "above",
            "threshold": threshold, "severity": severity, "interval": "200ms",
            "start": "earliest",
            "annotations": { "summary": "{device} at {value} bar", "runbook": "vent {device}" },
        })
    };

    let (status, rules) = http(&p.url, reqwest::Method::GET, "/api/v1/alert-rules", None);
    assert_eq!(status, 200);
    assert_eq!(rules[0]["name"], "configured", "{rules}");
    assert_eq!(rules[0]["origin"], "config", "{rules}");
    // `starting` until its first evaluation, which finds no table yet.
    eventually("the configured rule waits for its table", || {
        let rules = http(&p.url, reqwest::Method::GET, "/api/v1/alert-rules", None).1;
        rules[0]["health"] == "waiting"
    });

    // Refused: a value that is not one SQL expression, the configuration file's rule.
    let mut broken = hot(3.0, "warning");
    broken["value"] = "pressure >".into();
    let (status, error) = put(&p.url, "/api/v1/alert-rules/hot", broken);
    assert_eq!(status, 400, "{error}");
    assert!(error.to_string().contains("value"), "{error}");
    let mut smuggled = hot(3.0, "warning");
    smuggled["value"] = "1) AS v FROM other --".into();
    let (status, error) = put(&p.url, "/api/v1/alert-rules/hot", smuggled);
    assert_eq!(status, 400, "{error}");
    let mut configured = hot(3.0, "warning");
    configured["name"] = "configured".into();
    let (status, error) = put(&p.url, "/api/v1/alert-rules/configured", configured);
    assert_eq!(status, 409, "{error}");

    // A dry run warns of the missing table, then of a column the table does not have.
    let (status, dry) = put(
        &p.url,
        "/api/v1/alert-rules/hot?dry_run=true",
        hot(3.0, "warning"),
    );
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["action"], "define");
    assert!(
        dry["warnings"][0].as_str().unwrap_or("").contains("`pump`"),
        "{dry}"
    );
    let now = now_ns();
    let rows =
        format!("pump,device=pump-a pressure=5 {now}\npump,device=pump-b pressure=1 {now}\n");
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &rows),
        200
    );
    let mut misspelt = hot(3.0, "warning");
    misspelt["value"] = "presure * 2".into();
    let (status, dry) = put(&p.url, "/api/v1/alert-rules/hot?dry_run=true", misspelt);
    assert_eq!(status, 200, "{dry}");
    assert!(
        dry["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("presure"),
        "{dry}"
    );
    let listed = http(&p.url, reqwest::Method::GET, "/api/v1/alert-rules", None).1;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "a dry run defines nothing: {listed}"
    );
    // The path names the rule; the body need not repeat it.
    let mut nameless = hot(3.0, "warning");
    nameless.as_object_mut().map(|fields| fields.remove("name"));
    let (status, dry) = put(&p.url, "/api/v1/alert-rules/hot?dry_run=true", nameless);
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["name"], "hot", "{dry}");
    let mut other = hot(3.0, "warning");
    other["name"] = "other".into();
    let (status, checked) = put(
        &p.url,
        "/api/v1/alert-rules?dry_run=true",
        serde_json::json!([hot(3.0, "warning"), other]),
    );
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked[1]["name"], "other", "{checked}");
    assert_eq!(checked[1]["action"], "define", "{checked}");
    let listed = http(&p.url, reqwest::Method::GET, "/api/v1/alert-rules", None).1;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "a dry run of a list defines nothing: {listed}"
    );

    // Applied despite the warning (a column may come later), it shows why it fails, on the
    // board and in the metrics, until it is removed.
    let mut typo = hot(3.0, "warning");
    typo["name"] = "typo".into();
    typo["value"] = "presure * 2".into();
    typo["annotations"] = serde_json::json!({});
    let (status, defined) = put(&p.url, "/api/v1/alert-rules/typo", typo);
    assert_eq!(status, 201, "{defined}");
    let problem = "fabrik_alert_rule_problem{rule=\"typo\"}";
    eventually("the typo shows as failing", || {
        let shown = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alert-rules/typo",
            None,
        )
        .1;
        shown["health"] == "failing"
            && shown["error"].as_str().unwrap_or("").contains("presure")
            && crate::support::metric(&p.url, problem) == Some(1.0)
    });
    let (status, _) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/alert-rules/typo",
        None,
    );
    assert_eq!(status, 204);
    assert_eq!(crate::support::metric(&p.url, problem), Some(0.0));

    // Defined: it evaluates the stored rows and pump-a fires, once.
    let (status, defined) = put(&p.url, "/api/v1/alert-rules/hot", hot(3.0, "warning"));
    assert_eq!(status, 201, "{defined}");
    assert_eq!(defined["origin"], "api");
    eventually("pump-a fires", || firing_alerts(&p.url).len() == 1);
    let alert = firing_alerts(&p.url).remove(0);
    assert_eq!(alert["key"], "pump-a");
    assert_eq!(
        alert["annotations"]["summary"], "pump-a at 5 bar",
        "{alert}"
    );
    assert_eq!(alert["annotations"]["runbook"], "vent pump-a", "{alert}");
    let id = alert["id"].as_str().expect("id").to_owned();
    eventually("the firing is delivered", || {
        receiver.delivered().len() == 1
    });
    let delivered = &receiver.delivered()[0]["alerts"][0]["annotations"];
    assert_eq!(delivered["summary"], "pump-a at 5 bar", "{delivered}");
    let shown = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/alert-rules/hot",
        None,
    )
    .1;
    assert_eq!(
        (shown["health"].as_str(), shown["firing"].as_u64()),
        (Some("ok"), Some(1)),
        "{shown}"
    );
    assert!(shown["rows"].as_u64() >= Some(2), "{shown}");

    // Replaced: the firing alert carries over, under the same id. Its severity is a label:
    // the receiver hears the warning resolve and the critical one fire, once each.
    let (status, replaced) = put(&p.url, "/api/v1/alert-rules/hot", hot(4.0, "critical"));
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["definition"]["severity"], "critical");
    std::thread::sleep(std::time::Duration::from_secs(2)); // ten evaluations of the new one
    let still = firing_alerts(&p.url);
    assert_eq!(still.len(), 1, "{still:?}");
    assert_eq!(still[0]["id"], id.as_str());
    let relabelled: Vec<(String, String)> = receiver
        .delivered()
        .iter()
        .map(|body| {
            let alert = &body["alerts"][0];
            (
                alert["labels"]["severity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                alert["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        relabelled,
        [
            ("warning".to_owned(), "firing".to_owned()),
            ("warning".to_owned(), "resolved".to_owned()),
            ("critical".to_owned(), "firing".to_owned()),
        ]
    );

    // Kept across a restart, still firing under the same id.
    let (status, _) = p.terminate();
    assert!(status.success());
    let stored = std::fs::read_to_string(dir.path().join("data/alert_rules.json")).expect("stored");
    assert!(stored.contains("\"critical\""), "{stored}");
    let p = start_configured(dir.path(), &config);
    let shown = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/alert-rules/hot",
        None,
    )
    .1;
    assert_eq!(shown["origin"], "api", "{shown}");
    let still = firing_alerts(&p.url);
    assert_eq!(still.len(), 1, "{still:?}");
    assert_eq!(still[0]["id"], id.as_str());

    // Replaced by one that watches another value: the old alert resolves before the answer
    // (the receiver is told) and the new definition starts afresh, from new rows.
    let mut scaled = hot(40.0, "critical");
    scaled["value"] = "pressure * 10".into();
    scaled["start"] = "now".into();
    // A dry run says so first.
    let (status, dry) = put(
        &p.url,
        "/api/v1/alert-rules/hot?dry_run=true",
        scaled.clone(),
    );
    assert_eq!(status, 200, "{dry}");
    assert!(
        dry["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("its 1 open alert(s) resolve")))),
        "{dry}"
    );
    let (status, replaced) = put(&p.url, "/api/v1/alert-rules/hot", scaled);
    assert_eq!(status, 200, "{replaced}");
    let resolved = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{id}"),
        None,
    )
    .1;
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    let later = now_ns();
    let row = format!("pump,device=pump-a pressure=6 {later}\n");
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &row),
        200
    );
    eventually("the new definition fires", || {
        firing_alerts(&p.url).iter().any(|a| a["value"] == 60.0)
    });
    let id = firing_alerts(&p.url).remove(0)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let statuses = || -> Vec<String> {
        receiver
            .delivered()
            .iter()
            .map(|body| body["status"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    eventually("resolved, then firing anew, delivered", || {
        statuses() == ["firing", "resolved", "firing", "resolved", "firing"]
    });

    let gauge = "fabrik_alerts_firing{rule=\"hot\",severity=\"critical\"}";
    eventually("the firing gauge counts it", || {
        crate::support::metric(&p.url, gauge) == Some(1.0)
    });

    // Removed: the alert resolves and the receiver hears of it; the rule is gone.
    let (status, _) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/alert-rules/hot",
        None,
    );
    assert_eq!(status, 204);
    let resolved = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{id}"),
        None,
    )
    .1;
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    eventually("the resolution is delivered", || statuses().len() == 6);
    assert_eq!(statuses()[5], "resolved");
    // Its firing gauge reads 0, not the last value it had.
    eventually("the removed rule's gauge reads 0", || {
        crate::support::metric(&p.url, gauge) == Some(0.0)
    });
    let (status, _) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/alert-rules/hot",
        None,
    );
    assert_eq!(status, 404);
    let (status, _) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/alert-rules/configured",
        None,
    );
    assert_eq!(status, 409);

    // The CLI: a rules file checked, then applied; one bad entry applies nothing.
    let file = dir.path().join("rules.toml");
    std::fs::write(
        &file,
        "[[rules]]\nname = \"low\"\ntable = \"pump\"\nvalue = \"pressure\"\n\
         condition = \"below\"\nthreshold = 2\n\n\
         [[rules]]\nname = \"bad\"\ntable = \"pump\"\nvalue = \"pressure\"\n\
         condition = \"sideways\"\nthreshold = 2\n",
    )
    .expect("rules file");
    let path = file.to_str().expect("utf-8");
    let (ok, out) = crate::support::client_command(&p.url, &["alert", "rule", "apply", path]);
    assert!(!ok, "{out}");
    assert!(out.contains("bad") && out.contains("condition"), "{out}");
    let rules = http(&p.url, reqwest::Method::GET, "/api/v1/alert-rules", None).1;
    assert_eq!(
        rules.as_array().map(Vec::len),
        Some(1),
        "nothing applied: {rules}"
    );
    std::fs::write(
        &file,
        "[[rules]]\nname = \"low\"\ntable = \"pump\"\nvalue = \"pressure\"\n\
         condition = \"below\"\nthreshold = 2\ninterval = \"200ms\"\nstart = \"earliest\"\n",
    )
    .expect("rules file");
    let (ok, out) = crate::support::client_command(&p.url, &["alert", "rule", "apply", path]);
    assert!(ok, "{out}");
    assert!(out.contains("defined low"), "{out}");
    eventually("pump-b is low", || {
        firing_alerts(&p.url)
            .iter()
            .any(|a| a["rule"] == "low" && a["key"] == "pump-b")
    });
    let (ok, out) = crate::support::client_command(&p.url, &["alert", "rules"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("low") && out.contains("configured") && out.contains("2 rule(s)"),
        "{out}"
    );
    // Routes: pump-b's alert reached the unrouted receiver, not pump-a's team; no alert was
    // `info`, so its receiver heard nothing.
    eventually("pump-b's alert is delivered", || {
        receiver
            .delivered()
            .iter()
            .any(|body| body["alerts"][0]["labels"]["device"] == "pump-b")
    });
    let devices: Vec<serde_json::Value> = pump_a
        .delivered()
        .iter()
        .map(|body| body["alerts"][0]["labels"]["device"].clone())
        .collect();
    assert!(
        !devices.is_empty() && devices.iter().all(|d| d == "pump-a"),
        "{devices:?}"
    );
    assert_eq!(info_only.attempts(), 0);
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// The oven rules of the inhibition test: `oven-hot` (a consequence) and `oven-door-open` (its
/// cause), and, with a `source`, an inhibition of `oven-hot` and the API's `oven-smoke`.
fn oven_inhibition_config(source: Option<&str>, receiver_url: &str) -> String {
    let inhibition = source.map_or(String::new(), |source| {
        format!(
            r#"
[[alerting.inhibitions]]
source = "{source}"
targets = ["oven-hot", "oven-smoke"]
"#
        )
    });
    format!(
        r#"
[[alerting.rules]]
name = "oven-hot"
table = "oven"
value = "celsius"
condition = "above"
threshold = 80.0
clear = 70.0
interval = "200ms"
start = "earliest"

[[alerting.rules]]
name = "oven-door-open"
table = "oven"
value = "door"
condition = "above"
threshold = 0.5
interval = "200ms"
start = "earliest"
{inhibition}{notifier}"#,
        notifier = notifier(receiver_url)
    )
}

/// An open oven door is the cause; the temperature alarm it raises on that oven is held back
/// (listed with `inhibited_by`, not notified), another oven's is not, and once the door is
/// closed an oven still hot is notified. A misspelt rule in an inhibition stops the start
/// with the name and where it is, and an API rule an inhibition names cannot be removed
/// (the next start would refuse the inhibition).
#[test]
fn an_inhibition_holds_back_a_root_causes_consequences_until_it_resolves() {
    let receiver = Receiver::start();
    receiver.accept.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("fabrik.toml");
    let run_with = |source: Option<&str>| {
        std::fs::write(&config, oven_inhibition_config(source, &receiver.url)).expect("config");
        ["--config", config.to_str().expect("utf-8")]
    };

    // An API rule the inhibition will name.
    let p = Process::start_with_args(&data, &run_with(None), &[]);
    let smoke = serde_json::json!({
        "table": "oven", "value": "smoke", "condition": "above", "threshold": 0.5,
        "interval": "200ms",
    });
    let (status, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/oven-smoke",
        Some(smoke),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = p.terminate();
    assert!(status.success());

    let out = std::process::Command::new(crate::support::fabrik_bin())
        .arg("run")
        .args(run_with(Some("oven-dor-open")))
        .env("FABRIK__STORE__DATA_DIR", &data)
        .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
        .env("FABRIK__MQTT__LISTEN", "127.0.0.1:0")
        .env("FABRIK__AUTH__ADMIN_TOKEN", crate::support::TOKEN)
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("alerting.inhibitions[0]") && said.contains("`oven-dor-open`"),
        "{said}"
    );

    let p = Process::start_with_args(&data, &run_with(Some("oven-door-open")), &[]);
    let (status, body) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/alert-rules/oven-smoke",
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body.to_string().contains("alerting.inhibitions[0]"),
        "{body}"
    );
    let now = now_ns();
    let write = |body: String| {
        assert_eq!(
            crate::support::post_status(&p.url, "/api/v1/write", &body),
            200
        )
    };
    write(format!(
        "oven,device=oven-1 door=1,celsius=60 {now}\noven,device=oven-2 door=0,celsius=60 {now}\n"
    ));
    eventually("the door alert is delivered", || {
        receiver
            .delivered()
            .iter()
            .any(|b| b["alerts"][0]["labels"]["alertname"] == "oven-door-open")
    });
    write(format!(
        "oven,device=oven-1 door=1,celsius=95 {t}\noven,device=oven-2 door=0,celsius=95 {t}\n",
        t = now + SECOND
    ));
    let firing_hot = || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?state=firing&rule=oven-hot",
            None,
        );
        alerts.as_array().cloned().unwrap_or_default()
    };
    let hot_deliveries = |device: &str| {
        receiver
            .delivered()
            .iter()
            .filter(|b| {
                b["alerts"][0]["labels"]["alertname"] == "oven-hot"
                    && b["alerts"][0]["labels"]["device"] == device
            })
            .count()
    };
    eventually("both ovens' temperature alerts fire", || {
        firing_hot().len() == 2
    });
    eventually("oven-2's is delivered", || hot_deliveries("oven-2") == 1);
    let alerts = firing_hot();
    let by_device = |device: &str| {
        alerts
            .iter()
            .find(|a| a["key"] == device)
            .cloned()
            .unwrap_or_else(|| panic!("no alert of {device}: {alerts:?}"))
    };
    let (oven_1, oven_2) = (by_device("oven-1"), by_device("oven-2"));
    assert!(
        oven_1["inhibited_by"]
            .as_str()
            .is_some_and(|id| id.starts_with("oven-door-open~oven-1~")),
        "{oven_1}"
    );
    assert_eq!(oven_1["silenced"], true, "{oven_1}");
    assert!(oven_2["inhibited_by"].is_null(), "{oven_2}");
    assert_eq!(hot_deliveries("oven-1"), 0, "held back");
    let (_, one) = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{}", oven_1["id"].as_str().expect("id")),
        None,
    );
    assert_eq!(one["inhibited_by"], oven_1["inhibited_by"], "{one}");

    // The door closes while oven-1 is still hot: its temperature alert is notified now.
    write(format!(
        "oven,device=oven-1 door=0,celsius=95 {}\n",
        now + 2 * SECOND
    ));
    eventually("oven-1's temperature alert is delivered", || {
        hot_deliveries("oven-1") == 1
    });
    assert_eq!(hot_deliveries("oven-2"), 1);
}

/// Model decay from operators' feedback: an `error_rate` rule on `alert_labels` (1 = an alert
/// called false) fires for the pipeline whose alerts turned mostly false, not for the one
/// whose share of false alarms held.
#[test]
fn operators_calling_alerts_false_more_often_fires_an_error_rate_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(
        dir.path(),
        r#"
[[alerting.rules]]
name = "model-decay"
table = "alert_labels"
value = "CASE WHEN true_positive THEN 0 ELSE 1 END"
key = "pipeline"
condition = "error_rate"
threshold = 0.001
severity = "warning"
interval = "200ms"
start = "earliest"
"#,
    );
    // 400 labels a pipeline, a minute apart, a day ago: one in ten false throughout on
    // `steady`; on `decaying`, one in two from the 200th.
    let start = now_ns() - 86_400_000_000_000;
    let mut lines = String::new();
    for i in 0..400_i64 {
        let time = start + i * 60_000_000_000;
        let false_every = |every: i64, offset: i64| ((i + offset) * 7919 + 3) % every == 0;
        for (pipeline, called_false) in [
            ("steady", false_every(10, 0)),
            ("decaying", false_every(if i >= 200 { 2 } else { 10 }, 1)),
        ] {
            lines.push_str(&format!(
                "alert_labels,device=pump-1,pipeline={pipeline} alert_id=\"{pipeline}-{i}\",\
                 true_positive={},by=\"op\" {time}\n",
                !called_false
            ));
        }
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &lines),
        200
    );
    // HDDM_A starts afresh after a drift, and the higher rate is then its normal: by the time
    // all 400 are read, the alert has fired and resolved (30 labels later).
    let alerts = || crate::support::alerts_of(&p.url, "model-decay");
    eventually("the decaying pipeline's alert fires and resolves", || {
        alerts().iter().any(|a| a["state"] == "resolved")
    });
    let decay = alerts();
    let keys: Vec<&str> = decay
        .iter()
        .map(|a| a["key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["decaying"], "{decay:?}");
    // It fired after the decay began (its start is the label's time), not before.
    let started = decay[0]["started_at"].as_str().expect("started_at");
    let started_ns = chrono::DateTime::parse_from_rfc3339(started)
        .expect("RFC 3339")
        .timestamp_nanos_opt()
        .expect("in range");
    assert!(
        started_ns >= start + 200 * 60_000_000_000,
        "started {started}"
    );
    // A confidence outside (0, 1) and a `for` are refused, each named.
    let rule = |threshold: f64, for_duration: &str| {
        serde_json::json!({
            "name": "decay-2", "table": "alert_labels", "key": "pipeline",
            "value": "CASE WHEN true_positive THEN 0 ELSE 1 END",
            "condition": "error_rate", "threshold": threshold, "for": for_duration,
            "severity": "warning",
        })
    };
    let with_detector = |detector: &str, threshold: f64, condition: &str| {
        let mut body = rule(threshold, "0s");
        body["detector"] = detector.into();
        body["condition"] = condition.into();
        body
    };
    for (body, field) in [
        (rule(1.5, "0s"), "threshold"),
        (rule(0.001, "5m"), "for"),
        (with_detector("adwin", 0.001, "error_rate"), "detector"),
        // A confidence for HDDM_A, DDM's level in deviations: not the other way round.
        (with_detector("hddm_a", 3.0, "error_rate"), "threshold"),
    ] {
        let (code, error) = http(
            &p.url,
            reqwest::Method::PUT,
            "/api/v1/alert-rules/decay-2",
            Some(body),
        );
        assert_eq!(code, 400, "{error}");
        let text = error.to_string();
        assert!(
            text.contains(field) && text.contains("error_rate"),
            "{field}: {text}"
        );
    }
    let (code, error) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/decay-2",
        Some(with_detector("ddm", 0.001, "above")),
    );
    assert_eq!(code, 400, "{error}");
    assert!(
        error
            .to_string()
            .contains("only `error_rate` rules choose a detector"),
        "{error}"
    );
    // DDM at river's drift level of 3 deviations is taken, and runs over the same labels.
    let (code, answer) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/alert-rules/decay-ddm",
        Some({
            let mut body = with_detector("ddm", 3.0, "error_rate");
            body["name"] = "decay-ddm".into();
            body["start"] = "earliest".into();
            body["interval"] = "200ms".into();
            body
        }),
    );
    assert!((200..300).contains(&code), "{answer}");
    eventually("the DDM rule fires on the decaying pipeline", || {
        crate::support::alerts_of(&p.url, "decay-ddm")
            .iter()
            .any(|a| a["key"] == "decaying")
    });
    assert!(
        crate::support::alerts_of(&p.url, "decay-ddm")
            .iter()
            .all(|a| a["key"] == "decaying")
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}
