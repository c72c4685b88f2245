//! `fabrik model list|upload|rm|download`: a thin client of `/api/v1/models`, the ONNX models that
//! pipelines name in `model_name`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Endpoint;

/// `fabrik model ...`
#[derive(Debug, Args)]
pub(crate) struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// List the uploaded models and the pipelines that use them.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upload an `.onnx` file under a name (replacing one restarts the pipelines using it).
    Upload {
        /// Model name: letters, digits, `.`, `_`, `-`.
        name: String,
        /// The `.onnx` file.
        file: PathBuf,
    },
    /// Delete an uploaded model no pipeline uses.
    Rm {
        /// Model name.
        name: String,
    },
    /// Save an uploaded model's `.onnx` file, as it was uploaded.
    Download {
        /// Model name.
        name: String,
        /// Where to write it (`-`: standard output).
        file: PathBuf,
    },
}

impl ModelCommand {
    /// The model the command names, if it names one.
    fn name(&self) -> Option<&str> {
        match self {
            Self::List { .. } => None,
            Self::Upload { name, .. } | Self::Rm { name } | Self::Download { name, .. } => {
                Some(name)
            }
        }
    }
}

/// Runs a `fabrik model` command.
pub(crate) async fn run(args: ModelArgs) -> anyhow::Result<()> {
    if let Some(name) = args.command.name()
        && !crate::pipelines::model_name_ok(name)
    {
        anyhow::bail!("`{name}`: {}", crate::pipelines::MODEL_NAME_RULE);
    }
    let client = reqwest::Client::new();
    let ep = &args.endpoint;
    match args.command {
        ModelCommand::List { json } => {
            let models: Vec<serde_json::Value> = ep.get_json(&client, "/api/v1/models").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
                return Ok(());
            }
            println!(
                "{:<24} {:>10} {:<16} {:<14} used by",
                "name", "bytes", "version", "sha256"
            );
            for m in &models {
                let s = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let used_by: Vec<&str> = m["used_by"]
                    .as_array()
                    .map(|users| users.iter().filter_map(|u| u.as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:>10} {:<16} {:<14} {}",
                    s("name"),
                    m["bytes"].as_u64().unwrap_or(0),
                    s("version"),
                    s("sha256").get(..12).unwrap_or("-"),
                    used_by.join(", ")
                );
            }
            println!("{} model(s)", models.len());
        }
        ModelCommand::Upload { name, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = format!("/api/v1/models/{}", crate::client::percent_encode(&name));
            let response = ep
                .send(
                    ep.request(&client, reqwest::Method::PUT, &path)
                        .header("content-type", "application/octet-stream")
                        .body(bytes),
                )
                .await?;
            let verb = if response.status() == reqwest::StatusCode::CREATED {
                "uploaded"
            } else {
                "replaced"
            };
            let model: serde_json::Value = response.json().await?;
            let users = model["used_by"].as_array().map_or(0, Vec::len);
            println!(
                "{verb} {name} (version {}, sha256 {}){}",
                model["version"].as_str().unwrap_or("?"),
                model["sha256"].as_str().unwrap_or("?"),
                if users > 0 {
                    format!("; restarted {users} pipeline(s) using it")
                } else {
                    String::new()
                }
            );
        }
        ModelCommand::Rm { name } => {
            let path = format!("/api/v1/models/{}", crate::client::percent_encode(&name));
            ep.send(ep.request(&client, reqwest::Method::DELETE, &path))
                .await?;
            println!("deleted {name}");
        }
        ModelCommand::Download { name, file } => {
            let path = format!("/api/v1/models/{}", crate::client::percent_encode(&name));
            let bytes = ep
                .send(ep.request(&client, reqwest::Method::GET, &path))
                .await?
                .bytes()
                .await?;
            crate::client::save_download(&bytes, &file, &name)?;
        }
    }
    Ok(())
}
