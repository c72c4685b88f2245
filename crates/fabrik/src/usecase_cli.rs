//! `fabrik usecase list|show|define|rm|kpis|history|gate|promote|demote|decisions`: a thin client of
//! `/api/v1/usecases`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fabrik_registry::usecases::{Stage, UseCaseDefinition};

use crate::client::{Endpoint, percent_encode};

/// `fabrik usecase ...`
#[derive(Debug, Args)]
pub(crate) struct UseCaseArgs {
    #[command(subcommand)]
    command: UseCaseCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum UseCaseCommand {
    /// List the use cases with their stage and objective.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one use case, as JSON.
    Show {
        /// Use case name.
        name: String,
    },
    /// Define or redefine a use case from a file (TOML or JSON with the fields of
    /// `PUT /api/v1/usecases/{name}`). A new one starts in pilot; a redefined one keeps its
    /// stage.
    Define {
        /// The file.
        file: PathBuf,
    },
    /// Forget a use case (its stage decisions stay on record).
    Rm {
        /// Use case name.
        name: String,
    },
    /// Measure its KPIs on the devices of its stage, against its baseline and targets.
    Kpis {
        /// Use case name.
        name: String,
        /// Start (RFC 3339); default: when it entered its stage.
        #[arg(long, conflicts_with = "last")]
        from: Option<String>,
        /// The period ending now instead, e.g. `24h` or `7d`.
        #[arg(long)]
        last: Option<String>,
        /// End (RFC 3339); default: now.
        #[arg(long)]
        to: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Its KPIs bucket by bucket over a period (default: since it entered its stage), on the
    /// devices of its stage.
    History {
        /// Use case name.
        name: String,
        /// The period ending now, e.g. `24h` or `7d`.
        #[arg(long)]
        last: Option<String>,
        /// Equal buckets the period is cut into (1 to 60).
        #[arg(long, default_value_t = 12)]
        buckets: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Judge the gate to its next stage on the KPIs measured since it entered its stage.
    Gate {
        /// Use case name.
        name: String,
        /// Print JSON instead of a report.
        #[arg(long)]
        json: bool,
    },
    /// Move it through its gate to the next stage (refused unless the gate passes, or with
    /// --force, which is recorded).
    Promote {
        /// Use case name.
        name: String,
        /// Why; kept with the decision.
        #[arg(long)]
        reason: String,
        /// Promote although the gate did not pass.
        #[arg(long)]
        force: bool,
    },
    /// Move it back to an earlier stage.
    Demote {
        /// Use case name.
        name: String,
        /// The stage to go back to: pilot or scale_up.
        #[arg(long)]
        to: String,
        /// Why; kept with the decision.
        #[arg(long)]
        reason: String,
    },
    /// Its stage decisions, oldest first.
    Decisions {
        /// Use case name.
        name: String,
    },
}

/// A definition file: JSON, or TOML with the same fields.
fn read_definition(file: &PathBuf) -> anyhow::Result<UseCaseDefinition> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    let parsed = if is_json {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    };
    parsed.with_context(|| format!("{} is not a use case definition", file.display()))
}

/// The start of the period `last` (`7d`) that ends now, RFC 3339.
fn start_of_last(last: &str) -> anyhow::Result<String> {
    let span =
        fabrik_runtime::units::parse_duration(last).map_err(|e| anyhow::anyhow!("--last: {e}"))?;
    let start = chrono::Utc::now()
        - chrono::Duration::from_std(span).map_err(|e| anyhow::anyhow!("--last: {e}"))?;
    Ok(start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn number(value: &serde_json::Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// Runs a `fabrik usecase` command.
pub(crate) async fn run(args: UseCaseArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    let path = |name: &str, rest: &str| format!("/api/v1/usecases/{}{rest}", percent_encode(name));
    match args.command {
        UseCaseCommand::List { json } => {
            let all: Vec<serde_json::Value> = ep.get_json(&client, "/api/v1/usecases").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!("{:<24} {:<11} {:<32} OBJECTIVE", "NAME", "STAGE", "SINCE");
            for u in &all {
                println!(
                    "{:<24} {:<11} {:<32} {}",
                    u["name"].as_str().unwrap_or("?"),
                    u["stage"].as_str().unwrap_or("?"),
                    u["stage_since"].as_str().unwrap_or("?"),
                    u["definition"]["objective"].as_str().unwrap_or("")
                );
            }
        }
        UseCaseCommand::Show { name } => {
            let one: serde_json::Value = ep.get_json(&client, &path(&name, "")).await?;
            println!("{}", serde_json::to_string_pretty(&one)?);
        }
        UseCaseCommand::Define { file } => {
            let definition = read_definition(&file)?;
            let request = ep
                .request(&client, reqwest::Method::PUT, &path(&definition.name, ""))
                .json(&definition);
            let response = ep.send(request).await?;
            let created = response.status() == reqwest::StatusCode::CREATED;
            let body: serde_json::Value = response.json().await?;
            println!(
                "{} use case `{}` (stage {})",
                if created { "Defined" } else { "Redefined" },
                definition.name,
                body["stage"].as_str().unwrap_or("?")
            );
        }
        UseCaseCommand::Rm { name } => {
            ep.send(ep.request(&client, reqwest::Method::DELETE, &path(&name, "")))
                .await?;
            println!("Removed use case `{name}`.");
        }
        UseCaseCommand::History {
            name,
            last,
            buckets,
            json,
        } => {
            let mut query = format!("?buckets={buckets}");
            if let Some(last) = last {
                query.push_str(&format!("&from={}", percent_encode(&start_of_last(&last)?)));
            }
            let history: serde_json::Value = ep
                .get_json(&client, &path(&name, &format!("/kpis/history{query}")))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
                return Ok(());
            }
            let kpis = history["kpis"].as_array().cloned().unwrap_or_default();
            print!("{:<32}", "FROM");
            for kpi in &kpis {
                print!(" {:>16}", kpi["name"].as_str().unwrap_or("?"));
            }
            println!();
            for (i, start) in history["bucket_starts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                print!("{:<32}", start.as_str().unwrap_or("?"));
                for kpi in &kpis {
                    print!(" {:>16}", number(&kpi["values"][i]));
                }
                println!();
            }
        }
        UseCaseCommand::Kpis {
            name,
            from,
            last,
            to,
            json,
        } => {
            let from = match last {
                Some(last) => Some(start_of_last(&last)?),
                None => from,
            };
            let mut query = Vec::new();
            for (key, value) in [("from", from), ("to", to)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", percent_encode(&value)));
                }
            }
            let suffix = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            let report: serde_json::Value = ep
                .get_json(&client, &path(&name, &format!("/kpis{suffix}")))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!(
                "{name} at {}, {} to {}",
                report["stage"].as_str().unwrap_or("?"),
                report["from"].as_str().unwrap_or("?"),
                report["to"].as_str().unwrap_or("?")
            );
            println!(
                "{:<20} {:>12} {:>12} {:>12} {:>10}  UNIT / DETAIL",
                "KPI", "VALUE", "BASELINE", "IMPROVEMENT", "TARGET"
            );
            for kpi in report["kpis"].as_array().into_iter().flatten() {
                let detail = kpi["current"]["error"]
                    .as_str()
                    .or_else(|| kpi["current"]["detail"].as_str())
                    .unwrap_or("");
                println!(
                    "{:<20} {:>12} {:>12} {:>12} {:>10}  {} / {detail}",
                    kpi["name"].as_str().unwrap_or("?"),
                    number(&kpi["current"]["value"]),
                    number(&kpi["baseline"]["value"]),
                    number(&kpi["improvement"]),
                    number(&kpi["target"]),
                    kpi["unit"].as_str().unwrap_or("")
                );
            }
        }
        UseCaseCommand::Gate { name, json } => {
            let report: serde_json::Value = ep.get_json(&client, &path(&name, "/gate")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let passed = report["passed"].as_bool().unwrap_or(false);
            println!(
                "Gate {} → {}: {}",
                report["from"].as_str().unwrap_or("?").replace('_', "-"),
                report["to"].as_str().unwrap_or("?").replace('_', "-"),
                if passed { "passes" } else { "does not pass" }
            );
            let checks = report["checks"].as_array().cloned().unwrap_or_default();
            if checks.is_empty() {
                println!("  (no criteria: promotion needs --force and a reason)");
            }
            for check in checks {
                println!(
                    "  [{}] {} (measured {})",
                    if check["passed"].as_bool() == Some(true) {
                        "met"
                    } else {
                        "not met"
                    },
                    check["criterion"].as_str().unwrap_or("?"),
                    check["measured_text"].as_str().unwrap_or("?")
                );
            }
        }
        UseCaseCommand::Promote {
            name,
            reason,
            force,
        } => {
            let stage = current_stage(ep, &client, &path(&name, "")).await?;
            let to = stage.next().with_context(|| {
                format!("use case `{name}` is at enterprise: there is no further gate")
            })?;
            let body =
                serde_json::json!({"from": stage, "to": to, "reason": reason, "force": force});
            let decision = change(ep, &client, &path(&name, "/stage"), &body).await?;
            println!(
                "Use case `{name}` moved from {} to {}{}.",
                decision["from"].as_str().unwrap_or("?"),
                decision["to"].as_str().unwrap_or("?"),
                if decision["forced"].as_bool() == Some(true) {
                    ", forced past its gate"
                } else {
                    " through its gate"
                }
            );
        }
        UseCaseCommand::Demote { name, to, reason } => {
            let to: Stage = to.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let stage = current_stage(ep, &client, &path(&name, "")).await?;
            if to >= stage {
                anyhow::bail!(
                    "use case `{name}` is at {}: demote goes back to an earlier stage (to go \
                     on, use `promote`)",
                    stage.display()
                );
            }
            let body = serde_json::json!({"from": stage, "to": to, "reason": reason});
            let decision = change(ep, &client, &path(&name, "/stage"), &body).await?;
            println!(
                "Use case `{name}` moved back from {} to {}.",
                decision["from"].as_str().unwrap_or("?"),
                decision["to"].as_str().unwrap_or("?")
            );
        }
        UseCaseCommand::Decisions { name } => {
            let all: Vec<serde_json::Value> =
                ep.get_json(&client, &path(&name, "/decisions")).await?;
            if all.is_empty() {
                println!("No stage change yet.");
            }
            for d in &all {
                println!(
                    "{}  {} → {}  by {}{}: {}",
                    d["time"].as_str().unwrap_or("?"),
                    d["from"].as_str().unwrap_or("?"),
                    d["to"].as_str().unwrap_or("?"),
                    d["actor"].as_str().unwrap_or("?"),
                    if d["forced"].as_bool() == Some(true) {
                        " (forced)"
                    } else {
                        ""
                    },
                    d["reason"].as_str().unwrap_or("")
                );
                // What a forced promotion overrode is the fact an audit asks for.
                if d["forced"].as_bool() == Some(true) {
                    for check in d["gate"]["checks"].as_array().into_iter().flatten() {
                        if check["passed"].as_bool() != Some(true) {
                            println!(
                                "    overridden: {} (measured {})",
                                check["criterion"].as_str().unwrap_or("?"),
                                check["measured_text"].as_str().unwrap_or("?")
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The stage the use case at `path` is at now: a stage change names the stage it was decided
/// on.
async fn current_stage(
    ep: &Endpoint,
    client: &reqwest::Client,
    path: &str,
) -> anyhow::Result<Stage> {
    let current: serde_json::Value = ep.get_json(client, path).await?;
    current["stage"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
}

async fn change(
    ep: &Endpoint,
    client: &reqwest::Client,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let request = ep.request(client, reqwest::Method::POST, path).json(body);
    Ok(ep.send(request).await?.json().await?)
}
