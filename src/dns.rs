//! An embedded, authoritative-only wildcard DNS server for the sandbox zones.
//!
//! [`resolve`] is the whole policy, as a pure function: it maps a name and an address
//! family to an [`Answer`]. Names that embed an address, in the forms nip.io and
//! sslip.io answer on the internet, resolve to that address without any network access:
//!
//! | name                                   | A          | AAAA          |
//! |----------------------------------------|------------|---------------|
//! | `app.10.0.0.1.nip.io` (dotted)         | 10.0.0.1   | no data       |
//! | `app-10-0-0-1.nip.io` (dashed)         | 10.0.0.1   | no data       |
//! | `app.10-0-0-1.nip.io` (mixed)          | 10.0.0.1   | no data       |
//! | `app-7f000001.nip.io` (8 hex digits)   | 127.0.0.1  | no data       |
//! | `10.0.0.1.nip.io`, `10-0-0-1.nip.io`   | 10.0.0.1   | no data       |
//! | `app.2001-db8--1.sslip.io`             | no data    | 2001:db8::1   |
//! | `localhost`, `*.localhost`             | 127.0.0.1  | ::1           |
//! | a name at or under a custom domain     | its address (of its family) |
//! | `nip.io`, `app.nip.io` (no address)    | no data    | no data       |
//! | anything else (`example.com`)          | refused    | refused       |
//!
//! The IPv4 forms follow nip.io's parser: the part before the zone is split on `.` and
//! `-`, and its last four parts, each 1 to 3 decimal digits from 0 to 255, are the
//! address; failing that, a last part of exactly 8 hex digits is the address. Any
//! number of labels may come before the address, and the address must end the name
//! part (`10.0.0.1.app.nip.io` has no address). The IPv6 form (sslip.io only) is the
//! last label with `-` for `:` and `--` for `::`; a dash-separated prefix is allowed
//! (`app-2001-db8--1.sslip.io`). Names compare case-insensitively and may end in a dot.
//! Both zones accept every form.
//!
//! [`DnsServer`] serves that policy over UDP and TCP on one address with
//! hickory-server's request types and handler, through loops of our own. The UDP loop
//! answers each datagram in place (hickory's UDP listener spawns a task and crosses a
//! channel per packet, which cost 1.45x dnsmasq's CPU per query in `bench/dns.sh`). The
//! TCP loop holds at most [`TCP_MAX_CONNECTIONS`] connections, closing the one idle the
//! longest to make room, and an accept error (out of file descriptors) frees a
//! connection or pauses accepting instead of retrying at once (hickory's listener retries
//! at once, spinning a core while the error lasts). A and AAAA answers are authoritative
//! (AA set, TTL [`TTL`]); other record types of an in-zone name get an empty NOERROR
//! answer (no data); every name outside the zones gets REFUSED, so the server is never an
//! open resolver and never forwards a query. Only the first question of a query is
//! answered. Responses (QR set) are dropped unanswered, so that two servers never answer
//! each other in a loop. Malformed queries are answered with FORMERR when their header
//! can be read and dropped otherwise; they never stop the server.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Time to live, in seconds, of every answer. Short, because a custom domain points at
/// a cluster whose address changes when the cluster is recreated.
pub const TTL: u32 = 60;

/// The public wildcard zones whose names embed an address, answered without internet.
pub const WILDCARD_ZONES: &[&str] = &["nip.io", "sslip.io"];

/// How long an idle TCP connection is kept open, and how long a response may take to
/// write.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most TCP connections served at once: past it, the one idle the longest is closed.
/// Far above what resolvers open to a local server, and far below the usual limit of
/// 1024 file descriptors.
pub const TCP_MAX_CONNECTIONS: usize = 128;
/// How long the TCP listener pauses after an accept error that closing a connection
/// cannot cure (or when it has none to close), so that a lasting error costs no CPU.
const TCP_ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The largest UDP query read, as hickory's UDP listener reads them: a longer datagram
/// is cut to this length.
const UDP_RECEIVE_BUFFER: usize = 4096;
/// How many ephemeral ports are tried when the caller asks for port 0 and the TCP side
/// of the port the UDP socket got is already taken.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// The zones the server answers for, besides the built-in ones ([`WILDCARD_ZONES`] and
/// `localhost`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zones {
    /// Custom domains as (domain suffix, address): every name at or under the suffix
    /// answers the address, for queries of its family. Suffixes compare
    /// case-insensitively; a leading `*.` or `.` and a trailing `.` are ignored. When
    /// suffixes nest, the longest one that matches wins; custom domains take precedence
    /// over the built-in zones.
    pub custom: Vec<(String, IpAddr)>,
}

impl Zones {
    /// Zones with only the built-in ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a custom domain: `suffix` and every name under it answer `address`.
    pub fn with_custom(mut self, suffix: impl Into<String>, address: IpAddr) -> Self {
        self.custom.push((suffix.into(), address));
        self
    }
}

/// The address family a query asks for: A records are IPv4, AAAA records IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (A records).
    V4,
    /// IPv6 (AAAA records).
    V6,
}

/// What the server answers for a name and a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// The name is in a sandbox zone and has this address (of the asked family).
    Address(IpAddr),
    /// The name is in a sandbox zone but has no address of the asked family: NOERROR
    /// with an empty answer section.
    NoData,
    /// The name is outside every sandbox zone: REFUSED.
    Refused,
}

/// Resolves `name` for `family` against the built-in zones and `zones`.
///
/// Pure and total: it never touches the network and gives an answer for any string
/// (names that are not valid host names fall outside the zones or have no data).
pub fn resolve(name: &str, family: Family, zones: &Zones) -> Answer {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();

    if let Some(address) = custom_address(&name, zones) {
        return of_family(Some(address), family);
    }
    if name == "localhost" || name.ends_with(".localhost") {
        let loopback = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        return Answer::Address(loopback);
    }
    for zone in WILDCARD_ZONES {
        if let Some(sub) = sub_of(&name, zone) {
            let address = match family {
                Family::V4 => embedded_ipv4(sub).map(IpAddr::V4),
                Family::V6 if *zone == "sslip.io" => embedded_ipv6(sub).map(IpAddr::V6),
                Family::V6 => None,
            };
            return of_family(address, family);
        }
    }
    Answer::Refused
}

/// Whether `name` is in a sandbox zone (resolves to anything but [`Answer::Refused`]).
pub fn in_zone(name: &str, zones: &Zones) -> bool {
    resolve(name, Family::V4, zones) != Answer::Refused
}

/// `Address` when `address` exists and is of `family`, `NoData` otherwise.
fn of_family(address: Option<IpAddr>, family: Family) -> Answer {
    match (address, family) {
        (Some(a @ IpAddr::V4(_)), Family::V4) | (Some(a @ IpAddr::V6(_)), Family::V6) => {
            Answer::Address(a)
        }
        _ => Answer::NoData,
    }
}

/// The address of the longest custom suffix `name` (lowercase, no trailing dot) is at or
/// under.
fn custom_address(name: &str, zones: &Zones) -> Option<IpAddr> {
    zones
        .custom
        .iter()
        .filter_map(|(suffix, address)| {
            let suffix = normalize_suffix(suffix);
            if suffix.is_empty() {
                return None;
            }
            sub_of(name, &suffix).map(|_| (suffix.len(), *address))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, address)| address)
}

/// A custom suffix in the form names are compared in: lowercase, without `*.`, leading
/// dot or trailing dot.
fn normalize_suffix(suffix: &str) -> String {
    let suffix = suffix.trim();
    let suffix = suffix.strip_prefix("*.").unwrap_or(suffix);
    suffix.trim_matches('.').to_ascii_lowercase()
}

/// The part of `name` before `.zone` (`""` for the zone apex itself), or `None` when
/// `name` is not at or under `zone`.
fn sub_of<'a>(name: &'a str, zone: &str) -> Option<&'a str> {
    if name == zone {
        return Some("");
    }
    name.strip_suffix(zone)?.strip_suffix('.')
}

/// The IPv4 address a nip.io-style name part ends with: four decimal octets separated by
/// `.` or `-`, or else one part of exactly 8 hex digits.
fn embedded_ipv4(sub: &str) -> Option<Ipv4Addr> {
    // The last four parts, read from the end (no allocation: this runs for every query).
    let mut parts = sub.rsplit(['.', '-']);
    let mut octets = [0u8; 4];
    if octets
        .iter_mut()
        .rev()
        .all(|octet| match parts.next().and_then(decimal_octet) {
            Some(value) => {
                *octet = value;
                true
            }
            None => false,
        })
    {
        return Some(Ipv4Addr::from(octets));
    }
    let last = sub.rsplit(['.', '-']).next()?;
    if last.len() == 8 && last.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u32::from_str_radix(last, 16).ok().map(Ipv4Addr::from);
    }
    None
}

/// One decimal octet: 1 to 3 digits, at most 255.
fn decimal_octet(part: &str) -> Option<u8> {
    if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// The IPv6 address the last label of an sslip.io-style name part spells with dashes
/// (`2001-db8--1`), optionally after a dash-separated prefix (`app-2001-db8--1`); the
/// longest suffix of the label that is an address wins.
fn embedded_ipv6(sub: &str) -> Option<Ipv6Addr> {
    let label = sub.rsplit('.').next()?;
    if label.is_empty() || !label.contains('-') {
        return None;
    }
    let mut candidate = label;
    loop {
        if let Ok(address) = candidate.replace('-', ":").parse::<Ipv6Addr>() {
            return Some(address);
        }
        let (_, rest) = candidate.split_once('-')?;
        candidate = rest;
    }
}

/// The text form [`resolve`] expects of a wire name: labels joined with `.`, a trailing
/// dot for a fully qualified name. Bytes a host name cannot hold (including a `.`
/// inside a label) become `?`, so such names never match an address form.
fn name_to_text(name: &Name) -> String {
    let mut text = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.extend(label.iter().map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*' {
                char::from(b)
            } else {
                '?'
            }
        }));
    }
    if name.is_fqdn() {
        text.push('.');
    }
    text
}

/// Errors of the DNS server, one variant per operation.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the dns udp socket on {addr}")]
    BindUdp {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("cannot bind the dns tcp listener on {addr}")]
    BindTcp {
        /// The address asked for (with the port the UDP socket got).
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The address a bound socket got could not be read.
    #[error("cannot read the local address of the dns socket bound on {addr}")]
    LocalAddr {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The UDP receive loop stopped while serving.
    #[error("the dns server on {addr} stopped receiving udp queries")]
    ServeUdp {
        /// The address served.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TCP accept loop stopped while serving (it only ends by panicking).
    #[error("the dns server on {addr} stopped accepting tcp connections")]
    ServeTcp {
        /// The address served.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The thread or the runtime of the foreground server could not be started, or the
    /// thread panicked.
    #[error("cannot run the dns server for {addr} on a thread of its own")]
    Runtime {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The Ctrl-C handler could not be installed.
    #[error("cannot listen for ctrl-c while serving dns on {addr}")]
    Signal {
        /// The address served.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A running DNS server: UDP and TCP on one address, answering from [`resolve`].
///
/// It serves from the moment [`DnsServer::bind`] returns (on the current tokio
/// runtime) until [`DnsServer::run_until`] sees its shutdown signal or the value is
/// dropped.
pub struct DnsServer {
    addr: SocketAddr,
    /// The UDP receive loop ([`serve_udp`]), aborted on shutdown and on drop.
    udp: JoinHandle<io::Result<()>>,
    /// The TCP accept loop ([`serve_tcp`]) with its connections, aborted likewise.
    tcp: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `bind` and starts answering for `zones`.
    ///
    /// With port 0 the UDP socket gets an ephemeral port and TCP binds the same one;
    /// [`DnsServer::local_addr`] tells which. Must be called inside a tokio runtime.
    pub async fn bind(bind: SocketAddr, zones: Zones) -> Result<Self, DnsError> {
        let (udp, tcp, addr) = bind_pair(bind).await?;
        let handler = Handler {
            zones: Arc::new(zones),
        };
        let udp = tokio::spawn(serve_udp(udp, handler.clone()));
        let tcp = tokio::spawn(serve_tcp(tcp, handler, TCP_MAX_CONNECTIONS));
        Ok(Self { addr, udp, tcp })
    }

    /// The address served, UDP and TCP alike (with the actual port when bound on 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then stops: the UDP socket and the TCP listener
    /// are closed when this returns. Fails early if a loop stops on its own.
    pub async fn run_until<F: Future>(mut self, shutdown: F) -> Result<(), DnsError> {
        let addr = self.addr;
        tokio::select! {
            udp = &mut self.udp => {
                // The loop only returns on an unrecoverable socket error (or a panic).
                let source = match udp {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => io::Error::other("the udp loop ended"),
                    Err(e) => io::Error::other(e),
                };
                Err(DnsError::ServeUdp { addr, source })
            }
            tcp = &mut self.tcp => {
                let source = match tcp {
                    Ok(()) => io::Error::other("the tcp loop ended"),
                    Err(e) => io::Error::other(e),
                };
                Err(DnsError::ServeTcp { addr, source })
            }
            _ = shutdown => {
                self.udp.abort();
                self.tcp.abort();
                // An aborted task drops its sockets before its handle completes.
                let _ = (&mut self.udp).await;
                let _ = (&mut self.tcp).await;
                Ok(())
            }
        }
    }
}

/// Binds a UDP socket on `bind` and a TCP listener on the same address and port.
async fn bind_pair(bind: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let attempts = if bind.port() == 0 {
        EPHEMERAL_BIND_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(bind)
            .await
            .map_err(|source| DnsError::BindUdp { addr: bind, source })?;
        let addr = udp
            .local_addr()
            .map_err(|source| DnsError::LocalAddr { addr: bind, source })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, addr)),
            // The ephemeral port is free for UDP but not for TCP: try another one.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < attempts => {
                attempt += 1;
            }
            Err(source) => return Err(DnsError::BindTcp { addr, source }),
        }
    }
}

/// Serves `zones` on `bind` (UDP and TCP) until `shutdown` completes.
pub async fn serve<F: Future>(bind: SocketAddr, zones: Zones, shutdown: F) -> Result<(), DnsError> {
    DnsServer::bind(bind, zones)
        .await?
        .run_until(shutdown)
        .await
}

/// Receives UDP queries on `socket` and answers each one before reading the next: no
/// task, channel or copy of the socket per packet, unlike hickory's UDP listener (which
/// this otherwise follows: see [`answer_message`]). Returns only on an unrecoverable
/// socket error.
async fn serve_udp(socket: UdpSocket, handler: Handler) -> io::Result<()> {
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; UDP_RECEIVE_BUFFER];
    loop {
        let (len, src) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Err(e)
            }
            // Transient (an ICMP error reported on the socket, an interrupted call).
            Err(_) => continue,
        };
        if !answerable(src) {
            continue;
        }
        let responder = UdpResponder {
            socket: Arc::clone(&socket),
            dst: src,
        };
        answer_message(&handler, &buffer[..len], src, Protocol::Udp, responder).await;
    }
}

/// Whether a response can be sent to `src` (as hickory checks): not port 0, not an
/// unspecified, broadcast or multicast address.
fn answerable(src: SocketAddr) -> bool {
    let ip_ok = match src.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    src.port() != 0 && ip_ok
}

/// Accepts TCP connections on `listener` and serves each on a task of its own, holding
/// at most `max_connections` (at least 1): past that, the connection idle the longest is
/// closed to make room.
///
/// An accept error a client caused (it gave up before the accept) is skipped. Any other
/// (out of file descriptors, most often) leaves the connection waiting in the backlog, so
/// retrying at once would fail at once, in a loop: instead the idlest connection is
/// closed, freeing its descriptor, or, with none open, accepting pauses for
/// [`TCP_ACCEPT_BACKOFF`]. Never returns.
async fn serve_tcp(listener: TcpListener, handler: Handler, max_connections: usize) {
    let mut connections = Connections::default();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => {
                if !connections.close_idlest().await {
                    tokio::time::sleep(TCP_ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        connections.forget_ended();
        if connections.open.len() >= max_connections {
            connections.close_idlest().await;
        }
        connections.serve(stream, src, handler.clone());
    }
}

/// The TCP connections being served; each one's task is aborted when this is dropped.
#[derive(Default)]
struct Connections {
    open: Vec<Connection>,
}

/// One TCP connection's task and when it last received or answered a query.
struct Connection {
    task: JoinHandle<()>,
    last_active: LastActive,
}

impl Connections {
    /// Serves `stream` on a task of its own.
    fn serve(&mut self, stream: TcpStream, src: SocketAddr, handler: Handler) {
        let last_active = LastActive::now();
        let task = tokio::spawn(serve_connection(stream, src, handler, last_active.clone()));
        self.open.push(Connection { task, last_active });
    }

    /// Forgets the connections whose task ended (closed by the client, or idle too long).
    fn forget_ended(&mut self) {
        self.open.retain(|c| !c.task.is_finished());
    }

    /// Closes the connection idle the longest and returns once its socket is closed;
    /// false when none is open.
    async fn close_idlest(&mut self) -> bool {
        self.forget_ended();
        let Some(idlest) = (0..self.open.len()).min_by_key(|&i| self.open[i].last_active.get())
        else {
            return false;
        };
        let connection = self.open.swap_remove(idlest);
        connection.task.abort();
        // An aborted task drops its future, and so its socket, before its handle completes.
        let _ = connection.task.await;
        true
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        for connection in &self.open {
            connection.task.abort();
        }
    }
}

/// When a TCP connection last received or answered a query, shared between its task and
/// the accept loop.
#[derive(Clone)]
struct LastActive(Arc<Mutex<Instant>>);

impl LastActive {
    fn now() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    fn touch(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn get(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Answers the queries of one TCP connection in order, one at a time (as hickory does, so
/// that one client never gets more than one query's worth of work), until the client
/// closes it, leaves it idle (or a query half sent) for [`TCP_IDLE_TIMEOUT`], or does not
/// take an answer within that time.
async fn serve_connection(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: Handler,
    last_active: LastActive,
) {
    let mut message = Vec::new();
    loop {
        let read = tokio::time::timeout(TCP_IDLE_TIMEOUT, read_frame(&mut stream, &mut message));
        if !matches!(read.await, Ok(Ok(()))) {
            return;
        }
        last_active.touch();
        let responder = TcpResponder::default();
        answer_message(&handler, &message, src, Protocol::Tcp, responder.clone()).await;
        if let Some(frame) = responder.take() {
            let write = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&frame));
            if !matches!(write.await, Ok(Ok(()))) {
                return;
            }
            last_active.touch();
        }
    }
}

/// Reads one DNS message with its two-byte length prefix (RFC 1035 section 4.2.2) into
/// `message`.
async fn read_frame(stream: &mut TcpStream, message: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    message.resize(usize::from(u16::from_be_bytes(len)), 0);
    stream.read_exact(message).await?;
    Ok(())
}

/// Answers one DNS message through `responder`, as hickory's listeners do, or drops it:
/// a message under 12 bytes is not DNS, and a response (QR set) is never answered, since
/// answering could start a loop between two servers or reflect traffic onto the address
/// a forged packet names. A query that does not parse after its header gets FORMERR.
async fn answer_message<R: ResponseHandler>(
    handler: &Handler,
    bytes: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    mut responder: R,
) {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    let request = match Request::from_bytes(bytes.to_vec(), src, protocol) {
        Ok(request) => request,
        Err(_) => {
            // No questions: reading none of them cannot fail.
            let queries =
                Queries::read(&mut BinDecoder::new(&[]), 0).unwrap_or_else(|_| unreachable!());
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            // A failed send is the client's loss only.
            let _ = responder.send_response(response).await;
            return;
        }
    };
    handler
        .handle_request::<_, TokioTime>(&request, responder)
        .await;
}

/// `response` encoded in at most `max_size` bytes, or, as hickory does when it does not
/// fit or cannot be encoded, a bare SERVFAIL.
fn encode_response<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    max_size: u16,
) -> Result<(ResponseInfo, Vec<u8>), NetError> {
    let id = response.metadata().id;
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    if let Ok(info) = response.destructive_emit(&mut encoder) {
        return Ok((info, bytes));
    }
    bytes.clear();
    let mut encoder = BinEncoder::new(&mut bytes);
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    header.emit(&mut encoder)?;
    Ok((ResponseInfo::from(header), bytes))
}

/// Sends a response straight to the client's address on the shared UDP socket.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // Without EDNS, RFC 1035 section 4.2.1 limits a UDP message to 512 bytes.
        let max_size = response.edns().map_or(512, |edns| edns.max_payload());
        let (info, bytes) = encode_response(response, max_size)?;
        self.socket.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}

/// Keeps the length-prefixed response for the connection's loop to write: the loop owns
/// the stream, and hickory's handler wants a responder it can own.
#[derive(Clone, Default)]
struct TcpResponder {
    frame: Arc<Mutex<Option<Vec<u8>>>>,
}

impl TcpResponder {
    /// The response frame, if one was sent.
    fn take(&self) -> Option<Vec<u8>> {
        self.frame
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for TcpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode_response(response, u16::MAX)?;
        let len = u16::try_from(bytes.len())
            .map_err(|_| NetError::from("the response does not fit a tcp frame"))?;
        let mut frame = Vec::with_capacity(bytes.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&bytes);
        *self.frame.lock().unwrap_or_else(PoisonError::into_inner) = Some(frame);
        Ok(info)
    }
}
/// The hickory request handler: answers the first question from [`resolve`].
#[derive(Clone)]
struct Handler {
    zones: Arc<Zones>,
}

impl Handler {
    /// The response code, the authoritative flag and the answer records for a query.
    fn answer(&self, request: &Request) -> (ResponseCode, bool, Vec<Record>) {
        if request.metadata.op_code != OpCode::Query {
            return (ResponseCode::NotImp, false, Vec::new());
        }
        let Some(query) = request.queries.queries().first() else {
            return (ResponseCode::FormErr, false, Vec::new());
        };
        let qname = query.original().name();
        let text = name_to_text(qname);
        // The IPv4 answer tells whether the name is in a zone (as `in_zone`) and is the
        // answer of an A query: resolved once for the common case.
        let v4 = resolve(&text, Family::V4, &self.zones);
        if query.query_class() != DNSClass::IN || v4 == Answer::Refused {
            return (ResponseCode::Refused, false, Vec::new());
        }
        let answer = match query.query_type() {
            RecordType::A => v4,
            RecordType::AAAA => resolve(&text, Family::V6, &self.zones),
            _ => return (ResponseCode::NoError, true, Vec::new()),
        };
        let records = match answer {
            Answer::Address(IpAddr::V4(ip)) => {
                vec![Record::from_rdata(qname.clone(), TTL, RData::A(A(ip)))]
            }
            Answer::Address(IpAddr::V6(ip)) => {
                vec![Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::AAAA(AAAA(ip)),
                )]
            }
            Answer::NoData | Answer::Refused => Vec::new(),
        };
        (ResponseCode::NoError, true, records)
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);

        // EDNS: echo an OPT record; we only speak version 0 (RFC 6891 section 6.1.3).
        let response_edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            ours.set_version(0);
            ours
        });
        let bad_version = request.edns.as_ref().is_some_and(|edns| edns.version() > 0);

        let (code, authoritative, records) = if bad_version {
            (ResponseCode::BADVERS, false, Vec::new())
        } else {
            self.answer(request)
        };
        metadata.response_code = code;
        metadata.authoritative = authoritative;

        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            records.iter(),
            [],
            [],
            [],
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Serves `zones` on `bind` in the foreground until SIGINT or SIGTERM (for `sandbox dns
/// serve`), calling `on_bound` with the address once it listens (how the background
/// server records where it answers).
///
/// The server runs on a single-threaded runtime on a thread of its own rather than on the
/// caller's multi-thread runtime: its UDP loop is one task, and with one worker it used
/// 7.2 instead of 10.2 µs of CPU per query in `bench/dns.sh` (no wake-ups of idle
/// workers), with the same memory.
pub async fn run_foreground(
    bind: SocketAddr,
    zones: Zones,
    on_bound: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), DnsError> {
    let runtime_error = move |source| DnsError::Runtime { addr: bind, source };
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sandbox-dns".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(serve_until_signal(bind, zones, on_bound)),
                Err(source) => Err(runtime_error(source)),
            };
            // The receiver is gone only when the caller stopped waiting.
            let _ = done.send(result);
        })
        .map_err(runtime_error)?;
    result.await.unwrap_or_else(|_| {
        Err(runtime_error(io::Error::other(
            "the dns server thread panicked",
        )))
    })
}

/// Serves `zones` on `bind` on the current runtime until SIGINT or SIGTERM.
async fn serve_until_signal(
    bind: SocketAddr,
    zones: Zones,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), DnsError> {
    let server = DnsServer::bind(bind, zones).await?;
    let addr = server.local_addr();
    on_bound(addr);
    let mut signal_error = None;
    server
        .run_until(async {
            #[cfg(unix)]
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            #[cfg(unix)]
            if let Ok(mut term) = term {
                tokio::select! {
                    _ = term.recv() => return,
                    r = tokio::signal::ctrl_c() => {
                        if let Err(e) = r {
                            signal_error = Some(e);
                        }
                        return;
                    }
                }
            }
            if let Err(e) = tokio::signal::ctrl_c().await {
                signal_error = Some(e);
            }
        })
        .await?;
    match signal_error {
        Some(source) => Err(DnsError::Signal { addr, source }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hickory_proto::op::{Message, MessageType, Query};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    const V4: Family = Family::V4;
    const V6: Family = Family::V6;

    fn v4(s: &str) -> Answer {
        Answer::Address(IpAddr::V4(s.parse().unwrap()))
    }

    fn v6(s: &str) -> Answer {
        Answer::Address(IpAddr::V6(s.parse().unwrap()))
    }

    fn custom_zones() -> Zones {
        Zones::new()
            .with_custom("sandbox.test", "192.168.49.2".parse().unwrap())
            .with_custom("*.Deep.Sandbox.Test.", "10.9.9.9".parse().unwrap())
            .with_custom(".v6.example", "fd00::2".parse().unwrap())
            .with_custom("demo.127.0.0.1.nip.io", "10.1.1.1".parse().unwrap())
    }

    #[test]
    fn resolves_every_name_form() {
        let zones = custom_zones();
        let cases: &[(&str, Family, Answer)] = &[
            // nip.io, IPv4 forms
            ("app.10.0.0.1.nip.io", V4, v4("10.0.0.1")),
            ("app-10-0-0-1.nip.io", V4, v4("10.0.0.1")),
            ("10-0-0-1.nip.io", V4, v4("10.0.0.1")),
            ("app.10-0-0-1.nip.io", V4, v4("10.0.0.1")),
            ("app-10.0.0.1.nip.io", V4, v4("10.0.0.1")),
            ("app-7f000001.nip.io", V4, v4("127.0.0.1")),
            ("7f000001.nip.io", V4, v4("127.0.0.1")),
            ("a.7F000001.nip.io", V4, v4("127.0.0.1")),
            ("c0a83102.nip.io", V4, v4("192.168.49.2")),
            ("10.0.0.1.nip.io", V4, v4("10.0.0.1")),
            ("a.b.c.127.0.0.1.nip.io", V4, v4("127.0.0.1")),
            ("demoapp-puma.192.168.49.2.nip.io", V4, v4("192.168.49.2")),
            ("x.y-z.255.255.255.255.nip.io", V4, v4("255.255.255.255")),
            ("0.0.0.0.nip.io", V4, v4("0.0.0.0")),
            ("app.010.001.000.001.nip.io", V4, v4("10.1.0.1")),
            ("1.2.3.4.5.nip.io", V4, v4("2.3.4.5")),
            // case and trailing dot
            ("APP.10.0.0.1.NIP.IO", V4, v4("10.0.0.1")),
            ("App-7F000001.Nip.Io.", V4, v4("127.0.0.1")),
            ("app.10.0.0.1.nip.io.", V4, v4("10.0.0.1")),
            // sslip.io, IPv4 forms
            ("app.10.0.0.1.sslip.io", V4, v4("10.0.0.1")),
            ("127-0-0-1.sslip.io", V4, v4("127.0.0.1")),
            ("www.192-168-0-1.sslip.io", V4, v4("192.168.0.1")),
            ("7f000001.sslip.io.", V4, v4("127.0.0.1")),
            // sslip.io, IPv6 forms
            ("--1.sslip.io", V6, v6("::1")),
            ("2001-db8--1.sslip.io", V6, v6("2001:db8::1")),
            ("app.2001-DB8--1.SSLIP.IO.", V6, v6("2001:db8::1")),
            ("app-fe80--1.sslip.io", V6, v6("fe80::1")),
            ("a.b.1-2-3-4-5-6-7-8.sslip.io", V6, v6("1:2:3:4:5:6:7:8")),
            // the other family of an address name: no data
            ("app.10.0.0.1.nip.io", V6, Answer::NoData),
            ("app.10.0.0.1.sslip.io", V6, Answer::NoData),
            ("--1.sslip.io", V4, Answer::NoData),
            ("2001-db8--1.nip.io", V6, Answer::NoData), // IPv6 form is sslip.io only
            // in the zone, no address: no data
            ("nip.io", V4, Answer::NoData),
            ("nip.io.", V6, Answer::NoData),
            ("sslip.io", V4, Answer::NoData),
            ("app.nip.io", V4, Answer::NoData),
            ("10.0.0.1.app.nip.io", V4, Answer::NoData),
            ("256.0.0.1.nip.io", V4, Answer::NoData),
            ("1.2.3.nip.io", V4, Answer::NoData),
            ("1234.0.0.1.nip.io", V4, Answer::NoData),
            ("app-7f00001.nip.io", V4, Answer::NoData),
            ("app-7f0000011.nip.io", V4, Answer::NoData),
            ("app-7g000001.nip.io", V4, Answer::NoData),
            ("app..nip.io", V4, Answer::NoData),
            ("1-2.sslip.io", V6, Answer::NoData),
            ("app.sslip.io", V6, Answer::NoData),
            // localhost
            ("localhost", V4, v4("127.0.0.1")),
            ("localhost.", V6, v6("::1")),
            ("app.LOCALHOST", V4, v4("127.0.0.1")),
            ("a.b.localhost.", V6, v6("::1")),
            // custom domains
            ("sandbox.test", V4, v4("192.168.49.2")),
            ("app.sandbox.test.", V4, v4("192.168.49.2")),
            ("A.B.Sandbox.Test", V4, v4("192.168.49.2")),
            ("sandbox.test", V6, Answer::NoData),
            ("deep.sandbox.test", V4, v4("10.9.9.9")),
            ("x.deep.sandbox.test", V4, v4("10.9.9.9")),
            ("v6.example", V6, v6("fd00::2")),
            ("app.v6.example", V4, Answer::NoData),
            ("demo.127.0.0.1.nip.io", V4, v4("10.1.1.1")),
            ("x.demo.127.0.0.1.nip.io", V4, v4("10.1.1.1")),
            ("other.127.0.0.1.nip.io", V4, v4("127.0.0.1")),
            // foreign names: refused
            ("example.com", V4, Answer::Refused),
            ("example.com.", V6, Answer::Refused),
            ("10.0.0.1.example.com", V4, Answer::Refused),
            ("xnip.io", V4, Answer::Refused),
            ("10.0.0.1.xnip.io", V4, Answer::Refused),
            ("nip.io.evil.com", V4, Answer::Refused),
            ("io", V4, Answer::Refused),
            ("notlocalhost", V4, Answer::Refused),
            ("localhost.com", V4, Answer::Refused),
            ("xsandbox.test", V4, Answer::Refused),
            ("test", V4, Answer::Refused),
            ("", V4, Answer::Refused),
            (".", V4, Answer::Refused),
        ];
        for (name, family, want) in cases {
            assert_eq!(
                resolve(name, *family, &zones),
                *want,
                "resolve({name:?}, {family:?})"
            );
        }
    }

    #[test]
    fn empty_custom_suffix_never_matches_everything() {
        let zones = Zones::new()
            .with_custom("", "10.0.0.1".parse().unwrap())
            .with_custom(".", "10.0.0.1".parse().unwrap())
            .with_custom("*.", "10.0.0.1".parse().unwrap());
        assert_eq!(resolve("example.com", V4, &zones), Answer::Refused);
        assert!(!in_zone("example.com", &zones));
        assert!(in_zone("app.10.0.0.1.nip.io", &zones));
    }

    #[test]
    fn wire_names_become_text_without_escapes() {
        // hickory's `Name::from_ascii` rejects a leading dash, but the wire accepts it.
        let name = Name::from_labels(vec![&b"--1"[..], b"SSLIP", b"io"]).unwrap();
        assert_eq!(name_to_text(&name), "--1.SSLIP.io.");
        // A dot inside a label is not a label separator.
        let name =
            Name::from_labels(vec![&b"app.10"[..], b"0", b"0", b"1", b"nip", b"io"]).unwrap();
        assert_eq!(name_to_text(&name), "app?10.0.0.1.nip.io.");
        let name = Name::from_labels(vec![&b"1\x002"[..], b"nip", b"io"]).unwrap();
        assert_eq!(
            resolve(&name_to_text(&name), V4, &Zones::new()),
            Answer::NoData
        );
    }

    // ----- the real server, over real sockets -----

    /// A server on 127.0.0.1:0 with the test zones, and the sender that stops it.
    async fn start() -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), custom_zones())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (addr, stop, task)
    }

    async fn stop(stop: oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) {
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        message
    }

    /// Upper bound on waiting for a reply, so that a broken server fails the test instead
    /// of hanging it (not a synchronisation device).
    const REPLY_DEADLINE: Duration = Duration::from_secs(10);

    /// Sends `message` over `socket` and returns the reply with the same id, skipping
    /// replies to earlier packets.
    async fn udp_exchange(socket: &UdpSocket, message: &Message) -> Message {
        socket.send(&message.to_vec().unwrap()).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = tokio::time::timeout(REPLY_DEADLINE, socket.recv(&mut buf))
                .await
                .expect("no udp reply")
                .unwrap();
            if let Ok(reply) = Message::from_vec(&buf[..n]) {
                if reply.metadata.id == message.metadata.id {
                    return reply;
                }
            }
        }
    }

    async fn udp_socket(server: SocketAddr) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(server).await.unwrap();
        socket
    }

    async fn tcp_send_frame(stream: &mut TcpStream, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
        stream.write_all(&len).await.unwrap();
        stream.write_all(bytes).await.unwrap();
    }

    async fn tcp_read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(REPLY_DEADLINE, stream.read_exact(&mut len))
            .await
            .expect("no tcp reply");
        if read.is_err() {
            return None; // closed by the server
        }
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(REPLY_DEADLINE, stream.read_exact(&mut body))
            .await
            .expect("no tcp reply body")
            .ok()?;
        Some(body)
    }

    async fn tcp_exchange(stream: &mut TcpStream, message: &Message) -> Message {
        tcp_send_frame(stream, &message.to_vec().unwrap()).await;
        let body = tcp_read_frame(stream).await.expect("tcp connection closed");
        Message::from_vec(&body).unwrap()
    }

    fn only_address(reply: &Message) -> IpAddr {
        assert_eq!(reply.answers.len(), 1, "{reply:?}");
        assert_eq!(reply.answers[0].ttl, TTL);
        reply.answers[0].data.ip_addr().unwrap()
    }

    /// Checks the replies every transport must give.
    fn check_standard_replies(replies: &[(Message, Message)]) {
        for (asked, reply) in replies {
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(reply.metadata.id, asked.metadata.id);
            assert!(!reply.metadata.recursion_available);
            assert_eq!(reply.queries, asked.queries);
        }
        // A
        let a = &replies[0].1;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(only_address(a), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(a.answers[0].name, *replies[0].0.queries[0].name());
        // AAAA
        let aaaa = &replies[1].1;
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.metadata.authoritative);
        assert_eq!(only_address(aaaa), "2001:db8::1".parse::<IpAddr>().unwrap());
        // REFUSED for a foreign name
        let refused = &replies[2].1;
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(!refused.metadata.authoritative);
        assert!(refused.answers.is_empty());
        // TXT of an in-zone name: no data
        let txt = &replies[3].1;
        assert_eq!(txt.metadata.response_code, ResponseCode::NoError);
        assert!(txt.metadata.authoritative);
        assert!(txt.answers.is_empty());
        // AAAA of an IPv4 name: no data
        let nodata = &replies[4].1;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.metadata.authoritative);
        assert!(nodata.answers.is_empty());
    }

    fn standard_queries() -> Vec<Message> {
        vec![
            query(1, "App.10.0.0.1.Nip.Io.", RecordType::A),
            query(2, "app.2001-db8--1.sslip.io.", RecordType::AAAA),
            query(3, "example.com.", RecordType::A),
            query(4, "app.10.0.0.1.nip.io.", RecordType::TXT),
            query(5, "app-10-0-0-1.nip.io.", RecordType::AAAA),
        ]
    }

    #[tokio::test]
    async fn answers_over_udp() {
        let (addr, stop_tx, task) = start().await;
        let socket = udp_socket(addr).await;
        let mut replies = Vec::new();
        for asked in standard_queries() {
            let reply = udp_exchange(&socket, &asked).await;
            replies.push((asked, reply));
        }
        check_standard_replies(&replies);

        // ANY of an in-zone name: no data; custom domain; localhost.
        let any = udp_exchange(&socket, &query(6, "app.10.0.0.1.nip.io.", RecordType::ANY)).await;
        assert_eq!(any.metadata.response_code, ResponseCode::NoError);
        assert!(any.answers.is_empty());
        let custom = udp_exchange(&socket, &query(7, "web.sandbox.test.", RecordType::A)).await;
        assert_eq!(
            only_address(&custom),
            "192.168.49.2".parse::<IpAddr>().unwrap()
        );
        let local = udp_exchange(&socket, &query(8, "app.localhost.", RecordType::AAAA)).await;
        assert_eq!(only_address(&local), "::1".parse::<IpAddr>().unwrap());
        let mut dashed = query(15, "x.nip.io.", RecordType::AAAA);
        dashed.queries[0].set_name(Name::from_labels(vec![&b"--1"[..], b"sslip", b"io"]).unwrap());
        let dashed = udp_exchange(&socket, &dashed).await;
        assert_eq!(only_address(&dashed), "::1".parse::<IpAddr>().unwrap());
        let apex = udp_exchange(&socket, &query(9, "nip.io.", RecordType::A)).await;
        assert_eq!(apex.metadata.response_code, ResponseCode::NoError);
        assert!(apex.metadata.authoritative);
        assert!(apex.answers.is_empty());
        // Not the IN class: refused.
        let mut chaos = query(10, "app.10.0.0.1.nip.io.", RecordType::A);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let chaos = udp_exchange(&socket, &chaos).await;
        assert_eq!(chaos.metadata.response_code, ResponseCode::Refused);

        stop(stop_tx, task).await;
    }

    #[tokio::test]
    async fn answers_over_tcp() {
        let (addr, stop_tx, task) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut replies = Vec::new();
        // Several queries on one connection.
        for asked in standard_queries() {
            let reply = tcp_exchange(&mut stream, &asked).await;
            replies.push((asked, reply));
        }
        check_standard_replies(&replies);
        stop(stop_tx, task).await;
    }

    #[tokio::test]
    async fn answers_the_first_of_several_questions() {
        let (addr, stop_tx, task) = start().await;
        let mut asked = query(11, "a.10.1.2.3.nip.io.", RecordType::A);
        asked.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        let socket = udp_socket(addr).await;
        let reply = udp_exchange(&socket, &asked).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(only_address(&reply), "10.1.2.3".parse::<IpAddr>().unwrap());

        let mut asked = query(12, "example.com.", RecordType::A);
        asked.add_query(Query::query(
            Name::from_ascii("a.10.1.2.3.nip.io.").unwrap(),
            RecordType::A,
        ));
        let reply = udp_exchange(&socket, &asked).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.answers.is_empty());
        stop(stop_tx, task).await;
    }

    #[tokio::test]
    async fn echoes_edns_and_rejects_unknown_edns_versions() {
        let (addr, stop_tx, task) = start().await;
        let socket = udp_socket(addr).await;
        let mut asked = query(13, "a.10.1.2.3.nip.io.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        asked.set_edns(edns);
        let reply = udp_exchange(&socket, &asked).await;
        assert_eq!(only_address(&reply), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));

        let mut asked = query(14, "a.10.1.2.3.nip.io.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        asked.set_edns(edns);
        let reply = udp_exchange(&socket, &asked).await;
        // BADVERS shares its value (16) with BADSIG, which is what the decoder names it.
        assert_eq!(
            u16::from(reply.metadata.response_code),
            u16::from(ResponseCode::BADVERS)
        );
        assert!(reply.edns.is_some());
        assert!(reply.answers.is_empty());
        stop(stop_tx, task).await;
    }

    /// A valid header (id 0xbeef, one question) followed by a cut-off question.
    fn truncated_question() -> Vec<u8> {
        let mut bytes = query(0xbeef, "app.10.0.0.1.nip.io.", RecordType::A)
            .to_vec()
            .unwrap();
        bytes.truncate(bytes.len() - 7);
        bytes
    }

    /// Bytes that are not DNS: random-looking junk, a truncated header, a header
    /// promising more questions than the packet holds, a label pointer loop.
    fn garbage() -> Vec<Vec<u8>> {
        let mut state = 0x2545_f491_u32;
        let junk: Vec<u8> = (0..300)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect();
        let pointer_loop = vec![
            0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
            0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, // name pointing at itself
        ];
        let many_questions = vec![
            0xab, 0xce, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        vec![
            junk,
            vec![0x12, 0x34, 0x01],
            vec![0xff; 11],
            truncated_question(),
            pointer_loop,
            many_questions,
            vec![0],
        ]
    }

    #[tokio::test]
    async fn survives_garbage_over_udp() {
        let (addr, stop_tx, task) = start().await;
        let socket = udp_socket(addr).await;
        for bytes in garbage() {
            socket.send(&bytes).await.unwrap();
        }
        // An empty datagram too.
        socket.send(&[]).await.unwrap();

        // A malformed question with a readable header gets FORMERR.
        socket.send(&truncated_question()).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let formerr = loop {
            let n = tokio::time::timeout(REPLY_DEADLINE, socket.recv(&mut buf))
                .await
                .expect("no formerr reply")
                .unwrap();
            if let Ok(reply) = Message::from_vec(&buf[..n]) {
                if reply.metadata.id == 0xbeef {
                    break reply;
                }
            }
        };
        assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);

        let reply = udp_exchange(&socket, &query(21, "a.10.0.0.9.nip.io.", RecordType::A)).await;
        assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());
        stop(stop_tx, task).await;
    }

    #[tokio::test]
    async fn survives_garbage_over_tcp() {
        let (addr, stop_tx, task) = start().await;
        let valid = query(31, "a.10.0.0.9.nip.io.", RecordType::A);

        // Junk frames (under 12 bytes: dropped; unreadable questions: FORMERR) keep the
        // connection usable.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        tcp_send_frame(&mut stream, &[0x12, 0x34, 0x01]).await;
        tcp_send_frame(&mut stream, &truncated_question()).await;
        let formerr = Message::from_vec(&tcp_read_frame(&mut stream).await.unwrap()).unwrap();
        assert_eq!(formerr.metadata.id, 0xbeef);
        assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
        let reply = tcp_exchange(&mut stream, &valid).await;
        assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());

        // Each kind of garbage on its own connection, then a valid query on a new one.
        for bytes in garbage() {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            tcp_send_frame(&mut stream, &bytes).await;
            drop(stream);
        }
        // A zero-length frame: hickory 0.26 stalls that connection until more bytes
        // arrive (or the idle timeout), then closes it, losing the query that followed.
        // Either outcome is fine here, as long as the server goes on.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&[0, 0]).await.unwrap();
        tcp_send_frame(&mut stream, &valid.to_vec().unwrap()).await;
        if let Some(body) = tcp_read_frame(&mut stream).await {
            let reply = Message::from_vec(&body).unwrap();
            assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());
        }
        // A length prefix promising more than is sent, then a half-close.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&[0x01, 0x00, 0xde, 0xad]).await.unwrap();
        stream.shutdown().await.unwrap();
        assert!(tcp_read_frame(&mut stream).await.is_none());
        // Unframed junk.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&garbage()[0]).await.unwrap();
        drop(stream);

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let reply = tcp_exchange(&mut stream, &valid).await;
        assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());
        // And UDP still works too.
        let socket = udp_socket(addr).await;
        let reply = udp_exchange(&socket, &valid).await;
        assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());
        stop(stop_tx, task).await;
    }

    /// How long a test waits to see that no answer comes: a check of silence, not a wait
    /// for something to happen.
    const SILENCE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn drops_responses_without_answering() {
        let (addr, stop_tx, task) = start().await;
        // A well-formed response, and one whose question is cut off (as a query, FORMERR).
        let mut response = query(41, "app.10.0.0.1.nip.io.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        let response = response.to_vec().unwrap();
        let mut cut = truncated_question();
        cut[2] |= 0x80; // QR
        let next = query(42, "a.10.0.0.9.nip.io.", RecordType::A);

        let socket = udp_socket(addr).await;
        socket.send(&response).await.unwrap();
        socket.send(&cut).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let heard = tokio::time::timeout(SILENCE, socket.recv(&mut buf)).await;
        assert!(heard.is_err(), "a response was answered: {heard:?}");
        // Datagrams are answered in order: the next one to arrive answers the next query.
        socket.send(&next.to_vec().unwrap()).await.unwrap();
        let n = tokio::time::timeout(REPLY_DEADLINE, socket.recv(&mut buf))
            .await
            .expect("no udp reply")
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.id, 42);
        assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());

        // Over TCP too: the first frame back answers the query after the responses.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        tcp_send_frame(&mut stream, &response).await;
        tcp_send_frame(&mut stream, &cut).await;
        let reply = tcp_exchange(&mut stream, &next).await;
        assert_eq!(reply.metadata.id, 42);
        stop(stop_tx, task).await;
    }

    #[tokio::test]
    async fn tcp_past_the_cap_closes_the_connection_idle_longest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Handler {
            zones: Arc::new(Zones::new()),
        };
        let server = tokio::spawn(serve_tcp(listener, handler, 3));
        let asked = query(51, "a.10.0.0.9.nip.io.", RecordType::A);
        let mut open = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            tcp_exchange(&mut stream, &asked).await; // accepted and served
            open.push(stream);
        }
        let [mut first, mut second, mut third]: [TcpStream; 3] = open.try_into().unwrap();
        // The first one becomes the most recently active: the second is now the idlest.
        tcp_exchange(&mut first, &asked).await;

        // A fourth is served once the idlest is closed.
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let reply = tcp_exchange(&mut fourth, &asked).await;
        assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());
        assert!(
            tcp_read_frame(&mut second).await.is_none(),
            "the idlest connection is still open"
        );
        for stream in [&mut first, &mut third, &mut fourth] {
            let reply = tcp_exchange(stream, &asked).await;
            assert_eq!(only_address(&reply), "10.0.0.9".parse::<IpAddr>().unwrap());
        }
        server.abort();
    }

    #[tokio::test]
    async fn serve_stops_on_shutdown_and_bind_errors_name_the_address() {
        // `serve` returns once the shutdown future completes.
        serve("127.0.0.1:0".parse().unwrap(), Zones::new(), async {})
            .await
            .unwrap();

        // Binding a port already taken fails with the address in the error.
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), Zones::new())
            .await
            .unwrap();
        let taken = server.local_addr();
        let err = DnsServer::bind(taken, Zones::new()).await.unwrap_err();
        assert!(
            matches!(err, DnsError::BindUdp { addr, .. } if addr == taken),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("cannot bind the dns udp socket on {taken}")
        );
        assert!(std::error::Error::source(&err).is_some());
        drop(server);
    }
}
