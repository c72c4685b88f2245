//! Configuration: raw TOML (+ `FABRIK__<SECTION>__<KEY>` environment overrides) is checked
//! against the shape of the defaults, so every unknown field and wrong type is reported at
//! once with its dotted path, then validated into typed [`Settings`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigProblem, RuntimeError};
use crate::units::{parse_bytes, parse_duration};

/// The commented example configuration printed by `fabrik config example`. A test checks
/// that it parses and equals the defaults, so it cannot drift from the code.
pub const EXAMPLE: &str = include_str!("../fabrik.example.toml");

/// The prefix of environment overrides: `FABRIK__HTTP__LISTEN=0.0.0.0:7800`.
pub const ENV_PREFIX: &str = "FABRIK__";

/// The configuration as written by the user.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP API.
    pub http: HttpConfig,
    /// The storage engine.
    pub store: StoreConfig,
    /// SQL queries.
    pub query: QueryConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// The MQTT device endpoint.
    pub mqtt: MqttConfig,
    /// The ingest path of connectors.
    pub ingest: IngestConfig,
    /// Normalisation mappings (empty: the built-in ones).
    pub mappings: Vec<MappingConfig>,
    /// Inference pipelines.
    pub pipelines: Vec<PipelineConfig>,
    /// Modbus TCP devices to poll.
    pub modbus: crate::modbus::ModbusConfig,
    /// OPC UA servers to subscribe to.
    pub opcua: crate::opcua::OpcUaConfig,
    /// Sparkplug B: the metrics operators may set on edge nodes.
    pub sparkplug: crate::sparkplug::SparkplugConfig,
    /// Alert rules and notifiers.
    pub alerting: AlertingConfig,
    /// External MQTT brokers to subscribe to.
    pub bridges: Vec<BridgeConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Traces of the data path and the API, sent to an OpenTelemetry collector.
    pub traces: TracesConfig,
    /// OpenLineage run events of the pipelines, their models, alert rules, use cases' KPIs, A/B
    /// comparisons, the connectors' ingest and (on a hub) edges' uplinks, sent to a lineage
    /// catalog or a file.
    pub openlineage: OpenLineageConfig,
    /// Which ONNX models may load: the keys their signatures are checked with.
    pub models: ModelsConfig,
    /// Forwarding this node's stored rows to a hub over NATS JetStream.
    pub uplink: UplinkConfig,
    /// Receiving the rows edge nodes forward (this process as the hub).
    pub hub: HubConfig,
    /// Installing what a release repository (TUF) publishes for this node.
    pub updates: UpdatesConfig,
    /// Serving a release repository to nodes (this process as the hub).
    pub releases: ReleasesConfig,
    /// Use cases' KPIs kept as a series.
    pub usecases: UseCasesConfig,
    /// Device attestation: which devices must prove their boot state before they connect.
    pub attestation: AttestationConfig,
    /// Where the registry (devices, users, use cases, attestation, audit log) and the alerts
    /// keep their tables.
    pub registry: RegistryConfig,
}

/// `[registry]`: the metadata database (decision 0055).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A PostgreSQL database (`postgres://user:password@host:5432/fabrik?sslmode=verify-full`)
    /// that must exist; empty: the embedded SQLite file `<data_dir>/registry.db`. Best given
    /// as `FABRIK__REGISTRY__DATABASE_URL`, so the password stays out of the file.
    pub database_url: String,
}

impl RegistryConfig {
    /// The PostgreSQL URL, `None` for the embedded file; the problem of a malformed one.
    fn validate(&self, problem: &mut impl FnMut(&str, String)) -> Option<String> {
        let url = self.database_url.trim();
        if url.is_empty() {
            return None;
        }
        let parsed = url::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "postgres" | "postgresql")
                && (u.has_host() || u.query_pairs().any(|(key, _)| key == "host"))
        });
        if parsed.is_none() {
            // Not echoed: it may hold a password.
            problem(
                "registry.database_url",
                "is not a postgres:// or postgresql:// URL of a database that parses \
                 (characters such as / ? # @ in the password must be percent-encoded)"
                    .into(),
            );
            return None;
        }
        Some(url.to_owned())
    }
}

/// `[attestation]`: TPM 2.0 quotes as a condition of connecting (decision 0050). A device
/// with an enrolled attestation key always needs a current passing attestation to connect;
/// `required` extends that to every device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationConfig {
    /// Every device must attest (one without an enrolled key cannot connect).
    pub required: bool,
    /// How long a passing attestation lets a device connect.
    pub max_age: String,
    /// The TPM vendors' CA certificates (PEM or DER file, or a directory of them), one of which
    /// must have issued a device's EK certificate (intermediate CAs included) when it activates
    /// its key; empty: not checked, and only an admin activates keys.
    pub endorsement_authorities: String,
    /// Only keys activated through a certified EK open the gate (decision 0053).
    pub require_endorsement: bool,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        Self {
            required: false,
            max_age: "24h".into(),
            endorsement_authorities: String::new(),
            require_endorsement: false,
        }
    }
}

/// The validated `[attestation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationSettings {
    /// Every device must attest.
    pub required: bool,
    /// How long a passing attestation lets a device connect.
    pub max_age: Duration,
    /// Only keys activated through an EK certificate from a trusted TPM vendor open the gate.
    pub require_endorsement: bool,
    /// The TPM vendors' CA certificates (file or directory); `None`: EK certificates are not
    /// checked.
    pub endorsement_authorities: Option<std::path::PathBuf>,
}

impl Default for AttestationSettings {
    fn default() -> Self {
        Self {
            required: false,
            max_age: Duration::from_secs(24 * 3600),
            require_endorsement: false,
            endorsement_authorities: None,
        }
    }
}

/// `[usecases]`: use cases' KPIs recorded as rows of `use_case_kpis` (decision 0037).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UseCasesConfig {
    /// At every multiple of this, each use case's KPIs over the interval just ended are
    /// stored, a row per KPI; `0s`: not recorded; empty: `1h`, or `1m` with `--demo`.
    pub record_every: String,
}

impl UseCasesConfig {
    /// The recording interval (zero: off), `demo` choosing the default when none is set.
    pub fn record_interval(&self, demo: bool) -> Result<Duration, String> {
        let text = self.record_every.trim();
        if text.is_empty() {
            return Ok(Duration::from_secs(if demo { 60 } else { 3600 }));
        }
        let every = parse_duration(text)?;
        if !every.is_zero() && every < Duration::from_secs(1) {
            return Err(format!(
                "`{text}`: record at most every second, or `0s` for never"
            ));
        }
        Ok(every)
    }
}

/// `[updates]`: this node follows a release repository (TUF, decision 0031) and installs the
/// models, use cases, pipelines and alert rules it publishes for it, each verified before it
/// is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatesConfig {
    /// The repository: `https://hub:7800/tuf` (a hub's `[releases]`), any static server, or
    /// `file:///media/usb/releases` (carried in); empty: off.
    pub url: String,
    /// The trusted root metadata (`metadata/1.root.json` of `fabrik release init`), brought to
    /// the node out of band; required with `url`.
    pub root: String,
    /// This node's name, matched against a target's `nodes`; empty: `[uplink] node`, else the
    /// host name.
    pub node: String,
    /// How often the repository is checked.
    pub interval: String,
    /// Bearer token for the repository (the hub's `[releases] token`).
    pub token: String,
    /// CA certificate file (PEM) an `https` repository's certificate must chain to; empty: the
    /// system's roots.
    pub tls_ca: String,
    /// This node's key for encrypted targets: an age identity file (`age-keygen`'s format);
    /// empty: `<data_dir>/updates/identity.key`, made at the first start.
    pub identity: String,
    /// Install the Fabrik binary published for this node's platform (`fabrik release add
    /// --kind binary`) in place of the running one, which is kept beside it, and restart into
    /// it; `false`: report it as available only.
    pub binary: bool,
    /// A new binary confirms itself once it has run this long with every module up
    /// (decision 0066); until then a run of it that ends in a crash, a kill or an error counts
    /// as failed.
    pub confirm_after: String,
    /// After this many failed runs of a new binary that has not confirmed itself, the node
    /// puts the previous binary back and restarts into it; `0`: never (an operator runs
    /// `fabrik updates rollback`).
    pub rollback_after_failed_runs: u32,
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            root: String::new(),
            node: String::new(),
            interval: "5m".into(),
            token: String::new(),
            tls_ca: String::new(),
            identity: String::new(),
            binary: false,
            confirm_after: "10m".into(),
            rollback_after_failed_runs: 3,
        }
    }
}

/// `[releases]`: this process serves a release repository under `/tuf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasesConfig {
    /// The repository's directory (`fabrik release init --repo`); empty: none served.
    pub repo: String,
    /// Bearer token nodes must present; empty: served to anyone who can connect (the files
    /// are signed, but the models are readable).
    pub token: String,
    /// A directory holding the repository's online keys, `snapshot.key` and `timestamp.key`
    /// (not root or targets): with it this process re-signs the snapshot and the timestamp
    /// whenever half their lifetime is left, so nodes keep trusting the releases until the
    /// targets metadata itself expires; empty: the publisher must re-sign
    /// (`fabrik release refresh --online`) before the timestamp expires.
    pub keys: String,
    /// How long each re-signed snapshot is valid.
    pub snapshot_lifetime: String,
    /// How long each re-signed timestamp is valid.
    pub timestamp_lifetime: String,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        Self {
            repo: String::new(),
            token: String::new(),
            keys: String::new(),
            snapshot_lifetime: "7d".into(),
            timestamp_lifetime: "1d".into(),
        }
    }
}

/// `[uplink]`: store-and-forward of this node's rows to a hub over NATS JetStream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// NATS server URL(s), comma-separated: `nats://host:4222`, `tls://host:4222`; empty:
    /// off.
    pub url: String,
    /// JetStream stream that carries the rows.
    pub stream: String,
    /// Subject prefix: an edge publishes on `<subject>.<node>`, the stream holds `<subject>.>`.
    pub subject: String,
    /// NATS user name (with `password`).
    pub user: String,
    /// Its password.
    pub password: String,
    /// NATS token (instead of user and password).
    pub token: String,
    /// CA certificate file (PEM) the server's certificate must chain to; set: TLS required.
    pub tls_ca: String,
    /// Client certificate file (PEM) for mutual TLS.
    pub tls_cert: String,
    /// Its private key file (PEM).
    pub tls_key: String,
    /// This node's name on the hub: letters, digits, `-`, `_`; required with `url`.
    pub node: String,
    /// Tables to forward; empty: every table but those in `exclude`. A hub learns the
    /// edge's devices from `_devices` and its operators' verdicts from `alert_labels`.
    pub tables: Vec<String>,
    /// Tables never forwarded.
    pub exclude: Vec<String>,
    /// WAL kept for the hub while it cannot be reached; past this the oldest rows are given
    /// up (counted in `fabrik_uplink_skipped_records_total` and logged).
    pub max_backlog: String,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "FABRIK_UPLINK".into(),
            subject: "fabrik.uplink".into(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            node: String::new(),
            tables: Vec::new(),
            exclude: vec!["_raw".into()],
            max_backlog: "1GiB".into(),
        }
    }
}

/// `[hub]`: this process stores the rows edge nodes forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// NATS server URL(s), comma-separated: `nats://host:4222`, `tls://host:4222`; empty:
    /// off.
    pub url: String,
    /// JetStream stream that carries the rows.
    pub stream: String,
    /// Subject prefix: an edge publishes on `<subject>.<node>`, the stream holds `<subject>.>`.
    pub subject: String,
    /// NATS user name (with `password`).
    pub user: String,
    /// Its password.
    pub password: String,
    /// NATS token (instead of user and password).
    pub token: String,
    /// CA certificate file (PEM) the server's certificate must chain to; set: TLS required.
    pub tls_ca: String,
    /// Client certificate file (PEM) for mutual TLS.
    pub tls_cert: String,
    /// Its private key file (PEM).
    pub tls_key: String,
    /// Durable consumer name: hub processes with the same name share the work.
    pub consumer: String,
    /// How long the stream keeps messages (consumed or not).
    pub max_age: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "FABRIK_UPLINK".into(),
            subject: "fabrik.uplink".into(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            consumer: "fabrik-hub".into(),
            max_age: "7d".into(),
        }
    }
}

/// `[models]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Ed25519 public keys (base64, or the path of a file holding one, as `fabrik model
    /// keygen` writes it) whose signatures make an ONNX model trusted.
    pub trusted_keys: Vec<String>,
    /// Whether every ONNX model must carry a signature by a trusted key before it loads.
    /// Default: yes when `trusted_keys` names a key. A signature that does not verify is
    /// refused either way.
    pub require_signature: Option<bool>,
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// MQTT over TCP; empty: off.
    pub listen: String,
    /// MQTT over TLS; empty: off.
    pub tls_listen: String,
    /// Server certificate chain (PEM); empty with `tls_listen` set: self-signed, generated.
    pub tls_cert: String,
    /// Server private key (PEM).
    pub tls_key: String,
    /// CA (PEM) for client certificates; set: mTLS, the certificate's CN is the device id.
    pub tls_client_ca: String,
    /// Refuse TLS clients without a certificate.
    pub tls_require_client_cert: bool,
    /// Let clients connect without credentials and use every topic. For protocol test suites
    /// only: Fabrik logs a warning at start.
    pub allow_anonymous: bool,
    /// Largest packet accepted.
    pub max_packet_size: String,
    /// Unacknowledged QoS 1/2 messages a client may send ahead; beyond them, reading from
    /// it pauses until the store has acknowledged some.
    pub receive_maximum: i64,
    /// Messages per second per connection (0: unlimited); above it, reading from the client
    /// pauses (it is slowed down, not disconnected).
    pub max_message_rate: i64,
    /// Concurrent connections.
    pub max_connections: i64,
    /// Longest a disconnected persistent session is kept.
    pub max_session_expiry: String,
    /// Longest keepalive an MQTT 5 client may use (announced as Server Keep Alive); empty:
    /// the client's own.
    pub max_keep_alive: String,
    /// Messages queued per offline or slow session.
    pub max_queued_messages: i64,
    /// MQTT 5 reason code of a SUBACK refused by the ACLs: `not_authorized` (0x87, the
    /// default) or `unspecified` (0x80, what the Eclipse Paho test client expects).
    pub subscribe_denied_reason: String,
    /// Topic ACL rules; empty: the built-in rules (devices publish under
    /// `devices/{device_id}/#` and read `devices/{device_id}/cmd/#`).
    pub acl: Vec<AclRuleConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1883".into(),
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            tls_require_client_cert: false,
            allow_anonymous: false,
            max_packet_size: "1MiB".into(),
            receive_maximum: 100,
            max_message_rate: 1000,
            max_connections: 10_000,
            max_session_expiry: "1d".into(),
            max_keep_alive: String::new(),
            max_queued_messages: 1000,
            subscribe_denied_reason: "not_authorized".into(),
            acl: Vec::new(),
        }
    }
}

/// `[[mqtt.acl]]`: one allow (or deny) rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    /// Topic filter with `{device_id}`, `{username}`, `{client_id}`, `{sparkplug_group}`,
    /// `{sparkplug_node}` variables.
    pub topic: String,
    /// `allow` (default) or `deny`; deny rules win.
    #[serde(default = "allow")]
    pub effect: String,
}

fn allow() -> String {
    "allow".into()
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Keep every raw message in the `_raw` table (lineage down to the bytes).
    pub keep_raw: bool,
    /// Retention of `_raw`.
    pub raw_retention: String,
    /// Messages waiting for the ingest worker before publishers are slowed down.
    pub queue: i64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            keep_raw: true,
            raw_retention: "7d".into(),
            queue: 10_000,
        }
    }
}

/// `[[mappings]]`: how a connector's messages become rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Unique name.
    pub name: String,
    /// Bumped on every change; stored with each row as `_mapping_version`.
    #[serde(default = "one")]
    pub version: u32,
    /// Which connector's messages: `mqtt` (the device endpoint) or `bridge:<name>`.
    #[serde(default = "mqtt_source")]
    pub source: String,
    /// Topic template: literal levels, `{name}` captures (`{device}` required), `+`, final `#`.
    pub topic: String,
    /// `json`, `value` (the payload is one number, boolean or text) or `wav` (the payload is a
    /// WAV clip, stored as a blob; the row's `signal` field holds its id).
    #[serde(default = "json_format")]
    pub format: String,
    /// Table name; may use captures and `{device_type}`. Default: the device type, else
    /// `telemetry`.
    #[serde(default)]
    pub measurement: Option<String>,
    /// JSON pointer of the timestamp (number or RFC 3339 text); absent: receipt time.
    #[serde(default)]
    pub time: Option<String>,
    /// Unit of numeric timestamps: `s`, `ms`, `us`, `ns` or `auto` (by magnitude).
    #[serde(default = "auto_unit")]
    pub time_unit: String,
    /// Explicit signals; none: every scalar member becomes a field (nested objects are
    /// flattened with `_`).
    #[serde(default)]
    pub signals: Vec<SignalConfig>,
    /// For `format = "value"`: the field name (default: the `{signal}` capture).
    #[serde(default)]
    pub signal: Option<String>,
}

/// `[[pipelines]]`: windows of a table's signals per device → features → model → inferences.
/// Names (features, model, threshold) are checked by `fabrik config check`. The same fields,
/// as JSON, define a pipeline through `PUT /api/v1/pipelines/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; stored with every inference.
    pub name: String,
    /// `false` keeps it stopped.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The table the signals are read from.
    pub table: String,
    /// The tag column naming the device.
    #[serde(default = "device_column")]
    pub device_column: String,
    /// Only these devices (empty: every device, subject to `site` and `device_type`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Only devices of this site (from the device registry).
    #[serde(default)]
    pub site: Option<String>,
    /// Only devices of this type (from the device registry).
    #[serde(default)]
    pub device_type: Option<String>,
    /// Only devices with this label, `key=value` (from the device registry).
    #[serde(default)]
    pub label: Option<String>,
    /// The use case the pipeline serves: it then scores only the devices the use case's stage
    /// allows (its pilot devices in pilot, and so on; see `/api/v1/usecases`), and none while
    /// the use case is not defined.
    #[serde(default)]
    pub use_case: Option<String>,
    /// A SQL condition over the table's columns: only rows where it holds enter windows, so
    /// a model learns and scores one operating state (`running` scores a pump only while it
    /// runs; its stops are then not anomalies).
    #[serde(default)]
    pub filter: Option<String>,
    /// Field columns fed to the model, in order.
    pub signals: Vec<String>,
    /// Window length: a duration (`10s`) or a sample count (`256 samples`).
    #[serde(default = "ten_seconds")]
    pub window: String,
    /// Distance between window starts (default: the window, i.e. tumbling).
    #[serde(default)]
    pub hop: Option<String>,
    /// Features of every signal: mean, std, min, max, rms, p2p, skew, kurtosis, slope,
    /// band:<low>-<high> (Hz).
    #[serde(default = "default_features")]
    pub features: Vec<String>,
    /// Fewest samples of each signal a window needs.
    #[serde(default = "three")]
    pub min_samples: u32,
    /// `robust_z`, `pca_t2q`, `hst`, `iforest`, `rart` (the NAB detector, on each feature;
    /// give it a fixed threshold such as 0.7), `dbz` (the SKAB detector, 140 training windows
    /// or more; 1.0 is its alarm level), or `onnx` (with `model_path`).
    #[serde(default = "robust_z")]
    pub model: String,
    /// The `.onnx` file of an `onnx` model (relative paths: from the working directory).
    #[serde(default)]
    pub model_path: Option<String>,
    /// Instead of `model_path`: an ONNX model uploaded with `PUT /api/v1/models/{name}`.
    #[serde(default)]
    pub model_name: Option<String>,
    /// How an ONNX model's output becomes a score: `auto`, `reconstruction` (an autoencoder's
    /// mean squared error over the features), `decision` (minus scikit-learn's decision
    /// function, as an IsolationForest exports it in `scores`), `probability` (the last column
    /// of a binary classifier's probabilities) or `score` (the model's one value per row, as
    /// it is; higher is more anomalous). `:<output name>` picks the output, e.g. `score:err`.
    #[serde(default = "auto_unit")]
    pub model_output: String,
    /// Windows each device learns from before it is scored. Unset: 30, or the model's
    /// minimum where that is more (140 for `dbz`).
    #[serde(default)]
    pub training_windows: Option<u32>,
    /// A number, or `quantile:<q>[*<margin>]`: the training windows' score at quantile q,
    /// moved by the margin m away from the normal scores (m × q for non-negative scores; for
    /// scores bounded by 1, such as `iforest` and `hst`, 1 − (1 − q)/m; for scores that go
    /// negative, median + m × (q − median)). Unset: the model's own alarm level where its scores
    /// have one (`dbz` 1.0, `rart` 0.72), `quantile:1.0*1.1` for `iforest` and `hst`, else
    /// `quantile:1.0*1.5`. A fixed score may be given as a number too.
    #[serde(default, deserialize_with = "string_or_number")]
    pub threshold: Option<String>,
    /// How often new data is read.
    #[serde(default = "one_second")]
    pub interval: String,
    /// How long to wait for late samples before a window is closed.
    #[serde(default = "two_seconds")]
    pub lateness: String,
    /// Where reading starts: `now` (score windows from now on, after training on the stored
    /// windows just before, if any: time windows only), or `earliest` (replay everything
    /// stored).
    #[serde(default = "now")]
    pub start: String,
    /// Watches each device's input for drift from the windows its model learnt from; each
    /// check is a row of the `model_drift` table (unset: no watch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftConfig>,
    /// A challenger model scored on the same windows as `model`, written to
    /// `shadow_inferences` beside the champion's verdict, to compare the two before switching
    /// (`GET /api/v1/pipelines/{name}/shadow`). Never alerted on, except on the devices it is
    /// live on (`live_share`, `live_devices`: an A/B split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
    /// A classifier's performance estimated from its own probabilities while the outcomes
    /// are not known yet (NannyML's CBPE), fitted on the first windows whose outcomes
    /// arrived in a table (`GET /api/v1/pipelines/{name}/performance`; unset: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<PerformanceConfig>,
}

/// `[pipelines.performance]`: where the outcomes of the pipeline's windows arrive, and how
/// its classifier's performance is estimated in the windows that have none yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PerformanceConfig {
    /// The table the outcomes are written to (inspections, test results): a row of a device
    /// at a time inside a window is that window's outcome, so its time is when the item was
    /// made, not when it was inspected. Negative outcomes need rows too: a window without one
    /// is unknown.
    pub targets: String,
    /// Its column holding the outcome: true, or a number of 0.5 and up, for the positive
    /// class (the class whose probability the model scores).
    pub target: String,
    /// Its device column.
    #[serde(default = "device_column")]
    pub device_column: String,
    /// The probability from which the classifier predicts the positive class (F1, precision,
    /// recall and accuracy are of this decision; the pipeline's `threshold`, which flags
    /// windows for alerts, may differ per device).
    #[serde(default = "half")]
    pub decision_threshold: f64,
    /// Scored windows per chunk (a point of the estimate).
    #[serde(default = "five_hundred")]
    pub chunk: u32,
    /// Chunks of windows with outcomes the estimator is fitted on: the first ones scored by
    /// the model version (6 to 1,000, at most 25,000 windows; their spread sets the alert
    /// thresholds). Outcomes must not be chosen by the prediction (inspect a random sample,
    /// not the flagged windows), or the reference is biased.
    #[serde(default = "ten")]
    pub reference_chunks: u32,
    /// Metrics: `roc_auc`, `f1`, `accuracy`, `precision`, `recall`.
    #[serde(default = "default_performance_metrics")]
    pub metrics: Vec<String>,
}

fn five_hundred() -> u32 {
    500
}
fn ten() -> u32 {
    10
}
fn default_performance_metrics() -> Vec<String> {
    vec!["roc_auc".into(), "f1".into()]
}

/// `[pipelines.shadow]`: the challenger, with the pipeline's model fields; everything else
/// (table, devices, filter, signals, windows, features) is the pipeline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// As the pipeline's `model`.
    pub model: String,
    /// As the pipeline's `model_path`.
    #[serde(default)]
    pub model_path: Option<String>,
    /// As the pipeline's `model_name`.
    #[serde(default)]
    pub model_name: Option<String>,
    /// As the pipeline's `model_output`.
    #[serde(default = "auto_unit")]
    pub model_output: String,
    /// As the pipeline's `threshold` (unset: the challenger model's default).
    #[serde(default, deserialize_with = "string_or_number")]
    pub threshold: Option<String>,
    /// As the pipeline's `training_windows` (unset: the pipeline's, if it has one, else the
    /// challenger model's default).
    #[serde(default)]
    pub training_windows: Option<u32>,
    /// A/B split: the share of devices (0 to 1) on which the challenger's verdicts are the
    /// pipeline's (written to `inferences`, alerted on, counted in KPIs) and the champion's
    /// are the shadow. A device is in it when a stable hash of the pipeline's and the
    /// device's names falls under the share, so adding devices moves no other device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_share: Option<f64>,
    /// A/B split by name: devices on which the challenger is live, besides those `live_share`
    /// draws.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_devices: Vec<String>,
}

/// `[pipelines.drift]`: every `windows` scored windows of a device, their features are
/// compared with the features of the windows its model learnt from, one test per feature
/// (Evidently's tests, with its automatic choice by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// `auto` (Evidently's choice per feature: up to 1,000 reference windows KS, or for a
    /// feature of 5 values or fewer chi-square or z; beyond, normed Wasserstein, or
    /// Jensen–Shannon for 5 values or fewer), `ks`, `wasserstein`, `psi`, `jensenshannon`,
    /// `kl_div`, `hellinger`, `chisquare`, `z`, or `reconstruction` (all features together:
    /// NannyML's PCA reconstruction error, which sees a broken relation between features
    /// whose distributions stay; needs 20 training windows).
    #[serde(default = "auto_unit")]
    pub method: String,
    /// The test's threshold: a p-value (drift at or below it for `ks`, below it for
    /// `chisquare` and `z`; default 0.05), a distance (drift at or above it; default 0.1),
    /// or for `reconstruction` the standard deviations of the reference chunks' errors
    /// around their mean that the current error may stray (default 3).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Scored windows per check (default: the training windows); at most 2,000.
    #[serde(default)]
    pub windows: Option<u32>,
    /// The share of features that must drift for the device's input to count as drifted.
    #[serde(default = "half")]
    pub share: f64,
    /// A device whose input drifted this many checks in a row learns afresh from the last
    /// training windows of the last check (unset: never; `fabrik pipeline retrain` is the
    /// operator's). A fault that lasts is a drift too: set it only where a lasting change is
    /// a new normal (a product change, a new season), not where it is a failure. Built-in
    /// models only (an ONNX model is trained elsewhere).
    #[serde(default)]
    pub retrain_after: Option<u32>,
}

fn half() -> f64 {
    0.5
}

/// `[[bridges]]`: an external MQTT broker whose messages enter the ingest path as source
/// `bridge:<name>` (map them with `[[mappings]]` whose `source` is that).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Unique name.
    pub name: String,
    /// `host:port` of the broker.
    pub address: String,
    /// Topic filters to subscribe to.
    pub topics: Vec<String>,
    /// Subscription QoS (0 or 1; QoS 1 messages are acknowledged once stored).
    #[serde(default = "one_u8")]
    pub qos: u8,
    /// Client id (default `fabrik-bridge-<name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// CA certificate (PEM) for TLS.
    #[serde(default)]
    pub ca: Option<String>,
    /// Name the broker's certificate must carry (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The MQTT version spoken to the broker: `3.1.1` (the default) or `5`.
    #[serde(default, deserialize_with = "string_or_number")]
    pub mqtt_version: Option<String>,
    /// Fabrik is the Sparkplug host of the edge nodes on this broker (decision 0093): it keeps
    /// its `STATE` there (a will, and online on every connection), connects with a clean
    /// session as the specification asks, and sends the nodes their rebirth requests and
    /// commands through it.
    #[serde(default)]
    pub sparkplug_host: bool,
}

fn one_u8() -> u8 {
    1
}

/// An optional text that may be written as a number (a pipeline's fixed threshold, `3.0` or
/// `"3.0"`): the number's shortest decimal form.
fn string_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Integer(i64),
        Float(f64),
    }
    Ok(
        Option::<Written>::deserialize(deserializer)?.map(|value| match value {
            Written::Text(text) => text,
            Written::Integer(n) => n.to_string(),
            Written::Float(n) => n.to_string(),
        }),
    )
}

/// The tables of a list of tables (`[[bridges]]`), if `value` is one.
fn table_entries(value: Option<&mut toml::Value>) -> Vec<&mut toml::Table> {
    match value {
        Some(toml::Value::Array(list)) => list
            .iter_mut()
            .filter_map(|entry| match entry {
                toml::Value::Table(fields) => Some(fields),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Numbers where the shape check's template has text that may be written as a number (a
/// pipeline's `threshold`, and its shadow model's; an MQTT client's `mqtt_version = 5`),
/// turned into that text, so the check does not refuse them.
fn numbers_as_text(table: &mut toml::Table) {
    let field_as_text = |fields: &mut toml::Table, key: &str| {
        if let Some(value) = fields.get_mut(key) {
            let text = match value {
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(n) => n.to_string(),
                _ => return,
            };
            *value = toml::Value::String(text);
        }
    };
    for bridge in table_entries(table.get_mut("bridges")) {
        field_as_text(bridge, "mqtt_version");
    }
    if let Some(toml::Value::Table(alerting)) = table.get_mut("alerting") {
        for notifier in table_entries(alerting.get_mut("notifiers")) {
            field_as_text(notifier, "mqtt_version");
        }
    }
    let Some(toml::Value::Array(pipelines)) = table.get_mut("pipelines") else {
        return;
    };
    let as_text = |fields: &mut toml::Table| field_as_text(fields, "threshold");
    for pipeline in pipelines {
        if let toml::Value::Table(fields) = pipeline {
            as_text(fields);
            // The shadow model's threshold is written as the pipeline's is.
            if let Some(toml::Value::Table(shadow)) = fields.get_mut("shadow") {
                as_text(shadow);
            }
        }
    }
}

/// Most list entries reported as not deserializing, before the rest is given up on.
const MAX_ENTRY_PROBLEMS: usize = 50;

/// Where the entries of the loaded config's lists stood in the file, for lists that lost
/// entries that did not deserialize: a problem found later in the loaded config names the
/// file's entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileIndices {
    /// Per list, by its path in the loaded config (`pipelines`, `modbus.devices[0].registers`),
    /// the file's index of each entry left.
    kept: BTreeMap<String, Vec<usize>>,
}

impl FileIndices {
    /// Records that entry `index` of `list` (which had `length` entries) was left out.
    fn removed(&mut self, list: &str, index: usize, length: usize) {
        let kept = self
            .kept
            .entry(list.to_owned())
            .or_insert_with(|| (0..length).collect());
        if index < kept.len() {
            kept.remove(index);
        }
    }

    /// `path` into the loaded config (`pipelines[1].window`) as the file names it.
    pub fn file_path(&self, path: &str) -> String {
        let mut out = String::with_capacity(path.len());
        let mut rest = path;
        let mut consumed = 0;
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']').map(|c| open + c) else {
                break;
            };
            let list = &path[..consumed + open];
            out.push_str(&rest[..open]);
            let index = &rest[open + 1..close];
            match (index.parse::<usize>(), self.kept.get(list)) {
                (Ok(n), Some(kept)) => {
                    out.push_str(&format!("[{}]", kept.get(n).copied().unwrap_or(n)))
                }
                _ => out.push_str(&rest[open..=close]),
            }
            consumed += close + 1;
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// `path` in the loaded config's terms (`pipelines[1].signals`), and the path of the list its
/// deepest index is in with that index.
fn loaded_path(path: &[serde_path_to_error::Segment]) -> (String, Option<(String, usize)>) {
    use serde_path_to_error::Segment;
    let last_index = path.iter().rposition(|s| matches!(s, Segment::Seq { .. }));
    let mut text = String::new();
    let mut list = None;
    for (position, segment) in path.iter().enumerate() {
        match segment {
            Segment::Map { key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Seq { index } => {
                if Some(position) == last_index {
                    list = Some((text.clone(), *index));
                }
                text.push_str(&format!("[{index}]"));
            }
            Segment::Enum { variant } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    if text.is_empty() {
        text = "(config)".into();
    }
    (text, list)
}

/// Removes the list entry that the deepest index of `path` names (`pipelines[1].signals`:
/// the second pipeline); returns the list's length after, `None` when the path names no list
/// entry.
fn remove_entry(table: &mut toml::Table, path: &[serde_path_to_error::Segment]) -> Option<usize> {
    use serde_path_to_error::Segment;
    let last_index = path
        .iter()
        .rposition(|s| matches!(s, Segment::Seq { .. }))?;
    let Segment::Seq { index } = path[last_index] else {
        return None;
    };
    // Walk to the list that holds the entry.
    let mut value: &mut toml::Value = match path.first() {
        Some(Segment::Map { key }) => table.get_mut(key)?,
        _ => return None,
    };
    for segment in &path[1..last_index] {
        value = match (segment, value) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key)?,
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index)?,
            _ => return None,
        };
    }
    match value {
        toml::Value::Array(entries) if index < entries.len() => {
            entries.remove(index);
            Some(entries.len())
        }
        _ => None,
    }
}

/// `[alerting]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Base URL of this Fabrik in notifications (default: the HTTP listen address).
    pub external_url: String,
    /// How long a resolved alert is kept after its last change, or `forever`.
    pub retention: String,
    /// Rules.
    pub rules: Vec<AlertRuleConfig>,
    /// Where notifications go.
    pub notifiers: Vec<NotifierConfig>,
    /// Alerts that hold back others while they fire (a root cause and its consequences).
    pub inhibitions: Vec<InhibitionConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            external_url: String::new(),
            retention: "365d".into(),
            rules: Vec::new(),
            notifiers: Vec::new(),
            inhibitions: Vec::new(),
        }
    }
}

/// `[[alerting.inhibitions]]`: while an alert of the `source` rule fires, the alerts of the
/// `targets` rules are held back as if silenced (listed with `inhibited_by`), on the source
/// alert's device only unless `same_device = false`. Once it resolves, a target alert that
/// still fires is notified. An alert never inhibits its own rule's alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitionConfig {
    /// The inhibiting rule: a name, or a pattern with `*`.
    pub source: String,
    /// The inhibited rules: names or patterns with `*`.
    pub targets: Vec<String>,
    /// Only alerts with the source alert's key, its device for rules keyed by device
    /// (default `true`).
    #[serde(default = "yes")]
    pub same_device: bool,
}

/// `[alerting.rules.action]`: the setpoint a rule proposes operators apply (decision 0092).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertActionConfig {
    /// The writable point to set: a Modbus point's or OPC UA item's signal, a Sparkplug metric.
    pub signal: String,
    /// The value: a number in the point's engineering units, or true/false.
    pub value: AlertActionValue,
    /// The device written; absent: each alert's key (its device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Why, shown with the proposal (e.g. "lower the set-point to relieve the compressor").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// A proposed value: true/false for a switch, else a number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AlertActionValue {
    /// For switches.
    Bool(bool),
    /// For numbers, in engineering units.
    Number(f64),
}

/// `[[alerting.rules]]`: a condition on a SQL value per key, evaluated on new rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// Unique name (`alertname` in notifications).
    pub name: String,
    /// The table evaluated (`inferences` for model output, or a device table).
    pub table: String,
    /// A SQL expression over the table's columns (several signals may be combined).
    pub value: String,
    /// The column naming the key (one alert per key).
    #[serde(default = "device_column")]
    pub key: String,
    /// A SQL predicate selecting rows (e.g. `pipeline = 'pump-health'`).
    #[serde(default)]
    pub filter: Option<String>,
    /// `previous`: a field the `value` names that a row lacks takes the key's last reported
    /// value (for report-by-exception sources — OPC UA, Sparkplug — whose rows carry only
    /// the signals that changed). Absent: such a row has no value and is skipped. For `above`
    /// and `below` only: a filled value repeats the last one, which a rate or a frozen-value
    /// rule would take for a still signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<String>,
    /// `above`, `below`, `rate_above` (units per second, rising or falling; its alerts carry
    /// the rate as their value), `absent` (no row for `threshold`
    /// seconds, counted from the key's last row, also one stored before a restart),
    /// `unchanged` (rows keep coming with the same value for `threshold` seconds: a frozen
    /// sensor), `change` (the value's level moved: ADWIN, as river computes it, at
    /// confidence `threshold`, e.g. 0.002, on values scaled by six standard deviations of the
    /// key's first 30; for roughly independent values — window aggregates, model scores — as
    /// a signal sampled faster than it moves, or one with a daily cycle, keeps firing; no
    /// `for`), or `error_rate` (each value is an outcome, an error from 0.5 up — an alert
    /// operators called false, a wrong prediction — and the share of errors rose: HDDM_A, as
    /// river computes it, at confidence `threshold`, e.g. 0.001; model decay; no `for`), or
    /// `distribution` (the newest values' distribution differs from the older ones': KSWIN,
    /// as river computes it with seed 42, at level `threshold`, e.g. 1e-6, as it tests at
    /// every value; on ranks, so unit-free and not moved by glitches; no `for`).
    pub condition: String,
    /// For `error_rate` only, the detector (each as river computes it): `hddm_a` (default;
    /// Hoeffding's bound on the rate since the cut point), `hddm_w` (McDiarmid's bound on an
    /// exponentially weighted rate, λ 0.05: follows recent outcomes), `ddm` (the rate and its
    /// binomial deviation against their minimum), `eddm` (distances between errors: finds
    /// gradual decay earlier, at more false alarms) or `fhddm` (the accuracy over the last
    /// 100 outcomes against its highest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<String>,
    /// The firing level (seconds of silence for `absent`, of the same value for `unchanged`;
    /// ADWIN's confidence for `change`, KSWIN's level for `distribution`; for `error_rate` the
    /// detector's drift confidence (`hddm_a`, `hddm_w`, `fhddm`: e.g. 0.001, 0.001, 1e-6), its
    /// drift threshold in deviations (`ddm`, e.g. 3) or its drift ratio (`eddm`, e.g. 0.9)).
    pub threshold: f64,
    /// The clearing level (hysteresis; default: the threshold). For `change`, `distribution`
    /// and `error_rate`: how many values must come without another detection for the alert to
    /// resolve (default 30).
    #[serde(default)]
    pub clear: Option<f64>,
    /// How long the condition must hold before the alert fires.
    #[serde(default = "zero_seconds", rename = "for")]
    pub for_duration: String,
    /// `critical`, `warning` or `info`.
    #[serde(default = "warning")]
    pub severity: String,
    /// A setpoint the rule proposes operators apply when it fires (decision 0092): shown with
    /// its alerts, applied only by a person (`fabrik alert apply`), and checked, written and
    /// recorded as any setpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AlertActionConfig>,
    /// Columns copied into the alert's annotations (e.g. `top_signal`, `contributions`).
    #[serde(default)]
    pub context: Vec<String>,
    /// How often new rows are read.
    #[serde(default = "one_second")]
    pub interval: String,
    /// Where reading starts: `now`, or `earliest`.
    #[serde(default = "now")]
    pub start: String,
    /// `absent` rules: keys that must report even if they never have. Without it a heartbeat
    /// rule watches the keys that have reported, so a device that never sends is never missed.
    #[serde(default)]
    pub expect: Option<ExpectConfig>,
    /// Annotations every alert of the rule carries, by name: what an operator should know or
    /// do (`summary`, `runbook`, `team`). `{device}`, `{rule}`, `{severity}`, `{value}` and
    /// `{<context column>}` are replaced; a `summary` replaces the generated one in every
    /// notification.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `expect` of an `absent` rule: the devices (keys) that must report. Listed devices, and the
/// registered devices that match `site`, `device_type` and `label` (all of them with
/// `registered = true` and no filter), kept current as the registry changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectConfig {
    /// These keys.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Registered devices of this site.
    #[serde(default)]
    pub site: Option<String>,
    /// Registered devices of this type.
    #[serde(default)]
    pub device_type: Option<String>,
    /// Registered devices with this label, `key=value` (or `key` for any value).
    #[serde(default)]
    pub label: Option<String>,
    /// Every registered device (narrowed by `site`, `device_type`, `label` if given).
    #[serde(default)]
    pub registered: bool,
}

impl ExpectConfig {
    /// Whether the registry is asked for devices.
    pub fn uses_registry(&self) -> bool {
        self.registered || self.site.is_some() || self.device_type.is_some() || self.label.is_some()
    }
}

/// `[[alerting.notifiers]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Unique name.
    pub name: String,
    /// `webhook` (Alertmanager-compatible JSON), `mqtt` or `email`.
    #[serde(default = "webhook")]
    pub kind: String,
    /// webhook: the receiver's http(s) URL; mqtt: `mqtt://host:port` or `mqtts://host:port` of
    /// an external broker, empty for this process's own endpoint; email: `smtp://host[:port]`
    /// (STARTTLS, 587) or `smtps://host[:port]` (TLS, 465).
    #[serde(default)]
    pub url: String,
    /// Per-delivery timeout.
    #[serde(default = "five_seconds")]
    pub timeout: String,
    /// mqtt: topic template with `{rule}`, `{device}`, `{severity}`, `{status}`.
    #[serde(default)]
    pub topic: Option<String>,
    /// mqtt: QoS 0 or 1.
    #[serde(default = "one_u8")]
    pub qos: u8,
    /// mqtt: publish retained. With `{status}`, `{rule}` and `{device}` in the topic, each
    /// publish also deletes the alert's retained message under its other status (an empty
    /// message, which live subscribers receive too).
    #[serde(default)]
    pub retain: bool,
    /// mqtt (external broker): the MQTT version spoken, `3.1.1` (the default) or `5` (each
    /// message carries its delivery's `traceparent` as a user property, and a message the
    /// broker refuses fails the delivery with the broker's reason).
    #[serde(default, deserialize_with = "string_or_number")]
    pub mqtt_version: Option<String>,
    /// mqtt (external broker), email and webhook (HTTP basic authentication): user name.
    #[serde(default)]
    pub username: Option<String>,
    /// mqtt (external broker), email and webhook: password (sent only over TLS, or to a
    /// receiver on this host).
    #[serde(default)]
    pub password: Option<String>,
    /// mqtts, email and https webhooks: PEM file of CAs to trust (email and webhook: the
    /// system bundle when empty).
    #[serde(default)]
    pub ca: Option<String>,
    /// email: sender address.
    #[serde(default)]
    pub from: Option<String>,
    /// email: recipient addresses.
    #[serde(default)]
    pub to: Vec<String>,
    /// email with `smtp://`: require STARTTLS (turn off only for a relay on the same host).
    #[serde(default = "yes")]
    pub starttls: bool,
    /// webhook and email: how long the first state change of a group waits for others to go
    /// out with it in one notification (`0s`: every change on its own).
    #[serde(default = "zero_seconds")]
    pub group_wait: String,
    /// webhook and email: the labels that make a group: `rule`, `device`, `severity` (none:
    /// one group for everything).
    #[serde(default = "group_by_rule")]
    pub group_by: Vec<String>,
    /// webhook and email: how long after its last notification an alert that still fires, and
    /// that nobody has acknowledged, is notified again (default `4h`, as Alertmanager's
    /// `repeat_interval`; `0s`: never).
    #[serde(default)]
    pub repeat_interval: Option<String>,
    /// Only alerts of these severities (default: all), e.g. `["critical"]` for the on-call.
    #[serde(default)]
    pub severities: Vec<String>,
    /// Only alerts of rules matching one of these patterns (`*`: any run of characters;
    /// default: all).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Only alerts on devices matching one of these patterns, e.g. `["line2-*"]` (default:
    /// all).
    #[serde(default)]
    pub devices: Vec<String>,
}

fn group_by_rule() -> Vec<String> {
    vec!["rule".into()]
}

fn zero_seconds() -> String {
    "0s".into()
}
fn warning() -> String {
    "warning".into()
}
fn webhook() -> String {
    "webhook".into()
}
fn five_seconds() -> String {
    "5s".into()
}

fn yes() -> bool {
    true
}
fn device_column() -> String {
    "device".into()
}
fn ten_seconds() -> String {
    "10s".into()
}
fn default_features() -> Vec<String> {
    ["mean", "std", "max"].map(String::from).to_vec()
}
fn three() -> u32 {
    3
}
fn robust_z() -> String {
    "robust_z".into()
}
fn one_second() -> String {
    "1s".into()
}
fn two_seconds() -> String {
    "2s".into()
}
fn now() -> String {
    "now".into()
}

/// `[[mappings.signals]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalConfig {
    /// JSON pointer into the payload, e.g. `/motor/current`.
    pub pointer: String,
    /// Field name it is stored as.
    pub name: String,
    /// Engineering unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// `f64`, `i64`, `u64`, `bool` or `string`; absent: as the JSON value is.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Multiplier applied to numbers.
    #[serde(default = "one_f64")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> u32 {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn mqtt_source() -> String {
    "mqtt".into()
}
fn json_format() -> String {
    "json".into()
}
fn auto_unit() -> String {
    "auto".into()
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of the API and dashboard.
    pub listen: String,
    /// Largest accepted request body (after gzip decompression).
    pub max_body_size: String,
    /// Serve the API and dashboard over TLS on `listen`.
    pub tls: bool,
    /// Server certificate chain (PEM); empty with `tls` on: self-signed, generated.
    pub tls_cert: String,
    /// Server private key (PEM).
    pub tls_key: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7800".into(),
            max_body_size: "64MiB".into(),
            tls: false,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where the WAL, segments and tokens live.
    pub data_dir: String,
    /// Width of a time partition of the Parquet segments.
    pub partition: String,
    /// How often the in-memory buffer is persisted to Parquet.
    pub flush_interval: String,
    /// Persist earlier when the buffer holds this many bytes.
    pub flush_buffer_size: String,
    /// How often partitions with several segments are merged.
    pub compaction_interval: String,
    /// Default retention: a duration, or `forever`.
    pub retention: String,
    /// How often blobs (clips, files) that no row within its retention names are deleted.
    pub blob_sweep_interval: String,
    /// A blob no row names is deleted only once it was last stored this long ago (it is
    /// stored before the row naming it is committed).
    pub blob_min_age: String,
    /// Per-table overrides.
    pub tables: BTreeMap<String, TableConfig>,
    /// Segments in S3-compatible object storage instead of `<data_dir>/segments`.
    pub objects: ObjectsConfig,
    /// Tables summarised per interval into tables of their own (`[[store.rollups]]`).
    pub rollups: Vec<RollupConfig>,
}

/// `[[store.rollups]]`: a table's rows summarised per interval — each numeric field's mean,
/// minimum, maximum, count and time-weighted mean per series — into a table of its own, which
/// can be kept far longer than the rows (decisions 0085 and 0087).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    /// The table summarised.
    pub table: String,
    /// The interval one summary row covers (`1m`, `1h`), aligned to the Unix epoch.
    pub every: String,
    /// The table the summaries go to; empty: `<table>_<every>` (`telemetry_1m`).
    pub into: String,
    /// The fields summarised; empty: every numeric field the table has when it is summarised.
    pub fields: Vec<String>,
    /// How late rows may still arrive: the intervals that ended this recently are summarised
    /// again at each pass, so their rows count; empty: one interval.
    pub lateness: String,
    /// How long a value stands for when no newer sample of its signal follows, for the
    /// time-weighted means (`<field>_twa`); empty: one hour; `0s`: no time-weighted means.
    pub hold: String,
}

/// A validated `[[store.rollups]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupSettings {
    /// The table summarised.
    pub table: String,
    /// The table the summaries go to.
    pub into: String,
    /// The interval of a summary row.
    pub every: Duration,
    /// The fields summarised (empty: every numeric field).
    pub fields: Vec<String>,
    /// How long after an interval ends it is summarised again.
    pub lateness: Duration,
    /// How long a value stands for without a newer sample (zero: no time-weighted means).
    pub hold: Duration,
}

/// The most intervals a rollup's lateness spans.
const ROLLUP_MOST_LATE_INTERVALS: u32 = 1_440;
/// How long a value stands for, for a rollup's time-weighted means, unless configured.
const ROLLUP_DEFAULT_HOLD: Duration = Duration::from_secs(3_600);
/// The longest `hold` (or one interval, if longer): each step reads this far back.
const ROLLUP_LONGEST_HOLD: Duration = Duration::from_secs(86_400);

impl StoreConfig {
    /// The validated rollups; a problem for each malformed one.
    fn validate_rollups(&self, problem: &mut impl FnMut(&str, String)) -> Vec<RollupSettings> {
        let mut rollups: Vec<RollupSettings> = Vec::new();
        for (i, rollup) in self.rollups.iter().enumerate() {
            let at = |key: &str| format!("store.rollups[{i}].{key}");
            let table = rollup.table.trim();
            if table.is_empty() {
                problem(&at("table"), "names no table to summarise".into());
                continue;
            }
            let every = match parse_duration(&rollup.every) {
                Ok(every) if every < Duration::from_secs(1) => {
                    problem(&at("every"), "must be at least 1s".into());
                    continue;
                }
                Ok(every) => every,
                Err(e) => {
                    problem(&at("every"), e);
                    continue;
                }
            };
            let lateness = if rollup.lateness.trim().is_empty() {
                every
            } else {
                match parse_duration(&rollup.lateness) {
                    // Every interval within it is summarised again at each pass.
                    Ok(lateness) if lateness > every.saturating_mul(ROLLUP_MOST_LATE_INTERVALS) => {
                        problem(
                            &at("lateness"),
                            format!(
                                "at most {ROLLUP_MOST_LATE_INTERVALS} intervals of `every` \
                                 (each is summarised again at every pass): use a longer \
                                 interval, or a rollup of its own for late rows"
                            ),
                        );
                        continue;
                    }
                    Ok(lateness) => lateness,
                    Err(e) => {
                        problem(&at("lateness"), e);
                        continue;
                    }
                }
            };
            let hold = if rollup.hold.trim().is_empty() {
                ROLLUP_DEFAULT_HOLD
            } else {
                match parse_duration(&rollup.hold) {
                    // Each step reads the rows this far before it, for the values standing
                    // at its start.
                    Ok(hold) if hold > ROLLUP_LONGEST_HOLD.max(every) => {
                        problem(
                            &at("hold"),
                            "at most 1d (or one interval of `every`, if longer)".into(),
                        );
                        continue;
                    }
                    Ok(hold) => hold,
                    Err(e) => {
                        problem(&at("hold"), e);
                        continue;
                    }
                }
            };
            let into = match rollup.into.trim() {
                "" => format!("{table}_{}", rollup.every.trim()),
                into => into.to_owned(),
            };
            let into_ok = !into.starts_with('_')
                && into
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !into_ok {
                let given = if rollup.into.trim().is_empty() {
                    " (made from `table` and `every`: set `into`)"
                } else {
                    ""
                };
                problem(
                    &at("into"),
                    format!(
                        "`{into}`{given} is not a table name a rollup writes: letters, digits, \
                         `_` and `-`, not starting with `_`"
                    ),
                );
                continue;
            }
            if into == table {
                problem(&at("into"), format!("`{into}` is the table it summarises"));
                continue;
            }
            if rollups.iter().any(|r| r.into == into) {
                problem(
                    &at("into"),
                    format!("`{into}` is written by another rollup already"),
                );
                continue;
            }
            // Summaries of summaries would average averages, and a cycle would grow columns
            // (`x_mean_mean…`) at every pass: each rollup reads a table of rows.
            if self.rollups.iter().any(|r| r.table.trim() == into) {
                problem(
                    &at("into"),
                    format!("`{into}` is summarised by a rollup itself: summarise its rows' table"),
                );
                continue;
            }
            let mut fields: Vec<String> = Vec::new();
            for field in &rollup.fields {
                let field = field.trim();
                if field.is_empty() || field.starts_with('_') || field == "time" {
                    problem(
                        &at("fields"),
                        format!("`{field}` is not a field a rollup can summarise"),
                    );
                } else if !fields.iter().any(|f| f == field) {
                    fields.push(field.to_owned());
                }
            }
            rollups.push(RollupSettings {
                table: table.to_owned(),
                into,
                every,
                fields,
                lateness,
                hold,
            });
        }
        rollups
    }
}

/// `[store.objects]`: where the Parquet segments live when not on the local disk. The WAL,
/// the manifest and blobs stay in `data_dir` (decision 0048).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectsConfig {
    /// `s3://bucket/prefix`, one store per prefix; empty: `<data_dir>/segments`.
    pub url: String,
    /// An S3-compatible service's address (`http://minio:9000`); empty: AWS, or
    /// `AWS_ENDPOINT`.
    pub endpoint: String,
    /// The bucket's region; empty: `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// Keep at most this many bytes of blobs on the disk (`20GiB`); empty: all of them.
    pub local_blob_limit: String,
    /// Keep copies of at most this many bytes of segments on the disk for queries (`10GiB`);
    /// empty: every query reads the bucket.
    pub segment_cache: String,
    /// Only read the prefix another node's store writes, answering queries (decision 0079).
    pub read_only: bool,
    /// With `read_only`: how often the writer's manifest is read again (`10s` when empty).
    pub refresh_interval: String,
}

/// The validated `[store.objects]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectsSettings {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    /// The service's address, if not AWS's.
    pub endpoint: Option<String>,
    /// The region, if set.
    pub region: Option<String>,
    /// Plain HTTP allowed.
    pub allow_http: bool,
    /// Bytes of blobs the disk keeps at most; the least recently used copies already in the
    /// bucket are evicted past it. `None`: every blob stays on the disk.
    pub local_blob_limit: Option<u64>,
    /// Bytes of segment copies the disk keeps for queries (decision 0064). `None`: no cache.
    pub segment_cache: Option<u64>,
    /// With a refresh interval: this node only reads the prefix another store writes
    /// (decision 0079). `None`: it owns the prefix.
    pub read_only: Option<std::time::Duration>,
}

impl ObjectsConfig {
    /// `None` when segments stay local; the problems of a malformed section.
    fn validate(&self, problem: &mut impl FnMut(&str, String)) -> Option<ObjectsSettings> {
        let url = self.url.trim();
        let endpoint = self.endpoint.trim();
        let limit = self.local_blob_limit.trim();
        let cache = self.segment_cache.trim();
        let refresh = self.refresh_interval.trim();
        if url.is_empty() {
            if self.read_only {
                problem(
                    "store.objects.read_only",
                    "is true, but store.objects.url is empty: name the bucket prefix the \
                     writing store owns (s3://bucket/prefix)"
                        .into(),
                );
            }
            if !endpoint.is_empty() || !self.region.trim().is_empty() {
                problem(
                    "store.objects.url",
                    "is empty, so segments stay in <data_dir>/segments, but an endpoint or \
                     region is set: name the bucket (s3://bucket/prefix)"
                        .into(),
                );
            }
            if !limit.is_empty() {
                problem(
                    "store.objects.local_blob_limit",
                    "is set, but store.objects.url is empty: without a bucket the disk holds \
                     the only copy of each blob, so none can be evicted"
                        .into(),
                );
            }
            if !cache.is_empty() {
                problem(
                    "store.objects.segment_cache",
                    "is set, but store.objects.url is empty: segments on the local disk are \
                     read from there, with nothing to cache"
                        .into(),
                );
            }
            return None;
        }
        let mut size = |key: &str, text: &str, empty_means: &str| {
            if text.is_empty() {
                return None;
            }
            match parse_bytes(text) {
                Ok(0) => {
                    problem(
                        key,
                        format!("`{text}` is zero: leave it empty {empty_means}"),
                    );
                    None
                }
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    problem(key, e);
                    None
                }
            }
        };
        let local_blob_limit = size(
            "store.objects.local_blob_limit",
            limit,
            "to keep every blob on the disk",
        );
        let segment_cache = size("store.objects.segment_cache", cache, "for no segment cache");
        let read_only = match (self.read_only, refresh) {
            (false, "") => None,
            (false, _) => {
                problem(
                    "store.objects.refresh_interval",
                    "is set, but store.objects.read_only is false: a store that owns its \
                     prefix has its manifest on its own disk"
                        .into(),
                );
                None
            }
            (true, "") => Some(DEFAULT_REFRESH_INTERVAL),
            (true, text) => match parse_duration(text) {
                Ok(every) if every.is_zero() => {
                    problem(
                        "store.objects.refresh_interval",
                        format!("`{text}` is zero: leave it empty for every 10s"),
                    );
                    None
                }
                Ok(every) => Some(every),
                Err(e) => {
                    problem("store.objects.refresh_interval", e);
                    None
                }
            },
        };
        let bucket = url
            .strip_prefix("s3://")
            .map(|rest| rest.split('/').next().unwrap_or_default());
        match bucket {
            None => problem(
                "store.objects.url",
                format!("`{url}`: expected s3://bucket or s3://bucket/prefix"),
            ),
            Some("") => problem(
                "store.objects.url",
                format!("`{url}` names no bucket (s3://bucket/prefix)"),
            ),
            Some(_) => {}
        }
        if !endpoint.is_empty() {
            match endpoint.split_once("://") {
                Some(("http", _)) if !self.allow_http => problem(
                    "store.objects.endpoint",
                    format!(
                        "`{endpoint}` is plain HTTP: set store.objects.allow_http = true for a \
                         service on a trusted network, or use https://"
                    ),
                ),
                Some(("http" | "https", rest)) if !rest.is_empty() => {}
                _ => problem(
                    "store.objects.endpoint",
                    format!("`{endpoint}`: expected http(s)://host[:port]"),
                ),
            }
        }
        Some(ObjectsSettings {
            url: url.to_owned(),
            endpoint: Some(endpoint.to_owned()).filter(|e| !e.is_empty()),
            region: Some(self.region.trim().to_owned()).filter(|r| !r.is_empty()),
            allow_http: self.allow_http,
            local_blob_limit,
            segment_cache,
            read_only,
        })
    }
}

/// How often a read-only node reads the writer's manifest by default: well inside the minute
/// a writer waits before deleting the segments a compaction replaced (decision 0079).
const DEFAULT_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: "./fabrik-data".into(),
            partition: "1d".into(),
            flush_interval: "5m".into(),
            flush_buffer_size: "256MiB".into(),
            compaction_interval: "1m".into(),
            retention: "forever".into(),
            blob_sweep_interval: "1h".into(),
            blob_min_age: "1h".into(),
            tables: BTreeMap::new(),
            objects: ObjectsConfig::default(),
            rollups: Vec::new(),
        }
    }
}

/// `[store.tables.<name>]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableConfig {
    /// Retention of this table: a duration, or `forever`.
    pub retention: String,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            retention: "forever".into(),
        }
    }
}

/// `[query]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// A query running longer is cancelled and answered 408.
    pub timeout: String,
    /// Threads of the query pool (0: one per core). Queries never run on ingest threads.
    pub threads: i64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout: "30s".into(),
            threads: 0,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The admin token. Empty: generate one on first start and keep it in
    /// `<data_dir>/admin.token` (mode 0600). Prefer `FABRIK__AUTH__ADMIN_TOKEN` to a file.
    pub admin_token: String,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `fabrik_store=debug,info`, ... (`FABRIK_LOG`, when
    /// set, takes its place).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[traces]`: OpenTelemetry traces over OTLP/HTTP (protobuf or JSON) to a collector
/// (decisions 0054, 0073).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's OTLP endpoint, e.g. `http://127.0.0.1:4318` (over HTTP, `/v1/traces`
    /// is added unless given) or `http://127.0.0.1:4317` (over gRPC, no path); empty: no
    /// traces.
    pub otlp_endpoint: String,
    /// Share of root spans kept, 0 to 1; a span whose caller sent a `traceparent` follows the
    /// caller's choice.
    pub sample_ratio: f64,
    /// The spans' `service.name`.
    pub service_name: String,
    /// How the spans are sent, in `OTEL_EXPORTER_OTLP_PROTOCOL`'s words: `http/protobuf`
    /// (the default, as for OpenTelemetry's SDKs), `http/json`, or `grpc` (HTTP/2; cleartext
    /// to an `http://` endpoint, TLS to an `https://` one).
    pub protocol: String,
    /// `gzip` compresses each batch (as OTEL_EXPORTER_OTLP_COMPRESSION names it), for a collector across
    /// a narrow link; `none` (the default) sends it as it is.
    pub compression: String,
}

/// How spans travel to the collector (`[traces] protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP, binary protobuf (`application/x-protobuf`).
    HttpProtobuf,
    /// OTLP/HTTP, protobuf's JSON mapping (`application/json`).
    HttpJson,
    /// OTLP/gRPC: the `TraceService/Export` call over HTTP/2.
    Grpc,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            service_name: "fabrik".into(),
            protocol: "http/protobuf".into(),
            compression: "none".into(),
        }
    }
}

/// The validated `[traces]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesSettings {
    /// Where spans are POSTed (`…/v1/traces`, or over gRPC
    /// `…/opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    pub url: String,
    /// Share of root spans kept.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// How they are sent.
    pub protocol: OtlpProtocol,
    /// Whether each batch is gzip-compressed.
    pub gzip: bool,
}

impl TracesConfig {
    /// `None` when traces are off; the problems of a malformed section.
    fn validate(&self, problem: &mut impl FnMut(&str, String)) -> Option<TracesSettings> {
        let endpoint = self.otlp_endpoint.trim().trim_end_matches('/');
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problem(
                "traces.sample_ratio",
                format!("{} is not a share between 0 and 1", self.sample_ratio),
            );
        }
        if self.service_name.trim().is_empty() {
            problem("traces.service_name", "must not be empty".into());
        }
        let protocol = match self.protocol.trim() {
            "http/protobuf" | "" => OtlpProtocol::HttpProtobuf,
            "http/json" => OtlpProtocol::HttpJson,
            "grpc" => OtlpProtocol::Grpc,
            other => {
                problem(
                    "traces.protocol",
                    format!("`{other}` is not `http/protobuf`, `http/json` or `grpc`"),
                );
                OtlpProtocol::HttpProtobuf
            }
        };
        let gzip = match self.compression.trim() {
            "none" | "" => false,
            "gzip" => true,
            other => {
                problem(
                    "traces.compression",
                    format!("`{other}` is not `none` or `gzip`"),
                );
                false
            }
        };
        if endpoint.is_empty() {
            return None;
        }
        let host = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            problem(
                "traces.otlp_endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL of a collector"),
            );
            return None;
        }
        let url = if protocol == OtlpProtocol::Grpc {
            // A gRPC method has a path of its own; a path given in the endpoint is a sign of an
            // OTLP/HTTP URL set with the wrong protocol.
            if host.is_some_and(|h| h.contains(['/', '?', '#'])) {
                problem(
                    "traces.otlp_endpoint",
                    format!(
                        "`{endpoint}`: an OTLP/gRPC endpoint has no path (e.g. \
                         http://collector:4317)"
                    ),
                );
                return None;
            }
            format!("{endpoint}/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        } else if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{endpoint}/v1/traces")
        };
        Some(TracesSettings {
            url,
            sample_ratio: self.sample_ratio.clamp(0.0, 1.0),
            service_name: self.service_name.trim().to_owned(),
            protocol,
            gzip,
        })
    }
}

/// `[openlineage]`: OpenLineage run events (spec 2-0-2) of the pipelines and the model each
/// device learns, the alert rules, the use cases' KPI measurements and A/B comparisons, the
/// connectors' ingest (`ingest.mqtt`, `ingest.bridge.<name>`, `ingest.opcua`, `ingest.modbus`,
/// `ingest.http`) and (on a hub) the edges' uplinks, for a lineage catalog such as Marquez,
/// DataHub or OpenMetadata, or a file (decisions 0080, 0082). The streaming runs that may be
/// open are listed in `openlineage-open-runs.json` in `store.data_dir` (under
/// `openlineage-open-runs.lock`), so that the next start ABORTs those a killed process left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenLineageConfig {
    /// The catalog's base URL, e.g. `http://marquez:5000`; empty: no events over HTTP.
    pub url: String,
    /// The path under `url` events are POSTed to, as OpenLineage's clients name it: Marquez's
    /// `api/v1/lineage` (their default); DataHub's is `openapi/openlineage/api/v1/lineage`.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer <api_key>`; best given as
    /// `FABRIK__OPENLINEAGE__API_KEY`, so it stays out of the file.
    pub api_key: String,
    /// A file each event is appended to as one JSON line (OpenLineage's file transport), with
    /// or without `url` (a relative path is in `store.data_dir`); empty: none.
    pub file: String,
    /// The namespace of Fabrik's jobs; empty: `fabrik://<node>`, the namespace of its
    /// datasets.
    pub namespace: String,
    /// How often a running pipeline, alert rule, connector's ingest or edge's uplink sends a
    /// RUNNING event (a pipeline's, an ingest's and an uplink's with the rows written); `0s`:
    /// never (only START and end).
    pub running_interval: String,
}

impl Default for OpenLineageConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            endpoint: "api/v1/lineage".into(),
            api_key: String::new(),
            file: String::new(),
            namespace: String::new(),
            running_interval: "10m".into(),
        }
    }
}

/// The validated `[openlineage]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenLineageSettings {
    /// Where events are POSTed; `None`: not over HTTP.
    pub url: Option<String>,
    /// Bearer token for `url`.
    pub api_key: Option<String>,
    /// The JSON-lines file events are appended to; `None`: none.
    pub file: Option<PathBuf>,
    /// The jobs' namespace; `None`: the datasets' (`fabrik://<node>`).
    pub namespace: Option<String>,
    /// Between a running pipeline's RUNNING events; `None`: none.
    pub running_interval: Option<Duration>,
}

impl OpenLineageConfig {
    /// `None` when no event is sent; the problems of a malformed section. A relative `file` is
    /// in `data_dir`.
    fn validate(
        &self,
        data_dir: &Path,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<OpenLineageSettings> {
        let running_interval = match parse_duration(&self.running_interval) {
            Ok(every) if every.is_zero() => None,
            Ok(every) if every < Duration::from_secs(1) => {
                problem(
                    "openlineage.running_interval",
                    format!(
                        "`{}`: at most one RUNNING event a second, or `0s` for none",
                        self.running_interval
                    ),
                );
                None
            }
            Ok(every) => Some(every),
            Err(e) => {
                problem("openlineage.running_interval", e);
                None
            }
        };
        let namespace = self.namespace.trim();
        if namespace.chars().any(char::is_control) {
            problem(
                "openlineage.namespace",
                "must not hold control characters".into(),
            );
        }
        let base = self.url.trim().trim_end_matches('/');
        let endpoint = self.endpoint.trim().trim_matches('/');
        let url = if base.is_empty() {
            None
        } else {
            match url::Url::parse(base) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https")
                        && parsed.host_str().is_some_and(|h| !h.is_empty())
                        && parsed.query().is_none()
                        && parsed.fragment().is_none()
                        && parsed.username().is_empty()
                        && parsed.password().is_none() =>
                {
                    // The whole URL given (`…/api/v1/lineage`) is taken as it is.
                    if endpoint.is_empty() || base.ends_with(&format!("/{endpoint}")) {
                        Some(base.to_owned())
                    } else {
                        Some(format!("{base}/{endpoint}"))
                    }
                }
                Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
                    problem(
                        "openlineage.url",
                        "holds credentials, which would be logged with the URL: give the \
                         catalog's key as `api_key`"
                            .into(),
                    );
                    None
                }
                _ => {
                    problem(
                        "openlineage.url",
                        format!(
                            "`{base}` is not an http:// or https:// URL of a lineage catalog \
                             (without a query)"
                        ),
                    );
                    None
                }
            }
        };
        if base.is_empty() && !self.api_key.trim().is_empty() {
            problem(
                "openlineage.api_key",
                "is set without `url`: no catalog would receive it".into(),
            );
        }
        let file = Some(self.file.trim())
            .filter(|f| !f.is_empty())
            .map(|f| data_dir.join(f));
        if url.is_none() && file.is_none() {
            return None;
        }
        Some(OpenLineageSettings {
            url,
            api_key: Some(self.api_key.trim().to_owned()).filter(|k| !k.is_empty()),
            file,
            namespace: Some(namespace.to_owned()).filter(|n| !n.is_empty()),
            running_interval,
        })
    }
}

/// Retention of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep everything.
    Forever,
    /// Drop data older than this.
    For(Duration),
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Body limit in bytes.
    pub http_max_body_size: usize,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Partition width.
    pub partition: Duration,
    /// Flush interval.
    pub flush_interval: Duration,
    /// Flush threshold in bytes.
    pub flush_buffer_size: u64,
    /// Compaction interval.
    pub compaction_interval: Duration,
    /// Default retention.
    pub retention: Retention,
    /// Per-table retention (`_raw`'s included, from `ingest.raw_retention`).
    pub table_retention: BTreeMap<String, Retention>,
    /// Blob sweep interval.
    pub blob_sweep_interval: Duration,
    /// Minimum age of a blob the sweep deletes.
    pub blob_min_age: Duration,
    /// Query timeout.
    pub query_timeout: Duration,
    /// Query threads (at least 1).
    pub query_threads: usize,
    /// Admin token from the config or environment, if given.
    pub admin_token: Option<String>,
    /// Log filter.
    pub log_level: String,
    /// Where traces go; `None`: off.
    pub traces: Option<TracesSettings>,
    /// Where OpenLineage events go; `None`: nowhere.
    pub openlineage: Option<OpenLineageSettings>,
    /// The MQTT device endpoint.
    pub mqtt: MqttSettings,
    /// Raw-message retention (the `_raw` table); `None` when raw messages are not kept.
    pub raw_retention: Option<Retention>,
    /// Capacity of the ingest queue.
    pub ingest_queue: usize,
    /// Segments in object storage (`None`: `<data_dir>/segments`).
    pub objects: Option<ObjectsSettings>,
    /// Device attestation.
    pub attestation: AttestationSettings,
    /// The registry's PostgreSQL database; `None`: `<data_dir>/registry.db`.
    pub registry_database_url: Option<String>,
    /// Tables summarised per interval.
    pub rollups: Vec<RollupSettings>,
}

/// The validated `[mqtt]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    /// TCP listener.
    pub listen: Option<SocketAddr>,
    /// TLS listener.
    pub tls_listen: Option<SocketAddr>,
    /// Largest packet (bytes).
    pub max_packet_size: u32,
    /// Receive maximum.
    pub receive_maximum: u16,
    /// Messages per second per connection (0: unlimited).
    pub max_message_rate: u32,
    /// Connections.
    pub max_connections: usize,
    /// Longest kept disconnected session.
    pub max_session_expiry: Duration,
    /// Longest MQTT 5 keepalive, seconds (0: the client's own).
    pub max_keep_alive: u16,
    /// Messages queued per session.
    pub max_queued_messages: usize,
    /// Answer refused subscriptions with 0x80 (unspecified) instead of 0x87 (not authorized).
    pub subscribe_denied_unspecified: bool,
}

impl Config {
    /// Loads a config file (or the defaults when `path` is `None`), applies environment
    /// overrides from `env`, and checks the shape. A value of the wrong type or an unknown
    /// field does not stop the load: it is reported in the returned problems and left out, so
    /// its default applies and the rest of the file can still be validated (`fabrik run` and
    /// `fabrik config check` list the values' problems together with the shape's). An error
    /// only when the file cannot be read or parsed, or what is left still does not make a
    /// config.
    ///
    /// List entries that did not deserialize are left out too; the returned [`FileIndices`]
    /// turns a path into the loaded config (`pipelines[1]`) into the file's (`pipelines[2]`
    /// when the file's second pipeline was left out), for the problems found later.
    pub fn load_reporting(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<ConfigProblem>, FileIndices), RuntimeError> {
        let (origin, text) = Self::read(path)?;
        Self::from_toml_indexed(&origin, &text, env)
    }

    fn read(path: Option<&Path>) -> Result<(String, String), RuntimeError> {
        Ok(match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| RuntimeError::ReadConfig {
                    path: p.to_path_buf(),
                    source,
                })?,
            ),
            None => ("defaults".to_owned(), String::new()),
        })
    }

    /// Like [`Config::load_reporting`] from text already read, but any problem is an error.
    pub fn from_toml(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, RuntimeError> {
        let (config, problems) = Self::from_toml_reporting(origin, text, env)?;
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(RuntimeError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Like [`Config::load_reporting`] from text already read, without the file's indices.
    pub fn from_toml_reporting(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<ConfigProblem>), RuntimeError> {
        Self::from_toml_indexed(origin, text, env).map(|(config, problems, _)| (config, problems))
    }

    /// Like [`Config::load_reporting`] from text already read.
    pub fn from_toml_indexed(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<ConfigProblem>, FileIndices), RuntimeError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| RuntimeError::Syntax {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
        let template =
            toml::Table::try_from(Config::default()).map_err(|e| RuntimeError::Syntax {
                origin: "defaults".into(),
                message: e.to_string(),
            })?;
        let mut problems = Vec::new();
        apply_env(&mut table, &template, env, &mut problems);
        numbers_as_text(&mut table);
        check_shape(&mut table, &template, "", &mut problems);
        // A list entry (a pipeline, a rule, a device) that does not deserialize — a required
        // field left out, a value of the wrong type — is reported with its index and field
        // and left out, and the rest is tried again, so every entry's problem is reported
        // and the others are still checked.
        let mut indices = FileIndices::default();
        for _ in 0..MAX_ENTRY_PROBLEMS {
            let error = match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(
                table.clone(),
            )) {
                Ok(config) => return Ok((config, problems, indices)),
                Err(e) => e,
            };
            let segments: Vec<serde_path_to_error::Segment> =
                error.path().iter().cloned().collect();
            let (loaded_path, list) = loaded_path(&segments);
            let mut path = indices.file_path(&loaded_path);
            let mut message = error.inner().message().to_owned();
            // "missing field `x`": the path names the entry; name the field too.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                path = format!("{path}.{field}");
                message = "missing (it is required)".into();
            }
            // A required value of the wrong type was reported and left out by the shape
            // check; that it is now missing says nothing new.
            if !problems.iter().any(|p| p.path == path) {
                problems.push(ConfigProblem { path, message });
            }
            let Some(length) = remove_entry(&mut table, &segments) else {
                break;
            };
            if let Some((list, index)) = list {
                indices.removed(&list, index, length + 1);
            }
        }
        Err(RuntimeError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// Validates values into [`Settings`], reporting every problem at once.
    pub fn validate(&self, origin: &str) -> Result<Settings, RuntimeError> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(ConfigProblem {
                path: path.to_owned(),
                message,
            })
        };
        let http_listen = self
            .http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| {
                problem(
                    "http.listen",
                    format!("`{}` is not ip:port ({e})", self.http.listen),
                )
            })
            .ok();
        let http_max_body_size = parse_bytes(&self.http.max_body_size)
            .map_err(|e| problem("http.max_body_size", e))
            .ok()
            .and_then(|v| usize::try_from(v).ok());
        let (cert, key) = (self.http.tls_cert.trim(), self.http.tls_key.trim());
        if cert.is_empty() != key.is_empty() {
            let missing = if cert.is_empty() {
                "tls_cert"
            } else {
                "tls_key"
            };
            problem(
                &format!("http.{missing}"),
                "http.tls_cert and http.tls_key are given together".into(),
            );
        } else if !cert.is_empty() && !self.http.tls {
            problem(
                "http.tls",
                "http.tls_cert and http.tls_key are set but TLS is off: set http.tls = true".into(),
            );
        }
        if self.store.data_dir.trim().is_empty() {
            problem("store.data_dir", "must not be empty".into());
        }
        let mut duration = |path: &str, text: &str| match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                problem(path, "must be greater than zero".into());
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problem(path, e);
                None
            }
        };
        let partition = duration("store.partition", &self.store.partition);
        let flush_interval = duration("store.flush_interval", &self.store.flush_interval);
        let compaction_interval =
            duration("store.compaction_interval", &self.store.compaction_interval);
        let query_timeout = duration("query.timeout", &self.query.timeout);
        let blob_sweep_interval =
            duration("store.blob_sweep_interval", &self.store.blob_sweep_interval);
        let blob_min_age = duration("store.blob_min_age", &self.store.blob_min_age);
        let retention_of = |text: &str| -> Result<Retention, String> {
            if text == "forever" {
                Ok(Retention::Forever)
            } else {
                match parse_duration(text)? {
                    d if d.is_zero() => Err("must be greater than zero (or `forever`)".into()),
                    d => Ok(Retention::For(d)),
                }
            }
        };
        let retention = retention_of(&self.store.retention)
            .map_err(|e| problem("store.retention", e))
            .ok();
        let rollups = self.store.validate_rollups(&mut problem);
        let mut table_retention = BTreeMap::new();
        for (name, table) in &self.store.tables {
            if name == "_blobs" {
                problem(
                    &format!("store.tables.{name}"),
                    "the blob listing is kept as long as the longest retention, so that each \
                     blob lasts as long as its naming table's; it has no retention of its own"
                        .into(),
                );
                continue;
            }
            match retention_of(&table.retention) {
                Ok(r) => {
                    table_retention.insert(name.clone(), r);
                }
                Err(e) => problem(&format!("store.tables.{name}.retention"), e),
            }
        }
        let flush_buffer_size = parse_bytes(&self.store.flush_buffer_size)
            .map_err(|e| problem("store.flush_buffer_size", e))
            .ok();
        let mqtt = self.validate_mqtt(&mut problem);
        let objects = self.store.objects.validate(&mut problem);
        let traces = self.traces.validate(&mut problem);
        let openlineage = self
            .openlineage
            .validate(Path::new(&self.store.data_dir), &mut problem);
        let registry_database_url = self.registry.validate(&mut problem);
        if registry_database_url.is_some() && self.store.objects.read_only {
            problem(
                "registry.database_url",
                "is set on a read-only query node (store.objects.read_only): a registry \
                 database is written by one Fabrik process (its audit chain is numbered under \
                 that process's lock), the owner's; a query node keeps its own in data_dir"
                    .into(),
            );
        }
        if self.attestation.required && self.mqtt.allow_anonymous {
            problem(
                "attestation.required",
                "mqtt.allow_anonymous lets clients in with no device identity to attest: turn \
                 one of them off"
                    .into(),
            );
        }
        if self.attestation.require_endorsement
            && self.attestation.endorsement_authorities.trim().is_empty()
        {
            problem(
                "attestation.require_endorsement",
                "name the TPM vendors' CA certificates in attestation.endorsement_authorities: \
                 without them no EK certificate can be checked"
                    .into(),
            );
        }
        let attestation = AttestationSettings {
            required: self.attestation.required,
            require_endorsement: self.attestation.require_endorsement,
            endorsement_authorities: Some(self.attestation.endorsement_authorities.trim())
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
            max_age: match parse_duration(&self.attestation.max_age) {
                Ok(d) if d >= Duration::from_secs(60) => d,
                Ok(_) => {
                    problem(
                        "attestation.max_age",
                        "must be at least 1m: a device attests at most that often".into(),
                    );
                    Duration::ZERO
                }
                Err(e) => {
                    problem("attestation.max_age", e);
                    Duration::ZERO
                }
            },
        };
        let raw_retention = if self.ingest.keep_raw {
            retention_of(&self.ingest.raw_retention)
                .map_err(|e| problem("ingest.raw_retention", e))
                .ok()
        } else {
            None
        };
        // `[store.tables._raw]`, where a configuration sets it, is the more specific setting.
        if let Some(raw) = raw_retention {
            table_retention.entry("_raw".to_owned()).or_insert(raw);
        }
        let ingest_queue = match usize::try_from(self.ingest.queue) {
            Ok(n) if n > 0 => n,
            _ => {
                problem(
                    "ingest.queue",
                    format!("{} must be at least 1", self.ingest.queue),
                );
                1
            }
        };
        if let Err(e) = self.usecases.record_interval(false) {
            problem("usecases.record_every", e);
        }
        let query_threads = match self.query.threads {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n if n > 0 => usize::try_from(n).unwrap_or(1),
            n => {
                problem("query.threads", format!("{n} is negative"));
                1
            }
        };
        match (
            http_listen,
            http_max_body_size,
            partition,
            flush_interval,
            flush_buffer_size,
            compaction_interval,
            retention,
            query_timeout,
            blob_sweep_interval,
            blob_min_age,
        ) {
            (
                Some(http_listen),
                Some(http_max_body_size),
                Some(partition),
                Some(flush_interval),
                Some(flush_buffer_size),
                Some(compaction_interval),
                Some(retention),
                Some(query_timeout),
                Some(blob_sweep_interval),
                Some(blob_min_age),
            ) if problems.is_empty() => Ok(Settings {
                http_listen,
                http_max_body_size,
                data_dir: PathBuf::from(&self.store.data_dir),
                partition,
                flush_interval,
                flush_buffer_size,
                compaction_interval,
                retention,
                table_retention,
                blob_sweep_interval,
                blob_min_age,
                query_timeout,
                query_threads,
                admin_token: Some(self.auth.admin_token.clone()).filter(|t| !t.is_empty()),
                log_level: self.log.level.clone(),
                traces,
                openlineage,
                mqtt,
                raw_retention,
                ingest_queue,
                objects,
                attestation,
                registry_database_url,
                rollups,
            }),
            _ => Err(RuntimeError::Invalid {
                origin: origin.to_owned(),
                problems,
            }),
        }
    }
}

impl Config {
    fn validate_mqtt(&self, problem: &mut impl FnMut(&str, String)) -> MqttSettings {
        let m = &self.mqtt;
        let mut addr = |path: &str, text: &str| -> Option<SocketAddr> {
            if text.trim().is_empty() {
                return None;
            }
            text.parse::<SocketAddr>()
                .map_err(|e| problem(path, format!("`{text}` is not ip:port ({e})")))
                .ok()
        };
        let listen = addr("mqtt.listen", &m.listen);
        let tls_listen = addr("mqtt.tls_listen", &m.tls_listen);
        if m.tls_cert.is_empty() != m.tls_key.is_empty() {
            problem(
                "mqtt.tls_cert",
                "mqtt.tls_cert and mqtt.tls_key must be set together".into(),
            );
        }
        let max_packet_size = match parse_bytes(&m.max_packet_size) {
            Ok(b) if (16..=268_435_455).contains(&b) => b as u32,
            Ok(b) => {
                problem(
                    "mqtt.max_packet_size",
                    format!("{b} bytes is outside 16 B .. 256 MiB (the MQTT limit)"),
                );
                1 << 20
            }
            Err(e) => {
                problem("mqtt.max_packet_size", e);
                1 << 20
            }
        };
        let mut ranged = |path: &str, v: i64, lo: i64, hi: i64| -> i64 {
            if (lo..=hi).contains(&v) {
                v
            } else {
                problem(path, format!("{v} is outside {lo} ..= {hi}"));
                lo
            }
        };
        let receive_maximum = ranged("mqtt.receive_maximum", m.receive_maximum, 1, 65_535) as u16;
        let max_message_rate = ranged(
            "mqtt.max_message_rate",
            m.max_message_rate,
            0,
            1_000_000_000,
        ) as u32;
        let max_connections =
            ranged("mqtt.max_connections", m.max_connections, 1, 10_000_000) as usize;
        let max_queued_messages = ranged(
            "mqtt.max_queued_messages",
            m.max_queued_messages,
            0,
            100_000_000,
        ) as usize;
        let max_session_expiry = match parse_duration(&m.max_session_expiry) {
            Ok(d) => d,
            Err(e) => {
                problem("mqtt.max_session_expiry", e);
                Duration::ZERO
            }
        };
        let max_keep_alive = if m.max_keep_alive.is_empty() {
            0
        } else {
            match parse_duration(&m.max_keep_alive) {
                Ok(d) if (1..=65_535).contains(&d.as_secs()) => d.as_secs() as u16,
                Ok(_) => {
                    problem(
                        "mqtt.max_keep_alive",
                        "must be between 1s and 65535s".into(),
                    );
                    0
                }
                Err(e) => {
                    problem("mqtt.max_keep_alive", e);
                    0
                }
            }
        };
        let subscribe_denied_unspecified = match m.subscribe_denied_reason.as_str() {
            "not_authorized" => false,
            "unspecified" => true,
            other => {
                problem(
                    "mqtt.subscribe_denied_reason",
                    format!("`{other}`: expected not_authorized or unspecified"),
                );
                false
            }
        };
        for (i, rule) in m.acl.iter().enumerate() {
            if !matches!(rule.action.as_str(), "publish" | "subscribe" | "all") {
                problem(
                    &format!("mqtt.acl[{i}].action"),
                    format!("`{}` is not publish, subscribe or all", rule.action),
                );
            }
            if !matches!(rule.effect.as_str(), "allow" | "deny") {
                problem(
                    &format!("mqtt.acl[{i}].effect"),
                    format!("`{}` is not allow or deny", rule.effect),
                );
            }
        }
        MqttSettings {
            listen,
            tls_listen,
            max_packet_size,
            receive_maximum,
            max_message_rate,
            max_connections,
            max_session_expiry,
            max_keep_alive,
            max_queued_messages,
            subscribe_denied_unspecified,
        }
    }
}

/// Applies `FABRIK__SECTION__KEY=value` overrides. The value is typed after the default at
/// that path (so `FABRIK__QUERY__THREADS=4` is an integer); unknown paths are strings.
fn apply_env(
    table: &mut toml::Table,
    template: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push(ConfigProblem {
                path: name.clone(),
                message: "malformed variable name (expected FABRIK__SECTION__KEY)".into(),
            });
            continue;
        }
        let typed = match lookup(template, &path) {
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| "an integer"),
            Some(toml::Value::Boolean(_)) => raw
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| "true or false"),
            Some(toml::Value::Float(_)) => raw
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| "a number"),
            _ => Ok(toml::Value::String(raw.clone())),
        };
        let value = match typed {
            Ok(v) => v,
            Err(expected) => {
                problems.push(ConfigProblem {
                    path: name.clone(),
                    message: format!("`{raw}` is not {expected}"),
                });
                continue;
            }
        };
        if let Err(message) = insert_path(table, &path, value) {
            problems.push(ConfigProblem {
                path: name.clone(),
                message,
            });
        }
    }
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => match table
            .entry(first.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => insert_path(t, rest, value),
            _ => Err(format!("`{first}` is not a section")),
        },
    }
}

fn lookup<'a>(template: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = template.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        toml::Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}

/// Tables whose keys are user-chosen names, and the template each entry must follow.
fn map_template(path: &str) -> Option<toml::Table> {
    match path {
        "store.tables" => toml::Table::try_from(TableConfig::default()).ok(),
        _ => None,
    }
}

/// Arrays of tables, and the template each element must follow (every key present).
fn array_template(path: &str) -> Option<toml::Table> {
    let signal = SignalConfig {
        pointer: String::new(),
        name: String::new(),
        unit: Some(String::new()),
        kind: Some(String::new()),
        scale: 1.0,
        offset: 0.0,
    };
    if path == "mqtt.acl" {
        return toml::Table::try_from(AclRuleConfig {
            action: String::new(),
            topic: String::new(),
            effect: String::new(),
        })
        .ok();
    }
    if path == "mappings" {
        return toml::Table::try_from(MappingConfig {
            name: String::new(),
            version: 1,
            source: String::new(),
            topic: String::new(),
            format: String::new(),
            measurement: Some(String::new()),
            time: Some(String::new()),
            time_unit: String::new(),
            signals: Vec::new(),
            signal: Some(String::new()),
        })
        .ok();
    }
    if path == "pipelines" {
        return toml::Table::try_from(PipelineConfig {
            name: String::new(),
            enabled: true,
            table: String::new(),
            device_column: String::new(),
            devices: Vec::new(),
            site: Some(String::new()),
            device_type: Some(String::new()),
            label: Some(String::new()),
            use_case: Some(String::new()),
            filter: Some(String::new()),
            signals: Vec::new(),
            window: String::new(),
            hop: Some(String::new()),
            features: Vec::new(),
            min_samples: 0,
            model: String::new(),
            model_path: Some(String::new()),
            model_name: Some(String::new()),
            model_output: String::new(),
            training_windows: Some(0),
            threshold: Some(String::new()),
            interval: String::new(),
            lateness: String::new(),
            start: String::new(),
            drift: Some(DriftConfig {
                method: String::new(),
                threshold: Some(0.0),
                windows: Some(0),
                share: 0.0,
                retrain_after: Some(0),
            }),
            shadow: Some(ShadowConfig {
                model: String::new(),
                model_path: Some(String::new()),
                model_name: Some(String::new()),
                model_output: String::new(),
                threshold: Some(String::new()),
                training_windows: Some(0),
                live_share: Some(0.0),
                live_devices: vec![String::new()],
            }),
            performance: Some(PerformanceConfig {
                targets: String::new(),
                target: String::new(),
                device_column: String::new(),
                decision_threshold: 0.0,
                chunk: 0,
                reference_chunks: 0,
                metrics: Vec::new(),
            }),
        })
        .ok();
    }
    if path == "bridges" {
        return toml::Table::try_from(BridgeConfig {
            name: String::new(),
            address: String::new(),
            topics: Vec::new(),
            qos: 1,
            client_id: Some(String::new()),
            username: Some(String::new()),
            password: Some(String::new()),
            tls: false,
            ca: Some(String::new()),
            server_name: Some(String::new()),
            mqtt_version: Some(String::new()),
            sparkplug_host: false,
        })
        .ok();
    }
    if path == "alerting.rules" {
        return toml::Table::try_from(AlertRuleConfig {
            name: String::new(),
            table: String::new(),
            value: String::new(),
            key: String::new(),
            filter: Some(String::new()),
            fill: Some(String::new()),
            condition: String::new(),
            detector: Some(String::new()),
            threshold: 0.0,
            clear: Some(0.0),
            for_duration: String::new(),
            severity: String::new(),
            context: Vec::new(),
            interval: String::new(),
            start: String::new(),
            expect: Some(ExpectConfig {
                devices: Vec::new(),
                site: Some(String::new()),
                device_type: Some(String::new()),
                label: Some(String::new()),
                registered: false,
            }),
            // Any names: see `check_shape`.
            annotations: BTreeMap::from([(String::new(), String::new())]),
            action: Some(AlertActionConfig {
                signal: String::new(),
                value: AlertActionValue::Number(0.0),
                device: Some(String::new()),
                summary: Some(String::new()),
            }),
        })
        .ok();
    }
    if path == "alerting.notifiers" {
        return toml::Table::try_from(NotifierConfig {
            name: String::new(),
            kind: String::new(),
            url: String::new(),
            timeout: String::new(),
            topic: Some(String::new()),
            qos: 1,
            retain: false,
            mqtt_version: Some(String::new()),
            username: Some(String::new()),
            password: Some(String::new()),
            ca: Some(String::new()),
            from: Some(String::new()),
            to: Vec::new(),
            starttls: true,
            group_wait: String::new(),
            group_by: Vec::new(),
            repeat_interval: Some(String::new()),
            severities: Vec::new(),
            rules: Vec::new(),
            devices: Vec::new(),
        })
        .ok();
    }
    if let Some(template) = opcua_template(path) {
        return Some(template);
    }
    if let Some(template) = modbus_template(path) {
        return Some(template);
    }
    if path.starts_with("mappings[") && path.ends_with("].signals") {
        return toml::Table::try_from(signal).ok();
    }
    None
}

/// Templates of `[[opcua.servers]]` and `[[opcua.servers.items]]` (every optional key present).
fn opcua_template(path: &str) -> Option<toml::Table> {
    use crate::opcua::{ItemConfig, SecurityMode, SecurityPolicyName, ServerConfig, TrustMode};
    let rest = path.strip_prefix("opcua.servers")?;
    if rest.is_empty() {
        return toml::Table::try_from(ServerConfig {
            id: String::new(),
            measurement: String::new(),
            endpoint: String::new(),
            security_policy: SecurityPolicyName::None,
            security_mode: SecurityMode::None,
            pki_dir: PathBuf::new(),
            trust_server: TrustMode::TrustList,
            username: Some(String::new()),
            password: Some(String::new()),
            device: Some(String::new()),
            publishing_interval_ms: 1,
            reconnect_min_ms: 1,
            reconnect_max_ms: 1,
            request_timeout_ms: 1,
            keep_alive_ms: 1,
            items: Vec::new(),
        })
        .ok();
    }
    if rest.starts_with('[') && rest.ends_with("].items") {
        return toml::Table::try_from(ItemConfig {
            node_id: String::new(),
            signal: String::new(),
            device: Some(String::new()),
            sampling_interval_ms: Some(1),
            deadband: Some(0.0),
            queue_size: 1,
            writable: false,
            min: Some(0.0),
            max: Some(0.0),
        })
        .ok();
    }
    None
}

/// Templates of the `[[modbus.devices]]`, `[[modbus.devices.maps]]` and
/// `[[modbus.devices.maps.points]]` arrays (every optional key present).
fn modbus_template(path: &str) -> Option<toml::Table> {
    use crate::modbus::{DataType, DeviceConfig, MapConfig, Order, PointConfig, Table};
    let rest = path.strip_prefix("modbus.devices")?;
    if rest.is_empty() {
        return toml::Table::try_from(DeviceConfig {
            id: String::new(),
            measurement: String::new(),
            address: String::new(),
            unit_id: 1,
            timeout_ms: 1,
            reconnect_min_ms: 1,
            reconnect_max_ms: 1,
            maps: Vec::new(),
        })
        .ok();
    }
    if rest.starts_with('[') && rest.ends_with("].maps") && !rest.contains("].maps[") {
        return toml::Table::try_from(MapConfig {
            poll_interval_ms: 1,
            max_gap: 0,
            points: Vec::new(),
        })
        .ok();
    }
    if rest.contains("].maps[") && rest.ends_with("].points") {
        return toml::Table::try_from(PointConfig {
            name: String::new(),
            table: Table::Holding,
            address: 0,
            data_type: DataType::U16,
            length: Some(0),
            byte_order: Some(Order::Big),
            word_order: Some(Order::Big),
            scale: Some(1.0),
            offset: Some(0.0),
            unit: Some(String::new()),
            writable: false,
            min: Some(0.0),
            max: Some(0.0),
        })
        .ok();
    }
    None
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Reports every value of the wrong type and every unknown field in `table`, with its path,
/// and removes it, so the defaults apply in its place and the rest can still be validated. A
/// list entry that is not a table is reported and kept (removing it would shift the indices
/// in later reports), which makes the whole table fail to load.
fn check_shape(
    table: &mut toml::Table,
    template: &toml::Table,
    prefix: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut rejected = Vec::new();
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let mut reject = |message: String| {
            problems.push(ConfigProblem {
                path: path.clone(),
                message,
            });
            rejected.push(key.clone());
        };
        if let Some(entry_template) = map_template(&path) {
            match value {
                toml::Value::Table(entries) => {
                    let mut bad_entries = Vec::new();
                    for (name, entry) in entries.iter_mut() {
                        let entry_path = format!("{path}.{name}");
                        match entry {
                            toml::Value::Table(t) => {
                                check_shape(t, &entry_template, &entry_path, problems)
                            }
                            other => {
                                problems.push(ConfigProblem {
                                    path: entry_path,
                                    message: format!(
                                        "expected a table, found {}",
                                        type_name(other)
                                    ),
                                });
                                bad_entries.push(name.clone());
                            }
                        }
                    }
                    for name in bad_entries {
                        entries.remove(&name);
                    }
                }
                other => reject(format!("expected a table, found {}", type_name(other))),
            }
            continue;
        }
        if let Some(element_template) = array_template(&path) {
            match value {
                toml::Value::Array(items) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        match item {
                            toml::Value::Table(t) => {
                                check_shape(t, &element_template, &item_path, problems)
                            }
                            other => problems.push(ConfigProblem {
                                path: item_path,
                                message: format!("expected a table, found {}", type_name(other)),
                            }),
                        }
                    }
                }
                other => reject(format!(
                    "expected an array of tables, found {}",
                    type_name(other)
                )),
            }
            continue;
        }
        let Some(expected) = template.get(key) else {
            let known: Vec<&str> = template.keys().map(String::as_str).collect();
            reject(format!(
                "unknown field; expected one of: {}",
                known.join(", ")
            ));
            continue;
        };
        match (expected, value) {
            // A template table whose only key is empty stands for a map with any keys, each
            // value like the template's (a rule's `annotations`).
            (toml::Value::Table(t), toml::Value::Table(v))
                if t.len() == 1 && t.contains_key("") =>
            {
                let want = &t[""];
                let wrong: Vec<String> = v
                    .iter()
                    .filter(|(_, value)| {
                        std::mem::discriminant(*value) != std::mem::discriminant(want)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in wrong {
                    if let Some(value) = v.remove(&name) {
                        problems.push(ConfigProblem {
                            path: format!("{path}.{name}"),
                            message: format!(
                                "expected {}, found {}",
                                type_name(want),
                                type_name(&value)
                            ),
                        });
                    }
                }
            }
            (toml::Value::Table(t), toml::Value::Table(v)) => check_shape(v, t, &path, problems),
            (e, v) if std::mem::discriminant(e) == std::mem::discriminant(v) => {}
            // `scale = 2` is as good as `scale = 2.0`.
            (toml::Value::Float(_), toml::Value::Integer(_)) => {}
            (e, v) => reject(format!("expected {}, found {}", type_name(e), type_name(v))),
        }
    }
    for key in rejected {
        table.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    /// `mqtt_version = 5`, as one naturally writes it, is the text `5`, like `"5"`.
    #[test]
    fn an_mqtt_version_may_be_written_as_a_number() {
        let text = "[[bridges]]\nname = \"b\"\naddress = \"h:1883\"\ntopics = [\"t\"]\n\
                    mqtt_version = 5\n\n[[alerting.notifiers]]\nname = \"n\"\nkind = \"mqtt\"\n\
                    url = \"mqtt://h:1883\"\nmqtt_version = 5\n";
        let config = Config::from_toml("t", text, no_env()).expect("parses");
        assert_eq!(config.bridges[0].mqtt_version.as_deref(), Some("5"));
        assert_eq!(
            config.alerting.notifiers[0].mqtt_version.as_deref(),
            Some("5")
        );
        let quoted = text.replace("mqtt_version = 5", "mqtt_version = \"3.1.1\"");
        let config = Config::from_toml("t", &quoted, no_env()).expect("parses");
        assert_eq!(config.bridges[0].mqtt_version.as_deref(), Some("3.1.1"));
    }

    #[test]
    fn traces_settings_are_validated() {
        let off = Config::from_toml("t", "", no_env()).expect("parses");
        assert_eq!(off.validate("t").expect("valid").traces, None);
        let on = "[traces]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\n";
        let config = Config::from_toml("t", on, no_env()).expect("parses");
        let traces = config.validate("t").expect("valid").traces.expect("on");
        assert_eq!(traces.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces.sample_ratio, 0.25);
        assert_eq!(traces.service_name, "fabrik");
        assert_eq!(
            traces.protocol,
            OtlpProtocol::HttpProtobuf,
            "OpenTelemetry's default encoding"
        );
        let json = format!("{on}protocol = \"http/json\"\n");
        let config = Config::from_toml("t", &json, no_env()).expect("parses");
        assert_eq!(
            config
                .validate("t")
                .expect("valid")
                .traces
                .expect("on")
                .protocol,
            OtlpProtocol::HttpJson
        );
        let grpc = "[traces]\notlp_endpoint = \"http://collector:4317\"\nprotocol = \"grpc\"\n";
        let traces = Config::from_toml("t", grpc, no_env())
            .expect("parses")
            .validate("t")
            .expect("valid")
            .traces
            .expect("on");
        assert_eq!(traces.protocol, OtlpProtocol::Grpc);
        assert!(!traces.gzip, "not compressed unless asked");
        assert_eq!(
            traces.url,
            "http://collector:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        let full = "[traces]\notlp_endpoint = \"https://tempo:4318/v1/traces\"\n";
        let config = Config::from_toml("t", full, no_env()).expect("parses");
        let traces = config.validate("t").expect("valid").traces.expect("on");
        assert_eq!(traces.url, "https://tempo:4318/v1/traces");
        for (text, field) in [
            ("otlp_endpoint = \"collector:4318\"", "traces.otlp_endpoint"),
            ("sample_ratio = 1.5", "traces.sample_ratio"),
            ("service_name = \" \"", "traces.service_name"),
            ("protocol = \"grpc/json\"", "traces.protocol"),
            ("compression = \"zstd\"", "traces.compression"),
            (
                "otlp_endpoint = \"http://collector:4318/v1/traces\"\nprotocol = \"grpc\"",
                "traces.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"http://collector:4317?tenant=a\"\nprotocol = \"grpc\"",
                "traces.otlp_endpoint",
            ),
        ] {
            let config =
                Config::from_toml("t", &format!("[traces]\n{text}\n"), no_env()).expect("parses");
            let e = config.validate("t").unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn openlineage_settings_are_validated() {
        let off = Config::from_toml("t", "", no_env()).expect("parses");
        assert_eq!(off.validate("t").expect("valid").openlineage, None);
        let settings = |text: &str| {
            Config::from_toml("t", &format!("[openlineage]\n{text}\n"), no_env())
                .expect("parses")
                .validate("t")
        };
        let marquez = settings("url = \"http://marquez:5000/\"\napi_key = \" k \"")
            .expect("valid")
            .openlineage
            .expect("on");
        assert_eq!(
            marquez.url.as_deref(),
            Some("http://marquez:5000/api/v1/lineage"),
            "OpenLineage's clients' default endpoint"
        );
        assert_eq!(marquez.api_key.as_deref(), Some("k"));
        assert_eq!(marquez.file, None);
        assert_eq!(marquez.namespace, None);
        assert_eq!(marquez.running_interval, Some(Duration::from_secs(600)));
        let datahub = settings(
            "url = \"https://datahub:8080\"\nendpoint = \"/openapi/openlineage/api/v1/lineage\"\n\
             namespace = \"plant-7\"\nrunning_interval = \"0s\"",
        )
        .expect("valid")
        .openlineage
        .expect("on");
        assert_eq!(
            datahub.url.as_deref(),
            Some("https://datahub:8080/openapi/openlineage/api/v1/lineage")
        );
        assert_eq!(datahub.namespace.as_deref(), Some("plant-7"));
        assert_eq!(datahub.running_interval, None, "0s: no RUNNING events");
        let file = settings("file = \"/var/log/fabrik/lineage.jsonl\"")
            .expect("valid")
            .openlineage
            .expect("on");
        assert_eq!(file.url, None);
        assert_eq!(
            file.file.as_deref(),
            Some(Path::new("/var/log/fabrik/lineage.jsonl"))
        );
        let relative = settings("file = \"lineage.jsonl\"")
            .expect("valid")
            .openlineage
            .expect("on");
        assert_eq!(
            relative.file.as_deref(),
            Some(Path::new("./fabrik-data/lineage.jsonl")),
            "a relative file is in the data directory"
        );
        let whole = settings("url = \"http://marquez:5000/api/v1/lineage\"")
            .expect("valid")
            .openlineage
            .expect("on");
        assert_eq!(
            whole.url.as_deref(),
            Some("http://marquez:5000/api/v1/lineage"),
            "a URL that names the endpoint already is taken as it is"
        );
        for (text, field) in [
            ("url = \"marquez:5000\"", "openlineage.url"),
            ("url = \"http://marquez:5000?x=1\"", "openlineage.url"),
            (
                "file = \"l.jsonl\"\nrunning_interval = \"100ms\"",
                "openlineage.running_interval",
            ),
            (
                "file = \"l.jsonl\"\nrunning_interval = \"soon\"",
                "openlineage.running_interval",
            ),
            (
                "file = \"l.jsonl\"\nnamespace = \"a\\nb\"",
                "openlineage.namespace",
            ),
            ("api_key = \"k\"", "openlineage.api_key"),
            ("file = \"l.jsonl\"\napi_key = \"k\"", "openlineage.api_key"),
            ("url = \"http://me:secret@marquez:5000\"", "openlineage.url"),
            ("url = \"ftp://marquez\"", "openlineage.url"),
            ("url = \"http://marquez:99999\"", "openlineage.url"),
        ] {
            let e = settings(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_local_blob_limit_needs_a_bucket_and_a_size() {
        let objects = |extra: &str| {
            let text = format!("[store.objects]\nurl = \"s3://plant/line-5\"\n{extra}\n");
            Config::from_toml("t", &text, no_env())
                .expect("parses")
                .validate("t")
        };
        let all = objects("").expect("valid").objects.expect("a bucket");
        assert_eq!(all.local_blob_limit, None);
        assert_eq!(all.segment_cache, None);
        let limited = objects("local_blob_limit = \"20GiB\"\nsegment_cache = \"512MiB\"")
            .expect("valid")
            .objects
            .expect("a bucket");
        assert_eq!(limited.local_blob_limit, Some(20 << 30));
        assert_eq!(limited.segment_cache, Some(512 << 20));
        for (wrong, key) in [
            (
                "local_blob_limit = \"lots\"",
                "store.objects.local_blob_limit",
            ),
            ("local_blob_limit = \"0\"", "store.objects.local_blob_limit"),
            ("segment_cache = \"0\"", "store.objects.segment_cache"),
            ("segment_cache = \"1 lot\"", "store.objects.segment_cache"),
        ] {
            let e = objects(wrong).unwrap_err().to_string();
            assert!(e.contains(key), "{wrong}: {e}");
        }
        assert_eq!(all.read_only, None);
        let reader = objects("read_only = true")
            .expect("valid")
            .objects
            .expect("a bucket");
        assert_eq!(reader.read_only, Some(std::time::Duration::from_secs(10)));
        let reader = objects("read_only = true\nrefresh_interval = \"2s\"")
            .expect("valid")
            .objects
            .expect("a bucket");
        assert_eq!(reader.read_only, Some(std::time::Duration::from_secs(2)));
        for (wrong, text) in [
            ("refresh_interval = \"2s\"", "read_only is false"),
            ("read_only = true\nrefresh_interval = \"0s\"", "is zero"),
            ("read_only = true\nrefresh_interval = \"soon\"", "soon"),
        ] {
            let e = objects(wrong).unwrap_err().to_string();
            assert!(
                e.contains("store.objects.refresh_interval") && e.contains(text),
                "{wrong}: {e}"
            );
        }
        for (key, text) in [
            ("store.objects.local_blob_limit", "without a bucket"),
            ("store.objects.segment_cache", "nothing to cache"),
        ] {
            let setting = key.trim_start_matches("store.objects.");
            let no_bucket = format!("[store.objects]\n{setting} = \"1GiB\"\n");
            let e = Config::from_toml("t", &no_bucket, no_env())
                .expect("parses")
                .validate("t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(text), "{e}");
        }
        let e = Config::from_toml("t", "[store.objects]\nread_only = true\n", no_env())
            .expect("parses")
            .validate("t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.objects.read_only") && e.contains("url is empty"),
            "{e}"
        );
    }

    #[test]
    fn the_registry_database_is_a_postgres_url_from_the_file_or_the_environment() {
        let embedded = Config::from_toml("t", "", no_env()).expect("parses");
        assert_eq!(
            embedded.validate("t").expect("valid").registry_database_url,
            None
        );
        let env = vec![(
            "FABRIK__REGISTRY__DATABASE_URL".to_owned(),
            "postgres://fabrik:pw@db:5432/fabrik".to_owned(),
        )];
        let config = Config::from_toml("t", "", env.clone()).expect("parses");
        assert_eq!(
            config
                .validate("t")
                .expect("valid")
                .registry_database_url
                .as_deref(),
            Some("postgres://fabrik:pw@db:5432/fabrik")
        );
        // Not on a query node: the owner writes it.
        let reader = "[store.objects]\nurl = \"s3://plant/hub\"\nread_only = true\n";
        let e = Config::from_toml("t", reader, env)
            .expect("parses")
            .validate("t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registry.database_url") && e.contains("read-only"),
            "{e}"
        );
        for wrong in [
            "mysql://root:hunter2@db/fabrik",
            "postgres://root:hun/ter2@db/fabrik",
        ] {
            let text = format!("[registry]\ndatabase_url = \"{wrong}\"\n");
            let config = Config::from_toml("t", &text, no_env()).expect("parses");
            let e = config.validate("t").unwrap_err().to_string();
            assert!(e.contains("registry.database_url"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("ter2"), "echoed: {e}");
        }
    }

    #[test]
    fn attestation_settings_are_validated() {
        let config = Config::from_toml(
            "t",
            "[attestation]\nrequired = true\nmax_age = \"2h\"\n",
            no_env(),
        )
        .expect("parses");
        let settings = config.validate("t").expect("valid");
        assert!(settings.attestation.required);
        assert_eq!(settings.attestation.max_age, Duration::from_secs(7200));
        assert!(!settings.attestation.require_endorsement);
        assert_eq!(settings.attestation.endorsement_authorities, None);
        let blind = "[attestation]\nrequire_endorsement = true\n";
        let config = Config::from_toml("t", blind, no_env()).expect("parses");
        let e = config.validate("t").unwrap_err().to_string();
        assert!(
            e.contains("attestation.require_endorsement") && e.contains("endorsement_authorities"),
            "{e}"
        );
        let vendors = "[attestation]\nrequire_endorsement = true\nendorsement_authorities = \"/etc/fabrik/tpm\"\n";
        let config = Config::from_toml("t", vendors, no_env()).expect("parses");
        let settings = config.validate("t").expect("valid");
        assert!(settings.attestation.require_endorsement);
        assert_eq!(
            settings.attestation.endorsement_authorities.as_deref(),
            Some(std::path::Path::new("/etc/fabrik/tpm"))
        );
        let anonymous = "[attestation]\nrequired = true\n[mqtt]\nallow_anonymous = true\n";
        let config = Config::from_toml("t", anonymous, no_env()).expect("parses");
        let e = config.validate("t").unwrap_err().to_string();
        assert!(
            e.contains("attestation.required") && e.contains("allow_anonymous"),
            "{e}"
        );
        for (max_age, wanted) in [("30s", "at least 1m"), ("soon", "attestation.max_age")] {
            let text = format!("[attestation]\nmax_age = \"{max_age}\"\n");
            let config = Config::from_toml("t", &text, no_env()).expect("parses");
            let e = config.validate("t").unwrap_err().to_string();
            assert!(
                e.contains("attestation.max_age") && e.contains(wanted),
                "{e}"
            );
        }
    }

    #[test]
    fn the_example_config_parses_to_the_defaults() {
        let config = Config::from_toml("example", EXAMPLE, no_env()).expect("example parses");
        let mut expected = Config::default();
        expected.store.tables.insert(
            "fabrik_events".into(),
            TableConfig {
                retention: "90d".into(),
            },
        );
        assert_eq!(config, expected);
        config.validate("example").expect("example validates");
    }

    #[test]
    fn the_kpi_recording_interval_defaults_by_mode_and_is_checked() {
        let with = |text: &str| UseCasesConfig {
            record_every: text.into(),
        };
        assert_eq!(
            with("").record_interval(false),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(with("").record_interval(true), Ok(Duration::from_secs(60)));
        assert_eq!(
            with("1h").record_interval(true),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(with("0s").record_interval(false), Ok(Duration::ZERO));
        let config = Config {
            usecases: with("10ms"),
            ..Config::default()
        };
        let problems = match config.validate("t.toml") {
            Err(RuntimeError::Invalid { problems, .. }) => problems,
            other => panic!("{other:?}"),
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "usecases.record_every");
    }

    /// A pipeline's fixed threshold may be written as a number, in the file and in JSON.
    #[test]
    fn a_fixed_threshold_may_be_a_number() {
        let text =
            "[[pipelines]]\nname = \"p\"\ntable = \"t\"\nsignals = [\"x\"]\nthreshold = 3.0\n";
        let config = Config::from_toml("t.toml", text, no_env()).expect("loads");
        assert_eq!(config.pipelines[0].threshold.as_deref(), Some("3"));
        let json: PipelineConfig = serde_json::from_str(
            r#"{"name": "p", "table": "t", "signals": ["x"], "threshold": 2.5}"#,
        )
        .expect("json");
        assert_eq!(json.threshold.as_deref(), Some("2.5"));
        let json: PipelineConfig = serde_json::from_str(
            r#"{"name": "p", "table": "t", "signals": ["x"], "threshold": 4}"#,
        )
        .expect("json");
        assert_eq!(json.threshold.as_deref(), Some("4"));
    }

    /// List entries that do not deserialize (a required field left out) are each reported
    /// with the file's index and the field, and left out; the others load.
    #[test]
    fn each_entry_missing_a_required_field_is_named_with_its_index() {
        let text = r#"
            [[pipelines]]
            name = "a"
            table = "pump"
            [[pipelines]]
            name = "b"
            table = "pump"
            signals = ["x"]
            [[pipelines]]
            name = "c"
            [[alerting.rules]]
            name = "r"
            table = "pump"
            condition = "above"
            threshold = 1
        "#;
        let err = Config::from_toml("t.toml", text, no_env()).expect_err("missing fields");
        let RuntimeError::Invalid { problems, .. } = err else {
            panic!("{err}");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "alerting.rules[0].value",
                "pipelines[0].signals",
                "pipelines[2].table"
            ],
            "{problems:?}"
        );
        assert!(problems.iter().all(|p| p.message.contains("required")));
        // The pipeline left is the file's second: a problem found in it later says so.
        let (config, _, indices) = Config::from_toml_indexed(
            "t.toml",
            text.replace(
                "name = \"c\"",
                "name = \"c\"\n            table = \"t\"\n            signals = [\"y\"]",
            )
            .as_str(),
            no_env(),
        )
        .expect("loads without the entries left out");
        assert_eq!(config.pipelines.len(), 2);
        assert_eq!(config.pipelines[0].name, "b");
        assert_eq!(
            indices.file_path("pipelines[0].window"),
            "pipelines[1].window"
        );
        assert_eq!(
            indices.file_path("pipelines[1].window"),
            "pipelines[2].window"
        );
        assert_eq!(indices.file_path("http.listen"), "http.listen");
        assert_eq!(
            indices.file_path("modbus.devices[0].unit_id"),
            "modbus.devices[0].unit_id",
            "a list that lost nothing"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            [http]
            listen = "nowhere"
            lisen = "typo"
            [store]
            retention = "soon"
            flush_interval = 5
            [store.tables.cpu]
            retention = "1h"
            keep = 1
            [bogus]
        "#;
        let err = Config::from_toml("t.toml", text, no_env()).expect_err("shape errors");
        let msg = err.to_string();
        for needle in [
            "http.lisen",
            "store.flush_interval",
            "store.tables.cpu.keep",
            "bogus",
        ] {
            assert!(msg.contains(needle), "missing {needle} in:\n{msg}");
        }
        // Reporting instead of failing: the bad entries are left out (their defaults apply),
        // so the values that remain can be validated in the same pass.
        let (config, shape) =
            Config::from_toml_reporting("t.toml", text, no_env()).expect("the rest loads");
        let paths: Vec<&str> = shape.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bogus",
                "http.lisen",
                "store.flush_interval",
                "store.tables.cpu.keep"
            ]
        );
        assert_eq!(
            config.store.flush_interval,
            Config::default().store.flush_interval
        );
        assert_eq!(config.store.tables["cpu"].retention, "1h");
        let msg = config.validate("t.toml").expect_err("values").to_string();
        assert!(
            msg.contains("http.listen") && msg.contains("store.retention"),
            "{msg}"
        );
        let text =
            "[http]\nlisten = \"nowhere\"\n[store]\nretention = \"soon\"\npartition = \"0s\"\n";
        let config = Config::from_toml("t.toml", text, no_env()).expect("shape ok");
        let msg = config
            .validate("t.toml")
            .expect_err("values invalid")
            .to_string();
        for needle in [
            "http.listen",
            "store.retention",
            "store.partition",
            "3 configuration error",
        ] {
            assert!(msg.contains(needle), "missing {needle} in:\n{msg}");
        }
    }

    #[test]
    fn tls_files_come_in_pairs_and_only_with_tls_on() {
        let problem = |text: &str| {
            Config::from_toml("t.toml", text, no_env())
                .expect("shape ok")
                .validate("t.toml")
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let half = problem("[http]\ntls = true\ntls_cert = \"c.pem\"\n").expect_err("half");
        assert!(half.contains("http.tls_key"), "{half}");
        let off = problem("[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").expect_err("off");
        assert!(
            off.contains("http.tls:") && off.contains("set http.tls = true"),
            "{off}"
        );
        problem("[http]\ntls = true\n").expect("a generated certificate");
    }

    #[test]
    fn a_rules_annotations_take_any_name_with_a_text_value() {
        let text = r#"
            [[alerting.rules]]
            name = "hot"
            table = "pump"
            value = "temperature"
            condition = "above"
            threshold = 80.0
            annotations = { summary = "{device} hot", runbook = "https://wiki", level = 3 }
        "#;
        let (config, shape) =
            Config::from_toml_reporting("t.toml", text, no_env()).expect("the rest loads");
        let paths: Vec<&str> = shape.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["alerting.rules[0].annotations.level"], "{shape:?}");
        let annotations = &config.alerting.rules[0].annotations;
        assert_eq!(annotations["summary"], "{device} hot");
        assert_eq!(annotations["runbook"], "https://wiki");
        assert_eq!(annotations.len(), 2);
    }

    #[test]
    fn environment_overrides_are_typed_after_the_defaults() {
        let env = vec![
            (
                "FABRIK__HTTP__LISTEN".to_owned(),
                "127.0.0.1:9999".to_owned(),
            ),
            ("FABRIK__STORE__DATA_DIR".to_owned(), "/tmp/x".to_owned()),
            ("FABRIK__AUTH__ADMIN_TOKEN".to_owned(), "12345".to_owned()),
            ("FABRIK__QUERY__THREADS".to_owned(), "3".to_owned()),
            (
                "FABRIK__STORE__TABLES__CPU__RETENTION".to_owned(),
                "2h".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let settings = Config::from_toml("defaults", "", env)
            .expect("loads")
            .validate("defaults")
            .expect("valid");
        assert_eq!(settings.http_listen.port(), 9999);
        assert_eq!(settings.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(settings.admin_token.as_deref(), Some("12345"));
        assert_eq!(settings.query_threads, 3);
        assert_eq!(
            settings.table_retention.get("cpu"),
            Some(&Retention::For(Duration::from_secs(7200)))
        );
        let bad = vec![("FABRIK__QUERY__THREADS".to_owned(), "many".to_owned())];
        let msg = Config::from_toml("defaults", "", bad)
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("FABRIK__QUERY__THREADS"), "{msg}");
        let unknown = vec![("FABRIK__HTTP__NOPE".to_owned(), "1".to_owned())];
        let msg = Config::from_toml("defaults", "", unknown)
            .expect_err("unknown")
            .to_string();
        assert!(msg.contains("http.nope"), "{msg}");
    }

    /// `ingest.raw_retention` is what the store applies to `_raw` (unless `[store.tables._raw]`
    /// says otherwise); the blob listing, whose retention follows from the others, has none.
    #[test]
    fn raw_messages_are_kept_for_the_raw_retention_and_the_blob_listing_refuses_one() {
        let settings = Config::from_toml("t", "[ingest]\nraw_retention = \"2d\"\n", no_env())
            .expect("loads")
            .validate("t")
            .expect("valid");
        assert_eq!(
            settings.table_retention.get("_raw"),
            Some(&Retention::For(Duration::from_secs(2 * 86_400)))
        );
        assert_eq!(
            (settings.blob_sweep_interval, settings.blob_min_age),
            (Duration::from_secs(3600), Duration::from_secs(3600))
        );
        let without_raw = Config::from_toml("t", "[ingest]\nkeep_raw = false\n", no_env())
            .expect("loads")
            .validate("t")
            .expect("valid");
        assert!(!without_raw.table_retention.contains_key("_raw"));
        let explicit =
            Config::from_toml("t", "[store.tables._raw]\nretention = \"30d\"\n", no_env())
                .expect("loads")
                .validate("t")
                .expect("valid");
        assert_eq!(
            explicit.table_retention.get("_raw"),
            Some(&Retention::For(Duration::from_secs(30 * 86_400)))
        );
        let text = "[store.tables._blobs]\nretention = \"1d\"\n\
                    [store]\nblob_min_age = \"0s\"\n";
        let msg = Config::from_toml("t", text, no_env())
            .expect("loads")
            .validate("t")
            .expect_err("refused")
            .to_string();
        for expected in ["store.tables._blobs", "store.blob_min_age"] {
            assert!(msg.contains(expected), "{expected}: {msg}");
        }
    }

    #[test]
    fn rollups_name_their_table_and_interval_and_every_mistake_is_named() {
        let text = "[[store.rollups]]\ntable = \"telemetry\"\nevery = \"1m\"\n\
                    [[store.rollups]]\ntable = \"telemetry\"\nevery = \"1h\"\n\
                    into = \"telemetry_hourly\"\nfields = [\"temperature\", \"temperature\"]\n\
                    lateness = \"2h\"\nhold = \"0s\"\n";
        let settings = Config::from_toml("t", text, no_env())
            .expect("loads")
            .validate("t")
            .expect("valid");
        assert_eq!(
            settings.rollups,
            [
                RollupSettings {
                    table: "telemetry".into(),
                    into: "telemetry_1m".into(),
                    every: Duration::from_secs(60),
                    fields: Vec::new(),
                    lateness: Duration::from_secs(60),
                    hold: Duration::from_secs(3600),
                },
                RollupSettings {
                    table: "telemetry".into(),
                    into: "telemetry_hourly".into(),
                    every: Duration::from_secs(3600),
                    fields: vec!["temperature".into()],
                    lateness: Duration::from_secs(7200),
                    hold: Duration::ZERO,
                },
            ]
        );
        let text = "[[store.rollups]]\nevery = \"1m\"\n\
                    [[store.rollups]]\ntable = \"a\"\nevery = \"10ms\"\n\
                    [[store.rollups]]\ntable = \"a\"\nevery = \"1m\"\ninto = \"a\"\n\
                    [[store.rollups]]\ntable = \"a\"\nevery = \"1m\"\ninto = \"_a\"\n\
                    [[store.rollups]]\ntable = \"a\"\nevery = \"1m\"\nlateness = \"soon\"\n\
                    [[store.rollups]]\ntable = \"a\"\nevery = \"1m\"\n\
                    [[store.rollups]]\ntable = \"b\"\nevery = \"1m\"\ninto = \"a_1m\"\n\
                    [[store.rollups]]\ntable = \"c\"\nevery = \"1m\"\nfields = [\"_quality\"]\n\
                    [[store.rollups]]\ntable = \"d\"\nevery = \"1m\"\nlateness = \"2d\"\n\
                    [[store.rollups]]\ntable = \"e\"\nevery = \"1m\"\ninto = \"f\"\n\
                    [[store.rollups]]\ntable = \"f\"\nevery = \"1h\"\n\
                    [[store.rollups]]\ntable = \"plant.line\"\nevery = \"1h\"\n\
                    [[store.rollups]]\ntable = \"g\"\nevery = \"1m\"\nhold = \"2d\"\n\
                    [[store.rollups]]\ntable = \"h\"\nevery = \"1m\"\nhold = \"long\"\n\
                    [[store.rollups]]\ntable = \"i\"\nevery = \"7d\"\nhold = \"7d\"\n";
        let msg = Config::from_toml("t", text, no_env())
            .expect("loads")
            .validate("t")
            .expect_err("refused")
            .to_string();
        for expected in [
            "store.rollups[0].table",
            "store.rollups[1].every",
            "store.rollups[2].into: `a` is the table it summarises",
            "store.rollups[3].into",
            "store.rollups[4].lateness",
            "store.rollups[6].into: `a_1m` is written by another rollup",
            "store.rollups[7].fields: `_quality`",
            "store.rollups[8].lateness: at most 1440 intervals",
            "store.rollups[9].into: `f` is summarised by a rollup itself",
            "store.rollups[11].into: `plant.line_1h` (made from `table` and `every`: set `into`)",
            "store.rollups[12].hold: at most 1d",
            "store.rollups[13].hold",
        ] {
            assert!(msg.contains(expected), "{expected}: {msg}");
        }
        for fine in ["store.rollups[5]", "store.rollups[10]", "store.rollups[14]"] {
            assert!(!msg.contains(fine), "{fine}: {msg}");
        }
    }
}
