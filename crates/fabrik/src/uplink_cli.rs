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
}

/// Runs `fabrik uplink ...`.
pub(crate) async fn run(args: UplinkArgs) -> anyhow::Result<()> {
    let UplinkCommand::Status { json, endpoint } = args.command;
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
