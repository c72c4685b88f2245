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
pub(crate) struct Tpm {
    _peer: Peer,
    pub(crate) tcti: String,
    /// swtpm's control channel: power cycles.
    ctrl: u16,
}

impl Tpm {
    pub(crate) fn start(state: &Path) -> Tpm {
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
    pub(crate) fn extend(&self, pcr: u32, what: &str) {
        use sha2::Digest as _;
        let digest: String = sha2::Sha256::digest(what.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.run("tpm2_pcrextend", &[&format!("{pcr}:sha256={digest}")]);
    }

    /// A reboot: the TPM is shut down as an operating system does, reset (swtpm's CMD_INIT
    /// on its control channel) and started afresh, its PCRs cleared, its boot count one
    /// higher, its persistent keys kept. Without the orderly shutdown the TPM counts each
    /// reset as a dictionary-attack failure, and after three refuses every key under an
    /// empty password for a while.
    pub(crate) fn reboot(&self) {
        self.run("tpm2_shutdown", &["-c"]);
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

/// Makes the device's attestation key (ECC, under the TPM's EK) and keeps it under
/// [`AK_HANDLE`], as provisioning does; returns the path of its public part (PEM).
fn persistent_ak(tpm: &Tpm, dir: &Path) -> std::path::PathBuf {
    let ek = dir.join("ek.ctx");
    let ak = dir.join("ak.ctx");
    let ak_pem = dir.join("ak.pem");
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
    ak_pem
}

/// `fabrik device attestation enrol` by the operator: whether it succeeded, and its output.
fn enrol(url: &str, id: &str, public_key: &Path) -> (bool, String) {
    crate::support::client_command(
        url,
        &[
            "device",
            "attestation",
            "enrol",
            id,
            "--public-key",
            public_key.to_str().expect("utf-8"),
        ],
    )
}

/// Registers device `gw-1` of type `gateway` and enrols its attestation key; returns its
/// token.
fn gateway_enrolled(url: &str, ak_pem: &Path) -> String {
    let (status, body) = http(
        url,
        Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": "gw-1", "type": "gateway"})),
    );
    assert_eq!(status, 201, "{body}");
    let (ok, out) = enrol(url, "gw-1", ak_pem);
    assert!(ok, "{out}");
    body["token"].as_str().expect("token").to_owned()
}

/// The operator takes `device`'s last quoted values as `device_type`'s reference; it must
/// succeed.
fn take_reference(url: &str, device_type: &str, device: &str) {
    let (ok, out) = crate::support::client_command(
        url,
        &[
            "device",
            "attestation",
            "policy",
            device_type,
            "--from-device",
            device,
        ],
    );
    assert!(ok, "{out}");
}

/// `fabrik device attestation quote` as the device runs it: its own id and token, the TPM
/// chosen by `TPM2TOOLS_TCTI`, no admin token anywhere.
fn agent(tpm: &Tpm, url: &str, id: &str, token: &str, empty: &Path) -> Output {
    agent_with(
        tpm,
        url,
        id,
        token,
        empty,
        &["--pcrs", "sha256:0,1,2,3,4,7"],
    )
}

/// [`agent`] with other options (PCRs, event log).
fn agent_with(
    tpm: &Tpm,
    url: &str,
    id: &str,
    token: &str,
    empty: &Path,
    options: &[&str],
) -> Output {
    let out = Command::new(fabrik_bin())
        .args(["device", "attestation", "quote", id])
        .args(options)
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
    let ak_pem = persistent_ak(&tpm, dir.path());
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();

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
    let (ok, out) = enrol(&p.url, "gw-1", &ak_pem);
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
    take_reference(&p.url, "gateway", "gw-1");
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

/// The TPM vendor's EK CA of the activation test: rcgen signs the EK certificates a TPM
/// manufacturer would have written into the TPM.
struct VendorCa {
    certificate: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl VendorCa {
    fn new(name: &str) -> VendorCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&key).expect("CA certificate");
        VendorCa {
            certificate,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// An EK certificate for the EK (RSA or ECC) whose `TPM2B_PUBLIC` is `ek_public` (DER).
    fn certify(&self, ek_public: &[u8]) -> Vec<u8> {
        use fabrik_registry::tpm::endorsement::{PublicArea, PublicKind};
        struct Ek(Vec<u8>, &'static rcgen::SignatureAlgorithm);
        impl rcgen::PublicKeyData for Ek {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                self.1
            }
        }
        let ek = PublicArea::parse(ek_public, "EK").expect("the EK's public area");
        let algorithm = match ek.key {
            PublicKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            PublicKind::Ecc { .. } => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        // tcg-kp-EKCertificate, as vendors' EK certificates name their purpose.
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
            2, 23, 133, 8, 1,
        ])];
        params
            .signed_by(&Ek(ek.subject_public_key(), algorithm), &self.issuer)
            .expect("EK certificate")
            .der()
            .to_vec()
    }
}

/// A device's TPM as it leaves the factory and the provisioning line: an EK (`rsa` or `ecc`)
/// whose certificate (by `vendor`) sits in the TCG's NV index for it (0x01c00002 or
/// 0x01c0000a), and an attestation key under [`AK_HANDLE`]. Returns the EK's `TPM2B_PUBLIC`.
fn provision(tpm: &Tpm, dir: &Path, vendor: &VendorCa, ek_algorithm: &str) -> Vec<u8> {
    let path = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
    let index = if ek_algorithm == "ecc" {
        "0x01c0000a"
    } else {
        "0x01c00002"
    };
    tpm.run(
        "tpm2_createek",
        &[
            "-c",
            &path("ek.ctx"),
            "-G",
            ek_algorithm,
            "-u",
            &path("ek.pub"),
        ],
    );
    tpm.flush();
    let ek_public = std::fs::read(dir.join("ek.pub")).expect("ek.pub");
    let certificate = vendor.certify(&ek_public);
    std::fs::write(dir.join("ek.der"), &certificate).expect("ek.der");
    tpm.run(
        "tpm2_nvdefine",
        &[
            index,
            "-C",
            "p",
            "-s",
            &certificate.len().to_string(),
            "-a",
            "ppwrite|ppread|ownerread|authread|no_da|platformcreate",
        ],
    );
    tpm.run("tpm2_nvwrite", &[index, "-C", "p", "-i", &path("ek.der")]);
    tpm.run(
        "tpm2_createak",
        &[
            "-C",
            &path("ek.ctx"),
            "-c",
            &path("ak.ctx"),
            "-G",
            "ecc",
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-u",
            &path("ak.pem"),
            "-f",
            "pem",
        ],
    );
    tpm.flush();
    tpm.run(
        "tpm2_evictcontrol",
        &["-C", "o", "-c", &path("ak.ctx"), AK_HANDLE],
    );
    tpm.flush();
    ek_public
}

/// `fabrik device attestation activate` on the device: its own id and token, or (`token`
/// `None`) the admin token of a provisioning station.
fn activate(tpm: &Tpm, url: &str, id: &str, token: Option<&str>, extra: &[&str]) -> Output {
    let mut command = Command::new(fabrik_bin());
    command
        .args(["device", "attestation", "activate", id, "--ak", AK_HANDLE])
        .args(extra)
        .args(["--url", url])
        .env_remove("FABRIK_DEVICE_TOKEN")
        .env("TPM2TOOLS_TCTI", &tpm.tcti);
    match token {
        Some(token) => command
            .env("FABRIK_DEVICE_TOKEN", token)
            .env_remove("FABRIK_TOKEN"),
        None => command.args(["--token", crate::support::TOKEN]),
    };
    let out = command
        .output()
        .expect("fabrik device attestation activate");
    tpm.flush();
    out
}

#[test]
fn a_key_is_enrolled_only_through_its_tpms_certified_endorsement_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (device_dir, foreign_dir) = (dir.path().join("gw"), dir.path().join("foreign"));
    for d in [&device_dir, &foreign_dir] {
        std::fs::create_dir_all(d.join("state")).expect("tpm dir");
    }
    let vendor = VendorCa::new("Plant TPM Vendor EK CA");
    let stranger = VendorCa::new("Unknown EK CA");
    let authorities = dir.path().join("tpm-vendors.pem");
    std::fs::write(&authorities, vendor.certificate.pem()).expect("CA file");

    let tpm = Tpm::start(&device_dir.join("state"));
    for pcr in 0..8 {
        tpm.extend(pcr, &format!("gateway firmware 2.0 stage {pcr}"));
    }
    let ek_public = provision(&tpm, &device_dir, &vendor, "rsa");
    // Another genuine TPM of the same vendor, with an ECC EK: a thief's device holding gw-1's
    // token, later the replacement an admin moves gw-1 to.
    let foreign = Tpm::start(&foreign_dir.join("state"));
    let foreign_ek = provision(&foreign, &foreign_dir, &vendor, "ecc");

    let p = Process::start(
        &dir.path().join("data"),
        &[
            (
                "FABRIK__ATTESTATION__ENDORSEMENT_AUTHORITIES",
                authorities.to_str().expect("utf-8"),
            ),
            ("FABRIK__ATTESTATION__REQUIRE_ENDORSEMENT", "true"),
        ],
    );
    let mqtt = p.mqtt.clone().expect("mqtt address");
    let mut tokens = std::collections::HashMap::new();
    for id in ["gw-1", "gw-2"] {
        let (status, body) = http(
            &p.url,
            Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({"id": id, "type": "gateway"})),
        );
        assert_eq!(status, 201, "{body}");
        tokens.insert(id, body["token"].as_str().expect("token").to_owned());
    }
    let token = tokens["gw-1"].as_str();

    // An operator cannot enrol a bare key here: nothing would show it lives in a TPM.
    let ak_pem = device_dir.join("ak.pem");
    let (ok, out) = enrol(&p.url, "gw-1", &ak_pem);
    assert!(!ok && out.contains("require_endorsement"), "{out}");

    // An EK certificate of a CA the node does not trust is refused, naming its issuer.
    let stranger_cert = foreign_dir.join("stranger-ek.der");
    std::fs::write(&stranger_cert, stranger.certify(&foreign_ek)).expect("certificate");
    let out = activate(
        &foreign,
        &p.url,
        "gw-1",
        Some(token),
        &[
            "--ek",
            "ecc",
            "--ek-certificate",
            stranger_cert.to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("`CN=Unknown EK CA` is not among the trusted TPM vendor CAs"),
        "{}",
        text(&out)
    );

    // The device activates its key: the EK certificate from the TPM's NV index, the
    // credential opened by tpm2_activatecredential.
    let out = activate(&tpm, &p.url, "gw-1", Some(token), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("EK certificate issued by CN=Plant TPM Vendor EK CA"),
        "{}",
        text(&out)
    );
    let (_, status) = http(
        &p.url,
        Method::GET,
        "/api/v1/devices/gw-1/attestation",
        None,
    );
    let pem = std::fs::read_to_string(&ak_pem).expect("ak.pem");
    assert_eq!(
        status["key"]["fingerprint"].as_str(),
        Some(
            fabrik_registry::tpm::AttestationKey::fingerprint(&pem)
                .expect("fingerprint")
                .as_str()
        ),
        "{status}"
    );
    let ek = fabrik_registry::tpm::endorsement::PublicArea::parse(&ek_public, "EK").expect("EK");
    assert_eq!(
        status["key"]["endorsement"]["ek_fingerprint"].as_str(),
        Some(ek.fingerprint().as_str()),
        "{status}"
    );
    assert_eq!(status["may_connect"], false, "{status}");

    // The activated key's quotes open the gate as any enrolled key's.
    let empty = dir.path().join("no-admin-token");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let out = agent(&tpm, &p.url, "gw-1", token, &empty);
    assert!(text(&out).contains("no reference values"), "{}", text(&out));
    take_reference(&p.url, "gateway", "gw-1");
    let out = agent(&tpm, &p.url, "gw-1", token, &empty);
    assert!(out.status.success(), "{}", text(&out));
    assert!(publish(&mqtt, "gw-1", token).status.success());

    // gw-1's token on another genuine TPM cannot move gw-1 there.
    let out = activate(&foreign, &p.url, "gw-1", Some(token), &["--ek", "ecc"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("is bound to the TPM with EK"),
        "{}",
        text(&out)
    );
    assert!(publish(&mqtt, "gw-1", token).status.success());

    // A credential answered with anything but what the TPM released is refused, and used up.
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let foreign_ak = foreign_dir.join("ak.pub");
    foreign.run(
        "tpm2_readpublic",
        &["-c", AK_HANDLE, "-o", foreign_ak.to_str().expect("utf-8")],
    );
    foreign.flush();
    let (status, challenge) = device_post(
        &p.url,
        "/api/v1/devices/gw-2/attestation/activation",
        "gw-2",
        &tokens["gw-2"],
        serde_json::json!({
            // gw-1's EK and certificate, another TPM's attestation key.
            "ek_public": b64(&ek_public),
            "ek_certificate": b64(&std::fs::read(device_dir.join("ek.der")).expect("ek.der")),
            "ak_public": b64(&std::fs::read(&foreign_ak).expect("ak.pub")),
        }),
    );
    assert_eq!(status, 200, "{challenge}");
    let proof = format!(
        "/api/v1/devices/gw-2/attestation/activation/{}",
        challenge["id"].as_str().expect("id")
    );
    let guess = serde_json::json!({ "secret": b64(&[0u8; 32]) });
    let (status, refused) = device_post(&p.url, &proof, "gw-2", &tokens["gw-2"], guess.clone());
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not in the TPM")),
        "{refused}"
    );
    let (status, used) = device_post(&p.url, &proof, "gw-2", &tokens["gw-2"], guess);
    assert_eq!(status, 400, "{used}");
    let (_, status) = http(
        &p.url,
        Method::GET,
        "/api/v1/devices/gw-2/attestation",
        None,
    );
    assert!(status["key"].is_null(), "{status}");

    // A provisioning station (admin) may move gw-1 to a replacement TPM; gw-1 must then
    // attest from it before it connects again.
    let out = activate(&foreign, &p.url, "gw-1", None, &["--ek", "ecc"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("through its TPM's ecc endorsement key"),
        "{}",
        text(&out)
    );
    let refused = publish(&mqtt, "gw-1", token);
    assert!(!refused.status.success(), "{refused:?}");
    let (_, status) = http(
        &p.url,
        Method::GET,
        "/api/v1/devices/gw-1/attestation",
        None,
    );
    assert_eq!(
        status["reason"], "it has not attested with its enrolled key",
        "{status}"
    );
    let foreign_public =
        fabrik_registry::tpm::endorsement::PublicArea::parse(&foreign_ek, "EK").expect("EK");
    assert_eq!(
        status["key"]["endorsement"]["ek_fingerprint"].as_str(),
        Some(foreign_public.fingerprint().as_str()),
        "{status}"
    );

    // The refusals and the activations are on record under the callers' names.
    let (_, audit) = http(&p.url, Method::GET, "/api/v1/audit?limit=100", None);
    let activations: Vec<(String, u64)> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.contains("/activation"))
        })
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_owned(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for expected in [("gw-1", 200), ("gw-1", 403), ("gw-2", 403), ("admin", 200)] {
        assert!(
            activations
                .iter()
                .any(|(actor, code)| actor.starts_with(expected.0) && *code == expected.1),
            "{expected:?} in {activations:?}"
        );
    }
    drop(p);
}

/// A boot as firmware records it: each measurement extended into the TPM's sha256 bank and
/// logged, the log written as Linux exposes it (`binary_bios_measurements`).
#[derive(Default)]
struct MeasuredBoot {
    events: Vec<fabrik_registry::tpm::event_log::LoggedEvent>,
}

impl MeasuredBoot {
    /// Extends `pcr` with the digest of `content` and logs it with `data`.
    fn measure(&mut self, tpm: &Tpm, pcr: u32, event_type: u32, data: Vec<u8>, content: &str) {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(content.as_bytes()).to_vec();
        let text: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        tpm.run("tpm2_pcrextend", &[&format!("{pcr}:sha256={text}")]);
        self.events
            .push(fabrik_registry::tpm::event_log::LoggedEvent {
                pcr,
                event_type,
                digests: vec![(0x000b, digest)],
                data,
            });
    }

    /// A gateway's UEFI boot: firmware version, Secure Boot state, shim and GRUB loaded from
    /// the EFI partition, separators, then GRUB's kernel command line and kernel.
    fn gateway(tpm: &Tpm, grub: &str) -> MeasuredBoot {
        use fabrik_registry::tpm::event_log::{
            EV_EFI_BOOT_SERVICES_APPLICATION, EV_IPL, EV_SEPARATOR, efi_image_load, efi_variable,
        };
        const EV_S_CRTM_VERSION: u32 = 0x8;
        const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
        let mut boot = MeasuredBoot::default();
        let version: Vec<u8> = "1.4\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
        boot.measure(tpm, 0, EV_S_CRTM_VERSION, version, "gateway firmware 1.4");
        boot.measure(
            tpm,
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            efi_variable("SecureBoot", &[1]),
            "SecureBoot=1",
        );
        for pcr in 0..8 {
            boot.measure(tpm, pcr, EV_SEPARATOR, vec![0; 4], "\0\0\0\0");
        }
        boot.measure(
            tpm,
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            efi_image_load("\\EFI\\BOOT\\BOOTX64.EFI"),
            "shim 15.8",
        );
        boot.measure(
            tpm,
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            efi_image_load("\\EFI\\debian\\grubx64.efi"),
            grub,
        );
        let command = "grub_cmd: linux /vmlinuz-6.1 root=/dev/mmcblk0p2 ro";
        boot.measure(tpm, 8, EV_IPL, format!("{command}\0").into_bytes(), command);
        boot.measure(
            tpm,
            9,
            EV_IPL,
            b"/vmlinuz-6.1\0".to_vec(),
            "kernel 6.1.0-28",
        );
        boot
    }

    /// Writes the log, leaving out the events `skip` picks.
    fn write(&self, path: &Path, skip: impl Fn(usize) -> bool) {
        use fabrik_registry::tpm::event_log::{EventLog, LogBank, encode};
        let log = EventLog {
            banks: vec![LogBank {
                algorithm: 0x000b,
                size: 32,
            }],
            crypto_agile: true,
            events: self
                .events
                .iter()
                .enumerate()
                .filter(|(i, _)| !skip(*i))
                .map(|(_, e)| e.clone())
                .collect(),
        };
        std::fs::write(path, encode(&log)).expect("event log");
    }
}

/// The sha256 PCR values a YAML dump (`tpm2_eventlog`, `tpm2_pcrread`) prints, by index.
fn sha256_pcrs(yaml: &str) -> std::collections::BTreeMap<u32, String> {
    let mut in_sha256 = false;
    let mut pcrs = std::collections::BTreeMap::new();
    for line in yaml.lines() {
        let trimmed = line.trim();
        if trimmed.ends_with(':') && !trimmed.contains(' ') {
            in_sha256 = trimmed == "sha256:";
            continue;
        }
        if in_sha256
            && let Some((index, value)) = trimmed.split_once(':')
            && let Ok(index) = index.trim().parse::<u32>()
        {
            let value = value.trim().trim_start_matches("0x").to_lowercase();
            pcrs.insert(index, value);
        }
    }
    pcrs
}

#[test]
fn a_measured_boot_log_must_replay_to_the_quote_and_names_the_component_that_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("tpm");
    let empty = dir.path().join("no-admin-token");
    std::fs::create_dir_all(&state).expect("tpm dir");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let tpm = Tpm::start(&state);
    let boot = MeasuredBoot::gateway(&tpm, "grub 2.06-13");
    let log = dir.path().join("binary_bios_measurements");
    boot.write(&log, |_| false);
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();

    // tpm2-tools reads the log Fabrik's writer made, and its replay is what the TPM holds.
    let eventlog = Command::new("tpm2_eventlog")
        .arg(&log)
        .output()
        .expect("tpm2_eventlog must be installed (apt install tpm2-tools)");
    assert!(eventlog.status.success(), "{eventlog:?}");
    let replayed = sha256_pcrs(&String::from_utf8_lossy(&eventlog.stdout));
    let pcrread = tpm.run("tpm2_pcrread", &["sha256:0,1,2,3,4,5,6,7,8,9"]);
    let held = sha256_pcrs(&String::from_utf8_lossy(&pcrread.stdout));
    assert_eq!(replayed.len(), 10, "{replayed:?}");
    assert_eq!(replayed, held);

    let ak_pem = persistent_ak(&tpm, dir.path());
    let p = Process::start(&dir.path().join("data"), &[]);
    let token = gateway_enrolled(&p.url, &ak_pem);
    let pcrs = "sha256:0,1,2,3,4,5,6,7,8,9";
    let quote = |log: &Path| {
        agent_with(
            &tpm,
            &p.url,
            "gw-1",
            &token,
            &empty,
            &["--pcrs", pcrs, "--event-log", &path(log)],
        )
    };

    // The golden unit: its log replays, and becomes the type's reference with its values.
    let first = quote(&log);
    assert!(
        text(&first).contains("no reference values for device type `gateway`"),
        "{}",
        text(&first)
    );
    take_reference(&p.url, "gateway", "gw-1");
    let (_, policy) = http(
        &p.url,
        Method::GET,
        "/api/v1/attestation/policies/gateway",
        None,
    );
    assert_eq!(policy["reference_log"]["device"], "gw-1", "{policy}");
    assert_eq!(
        policy["reference_log"]["events"].as_array().map(Vec::len),
        Some(boot.events.len())
    );
    let passed = quote(&log);
    assert!(passed.status.success(), "{}", text(&passed));
    let (_, status) = http(
        &p.url,
        Method::GET,
        "/api/v1/devices/gw-1/attestation",
        None,
    );
    let check = &status["history"][0]["event_log"];
    assert_eq!(check["matches"], true, "{status}");
    assert_eq!(
        check["replayed"],
        serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    );

    // What the boot measured, PCR by PCR, for the operator.
    let (ok, out) = crate::support::client_command(
        &p.url,
        &["device", "attestation", "events", "gw-1", "--pcr", "4"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("gw-1: 3 events"), "{out}");
    assert!(out.contains("EV_EFI_BOOT_SERVICES_APPLICATION"), "{out}");
    assert!(out.contains("\\EFI\\debian\\grubx64.efi"), "{out}");
    assert!(!out.contains("SecureBoot"), "{out}");

    // A log with the kernel's measurement left out does not replay to the quote: the device
    // is shut out though its PCRs are the reference values.
    let edited = dir.path().join("edited_measurements");
    let kernel = boot.events.len() - 1;
    boot.write(&edited, |i| i == kernel);
    let out = quote(&edited);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the event log does not replay to the quoted sha256 PCR 9"),
        "{}",
        text(&out)
    );
    assert!(
        !publish(&p.mqtt.clone().expect("mqtt"), "gw-1", &token)
            .status
            .success()
    );
    assert!(quote(&log).status.success());

    // A new GRUB, booted: the quote misses the reference values, and the verdict names the
    // image that changed, by path, with both digests.
    tpm.reboot();
    let updated = MeasuredBoot::gateway(&tpm, "grub 2.12-1");
    updated.write(&log, |_| false);
    let out = quote(&log);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("PCR 4 is"), "{said}");
    assert!(
        said.contains(
            "PCR 4 changed at event 12 (EV_EFI_BOOT_SERVICES_APPLICATION named \\EFI\\debian\\grubx64.efi)"
        ),
        "{said}"
    );
    assert!(said.contains("the reference log of `gw-1`"), "{said}");
    // Only PCR 4 changed: nothing is said of the others.
    assert!(!said.contains("PCR 9 changed"), "{said}");
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "attestation", "events", "gw-1"]);
    assert!(ok, "{out}");
    assert!(out.contains("gw-1: 14 events"), "{out}");
    drop(p);
}

#[test]
fn measured_pcrs_admit_a_new_boot_loader_by_its_digest_and_a_withdrawn_one_ends_the_pass() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("tpm");
    let empty = dir.path().join("no-admin-token");
    std::fs::create_dir_all(&state).expect("tpm dir");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let tpm = Tpm::start(&state);
    let log = dir.path().join("binary_bios_measurements");
    MeasuredBoot::gateway(&tpm, "grub 2.06-13").write(&log, |_| false);
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let ak_pem = persistent_ak(&tpm, dir.path());
    let p = Process::start(&dir.path().join("data"), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt");
    let token = gateway_enrolled(&p.url, &ak_pem);
    let log_option = path(&log);
    let quote = |event_log: &str| {
        agent_with(
            &tpm,
            &p.url,
            "gw-1",
            &token,
            &empty,
            &[
                "--pcrs",
                "sha256:0,1,2,3,4,5,6,7,8,9",
                "--event-log",
                event_log,
            ],
        )
    };
    let policy = |args: &[&str]| {
        let mut command = vec!["device", "attestation", "policy", "gateway"];
        command.extend_from_slice(args);
        let (ok, out) = crate::support::client_command(&p.url, &command);
        assert!(ok, "{out}");
    };

    // The golden unit's measurements, not its PCR values, become the type's reference, and
    // a quote must bring its log.
    assert!(!quote(&log_option).status.success());
    policy(&[
        "--measure",
        "0,1,2,3,4,5,6,7,8,9",
        "--allow-from-device",
        "gw-1",
        "--require-event-log",
    ]);
    let passed = quote(&log_option);
    assert!(passed.status.success(), "{}", text(&passed));
    assert!(publish(&mqtt, "gw-1", &token).status.success());
    let bare = quote("none");
    assert!(!bare.status.success());
    assert!(
        text(&bare).contains("are judged by their measured-boot events, and no event log"),
        "{}",
        text(&bare)
    );
    assert!(quote(&log_option).status.success());

    // A new GRUB, not yet allowed: the verdict names it and its digest.
    tpm.reboot();
    MeasuredBoot::gateway(&tpm, "grub 2.12-1").write(&log, |_| false);
    let new_grub: String = sha2::Sha256::digest(b"grub 2.12-1")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let refused = quote(&log_option);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&format!(
            "PCR 4 event 12 (EV_EFI_BOOT_SERVICES_APPLICATION named \\EFI\\debian\\grubx64.efi) measured {new_grub}, which the policy of type `gateway` does not allow"
        )),
        "{said}"
    );
    assert!(
        !said.contains("PCR 9"),
        "only the boot loader changed: {said}"
    );

    // Allowed by its digest before the rollout: the new boot passes, though no accepted set
    // of PCR values was ever written for it.
    policy(&["--merge", "--allow", &format!("4={new_grub}")]);
    let passed = quote(&log_option);
    assert!(passed.status.success(), "{}", text(&passed));
    assert!(publish(&mqtt, "gw-1", &token).status.success());

    // Withdrawn (a vulnerable build): the pass ends at once, before the next quote.
    policy(&["--merge", "--revoke", &new_grub]);
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "attestation", "status", "gw-1"]);
    assert!(ok, "{out}");
    assert!(out.contains("may not connect"), "{out}");
    assert!(
        out.contains(&format!("measured {new_grub}, which the policy")),
        "{out}"
    );
    assert!(!publish(&mqtt, "gw-1", &token).status.success());

    // Allowed again (the patched build kept its digest), with a note: the pass the quote
    // earned holds again, without a new quote.
    policy(&[
        "--merge",
        "--allow",
        &format!("4={new_grub}:grub 2.12-1, patched"),
    ]);
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "attestation", "status", "gw-1"]);
    assert!(ok, "{out}");
    assert!(out.contains("may connect"), "{out}");
    assert!(publish(&mqtt, "gw-1", &token).status.success());
    let (ok, out) = crate::support::client_command(&p.url, &["device", "attestation", "policies"]);
    assert!(ok, "{out}");
    assert!(out.contains("grub 2.12-1, patched"), "{out}");
    // A revocation is a change to a policy, not a new one.
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "attestation",
            "policy",
            "gateway",
            "--revoke",
            &new_grub,
        ],
    );
    assert!(!ok);
    assert!(out.contains("--revoke goes with --merge"), "{out}");
    // Nothing to merge into, or to remove: not found.
    let (status, body) = http(
        &p.url,
        Method::PUT,
        "/api/v1/attestation/policies/sensor",
        Some(serde_json::json!({"merge": true, "require_event_log": true})),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.contains("`sensor` has no attestation policy to merge into")),
        "{body}"
    );
    let (status, body) = http(
        &p.url,
        Method::DELETE,
        "/api/v1/attestation/policies/sensor",
        None,
    );
    assert_eq!(status, 404, "{body}");
    drop(p);
}

/// IMA on the device: each file the kernel measures is written to a binary list (template
/// `ima-ng`, the kernel's layout written out here independently of Fabrik's reader) and
/// extended into PCR 10 in both banks, as Linux 5.11 and later extend it.
#[derive(Default)]
struct Ima {
    entries: Vec<Vec<u8>>,
}

impl Ima {
    fn measure(&mut self, tpm: &Tpm, path: &str, content: &str) {
        use sha2::Digest as _;
        self.measure_digest(tpm, path, &sha2::Sha256::digest(content.as_bytes()));
    }

    /// The first entry, as the kernel makes it at boot: the SHA-256 of PCRs 0-9.
    fn boot_aggregate(&mut self, tpm: &Tpm) {
        use sha2::Digest as _;
        let read = tpm.run("tpm2_pcrread", &["sha256:0,1,2,3,4,5,6,7,8,9"]);
        let pcrs = sha256_pcrs(&String::from_utf8_lossy(&read.stdout));
        assert_eq!(pcrs.len(), 10, "{pcrs:?}");
        let mut aggregate = sha2::Sha256::new();
        for value in pcrs.values() {
            let bytes: Vec<u8> = (0..value.len() / 2)
                .map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            aggregate.update(&bytes);
        }
        self.measure_digest(tpm, "boot_aggregate", &aggregate.finalize());
    }

    fn measure_digest(&mut self, tpm: &Tpm, path: &str, file_digest: &[u8]) {
        self.append(Some(tpm), path, file_digest, None);
    }

    /// A file with its `security.ima` signature, in the `ima-sig` template.
    fn measure_signed(&mut self, tpm: &Tpm, path: &str, content: &[u8], signature: &[u8]) {
        use sha2::Digest as _;
        self.append(
            Some(tpm),
            path,
            &sha2::Sha256::digest(content),
            Some(signature),
        );
    }

    /// An entry the kernel adds to the list after the quote: in the list, not yet in the
    /// quoted PCR.
    fn append_unquoted(&mut self, path: &str, content: &str) {
        use sha2::Digest as _;
        self.append(None, path, &sha2::Sha256::digest(content.as_bytes()), None);
    }

    fn append(
        &mut self,
        tpm: Option<&Tpm>,
        path: &str,
        file_digest: &[u8],
        signature: Option<&[u8]>,
    ) {
        use sha2::Digest as _;
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut digest_field = b"sha256:\0".to_vec();
        digest_field.extend_from_slice(file_digest);
        let name_field = [path.as_bytes(), &[0]].concat();
        let mut data = Vec::new();
        let fields: Vec<&[u8]> = [&digest_field[..], &name_field[..]]
            .into_iter()
            .chain(signature)
            .collect();
        for field in fields {
            data.extend_from_slice(&(field.len() as u32).to_le_bytes());
            data.extend_from_slice(field);
        }
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &data);
        let sha256 = sha2::Sha256::digest(&data);
        if let Some(tpm) = tpm {
            tpm.run(
                "tpm2_pcrextend",
                &[&format!(
                    "10:sha1={},sha256={}",
                    hex(sha1.as_ref()),
                    hex(&sha256)
                )],
            );
        }
        let template: &[u8] = if signature.is_some() {
            b"ima-sig"
        } else {
            b"ima-ng"
        };
        let mut entry = 10u32.to_le_bytes().to_vec();
        entry.extend_from_slice(sha1.as_ref());
        entry.extend_from_slice(&(template.len() as u32).to_le_bytes());
        entry.extend_from_slice(template);
        entry.extend_from_slice(&(data.len() as u32).to_le_bytes());
        entry.extend_from_slice(&data);
        self.entries.push(entry);
    }

    /// The list as `/sys/kernel/security/ima/binary_runtime_measurements` shows it, with the
    /// entries `skip` names left out.
    fn write(&self, path: &Path, skip: impl Fn(usize) -> bool) {
        let bytes: Vec<u8> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip(*i))
            .flat_map(|(_, entry)| entry.clone())
            .collect();
        std::fs::write(path, bytes).expect("ima list");
    }
}

#[test]
fn a_runtime_policy_admits_only_the_files_it_allows_and_the_ima_log_must_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("tpm");
    let empty = dir.path().join("no-admin-token");
    std::fs::create_dir_all(&state).expect("tpm dir");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let tpm = Tpm::start(&state);
    for (pcr, stage) in [(0, "firmware"), (4, "grub"), (7, "secure boot on")] {
        tpm.extend(pcr, stage);
    }
    let mut ima = Ima::default();
    ima.boot_aggregate(&tpm);
    for (path, content) in [
        ("/usr/bin/fabrik", "fabrik 1.0"),
        ("/usr/lib/libc.so.6", "glibc 2.36"),
        ("/var/log/syslog", "a line"),
    ] {
        ima.measure(&tpm, path, content);
    }
    let list = dir.path().join("binary_runtime_measurements");
    ima.write(&list, |_| false);
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();

    let ak_pem = persistent_ak(&tpm, dir.path());
    let p = Process::start(&dir.path().join("data"), &[]);
    let token = gateway_enrolled(&p.url, &ak_pem);
    let quote = |list: Option<&Path>| {
        let list = list.map_or_else(|| "none".to_owned(), path);
        agent_with(
            &tpm,
            &p.url,
            "gw-1",
            &token,
            &empty,
            &[
                "--pcrs",
                "sha256:0,1,2,3,4,5,6,7,8,9,10",
                "--event-log",
                "none",
                "--ima-log",
                &list,
            ],
        )
    };
    let newest = || {
        let (_, status) = http(
            &p.url,
            Method::GET,
            "/api/v1/devices/gw-1/attestation",
            None,
        );
        status["history"][0].clone()
    };
    // The type's runtime policy, through the CLI.
    let runtime_policy = |args: &[&str]| {
        let command = [
            &["device", "attestation", "runtime-policy", "gateway"][..],
            args,
        ]
        .concat();
        crate::support::client_command(&p.url, &command)
    };
    // Whether the device may connect over MQTT now, and why not.
    let connects = || {
        publish(&p.mqtt.clone().expect("mqtt"), "gw-1", &token)
            .status
            .success()
    };
    let gate_reason = || {
        let (_, status) = http(
            &p.url,
            Method::GET,
            "/api/v1/devices/gw-1/attestation",
            None,
        );
        status["reason"].as_str().unwrap_or_default().to_owned()
    };

    // The boot's PCRs are the type's reference; PCR 10 grows with every file measured, so the
    // runtime policy judges it, not a value.
    assert!(!quote(Some(&list)).status.success());
    // A list whose quote failed its boot checks is not taken into a policy.
    let (ok, out) = runtime_policy(&["--allow-from-device", "gw-1"]);
    assert!(
        !ok && out.contains("failed more than the runtime policy"),
        "{out}"
    );
    let (status, body) = http(
        &p.url,
        Method::PUT,
        "/api/v1/attestation/policies/gateway",
        Some(serde_json::json!({"from_device": "gw-1", "pcrs": [0, 1, 2, 3, 4, 5, 6, 7]})),
    );
    assert_eq!(status, 200, "{body}");
    let passed = quote(Some(&list));
    assert!(passed.status.success(), "{}", text(&passed));
    // The first quote (refused for want of a policy, but authentic) left its four entries
    // with the verifier: this one sent none, and its PCR 10 is still where they ended.
    let verdict = newest();
    assert_eq!(
        verdict["ima"],
        serde_json::json!({"entries": 4, "covered": 4, "bank": "sha256", "matches": true,
            "extension": "template_data", "violations": 0, "not_allowed": 0,
            "continued_from": 4}),
        "{verdict}"
    );

    // The runtime policy: the two files by digest, logs excluded. Set with the CLI.
    let digest = |content: &str| {
        use sha2::Digest as _;
        sha2::Sha256::digest(content.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let policy_file = dir.path().join("runtime.json");
    let write_policy = |extra: &[(&str, &str)]| {
        let mut allowed = serde_json::json!({
            "/usr/bin/fabrik": [digest("fabrik 1.0")],
            "/usr/lib/libc.so.6": [format!("sha256:{}", digest("glibc 2.36"))],
        });
        for (file, content) in extra {
            allowed[*file] = serde_json::json!([digest(content)]);
        }
        std::fs::write(
            &policy_file,
            serde_json::json!({"allowed": allowed, "excludes": ["/var/log"]}).to_string(),
        )
        .expect("policy");
        let (ok, out) = runtime_policy(&[&path(&policy_file)]);
        assert!(ok, "{out}");
    };
    write_policy(&[]);
    let passed = quote(Some(&list));
    assert!(passed.status.success(), "{}", text(&passed));

    // The list is read after the quote: what the kernel measured meanwhile (the quoting tool
    // at its first run) is in the list, not yet in the quoted PCR 10, and waits for the next
    // quote.
    let mut later = Ima {
        entries: ima.entries.clone(),
    };
    later.append_unquoted("/usr/bin/tpm2_quote", "tpm2-tools 5.4");
    let with_later = dir.path().join("later_measurements");
    later.write(&with_later, |_| false);
    let passed = quote(Some(&with_later));
    assert!(passed.status.success(), "{}", text(&passed));
    assert_eq!(newest()["ima"]["covered"], 4);
    assert_eq!(newest()["ima"]["entries"], 5);

    // The device runs a program nobody allowed: the next quote fails, naming it, and the
    // device is shut out.
    ima.measure(&tpm, "/usr/bin/nc", "netcat");
    ima.write(&list, |_| false);
    let out = quote(Some(&list));
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("IMA entry 4: /usr/bin/nc measured sha256:")
            && said.contains("does not allow (an unknown file)"),
        "{said}"
    );
    assert_eq!(newest()["ima"]["not_allowed"], 1);
    assert!(!connects());

    // Hiding it from the list does not help: the list no longer replays to PCR 10.
    let edited = dir.path().join("edited_measurements");
    ima.write(&edited, |i| i == 4);
    let said = text(&quote(Some(&edited)));
    assert!(
        said.contains("the IMA log's 4 entries do not replay to the quoted PCR 10"),
        "{said}"
    );
    // Nor does leaving the list out.
    let said = text(&quote(None));
    assert!(said.contains("came without an IMA log"), "{said}");

    // Allowed by its digest, it passes again: the verifier holds the five entries of the
    // quote before (it replayed), so the device sends only what came after.
    write_policy(&[("/usr/bin/nc", "netcat")]);
    let passed = quote(Some(&list));
    assert!(passed.status.success(), "{}", text(&passed));
    assert_eq!(newest()["ima"]["continued_from"], 5, "{}", newest());
    assert_eq!(newest()["ima"]["covered"], 5);
    ima.measure(&tpm, "/usr/lib/libssl.so.3", "openssl 3");
    ima.write(&list, |_| false);
    write_policy(&[
        ("/usr/bin/nc", "netcat"),
        ("/usr/lib/libssl.so.3", "openssl 3"),
    ]);
    let passed = quote(Some(&list));
    assert!(passed.status.success(), "{}", text(&passed));
    assert_eq!(newest()["ima"]["continued_from"], 5, "{}", newest());
    assert_eq!(newest()["ima"]["covered"], 6);
    // A continuation that does not replay from the entries held (here the new entry is left
    // out) is not a verdict: the agent sends the list whole, and that is judged.
    ima.measure(&tpm, "/usr/bin/socat", "socat");
    ima.write(&list, |i| i == 6);
    let out = quote(Some(&list));
    assert!(!out.status.success(), "{}", text(&out));
    let verdict = newest();
    assert!(verdict["ima"].get("continued_from").is_none(), "{verdict}");
    assert!(
        verdict["reasons"].to_string().contains("do not replay"),
        "{verdict}"
    );
    ima.write(&list, |_| false);
    write_policy(&[
        ("/usr/bin/nc", "netcat"),
        ("/usr/lib/libssl.so.3", "openssl 3"),
        ("/usr/bin/socat", "socat"),
    ]);
    let passed = quote(Some(&list));
    assert!(passed.status.success(), "{}", text(&passed));
    assert!(connects());

    // Withdrawn again, its digest ends the pass at once, judged from the entries kept with
    // the quote: no new quote is needed to shut the device out.
    write_policy(&[]);
    assert!(!connects());
    let reason = gate_reason();
    assert!(
        reason.contains("no longer meets") && reason.contains("IMA entry 4: /usr/bin/nc"),
        "{reason}"
    );
    write_policy(&[
        ("/usr/bin/nc", "netcat"),
        ("/usr/lib/libssl.so.3", "openssl 3"),
        ("/usr/bin/socat", "socat"),
    ]);
    assert!(connects(), "allowed again, the same pass stands");

    // A policy with a wrong digest is refused naming its place; the type's policy reads back
    // normalised, and can be removed.
    let (status, body) = http(
        &p.url,
        Method::PUT,
        "/api/v1/attestation/policies/gateway/runtime",
        Some(serde_json::json!({"allowed": {"/usr/bin/x": ["sha256:1234"]}})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains(
            "allowed[\\\"/usr/bin/x\\\"][0]: `sha256:1234`: a sha256 digest is 64 hex digits"
        ),
        "{body}"
    );
    let (status, body) = http(
        &p.url,
        Method::GET,
        "/api/v1/attestation/policies/gateway/runtime",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["allowed"]["/usr/bin/fabrik"][0],
        format!("sha256:{}", digest("fabrik 1.0"))
    );
    let (ok, out) = runtime_policy(&["--remove"]);
    assert!(ok, "{out}");

    // What the device's kernel measured, as its newest quote covered it, makes a policy: the
    // pass given stands under it, judged again from the kept entries.
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "attestation", "ima-log", "gw-1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("7 IMA entries")
            && out.contains(&format!("sha256:{}  /usr/bin/nc", digest("netcat"))),
        "{out}"
    );
    let (ok, out) = runtime_policy(&["--allow-from-device", "gw-1"]);
    assert!(ok, "{out}");
    let made: serde_json::Value = serde_json::from_str(&out).expect("policy");
    let paths: Vec<&String> = made["allowed"]
        .as_object()
        .expect("allowed")
        .keys()
        .collect();
    assert_eq!(
        paths,
        [
            "/usr/bin/fabrik",
            "/usr/bin/nc",
            "/usr/bin/socat",
            "/usr/lib/libc.so.6",
            "/usr/lib/libssl.so.3",
            "/var/log/syslog"
        ],
        "{made}"
    );
    assert!(connects());

    // A policy made from the device image: the files its builder shipped, by digest. An
    // image whose netcat is another build shuts the device out, naming the file.
    let image = dir.path().join("image");
    let make_from_image = |netcat: &str| {
        for (file, content) in [
            ("usr/bin/fabrik", "fabrik 1.0"),
            ("usr/lib/libc.so.6", "glibc 2.36"),
            ("usr/bin/nc", netcat),
            ("usr/lib/libssl.so.3", "openssl 3"),
            ("usr/bin/socat", "socat"),
            ("var/log/syslog", "the builder's log"),
        ] {
            let on_disk = image.join(file);
            std::fs::create_dir_all(on_disk.parent().expect("parent")).expect("dirs");
            std::fs::write(on_disk, content).expect("file");
        }
        let out = std::process::Command::new(crate::support::fabrik_bin())
            .args(["device", "attestation", "make-runtime-policy"])
            .arg(&image)
            .args(["--exclude", "/var/log"])
            .output()
            .expect("make-runtime-policy");
        assert!(out.status.success(), "{}", text(&out));
        std::fs::write(&policy_file, &out.stdout).expect("policy");
        let (ok, out) = runtime_policy(&[&path(&policy_file)]);
        assert!(ok, "{out}");
    };
    make_from_image("netcat");
    assert!(connects());
    make_from_image("netcat 2");
    assert!(!connects());
    let reason = gate_reason();
    assert!(
        reason.contains("/usr/bin/nc") && reason.contains("another digest than allowed"),
        "{reason}"
    );

    // Files a vendor signed (with evmctl, the reference tool: `security.ima` v2) are admitted
    // by the vendor's key, whatever their path and digest; another key's, or a signature of
    // other content, is not.
    let (ok, out) = runtime_policy(&["--allow-from-device", "gw-1"]);
    assert!(ok, "{out}");
    let vendor = dir.path().join("vendor");
    std::fs::create_dir_all(&vendor).expect("vendor dir");
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(&vendor)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    };
    for key in ["vendor", "other"] {
        run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{key}.pem"),
            ],
        );
        run(
            "openssl",
            &[
                "pkey",
                "-in",
                &format!("{key}.pem"),
                "-pubout",
                "-out",
                &format!("{key}.pub"),
            ],
        );
    }
    std::fs::write(vendor.join("tool"), "vendor tool 2.1").expect("tool");
    run(
        "evmctl",
        &[
            "ima_sign",
            "--key",
            "vendor.pem",
            "--hashalgo",
            "sha256",
            "--sigfile",
            "tool",
        ],
    );
    let signature = std::fs::read(vendor.join("tool.sig")).expect("signature");
    ima.measure_signed(&tpm, "/opt/vendor/bin/tool", b"vendor tool 2.1", &signature);
    ima.write(&list, |_| false);
    let trust = |key: &str| {
        let (ok, out) =
            runtime_policy(&["--signing-key", &path(&vendor.join(format!("{key}.pub")))]);
        assert!(ok, "{out}");
        let policy: serde_json::Value = serde_json::from_str(&out).expect("policy");
        assert!(
            policy["signing_keys"]
                .to_string()
                .contains("BEGIN PUBLIC KEY"),
            "{policy}"
        );
    };
    let said = text(&quote(Some(&list)));
    assert!(
        said.contains("IMA entry 7: /opt/vendor/bin/tool measured sha256:")
            && said.contains("(an unknown file)"),
        "{said}"
    );
    trust("other");
    let said = text(&quote(Some(&list)));
    assert!(
        said.contains(
            "(an unknown file, and its signature is not one of the policy's signing keys)"
        ),
        "{said}"
    );
    trust("vendor");
    let passed = quote(Some(&list));
    assert!(passed.status.success(), "{}", text(&passed));
    // The same signature on another build of the tool does not admit it.
    ima.measure_signed(&tpm, "/opt/vendor/bin/tool", b"vendor tool 2.2", &signature);
    ima.write(&list, |_| false);
    let said = text(&quote(Some(&list)));
    assert!(
        said.contains("IMA entry 8: /opt/vendor/bin/tool")
            && said.contains("its signature is not one of the policy's signing keys"),
        "{said}"
    );
    // A key that is not one is refused, naming its place.
    let (status, body) = http(
        &p.url,
        Method::POST,
        "/api/v1/attestation/policies/gateway/runtime/merge",
        Some(serde_json::json!({"signing_keys": ["not a key"]})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("signing_keys[0]: not PEM"),
        "{body}"
    );
    drop(p);
}
