//! Ports for "server down" tests: reserved (bound, never listening), so a connection to one is
//! refused, as to a stopped server, and no other test's server can be given it meanwhile (a
//! port found free and released was once taken by a parallel test's OPC UA server, which then
//! answered for the "down" one).

use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// A reserved port on 127.0.0.1: refused until the [`Socket`] is dropped.
pub(crate) fn reserved_port() -> (Socket, u16) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind");
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port();
    (socket, port)
}
