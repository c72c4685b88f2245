//! What one IMA file signature check costs (decision 0067): the verifier pays it at every
//! quote for each signed entry the runtime policy's digests do not allow. Signatures made with
//! `evmctl ima_sign` (the same fixtures as the unit tests).

use std::time::{Duration, Instant};

use fabrik_registry::attestation::ima_signature::{SigningKey, check};

const EC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEDPS0Q8JYbbaNy+pfGNrO6iEGFZ7u
clTuZVjHUnRUHba0jn6Lqu8Pv93iLNP2XdyoCuryW1c9WQVM7i4q0a8tCA==
-----END PUBLIC KEY-----";
const EC_SHA256: &str = "0302041c10543d00463044022055bf449c86e341cd6e79e90161a98d8d9ce88de7411a56c183ae539c4042bae70220036d94acdcb571256411d3bead596fd61513476884ae45c816d2b1c2a4aebf6e";
const RSA_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA94C5vv5C6Vip3pRe5qFh
ZSoVdjsiwG1ITRDLDEaRp1w0tIuGNPxUkXazTcgXYhziCyyZBpnJa/BcL/PW83wP
RMXjlJDIQovUUfS+PtUnxTnS/YBLRyUzfYjFXaHsu3Y+PV+p3NatXagsBoGJStDC
iI0+l2X+NbgOB5dLI9l0HApD3tMTf+SyJFAO8p+HGbNe38K/+uuNMGSjhXeWZjr9
U0rXABWifu0s8ciTwBwwHm24E6uLqMK5VKL6ZEhk60sFeu+LYbqNYD4KbSHtKHn5
5XhuI/zGI1BSLj4NZe4aocoO2Y/Z1gKAnt8y1V/m+F1Pg/N9gxHmJGJQass8dYTD
iQIDAQAB
-----END PUBLIC KEY-----";
const RSA_SHA384: &str = "030205a30214d401000f585afdf671f9c3a279293dbdaa38c7eb665ab6736bf0379d0fd12b3d650ab8e00f6c9736cdfddb8e413328446c609b8e604c3c1f696c9c5afb29edb63fd64668bf3222624725fac85e80a4cbe95813fe9a6196f62909798fc248ac7570bebe8e187e9998e0950892e832b236b88ecc755f124ab705859f0ec6c439fcb018768b266630a5521281b0675b9f324939452ed9eddfe56ddbb698019b0341c313f5bfe973c7142d4dcacb4689fb703e2d670bd902555aa56640ee90fd933ef79cc831187e3b6d6eeb36b588cb85588ae742dbd25f3f6dbdd6d707578b4d659b37c93e308d41df49a0add7c39e310dcd1c6699dd332ac83ffa07020d3a934ef1f1d5";
const SHA256: &str = "sha256:f04a257c4927cac699091fd2ff0f875ad202dacf3154a9b680f0d60856c360b5";
const SHA384: &str = "sha384:6a61fbeebc17cb205e5ce4a601f97baaa865d1e44b06a35961d132c3a615084b94bcdadc11592af3262455f0d452fd7e";
const RUNS: usize = 5_000;

fn measure(what: &str, digest: &str, signature: &str, keys: &[SigningKey]) {
    let signature = fabrik_registry::tpm::unhex(signature).expect("hex");
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
    let ec = SigningKey::from_pem(EC_KEY).expect("ec key");
    let rsa = SigningKey::from_pem(RSA_KEY).expect("rsa key");
    measure(
        "ECDSA P-256, SHA-256 (one key)",
        SHA256,
        EC_SHA256,
        std::slice::from_ref(&ec),
    );
    measure(
        "RSA-2048, SHA-384 (one key)",
        SHA384,
        RSA_SHA384,
        std::slice::from_ref(&rsa),
    );
    // Keys are tried in turn: the signer last, after a key that fails.
    measure(
        "ECDSA P-256, SHA-256 (second of two keys)",
        SHA256,
        EC_SHA256,
        &[rsa.clone(), ec.clone()],
    );
}
