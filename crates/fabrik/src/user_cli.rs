//! `fabrik user add|list|rm|passwd`: a thin client of `/api/v1/users`.

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Endpoint;

/// `fabrik user ...`
#[derive(Debug, Args)]
pub(crate) struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user who signs in with a password; without --password-stdin one is generated
    /// and printed once.
    Add {
        /// Sign-in name: a-z, 0-9, '.', '_', '-'.
        name: String,
        /// admin, operator (also acknowledges and silences alerts) or viewer (reads).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user; their sessions end.
    Rm {
        /// User name.
        name: String,
    },
    /// Set a user's password (read from the first line of standard input); their sessions end.
    Passwd {
        /// User name.
        name: String,
    },
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Runs a `fabrik user` command.
pub(crate) async fn run(args: UserArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    match args.command {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let mut body = serde_json::json!({ "name": name, "role": role });
            if password_stdin {
                body["password"] = read_password()?.into();
            }
            let created: serde_json::Value = ep
                .send(
                    ep.request(&client, reqwest::Method::POST, "/api/v1/users")
                        .json(&body),
                )
                .await?
                .json()
                .await?;
            println!("created user {name} ({role})");
            if let Some(password) = created["password"].as_str() {
                println!("password: {password}");
                println!("(shown only now; sign in at the dashboard with it)");
            }
        }
        UserCommand::List { json } => {
            let users: Vec<serde_json::Value> = ep.get_json(&client, "/api/v1/users").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
                return Ok(());
            }
            println!("{:<24} {:<9} last sign-in", "name", "role");
            for u in &users {
                let last = crate::client::time_text(u["last_sign_in"].as_i64());
                println!(
                    "{:<24} {:<9} {last}",
                    u["name"].as_str().unwrap_or(""),
                    u["role"].as_str().unwrap_or("")
                );
            }
            println!("{} user(s)", users.len());
        }
        UserCommand::Rm { name } => {
            ep.send(ep.request(
                &client,
                reqwest::Method::DELETE,
                &format!("/api/v1/users/{name}"),
            ))
            .await?;
            println!("removed user {name}");
        }
        UserCommand::Passwd { name } => {
            let password = read_password()?;
            ep.send(
                ep.request(
                    &client,
                    reqwest::Method::PUT,
                    &format!("/api/v1/users/{name}/password"),
                )
                .json(&serde_json::json!({ "password": password })),
            )
            .await?;
            println!("password of {name} changed");
        }
    }
    Ok(())
}
