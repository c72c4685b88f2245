//! `fabrik audit list|verify`: a thin client of `/api/v1/audit`; `fabrik audit set-aside`
//! works on the registry database itself, with Fabrik stopped.

use clap::{Args, Subcommand};

use crate::client::Endpoint;

/// `fabrik audit ...`
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// The newest entries: who changed what, who signed in or was refused.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole chain; exits non-zero naming the first entry that does not fit.
    Verify {
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// With Fabrik stopped: move the audit log of `<data-dir>/registry.db`, or of the
    /// PostgreSQL registry, (and its key `<data-dir>/audit.key`) aside so the next start begins
    /// a new chain. For a key lost for good; the old entries stay readable in a table of their
    /// own but can no longer be verified.
    SetAside {
        /// The registry's PostgreSQL database (`[registry] database_url`), if it is not the
        /// embedded file.
        #[arg(long, env = "FABRIK__REGISTRY__DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

/// `text` with control characters, and the invisible ones that reorder or hide text (bidi
/// overrides, zero-width characters), escaped, so an entry cannot rewrite the terminal or
/// read as something else.
fn printable(text: &str) -> String {
    let hidden = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a `fabrik audit` command.
pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    match args.command {
        AuditCommand::List { limit, json } => {
            let entries: Vec<serde_json::Value> = ep
                .get_json(&client, &format!("/api/v1/audit?limit={limit}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            println!(
                "{:>6} {:<19} {:<16} {:<6} {:<40} target",
                "seq", "time", "actor", "status", "action"
            );
            for e in entries.iter().rev() {
                println!(
                    "{:>6} {:<19} {:<16} {:<6} {:<40} {}",
                    e["seq"].as_i64().unwrap_or(0),
                    crate::client::time_text(Some(e["time"].as_i64().unwrap_or(0))),
                    printable(e["actor"].as_str().unwrap_or("")),
                    e["status"].as_u64().unwrap_or(0),
                    printable(e["action"].as_str().unwrap_or("")),
                    printable(e["target"].as_str().unwrap_or(""))
                );
            }
        }
        AuditCommand::Verify { json } => {
            let report: serde_json::Value = ep.get_json(&client, "/api/v1/audit/verify").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            if report["intact"].as_bool() != Some(true) {
                if !json {
                    for broken in report["breaks"].as_array().into_iter().flatten() {
                        eprintln!(
                            "entry {}: {}",
                            broken["seq"],
                            printable(broken["problem"].as_str().unwrap_or("?"))
                        );
                    }
                }
                anyhow::bail!(
                    "the audit log is broken at entry {}: {} ({} of {} entries do not fit; \
                     entries 1 to {} fit; head hash {})",
                    report["broken_at"],
                    printable(report["problem"].as_str().unwrap_or("?")),
                    report["broken_entries"],
                    report["entries"],
                    report["head_seq"],
                    report["head_hash"].as_str().unwrap_or("")
                );
            }
            if !json {
                println!(
                    "intact: {} entries; head {} {}",
                    report["entries"],
                    report["head_seq"],
                    report["head_hash"].as_str().unwrap_or("")
                );
            }
        }
        AuditCommand::SetAside { database_url } => {
            let location = match database_url.filter(|url| !url.trim().is_empty()) {
                Some(url) => fabrik_registry::Location::Postgres {
                    url,
                    audit_key: ep.data_dir.join("audit.key"),
                },
                None => fabrik_registry::Location::File(ep.data_dir.join("registry.db")),
            };
            let table = fabrik_registry::audit::set_aside(&location).await?;
            println!(
                "The audit log of {} is now the table {table}; the next start begins a new chain.",
                location.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert_eq!(super::printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(super::printable("x\u{202E}y"), "x\\u{202e}y");
        assert_eq!(super::printable("pump-ä 1"), "pump-ä 1");
    }
}
