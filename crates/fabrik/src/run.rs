//! `fabrik run`: load the configuration, start the selected modules in dependency order,
//! print where everything is, and stop gracefully on SIGINT/SIGTERM or when a module fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fabrik_api::{ApiState, Auth};
use fabrik_connect::mqtt::tls::TlsSettings;
use fabrik_runtime::config::Retention;
use fabrik_runtime::services::StopReason;
use fabrik_runtime::{Config, ServiceHandle, ServiceManager, Settings};
use fabrik_store::{Store, StoreOptions};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::modules::{self, Module};

/// How long a graceful stop may take before the process exits anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// `[updates] confirm_after` when it cannot be read (`config check` refuses such a file first).
const DEFAULT_CONFIRM_AFTER: Duration = Duration::from_secs(600);

/// Arguments of `fabrik run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Configuration file (TOML). Without it: embedded defaults plus FABRIK__* overrides.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Modules to run, comma-separated (default: all). Dependencies are started too.
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
    /// List the modules and their dependencies, then exit.
    #[arg(long)]
    list_targets: bool,
    /// Also run a simulated plant (pumps and motors publishing over MQTT with their own
    /// credentials), registered and mapped, so there is data to look at right away.
    #[arg(long)]
    demo: bool,
}

/// Entry point of `fabrik run`.
pub(crate) fn main(args: RunArgs) -> ExitCode {
    if args.list_targets {
        let rows: Vec<(&str, String, &str)> = Module::ALL
            .iter()
            .map(|m| {
                let deps: Vec<&str> = m.deps().iter().map(|d| d.name()).collect();
                let deps = if deps.is_empty() {
                    "-".to_owned()
                } else {
                    deps.join(",")
                };
                (m.name(), deps, m.about())
            })
            .collect();
        // Columns as wide as their longest entry, so the descriptions line up.
        let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let deps_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        for (name, deps, about) in rows {
            println!("{name:<name_width$}  deps: {deps:<deps_width$}  {about}");
        }
        return ExitCode::SUCCESS;
    }
    let origin = args
        .config
        .as_ref()
        .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let (config, settings) = match crate::config_check::load(args.config.as_deref(), &origin) {
        Ok(loaded) => loaded,
        Err(failure) => {
            crate::config_check::report("fabrik: ", &origin, failure);
            return ExitCode::from(2);
        }
    };
    let read_only = settings
        .objects
        .as_ref()
        .is_some_and(|o| o.read_only.is_some());
    let modules = match modules::resolve_for(&args.target, read_only) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fabrik: {e}");
            return ExitCode::from(2);
        }
    };
    let node = crate::updates::node_name(&config);
    let traces = init_tracing(&settings.log_level, settings.traces.as_ref(), &node);
    let uplink_node = config.uplink.node.trim();
    if settings.openlineage.is_some() && !uplink_node.is_empty() && uplink_node != node {
        tracing::warn!(
            node = %node,
            uplink_node,
            "OpenLineage names this node's datasets fabrik://{node}, but its hub names them by \
             [uplink] node: the two graphs do not join. Give [updates] node and [uplink] node \
             the same name."
        );
    }
    // The metrics recorder before any module runs: counters a hot path looks up once (the
    // message spans over their cap) would otherwise stay bound to no recorder.
    let _ = fabrik_runtime::telemetry::prometheus();
    // Before anything can replace the file: once renamed over, `/proc/self/exe` names a
    // deleted one.
    let self_update = crate::self_update::SelfUpdate::capture(args.config.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fabrik")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fabrik: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Counted before anything of this run can fail, so that a new binary which keeps failing
    // sends the node back to the previous one (decision 0066). Only the process that installs
    // binaries counts: with `--target` a node's other processes run the same file.
    if modules.contains(&Module::Updates) && !config.updates.url.trim().is_empty() {
        let limit = config.updates.rollback_after_failed_runs;
        let try_previous =
            |previous: &std::path::Path| runtime.block_on(self_update.trial(previous, "previous"));
        if let crate::self_update::StartCount::RolledBack { .. } =
            self_update.count_start(&settings.data_dir, limit, try_previous)
        {
            if let Ok(exe) = self_update.exe() {
                let error = crate::self_update::exec(exe);
                tracing::error!(binary = %exe.display(), error = %error, "The previous binary could not be started; the service manager must start it.");
            }
            return ExitCode::FAILURE;
        }
    }
    let trace_stop = tokio_util::sync::CancellationToken::new();
    let trace_export = traces.map(|(exporter, spans)| {
        runtime.spawn(crate::traces::export(exporter, spans, trace_stop.clone()))
    });
    // Beside the modules, like the trace exporter: a pipeline's last event is sent as it stops.
    let lineage_stop = tokio_util::sync::CancellationToken::new();
    let (lineage, lineage_sender) = match settings.openlineage.clone() {
        Some(lineage) => {
            let (emitter, sender) = crate::openlineage::channel(lineage, &node);
            (Some(emitter), Some(sender))
        }
        None => (None, None),
    };
    let lineage_send = lineage_sender
        .map(|sender| runtime.spawn(crate::openlineage::send(sender, lineage_stop.clone())));
    let served = runtime.block_on(serve(
        config,
        settings,
        modules,
        args.demo,
        self_update.clone(),
        lineage,
    ));
    if let Some(mut send) = lineage_send {
        lineage_stop.cancel();
        // The sender keeps its own deadline; this one is for a file write that hangs.
        let limit = crate::openlineage::DRAIN + crate::openlineage::FINAL_WRITE;
        let sent = runtime.block_on(async { tokio::time::timeout(limit, &mut send).await });
        if sent.is_err() {
            send.abort();
        }
    }
    if let Some(export) = trace_export {
        // The last spans (the shutdown's own among them) go out before the process ends.
        trace_stop.cancel();
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), export).await });
    }
    if let Err(e) = &served {
        // Logs go to stderr too: one line, in the log's format, so a log collector keeps it
        // with the rest.
        tracing::error!(
            error = crate::error_text::describe(e),
            "Fabrik stopped with an error."
        );
    }
    match served {
        // Also when a module did not stop in time: acknowledged data is in the WAL, which the
        // new binary replays, and exec closes every file and socket this process holds.
        _ if self_update.should_restart() => {
            // The blocking pool's stragglers (a slow file read) are not waited for long.
            runtime.shutdown_timeout(Duration::from_secs(5));
            match self_update.exe() {
                Ok(exe) => {
                    tracing::info!(binary = %exe.display(), "Restarting into the new binary.");
                    let error = crate::self_update::exec(exe);
                    tracing::error!(binary = %exe.display(), error = %error, "The new binary could not be started; the service manager must start it.");
                }
                Err(why) => tracing::error!(error = %why, "No binary to restart into."),
            }
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Library log lines that describe no fault, kept out of the log unless a `FABRIK_LOG`
/// directive names their module (the more specific directive wins):
/// - the OPC UA client library warns "no endpoints" on every client it builds, because
///   Fabrik connects to the configured URL directly instead of listing endpoints there;
/// - the demo's simulated OPC UA server (the only OPC UA server code in the process) logs an
///   error for every connection that closes before the OPC UA handshake, which is what
///   Fabrik's reachability probe before each session is;
/// - the OPC UA crates' INFO lines (certificates written, endpoints listed, connections
///   accepted: some 30 lines at every start of the demo, before the banner); their warnings
///   and errors stay.
///
/// (The crates' library names are `opcua_client`, `opcua_server`, `opcua_core`, `opcua_nodes`,
/// `opcua_types` and `opcua_crypto`.)
const QUIET_LIBRARY_LOGS: &str = "opcua_client=warn,opcua_server=warn,opcua_core=warn,\
     opcua_crypto=warn,opcua_nodes=warn,opcua_types=warn,opcua_client::config=error,\
     opcua_server::session::controller=off";

/// Installs the log (stderr) and, with `[traces]`, the OTLP span layer; returns what the
/// trace exporter needs.
fn init_tracing(
    level: &str,
    traces: Option<&fabrik_runtime::config::TracesSettings>,
    node: &str,
) -> Option<(crate::traces::Exporter, crate::traces::SpanQueue)> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let with_quiet = |directives: &str| {
        tracing_subscriber::EnvFilter::try_new(format!(
            "{QUIET_LIBRARY_LOGS},{}=off,{directives}",
            crate::traces::SPAN_TARGET
        ))
    };
    let filter = std::env::var("FABRIK_LOG")
        .map_err(|_| ())
        .and_then(|directives| with_quiet(&directives).map_err(|_| ()))
        .or_else(|()| with_quiet(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Logs go to stderr so stdout carries only the banner (and stays parseable). Spans are
    // the trace layer's (their target is off in the log's filter), so the log's lines stay
    // free of span prefixes.
    let log = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (spans, export) = match traces {
        Some(t) => {
            let (layer, queue) = crate::traces::OtlpLayer::new(t.sample_ratio);
            fabrik_alert::notify::propagate_trace_context(crate::traces::current_traceparent);
            let exporter = crate::traces::Exporter {
                url: t.url.clone(),
                service: t.service_name.clone(),
                instance: node.to_owned(),
                protocol: t.protocol,
                gzip: t.gzip,
            };
            // Fabrik's own spans, and the warnings and errors inside them.
            let fabrik = tracing_subscriber::filter::Targets::new()
                .with_target(crate::traces::SPAN_TARGET, tracing::Level::INFO)
                .with_target("fabrik", tracing::Level::WARN);
            (Some(layer.with_filter(fabrik)), Some((exporter, queue)))
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(log)
        .with(spans)
        .try_init()
        .is_ok();
    if installed && export.is_some() {
        fabrik_runtime::telemetry::set_spans_exported();
    }
    export
}

fn retention(r: Retention) -> Option<Duration> {
    match r {
        Retention::Forever => None,
        Retention::For(d) => Some(d),
    }
}

pub(crate) fn store_options(s: &Settings) -> StoreOptions {
    StoreOptions {
        data_dir: s.data_dir.clone(),
        partition: s.partition,
        flush_interval: s.flush_interval,
        flush_buffer_size: s.flush_buffer_size,
        compaction_interval: s.compaction_interval,
        retention: retention(s.retention),
        table_retention: {
            let mut tables: std::collections::BTreeMap<_, _> = s
                .table_retention
                .iter()
                .map(|(k, v)| (k.clone(), retention(*v)))
                .collect();
            // A fixed performance reference must outlive the windows it was found among
            // (decision 0069); `[store.tables._performance_references]` may still say otherwise.
            tables
                .entry(crate::performance::REFERENCES_TABLE.to_owned())
                .or_insert(None);
            tables
        },
        blob_sweep_interval: s.blob_sweep_interval,
        blob_min_age: s.blob_min_age,
        query_timeout: s.query_timeout,
        query_threads: s.query_threads,
        wal_hold: None,
        objects: s
            .objects
            .as_ref()
            .map(|o| fabrik_store::objects::ObjectStorage {
                url: o.url.clone(),
                endpoint: o.endpoint.clone(),
                region: o.region.clone(),
                allow_http: o.allow_http,
                read_only: o.read_only,
            }),
        local_blob_limit: s.objects.as_ref().and_then(|o| o.local_blob_limit),
        segment_cache: s.objects.as_ref().and_then(|o| o.segment_cache),
    }
}

/// The admin token: from the config/environment, or `<data_dir>/admin.token`, or newly
/// generated (and then printed once).
fn admin_token(settings: &Settings) -> anyhow::Result<(String, Option<PathBuf>, bool)> {
    if let Some(t) = &settings.admin_token {
        return Ok((t.clone(), None, false));
    }
    let path = settings.data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            return Ok((text.trim().to_owned(), Some(path), false));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    let token = format!(
        "fbk_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((token, Some(path), true))
}

/// What `/api/v1/compliance` assesses from the configuration.
fn compliance_facts(
    config: &Config,
    settings: &Settings,
    modules: &[Module],
) -> fabrik_api::compliance::ComplianceFacts {
    use fabrik_runtime::config::Retention;
    let trust = crate::model_signature::ModelTrust::from_config(&config.models).ok();
    let mut kept_forever: Vec<String> = settings
        .table_retention
        .iter()
        .filter(|(_, retention)| **retention == Retention::Forever)
        .map(|(table, _)| table.clone())
        .collect();
    if settings.retention == Retention::Forever {
        kept_forever.insert(0, "*".to_owned());
    }
    let writable_modbus_points = if modules.contains(&Module::Modbus) {
        config
            .modbus
            .devices
            .iter()
            .flat_map(|d| &d.maps)
            .flat_map(|m| &m.points)
            .filter(|p| p.writable)
            .count()
    } else {
        0
    };
    fabrik_api::compliance::ComplianceFacts {
        mqtt_plain_listener: settings.mqtt.listen.is_some(),
        mqtt_tls_listener: settings.mqtt.tls_listen.is_some(),
        mqtt_client_ca: !config.mqtt.tls_client_ca.trim().is_empty(),
        mqtt_client_certificate_required: config.mqtt.tls_require_client_cert,
        mqtt_anonymous: config.mqtt.allow_anonymous,
        mqtt_runs_here: modules.contains(&Module::Mqtt),
        http_tls: config.http.tls,
        http_generated_certificate: config.http.tls && config.http.tls_cert.trim().is_empty(),
        clear_text_links: clear_text_links(config),
        mqtt_acl_rules: config.mqtt.acl.len(),
        writable_points: writable_modbus_points
            + if modules.contains(&Module::Ingest) && modules.contains(&Module::Mqtt) {
                config.sparkplug.setpoints.len()
            } else {
                0
            }
            + if modules.contains(&Module::Opcua) {
                config
                    .opcua
                    .servers
                    .iter()
                    .flat_map(|s| &s.items)
                    .filter(|i| i.writable)
                    .count()
            } else {
                0
            },
        writable_modbus_points,
        models_signature_required: trust.as_ref().is_some_and(|t| t.required()),
        models_trusted_keys: config.models.trusted_keys.len(),
        release_repository: Some(config.updates.url.trim().to_owned())
            .filter(|url| !url.is_empty() && modules.contains(&Module::Updates)),
        binary_updates: config.updates.binary,
        binary_rollback_after_failed_runs: config.updates.rollback_after_failed_runs,
        tables_kept_forever: kept_forever,
        raw_retention: settings.raw_retention.map(|r| match r {
            Retention::Forever => "ever".to_owned(),
            Retention::For(d) => duration_text(d),
        }),
        admin_token_source: if settings.admin_token.is_some() {
            "the environment or configuration (auth.admin_token)".to_owned()
        } else {
            settings.data_dir.join("admin.token").display().to_string()
        },
        admin_token_file_mode: token_file_mode(settings),
        alert_retention: config.alerting.retention.trim().to_owned(),
        // The installed filter answers, whatever FABRIK_LOG or log.level said.
        audit_lines_logged: tracing::enabled!(target: "fabrik::audit", tracing::Level::INFO),
        attestation_required: settings.attestation.required,
        attestation_endorsed: settings.attestation.require_endorsement,
        lineage_to: settings.openlineage.as_ref().map(|lineage| {
            let mut to: Vec<String> = lineage.url.iter().cloned().collect();
            to.extend(lineage.file.iter().map(|f| f.display().to_string()));
            to.join(" and ")
        }),
    }
}

/// The configured connections that carry data or credentials in clear, for the compliance
/// report's transport control.
fn clear_text_links(config: &Config) -> Vec<String> {
    let mut links = Vec::new();
    for bridge in &config.bridges {
        if !bridge.tls {
            links.push(format!("bridge `{}` connects without TLS", bridge.name));
        }
    }
    for notifier in &config.alerting.notifiers {
        let url = notifier.url.trim();
        let clear = match notifier.kind.as_str() {
            "webhook" => url.starts_with("http://"),
            "email" => url.starts_with("smtp://") && !notifier.starttls,
            "mqtt" => url.starts_with("mqtt://"),
            _ => false,
        };
        if clear {
            links.push(format!(
                "notifier `{}` ({}) sends without TLS",
                notifier.name, notifier.kind
            ));
        }
    }
    for server in &config.opcua.servers {
        if server.security_policy == fabrik_runtime::opcua::SecurityPolicyName::None {
            links.push(format!(
                "OPC UA server `{}` is read with security policy None",
                server.id
            ));
        }
    }
    for (section, url, ca) in [
        ("uplink", &config.uplink.url, &config.uplink.tls_ca),
        ("hub", &config.hub.url, &config.hub.tls_ca),
    ] {
        let url = url.trim();
        if !url.is_empty() && ca.trim().is_empty() && !url.starts_with("tls://") {
            links.push(format!("[{section}] reaches NATS at {url} without TLS"));
        }
    }
    let updates = config.updates.url.trim();
    if updates.starts_with("http://") {
        links.push(format!(
            "[updates] reads the release repository at {updates} without TLS (its files are \
             signed, but the models and the token travel in clear)"
        ));
    }
    let lineage = config.openlineage.url.trim();
    if lineage.starts_with("http://") {
        links.push(format!(
            "[openlineage] sends lineage events to {lineage} without TLS (table, column and \
             device names{})",
            if config.openlineage.api_key.trim().is_empty() {
                ""
            } else {
                ", and its API key"
            }
        ));
    }
    if !config.modbus.devices.is_empty() {
        links.push(format!(
            "{} Modbus TCP device(s): the protocol has no encryption (keep them on an isolated \
             network segment)",
            config.modbus.devices.len()
        ));
    }
    links
}

/// The admin token file's permission bits, when the token comes from it.
fn token_file_mode(settings: &Settings) -> Option<u32> {
    if settings.admin_token.is_some() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(settings.data_dir.join("admin.token"))
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    None
}

/// A duration in the largest whole unit of days, hours, minutes or seconds (`7d`).
pub(crate) fn duration_text(d: std::time::Duration) -> String {
    let seconds = d.as_secs();
    [(86_400, "d"), (3_600, "h"), (60, "m")]
        .iter()
        .find(|(unit, _)| seconds >= *unit && seconds.is_multiple_of(*unit))
        .map_or_else(
            || format!("{seconds}s"),
            |(unit, name)| format!("{}{name}", seconds / unit),
        )
}

/// Writes `bytes` to a new file (never over an existing one) readable by the owner only, and
/// syncs it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The release repository `[releases]` has this process serve, if any.
fn release_repo(config: &Config) -> Option<Arc<fabrik_api::updates::ReleaseRepo>> {
    let dir = config.releases.repo.trim();
    if dir.is_empty() {
        return None;
    }
    let token = Some(config.releases.token.trim().to_owned()).filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::warn!(
            repo = dir,
            "The release repository is served without a token ([releases] token): its files \
             are signed, but anyone who can connect can read the models."
        );
    }
    Some(Arc::new(fabrik_api::updates::ReleaseRepo {
        dir: dir.into(),
        token,
    }))
}

/// Shared between module starts: what earlier modules produced.
#[derive(Default)]
struct Wiring {
    store: Option<Arc<Store>>,
    registry: Option<fabrik_registry::Registry>,
    ingest: Option<crate::connect::IngestWiring>,
    /// Alerting, shared with the API.
    alerting: Option<Arc<fabrik_alert::Alerting>>,
    /// Alert rule states, shared with the API.
    alert_rules: Option<fabrik_api::alert_rules::AlertRuleBoard>,
    /// Changes to the alert rules, for the API.
    alert_rule_control: Option<Arc<dyn fabrik_api::alert_rules::AlertRuleControl>>,
    /// Pipeline states, shared with the API.
    pipelines: Option<fabrik_api::pipelines::PipelineBoard>,
    /// Changes to the pipelines, for the API.
    pipeline_control: Option<Arc<dyn fabrik_api::pipelines::PipelineControl>>,
    /// The MQTT endpoint's broker (alert notifiers publish into it).
    broker: Option<Arc<fabrik_connect::mqtt::broker::Broker>>,
    /// The address the MQTT endpoint listens on (for the demo plant).
    mqtt_address: Option<std::net::SocketAddr>,
    /// Lines printed once every module runs.
    banner: Vec<String>,
    /// What the process runs with, for `/api/v1/compliance`.
    compliance: Arc<fabrik_api::compliance::ComplianceFacts>,
    /// The edge → hub link's state, written by the uplink and hub modules.
    links: fabrik_api::links::LinkBoard,
    /// Backfills to the hub, for the API.
    backfill: Option<Arc<dyn fabrik_api::links::BackfillControl>>,
    /// The connectors that write to devices' writable points, for the API.
    setpoints: Vec<Arc<dyn fabrik_api::setpoints::SetpointControl>>,
    /// The release repository's last check, written by the updates module.
    updates: fabrik_api::updates::UpdateBoard,
    /// Where OpenLineage events go (`[openlineage]`), if anywhere.
    lineage: Option<crate::openlineage::Emitter>,
}

async fn start_store(
    settings: &Settings,
    wal_hold: Option<u64>,
    wiring: &mut Wiring,
) -> Result<ServiceHandle, String> {
    let mut options = store_options(settings);
    options.wal_hold = wal_hold;
    let read_only = options
        .objects
        .as_ref()
        .and_then(|o| Some((o.url.clone(), o.read_only?)));
    let store = Store::open(options).await.map_err(|e| e.to_string())?;
    let owner = read_only.is_none();
    if let Some((url, every)) = read_only {
        wiring.banner.push(format!(
            "  Store:     read-only query node over {url}: what its owning store persisted, \
             read again every {every:?}"
        ));
    }
    if wal_hold.is_some() {
        // Before any other module writes: a first start's uplink sends from here.
        crate::uplink::prepare_cursor(&settings.data_dir, &store)?;
    }
    wiring.store = Some(store.clone());
    let stop = CancellationToken::new();
    let background_stop = stop.child_token();
    let background = tokio::spawn(store.clone().run_background(background_stop.clone()));
    // A read-only query node writes nothing: the owner's store rolls its tables up.
    let rollups = (owner && !settings.rollups.is_empty()).then(|| {
        crate::rollups::start(
            store.clone(),
            settings.rollups.clone(),
            background_stop.clone(),
        )
    });
    let token = stop.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        background_stop.cancel();
        if let Some(rollups) = rollups {
            let _ = rollups.await;
        }
        let _ = background.await;
        // Writes still in the WAL queue are committed; acknowledged data is in the WAL.
        store.close().await;
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

/// The HTTPS acceptor when `http.tls` is on: the configured certificate, or one generated in
/// `<data_dir>/tls/http-cert.pem`.
fn http_tls(config: &Config, settings: &Settings) -> Result<Option<TlsAcceptor>, String> {
    if !config.http.tls {
        return Ok(None);
    }
    let file = |text: &str| {
        Some(text.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(Into::into)
    };
    // A generated certificate names this machine and the address it listens on, so clients
    // elsewhere that check the host name accept it once they trust its file.
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let ip = settings.http_listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let acceptor = fabrik_connect::mqtt::tls::TlsAcceptor::new(&TlsSettings {
        cert: file(&config.http.tls_cert),
        key: file(&config.http.tls_key),
        client_ca: None,
        require_client_cert: false,
        generated_dir: settings.data_dir.join("tls"),
        generated_names: names,
        section: "http",
    })
    .map_err(|e| match e {
        fabrik_connect::ConnectError::Tls(why) => format!("HTTPS (http.tls): {why}"),
        other => other.to_string(),
    })?;
    Ok(Some(acceptor.rustls()))
}

async fn start_http(
    config: &Config,
    settings: &Settings,
    wiring: &mut Wiring,
    services: fabrik_runtime::Services,
    token: &AdminToken,
) -> Result<ServiceHandle, String> {
    let store = wiring
        .store
        .clone()
        .ok_or("the http module needs the store module")?;
    let listener = tokio::net::TcpListener::bind(settings.http_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (http.listen): {e}",
                settings.http_listen
            )
        })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = http_tls(config, settings)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let generated_cert = (tls.is_some() && config.http.tls_cert.trim().is_empty())
        .then(|| settings.data_dir.join("tls").join("http-cert.pem"));
    let writes = wiring
        .lineage
        .clone()
        .map(|emitter| Arc::new(crate::ingest_lineage::IngestLineage::http(emitter, scheme)));
    let state = ApiState {
        store: store.clone(),
        services,
        auth: Auth::new(token.token.clone()),
        metrics: fabrik_runtime::telemetry::prometheus(),
        max_body_size: settings.http_max_body_size,
        registry: wiring.registry.clone(),
        pipelines: wiring.pipelines.clone(),
        pipeline_control: wiring.pipeline_control.clone(),
        alerting: wiring.alerting.clone(),
        alert_rules: wiring.alert_rules.clone(),
        alert_rule_control: wiring.alert_rule_control.clone(),
        compliance: wiring.compliance.clone(),
        links: wiring.links.clone(),
        backfill: wiring.backfill.clone(),
        setpoints: (!wiring.setpoints.is_empty()).then(|| {
            Arc::new(crate::setpoints::Connectors(wiring.setpoints.clone()))
                as Arc<dyn fabrik_api::setpoints::SetpointControl>
        }),
        asyncapi: crate::asyncapi::document().into(),
        updates: wiring.updates.clone(),
        release_repo: release_repo(config),
        attestation: settings.attestation.clone(),
        stopping: Default::default(),
        https: tls.is_some(),
        kpi_meter: Some(Arc::new(crate::usecases::StoreKpiMeter {
            store: store.clone(),
            alerting: wiring.alerting.clone(),
            hub: !config.hub.url.trim().is_empty(),
        })),
        writes: writes
            .clone()
            .map(|w| w as Arc<dyn fabrik_api::WriteObserver>),
    };
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        let served = fabrik_api::serve(listener, state, shutdown, tls)
            .await
            .map_err(|e| format!("HTTP server: {e}"));
        if let Some(writes) = writes {
            writes.ended();
        }
        served
    });
    let mut lines = vec![
        format!("Fabrik is listening on {scheme}://{addr}"),
        format!(
            "  API:       {scheme}://{addr}/api/v1   (contract: `fabrik openapi`, or \
             /api/v1/openapi.json with the token)"
        ),
        format!("  Dashboard: {scheme}://{addr}/"),
        format!("  Health:    {scheme}://{addr}/ready    Metrics: {scheme}://{addr}/metrics"),
    ];
    // Client commands look for Fabrik at its default address; tell them where it is.
    if addr.to_string() != "127.0.0.1:7800" || scheme == "https" {
        lines.push(format!(
            "  Clients:   export FABRIK_URL={scheme}://{}",
            crate::demo::reachable(addr)
        ));
    }
    if let Some(cert) = generated_cert {
        lines.push(format!(
            "             export FABRIK_CA_CERT={}   (the generated certificate: trust it, or \
             configure http.tls_cert)",
            cert.display()
        ));
    }
    lines.append(&mut wiring.banner);
    wiring.banner = lines;
    Ok(ServiceHandle { stop, task })
}

/// The admin token and where it came from.
struct AdminToken {
    token: String,
    path: Option<PathBuf>,
    generated: bool,
}

impl AdminToken {
    fn banner(&self) -> Vec<String> {
        match (&self.path, self.generated) {
            (Some(path), true) => vec![
                format!(
                    "  Admin token (shown once; also stored in {} with mode 0600):",
                    path.display()
                ),
                format!("    {}", self.token),
            ],
            (Some(path), false) => vec![format!("  Admin token: in {}", path.display())],
            (None, _) => {
                vec!["  Admin token: from FABRIK__AUTH__ADMIN_TOKEN / auth.admin_token".into()]
            }
        }
    }
}

async fn serve(
    mut config: Config,
    mut settings: Settings,
    modules: Vec<Module>,
    demo: bool,
    self_update: crate::self_update::SelfUpdate,
    lineage: Option<crate::openlineage::Emitter>,
) -> anyhow::Result<()> {
    if demo && settings.rollups.is_empty() {
        // Something to see of rollups (decision 0085): the pumps' signals per minute.
        settings
            .rollups
            .push(fabrik_runtime::config::RollupSettings {
                table: "pump".into(),
                into: "pump_1m".into(),
                every: Duration::from_secs(60),
                fields: Vec::new(),
                lateness: Duration::from_secs(60),
                hold: Duration::from_secs(3600),
            });
    }
    // A file-size limit (ulimit -f) must surface as EFBIG → 507 on write, not kill the
    // process: listening for SIGXFSZ replaces its default action (terminate).
    #[cfg(target_os = "linux")]
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25)).ok();
    // Heard for the whole run, the start and the stop included: a SIGTERM while an install
    // swaps the binary or while the modules stop for the restart means stop, not restart.
    // During the start it ends the process at once, as the signal's default action did, but
    // first records the stop as clean, so an operator restarting a new binary while it
    // starts does not count as a failed run of it (decision 0066).
    let signalled = CancellationToken::new();
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (signalled, self_update) = (signalled.clone(), self_update.clone());
        let (started, data_dir) = (started.clone(), settings.data_dir.clone());
        tokio::spawn(async move {
            fabrik_runtime::shutdown::signal().await;
            self_update.note_stop_signal();
            if !started.load(std::sync::atomic::Ordering::SeqCst) {
                self_update.note_clean_stop(&data_dir);
                tracing::info!("Stopped while starting.");
                std::process::exit(0);
            }
            signalled.cancel();
        })
    };
    let names: Vec<&'static str> = modules.iter().map(|m| m.name()).collect();
    let mut manager = ServiceManager::new(&names);
    let services = manager.services();
    let mut wiring = Wiring {
        lineage,
        ..Wiring::default()
    };
    let needs_token = modules
        .iter()
        .any(|m| matches!(m, Module::Http | Module::Mqtt));
    let token = if needs_token {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {} (store.data_dir)",
                settings.data_dir.display()
            )
        })?;
        let (token, path, generated) = admin_token(&settings)?;
        Some(AdminToken {
            token,
            path,
            generated,
        })
    } else {
        None
    };
    let demo_stop = CancellationToken::new();
    // The demo's Modbus and OPC UA servers must listen before those modules read their
    // configuration.
    let demo_field = if demo {
        Some(
            crate::demo::start_field(
                &mut config,
                &settings.data_dir,
                modules.contains(&Module::Modbus),
                modules.contains(&Module::Opcua),
                &demo_stop,
            )
            .await
            .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    // After the token file is made, so its mode is read, and after the demo's field devices
    // joined the configuration, so their links are assessed too.
    wiring.compliance = Arc::new(compliance_facts(&config, &settings, &modules));
    let mut start_error = None;
    for module in &modules {
        let result = match module {
            Module::Store => {
                let started = manager
                    .start(module.name(), || {
                        // With the uplink in this process, no WAL is deleted before it says
                        // what the hub has.
                        let hold = modules
                            .contains(&Module::Uplink)
                            .then(|| crate::uplink::initial_wal_hold(&config))
                            .flatten();
                        start_store(&settings, hold, &mut wiring)
                    })
                    .await;
                // The store holds the data directory's lock now: this process, and no other
                // started on the same directory, keeps the list of open lineage runs there
                // (decision 0082). The store starts first, so the old runs end before any
                // new one begins.
                if let (Some(lineage), Some(_)) = (&wiring.lineage, &wiring.store) {
                    lineage.keep_open_runs_in(&settings.data_dir);
                }
                started
            }
            Module::Registry => {
                manager
                    .start(module.name(), || {
                        crate::connect::start_registry(&settings, &mut wiring.registry)
                    })
                    .await
            }
            Module::Ingest => {
                let store = wiring.store.clone();
                let registry = wiring.registry.clone();
                let lineage = wiring.lineage.clone();
                let started = manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the ingest module needs the store module")?;
                        crate::connect::start_ingest(
                            &config,
                            &settings,
                            store,
                            registry,
                            lineage,
                            &mut wiring.ingest,
                        )
                        .await
                    })
                    .await;
                if let Some(ingest) = wiring
                    .ingest
                    .as_ref()
                    .filter(|i| !i.commands.points().is_empty())
                {
                    wiring
                        .setpoints
                        .push(Arc::new(crate::sparkplug::SparkplugSetpoints(
                            ingest.commands.clone(),
                        )));
                }
                started
            }
            Module::Mqtt => {
                let admin = token.as_ref().map(|t| t.token.clone());
                manager
                    .start(module.name(), || async {
                        let ingest = wiring
                            .ingest
                            .as_ref()
                            .ok_or("the mqtt module needs the ingest module")?;
                        let (handle, addresses, broker) = crate::connect::start_mqtt(
                            &config,
                            &settings,
                            admin,
                            wiring.registry.clone(),
                            ingest,
                        )
                        .await?;
                        wiring.mqtt_address = addresses.first().map(|(a, _)| *a);
                        wiring.broker = Some(broker);
                        for (addr, tls) in addresses {
                            wiring.banner.push(if tls {
                                format!("  MQTT/TLS:  mqtts://{addr}")
                            } else {
                                format!("  MQTT:      mqtt://{addr}   (user = device id, password = device token)")
                            });
                        }
                        Ok(handle)
                    })
                    .await
            }
            Module::Bridge => {
                let ingest = wiring
                    .ingest
                    .as_ref()
                    .map(|i| (i.tx.clone(), i.commands.clone()));
                manager
                    .start(module.name(), || async {
                        let (ingest, commands) =
                            ingest.ok_or("the bridge module needs the ingest module")?;
                        crate::bridge::start(&config, ingest, commands).await
                    })
                    .await
            }
            Module::Modbus => {
                let store = wiring.store.clone();
                let registry = wiring.registry.clone();
                let lineage = wiring.lineage.clone();
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the modbus module needs the store module")?;
                        let (handle, setpoints) =
                            crate::modbus::start(&config, store, registry, lineage).await?;
                        wiring.setpoints.push(setpoints);
                        Ok(handle)
                    })
                    .await
            }
            Module::Opcua => {
                let store = wiring.store.clone();
                let registry = wiring.registry.clone();
                let lineage = wiring.lineage.clone();
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the opcua module needs the store module")?;
                        let (handle, setpoints) =
                            crate::opcua::start(&config, store, registry, lineage).await?;
                        wiring.setpoints.push(setpoints);
                        Ok(handle)
                    })
                    .await
            }
            Module::Pipelines => {
                let store = wiring.store.clone();
                let registry = wiring.registry.clone();
                let lineage = wiring.lineage.clone();
                let board = fabrik_api::pipelines::PipelineBoard::default();
                wiring.pipelines = Some(board.clone());
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the pipelines module needs the store module")?;
                        let (handle, control) = crate::pipelines::start(
                            &config,
                            demo,
                            &settings.data_dir,
                            store,
                            registry,
                            board,
                            lineage,
                        )
                        .await?;
                        wiring.pipeline_control = Some(control);
                        Ok(handle)
                    })
                    .await
            }
            Module::Alerts => {
                let store = wiring.store.clone();
                let broker = wiring.broker.clone();
                let registry = wiring.registry.clone();
                let scheme = if config.http.tls { "https" } else { "http" };
                let external_url = format!("{scheme}://{}", settings.http_listen);
                // On every interface, the listen address is no address a receiver can open.
                if settings.http_listen.ip().is_unspecified()
                    && config.alerting.external_url.is_empty()
                    && !config.alerting.notifiers.is_empty()
                {
                    tracing::warn!(
                        link = %external_url,
                        "Notifications link to the HTTP listen address, which is every interface \
                         here: set alerting.external_url to the address people open."
                    );
                }
                let board = fabrik_api::alert_rules::AlertRuleBoard::default();
                wiring.alert_rules = Some(board.clone());
                let lineage = wiring.lineage.clone();
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the alerts module needs the store module")?;
                        let module = crate::alerts::start(
                            &config,
                            &settings.data_dir,
                            external_url,
                            demo,
                            store,
                            broker.as_ref(),
                            registry,
                            board,
                            lineage,
                        )
                        .await?;
                        wiring.alerting = Some(module.alerting);
                        wiring.alert_rule_control = Some(module.rules);
                        Ok(module.handle)
                    })
                    .await
            }
            Module::Uplink => {
                let store = wiring.store.clone();
                let links = wiring.links.clone();
                let registry = wiring.registry.clone();
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the uplink module needs the store module")?;
                        let (handle, backfill) = crate::uplink::start(
                            &config,
                            &settings.data_dir,
                            store,
                            links,
                            registry,
                        )
                        .await?;
                        wiring.backfill = backfill;
                        Ok(handle)
                    })
                    .await
            }
            Module::Hub => {
                let store = wiring.store.clone();
                let links = wiring.links.clone();
                let lineage = wiring.lineage.clone();
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the hub module needs the store module")?;
                        crate::hub::start(&config, store, links, lineage).await
                    })
                    .await
            }
            Module::Updates => {
                let control = wiring.pipeline_control.clone();
                let alert_rules = wiring.alert_rule_control.clone();
                let registry = wiring.registry.clone();
                let store = wiring.store.clone();
                let board = wiring.updates.clone();
                manager
                    .start(module.name(), || async {
                        let control =
                            control.ok_or("the updates module needs the pipelines module")?;
                        let store = store.ok_or("the updates module needs the store module")?;
                        crate::updates::start(
                            &config,
                            &settings.data_dir,
                            self_update.clone(),
                            control,
                            alert_rules,
                            registry,
                            store,
                            board,
                        )
                        .await
                    })
                    .await
            }
            Module::Releases => {
                manager
                    .start(module.name(), || {
                        crate::release_signer::start(&config, &settings.data_dir)
                    })
                    .await
            }
            Module::Kpis => {
                let store = wiring.store.clone();
                let registry = wiring.registry.clone();
                let alerting = wiring.alerting.clone();
                let pipelines = wiring.pipeline_control.clone();
                let lineage = wiring.lineage.clone();
                manager
                    .start(module.name(), || async {
                        let store = store.ok_or("the kpis module needs the store module")?;
                        let registry =
                            registry.ok_or("the kpis module needs the registry module")?;
                        // A newcomer sees the demo's KPIs recorded within minutes.
                        let every = config
                            .usecases
                            .record_interval(demo)
                            .map_err(|e| format!("usecases.record_every: {e}"))?;
                        let meter = crate::usecases::StoreKpiMeter {
                            store: store.clone(),
                            alerting,
                            hub: !config.hub.url.trim().is_empty(),
                        };
                        // The uplink's name first: the one a hub knows this node by.
                        let node = Some(config.uplink.node.trim())
                            .filter(|n| !n.is_empty())
                            .map_or_else(|| crate::updates::node_name(&config), str::to_owned);
                        Ok(crate::kpi_series::start(
                            every,
                            node,
                            crate::kpi_series::Sources {
                                store,
                                registry,
                                meter,
                                pipelines,
                                lineage,
                            },
                        ))
                    })
                    .await
            }
            Module::Http => {
                let services = services.clone();
                match &token {
                    Some(token) => {
                        manager
                            .start(module.name(), || {
                                start_http(&config, &settings, &mut wiring, services, token)
                            })
                            .await
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            start_error = Some(e);
            break;
        }
    }
    let mut demo_task = None;
    if start_error.is_none() {
        if let Some(t) = &token {
            wiring.banner.extend(t.banner());
        }
        if demo {
            match crate::demo::start(
                &wiring.registry,
                wiring.mqtt_address,
                demo_field.as_ref(),
                demo_stop.clone(),
            )
            .await
            {
                Ok((task, lines)) => {
                    wiring.banner.extend(lines);
                    demo_task = Some(task);
                }
                Err(message) => {
                    start_error = Some(fabrik_runtime::RuntimeError::ServiceFailed {
                        service: "demo",
                        message,
                    })
                }
            }
        }
    }
    // From here a stop signal stops the modules in order.
    started.store(true, std::sync::atomic::Ordering::SeqCst);
    if start_error.is_none() {
        for line in &wiring.banner {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
        tracing::info!(modules = ?names, "Fabrik is ready.");
    }
    // A new binary confirms itself once it has run `confirm_after` with every module up: a
    // module that stops on its own ends the run first.
    let confirming = CancellationToken::new();
    let confirmation = (start_error.is_none() && self_update.awaiting_confirmation()).then(|| {
        let (self_update, stop) = (self_update.clone(), confirming.clone());
        let data_dir = settings.data_dir.clone();
        let after = fabrik_runtime::units::parse_duration(&config.updates.confirm_after)
            .unwrap_or(DEFAULT_CONFIRM_AFTER);
        tokio::spawn(async move {
            let confirm = async {
                tokio::time::sleep(after).await;
                self_update.confirm(&data_dir, after).await;
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = confirm => {}
            }
        })
    });
    let mut exited = None;
    if start_error.is_none() {
        let stop_or_restart = async {
            tokio::select! {
                () = signalled.cancelled() => {}
                () = self_update.restart_wanted() => {}
            }
        };
        match manager.run(stop_or_restart).await {
            StopReason::Signal if self_update.should_restart() => {
                tracing::info!("Stopping to restart into the new binary.");
            }
            StopReason::Signal => tracing::info!("Stopping."),
            StopReason::ServiceExited(name) => {
                tracing::error!(service = name, "A service stopped on its own; stopping.");
                exited = Some(name);
            }
        }
    }
    confirming.cancel();
    if let Some(confirmation) = confirmation {
        let _ = confirmation.await;
    }
    demo_stop.cancel();
    if let Some(task) = demo_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    if let Some(field) = demo_field {
        let _ = tokio::time::timeout(Duration::from_secs(3), field.stopped()).await;
    }
    let stopped = manager.stop_all(STOP_DEADLINE).await;
    listener.abort();
    // A stop the signal asked for is clean, even when a module missed the deadline; a run that
    // failed to start or lost a module stays counted as failed.
    if start_error.is_none() && exited.is_none() && !self_update.should_restart() {
        self_update.note_clean_stop(&settings.data_dir);
    }
    if let Some(e) = start_error {
        return Err(e.into());
    }
    stopped?;
    if let Some(name) = exited {
        anyhow::bail!("service `{name}` stopped unexpectedly");
    }
    tracing::info!("Fabrik stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An uplink or hub reaching NATS without TLS is a clear-text link in the compliance
    /// report; with a CA file or a tls:// address it is not, and an unset one is not a link.
    #[test]
    fn nats_links_without_tls_are_clear_text() {
        let mut config = Config::default();
        assert!(clear_text_links(&config).is_empty());
        config.uplink.url = "nats://hub.plant:4222".into();
        config.hub.url = "tls://127.0.0.1:4222".into();
        assert_eq!(
            clear_text_links(&config),
            ["[uplink] reaches NATS at nats://hub.plant:4222 without TLS"]
        );
        config.uplink.tls_ca = "/etc/fabrik/nats-ca.pem".into();
        assert!(clear_text_links(&config).is_empty());
    }

    /// Lineage events name tables, columns and devices, and carry the catalog's key.
    #[test]
    fn lineage_events_over_plain_http_are_clear_text() {
        let mut config = Config::default();
        config.openlineage.url = "https://marquez.plant:5000".into();
        assert!(clear_text_links(&config).is_empty());
        config.openlineage.url = "http://marquez.plant:5000".into();
        config.openlineage.api_key = "k".into();
        let links = clear_text_links(&config);
        assert_eq!(links.len(), 1, "{links:?}");
        assert!(
            links[0].contains("http://marquez.plant:5000") && links[0].contains("API key"),
            "{links:?}"
        );
    }
}
