//! `fabrik compliance`: a thin client of `/api/v1/compliance`, the security controls assessed
//! from a running Fabrik's configuration and live state.

use clap::Args;

use crate::client::Endpoint;

/// `fabrik compliance`
#[derive(Debug, Args)]
pub(crate) struct ComplianceArgs {
    /// Print JSON instead of a report.
    #[arg(long)]
    json: bool,
    /// Exit non-zero when a control is not met (for a deployment pipeline's gate).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// Runs `fabrik compliance`.
pub(crate) async fn run(args: ComplianceArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let report: serde_json::Value = args
        .endpoint
        .get_json(&client, "/api/v1/compliance")
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for control in report["controls"].as_array().into_iter().flatten() {
            let references: Vec<&str> = control["references"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            println!(
                "[{}] {} ({})",
                control["status"].as_str().unwrap_or("?"),
                control["title"].as_str().unwrap_or("?"),
                references.join(", ")
            );
            for line in control["evidence"].as_array().into_iter().flatten() {
                println!("    + {}", line.as_str().unwrap_or(""));
            }
            for line in control["gaps"].as_array().into_iter().flatten() {
                println!("    - {}", line.as_str().unwrap_or(""));
            }
        }
        println!(
            "{} met, {} partial, {} not met",
            report["met"], report["partial"], report["not_met"]
        );
    }
    if args.strict && report["not_met"].as_u64().unwrap_or(1) > 0 {
        anyhow::bail!("{} control(s) not met", report["not_met"]);
    }
    Ok(())
}
