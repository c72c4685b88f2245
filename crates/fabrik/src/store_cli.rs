//! `fabrik store restore`: brings back a node whose data directory was lost, from the copy of
//! its manifest and its segments in object storage (decision 0061).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `fabrik store ...`
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// With Fabrik stopped, on a node whose data directory was lost: make a new data directory
    /// from the manifest copy and segments under `[store.objects] url`, and take the prefix
    /// over, so the old node (should it come back) stops writing there. Rows acknowledged
    /// after the last persist were only in the lost WAL and are not restored. Then start
    /// Fabrik with the same configuration.
    Restore {
        /// The configuration `fabrik run` uses (its `[store] data_dir` and `[store.objects]`);
        /// without it: embedded defaults plus FABRIK__* overrides.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Runs a `fabrik store` command.
pub(crate) async fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Restore { config } => {
            let origin = config
                .as_ref()
                .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
            let (_, settings) = match crate::config_check::load(config.as_deref(), &origin) {
                Ok(loaded) => loaded,
                Err(failure) => {
                    crate::config_check::report("", &origin, failure);
                    anyhow::bail!("the configuration did not load");
                }
            };
            let options = crate::run::store_options(&settings);
            let Some(storage) = options.objects else {
                anyhow::bail!(
                    "{origin} sets no [store.objects] url: only a store whose segments are in \
                     object storage can be restored (set FABRIK__STORE__OBJECTS__URL)"
                );
            };
            if storage.read_only.is_some() {
                anyhow::bail!(
                    "{origin} sets [store.objects] read_only: a read-only node reads the \
                     prefix another store owns and has nothing to restore; restore with the \
                     configuration of the node that wrote it"
                );
            }
            let restored = fabrik_store::objects::restore(&options.data_dir, &storage).await?;
            println!(
                "Restored store {} from {} into {}; this data directory is now store {}, \
                 which owns the prefix.",
                restored.previous_store_id,
                storage.url,
                options.data_dir.display(),
                restored.store_id
            );
            println!(
                "  {} tables, {} segments, {} rows",
                restored.tables, restored.segments, restored.rows
            );
            println!(
                "  persisted up to WAL record {}: rows acknowledged after it were only in \
                 the lost WAL and are not restored",
                restored.persisted_seq
            );
            if !restored.missing.is_empty() {
                println!(
                    "  {} segments the manifest copy named were not in the bucket and are \
                     left out: {}",
                    restored.missing.len(),
                    restored.missing.join(", ")
                );
            }
            if restored.unlisted > 0 {
                println!(
                    "  {} objects under segments/ are named by no manifest (written after the \
                     last copy, or by an interrupted persist); they are left in place",
                    restored.unlisted
                );
            }
            println!("Start Fabrik with the same configuration.");
        }
    }
    Ok(())
}
