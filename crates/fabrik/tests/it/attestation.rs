//! Device attestation end to end (decision 0050): a software TPM (swtpm) and tpm2-tools play the
//! device, `fabrik device attestation quote` its agent; a real `fabrik run` verifies the quotes
//! and its MQTT endpoint lets in only devices whose last quote passed.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use reqwest::Method;

use crate::mqtt::{host_port, http, mosquitto};
use crate::support::{Peer, Process, fabrik_bin, free_port};

/// Where the device keeps its attestation key in the TPM.
const AK_HANDLE: &str = "0x81010002";

/// A software TPM 2.0 on a free port, reset and started.
struct Tpm {
    _peer: Peer,
    tcti: String,
    /// swtpm's control channel: power cycles.
    ctrl: u16,
}

impl Tpm {
    fn start(state: &Path) -> Tpm {
        // tpm2-tss's swtpm TCTI finds the control channel on the next port.
        let port = (0..100)
            .map(|_| free_port())
            .find(|p| *p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
            .expect("two free ports in a row");
        let ctrl = port + 1;
        let mut command = Command::new("swtpm");
        command
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"));
        let peer = Peer::listening(
            command,
            port,
            "swtpm must be installed (apt install swtpm tpm2-tools libtss2-tcti-swtpm0)",
        );
        Tpm {
            _peer: peer,
            tcti: format!("swtpm:host=127.0.0.1,port={port}"),
            ctrl,
        }
    }

    /// Runs a tpm2-tools command against this TPM; it must succeed.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        // Bounded: a TPM that stops answering fails the test instead of hanging it.
        let out = Command::new("timeout")
            .arg("60")
            .arg(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .unwrap_or_else(|e| panic!("{tool} must be installed (apt install tpm2-tools): {e}"));
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
        out
    }

    /// Measures something into a PCR, as a boot stage does.
    fn extend(&self, pcr: u32, what: &str) {
        use sha2::Digest as _;
        let digest: String = sha2::Sha256::digest(what.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.run("tpm2_pcrextend", &[&format!("{pcr}:sha256={digest}")]);
    }

    /// A reboot: the TPM is reset (swtpm's CMD_INIT on its control channel) and started
    /// afresh, its PCRs cleared, its boot count one higher, its persistent keys kept.
    fn reboot(&self) {
        use std::io::{Read, Write};
        let mut ctrl = std::net::TcpStream::connect(("127.0.0.1", self.ctrl)).expect("ctrl");
        ctrl.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).expect("CMD_INIT");
        let mut result = [0u8; 4];
        ctrl.read_exact(&mut result).expect("CMD_INIT result");
        assert_eq!(result, [0; 4], "CMD_INIT failed");
        // swtpm serves one control connection at a time, and the TCTI opens its own.
        drop(ctrl);
        self.run("tpm2_startup", &["-c"]);
    }

    /// No resource manager sits between tpm2-tools and swtpm: transient objects left loaded
    /// by one command are flushed before the next needs the room.
    fn flush(&self) {
        self.run("tpm2_flushcontext", &["-t"]);
    }
}

/// `fabrik device attestation quote` as the device runs it: its own id and token, the TPM
/// chosen by `TPM2TOOLS_TCTI`, no admin token anywhere.
fn agent(tpm: &Tpm, url: &str, id: &str, token: &str, empty: &Path) -> Output {
    let out = Command::new(fabrik_bin())
        .args([
            "device",
            "attestation",
            "quote",
            id,
            "--pcrs",
            "sha256:0,1,2,3,4,7",
        ])
        .args(["--ak", AK_HANDLE])
        .args(["--url", url])
        .arg("--data-dir")
        .arg(empty)
        .env("FABRIK_DEVICE_TOKEN", token)
        .env_remove("FABRIK_TOKEN")
        .env("TPM2TOOLS_TCTI", &tpm.tcti)
        .output()
        .expect("fabrik device attestation quote");
    tpm.flush();
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Connects and publishes one reading at QoS 1: acknowledged once stored.
fn publish(mqtt: &str, id: &str, token: &str) -> Output {
    let (h, p) = host_port(mqtt);
    mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            &h,
            "-p",
            &p,
            "-q",
            "1",
            "-u",
            id,
            "-P",
            token,
            "-t",
            &format!("devices/{id}/telemetry"),
            "-m",
            r#"{"temperature": 41.5}"#,
        ],
    )
}

/// A client process that must not outlive a failed test.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device's own HTTP call (Basic: its id and token).
fn device_post(
    url: &str,
    path: &str,
    user: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    crate::support::send_blocking_json(|client| {
        client
            .post(format!("{url}{path}"))
            .basic_auth(user, Some(token))
            .json(&body)
    })
}

#[test]
fn only_a_device_whose_tpm_quote_matches_its_reference_values_connects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("tpm");
    let empty = dir.path().join("no-admin-token");
    std::fs::create_dir_all(&state).expect("tpm dir");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let tpm = Tpm::start(&state);
    // The device boots: firmware, boot loader, kernel... measured into PCRs 0-7.
    for pcr in 0..8 {
        tpm.extend(pcr, &format!("gateway firmware 1.4 stage {pcr}"));
    }
    let ek = dir.path().join("ek.ctx");
    let ak = dir.path().join("ak.ctx");
    let ak_pem = dir.path().join("ak.pem");
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    tpm.run("tpm2_createek", &["-c", &path(&ek), "-G", "ecc"]);
    tpm.run(
        "tpm2_createak",
        &[
            "-C",
            &path(&ek),
            "-c",
            &path(&ak),
            "-G",
            "ecc",
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-u",
            &path(&ak_pem),
            "-f",
            "pem",
        ],
    );
    tpm.flush();
    // Kept in the TPM under a persistent handle, as on a device: a context file of a
    // transient key does not survive the TPM's reset at a reboot.
    tpm.run(
        "tpm2_evictcontrol",
        &["-C", "o", "-c", &path(&ak), AK_HANDLE],
    );
    tpm.flush();

    let p = Process::start(&dir.path().join("data"), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt address");
    let (status, body) = http(
        &p.url,
        Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": "gw-1", "type": "gateway"})),
    );
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let (_, other) = http(
        &p.url,
        Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": "gw-2", "type": "gateway"})),
    );
    let other_token = other["token"].as_str().expect("token").to_owned();

    // No key enrolled: the device connects as any other.
    assert!(publish(&mqtt, "gw-1", &token).status.success());

    // Enrolled: from now on it must attest first.
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "attestation",
            "enrol",
            "gw-1",
            "--public-key",
            &path(&ak_pem),
        ],
    );
    assert!(ok, "{out}");
    let refused = publish(&mqtt, "gw-1", &token);
    assert!(!refused.status.success(), "{refused:?}");

    // A quote with no reference values for `gateway` yet: denied by default, and named.
    let out = agent(&tpm, &p.url, "gw-1", &token, &empty);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no reference values for device type `gateway`"),
        "{}",
        text(&out)
    );

    // The operator takes this known-good device's values as the type's reference.
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "attestation",
            "policy",
            "gateway",
            "--from-device",
            "gw-1",
        ],
    );
    assert!(ok, "{out}");
    let out = agent(&tpm, &p.url, "gw-1", &token, &empty);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("gw-1 attested"), "{}", text(&out));
    let sent = publish(&mqtt, "gw-1", &token);
    assert!(sent.status.success(), "{sent:?}");
    crate::mqtt::eventually(
        "both readings stored, the one before enrolment and the attested one",
        || crate::support::count_if_any(&p.url, "SELECT count(*) AS n FROM gateway") == Some(2),
    );

    // Another device's credentials do not open gw-1's challenge.
    let (status, _) = device_post(
        &p.url,
        "/api/v1/devices/gw-1/attestation/challenge",
        "gw-2",
        &other_token,
        serde_json::json!({}),
    );
    assert_eq!(status, 401);

    // The raw API: a quote answers its challenge once; sent again it is a replay.
    let (status, challenge) = device_post(
        &p.url,
        "/api/v1/devices/gw-1/attestation/challenge",
        "gw-1",
        &token,
        serde_json::json!({}),
    );
    assert_eq!(status, 200, "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("nonce");
    let file = |name: &str| dir.path().join(name);
    tpm.run(
        "tpm2_quote",
        &[
            "-c",
            AK_HANDLE,
            "-l",
            "sha256:0,1,2,3,4,7",
            "-q",
            nonce,
            "-g",
            "sha256",
            "-F",
            "values",
            "-m",
            &path(&file("q.msg")),
            "-s",
            &path(&file("q.sig")),
            "-o",
            &path(&file("q.pcrs")),
        ],
    );
    tpm.flush();
    let b64 = |name: &str| {
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(file(name)).expect("quote file"))
    };
    let evidence = serde_json::json!({
        "nonce": nonce, "quote": b64("q.msg"), "signature": b64("q.sig"), "pcrs": b64("q.pcrs"),
    });
    let evidence_path = "/api/v1/devices/gw-1/attestation/evidence";
    let (status, record) = device_post(&p.url, evidence_path, "gw-1", &token, evidence.clone());
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["passed"], true);
    let (status, replay) = device_post(&p.url, evidence_path, "gw-1", &token, evidence);
    assert_eq!(status, 403, "{replay}");
    assert!(
        replay["error"]
            .as_str()
            .expect("error")
            .contains("a replayed quote?"),
        "{replay}"
    );
    // A replay says nothing about the device: it may still connect.
    assert!(publish(&mqtt, "gw-1", &token).status.success());

    // The device stays connected, listening for its commands.
    let (h, port) = host_port(&mqtt);
    let mut listening = KilledOnDrop(
        Command::new("mosquitto_sub")
            .args(["-h", &h, "-p", &port, "-V", "mqttv5", "-i", "gw-1-listener"])
            .args(["-u", "gw-1", "-P", &token, "-t", "devices/gw-1/cmd/#"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub"),
    );
    crate::mqtt::eventually("the listener connected", || {
        let (_, d) = http(&p.url, Method::GET, "/api/v1/devices/gw-1", None);
        d["state"] == "online"
    });

    // The boot loader changes (a bootkit): the next quote fails naming PCR 4, and the device
    // is shut out.
    tpm.extend(4, "bootkit");
    let out = agent(&tpm, &p.url, "gw-1", &token, &empty);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("PCR 4 is"), "{}", text(&out));
    let refused = publish(&mqtt, "gw-1", &token);
    assert!(!refused.status.success(), "{refused:?}");
    // The connection it held is ended too, and it cannot come back.
    crate::mqtt::eventually("the held connection ended", || {
        matches!(listening.0.try_wait(), Ok(Some(_)))
    });
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "attestation", "status", "gw-1"]);
    assert!(ok, "{out}");
    assert!(out.contains("gw-1: may not connect"), "{out}");
    assert!(out.contains("PCR 4 is"), "{out}");
    let boot_count = |url: &str| {
        let (_, status) = http(url, Method::GET, "/api/v1/devices/gw-1/attestation", None);
        status["history"][0]["reset_count"]
            .as_u64()
            .expect("reset_count")
    };
    let before = boot_count(&p.url);

    // Reflashed and rebooted: the same firmware measured again, the key still in the TPM under
    // its handle. The device attests and is let back in; the verdict shows the new boot.
    tpm.reboot();
    for pcr in 0..8 {
        tpm.extend(pcr, &format!("gateway firmware 1.4 stage {pcr}"));
    }
    let out = agent(&tpm, &p.url, "gw-1", &token, &empty);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(boot_count(&p.url), before + 1);
    assert!(publish(&mqtt, "gw-1", &token).status.success());

    // The verdicts are in the device's history and the audit log, under the device's name.
    let (_, events) = http(&p.url, Method::GET, "/api/v1/devices/gw-1/events", None);
    let kinds: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"attested"), "{kinds:?}");
    assert!(kinds.contains(&"attestation_failed"), "{kinds:?}");
    assert!(kinds.contains(&"refused"), "{kinds:?}");
    assert!(kinds.contains(&"revoked"), "{kinds:?}");
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "disconnected" && e["detail"] == "attestation_revoked"),
        "{events}"
    );
    let (_, audit) = http(&p.url, Method::GET, "/api/v1/audit?limit=100", None);
    let evidence_entries: Vec<u64> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| {
            e["actor"] == "gw-1"
                && e["action"]
                    .as_str()
                    .is_some_and(|a| a.ends_with("/evidence"))
        })
        .filter_map(|e| e["status"].as_u64())
        .collect();
    assert!(
        evidence_entries.contains(&200) && evidence_entries.contains(&403),
        "{audit}"
    );
    // gw-2's attempt on gw-1's challenge is on record under the name it claimed.
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|e| e["actor"] == "gw-2"
                && e["status"] == 401
                && e["action"]
                    .as_str()
                    .is_some_and(|a| a.ends_with("/challenge"))),
        "{audit}"
    );
    drop(p);
}
