//! `fabrik run --demo` and `fabrik sim`: a simulated plant whose devices are registered (with
//! their own tokens) and publish to an MQTT endpoint, with faults injected now and then so
//! there is something to detect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fabrik_registry::{NewDevice, Registry, RegistryError};
use fabrik_sim::{DeviceCredentials, Fault, FaultBoard, FaultKind, PlantSpec};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Faults the demo plant goes through, one every `FAULT_EVERY`, in a loop.
const FAULT_CYCLE: [(&str, FaultKind); 6] = [
    ("pump-02", FaultKind::Spike),
    ("pump-03", FaultKind::Drift),
    ("motor-01", FaultKind::Stuck),
    ("pump-04", FaultKind::Malformed),
    ("pump-03", FaultKind::Clear),
    ("pump-01", FaultKind::Dropout),
];
const FAULT_EVERY: Duration = Duration::from_secs(90);

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
        let token = match registry.add(new).await {
            Ok((_, token)) => token,
            Err(RegistryError::Exists(_)) => registry
                .rotate_token(&id)
                .await
                .map_err(|e| e.to_string())?,
            Err(e) => return Err(format!("registering {id}: {e}")),
        };
        out.push(DeviceCredentials { id, token, kind });
    }
    Ok(out)
}

/// Registers the demo's Sparkplug B edge node (`edge-01`, node `<site>/edge-01`).
async fn register_edge_node(
    registry: &Registry,
    site: &str,
) -> Result<fabrik_sim::sparkplug::EdgeNode, String> {
    let id = "edge-01".to_owned();
    let new = NewDevice {
        id: id.clone(),
        name: Some("Simulated compressor edge node".into()),
        device_type: Some("edge-node".into()),
        site: Some(site.to_owned()),
        labels: [("simulated".to_owned(), "true".to_owned())].into(),
        sparkplug_node: Some(format!("{site}/{id}")),
    };
    let token = match registry.add(new).await {
        Ok((_, token)) => token,
        Err(RegistryError::Exists(_)) => registry
            .rotate_token(&id)
            .await
            .map_err(|e| e.to_string())?,
        Err(e) => return Err(format!("registering {id}: {e}")),
    };
    Ok(fabrik_sim::sparkplug::EdgeNode {
        device_id: id.clone(),
        token,
        group: site.to_owned(),
        node: id,
    })
}

/// Cycles through [`FAULT_CYCLE`] until `stop`.
pub(crate) async fn inject_faults(board: FaultBoard, stop: CancellationToken) {
    let mut next = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(FAULT_EVERY) => {}
        }
        let (device, kind) = FAULT_CYCLE[next % FAULT_CYCLE.len()];
        board.inject(Fault {
            device: device.into(),
            kind,
        });
        next += 1;
    }
}

fn reachable(addr: SocketAddr) -> SocketAddr {
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
    stop: CancellationToken,
) -> Result<(JoinHandle<()>, Vec<String>), String> {
    let (Some(registry), Some(mqtt)) = (registry, mqtt) else {
        return Err("--demo needs the registry and mqtt modules (and mqtt.listen set)".into());
    };
    let spec = PlantSpec::default();
    let devices = register(registry, &spec).await?;
    let mut names: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let edge = register_edge_node(registry, &spec.site).await?;
    names.push(format!("{} (Sparkplug B)", edge.device_id));
    let board = FaultBoard::default();
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
    let client = reqwest::Client::new();
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
    println!(
        "simulating {} device(s) at {} → mqtt://{} (Ctrl-C to stop)",
        devices.len(),
        spec.site,
        args.mqtt
    );
    let stop = CancellationToken::new();
    let board = FaultBoard::default();
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
    Ok(())
}
