//! Thin CLI clients of the HTTP API: `fabrik query` and `fabrik write`, and what the other
//! commands share with them (the endpoint, times as text).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// A time (ns since the epoch) as the commands print it, UTC to the second; `-` for none.
pub(crate) fn time_text(ns: Option<i64>) -> String {
    ns.map_or_else(
        || "-".into(),
        |ns| {
            chrono::DateTime::from_timestamp_nanos(ns)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub(crate) struct Endpoint {
    /// Base URL of a running Fabrik.
    #[arg(
        long,
        global = true,
        env = "FABRIK_URL",
        default_value = "http://127.0.0.1:7800"
    )]
    pub(crate) url: String,
    /// API token (default: read from <data-dir>/admin.token).
    #[arg(long, global = true, env = "FABRIK_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Data directory holding admin.token, used when no token is given (and, for https, the
    /// generated tls/http-cert.pem, trusted when no CA is given).
    #[arg(
        long,
        global = true,
        env = "FABRIK__STORE__DATA_DIR",
        default_value = "./fabrik-data"
    )]
    pub(crate) data_dir: PathBuf,
    /// CA certificate (PEM) to trust for an https URL besides the system's roots: the
    /// server's own certificate when it is self-signed.
    #[arg(long, global = true, env = "FABRIK_CA_CERT")]
    pub(crate) ca_cert: Option<String>,
}

impl Endpoint {
    /// The token to send, if any.
    pub(crate) fn token(&self) -> Option<String> {
        // An empty `FABRIK_TOKEN=` (a variable set from a missing file) is no token: the
        // token file is tried, and the error says what is missing.
        if let Some(t) = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Some(t.to_owned());
        }
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    /// An HTTP client for this endpoint. For https it trusts the system's roots and, besides,
    /// `--ca-cert`, or else, for a server on this machine (`localhost`, a loopback address),
    /// the certificate a server with `http.tls` generates in the data directory, when that
    /// file exists. Whoever holds that file's key could pose as any host to a client that
    /// trusted it everywhere.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        self.client_builder()?
            .build()
            .context("building the HTTP client")
    }

    /// [`Endpoint::client`]'s builder, for callers that tune it further.
    pub(crate) fn client_builder(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let builder = reqwest::Client::builder();
        if !self.url.starts_with("https://") {
            return Ok(builder);
        }
        let generated = self.data_dir.join("tls").join("http-cert.pem");
        // An empty `FABRIK_CA_CERT=` is no CA, as an empty token is no token.
        let given = self
            .ca_cert
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let ca = match given {
            Some(path) => Some(PathBuf::from(path)),
            None => (is_local(&self.url) && generated.exists()).then_some(generated),
        };
        match ca {
            Some(ca) => trust_ca_file(builder, &ca),
            None => Ok(builder),
        }
    }

    /// A request builder with the token set.
    pub(crate) fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path);
        let req = client.request(method, url);
        match self.token() {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `GET path`, its JSON answer read as `T`.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        path: &str,
    ) -> anyhow::Result<T> {
        Ok(self
            .send(self.request(client, reqwest::Method::GET, path))
            .await?
            .json()
            .await?)
    }

    /// Sends a request built with [`Endpoint::request`]; an unreachable server or a non-2xx
    /// answer is an error naming what went wrong.
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = req.send().await.map_err(|e| {
            // reqwest names the TLS failure deep in its chain of causes.
            let mut cause: Option<&dyn std::error::Error> = Some(&e);
            let mut untrusted = false;
            while let Some(c) = cause {
                untrusted |= c.to_string().contains("invalid peer certificate");
                cause = c.source();
            }
            let hint = if untrusted {
                format!(
                    " (the server's certificate is not trusted: give its CA with --ca-cert or \
                     FABRIK_CA_CERT; a server with http.tls and no tls_cert keeps its \
                     generated one in <data dir>/tls/http-cert.pem, trusted from {} for a URL on \
                     this machine)",
                    self.data_dir.display()
                )
            } else {
                String::new()
            };
            anyhow::Error::new(e).context(format!("cannot reach Fabrik at {}{hint}", self.url))
        })?;
        self.check(response).await
    }

    /// [`check`], and when the server wants a token this client did not have, where it
    /// looked for one.
    pub(crate) async fn check(
        &self,
        response: reqwest::Response,
    ) -> anyhow::Result<reqwest::Response> {
        let unauthorized = response.status() == reqwest::StatusCode::UNAUTHORIZED;
        let result = check(response).await;
        if unauthorized && self.token().is_none() {
            return result.with_context(|| {
                format!(
                    "no API token: none given with --token or FABRIK_TOKEN, and no {} \
                     (point --data-dir or FABRIK__STORE__DATA_DIR at the server's data directory)",
                    self.data_dir.join("admin.token").display()
                )
            });
        }
        result
    }
}

/// Whether `url` names this machine: `localhost` or a loopback address.
/// A URL with a user name or password is never local: `https://localhost:x@elsewhere/`
/// names `elsewhere`, and the URL parser the client uses is the one asked.
fn is_local(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return false;
    }
    // The parser gives IPv6 hosts in brackets and domains lower-cased.
    let host = parsed.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Runs a client future on a small runtime and turns errors into exit code 1.
pub(crate) fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fabrik: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabrik: {}", crate::error_text::describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Output formats of `fabrik query`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum QueryFormat {
    /// An aligned text table.
    Table,
    /// A JSON array of row objects.
    Json,
    /// CSV with a header row.
    Csv,
}

/// Arguments of `fabrik query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The SQL.
    pub(crate) sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: QueryFormat,
    #[command(flatten)]
    pub(crate) endpoint: Endpoint,
}

pub(crate) async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(body);
    bail!("server answered {status}: {message}")
}

/// `fabrik query`.
pub(crate) async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let accept = match args.format {
        QueryFormat::Table => fabrik_api::routes::ARROW_STREAM,
        QueryFormat::Json => "application/json",
        QueryFormat::Csv => "text/csv",
    };
    let response = args
        .endpoint
        .request(&client, reqwest::Method::POST, "/api/v1/query")
        .header("accept", accept)
        .json(&serde_json::json!({ "sql": args.sql }))
        .send()
        .await
        .with_context(|| format!("cannot reach Fabrik at {}", args.endpoint.url))?;
    let bytes = args.endpoint.check(response).await?.bytes().await?;
    match args.format {
        QueryFormat::Table => {
            let reader = fabrik_store::arrow::ipc::reader::StreamReader::try_new(
                std::io::Cursor::new(bytes),
                None,
            )?;
            let schema = reader.schema();
            let mut batches = reader.collect::<Result<Vec<_>, _>>()?;
            // No rows still has columns: print their names over an empty table.
            if batches.is_empty() {
                batches.push(fabrik_store::arrow::record_batch::RecordBatch::new_empty(
                    schema,
                ));
            }
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            println!(
                "{}",
                fabrik_store::arrow::util::pretty::pretty_format_batches(&batches)?
            );
            println!("{rows} row(s)");
        }
        QueryFormat::Json | QueryFormat::Csv => {
            print!("{}", String::from_utf8_lossy(&bytes));
            if !bytes.ends_with(b"\n") {
                println!();
            }
        }
    }
    Ok(())
}

/// Arguments of `fabrik write`.
#[derive(Debug, Args)]
pub(crate) struct WriteArgs {
    /// Line-protocol file, or - for standard input.
    pub(crate) file: String,
    /// Timestamp precision of the input: ns, us, ms or s.
    #[arg(long, default_value = "ns")]
    pub(crate) precision: String,
    /// Lines per request.
    #[arg(long, default_value_t = 5000)]
    pub(crate) batch_lines: usize,
    #[command(flatten)]
    pub(crate) endpoint: Endpoint,
}

/// `fabrik write`: sends the input in batches; stops at the first rejected batch, naming the
/// input line where it starts.
pub(crate) async fn write(args: WriteArgs) -> anyhow::Result<()> {
    let reader: Box<dyn BufRead> = if args.file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f =
            std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file))?;
        Box::new(std::io::BufReader::new(f))
    };
    let client = args.endpoint.client()?;
    let batch_lines = args.batch_lines.max(1);
    let mut batch = String::new();
    let mut in_batch = 0usize;
    let mut first_line = 1usize;
    let mut line_no = 0usize;
    let mut points = 0u64;
    let mut lines = reader.lines();
    loop {
        let next = lines.next().transpose().context("reading input")?;
        if let Some(line) = &next {
            line_no += 1;
            batch.push_str(line);
            batch.push('\n');
            in_batch += 1;
        }
        if (next.is_none() && in_batch > 0) || in_batch >= batch_lines {
            let response = args
                .endpoint
                .request(
                    &client,
                    reqwest::Method::POST,
                    &format!("/api/v1/write?precision={}", args.precision),
                )
                .header("content-type", "text/plain; charset=utf-8")
                .body(std::mem::take(&mut batch))
                .send()
                .await
                .with_context(|| format!("cannot reach Fabrik at {}", args.endpoint.url))?;
            let response = args
                .endpoint
                .check(response)
                .await
                .with_context(|| format!("batch starting at input line {first_line} rejected (line numbers in the message count from there)"))?;
            let report: serde_json::Value = response.json().await?;
            points += report
                .get("points")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            in_batch = 0;
            first_line = line_no + 1;
        }
        if next.is_none() {
            break;
        }
    }
    println!("wrote {points} point(s)");
    Ok(())
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes a downloaded file to `file`, or to standard output for `-`; says where it went on
/// standard error, so standard output holds only the bytes.
pub(crate) fn save_download(
    bytes: &[u8],
    file: &std::path::Path,
    what: &str,
) -> anyhow::Result<()> {
    if file.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(bytes)?;
    } else {
        std::fs::write(file, bytes).with_context(|| format!("writing {}", file.display()))?;
        eprintln!("saved {what} to {} ({} bytes)", file.display(), bytes.len());
    }
    Ok(())
}

/// `builder` trusting the certificates of the PEM file `ca` (one or more) besides the
/// system's roots; a file without a certificate is an error naming it.
pub(crate) fn trust_ca_file(
    builder: reqwest::ClientBuilder,
    ca: &std::path::Path,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
    if certificates.is_empty() {
        bail!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca.display()
        );
    }
    Ok(certificates
        .into_iter()
        .fold(builder, reqwest::ClientBuilder::add_root_certificate))
}

/// A JSON value as a status line shows it: text bare, absent as `-`.
pub(crate) fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn only_this_machine_is_local() {
        for url in [
            "https://127.0.0.1:7800",
            "https://localhost:7800/api",
            "https://[::1]:7800",
            "https://127.0.0.2",
        ] {
            assert!(is_local(url), "{url}");
        }
        for url in [
            "https://edge-01:7800",
            "https://10.0.0.5:7800",
            "https://localhost.example.com",
            "https://[2001:db8::1]:7800",
            "https://localhost:x@evil.example/",
            "https://[::1]@evil.example",
            "https://user@localhost:7800",
            "not a url",
        ] {
            assert!(!is_local(url), "{url}");
        }
    }
}
