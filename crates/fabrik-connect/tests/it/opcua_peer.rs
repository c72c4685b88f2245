//! The Python `asyncua` test server (tests/peers/opcua_server.py), owned by a test and killed
//! when dropped. Python comes from `FABRIK_PYTHON` (default `python3`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const INSTALL_HINT: &str = "the OPC UA tests need Python with `asyncua` (tested with 2.1.0): \
    python3 -m venv .venv && .venv/bin/pip install asyncua, \
    then run the tests with FABRIK_PYTHON=.venv/bin/python";

/// How the server is started.
#[derive(Debug, Clone)]
pub(crate) struct PeerOptions {
    /// Fixed port, or 0 for a free one.
    pub(crate) port: u16,
    /// Comma list of none, sign, encrypt.
    pub(crate) security: &'static str,
    /// Where the server certificate is kept (generated on first start).
    pub(crate) cert_dir: PathBuf,
    /// Add the Bad and Uncertain variables.
    pub(crate) bad: bool,
    /// `NAME:PASSWORD`: only this user may log in.
    pub(crate) user: Option<&'static str>,
}

/// A running server.
pub(crate) struct Peer {
    child: Child,
    /// The port it listens on.
    pub(crate) port: u16,
    options: PeerOptions,
}

fn python() -> String {
    std::env::var("FABRIK_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/opcua_server.py")
}

impl Peer {
    /// Starts the server and waits for its `READY <port>` line.
    pub(crate) async fn start(options: PeerOptions) -> Peer {
        let python = python();
        let mut cmd = Command::new(&python);
        cmd.arg(script())
            .arg("--port")
            .arg(options.port.to_string())
            .arg("--security")
            .arg(options.security)
            .arg("--cert-dir")
            .arg(&options.cert_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if options.bad {
            cmd.arg("--bad");
        }
        if let Some(user) = options.user {
            cmd.arg("--user").arg(user);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{python}` ({e}); {INSTALL_HINT}"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let port = match ready {
            Ok(Ok(Some(line))) if line.starts_with("READY ") => line[6..].trim().parse().unwrap(),
            other => {
                let _ = child.start_kill();
                let output = child.wait_with_output().await.unwrap();
                let stderr = String::from_utf8_lossy(&output.stderr);
                if stderr.contains("MISSING asyncua") || stderr.contains("No module named") {
                    panic!("{INSTALL_HINT}\n{stderr}");
                }
                panic!("OPC UA test server did not start ({other:?}):\n{stderr}");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("FABRIK_PEER_LOG").is_some() {
                    eprintln!("[opcua peer] {line}");
                }
            }
        });
        Peer {
            child,
            port,
            options,
        }
    }

    /// `opc.tcp://127.0.0.1:<port>/fabrik/`.
    pub(crate) fn endpoint(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/fabrik/", self.port)
    }

    /// The server certificate (DER), present when a secure policy is offered.
    pub(crate) fn cert_path(&self) -> PathBuf {
        self.options.cert_dir.join("server_cert.der")
    }

    /// SIGKILL, as a crash would.
    pub(crate) async fn kill(mut self) -> PeerOptions {
        self.child.kill().await.unwrap();
        let mut options = self.options.clone();
        options.port = self.port;
        options
    }
}
