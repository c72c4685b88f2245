//! What the run-time definition endpoints (`/api/v1/pipelines`, `/api/v1/alert-rules`) share:
//! why a change was refused and how that maps to HTTP, the `dry_run` option and its answer.

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Why a change to the pipelines, models or alert rules was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The definition has problems: `(field, message)` pairs.
    Invalid(Vec<(String, String)>),
    /// Refused: the definition is the configuration file's or the demo's, or the model is in
    /// use; the message says which.
    NotChangeable(String),
    /// Nothing has this name: the message says what was looked for.
    NotFound(String),
    /// The change could not be stored; nothing changed.
    Storage(String),
}

/// `field: message` pairs as one line, `; ` between them.
pub fn describe_problems(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Invalid(problems) => f.write_str(&describe_problems(problems)),
            ControlError::NotChangeable(message)
            | ControlError::NotFound(message)
            | ControlError::Storage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::Invalid(problems) => ApiError::bad_request(describe_problems(&problems)),
            ControlError::NotChangeable(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ControlError::NotFound(message) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            ControlError::Storage(message) => {
                tracing::error!(error = %message, "Storing a definition change failed.");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the change could not be stored; nothing was changed",
                )
            }
        }
    }
}

/// Options of a `PUT` that defines something. An unknown option is refused: a misspelt
/// `dryrun=true` must not apply the change.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApplyParams {
    /// Check the definition as a change would, and change nothing: answers 200 with what
    /// would happen, or the same error a change would get.
    #[serde(default)]
    pub dry_run: bool,
}

/// The options of a request that takes none, so `?dry_run=true` on a `DELETE` is refused
/// instead of ignored while the change is made, and a filter a listing does not have is
/// refused instead of answered unfiltered.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NoOptions {}

/// What a dry run found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// The definition's name.
    pub name: String,
    /// `define` for a new name, `replace` for one defined through the API before,
    /// `unchanged` for the same definition again (nothing restarts).
    pub action: String,
    /// What would keep it from working once applied (a pipeline's table or signal not
    /// written yet or its ONNX model not uploaded; an alert rule's table missing or its
    /// expressions not fitting the table's columns); it would be applied all the same.
    pub warnings: Vec<String>,
}

/// 201 for a name defined anew, 200 for one replaced.
pub(crate) fn created_or_replaced(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// A JSON body of `what` (`pipeline definitions`), or a 400 naming the field that failed
/// (`[1].signals: invalid type ...`).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut reader)
        .map_err(|e| ApiError::bad_request(path_error(what, e)))?;
    reader
        .end()
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
    Ok(parsed)
}

/// `what: path: error`, or `what: error` when the body itself failed.
fn path_error<E: std::fmt::Display>(what: &str, e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    // serde names the Rust type (`expected struct PipelineConfig`); the user wrote JSON.
    let text = e.into_inner().to_string();
    let error = match text.split_once("expected struct ") {
        Some((before, after)) => {
            let rest = after.split_once(' ').map_or("", |(_, rest)| rest);
            format!("{before}expected an object {rest}")
                .trim_end()
                .to_owned()
        }
        None => text.clone(),
    };
    if path == "." {
        format!("{what}: {error}")
    } else {
        format!("{what}: {path}: {error}")
    }
}

/// The definition in a `PUT .../{name}` body, which takes the path's name (a `name` in the
/// body must equal it): a `what` definition (`pipeline`, `alert rule`) as JSON, or a 400
/// naming what was wrong.
pub(crate) fn named_definition<T: DeserializeOwned>(
    body: &[u8],
    path_name: &str,
    what: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<T, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("{what} definition: {e}")))?;
    // The path names it: a body without `name` takes the path's.
    if let Some(fields) = value.as_object_mut() {
        fields
            .entry("name")
            .or_insert_with(|| serde_json::Value::String(path_name.to_owned()));
    }
    // The path of the field that failed, as the configuration file's checks name theirs.
    let definition: T = serde_path_to_error::deserialize(value)
        .map_err(|e| ApiError::bad_request(path_error(&format!("{what} definition"), e)))?;
    let name = name_of(&definition);
    if name != path_name {
        return Err(ApiError::bad_request(format!(
            "name: `{name}` in the body differs from `{path_name}` in the path"
        )));
    }
    Ok(definition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Thing {
        size: u32,
    }

    /// A body's error names the field's path and speaks JSON, not Rust types.
    #[test]
    fn body_errors_name_the_field_in_json_terms() {
        // The error's Debug form holds its status and message.
        let text = |body: &str| match parse_body::<Vec<Thing>>(body.as_bytes(), "things") {
            Err(e) => format!("{e:?}"),
            Ok(_) => String::new(),
        };
        let wrong = text("[1]");
        assert!(
            wrong.contains("400")
                && wrong.contains("[0]")
                && wrong.contains("expected an object")
                && !wrong.contains("Thing"),
            "{wrong}"
        );
        let typed = text(r#"[{"size": 1}, {"size": "big"}]"#);
        assert!(typed.contains("[1].size: invalid type"), "{typed}");
    }

    #[test]
    fn apply_options_refuse_unknown_ones() {
        let parse = |uri: &str| {
            axum::extract::Query::<ApplyParams>::try_from_uri(&uri.parse().unwrap())
                .map(|q| q.0.dry_run)
        };
        assert_eq!(parse("/x?dry_run=true").ok(), Some(true));
        assert!(
            parse("/x?p=secret&dry_run=true").is_err(),
            "a token in the URL is InfluxDB 1.x's /write's alone"
        );
        assert_eq!(parse("/x").ok(), Some(false));
        assert!(parse("/x?dryrun=true").is_err());
    }
}
