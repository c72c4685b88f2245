//! The `fabrik` binary: the command line and the wiring of every module. It is the only crate
//! that knows every implementation.

mod bench;
mod client;
mod modules;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Load generators for the benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Config { command } => match command {
            ConfigCommand::Example => {
                print!("{}", fabrik_runtime::config::EXAMPLE);
                ExitCode::SUCCESS
            }
            ConfigCommand::Check { file } => {
                let result = fabrik_runtime::Config::load(Some(&file), std::env::vars())
                    .and_then(|c| c.validate(&file.display().to_string()));
                match result {
                    Ok(_) => {
                        println!("{}: OK", file.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::from(2)
                    }
                }
            }
        },
        Command::Query(args) => client::block_on(client::query(args)),
        Command::Write(args) => client::block_on(client::write(args)),
        Command::Bench { command } => match command {
            BenchCommand::Ingest(args) => client::block_on(bench::ingest(args)),
        },
        Command::Openapi => {
            print!("{}", fabrik_api::openapi::document());
            ExitCode::SUCCESS
        }
    }
}
