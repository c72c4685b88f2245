//! What one IMA file signature check costs (decision 0067): the verifier pays it at every
//! quote for each signed entry the runtime policy's digests do not allow. Signatures made with
//! `evmctl ima_sign` (the unit tests' fixtures).

use std::time::{Duration, Instant};

use fabrik_registry::attestation::ima_signature::{SigningKey, check};

/// The signatures and keys of the unit tests (tests/fixtures/ima-signatures, with its README).
fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ima-signatures/"
    );
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn key(name: &str) -> SigningKey {
    SigningKey::from_pem(&String::from_utf8(fixture(name)).expect("utf-8")).expect(name)
}

/// The signed file's digest, as an entry keeps it.
fn tool(algorithm: &'static aws_lc_rs::digest::Algorithm, name: &str) -> String {
    let value = aws_lc_rs::digest::digest(algorithm, &fixture("tool"));
    format!("{name}:{}", fabrik_registry::tpm::hex(value.as_ref()))
}

const RUNS: usize = 5_000;

fn measure(what: &str, digest: &str, signature: &str, keys: &[SigningKey]) {
    let signature = fixture(signature);
    let mut latencies: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let verdict = check(digest, &signature, keys);
            let took = start.elapsed();
            assert_eq!(verdict, Ok(()), "{what}");
            took
        })
        .collect();
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<44} {:>8.0} checks/s  p50 {:>6.1} µs  p99 {:>6.1} µs",
        RUNS as f64 / total.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let ec = key("ec.pub");
    let rsa = key("rsa.pub");
    let sha256 = tool(&aws_lc_rs::digest::SHA256, "sha256");
    let sha384 = tool(&aws_lc_rs::digest::SHA384, "sha384");
    measure(
        "ECDSA P-256, SHA-256 (one key)",
        &sha256,
        "tool.ec-sha256.sig",
        std::slice::from_ref(&ec),
    );
    measure(
        "RSA-2048, SHA-384 (one key)",
        &sha384,
        "tool.rsa-sha384.sig",
        std::slice::from_ref(&rsa),
    );
    // Keys are tried in turn: the signer last, after a key that fails.
    measure(
        "ECDSA P-256, SHA-256 (second of two keys)",
        &sha256,
        "tool.ec-sha256.sig",
        &[rsa.clone(), ec.clone()],
    );
}
