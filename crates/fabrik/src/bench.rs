//! `fabrik bench ingest`: TSBS-IoT-like truck data (tags name, fleet, driver, model,
//! device_version; measurements `readings` and `diagnostics`), with some batches sent out of
//! order and some held back and sent late, written over HTTP line protocol as fast as the
//! server takes it. Works against Fabrik, InfluxDB 1.x and VictoriaMetrics alike (`--path`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::client::Endpoint;

/// Arguments of `fabrik bench ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Points (lines) to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) points: usize,
    /// Trucks (series per measurement).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) trucks: usize,
    /// Lines per request.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) batch: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// Percent of batches sent out of order.
    #[arg(long, default_value_t = 5)]
    pub(crate) out_of_order_pct: u32,
    /// Percent of batches held back and sent after all others (late data).
    #[arg(long, default_value_t = 2)]
    pub(crate) late_pct: u32,
    /// Request path (Fabrik: /api/v1/write; InfluxDB 1.x: /write?db=NAME; VictoriaMetrics: /write).
    #[arg(long, default_value = "/api/v1/write")]
    pub(crate) path: String,
    /// Random seed (the same seed gives the same data).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Only write the generated data, in send order, to this file and exit.
    #[arg(long)]
    pub(crate) generate_only: Option<PathBuf>,
    /// Send the lines of this file (e.g. from --generate-only) instead of generating data, so
    /// several systems receive exactly the same bytes.
    #[arg(long)]
    pub(crate) input: Option<PathBuf>,
    /// Send no token (for systems without authentication).
    #[arg(long)]
    pub(crate) no_auth: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) endpoint: Endpoint,
}

const FLEETS: [&str; 4] = ["East", "West", "North", "South"];
const DRIVERS: [&str; 8] = [
    "Andy", "Derek", "Albert", "Rodney", "Seth", "Trish", "Zack", "Blaine",
];
const MODELS: [&str; 3] = ["F-150", "G-2000", "H-2"];
const VERSIONS: [&str; 4] = ["v1.0", "v1.5", "v2.0", "v2.3"];
/// 2024-01-01T00:00:00Z.
const START_NS: i64 = 1_704_067_200_000_000_000;
const STEP_NS: i64 = 10_000_000_000;

/// Generates `points` lines in batches, in send order (shuffled and late batches applied).
pub(crate) fn generate(args: &IngestArgs) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let trucks = args.trucks.max(1);
    let tags: Vec<String> = (0..trucks)
        .map(|i| {
            format!(
                "name=truck_{i},fleet={},driver={},model={},device_version={}",
                FLEETS[i % FLEETS.len()],
                DRIVERS[(i / 4) % DRIVERS.len()],
                MODELS[i % MODELS.len()],
                VERSIONS[(i / 3) % VERSIONS.len()]
            )
        })
        .collect();
    let mut lines = Vec::with_capacity(args.points);
    let mut i = 0usize;
    let mut step = 0i64;
    'outer: loop {
        let ts = START_NS + step * STEP_NS;
        for (t, tag) in tags.iter().enumerate() {
            if i >= args.points {
                break 'outer;
            }
            // Alternate measurements so both tables fill; (truck, time, measurement) is unique.
            let line = if (step as usize + t).is_multiple_of(2) {
                format!(
                    "readings,{tag} latitude={:.5},longitude={:.5},elevation={}i,velocity={}i,heading={}i,grade={}i,fuel_consumption={:.1} {ts}",
                    rng.random_range(-90.0..90.0),
                    rng.random_range(-180.0..180.0),
                    rng.random_range(0..5000),
                    // One truck in fifty is parked, so "stationary trucks" finds some.
                    if t % 50 == 0 {
                        0
                    } else {
                        rng.random_range(0..100)
                    },
                    rng.random_range(0..360),
                    rng.random_range(0..100),
                    rng.random_range(0.0..50.0)
                )
            } else {
                format!(
                    "diagnostics,{tag} load_capacity={}i,fuel_capacity={}i,nominal_fuel_consumption={}i,current_load={}i,fuel_state={:.2},status={}i {ts}",
                    1500 + (t % 3) * 500,
                    150 + (t % 4) * 50,
                    10 + t % 15,
                    rng.random_range(0..2000),
                    rng.random_range(0.0..1.0),
                    rng.random_range(0..5)
                )
            };
            lines.push(line);
            i += 1;
        }
        step += 1;
    }
    let mut batches = into_batches(&lines, args.batch);
    // Out of order: swap some batches with a neighbour a few positions away.
    let n = batches.len();
    for b in 0..n {
        if rng.random_range(0..100) < args.out_of_order_pct {
            let other = (b + rng.random_range(1..8)).min(n - 1);
            batches.swap(b, other);
        }
    }
    // Late: move some batches to the end.
    let mut late = Vec::new();
    let mut on_time = Vec::with_capacity(n);
    for b in batches {
        if rng.random_range(0..100) < args.late_pct {
            late.push(b);
        } else {
            on_time.push(b);
        }
    }
    late.shuffle(&mut rng);
    on_time.extend(late);
    on_time
}

/// Joins lines into request bodies of `batch` lines each, every line newline-terminated.
fn into_batches<S: AsRef<str>>(lines: &[S], batch: usize) -> Vec<String> {
    lines
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut body = String::new();
            for line in chunk {
                body.push_str(line.as_ref());
                body.push('\n');
            }
            body
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `fabrik bench ingest`.
pub(crate) async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let batches = match &args.input {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            into_batches(&lines, args.batch)
        }
        None => generate(&args),
    };
    if let Some(path) = &args.generate_only {
        let mut text = String::new();
        for b in &batches {
            text.push_str(b);
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} points in {} batches to {}",
            args.points,
            batches.len(),
            path.display()
        );
        return Ok(());
    }
    let batches: Arc<Vec<(usize, String)>> = Arc::new(
        batches
            .into_iter()
            .map(|b| (b.bytes().filter(|&c| c == b'\n').count(), b))
            .collect(),
    );
    let total_points: u64 = batches.iter().map(|(lines, _)| *lines as u64).sum();
    let next = Arc::new(AtomicUsize::new(0));
    let done_points = Arc::new(AtomicU64::new(0));
    let client = args
        .endpoint
        .client_builder()?
        .pool_max_idle_per_host(args.concurrency.max(1))
        .build()?;
    let token = if args.no_auth {
        None
    } else {
        args.endpoint.token()
    };
    let url = format!("{}{}", args.endpoint.url.trim_end_matches('/'), args.path);
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_points)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} points  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let batches = batches.clone();
        let next = next.clone();
        let done_points = done_points.clone();
        let client = client.clone();
        let token = token.clone();
        let url = url.clone();
        let bar = bar.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((lines, body)) = batches.get(i) else {
                    break;
                };
                let mut req = client.post(&url).body(body.clone());
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let sent = Instant::now();
                let response = req.send().await.context("request failed")?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    bail!("batch {i} rejected with {status}: {text}");
                }
                latencies.push(sent.elapsed());
                done_points.fetch_add(*lines as u64, Ordering::Relaxed);
                bar.inc(*lines as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.context("worker panicked")??);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    latencies.sort();
    let points = done_points.load(Ordering::Relaxed);
    let rate = points as f64 / elapsed.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "points": points,
                "seconds": elapsed.as_secs_f64(),
                "points_per_second": rate,
                "batch": args.batch,
                "concurrency": args.concurrency,
                "latency_ms": {
                    "p50": ms(percentile(&latencies, 0.50)),
                    "p90": ms(percentile(&latencies, 0.90)),
                    "p99": ms(percentile(&latencies, 0.99)),
                    "max": ms(latencies.last().copied().unwrap_or_default()),
                }
            })
        );
    } else {
        println!(
            "{points} points in {:.2} s: {rate:.0} points/s",
            elapsed.as_secs_f64()
        );
        println!(
            "request latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} requests of {} lines, concurrency {})",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
            latencies.len(),
            args.batch,
            args.concurrency
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: IngestArgs,
    }

    #[test]
    fn generated_data_has_exactly_the_requested_unique_points() {
        let w = Wrapper::parse_from(["x", "--points", "12345", "--trucks", "17", "--batch", "100"]);
        let batches = generate(&w.args);
        let lines: Vec<&str> = batches.iter().flat_map(|b| b.lines()).collect();
        assert_eq!(lines.len(), 12345);
        let mut keys: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| {
                let (series, rest) = l.split_once(' ').expect("fields");
                (series, rest.rsplit_once(' ').expect("time").1)
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 12345, "every (series, time) is unique");
        for l in &lines {
            fabrik_core::line_protocol::parse_body(l).expect("valid line protocol");
        }
    }
}
