//! Applying definitions from a file through the API, shared by `fabrik pipeline apply` and
//! `fabrik alert rule apply`: read TOML or JSON, dry-run each definition on the server so
//! every refusal and warning is named, then send all of them in one all-or-none request.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Endpoint;

/// What kind of definition a file holds, and where the API takes it.
pub(crate) struct Kind {
    /// `pipeline` or `alert rule`, as messages name it.
    pub(crate) noun: &'static str,
    /// The noun with its indefinite article: `a pipeline`, `an alert rule`.
    pub(crate) a_noun: &'static str,
    /// The collection's path, e.g. `/api/v1/pipelines`.
    pub(crate) collection: &'static str,
    /// The status field printed after applying (`state`, `health`).
    pub(crate) status_field: &'static str,
}

/// A definition with a name, and how a TOML file lists several.
pub(crate) trait Named: Serialize + DeserializeOwned {
    fn name(&self) -> &str;
    /// The definitions `text` lists, if its top-level keys (`keys`) say it lists them; read
    /// with `toml::from_str`, so an error names its line.
    fn toml_list(keys: &toml::Table, text: &str) -> Option<Result<Vec<Self>, toml::de::Error>>;
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipelines<T> {
    pipelines: Vec<T>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules<T> {
    rules: Vec<T>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Alerting<T> {
    alerting: Rules<T>,
}

impl Named for fabrik_runtime::config::PipelineConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn toml_list(keys: &toml::Table, text: &str) -> Option<Result<Vec<Self>, toml::de::Error>> {
        keys.contains_key("pipelines")
            .then(|| toml::from_str::<Pipelines<Self>>(text).map(|p| p.pipelines))
    }
}

/// `[[rules]]`, or `[[alerting.rules]]` as in the configuration file.
impl Named for fabrik_runtime::config::AlertRuleConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn toml_list(keys: &toml::Table, text: &str) -> Option<Result<Vec<Self>, toml::de::Error>> {
        if keys.contains_key("rules") {
            Some(toml::from_str::<Rules<Self>>(text).map(|r| r.rules))
        } else if keys.contains_key("alerting") {
            Some(toml::from_str::<Alerting<Self>>(text).map(|a| a.alerting.rules))
        } else {
            None
        }
    }
}

/// The definitions in `text`, read as JSON (one definition or a list) or TOML (a list, see
/// [`Named::toml_list`], or one definition's fields at the top level) by the extension.
pub(crate) fn definitions<T: Named>(path: &Path, text: &str) -> anyhow::Result<Vec<T>> {
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json {
        let value: serde_json::Value = serde_json::from_str(text)?;
        return match value {
            // Each element on its own, so a refusal names which one.
            serde_json::Value::Array(elements) => elements
                .into_iter()
                .enumerate()
                .map(|(index, element)| {
                    serde_json::from_value(element)
                        .map_err(|e| anyhow::anyhow!("definition [{index}]: {e}"))
                })
                .collect(),
            single => Ok(vec![serde_json::from_value(single)?]),
        };
    }
    let keys: toml::Table = toml::from_str(text)?;
    Ok(match T::toml_list(&keys, text) {
        Some(listed) => listed?,
        None => vec![toml::from_str(text)?],
    })
}

/// The first name defined more than once, if any.
fn first_repeated_name<T: Named>(definitions: &[T]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    definitions
        .iter()
        .map(Named::name)
        .find(|name| !seen.insert(*name))
}

/// Applies the definitions in `file` through the API (`--dry-run`: only checks them).
pub(crate) async fn apply<T: Named>(
    kind: &Kind,
    ep: &Endpoint,
    client: &reqwest::Client,
    file: &Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let noun = kind.noun;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let definitions: Vec<T> = definitions(file, &text)
        .with_context(|| format!("{}: not {} definition", file.display(), kind.a_noun))?;
    if definitions.is_empty() {
        anyhow::bail!("{}: defines no {noun}", file.display());
    }
    if let Some(name) = first_repeated_name(&definitions) {
        anyhow::bail!("{}: defines {noun} `{name}` twice", file.display());
    }
    // Check all before changing any, so a file with one bad definition changes nothing.
    let mut actions = Vec::with_capacity(definitions.len());
    let mut problems = Vec::new();
    for definition in &definitions {
        let path = format!(
            "{}/{}?dry_run=true",
            kind.collection,
            crate::client::percent_encode(definition.name())
        );
        // Not reaching the server ends the command; a refusal is collected.
        let response = ep
            .request(client, reqwest::Method::PUT, &path)
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
                        "warning: {noun} `{}`: {}",
                        definition.name(),
                        warning.as_str().unwrap_or_default()
                    );
                }
            }
            Err(e) => problems.push(format!("{noun} `{}`: {e:#}", definition.name())),
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
            if action == "unchanged" {
                println!(
                    "unchanged {} (applying it would change nothing)",
                    definition.name()
                );
            } else {
                println!("would {action} {}", definition.name());
            }
        }
        return Ok(());
    }
    // All in one request: the server stores all of them or none.
    let statuses: Vec<serde_json::Value> = ep
        .send(
            ep.request(client, reqwest::Method::PUT, kind.collection)
                .json(&definitions),
        )
        .await
        .with_context(|| format!("{}: nothing applied", file.display()))?
        .json()
        .await?;
    for ((definition, action), status) in definitions.iter().zip(&actions).zip(&statuses) {
        let verb = match action.as_str() {
            "define" => "defined",
            "unchanged" => "unchanged",
            _ => "replaced",
        };
        println!(
            "{verb} {} ({})",
            definition.name(),
            status[kind.status_field].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
