//! `fabrik run --demo` and `fabrik sim`: a simulated plant whose devices are registered (with
//! their own tokens) and publish to an MQTT endpoint, chillers that answer Modbus TCP and are
//! polled, with faults injected now and then so there is something to detect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fabrik_registry::{NewDevice, Registry, RegistryError};
use fabrik_sim::{DeviceCredentials, Fault, FaultBoard, FaultKind, PlantSpec};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Faults the demo plant goes through, one every `FAULT_EVERY`, in a loop.
const FAULT_CYCLE: [(&str, FaultKind); 11] = [
    ("pump-02", FaultKind::Spike),
    ("pump-03", FaultKind::Drift),
    ("chiller-02", FaultKind::Drift),
    // A stuck pressure sensor (motors have none, so the fault goes to a pump).
    ("pump-01", FaultKind::Stuck),
    ("pump-04", FaultKind::Malformed),
    ("chiller-01", FaultKind::Dropout),
    ("pump-03", FaultKind::Clear),
    ("chiller-02", FaultKind::Clear),
    ("line-01", FaultKind::Stuck),
    ("pump-01", FaultKind::Dropout),
    ("line-01", FaultKind::Dropout),
];
/// The demo's Modbus TCP chillers.
const CHILLERS: [&str; 2] = ["chiller-01", "chiller-02"];

/// The part of the demo plant that Fabrik polls rather than that publishes: Modbus TCP
/// chillers on ephemeral ports, started before the modules so that the modbus module finds
/// them in its configuration.
pub(crate) struct DemoField {
    /// Faults for every simulated device (shared with the publishing plant).
    pub(crate) board: FaultBoard,
    tasks: Vec<JoinHandle<()>>,
    modbus: bool,
    opcua: bool,
}

impl DemoField {
    /// Waits for the field devices to stop (after the demo's stop token fired).
    pub(crate) async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the demo's field devices and adds them to the configuration (a configured device or
/// server with the same id wins): Modbus chillers when the modbus module runs, the OPC UA
/// filler line when the opcua module does; and the Sparkplug edge node's writable pressure
/// set-point (the node itself starts with the plant).
pub(crate) async fn start_field(
    config: &mut fabrik_runtime::config::Config,
    data_dir: &std::path::Path,
    modbus: bool,
    opcua: bool,
    stop: &CancellationToken,
) -> Result<DemoField, String> {
    let board = FaultBoard::default();
    let mut tasks = Vec::new();
    let snippet =
        fabrik_sim::sparkplug::setpoint_config_toml(&PlantSpec::default().site, EDGE_NODE_ID);
    let parsed: fabrik_runtime::config::Config =
        toml::from_str(&snippet).map_err(|e| format!("demo Sparkplug set-point: {e}"))?;
    for point in parsed.sparkplug.setpoints {
        if !config
            .sparkplug
            .setpoints
            .iter()
            .any(|p| p.device == point.device && p.metric == point.metric)
        {
            config.sparkplug.setpoints.push(point);
        }
    }
    let chillers = if modbus { &CHILLERS[..] } else { &[] };
    for (n, id) in chillers.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("demo chiller: cannot listen on 127.0.0.1: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let snippet = fabrik_sim::modbus::chiller_config_toml(id, &address.to_string(), 1000);
        let parsed: fabrik_runtime::config::Config =
            toml::from_str(&snippet).map_err(|e| format!("demo chiller register map: {e}"))?;
        if !config.modbus.devices.iter().any(|d| d.id == *id) {
            config.modbus.devices.extend(parsed.modbus.devices);
        }
        tasks.push(tokio::spawn(fabrik_sim::modbus::serve_chiller(
            (*id).to_owned(),
            listener,
            7 + n as u64,
            Duration::from_millis(500),
            board.clone(),
            stop.clone(),
        )));
    }
    if opcua {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("demo OPC UA line: cannot listen on 127.0.0.1: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let client_pki = data_dir.join("opcua").join("demo-pki");
        let snippet = fabrik_sim::opcua::line_config_toml(
            &format!("opc.tcp://{address}/"),
            &client_pki.to_string_lossy(),
        );
        let parsed: fabrik_runtime::config::Config =
            toml::from_str(&snippet).map_err(|e| format!("demo OPC UA line configuration: {e}"))?;
        if !config
            .opcua
            .servers
            .iter()
            .any(|s| parsed.opcua.servers.iter().any(|p| p.id == s.id))
        {
            config.opcua.servers.extend(parsed.opcua.servers);
        }
        tasks.push(tokio::spawn(fabrik_sim::opcua::serve_line(
            listener,
            data_dir.join("sim").join("opcua-server-pki"),
            11,
            Duration::from_millis(500),
            board.clone(),
            stop.clone(),
        )));
    }
    Ok(DemoField {
        board,
        tasks,
        modbus,
        opcua,
    })
}

/// Registers the demo's polled devices (no token: Fabrik reaches out to them).
async fn register_field(registry: &Registry, site: &str, field: &DemoField) -> Result<(), String> {
    let mut devices: Vec<(String, String, &str, &str)> = Vec::new();
    if field.modbus {
        for id in CHILLERS {
            devices.push((
                id.to_owned(),
                format!("Simulated chiller {}", &id[id.len() - 2..]),
                "chiller",
                "modbus",
            ));
        }
    }
    if field.opcua {
        devices.push((
            fabrik_sim::opcua::DEVICE_ID.to_owned(),
            "Simulated filler line 01".to_owned(),
            "filler",
            "opcua",
        ));
    }
    for (id, name, device_type, protocol) in devices {
        let new = NewDevice {
            id: id.clone(),
            name: Some(name),
            device_type: Some(device_type.into()),
            site: Some(site.to_owned()),
            labels: [
                ("simulated".to_owned(), "true".to_owned()),
                ("protocol".to_owned(), protocol.to_owned()),
            ]
            .into(),
            sparkplug_node: None,
        };
        match registry.add(new).await {
            Ok(_) | Err(RegistryError::Exists(_)) => {}
            Err(e) => return Err(format!("registering {id}: {e}")),
        }
    }
    Ok(())
}
const FAULT_EVERY: Duration = Duration::from_secs(90);
/// The first fault waits until the demo's pump pipeline has trained (eighteen 10 s windows,
/// plus the first, partial one): a fault during training is learnt as normal, and a
/// newcomer's first fault would go unseen.
const FIRST_FAULT_AFTER: Duration = Duration::from_secs(210);

/// Registers the plant's devices (a device already registered gets a fresh token) and returns
/// their credentials.
pub(crate) async fn register(
    registry: &Registry,
    spec: &PlantSpec,
) -> Result<Vec<DeviceCredentials>, String> {
    let mut out = Vec::new();
    for (id, kind) in spec.devices() {
        let new = NewDevice {
            id: id.clone(),
            name: Some(format!(
                "Simulated {} {}",
                kind.type_name(),
                &id[id.len() - 2..]
            )),
            device_type: Some(kind.type_name().into()),
            site: Some(spec.site.clone()),
            labels: [("simulated".to_owned(), "true".to_owned())].into(),
            sparkplug_node: None,
        };
        let token = add_or_rotate(registry, new).await?;
        out.push(DeviceCredentials { id, token, kind });
    }
    Ok(out)
}

/// The demo's use case, which its pump pipelines serve.
pub(crate) const USE_CASE: &str = "pump-reliability";

/// Defines the demo's use case unless it exists (an earlier run's, perhaps promoted or
/// redefined by the user, is kept as it is): a pilot on three pumps, KPIs from the pumps'
/// rows, the inferences and the operators' feedback, and the gates a newcomer can watch.
async fn define_use_case(registry: &Registry, site: &str) -> Result<(), String> {
    match registry.use_case(USE_CASE).await {
        Ok(_) => return Ok(()),
        Err(RegistryError::UseCaseNotFound(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let definition = serde_json::json!({
        "name": USE_CASE,
        "objective": format!(
            "Find pump faults at {site} early enough to plan the repair, with alerts the \
             operators trust, without raising the pumps' energy cost"
        ),
        "owner": "maintenance",
        "stakeholders": ["OT", "IT", "finance"],
        "pilot": {"devices": ["pump-01", "pump-02", "pump-03"]},
        "scale_up": {"site": site, "device_type": "pump"},
        "kpis": [
            // Planned duty-cycle stops included: context, not a result the model changes.
            {"name": "stopped-time", "kind": "downtime", "table": "pump",
             "condition": "NOT running", "max_gap": "10s"},
            // 400 V three-phase at power factor 0.85: kW = 0.589 × A.
            {"name": "energy-cost", "kind": "energy_cost", "table": "pump",
             "signal": "motor_current * 0.589", "price_per_kwh": 0.18, "currency": "EUR",
             "max_gap": "10s"},
            {"name": "anomaly-rate", "kind": "aggregate", "table": "inferences",
             "signal": "CASE WHEN flag THEN 100.0 ELSE 0.0 END", "aggregate": "mean",
             "filter": "pipeline = 'pump-health'", "unit": "% of windows"},
            {"name": "alert-precision", "kind": "alert_precision", "rules": ["pump-anomaly"],
             "target": 0.8}
        ],
        "gates": {
            // The pilot passes when operators found most of its alerts real (acknowledge
            // them in the dashboard with a verdict), and the model does not flag everything
            // (the demo's injected faults keep it flagging about one window in seven).
            "scale_up": [
                {"time_in_stage_at_least": "10m"},
                {"kpi": "alert-precision", "at_least": 0.5, "evidence_at_least": 3.0},
                {"kpi": "anomaly-rate", "at_most": 30.0, "evidence_at_least": 100.0}
            ],
            // Plant-wide, precision is decided by a sequential test on the scale-up's
            // labelled alerts, not read off a count: passes once they favour 0.8 over 0.6
            // with about a 5 % chance of passing a model that is right 60 % of the time.
            "enterprise": [
                {"time_in_stage_at_least": "14d"},
                {"kpi": "alert-precision", "sprt": {"good": 0.8, "bad": 0.6}}
            ]
        }
    });
    let definition = serde_json::from_value(definition).map_err(|e| e.to_string())?;
    registry
        .put_use_case(definition)
        .await
        .map_err(|e| format!("the demo's use case: {e}"))?;
    Ok(())
}

/// Registers a device and returns its token; a device registered by an earlier run keeps its
/// record and gets a fresh token (the old one was printed by that run only).
async fn add_or_rotate(registry: &Registry, new: NewDevice) -> Result<String, String> {
    let id = new.id.clone();
    match registry.add(new).await {
        Ok((_, token)) => Ok(token),
        Err(RegistryError::Exists(_)) => {
            registry.rotate_token(&id).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("registering {id}: {e}")),
    }
}

/// The demo's Sparkplug B edge node: its device id and edge node id.
const EDGE_NODE_ID: &str = "edge-01";

/// Registers the demo's Sparkplug B edge node (`edge-01`, node `<site>/edge-01`).
async fn register_edge_node(
    registry: &Registry,
    site: &str,
) -> Result<fabrik_sim::sparkplug::EdgeNode, String> {
    let id = EDGE_NODE_ID.to_owned();
    let new = NewDevice {
        id: id.clone(),
        name: Some("Simulated compressor edge node".into()),
        device_type: Some("edge-node".into()),
        site: Some(site.to_owned()),
        labels: [("simulated".to_owned(), "true".to_owned())].into(),
        sparkplug_node: Some(format!("{site}/{id}")),
    };
    let token = add_or_rotate(registry, new).await?;
    Ok(fabrik_sim::sparkplug::EdgeNode {
        device_id: id.clone(),
        token,
        group: site.to_owned(),
        node: id,
    })
}

/// Cycles through [`FAULT_CYCLE`] until `stop`, the first after [`FIRST_FAULT_AFTER`].
pub(crate) async fn inject_faults(board: FaultBoard, stop: CancellationToken) {
    let mut next = 0;
    let mut wait = FIRST_FAULT_AFTER;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = FAULT_EVERY;
        let (device, kind) = FAULT_CYCLE[next % FAULT_CYCLE.len()];
        board.inject(Fault {
            device: device.into(),
            kind,
        });
        next += 1;
    }
}

/// `addr` as a client on this machine reaches it: a wildcard listen address becomes localhost.
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Starts the demo plant against this process's registry and MQTT endpoint.
pub(crate) async fn start(
    registry: &Option<Registry>,
    mqtt: Option<SocketAddr>,
    field: Option<&DemoField>,
    stop: CancellationToken,
) -> Result<(JoinHandle<()>, Vec<String>), String> {
    let (Some(registry), Some(mqtt)) = (registry, mqtt) else {
        return Err("--demo needs the registry and mqtt modules (and mqtt.listen set)".into());
    };
    let spec = PlantSpec::default();
    let devices = register(registry, &spec).await?;
    let mut names: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    define_use_case(registry, &spec.site).await?;
    let edge = register_edge_node(registry, &spec.site).await?;
    names.push(format!("{} (Sparkplug B)", edge.device_id));
    if let Some(field) = field {
        register_field(registry, &spec.site, field).await?;
        if field.modbus {
            names.extend(CHILLERS.iter().map(|c| format!("{c} (Modbus TCP)")));
        }
        if field.opcua {
            names.push(format!("{} (OPC UA)", fabrik_sim::opcua::DEVICE_ID));
        }
    }
    let board = field.map(|f| f.board.clone()).unwrap_or_default();
    let address = reachable(mqtt).to_string();
    let task = tokio::spawn(async move {
        let faults = tokio::spawn(inject_faults(board.clone(), stop.clone()));
        let node = tokio::spawn(fabrik_sim::sparkplug::run_edge_node(
            edge,
            address.clone(),
            spec.interval,
            spec.seed,
            stop.clone(),
        ));
        fabrik_sim::run_plant(spec, devices, address, board, stop).await;
        let _ = faults.await;
        let _ = node.await;
    });
    let lines = vec![
        format!(
            "  Demo:      simulated plant `plant-1`: {} publishing every second",
            names.join(", ")
        ),
        "             try: fabrik query \"SELECT device, time, vibration_rms, flow FROM pump ORDER BY time DESC LIMIT 8\"".into(),
        "             Sparkplug B: fabrik query \"SELECT * FROM sparkplug ORDER BY time DESC LIMIT 3\"".into(),
        "             Modbus:      fabrik query \"SELECT device, time, supply_temp, compressor_current FROM chiller ORDER BY time DESC LIMIT 4\"".into(),
        "             OPC UA:      fabrik query \"SELECT time, speed, product_temp, co2_pressure, state FROM filler ORDER BY time DESC LIMIT 4\"".into(),
    ];
    Ok((task, lines))
}

/// Arguments of `fabrik sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Pumps to simulate.
    #[arg(long, default_value_t = 4)]
    pumps: usize,
    /// Motors to simulate.
    #[arg(long, default_value_t = 2)]
    motors: usize,
    /// Site label of the devices.
    #[arg(long, default_value = "plant-1")]
    site: String,
    /// Sample period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// MQTT endpoint of the Fabrik to publish to.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Modbus TCP chillers to serve (Fabrik polls them; the register map to add to
    /// fabrik.toml is printed at start).
    #[arg(long, default_value_t = 2)]
    chillers: usize,
    /// Where the first chiller's Modbus TCP server listens; the next ones take the following
    /// ports.
    #[arg(long, default_value = "127.0.0.1:5020")]
    modbus_listen: SocketAddr,
    /// Where the OPC UA filler line listens (the `[[opcua.servers]]` entry to add to
    /// fabrik.toml is printed at start).
    #[arg(long, default_value = "127.0.0.1:4840")]
    opcua_listen: SocketAddr,
    /// Do not serve the OPC UA filler line.
    #[arg(long)]
    no_opcua: bool,
    /// A fault to inject, DEVICE:KIND[@SECONDS] (kinds: spike, drift, stuck, dropout,
    /// malformed, clear); repeat for several.
    #[arg(long = "fault", value_parser = parse_fault)]
    faults: Vec<(u64, Fault)>,
    /// Do not cycle through faults every 90 s.
    #[arg(long)]
    no_fault_cycle: bool,
    #[command(flatten)]
    endpoint: crate::client::Endpoint,
}

fn parse_fault(text: &str) -> Result<(u64, Fault), String> {
    let (spec, at) = match text.split_once('@') {
        Some((s, t)) => (
            s,
            t.parse::<u64>()
                .map_err(|_| format!("`{t}` is not seconds"))?,
        ),
        None => (text, 0),
    };
    let (device, kind) = spec
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not DEVICE:KIND[@SECONDS]"))?;
    Ok((
        at,
        Fault {
            device: device.to_owned(),
            kind: kind.parse()?,
        },
    ))
}

/// Registers a device Fabrik polls or subscribes to (no token needed); one registered by an
/// earlier run is kept as it is.
async fn register_polled(
    ep: &crate::client::Endpoint,
    client: &reqwest::Client,
    id: &str,
    device_type: &str,
    site: &str,
    protocol: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "id": id, "type": device_type, "site": site,
        "labels": {"simulated": "true", "protocol": protocol},
    });
    let response = ep
        .request(client, reqwest::Method::POST, "/api/v1/devices")
        .json(&body)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::CONFLICT {
        crate::client::check(response).await?;
    }
    Ok(())
}

/// `fabrik sim`: registers the plant through the API of a running Fabrik and publishes until
/// interrupted.
pub(crate) async fn sim(args: SimArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let spec = PlantSpec {
        pumps: args.pumps,
        motors: args.motors,
        site: args.site.clone(),
        interval: Duration::from_millis(args.interval_ms.max(10)),
        seed: 7,
    };
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    let mut devices = Vec::new();
    for (id, kind) in spec.devices() {
        let body = serde_json::json!({
            "id": id, "type": kind.type_name(), "site": spec.site,
            "labels": {"simulated": "true"},
        });
        let response = ep
            .request(&client, reqwest::Method::POST, "/api/v1/devices")
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach Fabrik at {}", ep.url))?;
        let response = if response.status() == reqwest::StatusCode::CONFLICT {
            ep.request(
                &client,
                reqwest::Method::POST,
                &format!("/api/v1/devices/{id}/token"),
            )
            .send()
            .await?
        } else {
            response
        };
        let value: serde_json::Value = crate::client::check(response).await?.json().await?;
        let token = value
            .get("token")
            .and_then(|t| t.as_str())
            .context("the server sent no token")?
            .to_owned();
        devices.push(DeviceCredentials { id, token, kind });
    }
    let stop = CancellationToken::new();
    let board = FaultBoard::default();
    let mut field = Vec::new();
    for n in 0..args.chillers {
        let id = format!("chiller-{:02}", n + 1);
        let port = args
            .modbus_listen
            .port()
            .checked_add(u16::try_from(n)?)
            .context("--modbus-listen port range overflows")?;
        let address = SocketAddr::new(args.modbus_listen.ip(), port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} for {id} (--modbus-listen)"))?;
        register_polled(ep, &client, &id, "chiller", &spec.site, "modbus").await?;
        println!(
            "# {id}: Modbus TCP on {address}; poll it with:\n{}",
            fabrik_sim::modbus::chiller_config_toml(&id, &reachable(address).to_string(), 1000)
        );
        field.push(tokio::spawn(fabrik_sim::modbus::serve_chiller(
            id,
            listener,
            7 + n as u64,
            Duration::from_millis(500),
            board.clone(),
            stop.clone(),
        )));
    }
    let chillers = field.len();
    if !args.no_opcua {
        let listener = tokio::net::TcpListener::bind(args.opcua_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the OPC UA line (--opcua-listen)",
                    args.opcua_listen
                )
            })?;
        let id = fabrik_sim::opcua::DEVICE_ID;
        register_polled(ep, &client, id, "filler", &spec.site, "opcua").await?;
        let endpoint = format!("opc.tcp://{}/", reachable(args.opcua_listen));
        println!(
            "# {id}: OPC UA on {endpoint} (None and Basic256Sha256/SignAndEncrypt); subscribe with:\n{}",
            fabrik_sim::opcua::line_config_toml(&endpoint, "./fabrik-data/opcua/pki")
        );
        field.push(tokio::spawn(fabrik_sim::opcua::serve_line(
            listener,
            std::env::temp_dir().join("fabrik-sim-opcua-pki"),
            11,
            Duration::from_millis(500),
            board.clone(),
            stop.clone(),
        )));
    }
    println!(
        "simulating {} device(s) at {} → mqtt://{}, {chillers} Modbus chiller(s), {} OPC UA line (Ctrl-C to stop)",
        devices.len(),
        spec.site,
        args.mqtt,
        usize::from(!args.no_opcua)
    );
    for (at, fault) in args.faults {
        let board = board.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(at)) => board.inject(fault),
            }
        });
    }
    if !args.no_fault_cycle {
        tokio::spawn(inject_faults(board.clone(), stop.clone()));
    }
    let plant = tokio::spawn(fabrik_sim::run_plant(
        spec,
        devices,
        args.mqtt,
        board,
        stop.clone(),
    ));
    fabrik_runtime::shutdown::signal().await;
    stop.cancel();
    let _ = plant.await;
    for task in field {
        let _ = task.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A stuck-sensor fault freezes the pressure sensor; on a device without one (a motor)
    /// it would change nothing a newcomer could see.
    #[test]
    fn stuck_faults_of_the_cycle_go_to_devices_with_a_pressure_sensor() {
        let plant = PlantSpec::default().devices();
        let mut checked = 0;
        for (device, fault) in FAULT_CYCLE {
            let Some((_, kind)) = plant.iter().find(|(id, _)| id == device) else {
                continue; // the polled chillers and the OPC UA line have their own servers
            };
            if fault != FaultKind::Stuck {
                continue;
            }
            let mut sim =
                fabrik_sim::Simulator::new(*kind, rand::rngs::SmallRng::seed_from_u64(7), 0);
            let payload: serde_json::Value =
                serde_json::from_str(&sim.step(0, 1.0).expect("a payload")).expect("json");
            assert!(
                payload.get("pressure").is_some(),
                "a stuck sensor on {device}, which has none: {payload}"
            );
            checked += 1;
        }
        assert!(
            checked > 0,
            "the cycle has a stuck sensor on a published device"
        );
    }

    #[test]
    fn the_first_fault_comes_after_the_demo_pipeline_has_trained() {
        let pipeline = crate::pipelines::demo_pipeline();
        let window = fabrik_runtime::units::parse_duration(&pipeline.window).expect("window");
        let lateness = fabrik_runtime::units::parse_duration(&pipeline.lateness).expect("late");
        let windows = pipeline
            .training_windows
            .expect("the demo names its training")
            + 1;
        let trained = window * windows + lateness;
        assert!(
            FIRST_FAULT_AFTER > trained,
            "{FIRST_FAULT_AFTER:?} vs {trained:?}"
        );
    }
}
