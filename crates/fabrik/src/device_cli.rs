//! `fabrik device add|list|show|values|rm|rotate-token|fleet|attestation|setpoints|set`: a thin client of
//! `/api/v1/devices`.

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::client::{Endpoint, time_text};

/// `fabrik device ...`
#[derive(Debug, Args)]
pub(crate) struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device; prints its token once (the MQTT password, user name = id).
    Add {
        /// Device id: letters, digits, '-', '_', '.', ':'.
        id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Kind of equipment (also the table of its telemetry).
        #[arg(long = "type")]
        device_type: Option<String>,
        /// Site or line.
        #[arg(long)]
        site: Option<String>,
        /// A label, key=value; repeat for several.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Sparkplug B edge node the device owns, group/edge_node.
        #[arg(long)]
        sparkplug_node: Option<String>,
    },
    /// List devices.
    List {
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only this type.
        #[arg(long = "type")]
        device_type: Option<String>,
        /// Only this state: online, offline, never.
        #[arg(long)]
        state: Option<String>,
        /// Only devices with this label (key or key=value).
        #[arg(long)]
        label: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one device and its recent connection history.
    Show {
        /// Device id.
        id: String,
    },
    /// Each signal's newest value and when it was reported, however long ago.
    Values {
        /// Device id.
        id: String,
        /// The table to read (default: the device's type).
        #[arg(long)]
        table: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device (its stored data stays).
    Rm {
        /// Device id.
        id: String,
    },
    /// Issue a new token; the old one stops working at once.
    RotateToken {
        /// Device id.
        id: String,
    },
    /// TPM attestation: enrol keys, set reference values, quote from the device.
    Attestation {
        #[command(subcommand)]
        command: crate::attestation_cli::AttestationCommand,
    },
    /// On a hub: the devices its uplinked edges register, by node (from `_devices`).
    Fleet {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The points operators may set (declared `writable` in the connectors' configuration).
    Setpoints {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a writable point: the device reads it back; exits non-zero unless it holds the value.
    Set {
        /// Device id.
        device: String,
        /// The point.
        signal: String,
        /// A number in engineering units, or true/false; with `--text`, the text itself (one
        /// that begins with `-` after `--`).
        #[arg(allow_negative_numbers = true)]
        value: String,
        /// Send VALUE as text, for a text point (a Modbus `string`, an OPC UA `String` node, a
        /// Sparkplug `String` or `Text` metric), even when it reads as a number.
        #[arg(long)]
        text: bool,
        /// Why (a work order, a shift note), kept with the write.
        #[arg(long)]
        note: Option<String>,
    },
}

/// `fabrik device values` as a table: signal, value (text quoted), when reported.
fn values_table(latest: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let values = latest
        .get("values")
        .and_then(serde_json::Value::as_object)
        .unwrap_or(&empty);
    let mut out = format!("{:<32} {:<24} reported\n", "signal", "value");
    for (signal, v) in values {
        let value = match &v["value"] {
            serde_json::Value::String(text) => format!("{text:?}"),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "{signal:<32} {value:<24} {}\n",
            time_text(v["time_ns"].as_i64())
        ));
    }
    out.push_str(&format!(
        "{} signal(s) of {} in table {}\n",
        values.len(),
        latest["device"].as_str().unwrap_or(""),
        latest["table"].as_str().unwrap_or("")
    ));
    out
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not key=value")),
    }
}

/// Runs a `fabrik device` command.
pub(crate) async fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    match args.command {
        DeviceCommand::Add {
            id,
            name,
            device_type,
            site,
            labels,
            sparkplug_node,
        } => {
            let body = serde_json::json!({
                "id": id,
                "name": name,
                "type": device_type,
                "site": site,
                "labels": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "sparkplug_node": sparkplug_node,
            });
            let created: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, "/api/v1/devices")
                        .json(&body),
                )
                .await?
                .json()
                .await?;
            let token = created.get("token").and_then(|t| t.as_str()).unwrap_or("");
            println!("registered device {id}");
            println!("  MQTT user name: {id}");
            println!("  MQTT password (token, shown once): {token}");
        }
        DeviceCommand::List {
            site,
            device_type,
            state,
            label,
            json,
        } => {
            let mut query = Vec::new();
            for (k, v) in [
                ("site", site),
                ("type", device_type),
                ("state", state),
                ("label", label),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let query: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", crate::client::percent_encode(v)))
                .collect();
            let path = if query.is_empty() {
                "/api/v1/devices".to_owned()
            } else {
                format!("/api/v1/devices?{}", query.join("&"))
            };
            let devices: Vec<serde_json::Value> = ep.get_json(&client, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<10} {:<12} {:<8} {:>10} {:>7}  last seen",
                "id", "type", "site", "state", "messages", "errors"
            );
            for d in &devices {
                let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                let n = |k: &str| d.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
                println!(
                    "{:<24} {:<10} {:<12} {:<8} {:>10} {:>7}  {}",
                    s("id"),
                    s("device_type"),
                    s("site"),
                    s("state"),
                    n("messages"),
                    n("errors"),
                    time_text(d.get("last_seen").and_then(serde_json::Value::as_i64))
                );
            }
            println!("{} device(s)", devices.len());
        }
        DeviceCommand::Show { id } => {
            let path = format!("/api/v1/devices/{id}");
            let device: serde_json::Value = ep.get_json(&client, &path).await?;
            println!("{}", serde_json::to_string_pretty(&device)?);
            let events: Vec<serde_json::Value> = ep
                .get_json(&client, &format!("{path}/events?limit=20"))
                .await?;
            println!("recent events:");
            for e in events {
                println!(
                    "  {}  {:<14} {}",
                    time_text(e.get("time").and_then(serde_json::Value::as_i64)),
                    e.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                    e.get("detail").and_then(|v| v.as_str()).unwrap_or("")
                );
            }
        }
        DeviceCommand::Values { id, table, json } => {
            let mut path = format!(
                "/api/v1/devices/{}/latest",
                crate::client::percent_encode(&id)
            );
            if let Some(table) = table {
                path.push_str(&format!("?table={}", crate::client::percent_encode(&table)));
            }
            let latest: serde_json::Value = ep.get_json(&client, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&latest)?);
                return Ok(());
            }
            print!("{}", values_table(&latest));
        }
        DeviceCommand::Rm { id } => {
            ep.send(ep.request(
                &client,
                reqwest::Method::DELETE,
                &format!("/api/v1/devices/{id}"),
            ))
            .await?;
            println!("removed device {id} (its stored data stays)");
        }
        DeviceCommand::RotateToken { id } => {
            let body: serde_json::Value = ep
                .send(ep.request(
                    &client,
                    reqwest::Method::POST,
                    &format!("/api/v1/devices/{id}/token"),
                ))
                .await?
                .json()
                .await?;
            let Some(token) = body.get("token").and_then(|t| t.as_str()) else {
                bail!("the server sent no token");
            };
            println!("new token for {id} (shown once; the old one no longer works): {token}");
        }
        DeviceCommand::Attestation { command } => {
            crate::attestation_cli::run(ep, &client, command).await?;
        }
        DeviceCommand::Fleet { json } => {
            let fleet: serde_json::Value = ep.get_json(&client, "/api/v1/fleet/devices").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&fleet)?);
                return Ok(());
            }
            print!("{}", fleet_table(&fleet));
        }
        DeviceCommand::Setpoints { json } => {
            let points: Vec<serde_json::Value> = ep.get_json(&client, "/api/v1/setpoints").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&points)?);
                return Ok(());
            }
            print!("{}", setpoints_table(&points));
        }
        DeviceCommand::Set {
            device,
            signal,
            value,
            text,
            note,
        } => {
            let value = if text {
                serde_json::Value::String(value)
            } else {
                parse_setpoint(&value)?
            };
            let path = format!(
                "/api/v1/devices/{}/setpoints/{}",
                crate::client::percent_encode(&device),
                crate::client::percent_encode(&signal)
            );
            let written: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, &path)
                        .json(&serde_json::json!({ "value": value, "note": note })),
                )
                .await?
                .json()
                .await?;
            report_written(&written)?;
        }
    }
    Ok(())
}

/// Prints a setpoint write's answer (`SetpointWritten`); an error unless the device holds the
/// value written.
pub(crate) fn report_written(written: &serde_json::Value) -> anyhow::Result<()> {
    let text = |key: &str| written[key].as_str().unwrap_or("?").to_owned();
    let (device, signal, value) = (text("device"), text("signal"), &written["value"]);
    let read_back = &written["read_back"];
    if let Some(why) = written["read_back_error"].as_str() {
        anyhow::bail!(
            "{device}/{signal}: the device acknowledged the write of {value}, but it could not \
             be read back: {why}"
        );
    }
    if written["confirmed"] != serde_json::Value::Bool(true) {
        anyhow::bail!(
            "{device}/{signal}: the device answered the write of {value} but holds \
             {read_back}: it did not take the value as written (clamped or overwritten)"
        );
    }
    println!("{device}/{signal} = {read_back} (read back from the device)");
    Ok(())
}

/// `true`/`false` for switches, else a number.
fn parse_setpoint(text: &str) -> anyhow::Result<serde_json::Value> {
    match text {
        "true" => Ok(serde_json::Value::Bool(true)),
        "false" => Ok(serde_json::Value::Bool(false)),
        number => number
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| serde_json::json!(v))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "`{text}` is neither a number nor true/false (give --text to set a text point)"
                )
            }),
    }
}

/// The writable points as text: a line per point.
fn setpoints_table(points: &[serde_json::Value]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if points.is_empty() {
        out.push_str(
            "no writable points: a connector's point is written only with `writable = true`\n",
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:<8} {:<16} {:<6} range",
        "device", "signal", "protocol", "address", "type"
    );
    for p in points {
        let text = |key: &str| p[key].as_str().unwrap_or_default().to_owned();
        let range = match (p["min"].as_f64(), p["max"].as_f64()) {
            (Some(min), Some(max)) => {
                // Decision 0094: say when the device's own declaration set or narrowed it.
                let from = match p["range_from"].as_str() {
                    Some("device") => " (declared by the device)",
                    Some("configuration and device") => " (narrowed by the device)",
                    Some("configuration outside the device's") => {
                        " (outside the device's EURange: every write is refused)"
                    }
                    _ => "",
                };
                format!("{min}..={max} {}{from}", text("unit"))
            }
            // An OPC UA node's type is the server's, known once its session connected.
            _ => match (text("protocol").as_str(), text("data_type").as_str()) {
                // Decision 0095: set with `--text`.
                (_, data_type) if fabrik_api::setpoints::takes_text(data_type) => {
                    "text (set with --text)".to_owned()
                }
                ("opcua", "node") => {
                    "true/false, a number without a range, or text (--text)".to_owned()
                }
                ("opcua", number) if number != "Boolean" => {
                    format!("no range: configure `min` and `max` to write this {number}")
                }
                _ => "true/false".to_owned(),
            },
        };
        let _ = writeln!(
            out,
            "{:<20} {:<20} {:<8} {:<16} {:<6} {}",
            text("device"),
            text("signal"),
            text("protocol"),
            text("address"),
            text("data_type"),
            range.trim_end()
        );
    }
    out
}

/// The fleet's devices as text: a line per node and device.
fn fleet_table(fleet: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let devices = fleet["devices"].as_array().cloned().unwrap_or_default();
    if devices.is_empty() {
        out.push_str(
            "no edge describes its devices here (a hub lists those its uplinked edges register)\n",
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:<12} {:<12} {:<24} labels",
        "node", "device", "type", "site", "described at"
    );
    for d in devices {
        let text = |key: &str| d[key].as_str().unwrap_or_default().to_owned();
        let labels: Vec<String> = d["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<16} {:<20} {:<12} {:<12} {:<24} {}",
            text("node"),
            text("device"),
            text("type"),
            text("site"),
            text("described_at"),
            labels.join(",")
        );
    }
    out
}
