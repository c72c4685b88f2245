//! The NATS JetStream link the uplink (edge) and the hub share: connection options from
//! `[uplink]` or `[hub]`, their checks, and the stream both sides agree on (decision 0030).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use fabrik_runtime::config::{HubConfig, UplinkConfig};

/// JetStream drops a message whose `Nats-Msg-Id` it saw this recently: an edge that re-sends
/// after a lost acknowledgement or a restart within it stores nothing twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The header naming a message's table.
pub(crate) const TABLE_HEADER: &str = "Fabrik-Table";
/// The header naming the WAL record a message came from, on the edge.
pub(crate) const SEQ_HEADER: &str = "Fabrik-Wal-Seq";

/// Where and how a NATS server is reached.
#[derive(Debug, Clone)]
pub(crate) struct NatsLink {
    /// `uplink` or `hub`, for error paths.
    pub section: &'static str,
    pub url: String,
    pub stream: String,
    pub subject: String,
    user: String,
    password: String,
    token: String,
    tls_ca: String,
    tls_cert: String,
    tls_key: String,
}

impl From<&UplinkConfig> for NatsLink {
    fn from(c: &UplinkConfig) -> Self {
        Self {
            section: "uplink",
            url: c.url.trim().to_owned(),
            stream: c.stream.trim().to_owned(),
            subject: c.subject.trim().to_owned(),
            user: c.user.clone(),
            password: c.password.clone(),
            token: c.token.clone(),
            tls_ca: c.tls_ca.trim().to_owned(),
            tls_cert: c.tls_cert.trim().to_owned(),
            tls_key: c.tls_key.trim().to_owned(),
        }
    }
}

impl From<&HubConfig> for NatsLink {
    fn from(c: &HubConfig) -> Self {
        Self {
            section: "hub",
            url: c.url.trim().to_owned(),
            stream: c.stream.trim().to_owned(),
            subject: c.subject.trim().to_owned(),
            user: c.user.clone(),
            password: c.password.clone(),
            token: c.token.clone(),
            tls_ca: c.tls_ca.trim().to_owned(),
            tls_cert: c.tls_cert.trim().to_owned(),
            tls_key: c.tls_key.trim().to_owned(),
        }
    }
}

/// The module of a link that is not configured: runs until stopped, doing nothing.
pub(crate) fn idle_module() -> fabrik_runtime::ServiceHandle {
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        Ok(())
    });
    fabrik_runtime::ServiceHandle { stop, task }
}

/// A subject token or stream name NATS takes: no separators, wildcards or blanks.
pub(crate) fn is_plain_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

impl NatsLink {
    /// Whether the link is configured at all.
    pub(crate) fn is_on(&self) -> bool {
        !self.url.is_empty()
    }

    /// Problems of the section, as `section.field`.
    pub(crate) fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push((format!("{}.{field}", self.section), message));
        };
        for url in self.url.split(',').map(str::trim) {
            let rest = ["nats://", "tls://"]
                .iter()
                .find_map(|scheme| url.strip_prefix(scheme))
                .unwrap_or(url);
            let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            if host_port
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                problem(
                    "url",
                    format!("`{url}` is not nats://host:port or tls://host:port"),
                );
            }
        }
        if !is_plain_name(&self.stream) {
            problem(
                "stream",
                format!("`{}`: use letters, digits, `-` and `_`", self.stream),
            );
        }
        if self.subject.is_empty() || !self.subject.split('.').all(is_plain_name) {
            problem(
                "subject",
                format!(
                    "`{}`: dot-separated tokens of letters, digits, `-` and `_` (no wildcards)",
                    self.subject
                ),
            );
        }
        if self.user.is_empty() != self.password.is_empty() {
            problem("password", "user and password are given together".into());
        }
        if !self.token.is_empty() && !self.user.is_empty() {
            problem(
                "token",
                "give a token or a user and password, not both".into(),
            );
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            problem("tls_key", "tls_cert and tls_key are given together".into());
        }
        for (field, path) in [
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if !path.is_empty() && std::fs::metadata(path).is_err() {
                problem(field, format!("cannot read `{path}`"));
            }
        }
        problems
    }

    /// Connects, retrying in the background while the server is away: the client buffers
    /// and re-sends, and JetStream calls fail with a timeout until it is back.
    /// `on_connection` hears each connect (true) and disconnect (false) as it happens.
    pub(crate) async fn connect(
        &self,
        client_name: String,
        on_connection: impl Fn(bool) + Send + Sync + 'static,
    ) -> Result<async_nats::Client, String> {
        let on_connection = std::sync::Arc::new(on_connection);
        let mut options = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let on_connection = on_connection.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => on_connection(true),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            on_connection(false)
                        }
                        _ => {}
                    }
                }
            })
            .name(client_name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        if !self.user.is_empty() {
            options = options.user_and_password(self.user.clone(), self.password.clone());
        }
        if !self.token.is_empty() {
            options = options.token(self.token.clone());
        }
        if !self.tls_ca.is_empty() {
            options = options
                .add_root_certificates(PathBuf::from(&self.tls_ca))
                .require_tls(true);
        }
        if !self.tls_cert.is_empty() {
            options = options.add_client_certificate(
                PathBuf::from(&self.tls_cert),
                PathBuf::from(&self.tls_key),
            );
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .url
            .split(',')
            .map(|u| {
                u.trim()
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("{}.url `{}`: {e}", self.section, u.trim()))
            })
            .collect::<Result<_, _>>()?;
        options
            .connect(urls)
            .await
            .map_err(|e| format!("{}: connecting to {}: {e}", self.section, self.url))
    }

    /// The stream: every subject under the prefix, on disk, deduplicated by message id.
    pub(crate) fn stream_config(&self, max_age: Duration) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject)],
            storage: jetstream::stream::StorageType::File,
            max_age,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_section_reports_each_problem_by_its_field() {
        let config = UplinkConfig {
            url: "nats://hub:4222, tls://:99, hub".into(),
            stream: "FABRIK UPLINK".into(),
            subject: "fabrik.>".into(),
            user: "edge".into(),
            token: "t".into(),
            tls_cert: "/nonexistent/cert.pem".into(),
            ..UplinkConfig::default()
        };
        let problems = NatsLink::from(&config).check();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "uplink.url",
                "uplink.url",
                "uplink.stream",
                "uplink.subject",
                "uplink.password",
                "uplink.token",
                "uplink.tls_key",
                "uplink.tls_cert"
            ],
            "{problems:?}"
        );
        let good = UplinkConfig {
            url: "nats://127.0.0.1:4222,nats://user:pw@10.0.0.2:4222".into(),
            ..UplinkConfig::default()
        };
        assert!(NatsLink::from(&good).check().is_empty());
    }
}
