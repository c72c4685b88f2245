//! Simulated Modbus TCP field devices: the PLC of a chilled-water skid, served with
//! tokio-modbus on a real socket, whose register map exercises every decoding the poller has
//! (f32, f64, u16/i16 with scale, a u32 energy counter in little-endian word order as many
//! PLCs store it, a string, coils and discrete inputs) and a writable set-point that the
//! thermostat follows.
//!
//! Faults: `drift` fouls the condenser (pressure and current creep up), `spike` a current
//! surge, `stuck` freezes the supply-temperature register, `dropout` leaves requests
//! unanswered for 60 s (a hung device, for the poller's isolation), `malformed` answers
//! exception 0x04 (server device failure) for 10 s, `clear` cleans the condenser.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::{FaultBoard, FaultKind};

/// Holding register of the supply-water set-point (0.1 °C).
pub const SETPOINT_REGISTER: u16 = 100;
/// Coil that enables the compressor (remote start/stop).
pub const ENABLE_COIL: u16 = 1;
const MODEL: &str = "FBK-CH200";
const INPUT_REGISTERS: usize = 16;
const HOLDING_REGISTERS: usize = 106;

/// The register map as a `[[modbus.devices]]` entry for `id` at `address`, ready to paste into
/// `fabrik.toml` (the demo parses this same text).
pub fn chiller_config_toml(id: &str, address: &str, poll_interval_ms: u64) -> String {
    format!(
        r#"[[modbus.devices]]
id = "{id}"
measurement = "chiller"
address = "{address}"
unit_id = 1
timeout_ms = 500

[[modbus.devices.maps]]
poll_interval_ms = {poll_interval_ms}

[[modbus.devices.maps.points]]
name = "supply_temp"
table = "input"
address = 0
type = "f32"
unit = "°C"

[[modbus.devices.maps.points]]
name = "return_temp"
table = "input"
address = 2
type = "f32"
unit = "°C"

[[modbus.devices.maps.points]]
name = "compressor_current"
table = "input"
address = 4
type = "u16"
scale = 0.1
unit = "A"

[[modbus.devices.maps.points]]
name = "discharge_pressure"
table = "input"
address = 5
type = "i16"
scale = 0.01
unit = "bar"

[[modbus.devices.maps.points]]
name = "energy"
table = "input"
address = 6
type = "u32"
word_order = "little"
scale = 0.1
unit = "kWh"

[[modbus.devices.maps.points]]
name = "run_hours"
table = "input"
address = 8
type = "f64"
unit = "h"

[[modbus.devices.maps.points]]
name = "setpoint"
table = "holding"
address = {SETPOINT_REGISTER}
type = "u16"
scale = 0.1
unit = "°C"
writable = true
min = 4.0
max = 15.0

[[modbus.devices.maps.points]]
name = "running"
table = "coil"
address = 0
type = "bool"

[[modbus.devices.maps.points]]
name = "enabled"
table = "coil"
address = {ENABLE_COIL}
type = "bool"
writable = true

[[modbus.devices.maps.points]]
name = "high_pressure_alarm"
table = "discrete"
address = 0
type = "bool"

[[modbus.devices.maps]]
poll_interval_ms = 60000

[[modbus.devices.maps.points]]
name = "model"
table = "holding"
address = 101
type = "string"
length = 5
"#
    )
}

/// The chiller's physical state and registers.
#[derive(Debug)]
struct Chiller {
    rng: SmallRng,
    t: f64,
    supply: f64,
    returned: f64,
    current: f64,
    pressure: f64,
    energy_kwh: f64,
    run_hours: f64,
    running: bool,
    enabled: bool,
    setpoint: f64,
    fouling: f64,
    fouling_rate: f64,
    spike_left: u32,
    stuck_until: Option<Instant>,
    stuck_value: f64,
    silent_until: Option<Instant>,
    failing_until: Option<Instant>,
}

impl Chiller {
    fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let supply = 7.0 + rng.random_range(-0.5..0.5);
        Self {
            rng,
            t: 0.0,
            supply,
            returned: supply + 4.0,
            current: 0.3,
            pressure: 6.0,
            energy_kwh: 12_480.0,
            run_hours: 3_120.5,
            running: false,
            enabled: true,
            setpoint: 7.0,
            fouling: 0.0,
            fouling_rate: 0.0,
            spike_left: 0,
            stuck_until: None,
            stuck_value: 0.0,
            silent_until: None,
            failing_until: None,
        }
    }

    fn noise(&mut self, scale: f64) -> f64 {
        (self.rng.random::<f64>() - 0.5) * 2.0 * scale
    }

    /// Advances the plant by `dt` seconds.
    fn step(&mut self, dt: f64) {
        self.t += dt;
        // Cooling load follows the process: a slow wave plus noise.
        let load = (0.6 + 0.3 * (self.t * std::f64::consts::TAU / 600.0).sin()).clamp(0.1, 1.0);
        // Thermostat with a ±0.5 °C band: the compressor cycles, as real ones do.
        if !self.enabled || self.supply < self.setpoint - 0.5 {
            self.running = false;
        } else if self.supply > self.setpoint + 0.5 {
            self.running = true;
        }
        let efficiency = 1.0 - 0.4 * self.fouling;
        if self.running {
            self.supply -= (0.06 * efficiency - 0.02 * load) * dt;
        } else {
            self.supply += 0.04 * load * dt;
        }
        self.supply += self.noise(0.01);
        self.returned = self.supply + 5.0 * load + self.noise(0.05);
        self.fouling = (self.fouling + self.fouling_rate * dt).min(1.0);
        self.current = if self.running {
            18.5 * (0.8 + 0.3 * load) * (1.0 + 0.25 * self.fouling) + self.noise(0.2)
        } else {
            0.3 + self.noise(0.05)
        };
        if self.spike_left > 0 {
            self.spike_left -= 1;
            self.current *= 2.2;
        }
        self.pressure = if self.running {
            14.0 + 1.5 * load + 3.5 * self.fouling + self.noise(0.1)
        } else {
            6.0 + self.noise(0.05)
        };
        if self.running {
            // 400 V three-phase at power factor 0.85.
            self.energy_kwh += 400.0 * 3f64.sqrt() * 0.85 * self.current / 1000.0 * dt / 3600.0;
            self.run_hours += dt / 3600.0;
        }
    }

    fn inject(&mut self, fault: FaultKind, now: Instant) {
        match fault {
            FaultKind::Drift => self.fouling_rate = 1.0 / 600.0,
            FaultKind::Clear => {
                self.fouling_rate = 0.0;
                self.fouling = 0.0;
            }
            FaultKind::Spike => self.spike_left = 3,
            FaultKind::Stuck => {
                self.stuck_value = self.supply;
                self.stuck_until = Some(now + Duration::from_secs(120));
            }
            FaultKind::Dropout => self.silent_until = Some(now + Duration::from_secs(60)),
            FaultKind::Malformed => self.failing_until = Some(now + Duration::from_secs(10)),
        }
    }

    fn input_registers(&self, now: Instant) -> [u16; INPUT_REGISTERS] {
        let mut r = [0u16; INPUT_REGISTERS];
        let supply = match self.stuck_until {
            Some(until) if now < until => self.stuck_value,
            _ => self.supply,
        };
        put_f32(&mut r[0..2], supply as f32);
        put_f32(&mut r[2..4], self.returned as f32);
        r[4] = (self.current * 10.0).round().clamp(0.0, 65_535.0) as u16;
        r[5] = (self.pressure * 100.0).round().clamp(-32_768.0, 32_767.0) as i16 as u16;
        let energy = (self.energy_kwh * 10.0) as u32;
        // Low word first: the "little" word order many PLCs use for counters.
        r[6] = (energy & 0xFFFF) as u16;
        r[7] = (energy >> 16) as u16;
        let hours = self.run_hours.to_bits();
        for (i, word) in r[8..12].iter_mut().enumerate() {
            *word = (hours >> (48 - 16 * i)) as u16;
        }
        r
    }

    fn holding_registers(&self) -> [u16; HOLDING_REGISTERS] {
        let mut r = [0u16; HOLDING_REGISTERS];
        r[usize::from(SETPOINT_REGISTER)] = (self.setpoint * 10.0).round() as u16;
        let bytes = MODEL.as_bytes();
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = u16::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u16::from(*b));
            r[101 + i] = hi | lo;
        }
        r
    }

    fn coils(&self) -> [bool; 2] {
        [self.running, self.enabled]
    }

    fn discrete_inputs(&self) -> [bool; 1] {
        [self.pressure > 17.0]
    }
}

fn put_f32(words: &mut [u16], value: f32) {
    let bits = value.to_bits();
    words[0] = (bits >> 16) as u16;
    words[1] = (bits & 0xFFFF) as u16;
}

fn slice<T: Copy>(all: &[T], address: u16, quantity: u16) -> Result<Vec<T>, ExceptionCode> {
    let start = usize::from(address);
    let end = start + usize::from(quantity);
    if quantity == 0 || end > all.len() {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(all[start..end].to_vec())
}

type Answer = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

/// One connection's view of a chiller.
#[derive(Clone)]
struct ChillerService {
    chiller: Arc<Mutex<Chiller>>,
}

impl ChillerService {
    fn answer(&self, request: Request<'static>) -> Result<Response, ExceptionCode> {
        let now = Instant::now();
        let mut c = self
            .chiller
            .lock()
            .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
        if c.failing_until.is_some_and(|until| now < until) {
            return Err(ExceptionCode::ServerDeviceFailure);
        }
        match request {
            Request::ReadInputRegisters(a, n) => Ok(Response::ReadInputRegisters(slice(
                &c.input_registers(now),
                a,
                n,
            )?)),
            Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(slice(
                &c.holding_registers(),
                a,
                n,
            )?)),
            Request::ReadCoils(a, n) => Ok(Response::ReadCoils(slice(&c.coils(), a, n)?)),
            Request::ReadDiscreteInputs(a, n) => Ok(Response::ReadDiscreteInputs(slice(
                &c.discrete_inputs(),
                a,
                n,
            )?)),
            Request::WriteSingleRegister(SETPOINT_REGISTER, value) => {
                if !(40..=150).contains(&value) {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                c.setpoint = f64::from(value) / 10.0;
                Ok(Response::WriteSingleRegister(SETPOINT_REGISTER, value))
            }
            Request::WriteSingleCoil(ENABLE_COIL, on) => {
                c.enabled = on;
                Ok(Response::WriteSingleCoil(ENABLE_COIL, on))
            }
            Request::WriteSingleRegister(..) | Request::WriteSingleCoil(..) => {
                Err(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for ChillerService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, request: Self::Request) -> Self::Future {
        let silent_until = self.chiller.lock().ok().and_then(|c| c.silent_until);
        if let Some(until) = silent_until.filter(|u| Instant::now() < *u) {
            // A hung device: the request is read and never answered while the fault lasts.
            return Box::pin(async move {
                tokio::time::sleep_until(until.into()).await;
                Ok(None)
            });
        }
        let answer = self.answer(request.request).map(Some);
        Box::pin(std::future::ready(answer))
    }
}

/// A running simulated chiller.
#[derive(Debug)]
pub struct SimulatedChiller {
    /// Device id.
    pub id: String,
    /// Where its Modbus TCP server listens.
    pub address: SocketAddr,
}

/// Serves one chiller on `listener` until `shutdown`, updating its state every `interval` and
/// taking its faults from `faults`.
pub async fn serve_chiller(
    id: String,
    listener: tokio::net::TcpListener,
    seed: u64,
    interval: Duration,
    faults: FaultBoard,
    shutdown: CancellationToken,
) {
    let chiller = Arc::new(Mutex::new(Chiller::new(seed)));
    let service = ChillerService {
        chiller: chiller.clone(),
    };
    let physics = {
        let shutdown = shutdown.clone();
        let id = id.clone();
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let faults = faults.take_for(&id);
                if let Ok(mut c) = chiller.lock() {
                    for f in faults {
                        tracing::info!(device = %id, fault = ?f.kind, "Fault injected.");
                        c.inject(f.kind, Instant::now());
                    }
                    c.step(interval.as_secs_f64());
                }
            }
        }
    };
    let server = Server::new(listener);
    let on_connected = |stream, address| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, address, |_| Ok(Some(service.clone()))) }
    };
    let on_error =
        |e: std::io::Error| tracing::debug!(error = %e, "Simulated Modbus connection ended.");
    let serve = server.serve_until(&on_connected, on_error, {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    });
    let (served, ()) = tokio::join!(serve, physics);
    if let Err(e) = served {
        tracing::warn!(device = %id, error = %e, "Simulated Modbus server stopped.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thermostat_cycles_and_fouling_raises_pressure_and_current() {
        let mut c = Chiller::new(1);
        let mut starts = 0;
        let mut was_running = c.running;
        for _ in 0..3600 {
            c.step(1.0);
            if c.running && !was_running {
                starts += 1;
            }
            was_running = c.running;
            assert!((4.0..11.0).contains(&c.supply), "supply {}", c.supply);
        }
        assert!(
            starts >= 3,
            "the compressor cycles: {starts} starts in an hour"
        );
        c.inject(FaultKind::Drift, Instant::now());
        for _ in 0..900 {
            c.step(1.0);
        }
        // Compare while running, when both are meaningful.
        while !c.running {
            c.step(1.0);
        }
        assert!(c.fouling > 0.99);
        assert!(c.pressure > 17.0, "fouled pressure {}", c.pressure);
        assert!(c.discrete_inputs()[0], "high-pressure alarm");
    }

    #[test]
    fn registers_encode_what_the_map_says() {
        let mut c = Chiller::new(2);
        c.energy_kwh = 70_000.05;
        c.run_hours = 1.5;
        c.supply = 6.75;
        let now = Instant::now();
        let r = c.input_registers(now);
        assert_eq!(
            f32::from_bits(u32::from(r[0]) << 16 | u32::from(r[1])),
            6.75
        );
        assert_eq!(u32::from(r[7]) << 16 | u32::from(r[6]), 700_000);
        let hours = r[8..12]
            .iter()
            .fold(0u64, |acc, w| acc << 16 | u64::from(*w));
        assert_eq!(f64::from_bits(hours), 1.5);
        let h = c.holding_registers();
        assert_eq!(h[100], 70);
        assert_eq!(h[101], u16::from_be_bytes(*b"FB"));
        assert_eq!(h[105], u16::from(b'0') << 8);
        c.inject(FaultKind::Stuck, now);
        c.supply = 9.0;
        assert_eq!(
            f32::from_bits(
                u32::from(c.input_registers(now)[0]) << 16 | u32::from(c.input_registers(now)[1])
            ),
            6.75
        );
    }

    #[test]
    fn the_config_snippet_parses_as_toml() {
        let text = chiller_config_toml("chiller-01", "127.0.0.1:5020", 1000);
        let value: toml::Table = toml::from_str(&text).unwrap();
        let device = &value["modbus"]["devices"][0];
        assert_eq!(device["id"].as_str(), Some("chiller-01"));
        assert_eq!(device["maps"][0]["points"].as_array().unwrap().len(), 10);
    }
}
