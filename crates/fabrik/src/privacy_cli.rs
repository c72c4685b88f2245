//! `fabrik privacy export NAME`: a thin client of `/api/v1/people/{name}`, everything a running
//! Fabrik keeps about one person, as JSON (GDPR Art. 15 and 20).

use clap::{Args, Subcommand};

use crate::client::{Endpoint, percent_encode};

/// `fabrik privacy ...`
#[derive(Debug, Args)]
pub(crate) struct PrivacyArgs {
    #[command(subcommand)]
    command: PrivacyCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// Print, as JSON, everything kept about a person: their user, audit entries, stage
    /// decisions, acknowledgements, silences and alert labels (admin).
    Export {
        /// A user name, or a name given with an acknowledgement.
        name: String,
    },
}

/// Runs a `fabrik privacy` command.
pub(crate) async fn run(args: PrivacyArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    match args.command {
        PrivacyCommand::Export { name } => {
            let data: serde_json::Value = args
                .endpoint
                .get_json(
                    &client,
                    &format!("/api/v1/people/{}", percent_encode(&name)),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&data)?);
        }
    }
    Ok(())
}
