//! The deployment files in `deploy/`: the Kubernetes manifests' configuration passes
//! `fabrik config check` with the container's environment, and their ports, probes, mounts and
//! command agree with that configuration, the API's routes and the Containerfile. (No cluster
//! or container runtime runs here: what can be checked without one is.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The YAML documents of a manifest, read by PyYAML (in the test venv) into JSON.
fn manifest(name: &str) -> Vec<Value> {
    let python = crate::support::python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(deploy().join("kubernetes").join(name))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}` (FABRIK_PYTHON) with PyYAML: {e}"));
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `fabrik config check` of `config` with `container`'s environment (secrets stand in).
fn config_check(config: &str, container: &Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fabrik.toml");
    std::fs::write(&file, config).expect("config");
    let mut check = Command::new(crate::support::fabrik_bin());
    check.args(["config", "check"]).arg(&file);
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name");
        let stand_in = if name == "FABRIK__REGISTRY__DATABASE_URL" {
            "postgres://fabrik:a-secret-from-kubernetes@db:5432/fabrik"
        } else {
            "a-secret-from-kubernetes"
        };
        let value = var["value"].as_str().unwrap_or(stand_in);
        check.env(name, value);
    }
    let out = check.output().expect("fabrik config check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container's arguments and its mounts (volume name → path).
fn args_and_mounts(container: &Value) -> (Vec<&str>, BTreeMap<&str, &str>) {
    let args = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mounts = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| Some((m["name"].as_str()?, m["mountPath"].as_str()?)))
        .collect();
    (args, mounts)
}

#[test]
fn the_hub_manifest_runs_the_configuration_it_ships() {
    let docs = manifest("fabrik-hub.yaml");
    let config = of_kind(&docs, "ConfigMap", "fabrik-config")["data"]["fabrik.toml"]
        .as_str()
        .expect("fabrik.toml");
    let set = of_kind(&docs, "StatefulSet", "fabrik-hub");
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The container's command reads the ConfigMap where it is mounted.
    let (args, mounts) = args_and_mounts(container);
    assert_eq!(args, ["run", "--config", "/etc/fabrik/fabrik.toml"]);
    assert_eq!(mounts["config"], "/etc/fabrik");
    let config_volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "config")
        .expect("config volume");
    assert_eq!(config_volume["configMap"]["name"], "fabrik-config");

    config_check(config, container);

    // The data directory the configuration names is the volume; the ports it listens on are
    // the container's; the readiness probe asks a route the API serves without a token.
    let parsed: toml::Value = toml::from_str(config).expect("toml");
    assert_eq!(
        mounts["data"],
        parsed["store"]["data_dir"].as_str().expect("data_dir")
    );
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, p["containerPort"].as_u64()?)))
        .collect();
    for (section, port) in [("http", "http"), ("mqtt", "mqtt")] {
        let listen = parsed[section]["listen"].as_str().expect("listen");
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{section}.listen {listen}: not reachable from the Service"
        );
        assert_eq!(
            listen.rsplit(':').next().and_then(|p| p.parse().ok()),
            Some(ports[port])
        );
    }
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/ready");
    let openapi: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("../docs/api/openapi.json")).expect("openapi"),
    )
    .expect("json");
    assert!(
        openapi["paths"]["/ready"]["get"].is_object(),
        "/ready is not an API route"
    );
    assert!(
        openapi["paths"]["/ready"]["get"]["security"].is_null(),
        "/ready must answer a probe without a token"
    );

    // Unprivileged, as the image's user; the root filesystem read-only.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let image = std::fs::read_to_string(deploy().join("Containerfile")).expect("Containerfile");
    let user = pod["securityContext"]["runAsUser"].as_u64().expect("uid");
    assert!(
        image.contains(&format!("USER {user}:")),
        "the image runs as another user"
    );
    assert!(image.contains(r#"CMD ["run", "--config", "/etc/fabrik/fabrik.toml"]"#));

    // The hub's NATS is the one nats.yaml runs.
    let nats = manifest("nats.yaml");
    let service = of_kind(&nats, "Service", "fabrik-nats");
    let port = service["spec"]["ports"][0]["port"].as_u64().expect("port");
    assert_eq!(
        parsed["hub"]["url"].as_str(),
        Some(format!("nats://fabrik-nats:{port}").as_str())
    );
    let args = of_kind(&nats, "StatefulSet", "fabrik-nats")["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(args.contains("\"-js\""), "JetStream is off: {args}");
}

/// Query nodes read the prefix the hub's store would write (its commented `[store.objects]`),
/// run the API only, and keep their data directory (caches) on a volume of the pod's own.
#[test]
fn the_query_manifest_reads_the_prefix_the_hub_writes() {
    let docs = manifest("fabrik-query.yaml");
    let config = of_kind(&docs, "ConfigMap", "fabrik-query-config")["data"]["fabrik.toml"]
        .as_str()
        .expect("fabrik.toml");
    let deployment = of_kind(&docs, "Deployment", "fabrik-query");
    assert!(deployment["spec"]["replicas"].as_u64() >= Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let (args, mounts) = args_and_mounts(container);
    assert_eq!(
        args,
        [
            "run",
            "--config",
            "/etc/fabrik/fabrik.toml",
            "--target",
            "http"
        ]
    );
    assert_eq!(mounts["config"], "/etc/fabrik");
    config_check(config, container);

    let parsed: toml::Value = toml::from_str(config).expect("toml");
    let objects = &parsed["store"]["objects"];
    assert_eq!(objects["read_only"].as_bool(), Some(true));
    let hub = manifest("fabrik-hub.yaml");
    let hub_config = of_kind(&hub, "ConfigMap", "fabrik-config")["data"]["fabrik.toml"]
        .as_str()
        .expect("fabrik.toml");
    for key in ["url", "endpoint"] {
        let value = objects[key].as_str().expect(key);
        assert!(
            hub_config.contains(&format!("# {key} = \"{value}\"")),
            "the hub's [store.objects] {key} is not {value}"
        );
    }
    assert_eq!(
        mounts["data"],
        parsed["store"]["data_dir"].as_str().expect("data_dir")
    );
    let data = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("data volume");
    assert!(data["emptyDir"].is_object(), "{data}");
    let listen = parsed["http"]["listen"].as_str().expect("listen");
    assert_eq!(
        listen.strip_prefix("0.0.0.0:").and_then(|p| p.parse().ok()),
        container["ports"][0]["containerPort"].as_u64()
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let service = of_kind(&docs, "Service", "fabrik-query");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    // Dashboard sessions are held per process.
    assert_eq!(service["spec"]["sessionAffinity"], "ClientIP");
    // The hub reads the same bucket credentials.
    let hub_env = of_kind(&hub, "StatefulSet", "fabrik-hub")["spec"]["template"]["spec"]
        ["containers"][0]["env"]
        .to_string();
    for var in container["env"].as_array().expect("env") {
        if let Some(secret) = var["valueFrom"]["secretKeyRef"]["name"].as_str() {
            assert!(hub_env.contains(secret), "the hub does not read {secret}");
        }
    }
}
