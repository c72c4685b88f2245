//! Signal models of the simulated devices and the faults that can be injected into them.

use rand::Rng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

/// The kinds of simulated equipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A centrifugal pump in a water loop (SKAB-like).
    Pump,
    /// An electric motor driving a conveyor.
    Motor,
}

impl DeviceKind {
    /// The registry type (and so the table) of the device.
    pub fn type_name(self) -> &'static str {
        match self {
            DeviceKind::Pump => "pump",
            DeviceKind::Motor => "motor",
        }
    }
}

/// Faults the simulator can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// A few samples of vibration and current far above normal.
    Spike,
    /// Vibration and motor temperature creep up over minutes (bearing wear); stays until the
    /// device is "repaired" with `clear`.
    Drift,
    /// The pressure sensor repeats its last value for two minutes.
    Stuck,
    /// The device is silent for 60 s.
    Dropout,
    /// The next payload is not valid JSON.
    Malformed,
    /// Ends a drift.
    Clear,
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spike" => Ok(Self::Spike),
            "drift" => Ok(Self::Drift),
            "stuck" => Ok(Self::Stuck),
            "dropout" => Ok(Self::Dropout),
            "malformed" => Ok(Self::Malformed),
            "clear" => Ok(Self::Clear),
            other => Err(format!(
                "unknown fault `{other}`: spike, drift, stuck, dropout, malformed or clear"
            )),
        }
    }
}

/// A fault for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Device id.
    pub device: String,
    /// What happens.
    pub kind: FaultKind,
}

/// One device's signal state.
#[derive(Debug)]
pub struct Simulator {
    kind: DeviceKind,
    rng: SmallRng,
    /// Seconds since start.
    t: f64,
    /// Offset of the duty cycle, so devices do not all start at once.
    phase: f64,
    motor_temperature: f64,
    spike_left: u32,
    drift: f64,
    drifting: bool,
    stuck_left: f64,
    stuck_pressure: f64,
    silent_left: f64,
    malformed_next: bool,
}

/// Running 10 minutes, then stopped 2.
const DUTY_ON: f64 = 600.0;
const DUTY_PERIOD: f64 = 720.0;

impl Simulator {
    /// A device; `index` staggers duty cycles across the plant.
    pub fn new(kind: DeviceKind, rng: SmallRng, index: usize) -> Self {
        Self {
            kind,
            rng,
            t: 0.0,
            phase: (index as f64 * 97.0) % DUTY_PERIOD,
            motor_temperature: 75.0,
            spike_left: 0,
            drift: 0.0,
            drifting: false,
            stuck_left: 0.0,
            stuck_pressure: 0.0,
            silent_left: 0.0,
            malformed_next: false,
        }
    }

    /// Applies a fault from now on.
    pub fn inject(&mut self, fault: FaultKind) {
        match fault {
            FaultKind::Spike => self.spike_left = 3,
            FaultKind::Drift => self.drifting = true,
            FaultKind::Clear => {
                self.drifting = false;
                self.drift = 0.0;
            }
            FaultKind::Stuck => self.stuck_left = 120.0,
            FaultKind::Dropout => self.silent_left = 60.0,
            FaultKind::Malformed => self.malformed_next = true,
        }
    }

    fn noise(&mut self, sd: f64) -> f64 {
        // Sum of uniforms: close enough to Gaussian for sensor noise, and cheap.
        let u: f64 = (0..4).map(|_| self.rng.random::<f64>() - 0.5).sum();
        u * sd * std::f64::consts::SQRT_2 * 1.2247
    }

    /// Whether the device runs at this moment of its duty cycle.
    pub fn running(&self) -> bool {
        (self.t + self.phase) % DUTY_PERIOD < DUTY_ON
    }

    /// A pump's microphone: `seconds` of 16-bit mono WAV at `rate` Hz while the pump runs
    /// (the recorder is triggered by the motor; a stopped pump gives no clip, nor does a
    /// silent device or a motor). The motor hums at 100 Hz with harmonics over broadband flow
    /// noise; bearing wear (the drift fault) adds a whine at 3.2 kHz that grows with it, long
    /// before the vibration RMS moves much.
    pub fn acoustic_clip(&mut self, rate: u32, seconds: f64) -> Option<Vec<u8>> {
        if self.kind != DeviceKind::Pump || !self.running() || self.silent_left > 0.0 {
            return None;
        }
        let frames = (f64::from(rate) * seconds) as usize;
        let whine = 0.06 * self.drift.min(1.0);
        let phase: f64 = self.rng.random::<f64>() * std::f64::consts::TAU;
        let samples: Vec<i16> = (0..frames)
            .map(|n| {
                let t = n as f64 / f64::from(rate);
                let w = std::f64::consts::TAU * t;
                let hum = 0.25 * (w * 100.0 + phase).sin() + 0.08 * (w * 300.0 + phase).sin();
                let flow = (self.rng.random::<f64>() - 0.5) * 0.04;
                let bearing = whine * (w * 3_200.0).sin();
                ((hum + flow + bearing).clamp(-1.0, 1.0) * 32_767.0) as i16
            })
            .collect();
        Some(fabrik_core::wav::encode_pcm16(rate, 1, &samples))
    }

    /// Advances by `dt` seconds; returns the JSON payload of this sample, or `None` while the
    /// device is silent.
    pub fn step(&mut self, now_ms: i64, dt: f64) -> Option<String> {
        self.t += dt;
        if self.silent_left > 0.0 {
            self.silent_left -= dt;
            return None;
        }
        if self.malformed_next {
            self.malformed_next = false;
            return Some(format!(
                "{{\"ts\": {now_ms}, \"vibration_rms\": 0.2, \"broken"
            ));
        }
        let running = self.running();
        if self.drifting {
            self.drift += dt / 600.0; // full effect after 10 minutes
        }
        let load = if running { 1.0 } else { 0.0 };
        let target = if running {
            89.5 + 6.0 * self.drift
        } else {
            45.0
        };
        self.motor_temperature += (target - self.motor_temperature) * (dt / 300.0).min(1.0);
        let spike = if self.spike_left > 0 {
            self.spike_left -= 1;
            5.0
        } else {
            1.0
        };
        let vibration = (0.21 + 0.04 * self.drift) * load * spike + 0.01 + self.noise(0.005);
        let current = (2.4 + self.noise(0.12) + 0.3 * self.drift) * load * spike.sqrt() + 0.02;
        let pressure = if self.stuck_left > 0.0 {
            self.stuck_left -= dt;
            self.stuck_pressure
        } else {
            let p = 1.0 * load + 0.05 + self.noise(0.04);
            self.stuck_pressure = p;
            p
        };
        let temperature = self.motor_temperature + self.noise(0.3);
        let voltage = 229.0 + self.noise(3.0);
        let body = match self.kind {
            DeviceKind::Pump => {
                let flow = 125.2 * load + self.noise(1.6) * load;
                let fluid = 28.5 + 0.5 * (self.t / 3600.0).sin() + self.noise(0.1);
                serde_json::json!({
                    "ts": now_ms,
                    "running": running,
                    "vibration_rms": round(vibration, 5),
                    "motor_current": round(current, 4),
                    "pressure": round(pressure, 4),
                    "temperature": round(temperature, 3),
                    "fluid_temperature": round(fluid, 3),
                    "flow": round(flow, 3),
                    "voltage": round(voltage, 2),
                })
            }
            DeviceKind::Motor => {
                let speed = 1480.0 * load + self.noise(4.0) * load;
                serde_json::json!({
                    "ts": now_ms,
                    "running": running,
                    "vibration_rms": round(vibration * 1.3, 5),
                    "motor_current": round(current * 4.0, 4),
                    "temperature": round(temperature - 10.0, 3),
                    "speed_rpm": round(speed, 1),
                    "voltage": round(voltage * 1.65, 2),
                })
            }
        };
        Some(body.to_string())
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn values(sim: &mut Simulator, n: usize) -> Vec<serde_json::Value> {
        (0..n)
            .filter_map(|i| sim.step(i as i64 * 1000, 1.0))
            .map(|p| serde_json::from_str(&p).expect("valid JSON"))
            .collect()
    }

    /// Power of the clip at `hz` (Goertzel), from the decoded samples.
    fn tone_power(clip: &[u8], hz: f64) -> f64 {
        let (info, samples) = fabrik_core::wav::decode_mono(clip).expect("a WAV clip");
        let w = std::f64::consts::TAU * hz / f64::from(info.sample_rate);
        let (re, im) = samples
            .iter()
            .enumerate()
            .fold((0.0, 0.0), |(re, im), (n, x)| {
                (re + x * (w * n as f64).cos(), im - x * (w * n as f64).sin())
            });
        (re * re + im * im) / (samples.len() as f64).powi(2)
    }

    #[test]
    fn bearing_wear_is_heard_as_a_whine_and_a_stopped_pump_records_nothing() {
        let mut pump = Simulator::new(DeviceKind::Pump, SmallRng::seed_from_u64(3), 0);
        let healthy = pump
            .acoustic_clip(8_000, 1.0)
            .expect("a running pump's clip");
        pump.inject(FaultKind::Drift);
        values(&mut pump, 120);
        let worn = pump.acoustic_clip(8_000, 1.0).expect("still running");
        let (before, after) = (tone_power(&healthy, 3_200.0), tone_power(&worn, 3_200.0));
        assert!(after > 100.0 * before, "whine {before} → {after}");
        // The hum is the same; only the bearing band changed.
        let hum = (tone_power(&healthy, 100.0), tone_power(&worn, 100.0));
        assert!((hum.0 / hum.1 - 1.0).abs() < 0.05, "{hum:?}");
        let mut motor = Simulator::new(DeviceKind::Motor, SmallRng::seed_from_u64(3), 0);
        assert!(motor.acoustic_clip(8_000, 1.0).is_none());
        // 600 s running, then stopped.
        values(&mut pump, 500);
        assert!(!pump.running());
        assert!(pump.acoustic_clip(8_000, 1.0).is_none());
    }

    fn mean(vs: &[serde_json::Value], key: &str) -> f64 {
        let xs: Vec<f64> = vs.iter().filter_map(|v| v[key].as_f64()).collect();
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    #[test]
    fn a_running_pump_looks_like_the_skab_rig() {
        let mut sim = Simulator::new(DeviceKind::Pump, SmallRng::seed_from_u64(1), 0);
        let v = values(&mut sim, 300);
        let running: Vec<serde_json::Value> =
            v.into_iter().filter(|x| x["running"] == true).collect();
        assert!(running.len() > 250);
        assert!((mean(&running, "vibration_rms") - 0.22).abs() < 0.02);
        assert!((mean(&running, "flow") - 125.2).abs() < 1.0);
        assert!((mean(&running, "motor_current") - 2.42).abs() < 0.1);
    }

    #[test]
    fn faults_change_what_the_device_sends() {
        let mut sim = Simulator::new(DeviceKind::Pump, SmallRng::seed_from_u64(2), 0);
        let before = values(&mut sim, 60);
        sim.inject(FaultKind::Spike);
        let spiked = values(&mut sim, 3);
        assert!(mean(&spiked, "vibration_rms") > 3.0 * mean(&before, "vibration_rms"));
        sim.inject(FaultKind::Malformed);
        let raw = sim.step(0, 1.0).expect("payload");
        assert!(serde_json::from_str::<serde_json::Value>(&raw).is_err());
        sim.inject(FaultKind::Dropout);
        assert!((0..59).all(|_| sim.step(0, 1.0).is_none()));
        sim.inject(FaultKind::Stuck);
        let stuck = values(&mut sim, 30);
        assert!(
            stuck
                .windows(2)
                .all(|w| w[0]["pressure"] == w[1]["pressure"])
        );
        sim.inject(FaultKind::Drift);
        let drifted = values(&mut sim, 400);
        let early = mean(&drifted[..50], "vibration_rms");
        let late = mean(&drifted[350..], "vibration_rms");
        assert!(late > early + 0.01, "drift: {early} → {late}");
    }

    #[test]
    fn fault_names_parse() {
        assert_eq!("drift".parse::<FaultKind>(), Ok(FaultKind::Drift));
        assert!("melt".parse::<FaultKind>().is_err());
    }
}
