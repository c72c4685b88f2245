//! `fabrik blob put|get`: a thin client of `/api/v1/blobs`, clips and files stored with a row
//! naming them (WAV clips become signals pipelines read).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Endpoint;

/// `fabrik blob ...`
#[derive(Debug, Args)]
pub(crate) struct BlobArgs {
    #[command(subcommand)]
    command: BlobCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum BlobCommand {
    /// Store a file (a `.wav` clip, a photo) with a row naming it in TABLE.
    Put {
        /// The file.
        file: PathBuf,
        /// The table of the row that names it (e.g. `acoustic`).
        #[arg(long)]
        table: String,
        /// The device it comes from.
        #[arg(long)]
        device: String,
        /// The row's field holding its id; a pipeline naming it as a signal reads the clip.
        #[arg(long)]
        signal: String,
        /// When the recording starts, ns since the epoch (default: now).
        #[arg(long)]
        time: Option<i64>,
        /// Media type (default: from the extension: `.wav` audio/wav, else
        /// application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Save a stored blob, as it was stored.
    Get {
        /// Its id, `sha256:<hex>`, as its row names it.
        id: String,
        /// Where to write it (`-`: standard output).
        file: PathBuf,
    },
}

/// Runs a `fabrik blob` command.
pub(crate) async fn run(args: BlobArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    match args.command {
        BlobCommand::Put {
            file,
            table,
            device,
            signal,
            time,
            content_type,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let media = content_type.unwrap_or_else(|| {
                let wav = file
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
                if wav {
                    "audio/wav"
                } else {
                    "application/octet-stream"
                }
                .to_owned()
            });
            let encode = crate::client::percent_encode;
            let mut path = format!(
                "/api/v1/blobs?table={}&device={}&signal={}",
                encode(&table),
                encode(&device),
                encode(&signal)
            );
            if let Some(time) = time {
                path.push_str(&format!("&time={time}"));
            }
            let stored: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, &path)
                        .header("content-type", media)
                        .body(bytes),
                )
                .await?
                .json()
                .await?;
            let audio = &stored["audio"];
            let clip = if audio.is_null() {
                String::new()
            } else {
                format!(
                    ", {} s at {} Hz, {} channel(s)",
                    audio["duration_s"], audio["sample_rate"], audio["channels"]
                )
            };
            println!(
                "stored {} ({} bytes{clip}) in {}.{} of {}",
                stored["id"].as_str().unwrap_or("?"),
                stored["bytes"],
                table,
                signal,
                device
            );
        }
        BlobCommand::Get { id, file } => {
            let path = format!("/api/v1/blobs/{}", crate::client::percent_encode(&id));
            let bytes = ep
                .send(ep.request(&client, reqwest::Method::GET, &path))
                .await?
                .bytes()
                .await?;
            crate::client::save_download(&bytes, &file, &id)?;
        }
    }
    Ok(())
}
