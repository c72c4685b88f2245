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
    /// Where a running Fabrik's segments are, which store owns them, what is persisted and
    /// buffered, and on a read-only query node when it last read the owner's manifest.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: crate::client::Endpoint,
    },
}

/// Runs a `fabrik store` command.
pub(crate) async fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Status { json, endpoint } => return status(json, endpoint).await,
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

/// `fabrik store status`: `GET /api/v1/store`, printed.
async fn status(json: bool, endpoint: crate::client::Endpoint) -> anyhow::Result<()> {
    let client = endpoint.client()?;
    let status: serde_json::Value = endpoint.get_json(&client, "/api/v1/store").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!(
        "{}",
        status_text(&status, fabrik_core::Timestamp::now().nanos())
    );
    Ok(())
}

/// The status as `fabrik store status` prints it, `now` (ns) dating the last read.
fn status_text(status: &serde_json::Value, now: i64) -> String {
    use crate::client::{json_text, time_text};
    let bucket = status["bucket"].as_str();
    let store_id = json_text(&status["store_id"]);
    let mut out = match (status["role"].as_str(), bucket) {
        (Some("read_only"), Some(url)) => {
            let read_at = status["read_at"].as_i64().filter(|&t| t > 0);
            let ago = read_at.map_or_else(
                || "never".to_owned(),
                |t| format!("{} s ago", (now - t).max(0) / 1_000_000_000),
            );
            format!(
                "read-only query node over {url}, owned by store {store_id}: its manifest \
                 last read {ago} (every {} s)\n",
                status["refresh_interval_s"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |s| s.to_string())
            )
        }
        (_, Some(url)) => format!("store {store_id}, segments in {url}\n"),
        _ => "segments on the local disk\n".to_owned(),
    };
    out.push_str(&format!(
        "persisted up to WAL record {}; buffered: {} rows ({} bytes)\n",
        json_text(&status["persisted_seq"]),
        json_text(&status["buffered_rows"]),
        json_text(&status["buffered_bytes"]),
    ));
    let tables = status["tables"].as_array().cloned().unwrap_or_default();
    if tables.is_empty() {
        out.push_str("no segments yet\n");
        return out;
    }
    let width = tables
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::len))
        .max()
        .unwrap_or(0)
        .max("table".len());
    out.push_str(&format!(
        "{:<width$}  {:>8}  {:>12}  {:>14}  newest row\n",
        "table", "segments", "rows", "bytes"
    ));
    for table in &tables {
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>12}  {:>14}  {}\n",
            json_text(&table["name"]),
            json_text(&table["segments"]),
            json_text(&table["rows"]),
            json_text(&table["bytes"]),
            time_text(table["newest"].as_i64()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_node_says_whose_prefix_it_reads_and_when_it_last_read_it() {
        let status = serde_json::json!({
            "role": "read_only", "bucket": "s3://plant/hub", "store_id": "7f3a",
            "persisted_seq": 41, "buffered_rows": 0, "buffered_bytes": 0,
            "read_at": 1_000_000_000_000_i64, "refresh_interval_s": 10.0,
            "tables": [{"name": "pump", "segments": 2, "rows": 1500, "bytes": 20480,
                        "newest": 1_000_000_000_000_000_000_i64}],
        });
        let text = status_text(&status, 1_003_000_000_000);
        assert!(
            text.starts_with("read-only query node over s3://plant/hub, owned by store 7f3a")
                && text.contains("last read 3 s ago (every 10 s)")
                && text.contains("persisted up to WAL record 41"),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("pump")).expect("a row");
        assert!(
            row.contains(" 2 ") && row.contains("1500") && row.contains("2001-09-09"),
            "{row}"
        );
        let local = serde_json::json!({"role": "owner", "bucket": null, "store_id": null,
            "persisted_seq": 0, "buffered_rows": 3, "buffered_bytes": 90, "tables": []});
        let text = status_text(&local, 0);
        assert!(
            text.starts_with("segments on the local disk") && text.contains("no segments yet"),
            "{text}"
        );
    }
}
