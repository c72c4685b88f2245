//! The API over TLS in a real `fabrik run`: a generated certificate that clients trust by its
//! file, the CLI finding it in the data directory, plain HTTP and untrusted clients refused,
//! and connections that never finish their handshake delaying no one.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::support::{Process, TOKEN, fabrik_bin, http_client};

#[test]
fn the_api_is_served_over_tls_and_stalled_handshakes_delay_no_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(&data, &[("FABRIK__HTTP__TLS", "true")]);
    assert!(p.url.starts_with("https://"), "{}", p.url);
    let address = p.url.trim_start_matches("https://").to_owned();
    let pem = std::fs::read(data.join("tls").join("http-cert.pem")).expect("generated cert");

    // Connections that never finish a handshake: some silent, some stopped mid-ClientHello.
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    for stream in stalled.iter_mut().take(10) {
        stream
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .expect("partial hello");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        http_client(); // installs the rustls provider
        // Well within the 10 s a handshake may take: a server that handshakes one
        // connection at a time would still be waiting on the stalled ones.
        let trusting = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let answer = trusting
            .get(format!("{}/api/v1/tables", p.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("https request beside stalled handshakes");
        assert_eq!(answer.status(), 200);
        let report: serde_json::Value = trusting
            .get(format!("{}/api/v1/compliance", p.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("compliance")
            .json()
            .await
            .expect("json");
        let transport = report["controls"]
            .as_array()
            .expect("controls")
            .iter()
            .find(|c| c["references"].to_string().contains("SC-8"))
            .expect("SC-8")
            .clone();
        assert!(
            transport["evidence"]
                .to_string()
                .contains("served over TLS"),
            "{transport}"
        );
        // A client that does not trust the certificate is refused, and so is plain HTTP.
        let untrusting = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        assert!(
            untrusting
                .get(format!("{}/ready", p.url))
                .send()
                .await
                .is_err()
        );
        let plain = untrusting
            .get(format!("http://{address}/ready"))
            .send()
            .await;
        assert!(
            plain.as_ref().map_or(true, |r| !r.status().is_success()),
            "{plain:?}"
        );
    });

    // The CLI finds the generated certificate in the data directory.
    let out = Command::new(fabrik_bin())
        .args([
            "query",
            "SELECT 41 + 1 AS answer",
            "--url",
            &p.url,
            "--token",
            TOKEN,
        ])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("FABRIK_TOKEN")
        .env_remove("FABRIK_CA_CERT")
        .output()
        .expect("fabrik query");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("42"), "{text}");
    drop(stalled);
    let (status, _) = p.terminate();
    assert!(status.success());
}
