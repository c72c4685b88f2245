//! Test support: an in-process server (store + router on a real socket) and a spawned
//! `fabrik run` process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use fabrik_api::{ApiState, Auth};
use fabrik_store::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

pub(crate) const TOKEN: &str = "test-token-0123456789";

/// A store and the HTTP API on 127.0.0.1:<ephemeral>, inside the test's runtime.
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) store: Arc<Store>,
    pub(crate) client: reqwest::Client,
    pub(crate) stop: CancellationToken,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub(crate) async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions::new(dir.path().join("data"));
        let mut server = Server::with_options(options, 1 << 20).await;
        server._dir = Some(dir);
        server
    }

    pub(crate) async fn with_options(options: StoreOptions, max_body_size: usize) -> Server {
        std::fs::create_dir_all(&options.data_dir).expect("data dir");
        let registry = fabrik_registry::Registry::open(&options.data_dir.join("registry.db"))
            .await
            .expect("registry opens");
        let store = Store::open(options).await.expect("store opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let services = fabrik_runtime::ServiceManager::new(&[]).services();
        let state = ApiState {
            store: store.clone(),
            services,
            auth: Auth::new(TOKEN),
            metrics: fabrik_runtime::telemetry::prometheus(),
            max_body_size,
            registry: Some(registry),
            pipelines: None,
            pipeline_control: None,
            alert_rules: None,
            alert_rule_control: None,
            compliance: Default::default(),
            links: Default::default(),
            backfill: None,
            updates: Default::default(),
            release_repo: None,
            attestation: Default::default(),
            stopping: Default::default(),
            asyncapi: "{}".into(),
            alerting: None,
            kpi_meter: None,
            https: false,
            writes: None,
            setpoints: None,
        };
        let stop = CancellationToken::new();
        tokio::spawn(fabrik_api::serve(listener, state, stop.clone(), None));
        Server {
            url,
            store,
            client: crate::support::http_client(),
            stop,
            _dir: None,
        }
    }

    pub(crate) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    pub(crate) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    pub(crate) async fn write(&self, body: &str) -> reqwest::Response {
        self.post("/api/v1/write")
            .body(body.to_owned())
            .send()
            .await
            .expect("write request")
    }

    /// Runs SQL and returns the JSON rows.
    pub(crate) async fn query(&self, sql: &str) -> Vec<serde_json::Value> {
        let r = self
            .post("/api/v1/query")
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("query request");
        let status = r.status();
        let text = r.text().await.expect("body");
        assert_eq!(status, 200, "query `{sql}` failed: {text}");
        serde_json::from_str(&text).expect("json rows")
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        let rows = self.query(sql).await;
        rows[0]
            .as_object()
            .expect("row")
            .values()
            .next()
            .and_then(|v| v.as_i64())
            .expect("a count")
    }

    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        self.store.close().await;
    }
}

/// The `fabrik` binary under test.
pub(crate) fn fabrik_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fabrik"))
}

/// A `fabrik run` child process.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) url: String,
    /// `host:port` of the MQTT endpoint, when it runs.
    pub(crate) mqtt: Option<String>,
    /// `host:port` of the MQTT/TLS endpoint, when it runs.
    pub(crate) mqtts: Option<String>,
    pub(crate) log: mpsc::Receiver<String>,
    /// What the process printed before it listened (start-up and replay logs).
    pub(crate) startup_log: Vec<String>,
}

impl Process {
    /// Starts `fabrik run` on `data_dir` with an ephemeral port, waiting until it listens.
    pub(crate) fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Process {
        Self::start_with(Command::new(fabrik_bin()), data_dir, extra_env)
    }

    /// Starts `fabrik run ARGS...`.
    pub(crate) fn start_with_args(
        data_dir: &Path,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Process {
        Self::start_full(Command::new(fabrik_bin()), args, data_dir, extra_env)
    }

    pub(crate) fn start_with(
        command: Command,
        data_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Process {
        Self::start_full(command, &[], data_dir, extra_env)
    }

    pub(crate) fn start_full(
        mut command: Command,
        args: &[&str],
        data_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Process {
        command
            .arg("run")
            .args(args)
            .env("FABRIK__STORE__DATA_DIR", data_dir)
            .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
            .env("FABRIK__MQTT__LISTEN", "127.0.0.1:0")
            .env("FABRIK__AUTH__ADMIN_TOKEN", TOKEN)
            .env("FABRIK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn fabrik");
        let (tx, log) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("Fabrik is listening on ") {
                        let url = rest.trim().to_owned();
                        // The rest of the banner follows; the admin token line ends it.
                        let mut mqtt = None;
                        let mut mqtts = None;
                        while let Ok(more) = log.recv_timeout(Duration::from_secs(10)) {
                            if let Some(addr) = more.trim().strip_prefix("MQTT:") {
                                let addr = addr.trim().trim_start_matches("mqtt://");
                                mqtt = addr.split_whitespace().next().map(str::to_owned);
                            }
                            if let Some(addr) = more.trim().strip_prefix("MQTT/TLS:") {
                                let addr = addr.trim().trim_start_matches("mqtts://");
                                mqtts = addr.split_whitespace().next().map(str::to_owned);
                            }
                            let done = more.trim_start().starts_with("Admin token");
                            seen.push(more);
                            if done {
                                break;
                            }
                        }
                        return Process {
                            child,
                            url,
                            mqtt,
                            mqtts,
                            log,
                            startup_log: seen,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("fabrik did not start; output:\n{}", seen.join("\n"));
                }
            }
        }
    }

    pub(crate) fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let status = self.child.wait().expect("wait");
        let lines: Vec<String> = self.log.try_iter().collect();
        (status, lines)
    }

    /// Lines logged so far.
    pub(crate) fn drain_log(&self) -> Vec<String> {
        self.startup_log
            .iter()
            .cloned()
            .chain(self.log.try_iter())
            .collect()
    }
}

impl Drop for Process {
    /// A failing test must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command (`fabrik <args> --url <url> --token <TOKEN>`); returns whether it
/// succeeded and its stdout followed by its stderr.
pub(crate) fn client_command(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(fabrik_bin())
        .args(args)
        .args(["--url", url, "--token", TOKEN])
        .output()
        .expect("fabrik client command");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A blocking HTTP client for process tests.
/// The `n` column of `sql`'s first row, or `None` while the query fails (a table that does
/// not exist yet: it does once rows are written to it).
pub(crate) fn count_if_any(url: &str, sql: &str) -> Option<u64> {
    let (code, rows) = crate::mqtt::http(
        url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(serde_json::json!({ "sql": sql })),
    );
    (code == 200).then(|| rows[0]["n"].as_u64()).flatten()
}

pub(crate) fn blocking_query_count(url: &str, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let r = crate::support::http_client()
            .post(format!("{url}/api/v1/query"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("query");
        let status = r.status();
        let text = r.text().await.expect("text");
        assert_eq!(status, 200, "{text}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
        rows[0]
            .as_object()
            .expect("row")
            .values()
            .next()
            .and_then(|v| v.as_i64())
            .expect("count")
    })
}

/// POSTs `body` to `url` + `path` with the test token; returns the status code.
pub(crate) fn post_status(url: &str, path: &str, body: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        crate::support::http_client()
            .post(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .body(body.to_owned())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

/// The wall clock in ns since the epoch, as row timestamps are.
pub(crate) fn now_ns() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("ns")
}

/// Sends the request `build` makes with the tests' client, on a runtime of its own (for
/// tests that are not async): the status and the body as text.
pub(crate) fn send_blocking(
    build: impl FnOnce(reqwest::Client) -> reqwest::RequestBuilder,
) -> (u16, String) {
    let answer = send_blocking_answer(build);
    (
        answer.status,
        String::from_utf8_lossy(&answer.bytes).into_owned(),
    )
}

/// What a request answered, headers included.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) bytes: Vec<u8>,
}

impl Answer {
    /// A header's value as text ("" when absent or not text).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends the request `build` makes with the tests' client, on a runtime of its own: the
/// status, the headers and the raw body.
pub(crate) fn send_blocking_answer(
    build: impl FnOnce(reqwest::Client) -> reqwest::RequestBuilder,
) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let r = build(http_client()).send().await.expect("request");
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            bytes: r.bytes().await.expect("body").to_vec(),
        }
    })
}

/// [`send_blocking`], the body read as JSON (`Null` when it is not JSON).
pub(crate) fn send_blocking_json(
    build: impl FnOnce(reqwest::Client) -> reqwest::RequestBuilder,
) -> (u16, serde_json::Value) {
    let (status, text) = send_blocking(build);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// An HTTP client for talking to the process under test. reqwest is built with rustls and
/// no default crypto provider (as `fabrik` is), so the test process installs ring first.
pub(crate) fn http_client() -> reqwest::Client {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::new()
}

/// The value of the Prometheus sample whose name and labels are `series` (as rendered, e.g.
/// `fabrik_alerts_firing{rule="r",severity="critical"}`) on the process's `/metrics`.
pub(crate) fn metric(url: &str, series: &str) -> Option<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let text = rt.block_on(async {
        http_client()
            .get(format!("{url}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    });
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A peer's executable: the path in `env_var`, else `name` beside `FABRIK_PYTHON` (the test
/// venv's `bin/`, where .ci/run installs the PyPI peers), else `name` on PATH.
pub(crate) fn venv_tool(env_var: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    if let Ok(python) = std::env::var("FABRIK_PYTHON") {
        let beside = Path::new(&python).with_file_name(name);
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from(name)
}

/// A free port on 127.0.0.1 (free when asked; a peer started on it right away gets it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A protocol peer (a broker, a NATS server) run by a test; killed on drop.
pub(crate) struct Peer(Child);

impl Peer {
    /// Spawns `command` (output discarded) and waits until 127.0.0.1:`port` accepts
    /// connections; `missing` says how to install it when it cannot be spawned.
    pub(crate) fn listening(mut command: Command, port: u16, missing: &str) -> Peer {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(missing);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Peer(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{:?} did not listen on {port}", command.get_program());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Python that has the tests' peers (`FABRIK_PYTHON`, the venv `.ci/run` makes), else
/// `python3`.
pub(crate) fn python() -> String {
    std::env::var("FABRIK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A `fabrik run` whose configuration file holds `config`, with its files under `dir`.
pub(crate) fn start_configured(dir: &std::path::Path, config: &str) -> Process {
    let file = dir.join("fabrik.toml");
    std::fs::write(&file, config).expect("config");
    Process::start_with_args(
        &dir.join("data"),
        &["--config", file.to_str().expect("utf-8")],
        &[],
    )
}

/// The alerts of rule `rule` (`GET /api/v1/alerts?rule=`), any state; none if the request
/// failed.
pub(crate) fn alerts_of(url: &str, rule: &str) -> Vec<serde_json::Value> {
    let (_, alerts) = crate::mqtt::http(
        url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts?rule={rule}"),
        None,
    );
    alerts.as_array().cloned().unwrap_or_default()
}

/// The last OpenLineage event of job `job` in `lineage.jsonl` of the data directory under `dir`
/// (the file transport, decision 0080): after a clean stop, the run's end.
pub(crate) fn last_lineage_event(dir: &Path, job: &str) -> serde_json::Value {
    std::fs::read_to_string(dir.join("data").join("lineage.jsonl"))
        .expect("the lineage file")
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("an event"))
        .rfind(|e| e["job"]["name"] == job)
        .unwrap_or_else(|| panic!("no event of {job} in the lineage file"))
}

/// The `name` of each object in a JSON array (a run's `inputs` or `outputs`, a schema's
/// `fields`).
pub(crate) fn names(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .map(|items| items.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default()
}
