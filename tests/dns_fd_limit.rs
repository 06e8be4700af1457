//! The DNS server out of file descriptors: `sandbox dns serve` under `ulimit -n`, sent
//! more TCP connections than it may hold, keeps answering UDP and new TCP queries by
//! closing its idlest connections, and does not spin a core retrying accept(2) meanwhile.
//!
//! A test binary of its own (not in `integration`): it needs neither Docker nor a
//! cluster, and it must run the built `sandbox` in a child process, since the limit has
//! to be the server's alone. Linux only: it reads the server's CPU time from `/proc`.
#![cfg(target_os = "linux")]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// The server's file-descriptor limit: its runtimes, sockets and a few dozen connections.
const FD_LIMIT: usize = 64;
/// Connections opened and held: well past what the server may accept.
const CONNECTIONS: usize = 3 * FD_LIMIT;
/// The most CPU the server may use in the one-second window while the connections wait:
/// a server retrying a failing accept at once uses all of it (or its share of a busy
/// machine's cores), a correct one a few milliseconds.
const CPU_BOUND: Duration = Duration::from_millis(200);
/// How long any one condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// The name queried and the address it answers.
const NAME: &str = "fd-limit.10.0.0.9.nip.io.";
const ADDRESS: [u8; 4] = [10, 0, 0, 9];

/// The server process, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` until it gives a value; fails after [`DEADLINE`] with `what` and the
/// last observation.
fn until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if start.elapsed() > DEADLINE => {
                panic!("{what}: not within {DEADLINE:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// User plus system CPU time of `pid`, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // after the command name in parentheses: state is field 3, utime 14, stime 15
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let per_second: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The soft limit on open files of `pid`, from `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

fn query(id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(Name::from_ascii(NAME).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

/// The address a reply with `id` answers.
fn answer(reply: &[u8], id: u16) -> Option<IpAddr> {
    let reply = Message::from_vec(reply).ok()?;
    if reply.metadata.id != id {
        return None;
    }
    reply.answers.first()?.data.ip_addr()
}

fn udp_lookup(server: SocketAddr, id: u16) -> Option<IpAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket.send(&query(id)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    answer(&buf[..n], id)
}

fn tcp_lookup(server: SocketAddr, id: u16) -> Option<IpAddr> {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let message = query(id);
    let mut frame = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&message);
    stream.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).ok()?;
    answer(&body, id)
}

/// Whether the server closed `stream` (it never sends anything unasked).
fn closed(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true, // reset
        Ok(_) => panic!("the server sent something unasked"),
    }
}

#[test]
fn out_of_file_descriptors_the_dns_server_keeps_answering_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("dns.log")).unwrap();
    // the background server's own command line, under the limit (`exec`: same pid)
    let script =
        format!("ulimit -n {FD_LIMIT} && exec \"$0\" -q dns serve --record --listen 127.0.0.1:0");
    let server = Server(
        Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_sandbox")])
            .env("XDG_STATE_HOME", &state)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let address: SocketAddr = until("the server records its address", || {
        let text =
            std::fs::read_to_string(state.join("sandbox/dns.json")).map_err(|e| e.to_string())?;
        let record: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match (record["pid"].as_u64(), record["address"].as_str()) {
            (Some(p), Some(a)) if p == u64::from(pid) => a.parse().map_err(|_| text.clone()),
            _ => Err(text),
        }
    });
    assert_eq!(open_files_limit(pid), FD_LIMIT.to_string());
    let expected = IpAddr::from(ADDRESS);
    assert_eq!(udp_lookup(address, 1), Some(expected));

    // The kernel completes every handshake; the server accepts until it runs out.
    let held: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    let before = cpu_time(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1)); // the measured window, not a wait
    let used = cpu_time(pid).saturating_sub(before);
    assert!(
        used < CPU_BOUND,
        "the server used {used:?} of CPU in {:?} while {CONNECTIONS} connections were held \
         under a limit of {FD_LIMIT} files: it spins on accept",
        window.elapsed()
    );

    // (a) UDP still answers.
    assert_eq!(udp_lookup(address, 2), Some(expected));
    // The oldest connections were closed to make room for the newer ones.
    let count = until("the server closes its oldest connections", || {
        let count = held.iter().filter(|s| closed(s)).count();
        if count >= CONNECTIONS - FD_LIMIT {
            Ok(count)
        } else {
            Err(format!("{count} of {CONNECTIONS} closed"))
        }
    });
    assert!(
        closed(&held[0]),
        "the oldest connection is open ({count} closed)"
    );
    assert!(
        !closed(held.last().unwrap()),
        "the newest connection is closed ({count} closed)"
    );
    // (b) A new TCP connection is served, over and over, each taking an older one's place.
    for id in 3..3 + FD_LIMIT as u16 {
        assert_eq!(tcp_lookup(address, id), Some(expected), "tcp query {id}");
    }
    assert_eq!(udp_lookup(address, 1000), Some(expected));
    drop(server);
}
