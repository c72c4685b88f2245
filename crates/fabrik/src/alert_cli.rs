//! `fabrik alert list|ack|silence|silences|unsilence`: a thin client of `/api/v1/alerts` and `/api/v1/silences`.

use clap::{Args, Subcommand, ValueEnum};

use crate::client::Endpoint;

/// `fabrik alert ...`
#[derive(Debug, Args)]
pub(crate) struct AlertArgs {
    #[command(subcommand)]
    command: AlertCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Verdict {
    /// A real problem.
    #[value(name = "true_positive", alias = "true-positive")]
    TruePositive,
    /// Nothing was wrong.
    #[value(name = "false_positive", alias = "false-positive")]
    FalsePositive,
}

#[derive(Debug, Subcommand)]
enum AlertCommand {
    /// List alerts, most recently changed first.
    List {
        /// Only this state: pending, firing, resolved.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only rules matching this pattern (`*` matches any run of characters).
        #[arg(long)]
        rule: Option<String>,
        /// Only devices matching this pattern, e.g. 'pump-*'.
        #[arg(long)]
        device: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alert with your verdict (kept for model evaluation).
    Ack {
        /// Alert id (from `fabrik alert list`).
        id: String,
        /// Was it a real problem?
        #[arg(long, value_enum)]
        feedback: Verdict,
        /// A note.
        #[arg(long)]
        comment: Option<String>,
        /// Who you are.
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// Silence a rule and/or a device for a while.
    Silence {
        /// Rule name (default: every rule); `*` matches any run of characters.
        #[arg(long)]
        rule: Option<String>,
        /// Device (default: every device); `*` matches any run of characters, as in
        /// `--device 'pump-*'`.
        #[arg(long)]
        device: Option<String>,
        /// How long, e.g. 2h.
        #[arg(long)]
        duration: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
    /// List the silences in force (with `--all`, the expired ones too).
    Silences {
        /// Also those that have ended.
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Unsilence {
        /// Silence id (from `fabrik alert silences`).
        id: String,
    },
}

/// Runs a `fabrik alert` command.
pub(crate) async fn run(args: AlertArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let ep = &args.endpoint;
    match args.command {
        AlertCommand::List {
            state,
            limit,
            rule,
            device,
            json,
        } => {
            let mut path = format!("/api/v1/alerts?limit={limit}");
            for (key, value) in [("state", state), ("rule", rule), ("device", device)] {
                if let Some(value) = value {
                    path.push_str(&format!("&{key}={}", crate::client::percent_encode(&value)));
                }
            }
            let alerts: Vec<serde_json::Value> = ep.get_json(&client, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&alerts)?);
                return Ok(());
            }
            println!(
                "{:<9} {:<8} {:<9} {:<20} {:<16} {:<24} {:<16} id",
                "state", "silenced", "severity", "rule", "device", "started", "ack"
            );
            for a in &alerts {
                let s = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let ack = a
                    .get("ack")
                    .and_then(|ack| ack.get("feedback"))
                    .and_then(|f| f.as_str())
                    .unwrap_or("-");
                let silenced = a.get("silenced").and_then(serde_json::Value::as_bool);
                println!(
                    "{:<9} {:<8} {:<9} {:<20} {:<16} {:<24} {:<16} {}",
                    s("state"),
                    if silenced == Some(true) { "yes" } else { "-" },
                    s("severity"),
                    s("rule"),
                    s("key"),
                    s("started_at"),
                    ack,
                    s("id")
                );
            }
            println!("{} alert(s)", alerts.len());
        }
        AlertCommand::Ack {
            id,
            feedback,
            comment,
            by,
        } => {
            let feedback = match feedback {
                Verdict::TruePositive => "true_positive",
                Verdict::FalsePositive => "false_positive",
            };
            let body = serde_json::json!({"feedback": feedback, "comment": comment, "by": by});
            let path = format!("/api/v1/alerts/{id}/ack");
            ep.send(
                ep.request(&client, reqwest::Method::POST, &path)
                    .json(&body),
            )
            .await?;
            println!("acknowledged {id} as {feedback}");
        }
        AlertCommand::Silence {
            rule,
            device,
            duration,
            comment,
        } => {
            let body = serde_json::json!({
                "rule": rule, "device": device, "duration": duration, "comment": comment,
            });
            let silence: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, "/api/v1/silences")
                        .json(&body),
                )
                .await?
                .json()
                .await?;
            println!(
                "silence {} until {}",
                silence["id"].as_str().unwrap_or("?"),
                silence["until"].as_str().unwrap_or("?")
            );
        }
        AlertCommand::Silences { all } => {
            let silences: Vec<serde_json::Value> = ep.get_json(&client, "/api/v1/silences").await?;
            let now = chrono::Utc::now();
            let shown: Vec<&serde_json::Value> = silences
                .iter()
                .filter(|s| {
                    all || s["until"]
                        .as_str()
                        .and_then(|u| chrono::DateTime::parse_from_rfc3339(u).ok())
                        .is_some_and(|until| until > now)
                })
                .collect();
            println!(
                "{:<20} {:<20} {:<16} {:<24} {:<12} comment",
                "id", "rule", "device", "until", "by"
            );
            for s in &shown {
                let text = |k: &str| s[k].as_str().unwrap_or("*").to_owned();
                println!(
                    "{:<20} {:<20} {:<16} {:<24} {:<12} {}",
                    text("id"),
                    text("rule"),
                    text("key"),
                    text("until"),
                    text("by"),
                    s["comment"].as_str().unwrap_or("")
                );
            }
            println!("{} silence(s)", shown.len());
        }
        AlertCommand::Unsilence { id } => {
            let path = format!("/api/v1/silences/{id}");
            ep.send(ep.request(&client, reqwest::Method::DELETE, &path))
                .await?;
            println!("silence {id} removed; alerts it held back are notified if they still fire");
        }
    }
    Ok(())
}
