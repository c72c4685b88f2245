//! The `fabrik` binary: the command line and the wiring of every module. It is the only crate
//! that knows every implementation.

mod age;
mod alert_cli;
mod alert_fill;
mod alerts;
mod asyncapi;
mod attestation_cli;
mod audit_cli;
mod bench;
mod bench_mqtt;
mod blob_cli;
mod bridge;
mod client;
mod clips;
mod columns;
mod compliance_cli;
mod config_check;
mod connect;
mod define_cli;
mod demo;
mod device_cli;
mod device_mirror;
mod device_state;
mod drift;
mod error_text;
mod eval;
mod hub;
mod hub_lineage;
mod image_policy;
mod ingest_lineage;
mod key_report;
mod kpi_series;
mod lineage_cli;
mod modbus;
mod model_cli;
mod model_signature;
mod modules;
mod nats_link;
mod node_keys;
mod opcua;
mod opcua_cli;
mod open_runs;
mod openlineage;
mod otlp_proto;
mod performance;
mod pipeline_cli;
mod pipeline_lineage;
mod pipelines;
mod privacy_cli;
mod readings;
mod registry_cli;
mod release;
mod release_cli;
mod release_keys;
mod release_proposals;
mod release_retention;
mod release_root_keys;
mod release_signer;
mod rollups;
mod run;
mod sealed_identity;
mod self_update;
mod setpoints;
mod shadow;
mod shadow_kpis;
mod sparkplug;
mod sql_text;
mod store_cli;
mod stored;
mod table_runs;
#[cfg(test)]
mod test_store;
mod traces;
mod updates;
mod uplink;
mod uplink_backfill;
mod uplink_cli;
mod usecase_cli;
mod usecases;
mod user_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc: on the MQTT path glibc malloc spent a third of the CPU in arena locks and
/// consolidation; with jemalloc the same load stores 1.5–1.8x more messages (decision 0016).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Fabrik: an open-source AIoT platform in one binary.
#[derive(Debug, Parser)]
#[command(name = "fabrik", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Fabrik: every module on embedded defaults, or the modules named by --target.
    Run(run::RunArgs),
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run SQL against a running Fabrik.
    Query(client::QueryArgs),
    /// Write line protocol from a file (or - for stdin) to a running Fabrik.
    Write(client::WriteArgs),
    /// Store a clip or file (WAV clips become signals pipelines read) and fetch it back.
    Blob(blob_cli::BlobArgs),
    /// Register, list, show and remove devices of a running Fabrik.
    Device(device_cli::DeviceArgs),
    /// Browse an OPC UA server's nodes (types, declared ranges and units) to configure its
    /// items.
    Opcua(opcua_cli::OpcUaArgs),
    /// Create, list and remove the users who sign in with a password, and set passwords.
    User(user_cli::UserArgs),
    /// Read the audit log (changes made through the API, sign-ins) and check its hash chain.
    Audit(audit_cli::AuditArgs),
    /// Move a stopped node's registry from its SQLite file into a PostgreSQL database.
    Registry(registry_cli::RegistryArgs),
    /// Restore a node whose data directory was lost from its segments in object storage.
    Store(store_cli::StoreArgs),
    /// Assess a running Fabrik against IEC 62443-3-3, NIST 800-53 and GDPR controls: the
    /// evidence its configuration and live state give, and the gaps.
    Compliance(compliance_cli::ComplianceArgs),
    /// The edge → hub link: this node's uplink, or what a hub receives.
    Uplink(uplink_cli::UplinkArgs),
    /// Publish models, pipelines and alert rules to a fleet as a signed release repository
    /// (TUF): make it, add, remove, re-sign, list. Works on the repository's files and keys,
    /// offline.
    Release(release_cli::ReleaseArgs),
    /// What a running node last found in its release repository, and what it installed.
    Updates(release_cli::UpdatesArgs),
    /// Everything kept about one person, for their right of access (GDPR Art. 15).
    Privacy(privacy_cli::PrivacyArgs),
    /// List, acknowledge and silence alerts.
    Alert(alert_cli::AlertArgs),
    /// List, show, define (from a file) and remove inference pipelines of a running Fabrik.
    Pipeline(pipeline_cli::PipelineArgs),
    /// Upload, list and delete the ONNX models pipelines name in `model_name`.
    Model(model_cli::ModelArgs),
    /// Use cases: their business KPIs measured from the data, their stage (pilot, scale-up,
    /// enterprise) and the gates between stages.
    Usecase(usecase_cli::UseCaseArgs),
    /// Run a simulated plant against a running Fabrik (devices publish over MQTT).
    Sim(demo::SimArgs),
    /// Score the anomaly detectors on NAB or SKAB with the benchmarks' own protocols.
    Eval(eval::EvalArgs),
    /// Load generators for the benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Print the AsyncAPI document of the MQTT topics and the uplink's NATS subject.
    Asyncapi,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file (and FABRIK__* overrides); lists every problem at once.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the commented example configuration (all defaults).
    Example,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Generate TSBS-IoT-like truck data and write it over HTTP as fast as the server takes it.
    Ingest(bench::IngestArgs),
    /// Many MQTT connections publishing single-reading JSON messages (Fabrik or any broker).
    Mqtt(bench_mqtt::MqttArgs),
}

/// A client command whose reader stopped early (`fabrik query … | head -1`) ends quietly, as
/// Unix tools do, instead of panicking with a backtrace: Rust ignores SIGPIPE, so `println!`
/// panics on the closed pipe. Not for `fabrik run`, whose output must not vanish silently.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}

fn main() -> ExitCode {
    // One TLS implementation (rustls with ring) for every HTTP client of the process; the
    // clients built without their own TLS settings (the CLI's) take it from here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        quiet_on_closed_stdout();
    }
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Config { command } => match command {
            ConfigCommand::Example => {
                print!("{}", fabrik_runtime::config::EXAMPLE);
                ExitCode::SUCCESS
            }
            ConfigCommand::Check { file } => {
                let origin = file.display().to_string();
                match config_check::load(Some(&file), &origin) {
                    Ok(_) => {
                        println!("{origin}: OK");
                        ExitCode::SUCCESS
                    }
                    Err(failure) => {
                        config_check::report("", &origin, failure);
                        ExitCode::from(2)
                    }
                }
            }
        },
        Command::Query(args) => client::block_on(client::query(args)),
        Command::Write(args) => client::block_on(client::write(args)),
        Command::Device(args) => client::block_on(device_cli::run(args)),
        Command::Opcua(args) => client::block_on(opcua_cli::run(args)),
        Command::User(args) => client::block_on(user_cli::run(args)),
        Command::Audit(args) => client::block_on(audit_cli::run(args)),
        Command::Registry(args) => client::block_on(registry_cli::run(args)),
        Command::Store(args) => client::block_on(store_cli::run(args)),
        Command::Compliance(args) => client::block_on(compliance_cli::run(args)),
        Command::Uplink(args) => client::block_on(uplink_cli::run(args)),
        Command::Release(args) => client::block_on(release_cli::run(args)),
        Command::Updates(args) => client::block_on(release_cli::run_updates(args)),
        Command::Privacy(args) => client::block_on(privacy_cli::run(args)),
        Command::Alert(args) => client::block_on(alert_cli::run(args)),
        Command::Pipeline(args) => client::block_on(pipeline_cli::run(args)),
        Command::Model(args) => client::block_on(model_cli::run(args)),
        Command::Usecase(args) => client::block_on(usecase_cli::run(args)),
        Command::Blob(args) => client::block_on(blob_cli::run(args)),
        Command::Sim(args) => client::block_on(demo::sim(args)),
        Command::Eval(args) => match eval::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fabrik: {}", crate::error_text::describe(&e));
                ExitCode::FAILURE
            }
        },
        Command::Bench { command } => match command {
            BenchCommand::Ingest(args) => client::block_on(bench::ingest(args)),
            BenchCommand::Mqtt(args) => client::block_on(bench_mqtt::run(args)),
        },
        Command::Openapi => {
            print!("{}", fabrik_api::openapi::document());
            ExitCode::SUCCESS
        }
        Command::Asyncapi => {
            print!("{}", asyncapi::document());
            ExitCode::SUCCESS
        }
    }
}
