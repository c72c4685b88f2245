//! Throughput benchmark, same scheme as `bench/ort_bench.py` (onnxruntime):
//! - single row: each of the 20 reference rows in turn, shape [1, 8]; p50/p99 latency;
//! - batched: the 20 reference rows tiled to 1000 rows; rows/s.
//!
//! `cargo bench --bench throughput [-- model.onnx ...]` (default: iforest_100.onnx).

use std::time::Instant;

use fabrik_onnx::{Model, Tensor};

const SINGLE_ITERS: usize = 2000;
const BATCH_ROWS: usize = 1000;
const BATCH_ITERS: usize = 50;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference_rows() -> Vec<Vec<f32>> {
    let text = std::fs::read_to_string(fixture("reference_io.json")).expect("reference_io.json");
    let r: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    r["input"]["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

fn bench(file: &str, rows: &[Vec<f32>]) {
    let t0 = Instant::now();
    let model = Model::from_file(fixture(file)).expect("model loads");
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let input = model.inputs()[0].name.clone();
    let singles: Vec<Tensor> = rows
        .iter()
        .map(|r| Tensor::from_f32(vec![1, r.len()], r.clone()).expect("tensor"))
        .collect();
    for t in singles.iter().cycle().take(200) {
        model.run(&[(input.as_str(), t.clone())]).expect("run");
    }
    let mut lat = Vec::with_capacity(SINGLE_ITERS);
    for i in 0..SINGLE_ITERS {
        let t = singles[i % singles.len()].clone();
        let start = Instant::now();
        let out = model.run(&[(input.as_str(), t)]).expect("run");
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    lat.sort_by(f64::total_cmp);
    let p50 = lat[lat.len() / 2];
    let p90 = lat[lat.len() * 90 / 100];
    let p99 = lat[lat.len() * 99 / 100];
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;

    let width = rows[0].len();
    let data: Vec<f32> = rows
        .iter()
        .cycle()
        .take(BATCH_ROWS)
        .flatten()
        .copied()
        .collect();
    let batch = Tensor::from_f32(vec![BATCH_ROWS, width], data).expect("tensor");
    for _ in 0..3 {
        model.run(&[(input.as_str(), batch.clone())]).expect("run");
    }
    let start = Instant::now();
    for _ in 0..BATCH_ITERS {
        std::hint::black_box(model.run(&[(input.as_str(), batch.clone())]).expect("run"));
    }
    let dt = start.elapsed().as_secs_f64();
    println!(
        "fabrik-onnx {file}: load {load_ms:.1} ms, {} steps; single-row p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us, {:.0} rows/s; batch {BATCH_ROWS}: {:.2} ms/batch, {:.0} rows/s",
        model.n_steps(),
        1e6 / mean,
        dt / BATCH_ITERS as f64 * 1e3,
        (BATCH_ROWS * BATCH_ITERS) as f64 / dt
    );
}

fn main() {
    let rows = reference_rows();
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.ends_with(".onnx"))
        .collect();
    let files = if files.is_empty() {
        vec!["iforest_100.onnx".to_string()]
    } else {
        files
    };
    for f in &files {
        bench(f, &rows);
    }
}
