//! The command line: config handling, start-up errors, and the CLI clients.

use std::process::Command;

use crate::support::{Process, TOKEN, fabrik_bin};

/// A reader that stops early (`fabrik openapi | head -c 10`): the command ends quietly, as
/// Unix tools do, not with a panic and a backtrace.
#[test]
fn a_client_command_whose_reader_stops_early_ends_quietly() {
    use std::io::Read;
    let mut child = Command::new(fabrik_bin())
        .arg("openapi")
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let mut start = [0u8; 10];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut start)
        .expect("read");
    // The pipe is closed here; the document is far larger than the pipe's buffer.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_example_parses_and_config_check_lists_every_error() {
    let out = Command::new(fabrik_bin())
        .args(["config", "example"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let example = String::from_utf8(out.stdout).expect("utf8");
    let dir = tempfile::tempdir().expect("dir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &example).expect("write");
    let out = Command::new(fabrik_bin())
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[http]\nlisten = \"here\"\nmax_body = 1\n[store]\nretention = \"later\"\n",
    )
    .expect("write");
    let out = Command::new(fabrik_bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    // An unknown field, a value of the wrong type, bad values and a connector's problem,
    // all in one report.
    std::fs::write(
        &bad,
        "[http]\nlisten = \"here\"\nmax_body = 1\n[store]\nretention = \"later\"\n\
         flush_interval = 5\n[[modbus.devices]]\nid = \"plc\"\naddress = \"nowhere\"\nunit_id = 1\n",
    )
    .expect("write");
    let out = Command::new(fabrik_bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "http.max_body:",
        "store.flush_interval: expected a string, found an integer",
        "http.listen:",
        "store.retention:",
        "device `plc`",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    // An entry that does not load is named by its index in the file and left out; the
    // problems found in the others still name their entries by the file's index.
    std::fs::write(
        &bad,
        "[[alerting.rules]]\nname = \"a\"\ntable = \"t\"\ncondition = \"above\"\nthreshold = 1\n\n\
         [[alerting.rules]]\nname = \"b\"\ntable = \"t\"\nvalue = \"v\"\ncondition = \"above\"\n\
         threshold = 1\nseverity = \"bogus\"\n",
    )
    .expect("write");
    let out = Command::new(fabrik_bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alerting.rules[0].value: missing")
            && err.contains("alerting.rules[1].severity"),
        "{err}"
    );
}

#[test]
fn an_unusable_data_dir_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let out = Command::new(fabrik_bin())
        .arg("run")
        .env("FABRIK__STORE__DATA_DIR", file.join("data"))
        .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data directory") && err.contains("not-a-dir"),
        "{err}"
    );
}

#[test]
fn a_generated_admin_token_is_private_and_required() {
    let dir = tempfile::tempdir().expect("dir");
    let mut command = Command::new(fabrik_bin());
    command.env_remove("FABRIK__AUTH__ADMIN_TOKEN");
    let p = Process::start_with(command, dir.path(), &[("FABRIK__AUTH__ADMIN_TOKEN", "")]);
    let path = dir.path().join("admin.token");
    let token = std::fs::read_to_string(&path)
        .expect("token file")
        .trim()
        .to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", "m v=1"),
        401,
        "the test token is not valid here"
    );
    let out = Command::new(fabrik_bin())
        .args([
            "query",
            "SELECT 1 AS one",
            "--format",
            "csv",
            "--url",
            &p.url,
        ])
        .env("FABRIK__STORE__DATA_DIR", dir.path())
        .output()
        .expect("query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n1\n");
    p.kill9();
}

#[test]
fn fabrik_write_and_query_round_trip() {
    let dir = tempfile::tempdir().expect("dir");
    let p = Process::start(dir.path(), &[]);
    let input = dir.path().join("in.lp");
    let body: String = (0..12_345)
        .map(|i| format!("w,k=k{} v={i} {i}\n", i % 3))
        .collect();
    std::fs::write(&input, body).expect("write");
    let out = Command::new(fabrik_bin())
        .args([
            "write",
            "--batch-lines",
            "1000",
            "--url",
            &p.url,
            "--token",
            TOKEN,
        ])
        .arg(&input)
        .output()
        .expect("write");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 12345 point(s)"));
    let out = Command::new(fabrik_bin())
        .args([
            "query",
            "SELECT k, count(*) AS n FROM w GROUP BY k ORDER BY k",
            "--url",
            &p.url,
            "--token",
            TOKEN,
        ])
        .output()
        .expect("query");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| k0 | 4115 |") && table.contains("3 row(s)"),
        "{table}"
    );
    // A bad line makes `fabrik write` fail and say where.
    std::fs::write(&input, "w v=1 1\nw v=oops 2\n").expect("write");
    let out = Command::new(fabrik_bin())
        .args(["write", "--url", &p.url, "--token", TOKEN])
        .arg(&input)
        .output()
        .expect("write");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    // Without a token anywhere, the refusal says where the CLI looked for one.
    let elsewhere = tempfile::tempdir().expect("dir");
    let out = Command::new(fabrik_bin())
        .args(["query", "SELECT 1", "--url", &p.url, "--data-dir"])
        .arg(elsewhere.path())
        .env_remove("FABRIK_TOKEN")
        .output()
        .expect("query");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let looked_at = elsewhere.path().join("admin.token");
    assert!(
        stderr.contains("no API token") && stderr.contains(&*looked_at.to_string_lossy()),
        "{stderr}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

#[test]
fn run_lists_targets_and_rejects_unknown_ones() {
    let out = Command::new(fabrik_bin())
        .args(["run", "--list-targets"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("store") && text.contains("http") && text.contains("deps: store"),
        "{text}"
    );
    let out = Command::new(fabrik_bin())
        .args(["run", "--target", "warp-drive"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target"));
}

#[test]
fn eval_nab_writes_nab_format_results_and_prints_the_three_profiles() {
    let nab =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fabrik-ml/tests/fixtures/nab");
    let out = tempfile::tempdir().expect("out");
    let run = Command::new(fabrik_bin())
        .args(["eval", "nab", "--nab-dir"])
        .arg(&nab)
        .arg("--out")
        .arg(out.path())
        .arg("--json")
        .output()
        .expect("eval");
    assert!(run.status.success(), "{run:?}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(report["detector"], "rart");
    assert_eq!(report["files"], 3);
    for key in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!((-100.0..=100.0).contains(&v), "{key} = {v}");
    }
    let results = out.path().join("rart/realTraffic/rart_speed_7578.csv");
    let text = std::fs::read_to_string(&results).expect("results file");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score,label"));
    assert_eq!(lines.count(), 1127, "one row per data row");
    // NAB's per-file score table, and the per-category sums in the JSON, agree on the files.
    let table = std::fs::read_to_string(out.path().join("rart/rart_standard_scores.csv"))
        .expect("score table");
    assert_eq!(
        table.lines().count(),
        1 + 3 + 1,
        "header, three files, totals"
    );
    assert!(
        table.contains("rart,standard,realTraffic/speed_7578.csv,"),
        "{table}"
    );
    let categories = &report["profiles"]["standard"]["categories"];
    let files: u64 = ["realAdExchange", "realKnownCause", "realTraffic"]
        .iter()
        .map(|c| {
            categories[c]["files"]
                .as_u64()
                .unwrap_or_else(|| panic!("{c}: {report}"))
        })
        .sum();
    assert_eq!(files, 3);
    // A missing directory is a clear error, not a panic.
    let bad = Command::new(fabrik_bin())
        .args(["eval", "nab", "--nab-dir", "/nonexistent", "--out"])
        .arg(out.path())
        .output()
        .expect("eval");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/nonexistent"),
        "{bad:?}"
    );
}

/// A classifier's outputs as CSV: scores from an LCG spread over `[low, high)`, targets drawn
/// with the scores as their probabilities, predictions at 0.5.
fn classifier_csv(rows: usize, low: f64, high: f64, seed: &mut u64) -> String {
    let mut unit = || {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1_u64 << 53) as f64
    };
    let mut text = String::new();
    for _ in 0..rows {
        let score = low + (high - low) * unit();
        let target = unit() < score;
        text.push_str(&format!(
            "{score},{},{}\n",
            u8::from(score >= 0.5),
            u8::from(target)
        ));
    }
    text
}

/// `fabrik eval cbpe --reference R --analysis A EXTRA...`.
fn eval_cbpe(
    reference: &std::path::Path,
    analysis: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(fabrik_bin())
        .args(["eval", "cbpe", "--reference"])
        .arg(reference)
        .arg("--analysis")
        .arg(analysis)
        .args(extra)
        .output()
        .expect("eval")
}

#[test]
fn eval_cbpe_estimates_a_drop_in_performance_without_targets() {
    let dir = tempfile::tempdir().expect("dir");
    let mut seed = 7;
    let header = "y_pred_proba,y_pred,y_true\n";
    let reference = dir.path().join("reference.csv");
    std::fs::write(
        &reference,
        header.to_owned() + &classifier_csv(4000, 0.0, 1.0, &mut seed),
    )
    .expect("reference");
    // Then the inputs move where the model is unsure: its scores crowd around 0.5, and its
    // expected accuracy falls from 0.75 to 0.6 with no target known.
    let analysis = dir.path().join("analysis.csv");
    std::fs::write(
        &analysis,
        "y_pred_proba,y_pred\n".to_owned()
            + &classifier_csv(2000, 0.0, 1.0, &mut seed)
                .lines()
                .chain(classifier_csv(2000, 0.3, 0.7, &mut seed).lines())
                .map(|line| line.rsplit_once(',').expect("3 fields").0.to_owned() + "\n")
                .collect::<String>(),
    )
    .expect("analysis");
    let out = eval_cbpe(&reference, &analysis, &["--json", "--chunk-size", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let chunks = report["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 8, "4 reference and 4 analysis chunks");
    let accuracy = |k: usize| &chunks[k]["metrics"]["accuracy"];
    for k in 4..6 {
        let value = accuracy(k)["value"].as_f64().expect("value");
        assert!((value - 0.75).abs() < 0.03, "chunk {k}: {value}");
    }
    for k in 6..8 {
        let value = accuracy(k)["value"].as_f64().expect("value");
        assert!((value - 0.6).abs() < 0.03, "chunk {k}: {value}");
        assert_eq!(accuracy(k)["alert"], true, "chunk {k}: {}", accuracy(k));
    }
    // Reference chunks show what was realized beside what was estimated.
    assert!(accuracy(0)["realized"].as_f64().is_some());
    assert!(accuracy(4)["realized"].is_null());

    // Targets that arrive late: the first chunks' are known, the rest blank. The known
    // chunks show what was realized; the others are estimated alone.
    let partly = dir.path().join("partly.csv");
    let mut text = String::from("y_pred_proba,y_pred,y_true\n");
    for (k, line) in classifier_csv(4000, 0.0, 1.0, &mut seed)
        .lines()
        .enumerate()
    {
        let (row, target) = line.rsplit_once(',').expect("3 fields");
        text.push_str(&format!("{row},{}\n", if k < 2000 { target } else { "" }));
    }
    std::fs::write(&partly, text).expect("partly");
    let out = eval_cbpe(&reference, &partly, &["--json", "--chunk-size", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let realized = |k: usize| report["chunks"][k]["metrics"]["accuracy"]["realized"].clone();
    assert!(realized(5).as_f64().is_some(), "{}", report["chunks"][5]);
    assert!(realized(6).is_null(), "{}", report["chunks"][6]);

    // A reference without targets, and a score that is no probability: clear errors.
    let out = eval_cbpe(&analysis, &analysis, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no column `y_true`"), "{stderr}");
    std::fs::write(&analysis, "y_pred_proba,y_pred\n0.4,0\n1.5,1\n").expect("bad");
    let out = eval_cbpe(&reference, &analysis, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("1.5 is not a probability"),
        "{stderr}"
    );
}

#[test]
fn eval_skab_scores_the_protocol_on_skab_formatted_files() {
    // A synthetic file in SKAB's format (not SKAB data): 8 sensors, a level shift on two of
    // them from row 450 to 549, labelled as the anomaly.
    let dir = tempfile::tempdir().expect("dir");
    let mut text = String::from(
        "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint\n",
    );
    for i in 0..700u32 {
        let wobble = f64::from(i % 7) * 0.001;
        let anomalous = (450..550).contains(&i);
        let shift = if anomalous { 1.0 } else { 0.0 };
        text.push_str(&format!(
            "2020-03-09 10:{:02}:{:02};{};0.27;{};0.1;89.5;28.5;229;{};{};{}\n",
            i / 60,
            i % 60,
            0.21 + wobble,
            2.4 + shift + wobble,
            125.0 - 10.0 * shift + wobble,
            if anomalous { "1.0" } else { "0.0" },
            if i == 450 || i == 549 { "1.0" } else { "0.0" }
        ));
    }
    std::fs::create_dir_all(dir.path().join("valve9")).expect("mkdir");
    std::fs::write(dir.path().join("valve9/0.csv"), text).expect("write");
    let run = Command::new(fabrik_bin())
        .args(["eval", "skab", "--json", "--data"])
        .arg(dir.path())
        .output()
        .expect("eval");
    assert!(run.status.success(), "{run:?}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(report["files"], 1);
    let f1 = report["f1"].as_f64().expect("f1");
    assert!(f1 > 0.8, "a clear level shift is found: {report}");
    assert!(report["far"].as_f64().is_some() && report["mar"].as_f64().is_some());
}
