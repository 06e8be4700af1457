//! The DNS server in the background: one per user, shared by every sandbox, started by
//! `up` and stopped by the `down` of the last sandbox. It records its pid and address in
//! the user's state directory once it listens; "running" means the recorded address
//! answers a query, so a stale record (a crash, a reboot) is never trusted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

/// The port the daemon prefers on loopback; another free one when it is taken.
pub const PREFERRED_PORT: u16 = 15353;
/// How long `up` waits for a started daemon to answer.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long one probe query waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The name probed: its answer is known without any configuration.
const PROBE_NAME: &str = "sandbox-probe.127.0.0.1.nip.io.";

/// Errors starting or stopping the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory, the record or the log could not be written or read.
    #[error("DNS daemon: cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The started daemon did not answer in time.
    #[error("the DNS daemon did not answer within {seconds} s; its log: {log}")]
    NotAnswering {
        /// Deadline.
        seconds: u64,
        /// Its log file.
        log: PathBuf,
    },
}

/// What the running daemon recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// Its process id.
    pub pid: u32,
    /// Where it answers, UDP and TCP.
    pub address: SocketAddr,
}

/// Who the DNS server of this process's state directory serves: a digest of that directory,
/// which the nodes it creates carry (the last `down` among them stops the server).
pub fn owner() -> String {
    let dir = crate::paths::state_dir();
    crate::warm::digest(dir.as_os_str().as_encoded_bytes())[..16].to_string()
}

/// Whether the DNS server of this state directory is still needed by one of `nodes`: one it
/// made, or one made before nodes named their owner.
pub fn needed_by(nodes: &[crate::docker::NodeInfo]) -> bool {
    let me = owner();
    nodes
        .iter()
        .any(|n| n.dns_owner.as_ref().is_none_or(|o| *o == me))
}

/// The record file: `$XDG_STATE_HOME/sandbox/dns.json`.
pub fn record_path() -> PathBuf {
    crate::paths::state_dir().join("dns.json")
}

fn log_path() -> PathBuf {
    crate::paths::state_dir().join("dns.log")
}

fn io_error(action: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io {
        action,
        path,
        source,
    }
}

/// Reads the record, if any (unreadable or malformed counts as none).
pub fn read_record() -> Option<DaemonRecord> {
    let text = std::fs::read_to_string(record_path()).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the record of this process, answering on `address` (atomically: a reader never
/// sees half of it).
pub fn write_record(address: SocketAddr) -> Result<(), DaemonError> {
    let path = record_path();
    let dir = crate::paths::state_dir();
    std::fs::create_dir_all(&dir).map_err(io_error("create", dir.clone()))?;
    let record = DaemonRecord {
        pid: std::process::id(),
        address,
    };
    let tmp = dir.join(format!(".dns.json.{}", std::process::id()));
    let text = serde_json::to_string(&record).expect("a record serialises");
    std::fs::write(&tmp, text).map_err(io_error("write", tmp.clone()))?;
    std::fs::rename(&tmp, &path).map_err(io_error("write", path))
}

/// Removes the record if it is this process's own.
pub fn remove_own_record() {
    if read_record().is_some_and(|r| r.pid == std::process::id()) {
        let _ = std::fs::remove_file(record_path());
    }
}

/// Asks `server` for the A record of `name` over UDP; `None` without a usable answer in
/// [`PROBE_TIMEOUT`].
pub async fn lookup(server: SocketAddr, name: &str) -> Option<IpAddr> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => "[::1]:0".parse().ok()?,
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(server).await.ok()?;
    let mut query = Message::query();
    let id: u16 = rand_id();
    query.metadata.id = id;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send(&query.to_vec().ok()?).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if reply.metadata.id == id {
            return reply.answers.first().and_then(|a| a.data.ip_addr());
        }
    }
}

fn rand_id() -> u16 {
    // not security relevant: only tells our reply from a stray one
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id()) as u16
}

/// Whether a daemon answers at `address`.
pub async fn answers(address: SocketAddr) -> bool {
    lookup(address, PROBE_NAME).await == Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The running daemon, if its record's address answers.
pub async fn running() -> Option<DaemonRecord> {
    let record = read_record()?;
    answers(record.address).await.then_some(record)
}

/// Whether `port` is free on loopback for both UDP and TCP.
fn free(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok()
}

/// Ensures the daemon runs, starting it when none answers. Returns its record and whether
/// this call started it.
pub async fn ensure() -> Result<(DaemonRecord, bool), DaemonError> {
    if let Some(record) = running().await {
        return Ok((record, false));
    }
    let dir = crate::paths::state_dir();
    std::fs::create_dir_all(&dir).map_err(io_error("create", dir.clone()))?;
    // one starter at a time: a second `up` waits, then finds the first one's daemon
    let lock_path = dir.join("dns.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("open", lock_path.clone()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .expect("locking does not panic")
        .map_err(io_error("lock", lock_path))?;
    if let Some(record) = running().await {
        return Ok((record, false));
    }
    let log = log_path();
    // the preferred port, unless taken; a free one when it is (or when another user's
    // server takes it between the check and the bind)
    let ports = if free(PREFERRED_PORT) {
        vec![PREFERRED_PORT, 0]
    } else {
        vec![0]
    };
    for port in ports {
        let mut child = spawn_server(port, &log)?;
        let started = Instant::now();
        loop {
            if let Some(record) = read_record().filter(|r| r.pid == child.id()) {
                if answers(record.address).await {
                    drop(lock);
                    return Ok((record, true));
                }
            }
            if child.try_wait().ok().flatten().is_some() {
                break; // it could not serve there: next port
            }
            if started.elapsed() > START_DEADLINE {
                let _ = child.kill();
                return Err(DaemonError::NotAnswering {
                    seconds: START_DEADLINE.as_secs(),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Err(DaemonError::NotAnswering {
        seconds: START_DEADLINE.as_secs(),
        log,
    })
}

/// Starts `sandbox dns serve --record` on loopback `port`, detached, logging to `log`.
fn spawn_server(port: u16, log: &std::path::Path) -> Result<std::process::Child, DaemonError> {
    let log_file = std::fs::File::create(log).map_err(io_error("create", log.to_path_buf()))?;
    let exe = std::env::current_exe().map_err(io_error("find", PathBuf::from("sandbox")))?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["-q", "dns", "serve", "--record", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .map_err(io_error("open", log.to_path_buf()))?,
        )
        .stderr(log_file);
    #[cfg(unix)]
    {
        // its own process group: a Ctrl-C of the `up` that started it does not stop it
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command
        .spawn()
        .map_err(io_error("start", log.to_path_buf()))
}

/// Stops the running daemon; returns its record, or `None` when none answered.
pub async fn stop() -> Option<DaemonRecord> {
    let record = running().await?;
    // SIGTERM through kill(1): the crate forbids unsafe code, and this is rare
    let _ = std::process::Command::new("kill")
        .arg(record.pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    // gone when its address no longer answers
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && answers(record.address).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(record_path());
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_server_is_needed_by_the_users_own_nodes_and_unlabelled_ones() {
        let node = |owner: Option<&str>| crate::docker::NodeInfo {
            id: "1".into(),
            name: "sandbox-a-node".into(),
            sandbox: "a".into(),
            profile: "offline".into(),
            security: "privileged".into(),
            image: "i".into(),
            state: "running".into(),
            ports: Default::default(),
            dns_owner: owner.map(str::to_string),
        };
        let me = owner();
        assert_eq!(me.len(), 16);
        assert!(!needed_by(&[]));
        assert!(!needed_by(&[node(Some("0123456789abcdef"))]));
        assert!(needed_by(&[
            node(Some("0123456789abcdef")),
            node(Some(&me))
        ]));
        assert!(needed_by(&[node(None)]));
    }

    #[test]
    fn records_round_trip() {
        let r = DaemonRecord {
            pid: 42,
            address: "127.0.0.1:15353".parse().unwrap(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"pid":42,"address":"127.0.0.1:15353"}"#);
        assert_eq!(serde_json::from_str::<DaemonRecord>(&text).unwrap(), r);
    }

    #[tokio::test]
    async fn the_probe_tells_a_server_from_silence() {
        let server =
            crate::dns::DnsServer::bind("127.0.0.1:0".parse().unwrap(), crate::dns::Zones::new())
                .await
                .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        assert!(answers(addr).await);
        assert_eq!(
            lookup(addr, "a.10-0-0-1.sslip.io.").await,
            Some("10.0.0.1".parse().unwrap())
        );
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
        // nothing listens there any more
        assert!(!answers(addr).await);
    }
}
