//! Fabrik's simulated plant: pumps and motors that publish telemetry over MQTT with their own
//! credentials, as real devices would. Signals follow the water-circulation rig of the SKAB
//! benchmark (vibration RMS around 0.21 g, motor current 2.4 A, flow 125 l/min, motor body at
//! 89 °C ...) with noise, duty cycles and thermal lag; faults can be injected on demand:
//! spikes, gradual drift (bearing wear), stuck sensors, drop-outs and malformed payloads.
//!
//! A Sparkplug B edge node ([`sparkplug`]) publishes a compressor's metrics with births,
//! aliases and sequence numbers; chilled-water skids answer Modbus TCP ([`modbus`]); a
//! bottle-filling line's controller is an OPC UA server ([`opcua`]).
//!
//! It owns only device behaviour; registering devices and reaching the broker is the caller's
//! job (through [`DeviceCredentials`] and an MQTT address).

pub mod modbus;
pub mod opcua;
pub mod signals;
pub mod sparkplug;

use std::sync::Arc;
use std::time::Duration;

use fabrik_connect::client::{ClientOptions, MqttClient};
use parking_lot_free::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;

pub use signals::{DeviceKind, Fault, FaultKind, Simulator};

mod parking_lot_free {
    pub(crate) type Mutex<T> = std::sync::Mutex<T>;
}

/// One simulated device and how it logs in.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    /// Device id (MQTT user name).
    pub id: String,
    /// Its token (MQTT password).
    pub token: String,
    /// What it is.
    pub kind: DeviceKind,
}

/// The plant to simulate.
#[derive(Debug, Clone)]
pub struct PlantSpec {
    /// Pumps.
    pub pumps: usize,
    /// Motors.
    pub motors: usize,
    /// Site label of every device.
    pub site: String,
    /// Sample period.
    pub interval: Duration,
    /// Random seed (same seed, same signals).
    pub seed: u64,
}

impl Default for PlantSpec {
    fn default() -> Self {
        Self {
            pumps: 4,
            motors: 2,
            site: "plant-1".into(),
            interval: Duration::from_secs(1),
            seed: 7,
        }
    }
}

impl PlantSpec {
    /// The devices of the plant: (id, kind), e.g. `pump-01`.
    pub fn devices(&self) -> Vec<(String, DeviceKind)> {
        let pumps = (1..=self.pumps).map(|i| (format!("pump-{i:02}"), DeviceKind::Pump));
        let motors = (1..=self.motors).map(|i| (format!("motor-{i:02}"), DeviceKind::Motor));
        pumps.chain(motors).collect()
    }
}

/// Faults waiting to be applied, shared with whoever injects them.
#[derive(Debug, Clone, Default)]
pub struct FaultBoard {
    pending: Arc<Mutex<Vec<Fault>>>,
}

impl FaultBoard {
    /// Schedules a fault on a device.
    pub fn inject(&self, fault: Fault) {
        if let Ok(mut p) = self.pending.lock() {
            p.push(fault);
        }
    }

    fn take_for(&self, device: &str) -> Vec<Fault> {
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        let (mine, rest): (Vec<Fault>, Vec<Fault>) = p.drain(..).partition(|f| f.device == device);
        *p = rest;
        mine
    }
}

/// Seconds between a pump's acoustic clips.
pub const CLIP_EVERY_TICKS: u64 = 5;
/// Length of an acoustic clip, s.
pub const CLIP_SECONDS: f64 = 1.0;
/// Sample rate of the acoustic clips, Hz.
pub const CLIP_RATE: u32 = 8_000;

/// Runs every device until `shutdown`: each connects to `mqtt_address` with its credentials
/// and publishes JSON telemetry to `devices/<id>/telemetry` at QoS 1; pumps also publish a
/// WAV clip of their sound to `devices/<id>/clips/acoustic` every [`CLIP_EVERY_TICKS`].
pub async fn run_plant(
    spec: PlantSpec,
    devices: Vec<DeviceCredentials>,
    mqtt_address: String,
    faults: FaultBoard,
    shutdown: CancellationToken,
) {
    let mut tasks = Vec::new();
    for (n, device) in devices.into_iter().enumerate() {
        let address = mqtt_address.clone();
        let faults = faults.clone();
        let shutdown = shutdown.clone();
        let interval = spec.interval;
        let seed = spec.seed.wrapping_add(n as u64 * 7919);
        tasks.push(tokio::spawn(async move {
            run_device(device, address, interval, seed, n, faults, shutdown).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn run_device(
    device: DeviceCredentials,
    address: String,
    interval: Duration,
    seed: u64,
    index: usize,
    faults: FaultBoard,
    shutdown: CancellationToken,
) {
    let mut options = ClientOptions::new(address, format!("sim-{}", device.id));
    options.username = Some(device.id.clone());
    options.password = Some(device.token.clone());
    options.clean_session = false;
    options.max_backoff = Duration::from_secs(5);
    let (client, mut events) = match MqttClient::start(options, shutdown.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(device = %device.id, error = %e, "Simulated device cannot start.");
            return;
        }
    };
    // Drain connection events so the client never waits on us.
    let log_id = device.id.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let fabrik_connect::client::ClientEvent::Disconnected(reason) = event {
                tracing::debug!(device = %log_id, reason = %reason, "Simulated device lost its connection.");
            }
        }
    });
    let mut sim = Simulator::new(device.kind, SmallRng::seed_from_u64(seed), index);
    let topic = format!("devices/{}/telemetry", device.id);
    let clip_topic = format!("devices/{}/clips/acoustic", device.id);
    let mut ticks: u64 = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for f in faults.take_for(&device.id) {
            tracing::info!(device = %device.id, fault = ?f.kind, "Fault injected.");
            sim.inject(f.kind);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let Some(payload) = sim.step(now_ms, interval.as_secs_f64()) else {
            continue; // a drop-out: the device is silent
        };
        ticks += 1;
        let clip = ticks
            .is_multiple_of(CLIP_EVERY_TICKS)
            .then(|| sim.acoustic_clip(CLIP_RATE, CLIP_SECONDS))
            .flatten();
        let messages = std::iter::once((topic.as_str(), payload.into_bytes()))
            .chain(clip.map(|clip| (clip_topic.as_str(), clip)));
        for (to, body) in messages {
            let publish = client.publish(to, body, 1, false);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = publish => {
                    if let Err(e) = r {
                        tracing::debug!(device = %device.id, error = %e, "Simulated publish failed.");
                    }
                }
            }
        }
    }
}
