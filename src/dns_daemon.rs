//! The DNS server in the background: one per user, shared by every sandbox, started by
//! `up` and stopped by the `down` of the last sandbox. It records its pid and address in
//! the user's state directory once it listens; "running" means the recorded address
//! answers a query, so a stale record (a crash, a reboot) is never trusted. Stopping
//! signals the recorded pid only once that process proves to be this user's `sandbox dns
//! serve --record`, never a process that reused the pid of a dead server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::report::Reporter;

/// The port the daemon prefers on loopback; another free one when it is taken.
pub const PREFERRED_PORT: u16 = 15353;
/// How long `up` waits for a started daemon to answer.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long `stop` waits for the signalled daemon to exit.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
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
    read_record_at(&record_path())
}

fn read_record_at(path: &Path) -> Option<DaemonRecord> {
    let text = std::fs::read_to_string(path).ok()?;
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
    remove_record_of(&record_path(), std::process::id());
}

/// Removes the record at `path` if it names `pid` (a daemon started since keeps its own).
fn remove_record_of(path: &Path, pid: u32) {
    if read_record_at(path).is_some_and(|r| r.pid == pid) {
        let _ = std::fs::remove_file(path);
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

/// The running daemon, if its record's address answers and its pid is this user's
/// `sandbox dns serve` (when that can be checked): a record whose pid was reused by
/// another process names an address that may be another user's server by now.
pub async fn running() -> Option<DaemonRecord> {
    running_at(&record_path()).await
}

async fn running_at(path: &Path) -> Option<DaemonRecord> {
    let record = read_record_at(path)?;
    if let RecordedProcess::Other(_) = inspect(record.pid) {
        return None;
    }
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

/// Stops the recorded daemon; returns its record, or `None` when none was stopped.
///
/// The recorded pid is signalled only once [`inspect`] finds this user's `sandbox dns
/// serve --record` there. A record whose process is gone or is another one (its pid
/// reused after a crash or a reboot) is removed and nothing is signalled; where the
/// process cannot be checked, nothing is signalled and `reporter` says so.
pub async fn stop(reporter: &Reporter) -> Option<DaemonRecord> {
    stop_recorded(&record_path(), reporter).await
}

async fn stop_recorded(path: &Path, reporter: &Reporter) -> Option<DaemonRecord> {
    let record = read_record_at(path)?;
    let pid = record.pid;
    match inspect(pid) {
        RecordedProcess::Server => {}
        RecordedProcess::Other(what) => {
            reporter.detail(format!(
                "removed the stale DNS server record: pid {pid} {what}"
            ));
            remove_record_of(path, pid);
            return None;
        }
        RecordedProcess::Unknown(why) => {
            reporter.warn(format!(
                "not stopping the DNS server: cannot check that pid {pid} is it ({why}); \
                 if `ps -p {pid}` shows `sandbox dns serve`, stop it with `kill {pid}`"
            ));
            return None;
        }
    }
    // SIGTERM through kill(1): the crate forbids unsafe code, and this is rare
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline && inspect(pid) == RecordedProcess::Server {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_record_of(path, pid);
    Some(record)
}

/// What the process at a recorded pid is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordedProcess {
    /// This user's `sandbox dns serve --record`: the recorded daemon.
    Server,
    /// Not the daemon (gone, another program, another user's); says which.
    Other(String),
    /// Could not be checked; says why.
    Unknown(String),
}

/// What the process at `pid` is: from `/proc` on Linux, from ps(1) on other Unix systems,
/// unknown elsewhere.
fn inspect(pid: u32) -> RecordedProcess {
    match program_name() {
        Some(program) => inspect_here(pid, &program),
        None => RecordedProcess::Unknown("the path of this program is unknown".into()),
    }
}

#[cfg(target_os = "linux")]
fn inspect_here(pid: u32, program: &str) -> RecordedProcess {
    inspect_proc(pid, program)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn inspect_here(pid: u32, program: &str) -> RecordedProcess {
    inspect_ps(pid, program)
}

#[cfg(not(unix))]
fn inspect_here(_pid: u32, _program: &str) -> RecordedProcess {
    RecordedProcess::Unknown("processes cannot be inspected on this system".into())
}

/// The file name of this program, which `ensure` starts the daemon as.
fn program_name() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// Whether `command` (argument 0 first) is `program ... dns serve ... --record`: the
/// command line `ensure` starts the daemon with.
fn is_recording_server(command: &[&str], program: &str) -> bool {
    let Some(first) = command.first() else {
        return false;
    };
    Path::new(first)
        .file_name()
        .is_some_and(|name| name == program)
        && command.windows(2).any(|w| w == ["dns", "serve"])
        && command.contains(&"--record")
}

const NOT_THE_SERVER: &str = "is not a `sandbox dns serve` (its pid was reused)";

/// [`inspect`] through `/proc/PID`: its owner and its `cmdline`.
#[cfg(target_os = "linux")]
fn inspect_proc(pid: u32, program: &str) -> RecordedProcess {
    use std::os::unix::fs::MetadataExt;
    let own_uid = match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid(),
        Err(e) => return RecordedProcess::Unknown(format!("cannot read /proc/self: {e}")),
    };
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let uid = match std::fs::metadata(&dir) {
        Ok(meta) => meta.uid(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return RecordedProcess::Other("no longer runs".into())
        }
        Err(e) => return RecordedProcess::Unknown(format!("cannot read {}: {e}", dir.display())),
    };
    if uid != own_uid {
        return RecordedProcess::Other(format!("belongs to another user (uid {uid})"));
    }
    // gone in between, or a zombie: an empty command line either way
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&cmdline);
    let command: Vec<&str> = text.split_terminator('\0').collect();
    if is_recording_server(&command, program) {
        RecordedProcess::Server
    } else {
        RecordedProcess::Other(NOT_THE_SERVER.into())
    }
}

/// [`inspect`] through `ps -o uid= -o args=` and `id -u`. ps joins the arguments with
/// spaces, so words before the first one naming `program` are taken for parts of its
/// path (a directory with a space).
#[cfg(any(test, all(unix, not(target_os = "linux"))))]
fn inspect_ps(pid: u32, program: &str) -> RecordedProcess {
    let run = |command: &mut std::process::Command| match command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => Err(RecordedProcess::Unknown(format!(
            "cannot run ps or id: {e}"
        ))),
    };
    let own_uid = match run(std::process::Command::new("id").arg("-u")) {
        Ok(out) if !out.trim().is_empty() => out.trim().to_string(),
        Ok(_) => return RecordedProcess::Unknown("`id -u` printed nothing".into()),
        Err(unknown) => return unknown,
    };
    let mut ps = std::process::Command::new("ps");
    ps.args(["-o", "uid=", "-o", "args=", "-p"])
        .arg(pid.to_string())
        .env("LC_ALL", "C");
    let line = match run(&mut ps) {
        Ok(out) => out,
        Err(unknown) => return unknown,
    };
    // no line: no such process (a ps failing otherwise also leaves the pid unsignalled)
    let Some((uid, args)) = line.trim().split_once(char::is_whitespace) else {
        return RecordedProcess::Other("no longer runs".into());
    };
    if uid != own_uid {
        return RecordedProcess::Other(format!("belongs to another user (uid {uid})"));
    }
    let words: Vec<&str> = args.split_whitespace().collect();
    let start = words
        .iter()
        .position(|w| Path::new(w).file_name().is_some_and(|name| name == program));
    match start {
        Some(start) if is_recording_server(&words[start..], program) => RecordedProcess::Server,
        _ => RecordedProcess::Other(NOT_THE_SERVER.into()),
    }
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

    fn quiet() -> Reporter {
        Reporter::new(crate::report::Mode::Quiet, false)
    }

    fn record_pid(path: &Path, pid: u32) {
        let record = DaemonRecord {
            pid,
            address: "127.0.0.1:15353".parse().unwrap(),
        };
        std::fs::write(path, serde_json::to_string(&record).unwrap()).unwrap();
    }

    /// `shell` (a POSIX shell, under any name) with the daemon's arguments, waiting on its
    /// stdin, once it runs: its command line is in place only after it has started,
    /// which is later than `spawn` returns.
    #[cfg(unix)]
    fn waiting_shell(shell: &Path) -> std::process::Child {
        let mut child = std::process::Command::new(shell)
            .args(["-c", "echo ready; read line", "dns", "serve", "--record"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        child
    }

    /// The signal that ended `child`, after killing it with SIGKILL if it still runs.
    #[cfg(unix)]
    fn ending_signal(mut child: std::process::Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let _ = child.kill();
        child.wait().unwrap().signal()
    }

    #[test]
    fn only_the_daemons_command_line_is_the_daemon() {
        let daemon = [
            "/usr/local/bin/sandbox",
            "-q",
            "dns",
            "serve",
            "--record",
            "--listen",
            "127.0.0.1:15353",
        ];
        assert!(is_recording_server(&daemon, "sandbox"));
        assert!(is_recording_server(&daemon[..5], "sandbox"));
        assert!(!is_recording_server(&daemon, "other"));
        // a foreground server writes no record, so it is never the recorded one
        assert!(!is_recording_server(&daemon[..4], "sandbox"));
        assert!(!is_recording_server(
            &["/usr/local/bin/sandbox", "serve", "dns", "--record"],
            "sandbox"
        ));
        assert!(!is_recording_server(
            &["/usr/bin/python3", "sandbox", "dns", "serve", "--record"],
            "sandbox"
        ));
        assert!(!is_recording_server(&[], "sandbox"));
    }

    /// A way of inspecting a process, by name.
    type Inspector = (&'static str, fn(u32, &str) -> RecordedProcess);

    /// Both ways of inspecting a process, checked alike where both work.
    #[cfg(target_os = "linux")]
    const INSPECTORS: [Inspector; 2] = [("/proc", inspect_proc), ("ps", inspect_ps)];
    #[cfg(all(unix, not(target_os = "linux")))]
    const INSPECTORS: [Inspector; 1] = [("ps", inspect_ps)];

    #[cfg(unix)]
    #[tokio::test]
    async fn a_record_naming_another_process_is_removed_and_nothing_is_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.json");
        let program = program_name().unwrap();
        // the daemon's arguments, but another program
        let other = waiting_shell(Path::new("/bin/sh"));
        for (how, inspect) in INSPECTORS {
            assert_eq!(
                inspect(other.id(), &program),
                RecordedProcess::Other(NOT_THE_SERVER.into()),
                "{how}"
            );
        }
        record_pid(&path, other.id());
        assert_eq!(stop_recorded(&path, &quiet()).await, None);
        assert!(!path.exists(), "the stale record is kept");
        // SIGTERM from `stop` would have ended it before our SIGKILL
        assert_eq!(ending_signal(other), Some(9));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_record_naming_a_dead_process_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.json");
        let program = program_name().unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        for (how, inspect) in INSPECTORS {
            assert_eq!(
                inspect(pid, &program),
                RecordedProcess::Other("no longer runs".into()),
                "{how}"
            );
        }
        record_pid(&path, pid);
        assert_eq!(stop_recorded(&path, &quiet()).await, None);
        assert!(!path.exists(), "the stale record is kept");
        // no record at all: nothing to do
        assert_eq!(stop_recorded(&path, &quiet()).await, None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_recorded_daemon_is_signalled_and_its_record_removed() {
        // The daemon's arguments under this program's name: to the check, just like the
        // daemon `ensure` starts.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.json");
        let program = program_name().unwrap();
        let disguised = dir.path().join(&program);
        std::os::unix::fs::symlink("/bin/sh", &disguised).unwrap();
        let server = waiting_shell(&disguised);
        for (how, inspect) in INSPECTORS {
            assert_eq!(
                inspect(server.id(), &program),
                RecordedProcess::Server,
                "{how}"
            );
        }
        record_pid(&path, server.id());
        let stopped = stop_recorded(&path, &quiet()).await;
        assert_eq!(stopped.map(|r| r.pid), Some(server.id()));
        assert!(!path.exists(), "the record is kept");
        assert_eq!(ending_signal(server), Some(15), "not ended by SIGTERM");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_server_answering_at_the_recorded_address_is_ours_only_with_our_pid() {
        let server =
            crate::dns::DnsServer::bind("127.0.0.1:0".parse().unwrap(), crate::dns::Zones::new())
                .await
                .unwrap();
        let address = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.json");
        let write = |pid: u32| {
            let record = DaemonRecord { pid, address };
            std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();
        };
        // the pid is some other process: whatever answers there is not this user's daemon
        let other = waiting_shell(Path::new("/bin/sh"));
        write(other.id());
        assert_eq!(running_at(&path).await, None);
        // the pid is a `dns serve` of this program
        let disguised = dir.path().join(program_name().unwrap());
        std::os::unix::fs::symlink("/bin/sh", &disguised).unwrap();
        let ours = waiting_shell(&disguised);
        write(ours.id());
        assert_eq!(
            running_at(&path).await,
            Some(DaemonRecord {
                pid: ours.id(),
                address
            })
        );
        for mut child in [other, ours] {
            let _ = child.kill();
            let _ = child.wait();
        }
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
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
