//! `fabrik pipeline list|show|apply|rm`: a thin client of `/api/v1/pipelines`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use fabrik_runtime::config::PipelineConfig;

use crate::client::Endpoint;

/// `fabrik pipeline ...`
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    #[command(subcommand)]
    command: PipelineCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum PipelineCommand {
    /// List the pipelines and how each is doing.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one pipeline, as JSON.
    Show {
        /// Pipeline name.
        name: String,
    },
    /// Define or replace pipelines from a file without restarting Fabrik: TOML with
    /// `[[pipelines]]` entries as in the configuration file (or one pipeline's fields at the
    /// top level), or JSON (one definition or a list). They are kept across restarts.
    ///
    /// Every definition is checked by the server first; if any is refused, none is applied
    /// and every problem is listed.
    Apply {
        /// The file.
        file: PathBuf,
        /// Only check the definitions and say what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a pipeline defined through the API and forget it (its inferences stay stored).
    Rm {
        /// Pipeline name.
        name: String,
    },
}

/// The definitions in `text`, read as JSON or TOML by the file's extension.
fn definitions(path: &Path, text: &str) -> anyhow::Result<Vec<PipelineConfig>> {
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json {
        let value: serde_json::Value = serde_json::from_str(text)?;
        return Ok(if value.is_array() {
            serde_json::from_value(value)?
        } else {
            vec![serde_json::from_value(value)?]
        });
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entries {
        pipelines: Vec<PipelineConfig>,
    }
    let table: toml::Table = toml::from_str(text)?;
    Ok(if table.contains_key("pipelines") {
        toml::from_str::<Entries>(text)?.pipelines
    } else {
        vec![toml::from_str(text)?]
    })
}

/// The first name defined more than once, if any.
fn first_repeated_name(definitions: &[PipelineConfig]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    definitions
        .iter()
        .map(|d| d.name.as_str())
        .find(|name| !seen.insert(*name))
}

/// Runs a `fabrik pipeline` command.
pub(crate) async fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let ep = &args.endpoint;
    match args.command {
        PipelineCommand::List { json } => {
            let pipelines: Vec<serde_json::Value> =
                ep.get_json(&client, "/api/v1/pipelines").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pipelines)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<7} {:<8} {:<9} {:>7} {:>10} {:>9}  error",
                "name", "origin", "state", "model", "devices", "inferences", "anomalies"
            );
            for p in &pipelines {
                let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let n = |k: &str| p.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                println!(
                    "{:<20} {:<7} {:<8} {:<9} {:>7} {:>10} {:>9}  {}",
                    s("name"),
                    s("origin"),
                    s("state"),
                    s("model"),
                    n("devices"),
                    n("inferences"),
                    n("anomalies"),
                    s("error")
                );
            }
            println!("{} pipeline(s)", pipelines.len());
        }
        PipelineCommand::Show { name } => {
            let path = format!("/api/v1/pipelines/{name}");
            let pipeline: serde_json::Value = ep.get_json(&client, &path).await?;
            println!("{}", serde_json::to_string_pretty(&pipeline)?);
        }
        PipelineCommand::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let definitions = definitions(&file, &text)
                .with_context(|| format!("{}: not a pipeline definition", file.display()))?;
            if definitions.is_empty() {
                anyhow::bail!("{}: defines no pipeline", file.display());
            }
            if let Some(name) = first_repeated_name(&definitions) {
                anyhow::bail!("{}: defines pipeline `{name}` twice", file.display());
            }
            // Check all before changing any, so a file with one bad definition changes nothing.
            let mut actions = Vec::with_capacity(definitions.len());
            let mut problems = Vec::new();
            for definition in &definitions {
                let path = format!("/api/v1/pipelines/{}?dry_run=true", definition.name);
                // Not reaching the server ends the command; a refusal is collected.
                let response = ep
                    .request(&client, reqwest::Method::PUT, &path)
                    .json(definition)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach Fabrik at {}", ep.url))?;
                match ep.check(response).await {
                    Ok(response) => {
                        let outcome: serde_json::Value = response.json().await?;
                        let action = outcome["action"].as_str().unwrap_or("apply").to_owned();
                        actions.push(action);
                        for warning in outcome["warnings"].as_array().into_iter().flatten() {
                            eprintln!(
                                "warning: pipeline `{}`: {}",
                                definition.name,
                                warning.as_str().unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => problems.push(format!("pipeline `{}`: {e:#}", definition.name)),
                }
            }
            if !problems.is_empty() {
                anyhow::bail!(
                    "{}: nothing applied; {} of {} definition(s) refused:\n  {}",
                    file.display(),
                    problems.len(),
                    definitions.len(),
                    problems.join("\n  ")
                );
            }
            if dry_run {
                for (definition, action) in definitions.iter().zip(&actions) {
                    println!("would {action} {}", definition.name);
                }
                return Ok(());
            }
            // All in one request: the server stores all of them or none.
            let statuses: Vec<serde_json::Value> = ep
                .send(
                    ep.request(&client, reqwest::Method::PUT, "/api/v1/pipelines")
                        .json(&definitions),
                )
                .await
                .with_context(|| format!("{}: nothing applied", file.display()))?
                .json()
                .await?;
            for ((definition, action), status) in definitions.iter().zip(&actions).zip(&statuses) {
                let verb = if action == "define" {
                    "defined"
                } else {
                    "replaced"
                };
                println!(
                    "{verb} {} ({})",
                    definition.name,
                    status["state"].as_str().unwrap_or("?")
                );
            }
        }
        PipelineCommand::Rm { name } => {
            let path = format!("/api/v1/pipelines/{name}");
            ep.send(ep.request(&client, reqwest::Method::DELETE, &path))
                .await?;
            println!("removed {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::definitions;
    use std::path::Path;

    #[test]
    fn a_file_defines_pipelines_as_the_config_file_does_or_one_at_the_top() {
        let entries = "[[pipelines]]\nname = \"a\"\ntable = \"pump\"\nsignals = [\"v\"]\n\n\
                       [[pipelines]]\nname = \"b\"\ntable = \"pump\"\nsignals = [\"v\"]\n";
        let names: Vec<String> = definitions(Path::new("p.toml"), entries)
            .expect("entries")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let single = "name = \"c\"\ntable = \"pump\"\nsignals = [\"v\"]\nmodel = \"hst\"\n";
        let one = definitions(Path::new("p.toml"), single).expect("single");
        assert_eq!((one[0].name.as_str(), one[0].model.as_str()), ("c", "hst"));
        let json = r#"[{"name": "d", "table": "pump", "signals": ["v"]}]"#;
        assert_eq!(
            definitions(Path::new("p.json"), json).expect("json")[0].name,
            "d"
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let typo = "name = \"c\"\ntable = \"pump\"\nsignals = [\"v\"]\nwindw = \"10s\"\n";
        let error = definitions(Path::new("p.toml"), typo).expect_err("unknown field");
        assert!(format!("{error:#}").contains("windw"), "{error:#}");
    }
}
