//! Fleet releases over TUF: `fabrik release` makes a repository and publishes a signed model,
//! a hub `fabrik run` serves it under `/tuf` with its own token, and an edge `fabrik run`
//! with `[updates]` installs what is meant for it — and refuses a file that does not match the
//! signed hash, metadata rolled back to an older version (also after a restart), and metadata
//! past its expiry, keeping the model it holds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::mqtt::{eventually_for, http};
use crate::support::{Process, client_command, fabrik_bin};

const RELEASE_TOKEN: &str = "release-token-for-tests";

fn fixture(name: &str) -> Vec<u8> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
    std::fs::read(format!("{fixtures}/{name}")).expect("fixture")
}

/// Runs an offline `fabrik` command: whether it succeeded, and what it printed (stdout, then
/// stderr).
fn run_fabrik(args: &[&str]) -> (bool, String) {
    let out = Command::new(fabrik_bin())
        .args(args)
        .output()
        .expect("fabrik");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// [`run_fabrik`], which must succeed.
fn fabrik(args: &[&str]) -> String {
    let (ok, text) = run_fabrik(args);
    assert!(ok, "fabrik {args:?} failed: {text}");
    text
}

/// [`run_fabrik`], which must fail.
fn fabrik_fails(args: &[&str]) -> String {
    let (ok, text) = run_fabrik(args);
    assert!(!ok, "fabrik {args:?} should fail: {text}");
    text
}

/// `release COMMAND --repo REPO --keys KEYS ARGS...`
fn release_args<'a>(
    command: &'a str,
    repo: &'a Path,
    keys: &'a Path,
    args: &[&'a str],
) -> Vec<&'a str> {
    let mut all = vec![
        "release",
        command,
        "--repo",
        path(repo),
        "--keys",
        path(keys),
    ];
    all.extend_from_slice(args);
    all
}

/// `fabrik release ...`, which must succeed.
fn release(command: &str, repo: &Path, keys: &Path, args: &[&str]) -> String {
    fabrik(&release_args(command, repo, keys, args))
}

/// `fabrik release ...`, which must fail.
fn release_fails(command: &str, repo: &Path, keys: &Path, args: &[&str]) -> String {
    fabrik_fails(&release_args(command, repo, keys, args))
}

fn updates(url: &str) -> serde_json::Value {
    let (code, answer) = http(url, reqwest::Method::GET, "/api/v1/updates", None);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["configured"], true, "{answer}");
    answer["status"].clone()
}

fn target<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["target"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

fn model_sha(url: &str, name: &str) -> Option<String> {
    let (code, models) = http(url, reqwest::Method::GET, "/api/v1/models", None);
    assert_eq!(code, 200, "{models}");
    models
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["sha256"].as_str().map(str::to_owned))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The status of `GET path` with `token` (not the API's) or none.
fn raw_get(url: &str, path: &str, token: Option<&str>) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut request = crate::support::http_client().get(format!("{url}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("GET").status().as_u16()
    })
}

#[test]
fn an_edge_installs_the_signed_models_published_for_it_and_refuses_tampering_rollback_and_expiry() {
    let dir = tempfile::tempdir().expect("dir");
    let repo = dir.path().join("repo");
    let keys = dir.path().join("keys");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let forest = work.join("forest.onnx");
    std::fs::write(&forest, fixture("iforest_100.onnx")).expect("forest");
    let autoencoder_bytes = fixture("mlp_ae_8_4_8.onnx");
    let autoencoder = work.join("autoencoder.onnx");
    std::fs::write(&autoencoder, &autoencoder_bytes).expect("autoencoder");

    // The publisher: a repository, a model-signing key, the forest signed and published for
    // every node, the autoencoder for another line only.
    let made = release("init", &repo, &keys, &[]);
    assert!(made.contains("1.root.json"), "{made}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("root.key"))
            .expect("root key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are private: {mode:o}");
    }
    let again = release_fails("init", &repo, &keys, &[]);
    assert!(again.contains("not empty"), "{again}");
    let model_key = keys.join("model");
    fabrik(&["model", "keygen", "--out", path(&model_key)]);
    fabrik(&[
        "model",
        "sign",
        "--key",
        path(&keys.join("model.key")),
        path(&forest),
    ]);
    let published = release(
        "add",
        &repo,
        &keys,
        &["--name", "pump-model", path(&forest)],
    );
    assert!(published.contains("with its signature"), "{published}");
    release(
        "add",
        &repo,
        &keys,
        &[
            "--name",
            "line-9-model",
            "--nodes",
            "line-9*",
            path(&autoencoder),
        ],
    );
    let not_onnx = work.join("notes.onnx");
    std::fs::write(&not_onnx, b"not a model").expect("file");
    let refused = release_fails("add", &repo, &keys, &["--name", "junk", path(&not_onnx)]);
    assert!(refused.contains("not a model Fabrik can run"), "{refused}");

    // A third model whose file in targets/ is then swapped for another: the signed hash no
    // longer matches what the server hands out.
    let swapped = work.join("swapped.onnx");
    std::fs::write(&swapped, fixture("rf_clf_50_nozipmap.onnx")).expect("swapped");
    release(
        "add",
        &repo,
        &keys,
        &["--name", "swapped-model", path(&swapped)],
    );
    let swapped_file = std::fs::read_dir(repo.join("targets"))
        .expect("targets")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".swapped-model.onnx"))
        .expect("the swapped model's target file");
    std::fs::write(&swapped_file, &autoencoder_bytes).expect("tamper");
    let listed = fabrik(&["release", "list", "--repo", path(&repo), "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("list JSON");
    assert_eq!(
        listed["targets"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );

    // The hub serves the repository with its own token, nothing outside it.
    let hub = Process::start(
        &dir.path().join("hub"),
        &[
            ("FABRIK__RELEASES__REPO", path(&repo)),
            ("FABRIK__RELEASES__TOKEN", RELEASE_TOKEN),
        ],
    );
    let (_, answer) = http(&hub.url, reqwest::Method::GET, "/api/v1/updates", None);
    assert_eq!(
        answer["configured"], false,
        "the hub follows no repository: {answer}"
    );
    assert_eq!(raw_get(&hub.url, "/tuf/metadata/timestamp.json", None), 401);
    assert_eq!(
        raw_get(
            &hub.url,
            "/tuf/metadata/timestamp.json",
            Some(RELEASE_TOKEN)
        ),
        200
    );
    assert_eq!(
        raw_get(
            &hub.url,
            "/tuf/metadata/..%2F..%2Fkeys%2Froot.key",
            Some(RELEASE_TOKEN)
        ),
        404
    );

    // The edge: trusts the repository's first root and the model-signing key, and requires
    // model signatures.
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir).expect("edge dir");
    let config = edge_dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[updates]\nurl = \"{}/tuf\"\nroot = \"{}\"\nnode = \"line-1\"\ninterval = \"300ms\"\n\
             token = \"{RELEASE_TOKEN}\"\n\n[models]\ntrusted_keys = [\"{}\"]\n",
            hub.url,
            path(&repo.join("metadata/1.root.json")),
            path(&keys.join("model.pub")),
        ),
    )
    .expect("config");
    let edge_data = edge_dir.join("data");
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    let forest_sha = sha256_hex(&fixture("iforest_100.onnx"));
    eventually_for(
        "the edge installs the forest",
        Duration::from_secs(30),
        || model_sha(&edge.url, "pump-model").as_deref() == Some(forest_sha.as_str()),
    );
    let (_, models) = http(&edge.url, reqwest::Method::GET, "/api/v1/models", None);
    let names: Vec<&str> = models
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["pump-model"],
        "only what is meant for line-1 and verifies"
    );
    assert!(
        models[0]["signed_by"].is_string(),
        "its signature came along: {models}"
    );
    eventually_for(
        "the edge reports the check",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "swapped-model.onnx")["state"] == "refused",
    );
    let status = updates(&edge.url);
    assert_eq!(status["node"], "line-1", "{status}");
    assert_eq!(
        target(&status, "pump-model.onnx")["state"],
        "installed",
        "{status}"
    );
    assert!(
        target(&status, "pump-model.onnx")["installed_at"].is_string(),
        "{status}"
    );
    assert_eq!(
        target(&status, "line-9-model.onnx")["state"],
        "not_for_this_node",
        "{status}"
    );
    let reason = target(&status, "swapped-model.onnx")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("Hash mismatch"),
        "names the hash mismatch: {reason}"
    );
    assert!(status["last_error"].is_null(), "{status}");
    let verified_version = status["targets_version"].as_u64().expect("version");
    assert_eq!(verified_version, 4, "init, then three releases: {status}");
    // Each install and refusal is a row of `_releases` (forwarded to a hub by an uplink).
    let rows = crate::mqtt::query(
        &edge.url,
        "SELECT node, kind, name, state, reason, sha256 FROM _releases ORDER BY time",
    );
    let installed = rows
        .iter()
        .find(|r| r["name"] == "pump-model" && r["state"] == "installed")
        .unwrap_or_else(|| panic!("an install row: {rows:?}"));
    assert_eq!(installed["node"], "line-1");
    assert_eq!(installed["kind"], "model");
    assert_eq!(installed["sha256"], forest_sha.as_str());
    assert!(
        rows.iter().any(|r| r["name"] == "swapped-model"
            && r["state"] == "refused"
            && r["reason"]
                .as_str()
                .is_some_and(|why| why.contains("Hash mismatch"))),
        "a refusal row: {rows:?}"
    );
    assert!(
        !rows.iter().any(|r| r["name"] == "line-9-model"),
        "nothing for another node's release: {rows:?}"
    );

    // The compliance report names the repository as integrity evidence, and its plain HTTP.
    let (code, report) = http(&edge.url, reqwest::Method::GET, "/api/v1/compliance", None);
    assert_eq!(code, 200, "{report}");
    let report = report.to_string();
    assert!(report.contains("verified with TUF"), "{report}");
    assert!(
        report.contains("[updates] reads the release repository"),
        "{report}"
    );
    let (ok, text) = client_command(&edge.url, &["updates", "status"]);
    assert!(
        ok && text.contains("pump-model.onnx") && text.contains("installed"),
        "{text}"
    );

    // The publisher adds the swapped model again: its damaged file is rewritten, and the node,
    // which backs off from a refused target rather than giving up on it, fetches it again —
    // to refuse it for lacking the model signature this node requires. Signed, it installs.
    let add_swapped = || {
        release(
            "add",
            &repo,
            &keys,
            &["--name", "swapped-model", path(&swapped)],
        )
    };
    add_swapped();
    eventually_for(
        "the repaired file is fetched and meets the signature check",
        Duration::from_secs(30),
        || {
            target(&updates(&edge.url), "swapped-model.onnx")["reason"]
                .as_str()
                .is_some_and(|why| why.contains("signature"))
        },
    );
    fabrik(&[
        "model",
        "sign",
        "--key",
        path(&keys.join("model.key")),
        path(&swapped),
    ]);
    add_swapped();
    let swapped_sha = sha256_hex(&fixture("rf_clf_50_nozipmap.onnx"));
    eventually_for("the signed model installs", Duration::from_secs(30), || {
        model_sha(&edge.url, "swapped-model").as_deref() == Some(swapped_sha.as_str())
    });

    // A pipeline scoring with the released model, and an alert rule on its inferences, flow
    // down the same way and run on the edge. A definition is checked before it is published.
    let pipeline = work.join("pump-health.json");
    std::fs::write(
        &pipeline,
        serde_json::json!({
            "name": "released-health",
            "table": "pump",
            "signals": ["vibration", "current"],
            "features": ["mean", "std", "min", "max"],
            "model": "onnx",
            "model_name": "pump-model",
            "training_windows": 10,
            "interval": "1s",
        })
        .to_string(),
    )
    .expect("pipeline");
    let unnamed = release_fails("add", &repo, &keys, &[path(&pipeline)]);
    assert!(unnamed.contains("--kind"), "{unnamed}");
    let by_path = work.join("by-path.json");
    std::fs::write(
        &by_path,
        serde_json::json!({
            "name": "by-path",
            "table": "pump",
            "signals": ["vibration"],
            "features": ["mean"],
            "model": "onnx",
            "model_path": path(&forest),
        })
        .to_string(),
    )
    .expect("pipeline");
    let refused = release_fails("add", &repo, &keys, &["--kind", "pipeline", path(&by_path)]);
    assert!(refused.contains("model_name"), "{refused}");
    let published = release(
        "add",
        &repo,
        &keys,
        &["--kind", "pipeline", path(&pipeline)],
    );
    assert!(
        published.contains("pipeline released-health"),
        "{published}"
    );
    let rule = work.join("rule.toml");
    std::fs::write(
        &rule,
        "name = \"released-anomaly\"\ntable = \"inferences\"\nvalue = \"score\"\n\
         key = \"device\"\nfilter = \"pipeline = 'released-health'\"\n\
         condition = \"above\"\nthreshold = 1.0\n",
    )
    .expect("rule");
    release("add", &repo, &keys, &["--kind", "alert-rule", path(&rule)]);
    eventually_for(
        "the pipeline and the alert rule are defined on the edge",
        Duration::from_secs(30),
        || {
            let (pipeline_code, _) = http(
                &edge.url,
                reqwest::Method::GET,
                "/api/v1/pipelines/released-health",
                None,
            );
            let (rule_code, _) = http(
                &edge.url,
                reqwest::Method::GET,
                "/api/v1/alert-rules/released-anomaly",
                None,
            );
            pipeline_code == 200 && rule_code == 200
        },
    );
    let (_, defined) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/released-health",
        None,
    );
    assert_eq!(defined["model"], "onnx", "{defined}");
    assert_ne!(
        defined["state"], "failed",
        "it loads the released model: {defined}"
    );
    let status = updates(&edge.url);
    assert_eq!(
        target(&status, "released-health.pipeline.json")["state"],
        "installed",
        "{status}"
    );
    assert_eq!(
        target(&status, "released-anomaly.alert-rule.json")["state"],
        "installed",
        "{status}"
    );

    let verified_version = updates(&edge.url)["targets_version"]
        .as_u64()
        .expect("version");
    assert_eq!(verified_version, 8, "four more releases: {status}");

    // Rollback: the hub serves an older timestamp again (as a replaying attacker would). The
    // edge refuses it, keeps its model, and still refuses it after a restart.
    let saved_timestamp = std::fs::read(repo.join("metadata/timestamp.json")).expect("ts");
    release("refresh", &repo, &keys, &[]);
    eventually_for(
        "the edge trusts the refreshed metadata",
        Duration::from_secs(30),
        || updates(&edge.url)["targets_version"] == verified_version + 1,
    );
    let current_timestamp = std::fs::read(repo.join("metadata/timestamp.json")).expect("ts");
    std::fs::write(repo.join("metadata/timestamp.json"), &saved_timestamp).expect("roll back");
    eventually_for(
        "the edge refuses the older timestamp",
        Duration::from_secs(30),
        || {
            updates(&edge.url)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("previously"))
        },
    );
    let status = updates(&edge.url);
    assert_eq!(status["targets_version"], verified_version + 1, "{status}");
    assert_eq!(
        model_sha(&edge.url, "pump-model").as_deref(),
        Some(forest_sha.as_str())
    );
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for("the restarted edge checks", Duration::from_secs(30), || {
        updates(&edge.url)["checks"].as_u64() >= Some(1)
    });
    let status = updates(&edge.url);
    let error = status["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("version") && error.contains("previously"),
        "after a restart the older timestamp is still refused: {status}"
    );
    // The publisher will not sign on top of it either (it remembers what it published)...
    let refused = release_fails("refresh", &repo, &keys, &[]);
    assert!(refused.contains("previously"), "{refused}");
    // ...until the operator puts the current file back.
    std::fs::write(repo.join("metadata/timestamp.json"), &current_timestamp).expect("restore");

    // Expiry: metadata re-signed to expire at once is refused once it has (a node cut off
    // from fresh releases does not keep trusting what it last saw).
    release("refresh", &repo, &keys, &["--timestamp-lifetime", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    eventually_for(
        "the edge refuses the expired timestamp",
        Duration::from_secs(30),
        || {
            updates(&edge.url)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("expired"))
        },
    );
    assert_eq!(
        model_sha(&edge.url, "pump-model").as_deref(),
        Some(forest_sha.as_str())
    );

    // A hub holding the online keys (snapshot and timestamp, not root or targets) keeps the
    // metadata signed: it re-signs the expired timestamp at start, then whenever half its
    // lifetime is left, and the edge trusts the repository again without anyone running
    // `fabrik release refresh`.
    let online = dir.path().join("online-keys");
    std::fs::create_dir_all(&online).expect("online keys");
    for role in ["snapshot", "timestamp"] {
        let key = format!("{role}.key");
        std::fs::copy(keys.join(&key), online.join(&key)).expect("copy key");
    }
    let _signer = Process::start(
        &dir.path().join("signer"),
        &[
            ("FABRIK__RELEASES__REPO", path(&repo)),
            ("FABRIK__RELEASES__TOKEN", RELEASE_TOKEN),
            ("FABRIK__RELEASES__KEYS", path(&online)),
            ("FABRIK__RELEASES__TIMESTAMP_LIFETIME", "2s"),
        ],
    );
    eventually_for(
        "the edge trusts the re-signed timestamp",
        Duration::from_secs(30),
        || updates(&edge.url)["last_error"].is_null(),
    );
    let first = updates(&edge.url)["timestamp_version"]
        .as_u64()
        .expect("version");
    // Well past the first re-signed timestamp's 2 s: only a second re-signing keeps it valid.
    std::thread::sleep(Duration::from_secs(3));
    eventually_for("the edge still trusts it", Duration::from_secs(30), || {
        let status = updates(&edge.url);
        status["last_error"].is_null() && status["timestamp_version"].as_u64() > Some(first)
    });
}

/// A temporary directory with a release repository made by `fabrik release init` (`repo`,
/// its keys in `keys`) and an empty `work` directory for the files to publish.
fn new_repository() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().expect("dir");
    let repo = dir.path().join("repo");
    let keys = dir.path().join("keys");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    release("init", &repo, &keys, &[]);
    (dir, repo, keys, work)
}

/// The configuration of an edge named `line-1` following `repo` from its directory (as from
/// a USB stick), checking every 300 ms; written into `dir`.
fn follower_config(dir: &Path, repo: &Path) -> std::path::PathBuf {
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[updates]\nurl = \"file://{}\"\nroot = \"{}\"\nnode = \"line-1\"\ninterval = \"300ms\"\n",
            path(repo),
            path(&repo.join("metadata/1.root.json")),
        ),
    )
    .expect("config");
    config
}

/// A target file from the repository's `targets/` directory, by the end of its name.
fn target_file(repo: &Path, suffix: &str) -> std::path::PathBuf {
    std::fs::read_dir(repo.join("targets"))
        .expect("targets")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no target file ending {suffix}"))
}

#[test]
fn encrypted_targets_install_only_on_the_nodes_whose_keys_they_name() {
    let (dir, repo, keys, work) = new_repository();

    // The node's key exists before its first start: the operator provisioning it asks for
    // the recipient, and the publisher encrypts to it.
    let edge_data = dir.path().join("edge");
    let identity_file = edge_data.join("updates/identity.key");
    let missing = fabrik_fails(&["updates", "recipient", "--identity", path(&identity_file)]);
    assert!(
        missing.contains("identity.key"),
        "no key made unasked: {missing}"
    );
    let recipient = fabrik(&[
        "updates",
        "recipient",
        "--identity",
        path(&identity_file),
        "--create",
    ])
    .trim()
    .to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&identity_file)
            .expect("identity")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the node's key is private: {mode:o}");
    }
    let again = fabrik(&[
        "updates",
        "recipient",
        "--identity",
        path(&identity_file),
        "--create",
    ]);
    assert_eq!(again.trim(), recipient, "asked again, the same key");

    // Another site's key, made with age's own tool, listed in a recipients file.
    let stranger_key = work.join("site-b.key");
    let made = Command::new("age-keygen")
        .args(["-o", path(&stranger_key)])
        .output()
        .expect("age-keygen must be installed (apt install age; .ci/run does)");
    assert!(made.status.success(), "{made:?}");
    let stranger = Command::new("age-keygen")
        .args(["-y", path(&stranger_key)])
        .output()
        .expect("age-keygen -y");
    let stranger = String::from_utf8(stranger.stdout).expect("utf-8");
    let site_b = work.join("site-b.txt");
    std::fs::write(&site_b, format!("# site B\n\n{}", stranger.trim())).expect("recipients");

    let model_bytes = fixture("iforest_100.onnx");
    let model = work.join("secret.onnx");
    std::fs::write(&model, &model_bytes).expect("model");
    let published = release(
        "add",
        &repo,
        &keys,
        &[
            "--name",
            "secret-model",
            "--recipient",
            &recipient,
            path(&model),
        ],
    );
    assert!(
        published.contains("encrypted to 1 recipient"),
        "{published}"
    );
    // For every node, encrypted to site B: the recipients are its audience.
    release(
        "add",
        &repo,
        &keys,
        &[
            "--name",
            "site-b-model",
            "--recipients-file",
            path(&site_b),
            path(&model),
        ],
    );
    // Named for line-1, but encrypted to site B only: a publisher's slip, which line-1 shows.
    release(
        "add",
        &repo,
        &keys,
        &[
            "--name",
            "slipped-model",
            "--nodes",
            "line-1",
            "--recipient",
            stranger.trim(),
            path(&model),
        ],
    );
    let rule = work.join("rule.toml");
    std::fs::write(
        &rule,
        "name = \"confidential-limit\"\ntable = \"pump\"\nvalue = \"vibration\"\n\
         condition = \"above\"\nthreshold = 7.25\n",
    )
    .expect("rule");
    release(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "alert-rule",
            "--recipient",
            &recipient,
            path(&rule),
        ],
    );
    let wrong = release_fails(
        "add",
        &repo,
        &keys,
        &["--name", "x", "--recipient", "age1notakey", path(&model)],
    );
    let empty = release_fails(
        "add",
        &repo,
        &keys,
        &["--name", "x", "--recipient", "", path(&model)],
    );
    assert!(
        empty.contains("an empty value"),
        "never in clear by mistake: {empty}"
    );
    let secret = std::fs::read_to_string(&stranger_key).expect("key");
    let secret = secret
        .lines()
        .find(|line| line.starts_with("AGE-SECRET-KEY-"))
        .expect("secret line");
    let pasted = release_fails(
        "add",
        &repo,
        &keys,
        &["--name", "x", "--recipient", secret, path(&model)],
    );
    assert!(
        pasted.contains("secret key") && !pasted.contains(secret),
        "a secret key is refused and not repeated: {pasted}"
    );
    assert!(
        wrong.contains("--recipient") && wrong.contains("age1notakey"),
        "{wrong}"
    );

    // What is served (and stored on the hub's disk) reveals neither the model nor the rule,
    // and age itself opens it with the node's key: the operator's way to look inside.
    let served = std::fs::read(target_file(&repo, ".secret-model.onnx")).expect("served");
    let probe = &model_bytes[model_bytes.len() / 2..][..64];
    assert!(
        !served.windows(64).any(|w| w == probe),
        "the model is not in clear"
    );
    let served_rule = std::fs::read(target_file(&repo, ".confidential-limit.alert-rule.json"))
        .expect("served rule");
    assert!(
        !String::from_utf8_lossy(&served_rule).contains("vibration"),
        "the rule is not in clear"
    );
    let opened = Command::new("age")
        .args([
            "-d",
            "-i",
            path(&identity_file),
            path(&target_file(&repo, ".secret-model.onnx")),
        ])
        .output()
        .expect("age");
    assert!(opened.status.success(), "{opened:?}");
    assert_eq!(opened.stdout, model_bytes);
    let listed = fabrik(&["release", "list", "--repo", path(&repo)]);
    assert!(listed.contains("encrypted to 1"), "{listed}");

    // The edge follows the repository from its directory (as from a USB stick).
    let config = follower_config(dir.path(), &repo);
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    let published_sha = sha256_hex(&model_bytes);
    eventually_for(
        "the edge decrypts and installs the model and the rule encrypted to it",
        Duration::from_secs(30),
        || {
            let status = updates(&edge.url);
            target(&status, "secret-model.onnx")["state"] == "installed"
                && target(&status, "confidential-limit.alert-rule.json")["state"] == "installed"
                && target(&status, "slipped-model.onnx")["state"] == "refused"
        },
    );
    assert_eq!(
        model_sha(&edge.url, "secret-model").as_deref(),
        Some(published_sha.as_str()),
        "the model as published, not the encrypted file"
    );
    let (code, rule) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/alert-rules/confidential-limit",
        None,
    );
    assert_eq!(code, 200, "{rule}");
    assert_eq!(rule["definition"]["threshold"], 7.25, "{rule}");
    let status = updates(&edge.url);
    assert_eq!(status["recipient"], recipient.as_str(), "{status}");
    assert_eq!(
        target(&status, "secret-model.onnx")["encrypted"],
        true,
        "{status}"
    );
    assert_eq!(
        target(&status, "site-b-model.onnx")["state"],
        "not_for_this_node",
        "{status}"
    );
    let reason = target(&status, "slipped-model.onnx")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("not to this node's") && reason.contains(&recipient),
        "names the node's key: {reason}"
    );
    for other in ["site-b-model", "slipped-model"] {
        assert!(
            model_sha(&edge.url, other).is_none(),
            "nothing stored for {other}"
        );
    }
    let refusals = crate::mqtt::query(
        &edge.url,
        "SELECT name FROM _releases WHERE state = 'refused'",
    );
    assert!(
        refusals.iter().all(|row| row["name"] == "slipped-model") && !refusals.is_empty(),
        "another site's target is no refusal: {refusals:?}"
    );
    let (ok, asked) = client_command(&edge.url, &["updates", "recipient"]);
    assert!(
        ok && asked.trim() == recipient,
        "the running node's key: {asked}"
    );
    let (ok, shown) = client_command(&edge.url, &["updates", "status"]);
    assert!(
        ok && shown.contains(&recipient) && shown.contains("secret-model (encrypted)"),
        "{shown}"
    );

    // Restarted, the edge finds the model it holds by the published content's hash (the
    // encrypted file's differs) and does not install it again.
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for("the restarted edge checks", Duration::from_secs(30), || {
        let status = updates(&edge.url);
        status["checks"].as_u64() >= Some(2)
            && target(&status, "secret-model.onnx")["state"] == "installed"
    });
    assert_eq!(
        updates(&edge.url)["recipient"],
        recipient.as_str(),
        "the same key"
    );
    let installs = crate::mqtt::query(
        &edge.url,
        "SELECT sha256, file_sha256 FROM _releases WHERE name = 'secret-model' AND state = 'installed'",
    );
    assert_eq!(installs.len(), 1, "installed once: {installs:?}");
    // The content's hash, as the model's inferences carry it in `model_version`.
    assert_eq!(
        installs[0]["sha256"],
        published_sha.as_str(),
        "{installs:?}"
    );
    assert_ne!(
        installs[0]["file_sha256"],
        published_sha.as_str(),
        "{installs:?}"
    );

    // The node's key is rotated (it may have leaked, or is due): the new key comes first, the
    // old one stays after it, so what was published to the old key still decrypts; a new
    // model is published to the new key only.
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    // The recipient on the first line (stdout); what to do next follows (stderr).
    let said = fabrik(&["updates", "rotate-key", "--identity", path(&identity_file)]);
    assert!(said.contains("retire-keys"), "{said}");
    let rotated = said.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        rotated.starts_with("age1") && rotated != recipient,
        "{rotated}"
    );
    let renewed_bytes = fixture("rf_clf_50_nozipmap.onnx");
    let renewed = work.join("renewed.onnx");
    std::fs::write(&renewed, &renewed_bytes).expect("model");
    release(
        "add",
        &repo,
        &keys,
        &[
            "--name",
            "renewed-model",
            "--recipient",
            &rotated,
            path(&renewed),
        ],
    );
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for(
        "the edge decrypts the new model with its new key and keeps the old one's",
        Duration::from_secs(30),
        || {
            let status = updates(&edge.url);
            target(&status, "renewed-model.onnx")["state"] == "installed"
                && target(&status, "secret-model.onnx")["state"] == "installed"
        },
    );
    let status = updates(&edge.url);
    assert_eq!(status["recipient"], rotated.as_str(), "{status}");
    assert_eq!(
        status["previous_recipients"],
        serde_json::json!([recipient]),
        "{status}"
    );
    assert_eq!(
        model_sha(&edge.url, "renewed-model").as_deref(),
        Some(sha256_hex(&renewed_bytes).as_str())
    );
    let (ok, shown) = client_command(&edge.url, &["updates", "status"]);
    assert!(
        ok && shown.contains("previous keys, still read until retired")
            && shown.contains(&recipient),
        "{shown}"
    );
    // age itself reads the rotated file (it tries each key): the operator's tools still work.
    let opened = Command::new("age")
        .args([
            "-d",
            "-i",
            path(&identity_file),
            path(&target_file(&repo, ".secret-model.onnx")),
        ])
        .output()
        .expect("age");
    assert!(opened.status.success(), "{opened:?}");
    // Retired, the old key is gone from the file.
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let kept = fabrik(&["updates", "retire-keys", "--identity", path(&identity_file)]);
    assert_eq!(kept.lines().next().map(str::trim), Some(rotated.as_str()));
    assert!(kept.contains("1 previous key(s) removed"), "{kept}");
    let text = std::fs::read_to_string(&identity_file).expect("identity");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .count(),
        1,
        "{}",
        text.lines()
            .filter(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn use_case(url: &str, name: &str) -> serde_json::Value {
    let (code, body) = http(
        url,
        reqwest::Method::GET,
        &format!("/api/v1/usecases/{name}"),
        None,
    );
    if code == 200 {
        body
    } else {
        serde_json::Value::Null
    }
}

#[test]
fn a_stage_decision_released_to_the_fleet_decides_which_devices_a_node_scores() {
    let (dir, repo, keys, work) = new_repository();

    // The use case as its owner defined it: pump-a in pilot, pump-b added at scale-up.
    let definition = work.join("pump-reliability.toml");
    std::fs::write(
        &definition,
        "name = \"pump-reliability\"\nobjective = \"Halve unplanned pump downtime\"\n\
         owner = \"maintenance\"\n\n[pilot]\ndevices = [\"pump-a\"]\n\n\
         [scale_up]\ndevices = [\"pump-b\"]\n\n[[kpis]]\nname = \"downtime\"\n\
         kind = \"downtime\"\ntable = \"pump\"\ncondition = \"NOT running\"\ntarget = 12.0\n",
    )
    .expect("definition");
    let no_stage = release_fails(
        "add",
        &repo,
        &keys,
        &["--kind", "use-case", "--reason", "r", path(&definition)],
    );
    assert!(no_stage.contains("--stage"), "{no_stage}");
    let no_reason = release_fails(
        "add",
        &repo,
        &keys,
        &["--kind", "use-case", "--stage", "pilot", path(&definition)],
    );
    assert!(no_reason.contains("--reason"), "{no_reason}");
    let wrong_kind = release_fails(
        "add",
        &repo,
        &keys,
        &["--kind", "pipeline", "--stage", "pilot", path(&definition)],
    );
    assert!(
        wrong_kind.contains("go with --kind use-case"),
        "{wrong_kind}"
    );
    let misnamed = release_fails(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "use-case",
            "--name",
            "other",
            "--stage",
            "pilot",
            "--reason",
            "r",
            path(&definition),
        ],
    );
    assert!(misnamed.contains("--name other"), "{misnamed}");
    let listed = fabrik(&["release", "list", "--repo", path(&repo), "--json"]);
    assert!(
        listed.contains("\"targets\": []"),
        "nothing published by a refused add: {listed}"
    );
    let bad_sql = work.join("bad.toml");
    std::fs::write(
        &bad_sql,
        std::fs::read_to_string(&definition)
            .expect("read")
            .replace("NOT running", "NOT (running"),
    )
    .expect("bad");
    let refused = release_fails(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "use-case",
            "--stage",
            "pilot",
            "--reason",
            "r",
            path(&bad_sql),
        ],
    );
    assert!(
        refused.contains("condition"),
        "checked as a node would: {refused}"
    );
    let published = release(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "use-case",
            "--stage",
            "pilot",
            "--reason",
            "pilot approved by the plant manager",
            path(&definition),
        ],
    );
    assert!(
        published.contains("use case pump-reliability"),
        "{published}"
    );

    let config = follower_config(dir.path(), &repo);
    let edge_data = dir.path().join("edge");
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for(
        "the edge defines the released use case",
        Duration::from_secs(30),
        || use_case(&edge.url, "pump-reliability")["stage"] == "pilot",
    );
    let defined = use_case(&edge.url, "pump-reliability");
    assert_eq!(
        defined["devices"],
        serde_json::json!(["pump-a"]),
        "{defined}"
    );
    assert_eq!(defined["definition"]["owner"], "maintenance", "{defined}");

    // Promoted where the pilot ran (here over a gate that did not pass, on record), the
    // use case as `fabrik usecase show` printed it there is released to the fleet: a new
    // owner, and the stage it was shown at.
    let mut promoted = defined.clone();
    promoted["stage"] = "scale_up".into();
    promoted["definition"]["owner"] = "reliability team".into();
    let shown = work.join("shown.txt");
    std::fs::write(&shown, promoted.to_string()).expect("shown");
    release(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "use-case",
            "--forced",
            "--reason",
            "gate passed on line-1 on 2026-12-01 but for its precision; M. Keller",
            path(&shown),
        ],
    );
    eventually_for(
        "the edge moves the use case to scale-up",
        Duration::from_secs(30),
        || use_case(&edge.url, "pump-reliability")["stage"] == "scale_up",
    );
    let scaled = use_case(&edge.url, "pump-reliability");
    assert_eq!(
        scaled["devices"],
        serde_json::json!(["pump-a", "pump-b"]),
        "its pipelines now score pump-b too: {scaled}"
    );
    assert_eq!(
        scaled["definition"]["owner"], "reliability team",
        "{scaled}"
    );
    // On the node, the stage is the fleet's decision: changing it there is refused.
    let (code, refused) = http(
        &edge.url,
        reqwest::Method::POST,
        "/api/v1/usecases/pump-reliability/stage",
        Some(serde_json::json!({"from": "scale_up", "to": "pilot", "reason": "local"})),
    );
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused.to_string().contains("released from file://"),
        "{refused}"
    );
    let (code, decisions) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/usecases/pump-reliability/decisions",
        None,
    );
    assert_eq!(code, 200, "{decisions}");
    let decisions = decisions.as_array().expect("decisions").clone();
    assert_eq!(
        decisions.len(),
        1,
        "one decision, the released one: {decisions:?}"
    );
    let decision = &decisions[0];
    assert_eq!(decision["from"], "pilot");
    assert_eq!(decision["to"], "scale_up");
    assert_eq!(
        decision["forced"], true,
        "forced where it was decided: {decision}"
    );
    assert!(
        decision["actor"]
            .as_str()
            .is_some_and(|actor| actor.starts_with("updates:file://")),
        "{decision}"
    );
    let reason = decision["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gate passed on line-1") && reason.contains("targets version"),
        "{reason}"
    );

    // A restarted node finds the use case as released: nothing is decided again.
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for("the restarted edge checks", Duration::from_secs(30), || {
        let status = updates(&edge.url);
        status["checks"].as_u64() >= Some(2)
            && target(&status, "pump-reliability.use-case.json")["state"] == "installed"
    });
    let (_, decisions) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/usecases/pump-reliability/decisions",
        None,
    );
    assert_eq!(decisions.as_array().map(Vec::len), Some(1), "{decisions}");
    let installs = crate::mqtt::query(
        &edge.url,
        "SELECT count(*) AS n FROM _releases WHERE kind = 'use-case' AND state = 'installed'",
    );
    assert_eq!(installs[0]["n"], 2, "pilot, then scale-up: {installs:?}");
}

#[test]
fn an_edge_follows_its_repository_through_replaced_keys() {
    let (dir, repo, keys, work) = new_repository();
    let model = work.join("forest.onnx");
    std::fs::write(&model, fixture("iforest_100.onnx")).expect("model");
    release("add", &repo, &keys, &["--name", "before", path(&model)]);
    let config = follower_config(dir.path(), &repo);
    let edge_data = dir.path().join("edge");
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for(
        "the edge installs the first model",
        Duration::from_secs(30),
        || model_sha(&edge.url, "before").is_some(),
    );

    // Each role's key replaced in turn (the root's second, so later roots are signed with its
    // new key), a model published after each: the edge walks from the root it was given
    // through every new root, and trusts only the keys each one lists.
    let mut expected_root = 1;
    for role in ["targets", "root", "snapshot", "timestamp"] {
        let rotated = release("rotate", &repo, &keys, &["--role", role]);
        expected_root += 1;
        assert!(
            rotated.contains(&format!("root version {expected_root}")),
            "{rotated}"
        );
        let name = format!("after-{role}");
        release("add", &repo, &keys, &["--name", &name, path(&model)]);
        eventually_for(
            &format!("the edge trusts the new {role} key"),
            Duration::from_secs(30),
            || model_sha(&edge.url, &name).is_some(),
        );
        let status = updates(&edge.url);
        assert_eq!(status["root_version"], expected_root, "{status}");
        assert!(status["last_error"].is_null(), "{status}");
    }
    let refused = release_fails("rotate", &repo, &keys, &["--role", "owner"]);
    assert!(refused.contains("expected root, targets"), "{refused}");

    // The root held by three people, two of whom must sign (decision 0088): Bob brings his
    // key to the change. Then Alice's key (`root.key`) is lost, and Bob and Carol replace it
    // with Dave's; the edge follows both roots from the one it holds.
    let listed = |repo: &Path| -> serde_json::Value {
        serde_json::from_str(&fabrik(&[
            "release",
            "list",
            "--repo",
            path(repo),
            "--json",
        ]))
        .expect("json")
    };
    let alice = listed(&repo)["root_signers"]["keys"][0]
        .as_str()
        .expect("the root key's short id")
        .to_owned();
    let holder = |name: &str| {
        let private = work.join(format!("{name}.key"));
        fabrik(&["release", "keygen", "--out", path(&private)]);
        let public = work.join(format!("{name}.key.pub"));
        (private, public)
    };
    let (bob, bob_pub) = holder("bob");
    let (carol, carol_pub) = holder("carol");
    let (_dave, dave_pub) = holder("dave");
    let alone = release_fails(
        "root-keys",
        &repo,
        &keys,
        &[
            "--add",
            path(&bob_pub),
            "--add",
            path(&carol_pub),
            "--threshold",
            "2",
        ],
    );
    assert!(alone.contains("--root-key"), "{alone}");
    let changed = release(
        "root-keys",
        &repo,
        &keys,
        &[
            "--add",
            path(&bob_pub),
            "--add",
            path(&carol_pub),
            "--threshold",
            "2",
            "--root-key",
            path(&bob),
        ],
    );
    assert!(
        changed.contains("root version 6") && changed.contains("2 of"),
        "{changed}"
    );
    std::fs::rename(keys.join("root.key"), work.join("lost-root.key")).expect("lost");
    let replaced = release(
        "root-keys",
        &repo,
        &keys,
        &[
            "--remove",
            &alice,
            "--add",
            path(&dave_pub),
            "--root-key",
            path(&bob),
            "--root-key",
            path(&carol),
        ],
    );
    assert!(replaced.contains("root version 7"), "{replaced}");
    expected_root = 7;
    let root_signers = &listed(&repo)["root_signers"];
    assert_eq!(root_signers["threshold"], 2, "{root_signers}");
    assert!(
        !root_signers["keys"].to_string().contains(&alice),
        "{root_signers}"
    );
    release(
        "add",
        &repo,
        &keys,
        &["--name", "after-root-keys", path(&model)],
    );
    eventually_for(
        "the edge trusts the root of three holders",
        Duration::from_secs(30),
        || model_sha(&edge.url, "after-root-keys").is_some(),
    );
    let status = updates(&edge.url);
    assert_eq!(
        (
            &status["root_version"],
            &status["root_threshold"],
            &status["root_keys"]
        ),
        (
            &serde_json::json!(7),
            &serde_json::json!(2),
            &serde_json::json!(3)
        ),
        "{status}"
    );
    let (code, report) = http(&edge.url, reqwest::Method::GET, "/api/v1/compliance", None);
    assert_eq!(code, 200, "{report}");
    assert!(
        report.to_string().contains("signed by 2 of 3 root keys"),
        "{report}"
    );

    // Restarted, the edge still holds the chain (from its datastore, not the 1.root.json it
    // was configured with).
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for(
        "the restarted edge verifies",
        Duration::from_secs(30),
        || updates(&edge.url)["root_version"] == expected_root,
    );
}

/// The id of the one proposal waiting in `repo`.
fn only_proposal(repo: &Path) -> String {
    let listed: serde_json::Value = serde_json::from_str(&fabrik(&[
        "release",
        "proposals",
        "--repo",
        path(repo),
        "--json",
    ]))
    .expect("json");
    let proposals = listed.as_array().expect("a list");
    assert_eq!(proposals.len(), 1, "{listed}");
    proposals[0]["id"].as_str().expect("id").to_owned()
}

/// Two people sign each release (decision 0075): the root key's holder makes a second
/// person's key a targets signer at threshold 2; nothing reaches the edge until that person
/// has signed too, and then the hub holding the online keys publishes it.
#[test]
fn a_release_reaches_the_edge_only_once_both_signers_have_signed_it() {
    let (dir, repo, alice, work) = new_repository();
    let bob = work.join("bob");
    std::fs::create_dir_all(&bob).expect("bob");
    let made = fabrik(&["release", "keygen", "--out", path(&bob.join("targets.key"))]);
    assert!(made.contains("targets.key.pub"), "{made}");
    let proposed = release(
        "signers",
        &repo,
        &alice,
        &[
            "--add",
            path(&bob.join("targets.key.pub")),
            "--threshold",
            "2",
        ],
    );
    assert!(proposed.contains("signed by 1 of the 2"), "{proposed}");
    let change_of_signers = only_proposal(&repo);

    let online = dir.path().join("online-keys");
    std::fs::create_dir_all(&online).expect("online keys");
    for role in ["snapshot", "timestamp"] {
        let key = format!("{role}.key");
        std::fs::copy(alice.join(&key), online.join(&key)).expect("copy key");
    }
    let _hub = Process::start(
        &dir.path().join("hub"),
        &[
            ("FABRIK__RELEASES__REPO", path(&repo)),
            ("FABRIK__RELEASES__TOKEN", RELEASE_TOKEN),
            ("FABRIK__RELEASES__KEYS", path(&online)),
            ("FABRIK__RELEASES__TIMESTAMP_LIFETIME", "8s"),
        ],
    );
    let config = follower_config(dir.path(), &repo);
    let edge =
        Process::start_with_args(&dir.path().join("edge"), &["--config", path(&config)], &[]);
    eventually_for(
        "the edge follows the repository",
        Duration::from_secs(30),
        || {
            let status = updates(&edge.url);
            status["last_error"].is_null() && status["root_version"] == 1
        },
    );

    // Bob signs the change of signers without the online keys: the hub publishes it.
    let approved = release("approve", &repo, &bob, &["--id", &change_of_signers]);
    assert!(approved.contains("targets signed by 2 of"), "{approved}");
    assert!(approved.contains("not published"), "{approved}");
    eventually_for(
        "the edge trusts the new root",
        Duration::from_secs(30),
        || {
            let status = updates(&edge.url);
            status["last_error"].is_null() && status["root_version"] == 2
        },
    );
    let status = updates(&edge.url);
    assert_eq!(
        (&status["targets_threshold"], &status["targets_keys"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "{status}"
    );
    let (code, report) = http(&edge.url, reqwest::Method::GET, "/api/v1/compliance", None);
    assert_eq!(code, 200, "{report}");
    assert!(
        report
            .to_string()
            .contains("signed by 2 of 2 publishers' keys"),
        "{report}"
    );

    // Alice's release waits for Bob.
    let model = work.join("pump.onnx");
    std::fs::write(&model, fixture("iforest_100.onnx")).expect("model");
    let proposed = release("add", &repo, &alice, &["--name", "pump", path(&model)]);
    assert!(
        proposed.contains("model pump") && proposed.contains("waits as proposal"),
        "{proposed}"
    );
    let release_of_pump = only_proposal(&repo);
    let listing = fabrik(&["release", "proposals", "--repo", path(&repo)]);
    assert!(listing.contains("+ \"pump.onnx\" {"), "{listing}");
    assert!(listing.contains("signed by 1 of 2 needed"), "{listing}");
    let refused = release_fails("approve", &repo, &alice, &["--id", &release_of_pump]);
    assert!(refused.contains("has signed proposal"), "{refused}");
    // The hub has re-signed the timestamp since (every 4 s) and the edge has checked it:
    // still no model.
    let seen = updates(&edge.url)["timestamp_version"]
        .as_u64()
        .expect("version");
    eventually_for(
        "the edge sees a re-signed timestamp",
        Duration::from_secs(30),
        || updates(&edge.url)["timestamp_version"].as_u64() > Some(seen),
    );
    assert_eq!(model_sha(&edge.url, "pump"), None);

    release("approve", &repo, &bob, &["--id", &release_of_pump]);
    eventually_for(
        "the edge installs the model both signed",
        Duration::from_secs(30),
        || model_sha(&edge.url, "pump").is_some(),
    );
    let listing = fabrik(&["release", "proposals", "--repo", path(&repo)]);
    assert!(listing.contains("no proposals"), "{listing}");
    let listed = fabrik(&["release", "list", "--repo", path(&repo)]);
    assert!(listed.contains("pump"), "{listed}");

    // The hub's online keys replaced (as after a hub was compromised) while two people sign
    // the targets: the targets both signed stay published, the edge follows the new roots,
    // and the hub signs again once it holds the new keys.
    for (role, root_version) in [("snapshot", 3), ("timestamp", 4)] {
        // Signed as the hub signs them, so the hub re-signs within the test.
        let rotated = release(
            "rotate",
            &repo,
            &alice,
            &["--role", role, "--timestamp-lifetime", "8s"],
        );
        assert!(
            rotated.contains(&format!("root version {root_version}")),
            "{rotated}"
        );
        let key = format!("{role}.key");
        std::fs::copy(alice.join(&key), online.join(&key)).expect("the new key to the hub");
    }
    // The timestamp the rotation signed; a later one is the hub's, signed with the new key.
    let timestamp: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("metadata/timestamp.json")).expect("timestamp"),
    )
    .expect("json");
    let rotated_at = timestamp["signed"]["version"].as_u64().expect("version");
    eventually_for(
        "the edge follows the new roots and the hub's timestamps",
        Duration::from_secs(30),
        || {
            let status = updates(&edge.url);
            status["last_error"].is_null()
                && status["root_version"] == 4
                && status["timestamp_version"].as_u64() > Some(rotated_at)
        },
    );
    assert!(model_sha(&edge.url, "pump").is_some());
}

#[test]
fn a_hub_knows_which_node_runs_which_release() {
    let (dir, repo, keys, work) = new_repository();
    let model_bytes = fixture("iforest_100.onnx");
    let model = work.join("forest.onnx");
    std::fs::write(&model, &model_bytes).expect("model");
    release("add", &repo, &keys, &["--name", "pump-model", path(&model)]);
    release(
        "add",
        &repo,
        &keys,
        &["--name", "swapped-model", path(&model)],
    );
    // The second model's file is swapped behind its signed hash: the node refuses it.
    std::fs::write(
        target_file(&repo, ".swapped-model.onnx"),
        fixture("mlp_ae_8_4_8.onnx"),
    )
    .expect("tamper");

    let (_nats, nats_url, hub) = nats_and_hub(dir.path());
    let config = uplinked_follower_config(dir.path(), &repo, &nats_url);
    let edge =
        Process::start_with_args(&dir.path().join("edge"), &["--config", path(&config)], &[]);

    // The edge's records reach the hub through the uplink: the hub answers for the fleet.
    let fleet = |url: &str| {
        let (code, answer) = http(url, reqwest::Method::GET, "/api/v1/fleet/releases", None);
        assert_eq!(code, 200, "{answer}");
        answer
    };
    let entry = |answer: &serde_json::Value, target: &str| {
        answer["releases"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|r| r["node"] == "line-1" && r["target"] == target)
                    .cloned()
            })
            .unwrap_or(serde_json::Value::Null)
    };
    eventually_for(
        "the hub lists what line-1 installed and refused",
        Duration::from_secs(60),
        || {
            let answer = fleet(&hub.url);
            entry(&answer, "pump-model.onnx")["state"] == "installed"
                && entry(&answer, "swapped-model.onnx")["state"] == "refused"
        },
    );
    let answer = fleet(&hub.url);
    assert_eq!(answer["nodes"], 1, "{answer}");
    let installed = entry(&answer, "pump-model.onnx");
    assert_eq!(
        installed["installed_sha256"],
        sha256_hex(&model_bytes).as_str(),
        "{installed}"
    );
    assert!(installed["installed_at"].is_string(), "{installed}");
    assert!(installed["reason"].is_null(), "{installed}");
    let refused = entry(&answer, "swapped-model.onnx");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|why| why.contains("Hash mismatch")),
        "{refused}"
    );
    assert!(
        refused["installed_sha256"].is_null(),
        "it runs none of it: {refused}"
    );
    let (ok, shown) = client_command(&hub.url, &["release", "fleet"]);
    assert!(
        ok && shown.contains("line-1  pump-model.onnx  installed  runs ")
            && shown.contains("swapped-model.onnx  refused  runs none of it; refused"),
        "{shown}"
    );
    // A second version of the model arrives damaged: the node refuses it and keeps running
    // the first, which the hub still shows, with its install time.
    let installed_at = installed["installed_at"].clone();
    assert!(
        installed_at.as_str().is_some_and(|at| at.ends_with('Z')),
        "UTC, said: {installed_at}"
    );
    let second = work.join("second.onnx");
    std::fs::write(&second, fixture("rf_clf_50_nozipmap.onnx")).expect("second");
    release(
        "add",
        &repo,
        &keys,
        &["--name", "pump-model", path(&second)],
    );
    let second_sha = sha256_hex(&fixture("rf_clf_50_nozipmap.onnx"));
    std::fs::write(
        target_file(&repo, &format!("{second_sha}.pump-model.onnx")),
        fixture("mlp_ae_8_4_8.onnx"),
    )
    .expect("tamper");
    eventually_for(
        "the hub shows the refused second version",
        Duration::from_secs(60),
        || entry(&fleet(&hub.url), "pump-model.onnx")["state"] == "refused",
    );
    let kept = entry(&fleet(&hub.url), "pump-model.onnx");
    assert_eq!(
        kept["installed_sha256"],
        sha256_hex(&model_bytes).as_str(),
        "{kept}"
    );
    assert_eq!(kept["installed_at"], installed_at, "{kept}");
    // A node answers for itself the same way.
    assert_eq!(
        entry(&fleet(&edge.url), "pump-model.onnx")["state"],
        "refused"
    );
    // Nothing recorded yet: an empty fleet, not an error.
    let empty = Process::start(&dir.path().join("empty"), &[]);
    assert_eq!(fleet(&empty.url)["nodes"], 0);
}

/// Publishes the fixture model `fixture_name` as `name`, encrypted as `encryption` says
/// (`["--recipient", KEY]` or `["--recipients-file", FILE]`); returns its bytes.
fn publish_encrypted(
    (repo, keys, work): (&Path, &Path, &Path),
    name: &str,
    fixture_name: &str,
    encryption: [&str; 2],
) -> Vec<u8> {
    let bytes = fixture(fixture_name);
    let file = work.join(format!("{name}.onnx"));
    std::fs::write(&file, &bytes).expect("model");
    release(
        "add",
        repo,
        keys,
        &["--name", name, encryption[0], encryption[1], path(&file)],
    );
    bytes
}

/// An offline `fabrik` command with the TPM at `tcti`: whether it succeeded, its stdout, and
/// its stderr.
fn fabrik_on_tpm(tcti: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fabrik_bin())
        .args(args)
        .env("TPM2TOOLS_TCTI", tcti)
        .output()
        .expect("fabrik");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node's identity file sealed to its TPM: no key in the file, opened only by that TPM (a
/// copy on another device's TPM is refused), the node decrypts its targets with it, and a
/// rotation keeps it sealed.
#[test]
fn a_node_key_sealed_to_its_tpm_opens_only_there_and_still_decrypts() {
    let (dir, repo, keys, work) = new_repository();
    let tpm_state = |name: &str| {
        let state = dir.path().join(name);
        std::fs::create_dir_all(&state).expect("tpm state");
        state
    };
    let tpm = crate::attestation::Tpm::start(&tpm_state("tpm"));
    let other_tpm = crate::attestation::Tpm::start(&tpm_state("other-tpm"));
    let edge_data = dir.path().join("edge");
    let identity_file = edge_data.join("updates/identity.key");
    let identity = path(&identity_file);
    let recipient = fabrik(&["updates", "recipient", "--identity", identity, "--create"])
        .trim()
        .to_owned();

    let (ok, out, err) = fabrik_on_tpm(&tpm.tcti, &["updates", "seal-key", "--identity", identity]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), recipient, "{err}");
    let text = std::fs::read_to_string(&identity_file).expect("identity");
    assert!(
        text.contains("fabrik-sealed-identity-v1") && !text.contains("AGE-SECRET-KEY"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&identity_file)
            .expect("identity")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "still private: {mode:o}");
    }
    let (ok, _, err) = fabrik_on_tpm(&tpm.tcti, &["updates", "seal-key", "--identity", identity]);
    assert!(!ok && err.contains("already sealed"), "{err}");
    // The same file on another device's TPM: refused, saying why.
    let (ok, _, err) = fabrik_on_tpm(
        &other_tpm.tcti,
        &["updates", "recipient", "--identity", identity],
    );
    assert!(
        !ok && err.contains("opens only on the TPM that sealed it"),
        "{err}"
    );
    let (ok, out, err) =
        fabrik_on_tpm(&tpm.tcti, &["updates", "recipient", "--identity", identity]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), recipient);
    // A sealed file changed on disk does not open.
    let tampered = work.join("tampered.key");
    let mut envelope: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ciphertext = envelope["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned();
    let flipped = if ciphertext.starts_with('A') {
        "B"
    } else {
        "A"
    };
    envelope["ciphertext"] = format!("{flipped}{}", &ciphertext[1..]).into();
    std::fs::write(&tampered, envelope.to_string()).expect("tampered");
    let (ok, _, err) = fabrik_on_tpm(
        &tpm.tcti,
        &["updates", "recipient", "--identity", path(&tampered)],
    );
    assert!(!ok && err.contains("the file was changed"), "{err}");

    // The node, on its TPM, decrypts a model published to its key.
    let model_bytes = publish_encrypted(
        (&repo, &keys, &work),
        "secret-model",
        "iforest_100.onnx",
        ["--recipient", &recipient],
    );
    let config = follower_config(dir.path(), &repo);
    let tcti = [("TPM2TOOLS_TCTI", tpm.tcti.as_str())];
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &tcti);
    eventually_for(
        "the edge installs the model encrypted to its sealed key",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "secret-model.onnx")["state"] == "installed",
    );
    let status = updates(&edge.url);
    assert_eq!(status["recipient"], recipient.as_str(), "{status}");
    assert_eq!(status["key_sealed"], true, "{status}");
    // The key it reports for the hub says it is sealed.
    let (_, reported) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/fleet/recipients",
        None,
    );
    assert_eq!(
        reported["recipients"][0]["recipient"],
        recipient.as_str(),
        "{reported}"
    );
    assert_eq!(reported["recipients"][0]["sealed"], true, "{reported}");
    assert_eq!(
        model_sha(&edge.url, "secret-model").as_deref(),
        Some(sha256_hex(&model_bytes).as_str())
    );

    // Rotated, the file stays sealed, with the old key after the new one.
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let (ok, out, err) = fabrik_on_tpm(
        &tpm.tcti,
        &["updates", "rotate-key", "--identity", identity],
    );
    assert!(ok, "{err}");
    let rotated = out.trim().to_owned();
    assert!(rotated.starts_with("age1") && rotated != recipient, "{out}");
    let text = std::fs::read_to_string(&identity_file).expect("identity");
    assert!(
        text.contains("fabrik-sealed-identity-v1") && !text.contains("AGE-SECRET-KEY"),
        "{text}"
    );
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &tcti);
    let status = updates(&edge.url);
    assert_eq!(status["recipient"], rotated.as_str(), "{status}");
    assert_eq!(
        status["previous_recipients"],
        serde_json::json!([recipient]),
        "{status}"
    );
    assert_eq!(status["key_sealed"], true, "{status}");
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let (ok, out, err) = fabrik_on_tpm(
        &tpm.tcti,
        &["updates", "retire-keys", "--identity", identity],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), rotated);
    assert!(
        !std::fs::read_to_string(&identity_file)
            .expect("identity")
            .contains("AGE-SECRET-KEY")
    );
}

/// A node's key sealed to its TPM and to PCR 7 (the Secure Boot state): it opens on the boot it
/// was sealed on and after a reboot that measures the same, not after one that measures
/// otherwise (the error names PCR 7). A node on that boot still installs unencrypted targets
/// and opens its keys once the boot is the right one again. Sealed again without PCRs
/// (`--reseal`) on the right boot, it opens on any; the node and the hub say which PCRs bind
/// it.
#[test]
fn a_node_key_bound_to_pcrs_opens_only_on_the_boot_it_was_sealed_on() {
    let (dir, repo, keys, work) = new_repository();
    let tpm_state = dir.path().join("tpm");
    std::fs::create_dir_all(&tpm_state).expect("tpm state");
    let tpm = crate::attestation::Tpm::start(&tpm_state);
    let boot = |secure_boot: &str| {
        tpm.reboot();
        tpm.extend(7, secure_boot);
    };
    boot("secure boot: on");
    let edge_data = dir.path().join("edge");
    let identity_file = edge_data.join("updates/identity.key");
    let identity = path(&identity_file);
    let recipient = fabrik(&["updates", "recipient", "--identity", identity, "--create"])
        .trim()
        .to_owned();
    let opens = || fabrik_on_tpm(&tpm.tcti, &["updates", "recipient", "--identity", identity]);

    let (ok, _, err) = fabrik_on_tpm(
        &tpm.tcti,
        &[
            "updates",
            "seal-key",
            "--identity",
            identity,
            "--pcrs",
            "24",
        ],
    );
    assert!(!ok && err.contains("24 is not a PCR"), "{err}");
    let (ok, out, err) = fabrik_on_tpm(
        &tpm.tcti,
        &["updates", "seal-key", "--identity", identity, "--pcrs", "7"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), recipient, "{err}");
    assert!(err.contains("PCRs sha256:7"), "{err}");
    let envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&identity_file).expect("identity"))
            .expect("json");
    assert_eq!(
        envelope["format"], "fabrik-sealed-identity-v2",
        "{envelope}"
    );
    let sealed_to = envelope["pcr_policy"]["values"]["7"]
        .as_str()
        .expect("PCR 7");
    assert!(
        sealed_to.len() == 64 && sealed_to != "0".repeat(64),
        "{envelope}"
    );
    let (ok, out, err) = opens();
    assert!(ok && out.trim() == recipient, "{err}");

    // The same measurements after a reboot: it opens.
    boot("secure boot: on");
    let (ok, out, err) = opens();
    assert!(ok && out.trim() == recipient, "{err}");
    // Another boot: refused, naming the PCR that changed and what to do; nor can it be
    // sealed again from there.
    boot("secure boot: off");
    let (ok, _, err) = opens();
    assert!(
        !ok && err.contains(&format!("PCR 7 was {}", &sealed_to[..16]))
            && err.contains("did not boot as it had"),
        "{err}"
    );
    let (ok, _, err) = fabrik_on_tpm(
        &tpm.tcti,
        &["updates", "seal-key", "--identity", identity, "--reseal"],
    );
    assert!(!ok && err.contains("PCR 7 was"), "{err}");
    // A node restarting on that boot again and again: a policy refused is not a failed
    // password, so the refusals do not count towards the TPM's dictionary-attack lockout
    // (swtpm locks out after three), which would refuse the key on the right boot too.
    for _ in 0..3 {
        let (ok, _, err) = opens();
        assert!(!ok && err.contains("PCR 7 was"), "{err}");
    }
    // A node on that boot follows its repository without its keys: a model published in
    // the clear installs, one encrypted to it waits, saying why.
    let secret_model = publish_encrypted(
        (&repo, &keys, &work),
        "secret-model",
        "iforest_100.onnx",
        ["--recipient", &recipient],
    );
    let plain_file = work.join("plain-model.onnx");
    std::fs::write(&plain_file, fixture("iforest_100.onnx")).expect("model");
    release(
        "add",
        &repo,
        &keys,
        &["--name", "plain-model", path(&plain_file)],
    );
    let config = follower_config(dir.path(), &repo);
    let tcti = [("TPM2TOOLS_TCTI", tpm.tcti.as_str())];
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &tcti);
    eventually_for(
        "the edge installs the model in the clear",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "plain-model.onnx")["state"] == "installed",
    );
    let status = updates(&edge.url);
    assert!(
        status["key_error"]
            .as_str()
            .is_some_and(|why| why.contains("PCR 7 was") && why.contains("--reseal")),
        "{status}"
    );
    assert_eq!(status["recipient"], "", "{status}");
    assert_eq!(status["key_sealed_pcrs"], "sha256:7", "{status}");
    // Encrypted for every node: whether it is this node's is known once its keys open, and
    // nothing is told the hub meanwhile.
    let waiting = target(&status, "secret-model.onnx");
    assert_eq!(waiting["state"], "waiting_for_keys", "{status}");
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|why| why.contains("keys cannot be opened")),
        "{waiting}"
    );
    let recorded = crate::support::count_if_any(
        &edge.url,
        "SELECT count(*) AS n FROM _releases WHERE target = 'secret-model.onnx'",
    );
    assert!(matches!(recorded, None | Some(0)), "{recorded:?}");
    // Rebooted as it was sealed, the running node opens its keys and installs the model.
    boot("secure boot: on");
    eventually_for(
        "the edge opens its keys on the right boot and installs the encrypted model",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "secret-model.onnx")["state"] == "installed",
    );
    let status = updates(&edge.url);
    assert!(status["key_error"].is_null(), "{status}");
    assert_eq!(status["recipient"], recipient.as_str(), "{status}");
    assert_eq!(
        model_sha(&edge.url, "secret-model").as_deref(),
        Some(sha256_hex(&secret_model).as_str())
    );
    let (exit, _) = edge.terminate();
    assert!(exit.success());

    // On the boot it was sealed on, sealed again without PCRs: any boot opens it.
    let (ok, _, err) = fabrik_on_tpm(&tpm.tcti, &["updates", "seal-key", "--identity", identity]);
    assert!(!ok && err.contains("--reseal"), "{err}");
    let (ok, out, err) = fabrik_on_tpm(
        &tpm.tcti,
        &["updates", "seal-key", "--identity", identity, "--reseal"],
    );
    assert!(ok && out.trim() == recipient, "{err}");
    let text = std::fs::read_to_string(&identity_file).expect("identity");
    assert!(
        text.contains("fabrik-sealed-identity-v1") && !text.contains("pcr_policy"),
        "{text}"
    );
    boot("secure boot: off");
    let (ok, out, err) = opens();
    assert!(ok && out.trim() == recipient, "{err}");

    // Bound to PCRs 0 and 7 of this boot: the node says so, and so does its key report.
    let (ok, _, err) = fabrik_on_tpm(
        &tpm.tcti,
        &[
            "updates",
            "seal-key",
            "--identity",
            identity,
            "--reseal",
            "--pcrs",
            "7,0",
        ],
    );
    assert!(ok, "{err}");
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &tcti);
    let status = updates(&edge.url);
    assert_eq!(status["recipient"], recipient.as_str(), "{status}");
    assert_eq!(status["key_sealed_pcrs"], "sha256:0,7", "{status}");
    // Its key report follows its start: the row of the run before said `sha256:7`.
    eventually_for(
        "the node reports its key bound to PCRs 0 and 7",
        Duration::from_secs(30),
        || {
            let (_, reported) = http(
                &edge.url,
                reqwest::Method::GET,
                "/api/v1/fleet/recipients",
                None,
            );
            reported["recipients"][0]["sealed_pcrs"] == "sha256:0,7"
        },
    );
    let (exit, _) = edge.terminate();
    assert!(exit.success());
}

/// `fabrik release recipients ARGS` asked of `url`: its stdout (an age recipients file), or
/// its stderr when it failed.
fn fleet_recipients(url: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(fabrik_bin())
        .args(["release", "recipients"])
        .args(args)
        .args(["--url", url, "--token", crate::support::TOKEN])
        .output()
        .expect("fabrik release recipients");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A node reports its key for encrypted targets through its uplink; the publisher takes the
/// fleet's keys from the hub, and after the node rotates its key and restarts, the hub has
/// the new one. Rows naming a key that did not come from the node's own updates module are
/// not taken.
#[test]
fn a_publisher_encrypts_to_the_keys_the_nodes_reported_to_their_hub() {
    let (dir, repo, keys, work) = new_repository();
    let (_nats, nats_url, hub) = nats_and_hub(dir.path());
    // Nothing reported yet: an empty list, and the CLI says so rather than print an empty
    // recipients file.
    let (code, answer) = http(
        &hub.url,
        reqwest::Method::GET,
        "/api/v1/fleet/recipients",
        None,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["recipients"], serde_json::json!([]), "{answer}");
    let none = fleet_recipients(&hub.url, &[]).expect_err("no keys yet");
    assert!(none.contains("no node reported a key"), "{none}");

    let config = uplinked_follower_config(dir.path(), &repo, &nats_url);
    let edge_data = dir.path().join("edge");
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    let first_key = updates(&edge.url)["recipient"]
        .as_str()
        .expect("recipient")
        .to_owned();
    // Forged keys: one written through the edge's API (it reaches the hub as the edge's
    // `http` rows) and one through the hub's own, each naming a node.
    let forged = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    for (url, node) in [(&edge.url, "line-2"), (&hub.url, "line-1")] {
        let status = crate::support::post_status(
            url,
            "/api/v1/write",
            &format!("_node_keys,node={node} recipient=\"{forged}\",previous_recipients=\"[]\""),
        );
        assert!((200..300).contains(&status), "{url}: {status}");
    }
    // Only line-1's own word counts: the forged rows arrive too (the edge's through its
    // uplink) but name no key.
    eventually_for(
        "the hub holds the three rows and lists line-1's key",
        Duration::from_secs(60),
        || {
            crate::support::count_if_any(&hub.url, "SELECT count(*) AS n FROM _node_keys")
                == Some(3)
                && fleet_recipients(&hub.url, &["--nodes", "line-*"])
                    .is_ok_and(|file| file.contains(&first_key))
        },
    );
    let (_, answer) = http(
        &hub.url,
        reqwest::Method::GET,
        "/api/v1/fleet/recipients",
        None,
    );
    let listed = answer["recipients"].as_array().expect("recipients");
    assert_eq!(listed.len(), 1, "{answer}");
    assert_eq!(listed[0]["node"], "line-1");
    assert_eq!(listed[0]["recipient"], first_key.as_str());
    assert_eq!(listed[0]["previous_recipients"], serde_json::json!([]));
    assert_eq!(listed[0]["sealed"], false, "{answer}");
    let unmatched = fleet_recipients(&hub.url, &["--nodes", "press-*"]).expect_err("no match");
    assert!(
        unmatched.contains("no node matching press-*"),
        "{unmatched}"
    );

    // The publisher encrypts to what the hub lists: the edge decrypts and installs it.
    let file = work.join("fleet.recipients");
    std::fs::write(&file, fleet_recipients(&hub.url, &[]).expect("file")).expect("write");
    publish_encrypted(
        (&repo, &keys, &work),
        "secret-model",
        "iforest_100.onnx",
        ["--recipients-file", path(&file)],
    );
    eventually_for(
        "line-1 installs the model encrypted to the key it reported",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "secret-model.onnx")["state"] == "installed",
    );

    // The key is rotated: from its restart the node reports the new one, and the old one as
    // still read; a model published to what the hub lists then is for the new key.
    let (exit, _) = edge.terminate();
    assert!(exit.success());
    let identity_file = edge_data.join("updates/identity.key");
    let said = fabrik(&["updates", "rotate-key", "--identity", path(&identity_file)]);
    let rotated = said.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        rotated.starts_with("age1") && rotated != first_key,
        "{said}"
    );
    let edge = Process::start_with_args(&edge_data, &["--config", path(&config)], &[]);
    eventually_for(
        "the hub lists line-1's new key",
        Duration::from_secs(60),
        || fleet_recipients(&hub.url, &[]).is_ok_and(|file| file.contains(&rotated)),
    );
    let file_text = fleet_recipients(&hub.url, &[]).expect("file");
    assert!(
        !file_text.contains(&first_key) && file_text.contains("still reads 1 previous key(s)"),
        "{file_text}"
    );
    let (_, answer) = http(
        &hub.url,
        reqwest::Method::GET,
        "/api/v1/fleet/recipients",
        None,
    );
    assert_eq!(
        answer["recipients"][0]["previous_recipients"],
        serde_json::json!([first_key]),
        "{answer}"
    );
    std::fs::write(&file, &file_text).expect("write");
    let renewed_bytes = publish_encrypted(
        (&repo, &keys, &work),
        "renewed-model",
        "rf_clf_50_nozipmap.onnx",
        ["--recipients-file", path(&file)],
    );
    eventually_for(
        "line-1 installs the model encrypted to its new key",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "renewed-model.onnx")["state"] == "installed",
    );
    assert_eq!(
        model_sha(&edge.url, "renewed-model").as_deref(),
        Some(sha256_hex(&renewed_bytes).as_str())
    );
}

/// The follower configuration of [`follower_config`], with an uplink to `nats_url` as node
/// `line-1`.
/// A phased rollout: published to 50 % of the nodes, line-1 (place 91.75 % for this model:
/// the first eight bytes of SHA-256 of `canary-model\0line-1`, modulo 10,000, over 100) waits
/// and says why; published again to 95 %, it installs.
#[test]
fn a_phased_rollout_reaches_a_node_once_its_share_covers_it() {
    let (dir, repo, keys, work) = new_repository();
    let model_bytes = fixture("iforest_100.onnx");
    let model = work.join("forest.onnx");
    std::fs::write(&model, &model_bytes).expect("model");
    for share in ["0", "100.5", "most"] {
        let refused = release_fails(
            "add",
            &repo,
            &keys,
            &["--name", "canary-model", "--share", share, path(&model)],
        );
        assert!(
            refused.contains("--share") || refused.contains("share"),
            "{refused}"
        );
    }
    let published = release(
        "add",
        &repo,
        &keys,
        &["--name", "canary-model", "--share", "50", path(&model)],
    );
    assert!(published.contains("phased to 50 % of them"), "{published}");
    let listed = fabrik(&["release", "list", "--repo", path(&repo)]);
    assert!(listed.contains("phased to 50 %"), "{listed}");
    let config = follower_config(dir.path(), &repo);
    let edge =
        Process::start_with_args(&dir.path().join("edge"), &["--config", path(&config)], &[]);
    eventually_for(
        "line-1 waits outside the first half",
        Duration::from_secs(30),
        || target(&updates(&edge.url), "canary-model.onnx")["state"] == "not_for_this_node",
    );
    let status = updates(&edge.url);
    let waiting = target(&status, "canary-model.onnx");
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("phased rollout to 50 %") && r.contains("91.75 %")),
        "{waiting}"
    );
    assert_eq!(model_sha(&edge.url, "canary-model"), None);

    release(
        "add",
        &repo,
        &keys,
        &["--name", "canary-model", "--share", "95", path(&model)],
    );
    let forest_sha = sha256_hex(&model_bytes);
    eventually_for(
        "line-1 installs once the share covers it",
        Duration::from_secs(30),
        || model_sha(&edge.url, "canary-model").as_deref() == Some(forest_sha.as_str()),
    );
    assert_eq!(
        target(&updates(&edge.url), "canary-model.onnx")["state"],
        "installed"
    );
}

/// A nats-server with JetStream in `dir`, its URL, and a hub consuming from it.
fn nats_and_hub(dir: &Path) -> (crate::support::Peer, String, Process) {
    let port = crate::support::free_port();
    let nats = crate::uplink::nats_server(&dir.join("nats"), port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    let hub = Process::start(&dir.join("hub"), &[("FABRIK__HUB__URL", nats_url.as_str())]);
    (nats, nats_url, hub)
}

fn uplinked_follower_config(dir: &Path, repo: &Path, nats_url: &str) -> std::path::PathBuf {
    let config = follower_config(dir, repo);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[store]\nflush_interval = \"1s\"\n\n[uplink]\nurl = \"{nats_url}\"\nnode = \"line-1\"\n"
    ));
    std::fs::write(&config, text).expect("config");
    config
}

#[test]
fn a_gate_judged_at_the_hub_on_the_fleets_data_is_released_to_the_edges() {
    let (dir, repo, keys, work) = new_repository();
    let (_nats, nats_url, hub) = nats_and_hub(dir.path());
    let config = uplinked_follower_config(dir.path(), &repo, &nats_url);
    let edge =
        Process::start_with_args(&dir.path().join("edge"), &["--config", path(&config)], &[]);

    // The use case is defined at the hub, where the fleet's data arrives: pump-a (on line-1)
    // in pilot, pump-b added at scale-up. Its gate asks for a cool pilot, on 20 rows at least.
    let definition = serde_json::json!({
        "objective": "Halve unplanned pump downtime",
        "pilot": {"devices": ["pump-a"]},
        "scale_up": {"devices": ["pump-b"]},
        "kpis": [{"name": "temperature", "kind": "aggregate", "table": "pump",
                  "signal": "temperature", "aggregate": "mean"}],
        "gates": {"scale_up": [{"kpi": "temperature", "at_most": 70.0, "evidence_at_least": 20.0}]}
    });
    let (code, defined) = http(
        &hub.url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pump-reliability",
        Some(definition),
    );
    assert_eq!(code, 201, "{defined}");
    let since =
        chrono::DateTime::parse_from_rfc3339(defined["stage_since"].as_str().expect("since"))
            .expect("RFC 3339")
            .timestamp_nanos_opt()
            .expect("ns");
    let gate = |url: &str| {
        let (code, gate) = http(
            url,
            reqwest::Method::GET,
            "/api/v1/usecases/pump-reliability/gate",
            None,
        );
        assert_eq!(code, 200, "{gate}");
        gate
    };
    assert_eq!(gate(&hub.url)["passed"], false, "no evidence yet");

    // The pilot runs on line-1: its rows reach the hub through the uplink. pump-b, outside the
    // pilot, runs hot there too, which the pilot's KPI must not count.
    std::thread::sleep(Duration::from_millis(1200));
    let mut rows = String::new();
    for i in 0..30 {
        let time = since + i * 30_000_000;
        rows.push_str(&format!("pump,device=pump-a temperature=60.0 {time}\n"));
        rows.push_str(&format!("pump,device=pump-b temperature=95.0 {time}\n"));
    }
    assert_eq!(
        crate::support::post_status(&edge.url, "/api/v1/write", &rows),
        200
    );
    eventually_for(
        "the hub's gate passes on line-1's rows",
        Duration::from_secs(60),
        || gate(&hub.url)["passed"] == true,
    );

    // Promoted at the hub on that evidence, and released to the fleet as the hub shows it.
    let (code, decided) = http(
        &hub.url,
        reqwest::Method::POST,
        "/api/v1/usecases/pump-reliability/stage",
        Some(
            serde_json::json!({"from": "pilot", "to": "scale_up", "reason": "gate passed on line-1's pilot"}),
        ),
    );
    assert_eq!(code, 200, "{decided}");
    assert_eq!(decided["gate"]["passed"], true, "{decided}");
    let (ok, shown) = client_command(&hub.url, &["usecase", "show", "pump-reliability"]);
    assert!(ok, "{shown}");
    let shown_file = work.join("pump-reliability.json");
    std::fs::write(&shown_file, shown).expect("shown");
    release(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "use-case",
            "--reason",
            "promoted at the hub: gate passed on line-1's pilot data",
            path(&shown_file),
        ],
    );
    eventually_for(
        "the edge runs the use case at scale-up",
        Duration::from_secs(30),
        || use_case(&edge.url, "pump-reliability")["stage"] == "scale_up",
    );
    assert_eq!(
        use_case(&edge.url, "pump-reliability")["devices"],
        serde_json::json!(["pump-a", "pump-b"])
    );
}

/// SHA-256 of a file, read in pieces (the binary is large).
fn file_sha256(file: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut reader = std::fs::File::open(file).expect("open");
    std::io::copy(&mut reader, &mut hasher).expect("read");
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The URL of the next `Fabrik is listening on` line the process prints (after a restart).
fn listening_again(edge: &Process) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(line) = edge.log.recv_timeout(Duration::from_millis(200)) {
            if let Some(url) = line.strip_prefix("Fabrik is listening on ") {
                return url.trim().to_owned();
            }
            seen.push(line);
        }
    }
    panic!(
        "the node did not listen again; it said:\n{}",
        seen.join("\n")
    );
}

/// The node's own copy of Fabrik in `<dir>/bin`, which a release replaces; its SHA-256.
fn node_binary(dir: &Path) -> (std::path::PathBuf, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let node_binary = bin.join("fabrik");
    if std::fs::hard_link(fabrik_bin(), &node_binary).is_err() {
        std::fs::copy(fabrik_bin(), &node_binary).expect("copy the binary");
    }
    let sha256 = file_sha256(&node_binary);
    (node_binary, sha256)
}

/// A new build of Fabrik in `work`: the same program with `label` after its end, which an
/// ELF loader ignores, so another file. Returns its path and SHA-256.
fn another_build(work: &Path, label: &str) -> (std::path::PathBuf, String) {
    let mut bytes = std::fs::read(fabrik_bin()).expect("binary");
    bytes.extend_from_slice(format!("\nFabrik test build {label}\n").as_bytes());
    let build = work.join(format!("fabrik-{label}"));
    std::fs::write(&build, &bytes).expect("new build");
    (build, sha256_hex(&bytes))
}

/// Publishes `file` as this platform's binary target `fabrik-line.bin`.
fn publish_binary(repo: &Path, keys: &Path, file: &Path) -> String {
    let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    release(
        "add",
        repo,
        keys,
        &[
            "--kind",
            "binary",
            "--name",
            "fabrik-line",
            "--platform",
            &platform,
            path(file),
        ],
    )
}

/// A rollback of `build` made while the node was down (at a start, or by `fabrik updates
/// rollback`) is in the audit log, and is the fleet view's latest word on the target, with
/// `why` in its reason.
fn assert_rollback_recorded(url: &str, build: &str, why: &str) {
    let (code, audit) = http(url, reqwest::Method::GET, "/api/v1/audit?limit=50", None);
    assert_eq!(code, 200, "{audit}");
    let audit = audit.to_string();
    assert!(
        audit.contains("roll back binary") && audit.contains(build) && audit.contains(why),
        "the rollback is audited: {audit}"
    );
    let rows = crate::support::count_if_any(
        url,
        &format!(
            "SELECT count(*) AS n FROM _releases WHERE name = 'fabrik-line' AND state = 'refused' \
             AND sha256 = '{build}' AND reason LIKE '%rolled back%' AND strpos(reason, '{why}') > 0"
        ),
    );
    assert_eq!(rows, Some(1), "the rollback is a _releases row");
}

/// `fabrik run` of the node's own binary on `data`.
fn start_node(node_binary: &Path, config: &Path, data: &Path) -> Process {
    let mut command = Command::new(node_binary);
    command.env("FABRIK__STORE__DATA_DIR", data);
    Process::start_full(command, &["--config", path(config)], data, &[])
}

#[test]
fn an_edge_replaces_its_own_binary_with_the_published_build_and_an_operator_can_roll_it_back() {
    let (dir, repo, keys, work) = new_repository();
    let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);

    let (node_binary, first_build) = node_binary(dir.path());
    let bin = dir.path().join("bin");
    let previous = bin.join("fabrik.previous");

    // The publisher: a "build" that cannot start here, and a new build of Fabrik (the same
    // program with bytes after its end, which an ELF loader ignores: another file).
    let broken = work.join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'cannot start: libfoo.so.3 is missing' >&2\nexit 3\n",
    )
    .expect("broken");
    let (new_build, second_build) = another_build(&work, "2");

    // The publisher names a script's platform, and cannot misname an executable's.
    let unnamed = release_fails("add", &repo, &keys, &["--kind", "binary", path(&broken)]);
    assert!(unnamed.contains("--platform"), "{unnamed}");
    let misnamed = release_fails(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "binary",
            "--platform",
            "linux-riscv64",
            path(&new_build),
        ],
    );
    assert!(
        misnamed.contains(&format!("executable for {platform}")),
        "{misnamed}"
    );
    let published = publish_binary(&repo, &keys, &broken);
    assert!(
        published.contains("published binary fabrik-line"),
        "{published}"
    );
    // A build for another platform, which this node leaves alone.
    release(
        "add",
        &repo,
        &keys,
        &[
            "--kind",
            "binary",
            "--name",
            "fabrik-riscv",
            "--platform",
            "linux-riscv64",
            path(&broken),
        ],
    );

    let config = follower_config(dir.path(), &repo);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("binary = true\n");
    std::fs::write(&config, text).expect("config");
    let edge_data = dir.path().join("edge");
    let edge = start_node(&node_binary, &config, &edge_data);
    let pid = edge.child.id();

    // The script fails its trial: refused, named, and the running binary stays.
    eventually_for("the broken build refused", Duration::from_secs(60), || {
        target(&updates(&edge.url), "fabrik-line.bin")["state"] == "refused"
    });
    let status = updates(&edge.url);
    let refused = target(&status, "fabrik-line.bin");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("trial") && reason.contains("libfoo.so.3 is missing"),
        "{refused}"
    );
    assert_eq!(status["platform"], platform.as_str(), "{status}");
    assert_eq!(status["binary_sha256"], first_build.as_str(), "{status}");
    let elsewhere = target(&status, "fabrik-riscv.bin");
    assert_eq!(elsewhere["state"], "not_for_this_node", "{elsewhere}");
    assert!(
        elsewhere["reason"]
            .as_str()
            .is_some_and(|r| r.contains("linux-riscv64")),
        "{elsewhere}"
    );
    assert_eq!(file_sha256(&node_binary), first_build);
    assert!(!previous.exists(), "nothing was swapped");
    // (The refusal is retried every few hundred ms here, each retry staging the file for a
    // moment: between them only the binary is there.)
    eventually_for(
        "the refused file is not left behind",
        Duration::from_secs(20),
        || std::fs::read_dir(&bin).expect("bin").flatten().count() == 1,
    );

    // The real build replaces the running binary, and the node restarts into it: the same
    // process (exec), serving again, reporting the new build.
    publish_binary(&repo, &keys, &new_build);
    let url = listening_again(&edge);
    assert_eq!(file_sha256(&node_binary), second_build);
    assert_eq!(file_sha256(&previous), first_build, "the old build is kept");
    eventually_for("the new build runs", Duration::from_secs(120), || {
        let status = updates(&url);
        target(&status, "fabrik-line.bin")["state"] == "installed"
            && status["binary_sha256"] == second_build.as_str()
    });
    // Without the exec, the process would still run the replaced file, shown as
    // `<path> (deleted)`: the same process now runs the file in place.
    let running = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(running, node_binary, "the process runs the file in place");
    let (code, audit) = http(&url, reqwest::Method::GET, "/api/v1/audit?limit=50", None);
    assert_eq!(code, 200, "{audit}");
    assert!(
        audit.to_string().contains(&format!(
            "fabrik-line (fabrik-line.bin, sha256 {second_build})"
        )),
        "the install is audited: {audit}"
    );
    let (status, _) = edge.terminate();
    assert!(status.success(), "{status:?}");

    // The operator rolls back: the first build is in place again, and the node does not
    // install the second again.
    let rolled = Command::new(&node_binary)
        .args(["updates", "rollback", "--config", path(&config)])
        .env("FABRIK__STORE__DATA_DIR", &edge_data)
        .output()
        .expect("rollback");
    let said = String::from_utf8_lossy(&rolled.stdout).into_owned()
        + &String::from_utf8_lossy(&rolled.stderr);
    assert!(rolled.status.success(), "{said}");
    assert!(said.starts_with(&first_build), "{said}");
    assert_eq!(file_sha256(&node_binary), first_build);
    assert!(!previous.exists());
    let again = Command::new(&node_binary)
        .args(["updates", "rollback", "--config", path(&config)])
        .env("FABRIK__STORE__DATA_DIR", &edge_data)
        .output()
        .expect("rollback");
    assert!(!again.status.success(), "nothing left to roll back to");

    let edge = start_node(&node_binary, &config, &edge_data);
    eventually_for(
        "the rolled-back build refused",
        Duration::from_secs(60),
        || target(&updates(&edge.url), "fabrik-line.bin")["state"] == "refused",
    );
    let status = updates(&edge.url);
    let refused = target(&status, "fabrik-line.bin");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rolled back")),
        "{refused}"
    );
    assert_eq!(status["binary_sha256"], first_build.as_str());
    assert_eq!(file_sha256(&node_binary), first_build);
    assert_rollback_recorded(&edge.url, &second_build, "`fabrik updates rollback`");
    drop(edge);

    // Without `[updates] binary` a node only reports the build it does not run.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("binary = true\n", "")).expect("config");
    std::fs::remove_file(edge_data.join("updates/binary.json")).expect("state");
    let edge = start_node(&node_binary, &config, &edge_data);
    eventually_for("the build reported", Duration::from_secs(60), || {
        target(&updates(&edge.url), "fabrik-line.bin")["state"] == "available"
    });
    let status = updates(&edge.url);
    assert_eq!(status["binary_updates"], false, "{status}");
    assert!(
        target(&status, "fabrik-line.bin")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("[updates] binary = true")),
        "{status}"
    );
    assert_eq!(file_sha256(&node_binary), first_build);
    assert!(!previous.exists());
}

#[test]
fn a_new_binary_that_keeps_failing_before_it_confirms_itself_is_rolled_back_by_the_node() {
    let (dir, repo, keys, work) = new_repository();
    let (node_binary, first_build) = node_binary(dir.path());
    let previous = dir.path().join("bin/fabrik.previous");
    let config = follower_config(dir.path(), &repo);
    let followed = std::fs::read_to_string(&config).expect("config");
    let set = |confirm_after: &str| {
        std::fs::write(
            &config,
            format!(
                "{followed}binary = true\nconfirm_after = \"{confirm_after}\"\n\
                 rollback_after_failed_runs = 2\n"
            ),
        )
        .expect("config")
    };
    set("1h");
    let edge_data = dir.path().join("edge");
    let edge = start_node(&node_binary, &config, &edge_data);

    // The new build installs and runs; it has not confirmed itself.
    let (second, second_build) = another_build(&work, "2");
    publish_binary(&repo, &keys, &second);
    let url = listening_again(&edge);
    unconfirmed_build(&url, &second_build, 0);
    assert_eq!(file_sha256(&node_binary), second_build);
    let (ok, out) = client_command(&url, &["updates", "status"]);
    assert!(
        ok && out.contains(
            "not confirmed yet (decision 0066): run 1, 0 earlier run(s) failed; back to the \
             previous build at 2 failed runs"
        ),
        "{out}"
    );

    // It is killed (an OOM kill, a crash): the service manager starts it again, and the run
    // counts as failed. The second failed run sends the node back to the first build.
    edge.kill9();
    let edge = start_node(&node_binary, &config, &edge_data);
    unconfirmed_build(&edge.url, &second_build, 1);
    edge.kill9();
    let edge = start_node(&node_binary, &config, &edge_data);
    let said = edge.drain_log().join("\n");
    assert!(said.contains("The new binary was rolled back"), "{said}");
    assert_eq!(
        file_sha256(&node_binary),
        first_build,
        "the first build is back"
    );
    assert!(!previous.exists());
    let pid_after = edge.child.id();
    let running = std::fs::read_link(format!("/proc/{pid_after}/exe")).expect("exe");
    assert_eq!(running, node_binary, "restarted into the file in place");
    eventually_for(
        "the rolled-back build refused",
        Duration::from_secs(60),
        || {
            let status = updates(&edge.url);
            target(&status, "fabrik-line.bin")["state"] == "refused"
                && status["binary_sha256"] == first_build.as_str()
        },
    );
    let status = updates(&edge.url);
    assert!(status["binary_unconfirmed"].is_null(), "{status}");
    let reason = target(&status, "fabrik-line.bin")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("2 of its 2 runs ended in a crash, a kill or an error"),
        "{reason}"
    );
    assert_rollback_recorded(&edge.url, &second_build, "before it confirmed itself");
    let (status, _) = edge.terminate();
    assert!(status.success(), "{status:?}");

    // While a new build has not confirmed itself, a newer one waits: installed over it, a
    // build that failed would go back to one that never proved itself either.
    let (third, third_build) = another_build(&work, "3");
    publish_binary(&repo, &keys, &third);
    let edge = start_node(&node_binary, &config, &edge_data);
    let url = listening_again(&edge);
    unconfirmed_build(&url, &third_build, 0);
    let (fourth, fourth_build) = another_build(&work, "4");
    publish_binary(&repo, &keys, &fourth);
    eventually_for("the fourth build waits", Duration::from_secs(60), || {
        let status = updates(&url);
        let waiting = target(&status, "fabrik-line.bin");
        waiting["sha256"] != third_build.as_str()
            && waiting["state"] == "available"
            && waiting["reason"]
                .as_str()
                .is_some_and(|r| r.contains("has not confirmed itself"))
    });
    assert_eq!(file_sha256(&node_binary), third_build);
    // A stop the operator asks for is not a failed run.
    let (status, _) = edge.terminate();
    assert!(status.success(), "{status:?}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(edge_data.join("updates/binary.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(
        state["installed"]["unconfirmed"],
        serde_json::json!({"runs": 1, "failed_runs": 0, "running": false}),
        "{state}"
    );

    // A build that runs `confirm_after` with every module up confirms itself; the waiting
    // build then installs, and confirms itself in turn. From then on their failures are the
    // service manager's to restart, not a reason to go back.
    set("1s");
    let edge = start_node(&node_binary, &config, &edge_data);
    let url = listening_again(&edge);
    eventually_for(
        "the fourth build confirmed",
        Duration::from_secs(60),
        || {
            let status = updates(&url);
            status["binary_sha256"] == fourth_build.as_str()
                && status["binary_unconfirmed"].is_null()
        },
    );
    edge.kill9();
    for _ in 0..2 {
        let edge = start_node(&node_binary, &config, &edge_data);
        eventually_for("the fourth build runs on", Duration::from_secs(60), || {
            updates(&edge.url)["binary_sha256"] == fourth_build.as_str()
        });
        edge.kill9();
    }
    assert_eq!(file_sha256(&node_binary), fourth_build);
    assert_eq!(file_sha256(&previous), third_build);
}

/// Waits until the node at `url` runs `build`, unconfirmed, with `failed_runs` failed runs.
fn unconfirmed_build(url: &str, build: &str, failed_runs: u64) {
    eventually_for("the new build's runs", Duration::from_secs(60), || {
        let status = updates(url);
        status["binary_sha256"] == build
            && status["binary_unconfirmed"]["failed_runs"].as_u64() == Some(failed_runs)
    });
}
