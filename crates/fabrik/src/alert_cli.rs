//! `fabrik alert list|ack|apply|silence|silences|unsilence|rules|rule|lineage`: a thin client of
//! `/api/v1/alerts`, `/api/v1/silences`, `/api/v1/alert-rules` and `/api/v1/lineage`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use fabrik_runtime::config::AlertRuleConfig;

use crate::client::Endpoint;
use crate::define_cli::Kind;

/// Alert rules as `fabrik alert rule apply` reads and sends them: a file lists them under
/// `[[rules]]`, or under `[[alerting.rules]]` as in the configuration file.
pub(crate) const ALERT_RULES: Kind = Kind {
    noun: "alert rule",
    a_noun: "an alert rule",
    collection: "/api/v1/alert-rules",
    status_field: "health",
};

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
    /// Where an alert's decision came from: the inference of the window it names, the exact
    /// input rows and their raw messages (alerts on inferences whose rule's `context`
    /// includes `window_id`, as the demo's `pump-anomaly`).
    Lineage {
        /// Alert id (from `fabrik alert list`).
        id: String,
        /// Print JSON (every row and message) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// List alerts, most recently changed first.
    List {
        /// Only this state: pending, firing, resolved.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 1000, as the API takes).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
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
        /// Who you are, recorded with the acknowledgement when you use the admin token (the
        /// server's default: `admin-token`); a signed-in user is recorded under their name.
        #[arg(long)]
        by: Option<String>,
        /// Replace the verdict of an alert someone acknowledged already (without it, that is
        /// refused, naming who acknowledged it and how).
        #[arg(long)]
        replace: bool,
    },
    /// Apply the setpoint an alert's rule proposes (decision 0092) while the alert fires: the
    /// device writes it and reads it back; exits non-zero unless the device holds it.
    Apply {
        /// Alert id (from `fabrik alert list`).
        id: String,
        /// Why (a work order, a shift note), kept with the write.
        #[arg(long)]
        note: Option<String>,
    },
    /// Silence a rule and/or a device for a while (name at least one; `--rule '*'` silences
    /// every alert), from now or from `--from` (a maintenance window set ahead).
    #[command(group = clap::ArgGroup::new("target").args(["rule", "device"]).required(true).multiple(true))]
    #[command(group = clap::ArgGroup::new("length").args(["duration", "until"]).required(true))]
    Silence {
        /// Rule name (without it: every rule); `*` matches any run of characters. A name
        /// without `*` must be a rule's.
        #[arg(long)]
        rule: Option<String>,
        /// Device (without it: every device); `*` matches any run of characters, as in
        /// `--device 'pump-*'`.
        #[arg(long)]
        device: Option<String>,
        /// How long, e.g. 2h (or give `--until`).
        #[arg(long)]
        duration: Option<String>,
        /// When it begins, RFC 3339 (e.g. 2026-12-05T22:00:00Z); without it, now.
        #[arg(long)]
        from: Option<String>,
        /// When it ends, RFC 3339, instead of a `--duration`.
        #[arg(long)]
        until: Option<String>,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
        /// Who you are, recorded with the silence (as for `ack`).
        #[arg(long)]
        by: Option<String>,
    },
    /// List the silences in force (with `--all`, the expired ones too).
    Silences {
        /// Also those that have ended.
        #[arg(long)]
        all: bool,
    },
    /// The notifiers: where each sends, and whether its notifications get through (queued,
    /// retrying, the last error, the last delivery).
    Notifiers {
        /// Print the JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Unsilence {
        /// Silence id (from `fabrik alert silences`).
        id: String,
    },
    /// List the alert rules, how the evaluation of each is going, and their open alerts.
    Rules {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show, define, replace or remove alert rules without restarting Fabrik.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RuleCommand {
    /// Show one rule, as JSON.
    Show {
        /// Rule name.
        name: String,
    },
    /// Define or replace rules from a file: TOML with `[[rules]]` (or `[[alerting.rules]]`)
    /// entries as in the configuration file, or one rule's fields at the top level; or JSON
    /// (one definition or a list). They are kept across restarts.
    ///
    /// Every definition is checked by the server first; if any is refused, none is applied
    /// and every problem is listed. A replaced rule that watches the same value of the same
    /// rows keeps its open alerts; one that watches something else resolves them first.
    Apply {
        /// The file.
        file: PathBuf,
        /// Only check the definitions and say what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a rule defined through the API and forget it; its firing alerts resolve.
    Rm {
        /// Rule name.
        name: String,
    },
}

/// Runs a `fabrik alert` command.
pub(crate) async fn run(args: AlertArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    match args.command {
        AlertCommand::Lineage { id, json } => {
            crate::lineage_cli::show(ep, "alert", &id, json).await?;
        }
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
            let (rule_width, key_width) = (
                column_width(&alerts, "rule", 20),
                column_width(&alerts, "key", 16),
            );
            // `fired` is the webhook's startsAt; a pending alert shows when its condition began.
            println!(
                "{:<9} {:<9} {:<9} {:<rule_width$} {:<key_width$} {:<24} {:<16} id",
                "state", "held back", "severity", "rule", "device", "fired (pending: since)", "ack"
            );
            for a in &alerts {
                let s = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let ack = a
                    .get("ack")
                    .and_then(|ack| ack.get("feedback"))
                    .and_then(|f| f.as_str())
                    .unwrap_or("-");
                let silenced = a.get("silenced").and_then(serde_json::Value::as_bool);
                // `inhibited_by` is known for open alerts only: a resolved one was held back by
                // a silence or an inhibition.
                let held_back = if a.get("inhibited_by").is_some_and(|v| v.is_string()) {
                    "inhibited"
                } else if silenced == Some(true) && s("state") == "resolved" {
                    "yes"
                } else if silenced == Some(true) {
                    "silenced"
                } else {
                    "-"
                };
                let since = a
                    .get("fired_at")
                    .and_then(|v| v.as_str())
                    .map_or_else(|| s("started_at"), str::to_owned);
                println!(
                    "{:<9} {:<9} {:<9} {:<rule_width$} {:<key_width$} {:<24} {:<16} {}",
                    s("state"),
                    held_back,
                    s("severity"),
                    s("rule"),
                    s("key"),
                    since,
                    ack,
                    s("id")
                );
            }
            if alerts.len() == limit as usize {
                println!("{} alert(s), the --limit: there may be more", alerts.len());
            } else {
                println!("{} alert(s)", alerts.len());
            }
        }
        AlertCommand::Ack {
            id,
            feedback,
            comment,
            by,
            replace,
        } => {
            let feedback = match feedback {
                Verdict::TruePositive => "true_positive",
                Verdict::FalsePositive => "false_positive",
            };
            let body = serde_json::json!({
                "feedback": feedback, "comment": comment, "by": by, "replace": replace
            });
            let path = format!("/api/v1/alerts/{}/ack", crate::client::percent_encode(&id));
            ep.send(
                ep.request(&client, reqwest::Method::POST, &path)
                    .json(&body),
            )
            .await?;
            println!("acknowledged {id} as {feedback}");
        }
        AlertCommand::Apply { id, note } => {
            let path = format!(
                "/api/v1/alerts/{}/apply",
                crate::client::percent_encode(&id)
            );
            let written: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, &path)
                        .json(&serde_json::json!({ "note": note })),
                )
                .await?
                .json()
                .await?;
            crate::device_cli::report_written(&written)?;
        }
        AlertCommand::Silence {
            rule,
            device,
            duration,
            from,
            until,
            comment,
            by,
        } => {
            let body = serde_json::json!({
                "rule": rule, "device": device, "duration": duration, "starts_at": from,
                "ends_at": until, "comment": comment, "by": by,
            });
            let silence: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, "/api/v1/silences")
                        .json(&body),
                )
                .await?
                .json()
                .await?;
            match silence["from"].as_str() {
                Some(from) => println!(
                    "silence {} from {from} until {}",
                    silence["id"].as_str().unwrap_or("?"),
                    silence["until"].as_str().unwrap_or("?")
                ),
                None => println!(
                    "silence {} until {}",
                    silence["id"].as_str().unwrap_or("?"),
                    silence["until"].as_str().unwrap_or("?")
                ),
            }
            for warning in silence["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", warning.as_str().unwrap_or_default());
            }
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
                "{:<20} {:<20} {:<16} {:<24} {:<24} {:<12} comment",
                "id", "rule", "device", "from", "until", "by"
            );
            for s in &shown {
                let text = |k: &str| s[k].as_str().unwrap_or("*").to_owned();
                println!(
                    "{:<20} {:<20} {:<16} {:<24} {:<24} {:<12} {}",
                    text("id"),
                    text("rule"),
                    text("key"),
                    s["from"].as_str().unwrap_or("-"),
                    text("until"),
                    text("by"),
                    match s["ended_by"].as_str() {
                        Some(who) => format!(
                            "{} (ended early by {who})",
                            s["comment"].as_str().unwrap_or("")
                        )
                        .trim_start()
                        .to_owned(),
                        None => s["comment"].as_str().unwrap_or("").to_owned(),
                    }
                );
            }
            println!("{} silence(s)", shown.len());
        }
        AlertCommand::Notifiers { json } => {
            let notifiers: Vec<serde_json::Value> =
                ep.get_json(&client, "/api/v1/notifiers").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&notifiers)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<8} {:>6} {:>8} {:<24} {:<40} last error",
                "name", "kind", "queued", "retrying", "last delivered", "target"
            );
            for n in &notifiers {
                let text = |k: &str| n[k].as_str().unwrap_or("-").to_owned();
                let count = |k: &str| n[k].as_u64().unwrap_or(0);
                // When the error was, and whether a delivery succeeded since (RFC 3339 times
                // of one zone compare as text).
                let error = match (n["last_error"].as_str(), n["last_failed_at"].as_str()) {
                    (Some(error), Some(at)) => {
                        // A partial delivery's refusals carry the delivery's own time.
                        let since = n["last_delivered_at"].as_str().is_some_and(|d| d > at);
                        let recovered = if since && count("retrying") == 0 {
                            "(delivered since) "
                        } else {
                            ""
                        };
                        format!("{recovered}{at}: {error}")
                    }
                    (Some(error), None) => error.to_owned(),
                    (None, _) => "-".to_owned(),
                };
                println!(
                    "{:<16} {:<8} {:>6} {:>8} {:<24} {:<40} {}",
                    text("name"),
                    text("kind"),
                    count("queued"),
                    count("retrying"),
                    text("last_delivered_at"),
                    text("target"),
                    error
                );
            }
            println!("{} notifier(s)", notifiers.len());
        }
        AlertCommand::Unsilence { id } => {
            let path = format!("/api/v1/silences/{id}");
            ep.send(ep.request(&client, reqwest::Method::DELETE, &path))
                .await?;
            println!(
                "silence {id} ended (it stays listed with `--all`); alerts it held back are \
                 notified if they still fire"
            );
        }
        AlertCommand::Rules { json } => {
            let rules: Vec<serde_json::Value> = ep.get_json(&client, "/api/v1/alert-rules").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
                return Ok(());
            }
            let name_width = column_width(&rules, "name", 20);
            println!(
                "{:<name_width$} {:<7} {:<9} {:<10} {:<16} {:>7} {:>6} {:>10}  error",
                "name", "origin", "health", "condition", "table", "pending", "firing", "rows"
            );
            for r in &rules {
                let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                println!(
                    "{:<name_width$} {:<7} {:<9} {:<10} {:<16} {:>7} {:>6} {:>10}  {}",
                    s("name"),
                    s("origin"),
                    s("health"),
                    r["definition"]["condition"].as_str().unwrap_or("-"),
                    r["definition"]["table"].as_str().unwrap_or("-"),
                    n("pending"),
                    n("firing"),
                    n("rows"),
                    // One line per rule: a planner's error spans several.
                    s("error").split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
            println!("{} rule(s)", rules.len());
        }
        AlertCommand::Rule { command } => match command {
            RuleCommand::Show { name } => {
                let path = format!(
                    "/api/v1/alert-rules/{}",
                    crate::client::percent_encode(&name)
                );
                let rule: serde_json::Value = ep.get_json(&client, &path).await?;
                println!("{}", serde_json::to_string_pretty(&rule)?);
            }
            RuleCommand::Apply { file, dry_run } => {
                crate::define_cli::apply::<AlertRuleConfig>(
                    &ALERT_RULES,
                    ep,
                    &client,
                    &file,
                    dry_run,
                )
                .await?;
            }
            RuleCommand::Rm { name } => {
                let path = format!(
                    "/api/v1/alert-rules/{}",
                    crate::client::percent_encode(&name)
                );
                ep.send(ep.request(&client, reqwest::Method::DELETE, &path))
                    .await?;
                println!("removed {name}");
            }
        },
    }
    Ok(())
}

/// A table column as wide as the longest `key` of `rows` (at least `least` characters), so
/// a long rule name or device does not push the later columns out of line.
fn column_width(rows: &[serde_json::Value], key: &str, least: usize) -> usize {
    rows.iter()
        .filter_map(|row| row[key].as_str())
        .map(|text| text.chars().count())
        .fold(least, usize::max)
}

#[cfg(test)]
mod tests {
    use fabrik_runtime::config::AlertRuleConfig;
    use std::path::Path;

    fn definitions(text: &str) -> anyhow::Result<Vec<AlertRuleConfig>> {
        crate::define_cli::definitions(Path::new("rules.toml"), text)
    }

    #[test]
    fn a_rules_file_reads_like_the_configuration_file() {
        let rule = "name = \"{n}\"\ntable = \"pump\"\nvalue = \"pressure\"\n\
                    condition = \"above\"\nthreshold = 9.0\n";
        let entry = |n: &str| rule.replace("{n}", n);
        let listed = format!("[[rules]]\n{}\n[[rules]]\n{}", entry("a"), entry("b"));
        let names: Vec<String> = definitions(&listed)
            .expect("[[rules]]")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let pasted = format!("[[alerting.rules]]\n{}", entry("c"));
        assert_eq!(
            definitions(&pasted).expect("[[alerting.rules]]")[0].name,
            "c"
        );
        assert_eq!(
            definitions(&entry("d")).expect("one rule")[0].threshold,
            9.0
        );
        let typo = format!("{}thresold = 3\n", entry("e"));
        let error = format!("{:#}", definitions(&typo).expect_err("unknown field"));
        assert!(error.contains("thresold"), "{error}");
        let beside = format!("[[rules]]\n{}\n[other]\nx = 1\n", entry("f"));
        let error = format!("{:#}", definitions(&beside).expect_err("extra key"));
        assert!(error.contains("other"), "{error}");
        let notifiers = format!(
            "[[alerting.rules]]\n{}\n[[alerting.notifiers]]\nname = \"ops\"\n",
            entry("g")
        );
        let error = format!("{:#}", definitions(&notifiers).expect_err("not rules"));
        assert!(error.contains("notifiers"), "{error}");
        assert!(error.contains("line"), "an error names its line: {error}");
        // A JSON list names the element it refuses.
        let json = r#"[{"name": "a", "table": "t", "value": "v", "condition": "above",
            "threshold": 1}, {"name": "b", "table": "t", "value": "v", "threshold": 1}]"#;
        let error = crate::define_cli::definitions::<AlertRuleConfig>(Path::new("r.json"), json)
            .expect_err("no condition");
        assert!(format!("{error:#}").contains("definition [1]"), "{error:#}");
    }
}
