//! `fabrik device attestation …`: enrol a device's TPM attestation key, set a device type's
//! reference PCR values, show whether a device may connect, and, on the device itself, answer
//! a challenge with a quote from its TPM (through tpm2-tools' `tpm2_quote`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;

use crate::client::Endpoint;

#[derive(Debug, Subcommand)]
pub(crate) enum AttestationCommand {
    /// Whether a device may connect, why, its key and newest verdicts.
    Status {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enrol a device's attestation key (PEM, `tpm2_createak … -f pem -u ak.pem`): from now
    /// on it must attest to connect.
    Enrol {
        /// Device id.
        id: String,
        /// The key's public part, PEM.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Remove a device's attestation key.
    Unenrol {
        /// Device id.
        id: String,
    },
    /// On the device: ask for a challenge, have the TPM quote its PCRs, send the quote.
    Quote {
        /// Device id.
        id: String,
        /// The device's token (HTTP Basic with its id); without it, the admin token is used.
        #[arg(long, env = "FABRIK_DEVICE_TOKEN", hide_env_values = true)]
        device_token: Option<String>,
        /// The attestation key: its persistent handle (`tpm2_evictcontrol`, e.g. 0x81010002),
        /// which survives reboots, or a context file.
        #[arg(long)]
        ak: String,
        /// The key's signing hash: sha256 (P-256, RSA) or sha384 (P-384).
        #[arg(long, default_value = "sha256", value_parser = ["sha256", "sha384"])]
        hash: String,
        /// PCRs to quote, as tpm2-tools writes them.
        #[arg(long, default_value = "sha256:0,1,2,3,4,5,6,7")]
        pcrs: String,
        /// The `tpm2_quote` to run (the TPM is chosen by `TPM2TOOLS_TCTI`, as for any
        /// tpm2-tools command).
        #[arg(long, default_value = "tpm2_quote")]
        tpm2_quote: String,
    },
    /// List every device type's reference PCR values.
    Policies,
    /// Set a device type's reference PCR values: from a known-good device's last quote, or
    /// given.
    Policy {
        /// Device type.
        device_type: String,
        /// Take the values this device last quoted (with an authentic quote).
        #[arg(long)]
        from_device: Option<String>,
        /// With --from-device: only these PCRs (repeat); default every one it quoted.
        #[arg(long = "only")]
        only: Vec<u32>,
        /// A PCR value, INDEX=HEX (repeat); one set.
        #[arg(long = "pcr")]
        pcrs: Vec<String>,
        /// PCR bank.
        #[arg(long, default_value = "sha256")]
        bank: String,
    },
}

fn time_text(ns: Option<i64>) -> String {
    ns.and_then(|ns| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
            .into()
    })
    .unwrap_or_else(|| "-".into())
}

pub(crate) async fn run(
    ep: &Endpoint,
    client: &reqwest::Client,
    command: AttestationCommand,
) -> anyhow::Result<()> {
    match command {
        AttestationCommand::Status { id, json } => {
            let status: serde_json::Value = ep
                .get_json(client, &format!("/api/v1/devices/{id}/attestation"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            let text = |k: &str| status.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let may = status
                .get("may_connect")
                .and_then(serde_json::Value::as_bool);
            println!(
                "{id}: {} ({})",
                if may == Some(true) {
                    "may connect"
                } else {
                    "may not connect"
                },
                text("reason")
            );
            match status.get("key").filter(|k| !k.is_null()) {
                Some(key) => println!(
                    "  key: {} {} (enrolled {})",
                    key.get("algorithm").and_then(|v| v.as_str()).unwrap_or(""),
                    key.get("fingerprint")
                        .and_then(|v| v.as_str())
                        .unwrap_or(""),
                    time_text(key.get("enrolled_at").and_then(serde_json::Value::as_i64))
                ),
                None => println!("  key: none enrolled"),
            }
            let history = status.get("history").and_then(|h| h.as_array());
            for record in history.into_iter().flatten() {
                let passed = record.get("passed").and_then(serde_json::Value::as_bool);
                let reasons: Vec<&str> = record
                    .get("reasons")
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect();
                println!(
                    "  {}  {}  boot {}  {}",
                    time_text(record.get("time").and_then(serde_json::Value::as_i64)),
                    if passed == Some(true) {
                        "passed"
                    } else {
                        "failed"
                    },
                    record
                        .get("reset_count")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0),
                    reasons.join("; ")
                );
            }
        }
        AttestationCommand::Enrol { id, public_key } => {
            let pem = std::fs::read_to_string(&public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let key: serde_json::Value = ep
                .send(
                    ep.request(
                        client,
                        reqwest::Method::PUT,
                        &format!("/api/v1/devices/{id}/attestation/key"),
                    )
                    .json(&serde_json::json!({ "public_key": pem })),
                )
                .await?
                .json()
                .await?;
            println!(
                "enrolled {} key {} for {id}: it must attest to connect",
                key.get("algorithm").and_then(|v| v.as_str()).unwrap_or(""),
                key.get("fingerprint")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
            );
        }
        AttestationCommand::Unenrol { id } => {
            ep.send(ep.request(
                client,
                reqwest::Method::DELETE,
                &format!("/api/v1/devices/{id}/attestation/key"),
            ))
            .await?;
            println!("removed the attestation key of {id}");
        }
        AttestationCommand::Quote {
            id,
            device_token,
            ak,
            hash,
            pcrs,
            tpm2_quote,
        } => {
            let tpm = Tpm {
                ak: &ak,
                hash: &hash,
                pcrs: &pcrs,
                tpm2_quote: &tpm2_quote,
            };
            quote(ep, client, &id, device_token, &tpm).await?;
        }
        AttestationCommand::Policies => {
            let policies: serde_json::Value =
                ep.get_json(client, "/api/v1/attestation/policies").await?;
            println!("{}", serde_json::to_string_pretty(&policies)?);
        }
        AttestationCommand::Policy {
            device_type,
            from_device,
            only,
            pcrs,
            bank,
        } => {
            let mut set = serde_json::Map::new();
            for pcr in &pcrs {
                let Some((index, value)) = pcr.split_once('=') else {
                    bail!("--pcr `{pcr}`: expected INDEX=HEX");
                };
                set.insert(index.trim().to_owned(), value.trim().into());
            }
            let mut body = serde_json::json!({ "bank": bank });
            if !set.is_empty() {
                body["accept"] = serde_json::json!([set]);
            }
            if let Some(device) = from_device {
                body["from_device"] = device.into();
                if !only.is_empty() {
                    body["pcrs"] = serde_json::json!(only);
                }
            } else if !only.is_empty() {
                bail!("--only goes with --from-device");
            }
            let policy: serde_json::Value = ep
                .send(
                    ep.request(
                        client,
                        reqwest::Method::PUT,
                        &format!("/api/v1/attestation/policies/{device_type}"),
                    )
                    .json(&body),
                )
                .await?
                .json()
                .await?;
            println!("{}", serde_json::to_string_pretty(&policy)?);
        }
    }
    Ok(())
}

/// How long `tpm2_quote` may take (a quote takes well under a second on a real TPM).
const QUOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How the device's TPM is asked for a quote.
struct Tpm<'a> {
    ak: &'a str,
    hash: &'a str,
    pcrs: &'a str,
    tpm2_quote: &'a str,
}

/// The device's side of an attestation: challenge, `tpm2_quote`, evidence.
async fn quote(
    ep: &Endpoint,
    client: &reqwest::Client,
    id: &str,
    device_token: Option<String>,
    tpm: &Tpm<'_>,
) -> anyhow::Result<()> {
    let tpm2_quote = tpm.tpm2_quote;
    let device_token = device_token.filter(|t| !t.trim().is_empty());
    let request = |path: &str| {
        let url = format!(
            "{}/api/v1/devices/{id}/attestation/{path}",
            ep.url.trim_end_matches('/')
        );
        match &device_token {
            Some(token) => client
                .post(url)
                .basic_auth(id, Some(token.trim().to_owned())),
            None => ep.request(
                client,
                reqwest::Method::POST,
                &format!("/api/v1/devices/{id}/attestation/{path}"),
            ),
        }
    };
    let challenge: serde_json::Value = ep.send(request("challenge")).await?.json().await?;
    let Some(nonce) = challenge.get("nonce").and_then(|n| n.as_str()) else {
        bail!("the server sent no nonce");
    };
    let work = tempfile::Builder::new()
        .prefix("fabrik-quote-")
        .tempdir()
        .context("creating a directory for the quote")?;
    let files = ["quote.msg", "quote.sig", "pcrs.bin"].map(|f| work.path().join(f));
    let output = tokio::process::Command::new(tpm2_quote)
        .args(["-c", tpm.ak, "-l", tpm.pcrs, "-q", nonce, "-g", tpm.hash])
        .args(["-F", "values"])
        .arg("-m")
        .arg(&files[0])
        .arg("-s")
        .arg(&files[1])
        .arg("-o")
        .arg(&files[2])
        .kill_on_drop(true)
        .output();
    // A TPM that stops answering must not hang a boot-time unit forever.
    let output = match tokio::time::timeout(QUOTE_TIMEOUT, output).await {
        Ok(done) => done.with_context(|| format!("running {tpm2_quote} (tpm2-tools)")),
        Err(_) => Err(anyhow::anyhow!(
            "{tpm2_quote} did not finish within {} s: is the TPM (TPM2TOOLS_TCTI) answering?",
            QUOTE_TIMEOUT.as_secs()
        )),
    };
    let read = |i: usize| {
        std::fs::read(&files[i])
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .with_context(|| format!("reading {}", files[i].display()))
    };
    let evidence = match output {
        Ok(out) if out.status.success() => (|| {
            Ok::<_, anyhow::Error>(serde_json::json!({
                "nonce": nonce,
                "quote": read(0)?,
                "signature": read(1)?,
                "pcrs": read(2)?,
            }))
        })(),
        Ok(out) => Err(anyhow::anyhow!(
            "{tpm2_quote} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(e),
    };
    drop(work);
    let record: serde_json::Value = ep
        .send(request("evidence").json(&evidence?))
        .await?
        .json()
        .await?;
    println!(
        "{id} attested (TPM boot {}); it may connect for [attestation] max_age",
        record
            .get("reset_count")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    );
    Ok(())
}
