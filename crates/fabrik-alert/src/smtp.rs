//! A small SMTP submission client (RFC 5321 with STARTTLS, RFC 3207, and AUTH PLAIN/LOGIN,
//! RFC 4954) for e-mail notifications: one connection per message, TLS through rustls, and
//! credentials never sent over an unencrypted connection.
//!
//! Written here rather than taken from a mail crate because a notifier needs only this one
//! path, and the usual crate (lettre) would bring a second TLS and DNS stack into the build.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line accepted from a server.
const MAX_LINE: usize = 4096;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// TLS from the first byte (`smtps://`, port 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS, which the server must offer (`smtp://`).
    StartTls,
    /// No encryption (a local relay); credentials are refused on such a connection.
    None,
}

/// A mail server and how to use it (its `Debug` leaves out the password).
#[derive(Clone, PartialEq)]
pub struct SmtpServer {
    /// Host name (also the name its certificate must carry).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connection protection.
    pub security: SmtpSecurity,
    /// PEM file of CAs to trust; the system bundle when `None`.
    pub ca: Option<PathBuf>,
    /// User name and password for AUTH.
    pub credentials: Option<(String, String)>,
    /// Name sent in EHLO.
    pub helo_name: String,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("ca", &self.ca)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("helo_name", &self.helo_name)
            .finish_non_exhaustive()
    }
}

impl SmtpServer {
    /// Parses `smtp://host[:port]` (STARTTLS, port 587) or `smtps://host[:port]` (implicit
    /// TLS, port 465).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let (security, rest, default_port) = if let Some(rest) = url.strip_prefix("smtps://") {
            (SmtpSecurity::Implicit, rest, 465)
        } else if let Some(rest) = url.strip_prefix("smtp://") {
            (SmtpSecurity::StartTls, rest, 587)
        } else {
            return Err(format!(
                "`{url}`: expected smtp://host[:port] or smtps://host[:port]"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{url}`: `{p}` is not a port"))?,
            ),
            None => (rest, default_port),
        };
        if host.is_empty() || host.contains(['/', '@', '?']) {
            return Err(format!("`{url}`: no usable host name"));
        }
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            security,
            ca: None,
            credentials: None,
            helo_name: "fabrik".into(),
        })
    }
}

/// One message to send: envelope and the complete RFC 5322 text (CRLF line ends).
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Envelope sender.
    pub from: &'a str,
    /// Envelope recipients.
    pub to: &'a [String],
    /// Headers and body.
    pub message: &'a str,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Sends one message, all within `timeout`. Returns the recipients the server refused for
/// good (5xx) while it took the message for the others: one mistyped or closed mailbox must
/// not keep a page from everyone else on the list. With every recipient refused, or any
/// refused for now (4xx), nothing is sent: an error, retried.
pub async fn send(
    server: &SmtpServer,
    envelope: &Envelope<'_>,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let stage = AtomicU8::new(Stage::Connecting as u8);
    tokio::time::timeout(timeout, send_inner(server, envelope, &stage))
        .await
        .map_err(|_| {
            let waiting = match stage.load(Ordering::Relaxed) {
                s if s == Stage::Connecting as u8 => "for the connection",
                s if s == Stage::Tls as u8 => {
                    "for the TLS handshake (does the port speak TLS from the start?)"
                }
                s if s == Stage::Greeting as u8 => {
                    "for the SMTP greeting (is an SMTP server listening on that port?)"
                }
                _ => "for the server to take the message",
            };
            format!(
                "{}:{} did not finish within {timeout:?}: it waited {waiting}",
                server.host, server.port
            )
        })?
}

/// How far a submission got, for the message when it times out.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connecting,
    Tls,
    Greeting,
    Session,
}

async fn send_inner(
    server: &SmtpServer,
    envelope: &Envelope<'_>,
    stage: &AtomicU8,
) -> Result<Vec<String>, String> {
    let address = format!("{}:{}", server.host, server.port);
    let tcp = TcpStream::connect(&address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut conn: BufReader<Box<dyn Stream>> = match server.security {
        SmtpSecurity::Implicit => {
            stage.store(Stage::Tls as u8, Ordering::Relaxed);
            BufReader::new(Box::new(tls(server, tcp).await?))
        }
        SmtpSecurity::StartTls | SmtpSecurity::None => BufReader::new(Box::new(tcp)),
    };
    stage.store(Stage::Greeting as u8, Ordering::Relaxed);
    expect(&mut conn, 220, "greeting").await?;
    stage.store(Stage::Session as u8, Ordering::Relaxed);
    let mut capabilities = ehlo(&mut conn, &server.helo_name).await?;
    let mut encrypted = server.security == SmtpSecurity::Implicit;
    if server.security == SmtpSecurity::StartTls {
        if !has(&capabilities, "STARTTLS") {
            return Err(format!(
                "{address} does not offer STARTTLS; use smtps:// or, for a local relay only, starttls = false"
            ));
        }
        command(&mut conn, "STARTTLS", 220, "STARTTLS").await?;
        // Anything the server sent before the handshake would be injected into the encrypted
        // session (the STARTTLS command-injection class of bugs): refuse it.
        if !conn.buffer().is_empty() {
            return Err(format!("{address} sent data before the TLS handshake"));
        }
        let plain = conn.into_inner();
        conn = BufReader::new(Box::new(tls(server, plain).await?));
        encrypted = true;
        capabilities = ehlo(&mut conn, &server.helo_name).await?;
    }
    if let Some((user, password)) = &server.credentials {
        if !encrypted {
            return Err(
                "refusing to send SMTP credentials over an unencrypted connection".to_owned(),
            );
        }
        authenticate(&mut conn, &capabilities, user, password).await?;
    }
    command(
        &mut conn,
        &format!("MAIL FROM:<{}>", envelope.from),
        250,
        "MAIL FROM",
    )
    .await?;
    let mut refused = Vec::new();
    for to in envelope.to {
        let reply = roundtrip(&mut conn, &format!("RCPT TO:<{to}>")).await?;
        match reply.0 {
            250 | 251 => {}
            // A temporary refusal (greylisting, too many recipients at once) is retried with
            // the whole message: nobody has it yet, and a recipient left out now would never
            // get it.
            400..=499 => {
                let _ = roundtrip(&mut conn, "QUIT").await;
                return Err(format!(
                    "recipient <{to}> refused for now: {} {}",
                    reply.0, reply.1
                ));
            }
            code => refused.push(format!("<{to}> refused: {code} {}", reply.1)),
        }
    }
    if refused.len() == envelope.to.len() {
        let _ = roundtrip(&mut conn, "QUIT").await;
        return Err(format!("every recipient refused: {}", refused.join("; ")));
    }
    command(&mut conn, "DATA", 354, "DATA").await?;
    let mut data = dot_stuff(envelope.message);
    data.push_str(".\r\n");
    write(&mut conn, &data).await?;
    expect(&mut conn, 250, "end of data").await?;
    // The message is accepted; a failed QUIT changes nothing.
    let _ = roundtrip(&mut conn, "QUIT").await;
    Ok(refused)
}

async fn tls<S: Stream + 'static>(
    server: &SmtpServer,
    tcp: S,
) -> Result<tokio_rustls::client::TlsStream<S>, String> {
    let connector = connector(server)?;
    let name = rustls::pki_types::ServerName::try_from(server.host.clone())
        .map_err(|e| format!("`{}` is not a valid TLS server name: {e}", server.host))?;
    connector.connect(name, tcp).await.map_err(|e| {
        // A plain SMTP port answers a TLS hello with its text greeting, which rustls reads
        // as a corrupt record.
        let hint = if server.security == SmtpSecurity::Implicit
            && e.to_string().contains("InvalidContentType")
        {
            " (the port does not speak TLS from the start: smtps:// is for port 465; for 587 \
             or 25 use smtp://, which upgrades with STARTTLS)"
        } else {
            ""
        };
        format!("TLS with {}:{} failed: {e}{hint}", server.host, server.port)
    })
}

fn connector(server: &SmtpServer) -> Result<tokio_rustls::TlsConnector, String> {
    let config = crate::tls::client_config(server.ca.as_deref())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn authenticate(
    conn: &mut BufReader<Box<dyn Stream>>,
    capabilities: &[String],
    user: &str,
    password: &str,
) -> Result<(), String> {
    let mechanisms: Vec<String> = capabilities
        .iter()
        .filter_map(|c| c.strip_prefix("AUTH ").or_else(|| c.strip_prefix("AUTH=")))
        .flat_map(|m| m.split_whitespace().map(str::to_ascii_uppercase))
        .collect();
    if mechanisms.iter().any(|m| m == "PLAIN") {
        let token = BASE64.encode(format!("\0{user}\0{password}"));
        command(conn, &format!("AUTH PLAIN {token}"), 235, "AUTH PLAIN").await
    } else if mechanisms.iter().any(|m| m == "LOGIN") {
        command(conn, "AUTH LOGIN", 334, "AUTH LOGIN").await?;
        command(conn, &BASE64.encode(user), 334, "AUTH LOGIN user name").await?;
        command(conn, &BASE64.encode(password), 235, "AUTH LOGIN password").await
    } else {
        Err(format!(
            "the server offers no AUTH mechanism Fabrik speaks (PLAIN, LOGIN); it offers {mechanisms:?}"
        ))
    }
}

fn has(capabilities: &[String], name: &str) -> bool {
    capabilities
        .iter()
        .any(|c| c.split_whitespace().next() == Some(name))
}

async fn ehlo(conn: &mut BufReader<Box<dyn Stream>>, name: &str) -> Result<Vec<String>, String> {
    write(conn, &format!("EHLO {name}\r\n")).await?;
    let (code, lines) = reply(conn).await?;
    if code != 250 {
        return Err(format!("EHLO refused: {code} {}", lines.join(" ")));
    }
    // The first line greets; the others are extensions.
    Ok(lines
        .into_iter()
        .skip(1)
        .map(|l| l.to_ascii_uppercase())
        .collect())
}

async fn command(
    conn: &mut BufReader<Box<dyn Stream>>,
    line: &str,
    want: u16,
    what: &str,
) -> Result<(), String> {
    let (code, text) = roundtrip(conn, line).await?;
    if code == want {
        Ok(())
    } else {
        Err(format!("{what}: server answered {code} {text}"))
    }
}

async fn expect(
    conn: &mut BufReader<Box<dyn Stream>>,
    want: u16,
    what: &str,
) -> Result<(), String> {
    let (code, lines) = reply(conn).await?;
    if code == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: server answered {code} {}",
            lines.join(" ")
        ))
    }
}

async fn roundtrip(
    conn: &mut BufReader<Box<dyn Stream>>,
    line: &str,
) -> Result<(u16, String), String> {
    write(conn, &format!("{line}\r\n")).await?;
    let (code, lines) = reply(conn).await?;
    Ok((code, lines.join(" ")))
}

async fn write(conn: &mut BufReader<Box<dyn Stream>>, text: &str) -> Result<(), String> {
    let stream = conn.get_mut();
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("SMTP write failed: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("SMTP write failed: {e}"))
}

/// Reads one (possibly multi-line) reply: its code and the text of each line.
async fn reply(conn: &mut BufReader<Box<dyn Stream>>) -> Result<(u16, Vec<String>), String> {
    let mut lines = Vec::new();
    loop {
        let mut raw = Vec::new();
        let n = (&mut *conn)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut raw)
            .await
            .map_err(|e| format!("SMTP read failed: {e}"))?;
        if n == 0 {
            return Err("the SMTP server closed the connection".into());
        }
        if raw.last() != Some(&b'\n') {
            return Err(format!("SMTP reply line longer than {MAX_LINE} bytes"));
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: `{line}`"))?;
        let more = line.as_bytes().get(3) == Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_owned());
        if !more {
            return Ok((code, lines));
        }
    }
}

/// CRLF line ends, and a leading `.` doubled (RFC 5321 §4.5.2) so no line ends the data early.
fn dot_stuff(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 64);
    for line in message.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    // `split` yields an empty last piece after a final newline; it must not add a blank line.
    if message.ends_with('\n') {
        out.truncate(out.len() - 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_security_and_ports() {
        let s = SmtpServer::from_url("smtp://mail.example.com").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.security),
            ("mail.example.com", 587, SmtpSecurity::StartTls)
        );
        let s = SmtpServer::from_url("smtps://mail.example.com:2465/").unwrap();
        assert_eq!((s.port, s.security), (2465, SmtpSecurity::Implicit));
        assert!(SmtpServer::from_url("http://x").is_err());
        assert!(SmtpServer::from_url("smtp://:25").is_err());
        assert!(SmtpServer::from_url("smtp://host:99999").is_err());
    }

    #[test]
    fn dot_stuffing_protects_the_end_of_data() {
        assert_eq!(dot_stuff("a\n.b\n..c\n"), "a\r\n..b\r\n...c\r\n");
        assert_eq!(dot_stuff("a\r\n.\r\nb"), "a\r\n..\r\nb\r\n");
    }
}
