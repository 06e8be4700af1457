//! The URLs `up` prints, checked the way a user reaches them before `up` returns: an
//! Ingress URL through the published HTTPS port on 127.0.0.1 with its host as SNI and
//! `Host`, a node port by connecting to it. Workloads can be ready while kube-proxy has not
//! written a node port's rules yet, or while the ingress controller still answers its own
//! `404 page not found` for a host it has not loaded (or serves its default certificate).
//!
//! Telling the controller's answer from an app's: sandbox's Traefik adds the response
//! header [`ROUTED_HEADER`] to every response of a router (an entry-point middleware,
//! profiles/addons/ingress.yaml), and never to its own "no route" 404. So any answer that
//! carries it is the app's, whatever its status, but one: the controller's own 502, 503 or
//! 504 when it cannot reach the backend (a pod Ready before its server listens), which
//! goes through the router and so carries the header too. Traefik writes those with the
//! status text alone as the body (`Bad Gateway`), which is what tells them apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::urls::Url;

/// The header sandbox's ingress controller adds to every routed response.
pub const ROUTED_HEADER: &str = "x-sandbox-routed";
/// Subject common name of the certificate Traefik serves for a host it has no certificate
/// for (yet).
const DEFAULT_CERT_CN: &str = "TRAEFIK DEFAULT CERT";
/// Pause between two checks of a URL that does not answer yet.
const RETRY: Duration = Duration::from_millis(50);
/// Bound of one check (connect, handshake, response head), once a URL has been tried a few
/// times (see [`attempt_limit`]).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of a URL's first check: the next ones double it up to [`CHECK_TIMEOUT`].
const FIRST_CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a node port's server may take to answer a request before the check tries again.
const SILENCE: Duration = Duration::from_secs(1);
/// How long a node port may accept connections without ever answering before it counts as
/// answered anyway: a server of a protocol where the client speaks first and the server
/// stays silent on a request it does not understand.
const SILENT_SERVER: Duration = Duration::from_secs(10);
/// What a node port that accepts but does not answer is reported as.
const SILENT: &str = "accepts connections but does not answer yet";

/// A URL that did not answer through its route in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url} ({kind} {name}) did not answer within {seconds} s: {last}")]
pub struct Unanswered {
    /// The URL.
    pub url: String,
    /// `Ingress`, `NodePort`, ...
    pub kind: String,
    /// `namespace/name` of the object.
    pub name: String,
    /// The deadline.
    pub seconds: u64,
    /// What was last observed.
    pub last: String,
}

/// How one URL is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// An Ingress host: an HTTPS request to `addr` (the published port on the laptop).
    Ingress {
        /// Where the laptop reaches the controller.
        addr: SocketAddr,
        /// The host (SNI and `Host`).
        host: String,
        /// A path the Ingress routes.
        path: String,
        /// Whether the Ingress's own certificate must be served.
        tls: bool,
    },
    /// A node port: a TCP connection to it.
    Port {
        /// The node's address and port.
        addr: SocketAddr,
    },
}

/// The check of each URL (pure): Ingress URLs against `127.0.0.1:<https_port>`, node port
/// URLs at their own address. URLs that are neither are not checked.
pub fn plan(urls: &[Url], https_port: u16) -> Vec<(Url, Check)> {
    plan_at(urls, https_port, &|_| {
        Some(std::net::IpAddr::from([127, 0, 0, 1]))
    })
}

/// [`plan`], with each Ingress host's address given by `ingress_at` (an existing cluster's
/// ingress); a host it gives none for is not checked.
pub fn plan_at(
    urls: &[Url],
    https_port: u16,
    ingress_at: &dyn Fn(&str) -> Option<std::net::IpAddr>,
) -> Vec<(Url, Check)> {
    urls.iter()
        .filter_map(|u| {
            let rest = u.url.split_once("://")?.1;
            let authority = rest.split('/').next()?;
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            // a name goes through the ingress (an Ingress host, a Service's name through it);
            // an address is a port of its own (a relayed loopback port)
            let check = if u.kind == "Ingress" || host.parse::<std::net::IpAddr>().is_err() {
                let host = host.to_string();
                Check::Ingress {
                    addr: SocketAddr::new(ingress_at(&host)?, https_port),
                    host,
                    path: if u.probe.path.is_empty() {
                        "/".into()
                    } else {
                        u.probe.path.clone()
                    },
                    tls: u.probe.tls,
                }
            } else {
                Check::Port {
                    addr: authority.parse().ok()?,
                }
            };
            Some((u.clone(), check))
        })
        .collect()
}

/// The status code and whether [`ROUTED_HEADER`] is present, from a response head.
pub fn parse_head(head: &str) -> Option<(u16, bool)> {
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let routed = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .any(|(name, _)| name.trim().eq_ignore_ascii_case(ROUTED_HEADER));
    Some((status, routed))
}

/// The bound of a URL's check number `attempt` (0 first): short at first, doubling up to
/// [`CHECK_TIMEOUT`]. A route that leads nowhere yet (kube-proxy's rules, or a host port's,
/// still sending to a pod address of before a node restart) makes a connection hang rather
/// than fail: the next try, which goes where the rules lead by then, should not wait 2 s
/// for it; while a slow but working route (a remote cluster) gets the full bound after a
/// few tries.
pub fn attempt_limit(attempt: u32) -> Duration {
    FIRST_CHECK_TIMEOUT
        .saturating_mul(1 << attempt.min(16))
        .min(CHECK_TIMEOUT)
}

/// Checks once, within `limit`: `Ok` when the URL answers through its route, else what was
/// seen.
pub async fn check(
    check: &Check,
    tls: &Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, check_once(check, tls)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", limit.as_secs_f64())),
    }
}

async fn check_once(check: &Check, tls: &Arc<rustls::ClientConfig>) -> Result<(), String> {
    match check {
        Check::Port { addr } => {
            // a request, and any answer to it: an accepted connection alone proves little
            // (kube-proxy holds each node port with a socket of its own, and a Service's
            // rules can still lead where nothing answers)
            let mut tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let request = format!("GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: sandbox\r\n\r\n");
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending a request to {addr}: {e}"))?;
            let mut byte = [0u8; 1];
            match tokio::time::timeout(SILENCE, tcp.read(&mut byte)).await {
                // an answer, a close or a reset: a server decided
                Ok(_) => Ok(()),
                Err(_) => Err(SILENT.to_string()),
            }
        }
        Check::Ingress {
            addr,
            host,
            path,
            tls: own_certificate,
        } => {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            // the request follows the handshake's last record: without this, Nagle holds it
            // for the server's delayed ACK (40 ms)
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host}: {e}"))?;
            let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            if *own_certificate {
                let (_, session) = stream.get_ref();
                let leaf = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .ok_or("no certificate served")?;
                if is_default_certificate(leaf) {
                    return Err(
                        "the ingress controller still serves its default certificate".into(),
                    );
                }
            }
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sandbox\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending the request: {e}"))?;
            let mut answer = read_head(&mut stream).await?;
            if matches!(parse_head(&answer), Some((502..=504, true))) {
                // the body tells the controller's own from the app's: read it (it is short,
                // and the request asked the server to close)
                let mut rest = Vec::new();
                let _ = (&mut stream).take(1024).read_to_end(&mut rest).await;
                answer.push_str(&String::from_utf8_lossy(&rest));
            }
            judge_answer(&answer, host)
        }
    }
}

/// What an answer through the ingress controller says (pure): `Ok` when it is the app's,
/// else why not (the controller's own "no route" 404, or its own 502/503/504 when it
/// cannot reach the backend).
pub fn judge_answer(answer: &str, host: &str) -> Result<(), String> {
    let Some((status, routed)) = parse_head(answer) else {
        return Err(format!("not an HTTP answer: {answer:.60}"));
    };
    let reason = answer
        .lines()
        .next()
        .and_then(|l| l.splitn(3, ' ').nth(2))
        .unwrap_or_default()
        .trim();
    if !routed {
        return Err(format!(
            "the ingress controller answers {status} {reason} (no route to {host} yet)"
        ));
    }
    let own_text = match status {
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return Ok(()),
    };
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.trim());
    if body == Some(own_text) {
        return Err(format!(
            "the ingress controller answers {status} {reason}: it cannot reach {host}'s backend (its server does not listen yet?)"
        ));
    }
    Ok(())
}

/// Reads a response up to the end of its head (at most 16 KiB).
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<String, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            // a server that resets after its answer: what came is enough
            Err(_) if !head.is_empty() => break,
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    if head.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Whether a certificate is the one Traefik serves when it has none for the host.
fn is_default_certificate(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .any(|cn| cn.as_str() == Ok(DEFAULT_CERT_CN))
        })
        .unwrap_or(false)
}

/// A TLS client that accepts any certificate (checks only look at which one is served: a
/// host of the user's own certificate does not chain to sandbox's CA) but verifies the
/// handshake's signatures.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// A certificate verifier that accepts any server certificate and checks the handshake's
/// signatures with its provider's algorithms.
#[derive(Debug)]
pub(crate) struct AnyCertificate(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Waits until every URL answers through its route, checking each pending one every 50 ms,
/// for at most `timeout`; `progress` gets a line whenever what a URL answers changes.
pub async fn wait_all(
    checks: &[(Url, Check)],
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<(), Unanswered> {
    let deadline = Instant::now() + timeout;
    let tls = client_config();
    let waits = checks.iter().map(|(url, check)| {
        let tls = tls.clone();
        async move {
            let mut reported = String::new();
            let mut silent_since: Option<Instant> = None;
            let mut attempt = 0;
            loop {
                let limit = attempt_limit(attempt);
                attempt += 1;
                let last = match self::check(check, &tls, limit).await {
                    Ok(()) => return Ok(()),
                    Err(last) => last,
                };
                if last == SILENT {
                    let since = *silent_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SILENT_SERVER {
                        return Ok(());
                    }
                } else {
                    silent_since = None;
                }
                if Instant::now() >= deadline {
                    return Err(Unanswered {
                        url: url.url.clone(),
                        kind: url.kind.clone(),
                        name: url.name.clone(),
                        seconds: timeout.as_secs(),
                        last,
                    });
                }
                if last != reported {
                    progress(&format!("{}: {last}", url.url));
                    reported = last;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    });
    futures_util::future::try_join_all(waits).await.map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checks_start_short_and_grow_to_the_full_bound() {
        let limits: Vec<u128> = (0..6)
            .map(|n| super::attempt_limit(n).as_millis())
            .collect();
        assert_eq!(limits, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(super::attempt_limit(u32::MAX).as_millis(), 2000);
    }

    use super::*;
    use crate::urls::Probe;

    fn url(kind: &str, name: &str, url: &str, probe: Probe) -> Url {
        Url {
            name: name.into(),
            kind: kind.into(),
            url: url.into(),
            probe,
        }
    }

    #[test]
    fn names_go_through_the_published_port_and_loopback_ports_to_themselves() {
        let urls = [
            url(
                "Ingress",
                "shop/web",
                "https://web.127.0.0.1.nip.io:8443/",
                Probe {
                    path: "/api".into(),
                    tls: true,
                },
            ),
            // a NodePort's HTTP port by name through the ingress
            url(
                "NodePort",
                "shop/web",
                "https://web.shop.127.0.0.1.nip.io:8443/",
                Probe {
                    path: "/".into(),
                    tls: true,
                },
            ),
            // its other ports, relayed to loopback ports
            url(
                "NodePort",
                "shop/db",
                "tcp://127.0.0.1:5432",
                Probe::default(),
            ),
            url(
                "LoadBalancer",
                "shop/admin",
                "https://127.0.0.1:30443/",
                Probe::default(),
            ),
            url("Ingress", "x/y", "not a url", Probe::default()),
        ];
        assert_eq!(
            plan(&urls, 8443)
                .into_iter()
                .map(|(_, c)| c)
                .collect::<Vec<_>>(),
            [
                Check::Ingress {
                    addr: "127.0.0.1:8443".parse().unwrap(),
                    host: "web.127.0.0.1.nip.io".into(),
                    path: "/api".into(),
                    tls: true
                },
                Check::Ingress {
                    addr: "127.0.0.1:8443".parse().unwrap(),
                    host: "web.shop.127.0.0.1.nip.io".into(),
                    path: "/".into(),
                    tls: true
                },
                Check::Port {
                    addr: "127.0.0.1:5432".parse().unwrap()
                },
                Check::Port {
                    addr: "127.0.0.1:30443".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn a_routed_answer_is_told_by_its_header_whatever_its_status() {
        assert_eq!(
            parse_head("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n404 page not found\n"),
            Some((404, false))
        );
        assert_eq!(
            parse_head(
                "HTTP/1.1 404 Not Found\r\nX-Sandbox-Routed: 1\r\nContent-Length: 9\r\n\r\n"
            ),
            Some((404, true))
        );
        assert_eq!(
            parse_head("HTTP/1.1 200 OK\r\nx-sandbox-routed:1\r\n\r\n"),
            Some((200, true))
        );
        // the header must be in the head, not in the body
        assert_eq!(
            parse_head("HTTP/1.1 404 Not Found\r\n\r\nX-Sandbox-Routed: 1\r\n"),
            Some((404, false))
        );
        assert_eq!(parse_head("garbage"), None);
    }

    #[test]
    fn the_controllers_own_gateway_errors_are_not_the_apps() {
        let host = "web.127.0.0.1.nip.io";
        // as Traefik answered for a Ready pod that does not listen
        let own = "HTTP/1.1 502 Bad Gateway\r\nX-Sandbox-Routed: 1\r\nContent-Length: 11\r\nDate: Tue, 01 Dec 2026 22:00:31 GMT\r\n\r\nBad Gateway";
        let why = judge_answer(own, host).unwrap_err();
        assert!(
            why.contains("502 Bad Gateway") && why.contains(host),
            "{why}"
        );
        assert!(judge_answer(
            "HTTP/1.1 503 Service Unavailable\r\nx-sandbox-routed: 1\r\n\r\nService Unavailable\n",
            host
        )
        .is_err());
        // the app's own 503, its own 404, and a redirect are the app's answers
        assert_eq!(
            judge_answer(
                "HTTP/1.1 503 Service Unavailable\r\nX-Sandbox-Routed: 1\r\nContent-Type: application/json\r\n\r\n{\"status\":\"migrating\"}",
                host
            ),
            Ok(())
        );
        assert_eq!(
            judge_answer(
                "HTTP/1.1 404 Not Found\r\nX-Sandbox-Routed: 1\r\n\r\n404 page not found",
                host
            ),
            Ok(())
        );
        assert_eq!(
            judge_answer(
                "HTTP/1.1 308 Permanent Redirect\r\nX-Sandbox-Routed: 1\r\nLocation: /x\r\n\r\n",
                host
            ),
            Ok(())
        );
        // the controller's 404 for a host it has no route for yet
        let why = judge_answer(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n404 page not found\n",
            host,
        )
        .unwrap_err();
        assert!(
            why.contains("no route to web.127.0.0.1.nip.io yet"),
            "{why}"
        );
    }

    #[test]
    fn traefiks_default_certificate_is_recognised() {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, DEFAULT_CERT_CN);
        let key = rcgen::KeyPair::generate().unwrap();
        let default = params.self_signed(&key).unwrap();
        assert!(is_default_certificate(default.der()));
        let mut own =
            rcgen::CertificateParams::new(vec!["web.127.0.0.1.nip.io".to_string()]).unwrap();
        own.distinguished_name
            .push(rcgen::DnType::CommonName, "web.127.0.0.1.nip.io");
        assert!(!is_default_certificate(
            own.self_signed(&key).unwrap().der()
        ));
        assert!(!is_default_certificate(b"not a certificate"));
    }

    /// A controller that answers its own 404 twice, then routes: the wait returns once it
    /// routes, and reports what it saw meanwhile.
    #[tokio::test]
    async fn the_wait_ends_when_the_route_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        // nothing listens yet: the wait sees refused connections, then an answer
        let checks = vec![(
            url(
                "NodePort",
                "a/b",
                &format!("http://{addr}/"),
                Probe::default(),
            ),
            Check::Port { addr },
        )];
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            // the first connection is held without an answer (as kube-proxy's socket
            // holding a node port does); the next one is answered
            let (_held, _) = listener.accept().await.unwrap();
            let (mut answered, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = answered.read(&mut request).await;
            answered
                .write_all(b"HTTP/1.0 200 OK\r\n\r\n")
                .await
                .unwrap();
        });
        let seen = std::sync::Mutex::new(Vec::new());
        let report = |line: &str| seen.lock().unwrap().push(line.to_string());
        wait_all(&checks, Duration::from_secs(10), &report)
            .await
            .unwrap();
        server.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "one line per new observation: {seen:?}");
        assert!(seen[0].contains("connecting to"), "{seen:?}");
        assert!(seen[1].contains(SILENT), "{seen:?}");

        // a deadline that falls says what was last seen
        let err = wait_all(&checks, Duration::ZERO, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(err.url, format!("http://{addr}/"));
        assert!(err.last.contains("connecting to"), "{err}");
    }
}
