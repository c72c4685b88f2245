//! `fabrik model list|upload|rm|download`: a thin client of `/api/v1/models`, the ONNX models that
//! pipelines name in `model_name`; `fabrik model keygen|sign` make and use a signing key offline.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Endpoint;
use crate::model_signature::{signature_path, with_suffix};

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
    /// Upload an `.onnx` file under a name (replacing one restarts the pipelines using it),
    /// with its signature `FILE.sig` when there is one.
    Upload {
        /// Model name: letters, digits, `.`, `_`, `-`.
        name: String,
        /// The `.onnx` file.
        file: PathBuf,
        /// The signature file (default: `FILE.sig`, when it exists).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Make an Ed25519 signing key: `PREFIX.key` (private, PKCS#8, mode 0600) and
    /// `PREFIX.pub` (the public key for `[models] trusted_keys`).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an `.onnx` file with a private key from `keygen`: writes `FILE.sig`.
    Sign {
        /// The private key (`PREFIX.key`).
        #[arg(long)]
        key: PathBuf,
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
            Self::List { .. } | Self::Keygen { .. } | Self::Sign { .. } => None,
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
    let client = args.endpoint.client()?;
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
        ModelCommand::Upload {
            name,
            file,
            signature,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let signature = match signature {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => std::fs::read_to_string(signature_path(&file)).ok(),
            };
            let path = format!("/api/v1/models/{}", crate::client::percent_encode(&name));
            let mut request = ep
                .request(&client, reqwest::Method::PUT, &path)
                .header("content-type", "application/octet-stream");
            if let Some(signature) = signature {
                request = request.header(
                    fabrik_api::pipelines::SIGNATURE_HEADER,
                    signature.trim().to_owned(),
                );
            }
            let response = ep.send(request.body(bytes)).await?;
            let verb = if response.status() == reqwest::StatusCode::CREATED {
                "uploaded"
            } else {
                "replaced"
            };
            let model: serde_json::Value = response.json().await?;
            let users = model["used_by"].as_array().map_or(0, Vec::len);
            println!(
                "{verb} {name} (version {}, sha256 {}, {}){}",
                model["version"].as_str().unwrap_or("?"),
                model["sha256"].as_str().unwrap_or("?"),
                model["signed_by"]
                    .as_str()
                    .map_or_else(|| "unsigned".to_owned(), |key| format!("signed by {key}")),
                if users > 0 {
                    format!("; restarted {users} pipeline(s) using it")
                } else {
                    String::new()
                }
            );
        }
        ModelCommand::Keygen { out } => {
            let (private, public) =
                crate::model_signature::generate().map_err(anyhow::Error::msg)?;
            let private_path = with_suffix(&out, ".key");
            let public_path = with_suffix(&out, ".pub");
            // Never over an existing key.
            crate::run::write_private(&private_path, &private)
                .with_context(|| format!("creating {}", private_path.display()))?;
            std::fs::File::create_new(&public_path)
                .and_then(|mut file| file.write_all(format!("{public}\n").as_bytes()))
                .with_context(|| format!("creating {}", public_path.display()))?;
            println!(
                "wrote {} (keep it off the devices) and {} (key {}): add the public key to \
                 [models] trusted_keys",
                private_path.display(),
                public_path.display(),
                crate::model_signature::key_id(
                    &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &public)
                        .unwrap_or_default()
                )
            );
        }
        ModelCommand::Sign { key, file } => {
            let private =
                std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let model =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let signature = crate::model_signature::sign(&private, &model)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let out = signature_path(&file);
            std::fs::write(&out, signature)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
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
