//! `fabrik registry copy`: moves a stopped node's registry and alerts from their SQLite files
//! into a PostgreSQL database (decision 0055), for a pilot that grows into an enterprise hub.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `fabrik registry ...`
#[derive(Debug, Args)]
pub(crate) struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// With Fabrik stopped: copy every device, user, use case, attestation record and audit
    /// entry of `<data-dir>/registry.db`, and every alert, silence and queued notification of
    /// `<data-dir>/alerts.db`, into an empty PostgreSQL database (which must exist). Then run
    /// Fabrik with that database as `[registry] database_url`; the audit key
    /// `<data-dir>/audit.key` stays where it is, and the chain goes on.
    Copy {
        /// The data directory holding registry.db and audit.key.
        #[arg(long, env = "FABRIK__STORE__DATA_DIR", default_value = "./fabrik-data")]
        data_dir: PathBuf,
        /// The PostgreSQL database to copy into; best given as FABRIK__REGISTRY__DATABASE_URL,
        /// so its password stays out of the process list.
        #[arg(long, env = "FABRIK__REGISTRY__DATABASE_URL", hide_env_values = true)]
        to: String,
    },
}

/// Runs a `fabrik registry` command.
pub(crate) async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    match args.command {
        RegistryCommand::Copy { data_dir, to } => {
            let from = fabrik_registry::Location::File(data_dir.join("registry.db"));
            let url = to;
            let to = fabrik_registry::Location::Postgres {
                url: url.clone(),
                audit_key: data_dir.join("audit.key"),
            };
            let alerts = data_dir.join("alerts.db");
            let alerts_to = fabrik_alert::Store::Postgres(url);
            // Both targets are checked before either copy: a refusal after the registry was
            // copied would leave it there and the next run refused.
            if alerts.exists() {
                fabrik_alert::copy::check_empty(&alerts_to).await?;
            }
            let copied = fabrik_registry::copy::copy(&from, &to).await?;
            println!("Copied {} into {}:", from.display(), to.display());
            for (table, rows) in &copied.tables {
                println!("  {table:<22} {rows:>9} rows");
            }
            if alerts.exists() {
                let copied = fabrik_alert::copy::copy(
                    &fabrik_alert::Store::File(alerts.clone()),
                    &alerts_to,
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{e}. The registry was copied, the alerts were not: drop and \
                                 recreate the database, then run the copy again"
                    )
                })?;
                println!("Copied {} into it:", alerts.display());
                for (table, rows) in &copied {
                    println!("  {table:<22} {rows:>9} rows");
                }
            }
            for table in &copied.set_aside_left {
                println!(
                    "  {table}: an audit log set aside, not copied (it stays in {})",
                    from.display()
                );
            }
            println!(
                "Start Fabrik with FABRIK__REGISTRY__DATABASE_URL set to it; keep {} with the node. \
                 The files are left as they were, and not read while the database is set.",
                to.audit_key().display()
            );
        }
    }
    Ok(())
}
