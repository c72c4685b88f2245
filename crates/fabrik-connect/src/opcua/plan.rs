//! Validation: turns the raw [`OpcUaConfig`] into [`ServerPlan`]s, reporting every problem at
//! once (one line each, naming server and item). Nothing here touches the network or disk.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use opcua::types::NodeId;

use super::OpcUaError;
use super::config::{OpcUaConfig, SecurityMode, SecurityPolicyName, ServerConfig, TrustMode};

/// A validated server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPlan {
    /// Server id.
    pub id: Arc<str>,
    /// Endpoint URL.
    pub endpoint: String,
    /// Security policy.
    pub security_policy: SecurityPolicyName,
    /// Security mode.
    pub security_mode: SecurityMode,
    /// PKI directory.
    pub pki_dir: PathBuf,
    /// Trust mode.
    pub trust: TrustMode,
    /// `(username, password)`, or anonymous.
    pub user: Option<(String, String)>,
    /// Requested publishing interval.
    pub publishing_interval: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Reconnect delay cap.
    pub reconnect_max: Duration,
    /// Service request timeout.
    pub request_timeout: Duration,
    /// Keep-alive read interval.
    pub keep_alive: Duration,
    /// The items; an item's client handle is its index + 1.
    pub items: Vec<ItemPlan>,
}

/// A validated monitored item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemPlan {
    /// Parsed node id.
    pub node_id: NodeId,
    /// The node id as configured (for messages).
    pub node_text: String,
    /// Device id.
    pub device: Arc<str>,
    /// Signal name.
    pub signal: Arc<str>,
    /// Requested sampling interval in ms; `-1.0` = the publishing interval.
    pub sampling_interval_ms: f64,
    /// Absolute deadband.
    pub deadband: Option<f64>,
    /// Server-side queue size.
    pub queue_size: u32,
    /// Operators may write it (decision 0090).
    pub writable: bool,
    /// The range a write may set: both or neither (a numeric node needs both).
    pub range: Option<(f64, f64)>,
}

/// Validates the whole section; `Err` lists every problem.
pub fn plan(config: &OpcUaConfig) -> Result<Vec<ServerPlan>, OpcUaError> {
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    let mut plans = Vec::new();
    for (index, server) in config.servers.iter().enumerate() {
        let label = if server.id.trim().is_empty() {
            errors.push(format!("server #{}: `id` is empty", index + 1));
            format!("#{}", index + 1)
        } else {
            if !ids.insert(server.id.as_str()) {
                errors.push(format!("server `{}`: duplicate id", server.id));
            }
            server.id.clone()
        };
        if let Some(plan) = plan_server(server, &label, &mut errors) {
            plans.push(plan);
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(OpcUaError::Config(errors))
    }
}

fn plan_server(server: &ServerConfig, label: &str, errors: &mut Vec<String>) -> Option<ServerPlan> {
    let before = errors.len();
    let mut err = |msg: String| errors.push(format!("server `{label}`: {msg}"));

    if let Err(reason) = check_endpoint(&server.endpoint) {
        err(format!("endpoint `{}`: {reason}", server.endpoint));
    }
    match (server.security_policy, server.security_mode) {
        (SecurityPolicyName::None, SecurityMode::None) => {}
        (SecurityPolicyName::None, mode) => err(format!(
            "security_mode `{}` needs a security_policy other than `None`",
            mode.name()
        )),
        (policy, SecurityMode::None) => err(format!(
            "security_policy `{}` needs security_mode `Sign` or `SignAndEncrypt`",
            policy.name()
        )),
        _ => {}
    }
    if server.pki_dir.as_os_str().is_empty() {
        err("`pki_dir` is empty".to_owned());
    }
    let user = match (&server.username, &server.password) {
        (None, None) => None,
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
        (Some(_), Some(_)) => {
            err("`username` is empty".to_owned());
            None
        }
        (Some(_), None) => {
            err("`username` needs a `password`".to_owned());
            None
        }
        (None, Some(_)) => {
            err("`password` needs a `username`".to_owned());
            None
        }
    };
    if server.publishing_interval_ms == 0 {
        err("`publishing_interval_ms` must be > 0".to_owned());
    }
    if server.reconnect_min_ms == 0 || server.reconnect_min_ms > server.reconnect_max_ms {
        err(format!(
            "need 0 < reconnect_min_ms ({}) <= reconnect_max_ms ({})",
            server.reconnect_min_ms, server.reconnect_max_ms
        ));
    }
    if server.request_timeout_ms == 0 {
        err("`request_timeout_ms` must be > 0".to_owned());
    }
    if server.keep_alive_ms == 0 {
        err("`keep_alive_ms` must be > 0".to_owned());
    }
    if server.items.is_empty() {
        err("no `items`".to_owned());
    }
    let server_device = server.device.as_deref().filter(|d| !d.trim().is_empty());
    if server.device.is_some() && server_device.is_none() {
        err("`device` is empty".to_owned());
    }

    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for item in &server.items {
        let mut err = |msg: String| {
            errors.push(format!("server `{label}`: item `{}`: {msg}", item.node_id));
        };
        let node_id = match NodeId::from_str(item.node_id.trim()) {
            Ok(id) => Some(id),
            Err(e) => {
                err(format!(
                    "not a node id ({e}); expected e.g. `ns=2;s=Pump1.Pressure`"
                ));
                None
            }
        };
        if item.signal.trim().is_empty() {
            err("`signal` is empty".to_owned());
        }
        let device = match item.device.as_deref().or(server_device) {
            Some(d) if !d.trim().is_empty() => Some(d),
            Some(_) => {
                err("`device` is empty".to_owned());
                None
            }
            None => {
                err("no `device` (set it on the item or the server)".to_owned());
                None
            }
        };
        if let Some(d) = device
            && !seen.insert((d.to_owned(), item.signal.clone()))
        {
            err(format!(
                "duplicate signal `{}` of device `{d}`",
                item.signal
            ));
        }
        if let Some(deadband) = item.deadband
            && (!deadband.is_finite() || deadband < 0.0)
        {
            err(format!(
                "`deadband` must be a finite number >= 0, got {deadband}"
            ));
        }
        let range = match (item.writable, item.min, item.max) {
            (_, None, None) => None,
            (false, _, _) => {
                err("`min`/`max` limit writes: set `writable = true` or remove them".to_owned());
                None
            }
            (true, Some(min), Some(max)) if !min.is_finite() || !max.is_finite() => {
                err("`min` and `max` must be finite".to_owned());
                None
            }
            (true, Some(min), Some(max)) if min > max => {
                err(format!("`min` {min} is above `max` {max}"));
                None
            }
            (true, Some(min), Some(max)) => Some((min, max)),
            (true, _, _) => {
                err("give both `min` and `max`, the range operators may set".to_owned());
                None
            }
        };
        if let (Some(node_id), Some(device)) = (node_id, device) {
            items.push(ItemPlan {
                node_id,
                node_text: item.node_id.trim().to_owned(),
                device: Arc::from(device),
                signal: Arc::from(item.signal.as_str()),
                sampling_interval_ms: item.sampling_interval_ms.map_or(-1.0, |ms| ms as f64),
                deadband: item.deadband,
                queue_size: item.queue_size.max(1),
                writable: item.writable,
                range,
            });
        }
    }

    if errors.len() > before {
        return None;
    }
    Some(ServerPlan {
        id: Arc::from(server.id.as_str()),
        endpoint: server.endpoint.clone(),
        security_policy: server.security_policy,
        security_mode: server.security_mode,
        pki_dir: server.pki_dir.clone(),
        trust: server.trust_server,
        user,
        publishing_interval: Duration::from_millis(server.publishing_interval_ms),
        reconnect_min: Duration::from_millis(server.reconnect_min_ms),
        reconnect_max: Duration::from_millis(server.reconnect_max_ms),
        request_timeout: Duration::from_millis(server.request_timeout_ms),
        keep_alive: Duration::from_millis(server.keep_alive_ms),
        items,
    })
}

/// Checks `opc.tcp://host:port[/path]` without resolving anything.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("opc.tcp://")
        .ok_or("must start with `opc.tcp://`")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .map_err(|_| format!("port `{port}` is not a number 0-65535"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> OpcUaConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn valid_config_plans() {
        let config = parse(
            r#"
            [[servers]]
            id = "plc"
            endpoint = "opc.tcp://127.0.0.1:4840/fabrik/"
            security_policy = "Basic256Sha256"
            security_mode = "SignAndEncrypt"
            pki_dir = "/tmp/pki"
            trust_server = "trust_on_first_use"
            device = "pump-1"
            publishing_interval_ms = 200

            [[servers.items]]
            node_id = "ns=2;s=Pump1.Pressure"
            signal = "pressure"
            sampling_interval_ms = 100
            deadband = 0.5

            [[servers.items]]
            node_id = "ns=2;i=7"
            signal = "count"
            device = "pump-2"
            "#,
        );
        let plans = plan(&config).unwrap();
        assert_eq!(plans.len(), 1);
        let p = &plans[0];
        assert_eq!(p.trust, TrustMode::TrustOnFirstUse);
        assert_eq!(p.publishing_interval, Duration::from_millis(200));
        assert_eq!(p.items[0].node_id, NodeId::new(2, "Pump1.Pressure"));
        assert_eq!(&*p.items[0].device, "pump-1");
        assert_eq!(p.items[0].sampling_interval_ms, 100.0);
        assert_eq!(p.items[1].node_id, NodeId::new(2, 7u32));
        assert_eq!(&*p.items[1].device, "pump-2");
        assert_eq!(p.items[1].sampling_interval_ms, -1.0);
    }

    #[test]
    fn the_commented_example_is_valid() {
        #[derive(serde::Deserialize)]
        struct Root {
            opcua: OpcUaConfig,
        }
        let root: Root = toml::from_str(crate::opcua::config::EXAMPLE).unwrap();
        let plans = plan(&root.opcua).unwrap();
        assert_eq!(plans[0].items.len(), 3);
        assert!(!plans[0].items[0].writable);
        assert!(plans[0].items[2].writable);
        assert_eq!(plans[0].items[2].range, Some((2.0, 6.5)));
        assert_eq!(&*plans[0].items[1].device, "pump-1-motor");
        assert_eq!(plans[0].user, Some(("fabrik".into(), "change-me".into())));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<OpcUaConfig>(
            r#"
            [[servers]]
            id = "plc"
            endpoint = "opc.tcp://h:1/"
            pki_dir = "p"
            colour = "blue"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let config = parse(
            r#"
            [[servers]]
            id = "a"
            endpoint = "http://h:1/"
            security_policy = "None"
            security_mode = "Sign"
            pki_dir = "p"
            username = "u"

            [[servers.items]]
            node_id = "bogus"
            signal = "x"

            [[servers.items]]
            node_id = "ns=2;s=X"
            signal = "y"
            deadband = -1.0

            [[servers.items]]
            node_id = "ns=2;s=Limited"
            signal = "limited"
            device = "d"
            max = 3.0

            [[servers.items]]
            node_id = "ns=2;s=Half"
            signal = "half"
            device = "d"
            writable = true
            min = 3.0

            [[servers.items]]
            node_id = "ns=2;s=Upside"
            signal = "upside"
            device = "d"
            writable = true
            min = 3.0
            max = 1.0

            [[servers]]
            id = "a"
            endpoint = "opc.tcp://h:99999/"
            pki_dir = "p"
            device = "d"
            [[servers.items]]
            node_id = "i=1"
            signal = "s"
            [[servers.items]]
            node_id = "i=2"
            signal = "s"
            "#,
        );
        let OpcUaError::Config(errors) = plan(&config).unwrap_err() else {
            panic!("not a config error")
        };
        let all = errors.join("\n");
        for needle in [
            "server `a`: endpoint `http://h:1/`: must start with `opc.tcp://`",
            "security_mode `Sign` needs a security_policy",
            "`username` needs a `password`",
            "item `bogus`: not a node id",
            "item `bogus`: no `device`",
            "item `ns=2;s=X`: `deadband` must be",
            "item `ns=2;s=Limited`: `min`/`max` limit writes: set `writable = true`",
            "item `ns=2;s=Half`: give both `min` and `max`",
            "item `ns=2;s=Upside`: `min` 3 is above `max` 1",
            "server `a`: duplicate id",
            "port `99999`",
            "item `i=2`: duplicate signal `s` of device `d`",
        ] {
            assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
        }
    }
}
