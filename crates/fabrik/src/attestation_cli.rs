//! `fabrik device attestation …`: enrol a device's TPM attestation key, set a device type's
//! reference PCR values, show whether a device may connect, and, on the device itself,
//! activate its key through the TPM's endorsement key and answer a challenge with a quote from
//! its TPM (through tpm2-tools).

use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;

use crate::client::{Endpoint, time_text};

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
    /// On the device: enrol its attestation key through the TPM's endorsement key (EK) — the
    /// server checks the EK certificate and sends a credential only this TPM can open for
    /// this key (`tpm2_activatecredential`).
    Activate {
        /// Device id.
        id: String,
        /// The device's token (HTTP Basic with its id); without it, the admin token is used.
        #[arg(long, env = "FABRIK_DEVICE_TOKEN", hide_env_values = true)]
        device_token: Option<String>,
        /// The attestation key's persistent handle (e.g. 0x81010002) or context file.
        #[arg(long)]
        ak: String,
        /// The endorsement key's algorithm (the TCG's default templates).
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ecc"])]
        ek: String,
        /// The EK certificate (DER or PEM); default: read from the TPM's NV index (0x01c00002
        /// for RSA, 0x01c0000a for ECC), sent only if there is one.
        #[arg(long)]
        ek_certificate: Option<PathBuf>,
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
        /// The boot's measured-boot event log to send with the quote, or `none`. Default:
        /// the kernel's copy of the firmware's log, when it is there and readable (it is
        /// root's).
        #[arg(long)]
        event_log: Option<String>,
        /// The kernel's IMA runtime measurement list to send, or `none`; the quote must then
        /// include PCR 10 (`--pcrs sha256:0,…,7,10`). Default: the kernel's list when it is
        /// readable (it is root's) and PCR 10 is quoted.
        #[arg(long)]
        ima_log: Option<String>,
    },
    /// The measured-boot events of a device's newest quote whose event log replayed: what its
    /// firmware, boot loader and kernel measured, PCR by PCR.
    Events {
        /// Device id.
        id: String,
        /// Only this PCR's events (repeat).
        #[arg(long = "pcr")]
        pcrs: Vec<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every device type's attestation policy: accepted PCR values, PCRs judged by their
    /// measured-boot events and the digests allowed in them.
    Policies,
    /// Set a device type's reference values: PCR values from a known-good device's last
    /// quote, or given; PCRs judged by their measured-boot events against allowed digests;
    /// with --merge, add to (or --revoke from) the policy it has. Without --merge the policy
    /// is replaced whole: settings not given are not kept.
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
        /// PCR bank (default sha256; a merge keeps the policy's).
        #[arg(long)]
        bank: Option<String>,
        /// Judge these PCRs (of 0-9) by the events of the quote's event log against the
        /// allowed digests instead of by value (repeat, or 0,2,4).
        #[arg(long = "measure", value_delimiter = ',')]
        measure: Vec<u32>,
        /// Allow a digest in a measured PCR, PCR=HEX or PCR=HEX:NOTE (repeat): a new boot
        /// loader's, before it is rolled out.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Allow every measurement of the measured PCRs in this device's last event log that
        /// replayed.
        #[arg(long)]
        allow_from_device: Option<String>,
        /// Refuse quotes without an event log that replays.
        #[arg(long, conflicts_with = "no_require_event_log")]
        require_event_log: bool,
        /// Accept quotes without an event log again (PCRs judged by their events still need
        /// one).
        #[arg(long)]
        no_require_event_log: bool,
        /// Add to the type's policy instead of replacing it.
        #[arg(long)]
        merge: bool,
        /// With --merge: a digest no longer allowed (repeat); passes that relied on it end.
        #[arg(long = "revoke")]
        revoke: Vec<String>,
    },
    /// A device type's runtime policy (decision 0067): the files its kernel's IMA may measure,
    /// by path and digest. Prints it; with FILE (JSON: `allowed`, `excludes`,
    /// `violations_fail`) replaces it, or with --merge adds to it; --allow-from-device adds
    /// every file a known-good device's IMA log shows; --remove removes it.
    RuntimePolicy {
        /// Device type.
        device_type: String,
        /// The policy to set (JSON), `-` for standard input.
        file: Option<String>,
        /// Add FILE's digests and excludes to the type's policy (made when it has none)
        /// instead of replacing it.
        #[arg(long, requires = "file")]
        merge: bool,
        /// Add every file (with its digest) of this device's newest IMA log that replayed to
        /// an authentic quote; always a merge.
        #[arg(long)]
        allow_from_device: Option<String>,
        /// Add a public key (PEM file: RSA, ECDSA P-256 or P-384) whose IMA signatures
        /// (`evmctl ima_sign`) admit a file (repeat); always a merge.
        #[arg(long = "signing-key")]
        signing_keys: Vec<PathBuf>,
        /// Remove the type's runtime policy.
        #[arg(long, conflicts_with_all = ["file", "allow_from_device", "signing_keys"])]
        remove: bool,
    },
    /// Make a runtime policy from a device image's root file system: every regular file by its
    /// digest (symbolic links are not followed; /proc, /sys, /dev and /run are not walked).
    /// Prints the JSON `runtime-policy TYPE FILE` takes.
    MakeRuntimePolicy {
        /// The image's root (mounted or unpacked).
        root: PathBuf,
        /// An image path neither walked nor judged at runtime: data that changes (repeat).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        /// The digest the devices' kernels use (`ima_hash=`).
        #[arg(long, default_value = "sha256", value_parser = ["sha1", "sha256", "sha384", "sha512"])]
        hash: String,
    },
    /// The files a device's kernel measured (IMA), as covered by its newest authentic quote
    /// whose list replayed.
    ImaLog {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
            if let Some(e) = status
                .get("key")
                .and_then(|k| k.get("endorsement"))
                .filter(|e| !e.is_null())
            {
                let text = |k: &str| e.get(k).and_then(|v| v.as_str());
                println!(
                    "  activated through {} EK {} ({})",
                    text("ek_algorithm").unwrap_or(""),
                    text("ek_fingerprint").unwrap_or(""),
                    text("certificate_issuer").map_or_else(
                        || "EK certificate not checked".to_owned(),
                        |issuer| format!("EK certificate issued by {issuer}")
                    )
                );
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
        AttestationCommand::Activate {
            id,
            device_token,
            ak,
            ek,
            ek_certificate,
        } => {
            let device = DeviceCaller::new(ep, client, &id, device_token);
            activate(&device, &ak, &ek, ek_certificate.as_deref()).await?;
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
            event_log,
            ima_log,
        } => {
            let tpm = Tpm {
                ak: &ak,
                hash: &hash,
                pcrs: &pcrs,
                tpm2_quote: &tpm2_quote,
            };
            let event_log = read_event_log(event_log.as_deref())?;
            let ima_log = ima_log_source(ima_log.as_deref(), &pcrs)?;
            let device = DeviceCaller::new(ep, client, &id, device_token);
            quote(&device, &tpm, event_log, ima_log).await?;
        }
        AttestationCommand::RuntimePolicy {
            device_type,
            file,
            merge,
            allow_from_device,
            signing_keys,
            remove,
        } => {
            let path = format!("/api/v1/attestation/policies/{device_type}/runtime");
            if remove {
                ep.send(ep.request(client, reqwest::Method::DELETE, &path))
                    .await?;
                println!("removed the runtime policy of {device_type}");
                return Ok(());
            }
            let body = file.as_deref().map(read_json_file).transpose()?;
            let mut keys = Vec::new();
            for key in &signing_keys {
                keys.push(serde_json::Value::from(
                    std::fs::read_to_string(key)
                        .with_context(|| format!("reading the signing key {}", key.display()))?,
                ));
            }
            let adding = merge || allow_from_device.is_some() || !keys.is_empty();
            let policy: serde_json::Value = match (body, allow_from_device) {
                (None, None) if !adding => ep.get_json(client, &path).await?,
                (Some(body), None) if !adding => {
                    ep.send(ep.request(client, reqwest::Method::PUT, &path).json(&body))
                        .await?
                        .json()
                        .await?
                }
                (body, from_device) => {
                    // A merge takes a policy's `allowed`, `excludes` and `signing_keys`; what
                    // else it holds is the type's to keep.
                    let pick = |key: &str| body.as_ref().and_then(|body| body.get(key)).cloned();
                    let mut addition = serde_json::Map::new();
                    for key in ["allowed", "excludes", "signing_keys"] {
                        if let Some(value) = pick(key) {
                            addition.insert(key.to_owned(), value);
                        }
                    }
                    if let Some(device) = from_device {
                        addition.insert("from_device".to_owned(), device.into());
                    }
                    if !keys.is_empty() {
                        let mut all = match addition.remove("signing_keys") {
                            Some(serde_json::Value::Array(given)) => given,
                            _ => Vec::new(),
                        };
                        all.extend(keys);
                        addition.insert("signing_keys".to_owned(), all.into());
                    }
                    ep.send(
                        ep.request(client, reqwest::Method::POST, &format!("{path}/merge"))
                            .json(&addition),
                    )
                    .await?
                    .json()
                    .await?
                }
            };
            println!("{}", serde_json::to_string_pretty(&policy)?);
        }
        AttestationCommand::MakeRuntimePolicy {
            root,
            excludes,
            hash,
        } => {
            let made = crate::image_policy::make(&root, &excludes, &hash)?;
            println!("{}", serde_json::to_string_pretty(&made.policy)?);
            eprintln!(
                "{} files of {} by their {hash} digests",
                made.files,
                root.display()
            );
            if !made.not_utf8.is_empty() {
                eprintln!(
                    "left out, their names not being UTF-8 (a device that runs them fails): {}",
                    made.not_utf8
                        .iter()
                        .map(|path| path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        AttestationCommand::ImaLog { id, json } => {
            let log: fabrik_registry::attestation::DeviceImaLog = ep
                .get_json(client, &format!("/api/v1/devices/{id}/attestation/ima-log"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&log)?);
            } else {
                println!(
                    "{id}: {} IMA entries covered by the quote of {}",
                    log.entries.len(),
                    time_text(Some(log.time))
                );
                if let Some(problem) = &log.boot_aggregate_problem {
                    println!("  boot_aggregate: {problem}");
                }
                for (number, entry) in log.entries.iter().enumerate() {
                    println!(
                        "{number:>6}  {}  {}{}",
                        entry.digest,
                        entry.path,
                        if entry.violation { "  (violation)" } else { "" }
                    );
                }
            }
        }
        AttestationCommand::Events { id, pcrs, json } => {
            let log: fabrik_registry::attestation::DeviceEventLog = ep
                .get_json(
                    client,
                    &format!("/api/v1/devices/{id}/attestation/event-log"),
                )
                .await?;
            let events: Vec<_> = log
                .events
                .iter()
                .filter(|e| pcrs.is_empty() || pcrs.contains(&e.pcr))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                println!(
                    "{id}: {} events of the quote of {} ({} digests)",
                    events.len(),
                    time_text(Some(log.time)),
                    log.bank
                );
                for event in events {
                    // `?`: a description the digest does not vouch for (the device's claim).
                    println!(
                        "{:>4}  PCR {:>2}  {:<34} {}  {}{}",
                        event.sequence,
                        event.pcr,
                        event.event_type,
                        event.digest,
                        if event.verified { "" } else { "? " },
                        event.description
                    );
                }
            }
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
            measure,
            allow,
            allow_from_device,
            require_event_log,
            no_require_event_log,
            merge,
            revoke,
        } => {
            let mut set = serde_json::Map::new();
            for pcr in &pcrs {
                let Some((index, value)) = pcr.split_once('=') else {
                    bail!("--pcr `{pcr}`: expected INDEX=HEX");
                };
                set.insert(index.trim().to_owned(), value.trim().into());
            }
            let mut body = serde_json::json!({ "merge": merge });
            if let Some(bank) = bank {
                body["bank"] = bank.into();
            }
            if !set.is_empty() {
                body["accept"] = serde_json::json!([set]);
            }
            if !measure.is_empty() {
                body["measure"] = serde_json::json!(measure);
            }
            let mut allowed = Vec::new();
            for digest in &allow {
                let Some((pcr, rest)) = digest.split_once('=') else {
                    bail!("--allow `{digest}`: expected PCR=HEX or PCR=HEX:NOTE");
                };
                let pcr: u32 = pcr
                    .trim()
                    .parse()
                    .with_context(|| format!("--allow `{digest}`: PCR"))?;
                let mut entry = serde_json::json!({ "pcr": pcr });
                match rest.split_once(':') {
                    Some((hex, note)) => {
                        entry["digest"] = hex.trim().into();
                        entry["note"] = note.trim().into();
                    }
                    None => entry["digest"] = rest.trim().into(),
                }
                allowed.push(entry);
            }
            if !allowed.is_empty() {
                body["allow"] = allowed.into();
            }
            if let Some(device) = allow_from_device {
                body["allow_from_device"] = device.into();
            }
            if require_event_log || no_require_event_log {
                body["require_event_log"] = require_event_log.into();
            }
            if !revoke.is_empty() && !merge {
                bail!("--revoke goes with --merge: a replaced policy has nothing to revoke");
            }
            if !revoke.is_empty() {
                body["revoke"] = serde_json::json!(revoke);
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

/// How long a tpm2-tools command may take (a quote takes well under a second on a real TPM).
const TPM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How the device's TPM is asked for a quote.
struct Tpm<'a> {
    ak: &'a str,
    hash: &'a str,
    pcrs: &'a str,
    tpm2_quote: &'a str,
}

/// A device's own calls to its attestation routes: its id and token (HTTP Basic), or the admin
/// token when it has none.
struct DeviceCaller<'a> {
    ep: &'a Endpoint,
    client: &'a reqwest::Client,
    id: &'a str,
    token: Option<String>,
}

impl<'a> DeviceCaller<'a> {
    fn new(
        ep: &'a Endpoint,
        client: &'a reqwest::Client,
        id: &'a str,
        token: Option<String>,
    ) -> Self {
        let token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        Self {
            ep,
            client,
            id,
            token,
        }
    }

    /// POSTs `body` to `/api/v1/devices/{id}/attestation/{path}` and reads the JSON answer.
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/v1/devices/{}/attestation/{path}", self.id);
        let request = match &self.token {
            Some(token) => self
                .client
                .post(format!("{}{path}", self.ep.url.trim_end_matches('/')))
                .basic_auth(self.id, Some(token.clone())),
            None => self.ep.request(self.client, reqwest::Method::POST, &path),
        };
        Ok(self.ep.send(request.json(body)).await?.json().await?)
    }
}

/// Runs a tpm2-tools command, bounded in time; its failure names the tool and what it said.
async fn tpm2(tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<std::process::Output> {
    let output = tokio::process::Command::new(tool)
        .args(args)
        .kill_on_drop(true)
        .output();
    // A TPM that stops answering must not hang a boot-time unit forever.
    let output = match tokio::time::timeout(TPM_TIMEOUT, output).await {
        Ok(done) => done.with_context(|| format!("running {tool} (tpm2-tools)"))?,
        Err(_) => bail!(
            "{tool} did not finish within {} s: is the TPM (TPM2TOOLS_TCTI) answering?",
            TPM_TIMEOUT.as_secs()
        ),
    };
    if !output.status.success() {
        bail!(
            "{tool} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

fn base64_of(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read(path)
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .with_context(|| format!("reading {}", path.display()))
}

/// The device's side of an activation: its EK, EK certificate and AK to the server, the
/// credential it answers with through `tpm2_activatecredential`, the released secret back.
async fn activate(
    device: &DeviceCaller<'_>,
    ak: &str,
    ek_algorithm: &str,
    ek_certificate: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("fabrik-activate-")
        .tempdir()
        .context("creating a directory for the activation")?;
    let file = |name: &str| work.path().join(name);
    let (ek_ctx, ek_pub, ak_pub) = (file("ek.ctx"), file("ek.pub"), file("ak.pub"));
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    // The EK is derived again from the TPM's endorsement seed with the TCG's template.
    tpm2(
        "tpm2_createek",
        &[
            os("-G"),
            ek_algorithm.as_ref(),
            os("-c"),
            ek_ctx.as_os_str(),
            os("-u"),
            ek_pub.as_os_str(),
        ],
    )
    .await?;
    // Without a resource manager (a TPM used directly), loaded objects stay until flushed.
    let _ = tpm2("tpm2_flushcontext", &[os("-t")]).await;
    tpm2(
        "tpm2_readpublic",
        &[os("-c"), ak.as_ref(), os("-o"), ak_pub.as_os_str()],
    )
    .await?;
    let _ = tpm2("tpm2_flushcontext", &[os("-t")]).await;
    let certificate = match ek_certificate {
        Some(path) => Some(read_certificate(path)?),
        None => {
            let index = if ek_algorithm == "ecc" {
                "0x01c0000a"
            } else {
                "0x01c00002"
            };
            let cert = file("ek.crt");
            match tpm2("tpm2_nvread", &[index.as_ref(), os("-o"), cert.as_os_str()]).await {
                Ok(_) => Some(base64_of(&cert)?),
                Err(e) => {
                    eprintln!("no EK certificate in NV index {index} ({e}); going on without one");
                    None
                }
            }
        }
    };
    let challenge = device
        .post(
            "activation",
            &serde_json::json!({
                "ek_public": base64_of(&ek_pub)?,
                "ak_public": base64_of(&ak_pub)?,
                "ek_certificate": certificate,
            }),
        )
        .await?;
    let (Some(activation), Some(credential)) = (
        challenge.get("id").and_then(|v| v.as_str()),
        challenge.get("credential").and_then(|v| v.as_str()),
    ) else {
        bail!("the server sent no credential");
    };
    let credential = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .context("the server's credential is not base64")?;
    let (cred, secret, session) = (
        file("credential.bin"),
        file("secret.bin"),
        file("session.ctx"),
    );
    std::fs::write(&cred, credential).with_context(|| format!("writing {}", cred.display()))?;
    // Activating through the EK needs the endorsement hierarchy's policy (TCG EK templates).
    tpm2(
        "tpm2_startauthsession",
        &[os("--policy-session"), os("-S"), session.as_os_str()],
    )
    .await?;
    let policy_session = format!("session:{}", session.display());
    let released = async {
        tpm2(
            "tpm2_policysecret",
            &[os("-S"), session.as_os_str(), os("-c"), os("e")],
        )
        .await?;
        tpm2(
            "tpm2_activatecredential",
            &[
                os("-c"),
                ak.as_ref(),
                os("-C"),
                ek_ctx.as_os_str(),
                os("-i"),
                cred.as_os_str(),
                os("-o"),
                secret.as_os_str(),
                os("-P"),
                policy_session.as_ref(),
            ],
        )
        .await
    }
    .await;
    let _ = tpm2("tpm2_flushcontext", &[session.as_os_str()]).await;
    let _ = tpm2("tpm2_flushcontext", &[os("-t")]).await;
    released?;
    let key = device
        .post(
            &format!("activation/{activation}"),
            &serde_json::json!({ "secret": base64_of(&secret)? }),
        )
        .await?;
    let issuer = key
        .get("endorsement")
        .and_then(|e| e.get("certificate_issuer"))
        .and_then(|v| v.as_str())
        .map_or_else(|| "not checked".to_owned(), |i| format!("issued by {i}"));
    println!(
        "{} enrolled {} attestation key {} through its TPM's {ek_algorithm} endorsement key (EK certificate {issuer}); it must attest to connect",
        device.id,
        key.get("algorithm").and_then(|v| v.as_str()).unwrap_or(""),
        key.get("fingerprint")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    );
    Ok(())
}

/// An EK certificate file (DER, or PEM as vendors publish some), base64 of its DER.
fn read_certificate(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    if let Some(body) = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
    {
        let compact: String = body.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .with_context(|| format!("{}: a PEM block that is not base64", path.display()))?;
        return Ok(compact);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Where Linux exposes the firmware's measured-boot event log.
const KERNEL_EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// The event log to send: the one named (`none`: no log), else the kernel's when readable.
/// Read before the challenge is asked for, so a bad path costs no challenge.
fn read_event_log(choice: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
    match choice {
        Some("none") => Ok(None),
        Some(path) => std::fs::read(path)
            .map(Some)
            .with_context(|| format!("reading the event log {path}")),
        None => Ok(std::fs::read(KERNEL_EVENT_LOG).ok()),
    }
}

/// Where Linux exposes IMA's runtime measurement list.
const KERNEL_IMA_LOG: &str = "/sys/kernel/security/ima/binary_runtime_measurements";

/// Where the IMA list to send is read from: the file named (`none`: no list), else the
/// kernel's when readable and PCR 10 is among `pcrs` (without it the list cannot be checked).
/// Only opened here, so a bad path costs no challenge: the list is read after the quote, so
/// that it holds everything PCR 10 did (the quoting tool's own first run is measured too).
fn ima_log_source(choice: Option<&str>, pcrs: &str) -> anyhow::Result<Option<PathBuf>> {
    match choice {
        Some("none") => Ok(None),
        Some(path) => std::fs::File::open(path)
            .map(|_| Some(PathBuf::from(path)))
            .with_context(|| format!("reading the IMA log {path}")),
        None if quotes_pcr_10(pcrs) && std::fs::File::open(KERNEL_IMA_LOG).is_ok() => {
            Ok(Some(PathBuf::from(KERNEL_IMA_LOG)))
        }
        None => Ok(None),
    }
}

/// Whether a tpm2-tools PCR selection (`sha256:0,1,7+sha1:10`) names PCR 10.
fn quotes_pcr_10(pcrs: &str) -> bool {
    pcrs.split('+').any(|bank| {
        bank.split_once(':')
            .is_some_and(|(_, list)| list.split(',').any(|pcr| pcr.trim() == "10"))
    })
}

/// The device's side of an attestation: challenge, `tpm2_quote`, evidence.
async fn quote(
    device: &DeviceCaller<'_>,
    tpm: &Tpm<'_>,
    event_log: Option<Vec<u8>>,
    ima_log: Option<PathBuf>,
) -> anyhow::Result<()> {
    let id = device.id;
    // The IMA list from the entry the verifier holds on; sent whole when it holds none, or
    // once more when it cannot continue (the device booted since, say).
    let mut continue_list = true;
    let record = loop {
        match quote_once(
            device,
            tpm,
            event_log.as_deref(),
            ima_log.as_deref(),
            continue_list,
        )
        .await
        {
            Err(e)
                if continue_list
                    && format!("{e:#}")
                        .contains(fabrik_registry::attestation::IMA_CONTINUATION_REFUSED) =>
            {
                tracing::info!(device = id, error = %format!("{e:#}"), "Sending the IMA list whole.");
                continue_list = false;
            }
            done => break done?,
        }
    };
    println!(
        "{id} attested (TPM boot {}); it may connect for [attestation] max_age",
        record
            .get("reset_count")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    );
    Ok(())
}

/// One challenge answered with one quote; returns the verdict.
async fn quote_once(
    device: &DeviceCaller<'_>,
    tpm: &Tpm<'_>,
    event_log: Option<&[u8]>,
    ima_log: Option<&std::path::Path>,
    continue_list: bool,
) -> anyhow::Result<serde_json::Value> {
    let challenge = device.post("challenge", &serde_json::json!({})).await?;
    let Some(nonce) = challenge.get("nonce").and_then(|n| n.as_str()) else {
        bail!("the server sent no nonce");
    };
    let known = challenge
        .get("ima_entries_known")
        .and_then(serde_json::Value::as_u64)
        .and_then(|known| usize::try_from(known).ok())
        .filter(|&known| continue_list && known > 0);
    let work = tempfile::Builder::new()
        .prefix("fabrik-quote-")
        .tempdir()
        .context("creating a directory for the quote")?;
    let files = ["quote.msg", "quote.sig", "pcrs.bin"].map(|f| work.path().join(f));
    let os = std::ffi::OsStr::new;
    tpm2(
        tpm.tpm2_quote,
        &[
            os("-c"),
            os(tpm.ak),
            os("-l"),
            os(tpm.pcrs),
            os("-q"),
            os(nonce),
            os("-g"),
            os(tpm.hash),
            os("-F"),
            os("values"),
            os("-m"),
            files[0].as_os_str(),
            os("-s"),
            files[1].as_os_str(),
            os("-o"),
            files[2].as_os_str(),
        ],
    )
    .await?;
    let mut evidence = serde_json::json!({
        "nonce": nonce,
        "quote": base64_of(&files[0])?,
        "signature": base64_of(&files[1])?,
        "pcrs": base64_of(&files[2])?,
    });
    // Only when there is one: a server from before event logs refuses unknown fields.
    if let Some(log) = event_log {
        evidence["event_log"] = base64::engine::general_purpose::STANDARD.encode(log).into();
    }
    if let Some(path) = ima_log {
        let log = std::fs::read(path)
            .with_context(|| format!("reading the IMA log {}", path.display()))?;
        // A list shorter than the verifier's is another boot's: sent whole.
        let continued = known.and_then(|known| {
            fabrik_registry::tpm::ima::after_entries(&log, known).map(|rest| (known, rest))
        });
        let engine = base64::engine::general_purpose::STANDARD;
        match continued {
            Some((known, rest)) => {
                evidence["ima_log"] = engine.encode(rest).into();
                evidence["ima_log_offset"] = known.into();
            }
            None => evidence["ima_log"] = engine.encode(&log).into(),
        }
    }
    drop(work);
    device.post("evidence", &evidence).await
}

/// A JSON file (`-`: standard input), its errors naming it.
fn read_json_file(file: &str) -> anyhow::Result<serde_json::Value> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the policy")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading the policy {file}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{file}: not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_ima_list_goes_along_only_when_pcr_10_is_quoted() {
        assert!(quotes_pcr_10("sha256:0,1,2,3,4,5,6,7,10"));
        assert!(quotes_pcr_10("sha256:0,7+sha1:10"));
        assert!(!quotes_pcr_10("sha256:0,1,2,3,4,5,6,7"));
        assert!(!quotes_pcr_10("sha256:1,0"));
        assert_eq!(ima_log_source(None, "sha256:0,7").expect("none"), None);
        assert_eq!(
            ima_log_source(Some("none"), "sha256:10").expect("none"),
            None
        );
        let missing = ima_log_source(Some("/nonexistent/ima"), "sha256:10").expect_err("missing");
        assert!(
            format!("{missing:#}").contains("/nonexistent/ima"),
            "{missing:#}"
        );
    }
}
