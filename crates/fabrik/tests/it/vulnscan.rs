//! `tools/vulnscan.py`: the SBOM's crates against an OSV advisory database on disk, as CI and a
//! plant's security team run it (fixture advisories in `tests/fixtures/osv`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vulnscan(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo().join("tools/vulnscan.py"))
        .args(args)
        .output()
        .expect("python3 runs tools/vulnscan.py")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A CycloneDX SBOM of four crates, one used only to build.
fn small_sbom(dir: &Path) -> PathBuf {
    let component = |name: &str, version: &str, scope: &str| {
        serde_json::json!({
            "type": "library", "name": name, "version": version, "scope": scope,
            "purl": format!("pkg:cargo/{name}@{}", version.replace('+', "%2B")),
        })
    };
    let sbom = serde_json::json!({
        "bomFormat": "CycloneDX", "specVersion": "1.5",
        "components": [
            component("smallvec", "1.6.0", "required"),
            component("foo", "0.3.0-beta.2", "required"),
            component("bar", "2.0.0+build.7", "required"),
            component("buildtool", "1.0.0", "excluded"),
            component("baz", "0.9.0", "required"),
        ],
    });
    let path = dir.join("sbom.json");
    std::fs::write(&path, sbom.to_string()).expect("sbom");
    path
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv")
}

#[test]
fn vulnerable_crates_fail_the_scan_and_the_rest_follow_the_osv_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sbom = small_sbom(dir.path());
    let sbom = sbom.to_str().expect("utf-8");
    let osv = fixtures();
    let osv = osv.to_str().expect("utf-8");

    let out = vulnscan(&["--sbom", sbom, "--osv", osv, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["advisories"], 7);
    let findings = report["findings"].as_array().expect("findings");
    let ids: Vec<&str> = findings.iter().filter_map(|f| f["id"].as_str()).collect();
    // smallvec 1.6.0 is in [1.0.0, 1.6.1); foo's pre-release is below last_affected 0.3.0;
    // buildtool's version is listed. bar was fixed in 1.5.0, its other advisory withdrawn;
    // the PyPI package only shares smallvec's name. baz is in GitHub's ECOSYSTEM range.
    assert_eq!(
        ids,
        [
            "FAKE-2026-0001",
            "FAKE-2026-0003",
            "FAKE-2026-0004",
            "GHSA-fake-0007"
        ]
    );
    assert_eq!(report["failing"], 3);
    assert_eq!(
        findings[0]["fixed_in"],
        serde_json::json!(["0.6.10", "1.6.1"])
    );
    assert_eq!(findings[2]["kind"], "unmaintained");
    assert_eq!(findings[2]["build_only"], true);

    // Accepted after review, by id or by alias: nothing fails, the warnings stay.
    let out = vulnscan(&[
        "--sbom",
        sbom,
        "--osv",
        osv,
        "--ignore",
        "FAKE-2026-0001",
        "--ignore",
        "CVE-2099-0003",
        "--ignore",
        "GHSA-fake-0007",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("4 finding(s), 0 failing"), "{printed}");
    assert!(
        printed.contains("warn    FAKE-2026-0004 unmaintained: buildtool@1.0.0 (build only)"),
        "{printed}"
    );

    // osv.dev serves its exports as zips: read as they come.
    let zip = dir.path().join("all.zip");
    let packed = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .args(
            std::fs::read_dir(fixtures())
                .expect("fixtures")
                .map(|e| e.expect("entry").path()),
        )
        .status()
        .expect("python3 -m zipfile");
    assert!(packed.success());
    let out = vulnscan(&["--sbom", sbom, "--osv", zip.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL    FAKE-2026-0001 (CVE-2099-0001) vulnerability: smallvec@1.6.0")
    );
}

#[test]
fn unusable_input_is_named_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sbom = small_sbom(dir.path());
    let sbom = sbom.to_str().expect("utf-8");
    let out = vulnscan(&["--sbom", sbom, "--osv", "/nonexistent/osv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("/nonexistent/osv: neither a directory"),
        "{}",
        text(&out)
    );

    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("dir");
    std::fs::write(
        bad.join("X-1.json"),
        r#"{"id": "X-1", "affected": [{"package": {"ecosystem": "crates.io", "name": "smallvec"},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "one"}]}]}]}"#,
    )
    .expect("advisory");
    let out = vulnscan(&["--sbom", sbom, "--osv", bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("X-1.json: smallvec: `one` is not a semantic version"),
        "{}",
        text(&out)
    );

    // Shapes the schema does not allow: named, exit 2, never "vulnerabilities found".
    for (body, wanted) in [
        (
            r#"{"id": "X-2", "affected": null}"#,
            "X-2.json: `affected` is not a list",
        ),
        (r#"[1, 2]"#, "X-2.json: not an OSV advisory"),
        (
            r#"{"id": "X-2", "affected": [{"package": {"ecosystem": "crates.io", "name": "smallvec"},
                "ranges": [{"type": "SEMVER", "events": [{}]}]}]}"#,
            "an event that is not one of introduced, fixed, last_affected",
        ),
    ] {
        std::fs::remove_dir_all(&bad).expect("clear");
        std::fs::create_dir_all(&bad).expect("dir");
        std::fs::write(bad.join("X-2.json"), body).expect("advisory");
        let out = vulnscan(&["--sbom", sbom, "--osv", bad.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{body}: {}", text(&out));
        assert!(text(&out).contains(wanted), "{body}: {}", text(&out));
    }

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let out = vulnscan(&["--sbom", sbom, "--osv", empty.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("holds no advisories"), "{}", text(&out));
}

/// The real SBOM of this build, made by `tools/sbom.py`, against an advisory naming a crate the
/// binary is built from: the scan sees what the binary ships.
#[test]
fn the_binarys_own_sbom_is_scanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sbom = dir.path().join("fabrik.cdx.json");
    let made = Command::new("python3")
        .arg(repo().join("tools/sbom.py"))
        .arg("--out")
        .arg(&sbom)
        .current_dir(repo())
        .output()
        .expect("python3 tools/sbom.py");
    assert!(made.status.success(), "{}", text(&made));
    let osv = dir.path().join("osv");
    std::fs::create_dir_all(&osv).expect("dir");
    std::fs::write(
        osv.join("FAKE-2026-0100.json"),
        serde_json::json!({
            "id": "FAKE-2026-0100", "summary": "every tokio so far",
            "affected": [{"package": {"ecosystem": "crates.io", "name": "tokio"},
                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}],
        })
        .to_string(),
    )
    .expect("advisory");
    let out = vulnscan(&[
        "--sbom",
        sbom.to_str().expect("utf-8"),
        "--osv",
        osv.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("FAIL    FAKE-2026-0100 vulnerability: tokio@1."),
        "{printed}"
    );
    assert!(
        !printed.contains("(build only)"),
        "tokio is in the binary: {printed}"
    );
}
