//! A simulated OPC UA server (async-opcua): the controller of a bottle-filling line, its
//! variables under `Objects/Line1/Filler`, updated every tick and offered over `None` and
//! `Basic256Sha256` / `SignAndEncrypt` endpoints.
//!
//! Its speed set-point, `Line1.Filler.SpeedSetpoint` (bottles per minute), may be written by a
//! client (Fabrik's setpoints, decision 0090); the line ramps to it and keeps it within
//! 0..=900, as a drive keeps its speed in range. It declares that range and its unit as an
//! analog item does (`EURange`, `EngineeringUnits`), so the configuration needs no `min` and
//! `max` for it (decision 0094). Its recipe, `Line1.Filler.Recipe`, is a `String` node a
//! client may write too (a text setpoint, decision 0095); the line keeps what it is given.
//!
//! Faults: `drift` is a CO₂ leak (pressure sinks), `spike` a burst of rejects, `stuck` freezes
//! the product temperature with status `UncertainLastUsableValue`, `malformed` reports it
//! `BadSensorFailure` for 10 s, `dropout` takes the whole server down for 20 s and brings it
//! back on the same port (what a controller restart looks like to a client), `clear` fixes
//! the leak.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::{AccessLevel, NodeType, Variable, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint};
use opcua::types::{
    DataEncoding, DataTypeId, DataValue, DateTime, EUInformation, ExtensionObject, LocalizedText,
    MessageSecurityMode, NodeId, NumericRange, Range, StatusCode, TimestampsToReturn,
    VariableTypeId, Variant,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::{FaultBoard, FaultKind};

/// Namespace URI of the simulated line's nodes.
pub const NAMESPACE_URI: &str = "urn:fabrik:sim:line-01";
/// The device id its readings belong to.
pub const DEVICE_ID: &str = "line-01";
/// How long a `dropout` keeps the server down.
const DOWN_FOR: Duration = Duration::from_secs(20);
/// The writable set-point's node, under `Line1.Filler.`.
const SETPOINT: &str = "SpeedSetpoint";
/// The highest speed the line runs at, bottles per minute.
const TOP_SPEED: f64 = 900.0;
/// The set-point's unit, as its `EngineeringUnits` property names it.
const SPEED_UNIT: &str = "bottles/min";
/// The writable recipe's node, under `Line1.Filler.`, and the recipe the line starts on.
const RECIPE: &str = "Recipe";
const FIRST_RECIPE: &str = "Cola 0.5 l";

/// (node name under `Line1.Filler.`, signal name).
const SIGNALS: [(&str, &str); 7] = [
    ("Speed", "speed"),
    ("ProductTemp", "product_temp"),
    ("CO2Pressure", "co2_pressure"),
    ("GoodCount", "good_count"),
    ("RejectCount", "reject_count"),
    ("State", "state"),
    ("Running", "running"),
];

fn node_id(ns: u16, name: &str) -> NodeId {
    NodeId::new(ns, format!("Line1.Filler.{name}"))
}

/// The `[[opcua.servers]]` entry that subscribes to the simulator at `endpoint` (namespace
/// index 2, the first after the server's own), ready to paste into `fabrik.toml`.
pub fn line_config_toml(endpoint: &str, pki_dir: &str) -> String {
    let mut out = format!(
        r#"[[opcua.servers]]
id = "sim-line-01"
measurement = "filler"
endpoint = "{endpoint}"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
pki_dir = "{pki_dir}"
trust_server = "trust_on_first_use"
device = "{DEVICE_ID}"
publishing_interval_ms = 500
reconnect_max_ms = 5000
"#
    );
    for (node, signal) in SIGNALS {
        out.push_str(&format!(
            "\n[[opcua.servers.items]]\nnode_id = \"ns=2;s=Line1.Filler.{node}\"\nsignal = \"{signal}\"\nsampling_interval_ms = 500\n"
        ));
    }
    // No `min` and `max`: the node's EURange is the range (decision 0094).
    out.push_str(&format!(
        "\n[[opcua.servers.items]]\nnode_id = \"ns=2;s=Line1.Filler.{SETPOINT}\"\nsignal = \"speed_setpoint\"\nsampling_interval_ms = 500\nwritable = true\n"
    ));
    // A String node: written as text (decision 0095).
    out.push_str(&format!(
        "\n[[opcua.servers.items]]\nnode_id = \"ns=2;s=Line1.Filler.{RECIPE}\"\nsignal = \"recipe\"\nsampling_interval_ms = 500\nwritable = true\n"
    ));
    out
}

/// The `EURange` and `EngineeringUnits` properties of the variable `name` (under
/// `Line1.Filler.`), as OPC UA Part 8's
/// `AnalogItemType` declares them (browse names in namespace 0).
fn add_analog_properties(
    space: &mut opcua::server::address_space::AddressSpace,
    (ns, name): (u16, &str),
    (low, high): (f64, f64),
    unit: &str,
) {
    let variable = node_id(ns, name);
    let property = |property: &str| node_id(ns, &format!("{name}.{property}"));
    VariableBuilder::new(&property("EURange"), "EURange", "EURange")
        .property_of(variable.clone())
        .has_type_definition(VariableTypeId::PropertyType)
        .data_type(DataTypeId::Range)
        .value(ExtensionObject::from_message(Range { low, high }))
        .insert(space);
    VariableBuilder::new(
        &property("EngineeringUnits"),
        "EngineeringUnits",
        "EngineeringUnits",
    )
    .property_of(variable.clone())
    .has_type_definition(VariableTypeId::PropertyType)
    .data_type(DataTypeId::EUInformation)
    .value(ExtensionObject::from_message(EUInformation {
        display_name: LocalizedText::new("", unit),
        ..Default::default()
    }))
    .insert(space);
}

/// The filler's state.
#[derive(Debug)]
struct Filler {
    rng: SmallRng,
    t: f64,
    speed: f64,
    /// Bottles per minute it ramps to while not starved.
    setpoint: f64,
    temp: f64,
    pressure: f64,
    good: u32,
    rejects: u32,
    reject_carry: f64,
    good_carry: f64,
    leak: f64,
    leaking: bool,
    reject_burst: u32,
    stuck: Option<(Instant, f64)>,
    failing_until: Option<Instant>,
    /// The product it fills, as clients last wrote it.
    recipe: String,
}

impl Filler {
    fn new(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            t: 0.0,
            speed: 0.0,
            setpoint: 600.0,
            temp: 4.0,
            pressure: 3.2,
            good: 182_340,
            rejects: 911,
            reject_carry: 0.0,
            good_carry: 0.0,
            leak: 0.0,
            leaking: false,
            reject_burst: 0,
            stuck: None,
            failing_until: None,
            recipe: FIRST_RECIPE.to_owned(),
        }
    }

    fn noise(&mut self, scale: f64) -> f64 {
        (self.rng.random::<f64>() - 0.5) * 2.0 * scale
    }

    /// Starved for 20 s in every 5 min (the upstream conveyor runs dry), else running.
    fn starved(&self) -> bool {
        self.t % 300.0 >= 280.0
    }

    fn step(&mut self, dt: f64) {
        self.t += dt;
        let target = if self.starved() { 0.0 } else { self.setpoint };
        // Speed ramps like a drive does, not in steps.
        self.speed += (target - self.speed) * (dt / 4.0).min(1.0);
        if self.speed < 1.0 && target == 0.0 {
            self.speed = 0.0;
        }
        let running = self.speed > 1.0;
        self.temp += (4.0 - self.temp) * 0.05 * dt + self.noise(0.02);
        if self.leaking {
            self.leak = (self.leak + dt / 600.0).min(1.0);
        }
        self.pressure = 3.2 - 0.9 * self.leak + self.noise(0.02);
        let per_second = self.speed / 60.0;
        let reject_rate = if self.reject_burst > 0 {
            self.reject_burst -= 1;
            0.3
        } else {
            0.005 + 0.05 * self.leak
        };
        if running {
            self.good_carry += per_second * dt * (1.0 - reject_rate);
            self.reject_carry += per_second * dt * reject_rate;
            let whole_good = self.good_carry.floor();
            let whole_rejects = self.reject_carry.floor();
            self.good = self.good.wrapping_add(whole_good as u32);
            self.rejects = self.rejects.wrapping_add(whole_rejects as u32);
            self.good_carry -= whole_good;
            self.reject_carry -= whole_rejects;
        }
    }

    fn inject(&mut self, fault: FaultKind, now: Instant) {
        match fault {
            FaultKind::Drift => self.leaking = true,
            FaultKind::Clear => {
                self.leaking = false;
                self.leak = 0.0;
            }
            FaultKind::Spike => self.reject_burst = 20,
            FaultKind::Stuck => self.stuck = Some((now + Duration::from_secs(120), self.temp)),
            FaultKind::Malformed => self.failing_until = Some(now + Duration::from_secs(10)),
            // Handled by the server loop.
            FaultKind::Dropout => {}
        }
    }

    /// Every variable's value, all stamped with one source time so a client stores one row
    /// per tick.
    fn values(&self, ns: u16, now: Instant) -> Vec<(NodeId, DataValue)> {
        let stamp = DateTime::now();
        let dv = |value: Variant, status: StatusCode| DataValue {
            value: Some(value),
            status: Some(status),
            source_timestamp: Some(stamp),
            source_picoseconds: None,
            server_timestamp: Some(stamp),
            server_picoseconds: None,
        };
        let good = |value: Variant| dv(value, StatusCode::Good);
        let state = if self.speed > 1.0 {
            "Running"
        } else if self.starved() {
            "Starved"
        } else {
            "Stopped"
        };
        let temp = match self.stuck {
            Some((until, value)) if now < until => {
                dv(value.into(), StatusCode::UncertainLastUsableValue)
            }
            _ if self.failing_until.is_some_and(|u| now < u) => {
                dv(self.temp.into(), StatusCode::BadSensorFailure)
            }
            _ => good(self.temp.into()),
        };
        vec![
            (node_id(ns, "Speed"), good(self.speed.into())),
            (node_id(ns, "ProductTemp"), temp),
            (node_id(ns, "CO2Pressure"), good(self.pressure.into())),
            (node_id(ns, "GoodCount"), good(self.good.into())),
            (node_id(ns, "RejectCount"), good(self.rejects.into())),
            (node_id(ns, "State"), good(state.into())),
            (node_id(ns, "Running"), good((self.speed > 1.0).into())),
        ]
    }
}

/// Where the simulated server listens and keeps its key pair.
#[derive(Debug, Clone)]
pub struct LineServer {
    /// Listen address (its port is reused after a `dropout`).
    pub address: SocketAddr,
    /// The server's PKI directory (own key pair, trusted and rejected client certificates).
    pub pki_dir: PathBuf,
}

impl LineServer {
    /// The endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("opc.tcp://{}/", self.address)
    }
}

/// Serves the filler line on `listener` until `shutdown`, taking faults for [`DEVICE_ID`]
/// from `faults`; a `dropout` stops the server for 20 s and starts it again on the same port.
pub async fn serve_line(
    listener: tokio::net::TcpListener,
    pki_dir: PathBuf,
    seed: u64,
    interval: Duration,
    faults: FaultBoard,
    shutdown: CancellationToken,
) {
    let address = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "Simulated OPC UA server has no address.");
            return;
        }
    };
    let mut filler = Filler::new(seed);
    let mut listener = Some(listener);
    loop {
        let current = match listener.take() {
            Some(l) => l,
            None => match tokio::net::TcpListener::bind(address).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%address, error = %e, "Simulated OPC UA server cannot listen again; retrying.");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        match run_once(current, &pki_dir, &mut filler, interval, &faults, &shutdown).await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Dropout) => {
                tracing::info!(
                    device = DEVICE_ID,
                    "Simulated OPC UA server down for {} s.",
                    DOWN_FOR.as_secs()
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DOWN_FOR) => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Simulated OPC UA server failed.");
                return;
            }
        }
    }
}

enum Ended {
    Shutdown,
    Dropout,
}

async fn run_once(
    listener: tokio::net::TcpListener,
    pki_dir: &std::path::Path,
    filler: &mut Filler,
    interval: Duration,
    faults: &FaultBoard,
    shutdown: &CancellationToken,
) -> Result<Ended, String> {
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let endpoint = format!("opc.tcp://{address}/");
    let anonymous: &[&str] = &[ANONYMOUS_USER_TOKEN_ID];
    let (server, handle) = ServerBuilder::new()
        .application_name("Fabrik simulated filler line")
        .application_uri("urn:fabrik:sim:line-01:server")
        .product_uri("urn:fabrik:sim")
        .host(address.ip().to_string())
        .port(address.port())
        .pki_dir(pki_dir)
        .create_sample_keypair(true)
        // A simulator accepts any client certificate; Fabrik's side keeps its trust list.
        .trust_client_certs(true)
        .add_endpoint(
            "none",
            ServerEndpoint::new_none("/", &[ANONYMOUS_USER_TOKEN_ID.to_owned()]),
        )
        .add_endpoint(
            "basic256sha256",
            (
                "/",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
                anonymous,
            ),
        )
        .discovery_urls(vec![endpoint])
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_owned(),
                ..Default::default()
            },
            "line",
        ))
        .build()?;
    let manager: Arc<SimpleNodeManager> = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or("the simple node manager is missing")?;
    let ns = handle
        .get_namespace_index(NAMESPACE_URI)
        .ok_or("the line's namespace is not registered")?;
    {
        let mut space = manager.address_space().write();
        let line = NodeId::new(ns, "Line1");
        let filler_folder = NodeId::new(ns, "Line1.Filler");
        space.add_folder(&line, "Line1", "Line 1", &NodeId::objects_folder_id());
        space.add_folder(&filler_folder, "Filler", "Filler", &line);
        let now = Instant::now();
        let variables = filler
            .values(ns, now)
            .into_iter()
            .map(|(id, value)| {
                let name = id.to_string();
                let short = name.rsplit('.').next().unwrap_or(&name).to_owned();
                let initial = value.value.unwrap_or(Variant::Empty);
                Variable::new(&id, short.as_str(), short.as_str(), initial)
            })
            .collect();
        space.add_variables(variables, &filler_folder);
        let writable = |name: &str, value: Variant| {
            let mut variable = Variable::new(&node_id(ns, name), name, name, value);
            variable.set_access_level(AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE);
            variable.set_user_access_level(AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE);
            variable
        };
        space.add_variables(
            vec![
                writable(SETPOINT, Variant::Double(filler.setpoint)),
                // The recipe survives a dropout, as a controller's does.
                writable(RECIPE, Variant::from(filler.recipe.as_str())),
            ],
            &filler_folder,
        );
        add_analog_properties(&mut space, (ns, SETPOINT), (0.0, TOP_SPEED), SPEED_UNIT);
    }
    let subscriptions = handle.subscriptions().clone();
    let server_task = tokio::spawn(server.run_with(listener));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ended::Shutdown,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut dropout = false;
        for f in faults.take_for(DEVICE_ID) {
            tracing::info!(device = DEVICE_ID, fault = ?f.kind, "Fault injected.");
            dropout |= f.kind == FaultKind::Dropout;
            filler.inject(f.kind, now);
        }
        if dropout {
            break Ended::Dropout;
        }
        // A client's write lands in the address space; the line takes it from there, keeping
        // it within what its drive can run.
        let written = match written_value(&manager, ns, SETPOINT) {
            Some(Variant::Double(v)) if v.is_finite() => Some(v),
            _ => None,
        };
        if let Some(value) = written {
            filler.setpoint = value.clamp(0.0, TOP_SPEED);
        }
        if let Some(Variant::String(recipe)) = written_value(&manager, ns, RECIPE) {
            filler.recipe = recipe.as_ref().to_owned();
        }
        filler.step(interval.as_secs_f64());
        let mut values = filler.values(ns, now);
        if written.is_some_and(|v| v != filler.setpoint) {
            values.push((
                node_id(ns, SETPOINT),
                DataValue::new_now(Variant::Double(filler.setpoint)),
            ));
        }
        if let Err(status) = manager.set_values(
            &subscriptions,
            values.iter().map(|(id, v)| (id, None, v.clone())),
        ) {
            tracing::debug!(%status, "Simulated OPC UA values not set.");
        }
    };
    handle.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    Ok(ended)
}

/// The value of the writable node `name` (under `Line1.Filler.`) as clients last wrote it.
fn written_value(manager: &SimpleNodeManager, ns: u16, name: &str) -> Option<Variant> {
    let space = manager.address_space().read();
    let Some(NodeType::Variable(variable)) = space.find(&node_id(ns, name)) else {
        return None;
    };
    variable
        .value(
            TimestampsToReturn::Neither,
            &NumericRange::None,
            &DataEncoding::Binary,
            0.0,
        )
        .value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_runs_starves_and_counts() {
        let mut f = Filler::new(3);
        for _ in 0..120 {
            f.step(1.0);
        }
        assert!((f.speed - 600.0).abs() < 5.0, "running speed {}", f.speed);
        let good = f.good;
        for _ in 0..60 {
            f.step(1.0);
        }
        // About 10 bottles a second, 0.5 % rejected.
        assert!(
            (560..=600).contains(&(f.good - good)),
            "{} good in 60 s",
            f.good - good
        );
        for _ in 0..110 {
            f.step(1.0);
        }
        assert!(f.starved());
        assert!(f.speed < 300.0, "starving slows the line: {}", f.speed);
        f.inject(FaultKind::Drift, Instant::now());
        for _ in 0..600 {
            f.step(1.0);
        }
        assert!(
            f.pressure < 2.4,
            "the leak lowers CO2 pressure: {}",
            f.pressure
        );
    }

    #[test]
    fn stuck_and_failing_sensors_carry_their_status() {
        let mut f = Filler::new(4);
        let now = Instant::now();
        f.inject(FaultKind::Stuck, now);
        let temp = |f: &Filler| {
            f.values(2, now)
                .into_iter()
                .find(|(id, _)| id.to_string().ends_with("ProductTemp"))
                .map(|(_, v)| v.status)
                .unwrap()
        };
        assert_eq!(temp(&f), Some(StatusCode::UncertainLastUsableValue));
        f.stuck = None;
        f.inject(FaultKind::Malformed, now);
        assert_eq!(temp(&f), Some(StatusCode::BadSensorFailure));
    }

    #[test]
    fn the_config_snippet_names_every_node() {
        let text = line_config_toml("opc.tcp://127.0.0.1:4840/", "/tmp/pki");
        let value: toml::Table = toml::from_str(&text).unwrap();
        let items = value["opcua"]["servers"][0]["items"].as_array().unwrap();
        assert_eq!(items.len(), SIGNALS.len() + 2);
        assert_eq!(
            items[0]["node_id"].as_str(),
            Some("ns=2;s=Line1.Filler.Speed")
        );
        let setpoint = &items[SIGNALS.len()];
        assert_eq!(setpoint["signal"].as_str(), Some("speed_setpoint"));
        assert_eq!(setpoint["writable"].as_bool(), Some(true));
        // The node declares its range (EURange): the configuration gives none.
        assert!(setpoint.get("max").is_none() && setpoint.get("min").is_none());
        let recipe = &items[SIGNALS.len() + 1];
        assert_eq!(
            (recipe["signal"].as_str(), recipe["writable"].as_bool()),
            (Some("recipe"), Some(true))
        );
    }
}
