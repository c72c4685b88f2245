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

/// An advisory `id` in `dir` naming every version of tokio, a crate the binary is built from.
fn every_tokio_advisory(dir: &Path, id: &str) {
    std::fs::write(
        dir.join(format!("{id}.json")),
        serde_json::json!({
            "id": id, "summary": "every tokio so far",
            "affected": [{"package": {"ecosystem": "crates.io", "name": "tokio"},
                          "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}],
        })
        .to_string(),
    )
    .expect("advisory");
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
    every_tokio_advisory(&osv, "FAKE-2026-0100");
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

/// A system's root as a container image or a gateway has it: os-release and dpkg's status.
fn debian_root(dir: &Path, version_id: &str) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::create_dir_all(root.join("var/lib/dpkg")).expect("dpkg");
    std::fs::write(
        root.join("etc/os-release"),
        format!(
            "PRETTY_NAME=\"Debian GNU/Linux {version_id} (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"{version_id}\"\nID=debian\n"
        ),
    )
    .expect("os-release");
    let stanza = |package: &str, version: &str, source: Option<&str>, status: &str| {
        let source = source.map_or(String::new(), |s| format!("Source: {s}\n"));
        format!(
            "Package: {package}\nStatus: {status}\nPriority: required\nArchitecture: amd64\n{source}Version: {version}\nDescription: {package}, as Debian ships it\n the long description\n .\n spans lines\n"
        )
    };
    let installed = "install ok installed";
    let status = [
        stanza("libc6", "2.36-9+deb12u4", Some("glibc"), installed),
        stanza("libc-bin", "2.36-9+deb12u4", Some("glibc"), installed),
        // Built from util-linux, whose version has no epoch.
        stanza(
            "bsdutils",
            "1:2.38.1-5+deb12u3",
            Some("util-linux (2.38.1-5+deb12u3)"),
            installed,
        ),
        // An interrupted upgrade: its files are on disk all the same.
        stanza(
            "libssl3",
            "3.0.11-1~deb12u2",
            Some("openssl"),
            "install ok triggers-pending",
        ),
        stanza("zlib1g", "1:1.2.13.dfsg-1", Some("zlib"), installed),
        // A binNMU: the source's version is the advisories'.
        stanza("bash", "5.2.15-2+b2", Some("bash (5.2.15-2)"), installed),
        stanza("removed", "1.0-1", None, "deinstall ok config-files"),
    ]
    // Debian policy lets a line of spaces and tabs separate stanzas.
    .join(" \t\n");
    std::fs::write(root.join("var/lib/dpkg/status"), status).expect("status");
    root
}

fn sbom_of(root: &Path, out: &Path) -> Output {
    Command::new("python3")
        .arg(repo().join("tools/sbom.py"))
        .arg("--os-root")
        .arg(root)
        .arg("--out")
        .arg(out)
        .current_dir(repo())
        .output()
        .expect("python3 tools/sbom.py")
}

#[test]
fn an_images_debian_packages_are_matched_by_release_and_source_package_in_dpkgs_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = debian_root(dir.path(), "12");
    let sbom = dir.path().join("image.cdx.json");
    let made = sbom_of(&root, &sbom);
    assert!(made.status.success(), "{}", text(&made));
    assert!(
        text(&made).contains("6 Debian packages under"),
        "the removed package's stanza is not a package: {}",
        text(&made)
    );
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom).expect("sbom")).expect("json");
    let purls: Vec<&str> = document["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .filter(|p| p.starts_with("pkg:deb/"))
        .collect();
    assert!(
        purls.contains(
            &"pkg:deb/debian/bsdutils@1%3A2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12&upstream=util-linux%402.38.1-5%2Bdeb12u3"
        ),
        "{purls:?}"
    );

    let sbom = sbom.to_str().expect("utf-8");
    let osv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv-debian");
    let osv = osv.to_str().expect("utf-8");
    let out = vulnscan(&["--sbom", sbom, "--osv", osv, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let found: Vec<(String, String, String)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "{}@{}",
                    f["package"].as_str().unwrap_or_default(),
                    f["version"].as_str().unwrap_or_default()
                ),
                f["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // glibc is below its fix in Debian 12 (Debian 11's entry is not this release's);
    // util-linux's source version is below the fix, whatever bsdutils' epoch says;
    // `~deb12u2` sorts before the `3.0.11-1` that fixed it; zlib's epoch puts it past a fix
    // without one; bash has no fix in Debian 12; a removed package is not installed.
    // openssl's issue comes as a DSA and as the tracker's record, as in Debian's export.
    let expected = [
        (
            "DEBIAN-CVE-2099-9003",
            "openssl@3.0.11-1~deb12u2",
            "vulnerability",
        ),
        ("DEBIAN-CVE-2099-9005", "bash@5.2.15-2", "unfixed"),
        ("DSA-9001-1", "glibc@2.36-9+deb12u4", "vulnerability"),
        ("DSA-9002-1", "util-linux@2.38.1-5+deb12u3", "vulnerability"),
        ("DSA-9003-1", "openssl@3.0.11-1~deb12u2", "vulnerability"),
    ]
    .map(|(id, at, kind)| (id.to_owned(), at.to_owned(), kind.to_owned()));
    assert_eq!(found, expected);
    assert_eq!(report["failing"], 4, "an issue with no fix warns");
    assert_eq!(
        report["findings"][2]["binaries"],
        serde_json::json!(["libc-bin", "libc6"])
    );
    assert_eq!(
        report["findings"][4]["aliases"],
        serde_json::json!(["CVE-2099-9003"]),
        "the CVE of a DSA is in `upstream`"
    );

    let out = vulnscan(&[
        "--sbom",
        sbom,
        "--osv",
        osv,
        "--ignore",
        "DSA-9001-1",
        "--ignore",
        "DSA-9002-1",
        "--ignore",
        "CVE-2099-9003",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "one CVE accepts its DSA and its tracker record: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(
            "warn    DEBIAN-CVE-2099-9005 (CVE-2099-9005) unfixed: bash@5.2.15-2 (Debian:12; installed as bash): A flaw in bash that Debian 12 has no fix for yet."
        ),
        "{}",
        text(&out)
    );
    let out = vulnscan(&["--sbom", sbom, "--osv", osv, "--fail-unfixed", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (out.status.code(), &report["failing"]),
        (Some(1), &serde_json::json!(5))
    );

    // The image's SBOM also lists the binary's crates: both databases in one scan.
    let crates_db = dir.path().join("crates-db");
    std::fs::create_dir_all(&crates_db).expect("dir");
    every_tokio_advisory(&crates_db, "FAKE-2026-0101");
    let out = vulnscan(&[
        "--sbom",
        sbom,
        "--osv",
        osv,
        "--osv",
        crates_db.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).starts_with("8 advisories read; 6 finding(s), 5 failing"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("FAIL    FAKE-2026-0101 vulnerability: tokio@1."),
        "{}",
        text(&out)
    );

    // Another release's advisories are not this one's.
    let eleven = tempfile::tempdir().expect("tempdir");
    let root = debian_root(eleven.path(), "11");
    let sbom = eleven.path().join("image.cdx.json");
    assert!(sbom_of(&root, &sbom).status.success());
    let out = vulnscan(&[
        "--sbom",
        sbom.to_str().expect("utf-8"),
        "--osv",
        osv,
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["findings"], serde_json::json!([]), "{}", text(&out));
    assert_eq!(out.status.code(), Some(0));
}

/// SBOMs other tools wrote: package URLs with a raw `+`, Trivy's source properties, a package
/// without its source, a version that is not one.
#[test]
fn debian_components_of_other_tools_are_read_or_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |components: serde_json::Value| {
        let path = dir.path().join("other.cdx.json");
        std::fs::write(
            &path,
            serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": components})
                .to_string(),
        )
        .expect("sbom");
        path
    };
    let osv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv-debian");
    let osv = osv.to_str().expect("utf-8");
    let sbom = write(serde_json::json!([
        {"type": "library", "name": "bsdutils",
         "purl": "pkg:deb/debian/bsdutils@1:2.38.1-5+deb12u3?arch=amd64&distro=debian-12&upstream=util-linux@2.38.1-5+deb12u3"},
        {"type": "library", "name": "libc6",
         "purl": "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64&distro=debian-12",
         "properties": [{"name": "aquasecurity:trivy:SrcName", "value": "glibc"},
                        {"name": "aquasecurity:trivy:SrcVersion", "value": "2.36"},
                        {"name": "aquasecurity:trivy:SrcRelease", "value": "9+deb12u4"}]},
        // Fixed (1:1.2.13 is past the 1.3.1-1 fix only through its epoch).
        {"type": "library", "name": "zlib1g",
         "purl": "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12",
         "properties": [{"name": "aquasecurity:trivy:SrcName", "value": "zlib"},
                        {"name": "aquasecurity:trivy:SrcVersion", "value": "1.2.13.dfsg"},
                        {"name": "aquasecurity:trivy:SrcRelease", "value": "1"},
                        {"name": "aquasecurity:trivy:SrcEpoch", "value": "1"}]},
        {"type": "library", "name": "bash",
         "purl": "pkg:deb/debian/bash@5.2.15-2?arch=amd64&distro=debian-12"},
    ]));
    let out = vulnscan(&[
        "--sbom",
        sbom.to_str().expect("utf-8"),
        "--osv",
        osv,
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["DEBIAN-CVE-2099-9005", "DSA-9001-1", "DSA-9002-1"],
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("1 Debian package(s) without their source package"),
        "{}",
        text(&out)
    );

    let sbom = write(serde_json::json!([
        {"type": "library", "name": "odd",
         "purl": "pkg:deb/debian/odd@banana?arch=amd64&distro=debian-12"},
    ]));
    let out = vulnscan(&["--sbom", sbom.to_str().expect("utf-8"), "--osv", osv]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("pkg:deb/debian/odd@banana?arch=amd64&distro=debian-12: `banana` is not a Debian version"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_root_that_is_not_a_debian_release_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sbom_of(dir.path(), &dir.path().join("x.json"));
    assert!(!out.status.success());
    assert!(text(&out).contains("no etc/os-release"), "{}", text(&out));

    let root = debian_root(dir.path(), "12");
    std::fs::write(root.join("etc/os-release"), "ID=alpine\nVERSION_ID=3.20\n").expect("write");
    let out = sbom_of(&root, &dir.path().join("x.json"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("'alpine', not Debian"),
        "{}",
        text(&out)
    );

    std::fs::write(root.join("etc/os-release"), "ID=debian\nVERSION_ID=12\n").expect("write");
    std::fs::write(
        root.join("var/lib/dpkg/status"),
        "Package: a\nno colon here\n",
    )
    .expect("write");
    let out = sbom_of(&root, &dir.path().join("x.json"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("status: stanza 1: `no colon here` is not a `Field: value` line"),
        "{}",
        text(&out)
    );
    std::fs::write(root.join("var/lib/dpkg/status"), b"Package: caf\xe9\n").expect("write");
    let out = sbom_of(&root, &dir.path().join("x.json"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("var/lib/dpkg/status: not UTF-8"),
        "{}",
        text(&out)
    );
}

/// The scan's version order is dpkg's: checked against `dpkg --compare-versions` on versions
/// chosen to trip it and on this machine's installed packages.
#[test]
fn debian_versions_order_as_dpkg_orders_them() {
    let script = r#"
import itertools, random, subprocess, sys
sys.path.insert(0, sys.argv[1])
import vulnscan
tricky = ["1.0", "1.0-0", "1.0-1", "1.0~rc1", "1.0~~", "1.0~", "1.0+", "1.0a", "1.0A",
          "1:0.1", "0:1.0", "1.0-1~bpo1", "1.0-1+b1", "1.00", "1.0.0", "10", "9",
          "2.36-9+deb12u4", "2.36-9+deb12u10", "3.0.11-1~deb12u2", "3.0.11-1"]
installed = sorted(set(subprocess.run(["dpkg-query", "-W", "-f=${Version}\n"],
                                      capture_output=True, text=True, check=True).stdout.split()))
random.seed(7)
pairs = list(itertools.product(tricky, tricky)) + [tuple(random.sample(installed, 2)) for _ in range(150)]
differ = 0
for a, b in pairs:
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    gt = subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0
    expected = -1 if lt else (1 if gt else 0)
    got = vulnscan.DebVersion(a).compare(vulnscan.DebVersion(b))
    if got != expected:
        differ += 1
        print(f"{a} vs {b}: dpkg {expected}, vulnscan {got}")
print(f"{len(pairs)} pairs, {differ} differ")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(repo().join("tools"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).ends_with("591 pairs, 0 differ\n"),
        "{}",
        text(&out)
    );
}
