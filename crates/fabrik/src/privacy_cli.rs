//! `fabrik privacy export|erase NAME`: a thin client of `/api/v1/people/{name}`, everything a
//! running Fabrik keeps about one person, as JSON (GDPR Art. 15 and 20), and its erasure
//! (Art. 17).

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
    /// Erase a person's names wherever Fabrik keeps them (admin): their user, their name in
    /// the audit log (the chain still verifies), stage decisions, use cases,
    /// acknowledgements, silences and alert labels. Prints what was erased, as JSON.
    Erase {
        /// A user name, or a name given with an acknowledgement.
        name: String,
        /// Confirms it: an erasure cannot be undone.
        #[arg(long)]
        yes: bool,
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
        PrivacyCommand::Erase { name, yes } => {
            if !yes {
                anyhow::bail!(
                    "erasing `{name}` cannot be undone: see what is kept with `fabrik privacy \
                     export {name}`, then run this again with --yes"
                );
            }
            let path = format!("/api/v1/people/{}", percent_encode(&name));
            let erased: serde_json::Value = args
                .endpoint
                .send(
                    args.endpoint
                        .request(&client, reqwest::Method::DELETE, &path),
                )
                .await?
                .json()
                .await?;
            println!("{}", serde_json::to_string_pretty(&erased)?);
        }
    }
    Ok(())
}
