//! `/api/v1/alert-rules`: the alert rules of this process, how the evaluation of each is
//! going, and defining, replacing and removing them at run time.
//!
//! Owns the shared [`AlertRuleBoard`] the rule evaluators write and the handlers read, and
//! the [`AlertRuleControl`] interface the alerting module implements. The alerts the rules
//! raise are under `/api/v1/alerts`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::Query;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fabrik_alert::AlertState;
use fabrik_runtime::config::AlertRuleConfig;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::control::{ApplyParams, ControlError, DryRun, created_or_replaced, named_definition};
use crate::error::ApiError;

/// Where a rule was defined, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleOrigin {
    /// An `[[alerting.rules]]` entry of the configuration file: changed there.
    Config,
    /// Defined through the API; kept in the data directory across restarts.
    Api,
    /// One of the demo plant's rules (`fabrik run --demo` without configured rules).
    Demo,
}

/// How a rule's evaluation is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleHealth {
    /// Started, not evaluated yet.
    Starting,
    /// Its last evaluation read its table and advanced its alerts.
    Ok,
    /// Its table does not exist yet; its clock still runs (heartbeats fire).
    Waiting,
    /// Its last evaluation failed; `error` says why. It is retried every `interval`.
    Failing,
    /// Its stored definition no longer loads (`error` says why); replace or remove it.
    Invalid,
}

/// One rule: its definition, how its evaluation is going, and its open alerts.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertRuleStatus {
    /// Unique name (`alertname` in notifications).
    pub name: String,
    /// Where it was defined.
    pub origin: RuleOrigin,
    /// How its evaluation is going.
    pub health: RuleHealth,
    /// Why it fails or does not load, or what it waits for.
    pub error: Option<String>,
    /// When it was last evaluated (RFC 3339).
    pub last_evaluated: Option<String>,
    /// Rows it has evaluated since it (re)started.
    pub rows: u64,
    /// Its pending alerts, counted when asked.
    pub pending: u64,
    /// Its firing alerts, counted when asked.
    pub firing: u64,
    /// The definition.
    pub definition: AlertRuleConfig,
    /// In the answer to a `PUT` only: what would keep it from working as applied (the
    /// dry run's warnings: a table or column not there yet, `expect` matching no device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The rules of this process, by name; written by the evaluators, read by the API. The
/// alert counts are filled in when the API answers.
pub type AlertRuleBoard = Arc<RwLock<BTreeMap<String, AlertRuleStatus>>>;

/// Defines, replaces and removes alert rules while the process runs; the alerting module
/// implements it. A change is stored before it takes effect, so it survives a restart.
pub trait AlertRuleControl: Send + Sync {
    /// Checks `config`, stores it and starts evaluating it, replacing (stopping first) a
    /// rule of the same name that was defined through the API. Returns whether it is new.
    fn apply(&self, config: AlertRuleConfig) -> BoxFuture<'_, Result<bool, ControlError>>;
    /// Applies several definitions together: all are checked first, then all are stored and
    /// started, or none is. Returns, per definition, whether it is new.
    fn apply_all(
        &self,
        configs: Vec<AlertRuleConfig>,
    ) -> BoxFuture<'_, Result<Vec<bool>, ControlError>>;
    /// Checks `config` as [`AlertRuleControl::apply`] would, changing nothing: what would
    /// happen, and what would keep it from evaluating.
    fn check(&self, config: AlertRuleConfig) -> BoxFuture<'_, Result<DryRun, ControlError>>;
    /// Checks several definitions as [`AlertRuleControl::apply_all`] would, changing nothing.
    fn check_all(
        &self,
        configs: Vec<AlertRuleConfig>,
    ) -> BoxFuture<'_, Result<Vec<DryRun>, ControlError>>;
    /// Stops a rule defined through the API and forgets it; its firing alerts resolve.
    fn remove(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>>;
}

fn not_in_this_process() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the alerts module does not run in this process (see --target)",
    )
}

fn control(state: &ApiState) -> Result<&Arc<dyn AlertRuleControl>, ApiError> {
    state
        .alert_rule_control
        .as_ref()
        .ok_or_else(not_in_this_process)
}

fn no_such_rule(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no alert rule named `{name}`"),
    )
}

/// The board's rules named by `wanted` (all when `None`), with their open alerts counted.
async fn statuses(
    state: &ApiState,
    wanted: Option<&str>,
) -> Result<Vec<AlertRuleStatus>, ApiError> {
    let board = state.alert_rules.as_ref().ok_or_else(not_in_this_process)?;
    let mut rules: Vec<AlertRuleStatus> = board
        .read()
        .values()
        .filter(|rule| wanted.is_none_or(|name| rule.name == name))
        .cloned()
        .collect();
    if let Some(alerting) = &state.alerting {
        let mut open: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let alerts = alerting.db().open_alerts().await?;
        for alert in &alerts {
            let counts = open.entry(alert.rule.as_str()).or_default();
            match alert.state {
                AlertState::Pending => counts.0 += 1,
                AlertState::Firing => counts.1 += 1,
                AlertState::Resolved => {}
            }
        }
        for rule in &mut rules {
            (rule.pending, rule.firing) = open.get(rule.name.as_str()).copied().unwrap_or_default();
        }
    }
    Ok(rules)
}

#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "alerts", security(("token" = [])),
    responses((status = 200, description = "every rule: configured, defined through the API, or the demo's, by name", body = [AlertRuleStatus]),
              (status = 503, description = "the alerts module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    // No filters: one asked for (`?since=`) is refused, not ignored.
    Query(_options): Query<crate::control::NoOptions>,
) -> Result<Json<Vec<AlertRuleStatus>>, ApiError> {
    Ok(Json(statuses(&state, None).await?))
}

#[utoipa::path(get, path = "/api/v1/alert-rules/{name}", tag = "alerts", security(("token" = [])),
    params(("name" = String, Path, description = "rule name")),
    responses((status = 200, description = "the rule", body = AlertRuleStatus),
              (status = 404, description = "no such rule", body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<AlertRuleStatus>, ApiError> {
    statuses(&state, Some(&name))
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| no_such_rule(&name))
}

/// The body of a 200 answer to `PUT .../{name}`: the replaced rule, or what a dry run found.
/// Documents the answer's two shapes; the handler builds either directly.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ReplacedRule {
    /// Replaced.
    Replaced(Box<AlertRuleStatus>),
    /// `dry_run=true`.
    DryRun(DryRun),
}

#[utoipa::path(put, path = "/api/v1/alert-rules/{name}", tag = "alerts", security(("token" = [])),
    params(("name" = String, Path, description = "rule name; must equal `name` in the body"), ApplyParams),
    request_body(content = AlertRuleConfig, description = "the fields of an `[[alerting.rules]]` entry, as JSON"),
    responses((status = 201, description = "defined; evaluation started", body = AlertRuleStatus),
              (status = 200, description = "replaced (the previous definition stopped first; its open alerts carry over when it watches the same rows and value, else they resolve) or, with `dry_run=true`, checked without any change", body = ReplacedRule),
              (status = 400, description = "invalid definition; the message names each field", body = crate::error::ErrorBody),
              (status = 409, description = "defined in the configuration file or by the demo", body = crate::error::ErrorBody),
              (status = 503, description = "the alerts module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn apply(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<ApplyParams>,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    let control = control(&state)?;
    let config: AlertRuleConfig =
        named_definition(&body, &name, "alert rule", |c: &AlertRuleConfig| &c.name)?;
    if params.dry_run {
        return Ok(Json(control.check(config).await?).into_response());
    }
    // The dry run's warnings go with the answer: a client that applies directly sees them too.
    let warnings = control.check(config.clone()).await?.warnings;
    let created = control.apply(config).await?;
    let mut status = statuses(&state, Some(&name))
        .await?
        .pop()
        .ok_or_else(|| stored_but_not_listed(&name))?;
    status.warnings = warnings;
    Ok((created_or_replaced(created), Json(status)).into_response())
}

fn stored_but_not_listed(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("alert rule `{name}` was stored but is not listed"),
    )
}

/// The body of a 200 answer to `PUT /api/v1/alert-rules`: the rules, or what a dry run found
/// for each. Documents the answer's two shapes; the handler builds either directly.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum AppliedRules {
    /// Applied, in the order given.
    Applied(Vec<AlertRuleStatus>),
    /// `dry_run=true`, in the order given.
    DryRun(Vec<DryRun>),
}

#[utoipa::path(put, path = "/api/v1/alert-rules", tag = "alerts", security(("token" = [])),
    params(ApplyParams),
    request_body(content = [AlertRuleConfig], description = "several `[[alerting.rules]]` entries, as a JSON list"),
    responses((status = 200, description = "all defined or replaced and evaluating, in the order given; with `dry_run=true`, each checked without any change", body = AppliedRules),
              (status = 400, description = "at least one invalid definition; none was applied; the message names each `<rule>.<field>`", body = crate::error::ErrorBody),
              (status = 409, description = "one is defined in the configuration file or by the demo; none was applied", body = crate::error::ErrorBody),
              (status = 503, description = "the alerts module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn apply_all(
    State(state): State<ApiState>,
    Query(params): Query<ApplyParams>,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    let control = control(&state)?;
    let configs: Vec<AlertRuleConfig> =
        crate::control::parse_body(&body, "alert rule definitions")?;
    if params.dry_run {
        return Ok(Json(control.check_all(configs).await?).into_response());
    }
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let checked = control.check_all(configs.clone()).await?;
    control.apply_all(configs).await?;
    let mut by_name: BTreeMap<String, AlertRuleStatus> = statuses(&state, None)
        .await?
        .into_iter()
        .map(|status| (status.name.clone(), status))
        .collect();
    names
        .iter()
        .zip(checked)
        .map(|(name, dry)| {
            let mut status = by_name
                .remove(name)
                .ok_or_else(|| stored_but_not_listed(name))?;
            status.warnings = dry.warnings;
            Ok(status)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|statuses| Json(statuses).into_response())
}

#[utoipa::path(delete, path = "/api/v1/alert-rules/{name}", tag = "alerts", security(("token" = [])),
    params(("name" = String, Path, description = "rule name")),
    responses((status = 204, description = "stopped and forgotten; its firing alerts resolve and their receivers are told (should that fail, at the next start)"),
              (status = 404, description = "no such rule", body = crate::error::ErrorBody),
              (status = 409, description = "defined in the configuration file or by the demo", body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    control(&state)?.remove(name).await?;
    Ok(StatusCode::NO_CONTENT)
}
