//! Telemetry: the process-wide Prometheus recorder behind `/metrics`.
//!
//! Metric names follow `fabrik_<what>_<unit>[_total]`; device ids never become labels
//! (per-device cardinality lives in the store, not in Prometheus).

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The `tracing` target of the spans that become traces (decision 0054): the log leaves it
/// out, the trace layer takes it. Not a prefix of any crate's name, so filters on crates do not
/// catch it.
pub const SPAN_TARGET: &str = "fabrik_spans";

/// Installs the Prometheus recorder once per process and returns a handle that renders the
/// exposition text. Later calls (tests start many servers in one process) return the same
/// handle.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case our handle
            // renders nothing but the process keeps working.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed; /metrics will be empty.");
            }
            handle
        })
        .clone()
}
