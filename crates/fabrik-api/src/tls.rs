//! HTTPS for the API and dashboard: a listener that runs TLS handshakes in tasks of their
//! own and hands axum only the connections that completed one, so a client that opens a
//! connection and never finishes its handshake delays no one else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake not finished in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress from one address at most: one client that opens connections and
/// says nothing cannot take every slot.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;
/// Refusals are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Connections that completed a handshake and wait for axum to take them.
const READY_QUEUE: usize = 64;

/// Accepts TCP connections on a listener and yields them once their TLS handshake is done.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `tls`.
    pub fn new(listener: TcpListener, tls: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = tokio::spawn(accept_loop(listener, tls, ready_tx));
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The handshakes under way end on their own within the timeout.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut last_refusal_log: Option<Instant> = None;
    while !ready.is_closed() {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: waiting beats spinning.
                tracing::warn!(error = %e, "HTTPS accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = handshakes.clone().try_acquire_owned().ok();
        let from_address = AddressSlot::take(&per_address, source_of(peer.ip()));
        let (Some(permit), Some(from_address)) = (permit, from_address) else {
            metrics::counter!("fabrik_http_tls_handshakes_refused_total").increment(1);
            if last_refusal_log.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(%peer, "HTTPS connection closed: too many handshakes under way (from this address, or in all).");
            }
            continue;
        };
        let (tls, ready) = (tls.clone(), ready.clone());
        tokio::spawn(async move {
            let _permits = (permit, from_address);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("fabrik_http_tls_handshake_failures_total").increment(1);
                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed.");
                }
                Err(_) => {
                    metrics::counter!("fabrik_http_tls_handshake_failures_total").increment(1);
                    tracing::debug!(%peer, "HTTPS handshake timed out.");
                }
            }
        });
    }
}

/// The source a handshake counts against: an IPv4 address, or an IPv6 address's /64 (one
/// host can hold a whole /64).
/// An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d` and counts as its
/// IPv4 address.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
    }
}

/// One handshake's count against its address, given back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    /// Counts a handshake from `address`, unless it has too many under way.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr) -> Option<Self> {
        let mut map = counts.lock();
        let count = map.entry(address).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task is gone (it only ends when this listener is dropped): no
            // connection will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::source_of;

    #[test]
    fn ipv4_clients_count_alone_and_an_ipv6_64_counts_as_one() {
        let source = |text: &str| source_of(text.parse().expect("address"));
        assert_ne!(source("::ffff:1.2.3.4"), source("::ffff:5.6.7.8"));
        assert_eq!(source("::ffff:1.2.3.4"), source("1.2.3.4"));
        assert_eq!(source("2001:db8::1"), source("2001:db8::ffff:2"));
        assert_ne!(source("2001:db8::1"), source("2001:db8:0:1::1"));
        assert_ne!(source("::1"), source("::ffff:127.0.0.1"));
    }
}
