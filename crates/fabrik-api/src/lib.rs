//! Fabrik's HTTP API: the axum router under `/api/v1`, the InfluxDB-compatible write
//! endpoints (`/write`, `/api/v2/write`), bearer-token authentication, `/ready`, `/services`,
//! `/metrics`, and the OpenAPI document generated from these handlers.
//!
//! Handlers translate HTTP to store calls and back; they hold no business logic.

pub mod alert_rules;
pub mod alerts;
pub mod attestation;
pub mod audit;
pub mod auth;
pub mod blobs;
mod body;
pub mod compliance;
pub mod control;
pub mod devices;
pub mod erasure;
pub mod error;
mod extract;
pub mod fleet;
pub mod fleet_keys;
pub mod latest;
pub mod lineage;
pub mod links;
pub mod openapi;
pub mod pipelines;
pub mod privacy;
pub mod routes;
pub mod session;
pub mod setpoints;
pub mod stream;
pub mod tls;
mod ui;
pub mod updates;
pub mod usecases;
pub mod users;

use std::sync::Arc;

use fabrik_runtime::Services;
use fabrik_store::Store;
use metrics_exporter_prometheus_handle::PrometheusHandle;

pub use auth::{Auth, Identity};
pub use error::ApiError;
pub use routes::router;

/// Re-export so callers need no direct dependency on the exporter crate.
pub mod metrics_exporter_prometheus_handle {
    pub use fabrik_runtime::telemetry::PrometheusHandle;
}

/// Everything handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The storage engine.
    pub store: Arc<Store>,
    /// Service states for `/ready` and `/services`.
    pub services: Services,
    /// Token checks.
    pub auth: Auth,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Largest accepted body (after decompression).
    pub max_body_size: usize,
    /// The device registry, when the registry module runs in this process.
    pub registry: Option<fabrik_registry::Registry>,
    /// Pipeline states, when the pipelines module runs in this process.
    pub pipelines: Option<pipelines::PipelineBoard>,
    /// Changes to the pipelines, when the pipelines module runs in this process.
    pub pipeline_control: Option<Arc<dyn pipelines::PipelineControl>>,
    /// Alerting, when the alerts module runs in this process.
    pub alerting: Option<std::sync::Arc<fabrik_alert::Alerting>>,
    /// Alert rule states, when the alerts module runs in this process.
    pub alert_rules: Option<alert_rules::AlertRuleBoard>,
    /// Changes to the alert rules, when the alerts module runs in this process.
    pub alert_rule_control: Option<Arc<dyn alert_rules::AlertRuleControl>>,
    /// Whether the API is served over TLS: session cookies are then `Secure`.
    pub https: bool,
    /// Measures use cases' KPIs, when the store runs in this process.
    pub kpi_meter: Option<Arc<dyn usecases::KpiMeter>>,
    /// What the process runs with, for `/api/v1/compliance`.
    pub compliance: Arc<compliance::ComplianceFacts>,
    /// The edge → hub link, as the uplink and hub modules report it.
    pub links: links::LinkBoard,
    /// Starts and cancels backfills, when the uplink module runs in this process.
    pub backfill: Option<Arc<dyn links::BackfillControl>>,
    /// The AsyncAPI document (the binary builds it: it knows the connectors' topics).
    pub asyncapi: Arc<str>,
    /// The release repository's last check, as the updates module reports it.
    pub updates: updates::UpdateBoard,
    /// The release repository this process serves under `/tuf`, if any.
    pub release_repo: Option<Arc<updates::ReleaseRepo>>,
    /// `[attestation]`: which devices must attest, and for how long a pass lets them connect.
    pub attestation: fabrik_runtime::config::AttestationSettings,
    /// Cancelled when the server stops ([`serve`] sets it to its `shutdown`): endless
    /// responses (a device's event stream) end with it, so they do not hold the stop.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Told of every write over HTTP once it is stored (the binary reports them as lineage).
    pub writes: Option<Arc<dyn WriteObserver>>,
    /// Sets devices' writable points, when a connector that writes runs in this process.
    pub setpoints: Option<Arc<dyn setpoints::SetpointControl>>,
}

/// What is told of the rows written over HTTP.
pub trait WriteObserver: Send + Sync + 'static {
    /// Rows `path` (`/api/v1/write`, `/write`, `/api/v2/write`, `/api/v1/samples`,
    /// `/api/v1/blobs`) stored, per table.
    fn written(&self, path: &'static str, tables: &[(Arc<str>, usize)]);
}

impl ApiState {
    /// Tells the observer, if any, of a write `path` stored.
    pub(crate) fn written(&self, path: &'static str, report: &fabrik_store::WriteReport) {
        if let Some(writes) = &self.writes {
            writes.written(path, &report.tables);
        }
    }
}

/// Serves the API on `listener` (over TLS when `tls` is given) until `shutdown` is cancelled;
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: tokio_util::sync::CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let state = ApiState {
        stopping: shutdown.clone(),
        ..state
    };
    let app = router(state);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Some(tls) => {
            axum::serve(tls::TlsListener::new(listener, tls)?, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
}
