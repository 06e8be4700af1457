//! HTTPS the way a user's browser does it: the name resolved through the sandbox's own
//! DNS server, the connection verified against the sandbox CA and nothing else.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::support::TestSandbox;

/// `scheme://host[:port]/path` → (host, port, path).
pub fn split_url(url: &str, scheme: &str, default_port: u16) -> (String, u16, String) {
    let rest = url.strip_prefix(&format!("{scheme}://")).expect(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap()),
        None => (authority.to_string(), default_port),
    };
    (host, port, path.to_string())
}

/// The name's address as the sandbox's DNS server answers it.
pub fn resolve(dns: SocketAddr, host: &str) -> IpAddr {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(sandbox::dns_daemon::lookup(dns, &format!("{host}.")))
        .unwrap_or_else(|| panic!("the sandbox DNS server at {dns} did not answer {host}"))
}

/// (status, whole response) of a raw HTTP response.
pub fn with_status(response: String) -> Result<(u16, String), String> {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad response: {response:.80}"))?;
    Ok((status, response))
}

/// One HTTP/1.0 request over TLS to `addr` for `host`, trusting only `ca_pem`: (status,
/// headers+body). `form` is sent as an `application/x-www-form-urlencoded` body.
pub fn https_request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    form: Option<&str>,
    ca_pem: &[u8],
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    if let Some(body) = form {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    match stream.read_to_string(&mut response) {
        Ok(_) => {}
        // HTTP/1.0 servers may close without close_notify
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    with_status(response)
}

/// One HTTPS GET (see [`https_request`]).
pub fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca_pem: &[u8],
) -> Result<(u16, String), String> {
    https_request(addr, host, "GET", path, None, ca_pem)
}

/// A browser for one sandbox: its DNS server and its CA, taken from `up`'s JSON.
pub struct Browser {
    dns: SocketAddr,
    ca: Vec<u8>,
}

impl Browser {
    /// The DNS server `up` reported and the test's CA.
    pub fn of(sb: &TestSandbox, up: &Value) -> Browser {
        let dns = up["dns"]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no DNS server in {up}"))
            .parse()
            .unwrap();
        let ca = std::fs::read(sb.dir.path().join("data/sandbox/ca/ca.crt")).unwrap();
        Browser { dns, ca }
    }

    /// One request to an `https://` URL: (status, headers+body).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        form: Option<&str>,
    ) -> Result<(u16, String), String> {
        let (host, port, path) = split_url(url, "https", 443);
        let addr = SocketAddr::new(resolve(self.dns, &host), port);
        https_request(addr, &host, method, &path, form, &self.ca)
    }

    /// GETs `url` once and requires 200 (`up` returned only once every URL it printed
    /// answered: no retry); returns the response.
    pub fn get_ok(&self, url: &str) -> String {
        match self.request("GET", url, None) {
            Ok((200, r)) => r,
            Ok((code, r)) => panic!("{url}: HTTP {code}: {r:.300}"),
            Err(e) => panic!("{url}: {e}"),
        }
    }
}

/// The URL of `up`'s JSON whose host starts with `prefix.` (e.g. `hello`, `maildev`).
pub fn url_of(up: &Value, prefix: &str) -> String {
    up["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["url"].as_str())
        .find(|u| u.starts_with(&format!("https://{prefix}.")))
        .unwrap_or_else(|| panic!("no https://{prefix}. URL in {up}"))
        .to_string()
}
