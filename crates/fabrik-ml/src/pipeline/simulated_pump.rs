//! Test support: windows of a simulated pump (the demo plant's signal model) with faults, for
//! tests of the models and explanations on data shaped like the demo's.

/// One ten-second window (1 Hz) of a running pump as the demo plant simulates it:
/// vibration, motor current, pressure and flow, each as mean, std and max; with `fault`,
/// a 3-sample spike of vibration and current, a drift of both (bearing wear, `d` in 0..1),
/// or a pressure sensor stuck at one value.
pub(crate) fn pump_window(next: &mut impl FnMut() -> f64, fault: PumpFault) -> Vec<f64> {
    use crate::pipeline::features::{Feature, FeatureExtractor};
    let mut noise = |sd: f64| (0..4).map(|_| next() - 0.5).sum::<f64>() * sd * 1.7320;
    let mut columns = vec![Vec::new(); 4];
    let spike_at = (noise(1.0).abs() * 4.0) as usize % 8;
    let stuck = 1.05 + noise(0.04);
    for second in 0..10 {
        let spike = match fault {
            PumpFault::Spike if (spike_at..spike_at + 3).contains(&second) => 5.0,
            _ => 1.0,
        };
        let wear = if let PumpFault::Drift(d) = fault {
            d
        } else {
            0.0
        };
        let vibration = (0.21 + 0.04 * wear) * spike + 0.01 + noise(0.005);
        let current = (2.4 + noise(0.12) + 0.3 * wear) * f64::sqrt(spike) + 0.02;
        let pressure = if fault == PumpFault::Stuck {
            stuck
        } else {
            1.05 + noise(0.04)
        };
        let flow = 125.2 + noise(1.6);
        for (column, value) in columns.iter_mut().zip([vibration, current, pressure, flow]) {
            column.push((value * 1e4_f64).round() / 1e4);
        }
    }
    let times: Vec<i64> = (0..10).map(|s| s * 1_000_000_000).collect();
    let mut extractor = FeatureExtractor::new();
    let mut row = Vec::new();
    for column in &columns {
        extractor.extract(
            &times,
            column,
            &[Feature::Mean, Feature::Std, Feature::Max],
            &mut row,
        );
    }
    row
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum PumpFault {
    None,
    Spike,
    Drift(f64),
    Stuck,
}
