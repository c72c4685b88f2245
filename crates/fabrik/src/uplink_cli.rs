//! `fabrik uplink`: a thin client of `/api/v1/uplink`, the edge → hub link of a running
//! Fabrik (its uplink to a hub, or what it receives as a hub).

use clap::{Args, Subcommand};

use crate::client::{Endpoint, json_text as text};

/// `fabrik uplink`
#[derive(Debug, Args)]
pub(crate) struct UplinkArgs {
    #[command(subcommand)]
    command: UplinkCommand,
}

#[derive(Debug, Subcommand)]
enum UplinkCommand {
    /// How far this node's uplink is, or what this hub has received.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Sends stored history to the hub (what this node stored before its uplink started, or
    /// any span), beside the live uplink; `fabrik uplink status` shows how far it is.
    Backfill {
        /// Rows from this time on (RFC 3339); default: the oldest stored.
        #[arg(long)]
        from: Option<String>,
        /// Rows before this time (RFC 3339); default: now.
        #[arg(long)]
        to: Option<String>,
        /// A table to send (repeat for more); default: every table the uplink forwards.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Cancel the running backfill instead (what the hub has stays there).
        #[arg(long, conflicts_with_all = ["from", "to", "tables"])]
        cancel: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// Runs `fabrik uplink ...`.
pub(crate) async fn run(args: UplinkArgs) -> anyhow::Result<()> {
    let (json, endpoint) = match args.command {
        UplinkCommand::Status { json, endpoint } => (json, endpoint),
        UplinkCommand::Backfill {
            from,
            to,
            tables,
            cancel,
            endpoint,
        } => return backfill(from, to, tables, cancel, endpoint).await,
    };
    let client = endpoint.client()?;
    let status: serde_json::Value = endpoint.get_json(&client, "/api/v1/uplink").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let uplink = &status["uplink"];
    let hub = &status["hub"];
    if uplink.is_null() && hub.is_null() {
        println!("Neither [uplink] nor [hub] is configured in this process.");
    }
    if !uplink.is_null() {
        println!(
            "uplink: node {} → {} (stream {}, subject {}), {}",
            text(&uplink["node"]),
            text(&uplink["url"]),
            text(&uplink["stream"]),
            text(&uplink["subject"]),
            if uplink["connected"] == true {
                "connected"
            } else {
                "not connected"
            }
        );
        println!(
            "  acknowledged up to WAL record {} of {}: {} behind; WAL {} bytes (keeps at most {})",
            text(&uplink["acked_seq"]),
            text(&uplink["applied_seq"]),
            text(&uplink["backlog_records"]),
            text(&uplink["wal_bytes"]),
            text(&uplink["max_backlog_bytes"]),
        );
        println!(
            "  sent {} messages, {} rows; last acknowledged {}; given up {} records, {} rows too large",
            text(&uplink["messages_sent"]),
            text(&uplink["rows_sent"]),
            text(&uplink["last_ack_at"]),
            text(&uplink["skipped_records"]),
            text(&uplink["unsendable_rows"]),
        );
        if !uplink["last_error"].is_null() {
            println!("  last error: {}", text(&uplink["last_error"]));
        }
        if !uplink["backfill"].is_null() {
            print_backfill(&uplink["backfill"]);
        }
    }
    if !hub.is_null() {
        println!(
            "hub: {} (stream {}, consumer {}), {}",
            text(&hub["url"]),
            text(&hub["stream"]),
            text(&hub["consumer"]),
            if hub["connected"] == true {
                "connected"
            } else {
                "not connected"
            }
        );
        println!(
            "  {} messages, {} rows stored, {} dead letters",
            text(&hub["messages"]),
            text(&hub["rows"]),
            text(&hub["dead_letters"]),
        );
        for (node, seen) in hub["nodes"].as_object().into_iter().flatten() {
            println!(
                "  node {node}: {} messages, {} rows, last {}",
                text(&seen["messages"]),
                text(&seen["rows"]),
                text(&seen["last_message_at"]),
            );
        }
        if !hub["last_error"].is_null() {
            println!("  last error: {}", text(&hub["last_error"]));
        }
    }
    Ok(())
}

fn print_backfill(job: &serde_json::Value) {
    let tables: Vec<String> = job["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    println!(
        "  backfill {}: {}, {} to {}, {} of {} tables sent ({}), {} rows in {} messages",
        text(&job["id"]),
        text(&job["state"]),
        if job["from"].is_null() {
            "the oldest row".to_owned()
        } else {
            text(&job["from"])
        },
        text(&job["to"]),
        text(&job["tables_done"]),
        tables.len(),
        tables.join(", "),
        text(&job["rows_sent"]),
        text(&job["messages_sent"]),
    );
    if !job["table"].is_null() {
        println!(
            "    sending `{}`, acknowledged up to {}",
            text(&job["table"]),
            if job["done_until"].is_null() {
                "its start".to_owned()
            } else {
                text(&job["done_until"])
            }
        );
    }
    for skipped in job["skipped"].as_array().into_iter().flatten() {
        println!("    skipped: {}", text(skipped));
    }
    if !job["last_error"].is_null() {
        println!("    last error: {}", text(&job["last_error"]));
    }
}

async fn backfill(
    from: Option<String>,
    to: Option<String>,
    tables: Vec<String>,
    cancel: bool,
    endpoint: Endpoint,
) -> anyhow::Result<()> {
    let client = endpoint.client()?;
    let request = if cancel {
        endpoint.request(&client, reqwest::Method::DELETE, "/api/v1/uplink/backfill")
    } else {
        let body = serde_json::json!({
            "from": from,
            "to": to,
            "tables": (!tables.is_empty()).then_some(tables),
        });
        endpoint
            .request(&client, reqwest::Method::POST, "/api/v1/uplink/backfill")
            .json(&body)
    };
    let job: serde_json::Value = endpoint.send(request).await?.json().await?;
    print_backfill(&job);
    Ok(())
}
