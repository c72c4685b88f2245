//! `fabrik opcua browse`: what an OPC UA server offers under a node — for commissioning, before
//! its items are written into `[[opcua.servers]]` — with each variable's type and the range
//! and unit it declares (decision 0094). It connects to the server itself, not to a running
//! Fabrik.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fabrik_connect::opcua::BrowseSecurity;
use fabrik_connect::opcua::config::{SecurityMode, SecurityPolicyName, TrustMode};

/// A setting by its name in the configuration file (`Basic256Sha256`, `trust_on_first_use`).
fn named<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}` is not one of the names the configuration takes"))
}

/// `fabrik opcua ...`
#[derive(Debug, Args)]
pub(crate) struct OpcUaArgs {
    #[command(subcommand)]
    command: OpcUaCommand,
}

#[derive(Debug, Subcommand)]
enum OpcUaCommand {
    /// List the nodes under a node (Objects by default): node id, browse name, class, and for
    /// variables their type, EURange and unit. Connects over the server's `None` endpoint
    /// unless told otherwise.
    Browse {
        /// The server, e.g. opc.tcp://10.0.0.5:4840/ (the path must be one it advertises).
        #[arg(long)]
        endpoint: String,
        /// The node to browse under.
        #[arg(long, default_value = "i=85")]
        node: String,
        /// Directory of Fabrik's OPC UA key pair (made on first use) and trust list.
        #[arg(long, default_value = "opcua-pki")]
        pki_dir: PathBuf,
        /// Seconds each request may take.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// The endpoint's security policy: None or Basic256Sha256.
        #[arg(long, default_value = "None", value_parser = named::<SecurityPolicyName>)]
        security_policy: SecurityPolicyName,
        /// The endpoint's security mode: None, Sign or SignAndEncrypt.
        #[arg(long, default_value = "None", value_parser = named::<SecurityMode>)]
        security_mode: SecurityMode,
        /// trust_list (the server's certificate must be in PKI_DIR/trusted/; an unknown one is
        /// put in rejected/) or trust_on_first_use.
        #[arg(long, default_value = "trust_list", value_parser = named::<TrustMode>)]
        trust_server: TrustMode,
        /// User name; the password is read from FABRIK_OPCUA_PASSWORD. Anonymous without.
        #[arg(long)]
        username: Option<String>,
        /// The user's password (from the environment, not the command line, so it stays out
        /// of the shell's history and the process list).
        #[arg(
            long = "password",
            env = "FABRIK_OPCUA_PASSWORD",
            hide_env_values = true,
            hide = true
        )]
        password: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(args: OpcUaArgs) -> anyhow::Result<()> {
    match args.command {
        OpcUaCommand::Browse {
            endpoint,
            node,
            pki_dir,
            timeout,
            security_policy,
            security_mode,
            trust_server,
            username,
            password,
            json,
        } => {
            let user = match (username, password) {
                (Some(name), Some(password)) => Some((name, password)),
                (Some(_), None) => {
                    anyhow::bail!("--username needs the password in FABRIK_OPCUA_PASSWORD")
                }
                (None, _) => None,
            };
            let security = BrowseSecurity {
                policy: security_policy,
                mode: security_mode,
                trust: trust_server,
                user,
            };
            let nodes = fabrik_connect::opcua::browse(
                &endpoint,
                &node,
                &pki_dir,
                Duration::from_secs(timeout.max(1)),
                &security,
            )
            .await?;
            if json {
                let rows: Vec<serde_json::Value> = nodes.iter().map(node_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", table(&nodes));
            }
            Ok(())
        }
    }
}

fn node_json(node: &fabrik_connect::opcua::BrowsedNode) -> serde_json::Value {
    let declared = node.declared.as_ref();
    let range = declared.and_then(|d| d.eu_range.as_ref());
    serde_json::json!({
        "node_id": node.node_id,
        "browse_name": node.browse_name,
        "node_class": node.node_class,
        "data_type": declared.and_then(|d| d.data_type.clone()),
        "eu_range": range.and_then(|r| r.as_ref().ok()).map(|(low, high)| [low, high]),
        "eu_range_error": range.and_then(|r| r.as_ref().err()),
        "unit": declared.and_then(|d| d.unit.clone()),
    })
}

fn table(nodes: &[fabrik_connect::opcua::BrowsedNode]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if nodes.is_empty() {
        out.push_str("no nodes under it\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<36} {:<24} {:<10} {:<8} declares",
        "node id", "browse name", "class", "type"
    );
    for node in nodes {
        let declared = node.declared.as_ref();
        let mut declares = match declared.and_then(|d| d.eu_range.as_ref()) {
            Some(Ok((low, high))) => format!("EURange {low}..={high}"),
            Some(Err(why)) => format!("EURange unusable: {why}"),
            None => String::new(),
        };
        if let Some(unit) = declared.and_then(|d| d.unit.as_deref()) {
            declares = format!("{declares} {unit}");
        }
        let _ = writeln!(
            out,
            "{:<36} {:<24} {:<10} {:<8} {}",
            node.node_id,
            node.browse_name,
            node.node_class,
            declared.and_then(|d| d.data_type.as_deref()).unwrap_or(""),
            declares.trim()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use fabrik_connect::opcua::BrowsedNode;
    use fabrik_connect::opcua::declared::Declared;

    use super::*;

    #[test]
    fn security_settings_are_taken_by_their_configuration_names() {
        assert_eq!(
            named::<SecurityPolicyName>("Basic256Sha256"),
            Ok(SecurityPolicyName::Basic256Sha256)
        );
        assert_eq!(
            named::<SecurityMode>("SignAndEncrypt"),
            Ok(SecurityMode::SignAndEncrypt)
        );
        assert_eq!(
            named::<TrustMode>("trust_on_first_use"),
            Ok(TrustMode::TrustOnFirstUse)
        );
        assert!(named::<SecurityMode>("Encrypt").is_err());
    }

    #[test]
    fn a_variable_shows_its_type_range_and_unit() {
        let nodes = [
            BrowsedNode {
                node_id: "ns=2;s=Pump1.Flow".into(),
                browse_name: "2:Flow".into(),
                node_class: "Variable".into(),
                declared: Some(Declared {
                    data_type: Some("Double".into()),
                    eu_range: Some(Ok((0.0, 80.0))),
                    unit: Some("l/min".into()),
                }),
            },
            BrowsedNode {
                node_id: "ns=2;s=Pump1".into(),
                browse_name: "2:Pump1".into(),
                node_class: "Object".into(),
                declared: None,
            },
        ];
        let text = table(&nodes);
        let flow = text.lines().nth(1).expect("a row per node");
        assert!(flow.starts_with("ns=2;s=Pump1.Flow "), "{text}");
        assert!(
            flow.contains(" Double ") && flow.ends_with("EURange 0..=80 l/min"),
            "{text}"
        );
        assert!(
            text.lines()
                .nth(2)
                .is_some_and(|l| l.trim_end().ends_with("Object"))
        );
        let json = node_json(&nodes[0]);
        assert_eq!(json["eu_range"], serde_json::json!([0.0, 80.0]));
        assert_eq!(json["unit"], "l/min");
        assert_eq!(json["data_type"], "Double");
    }
}
