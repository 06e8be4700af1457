//! Loopback ports for the Service ports the ingress cannot carry (a database, SMTP, a
//! server that speaks TLS itself): each gets a host port on 127.0.0.1, kept across `up`s,
//! relayed by a small background process per sandbox through the API server's port-forward
//! to a ready pod of the Service. The API server is the one address every engine publishes
//! to the laptop (Docker Desktop's VM, Colima, a remote engine), unlike the node's own.
//!
//! `up` decides the table ([`allocate`], pure) and writes it; the relay
//! (`sandbox forward serve`) holds a lock file for as long as it runs and reads the table
//! again on SIGHUP. "Running" means its lock is held, so a stale pid is never signalled.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::Api;
use serde::{Deserialize, Serialize};

/// How long `up` waits for a started relay to hold its ports.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// One relayed Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service's port.
    pub port: u16,
    /// The port on 127.0.0.1.
    pub host_port: u16,
    /// Whether the port speaks TLS itself (its URL is `https://`).
    pub tls: bool,
}

impl Forward {
    /// Its URL: `https://127.0.0.1:PORT/` for a TLS port, else `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://127.0.0.1:{}/", self.host_port)
        } else {
            format!("tcp://127.0.0.1:{}", self.host_port)
        }
    }

    fn key(&self) -> (&str, &str, u16) {
        (&self.namespace, &self.service, self.port)
    }
}

/// A Service port that wants a loopback port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service's port.
    pub port: u16,
    /// Its node port, when it has one (a second choice of host port).
    pub node_port: Option<u16>,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// The Service ports of `services` the ingress cannot carry (see
/// [`crate::urls::route`]), in order.
pub fn wanted(services: &[Service]) -> Vec<Wanted> {
    let mut wanted = Vec::new();
    for service in services {
        let Some(spec) = crate::urls::exposed_spec(service) else {
            continue;
        };
        for port in spec.ports.iter().flatten() {
            let tls = match crate::urls::route(port) {
                crate::urls::Route::Forward { tls } => tls,
                _ => continue,
            };
            wanted.push(Wanted {
                namespace: service.metadata.namespace.clone().unwrap_or_default(),
                service: service.metadata.name.clone().unwrap_or_default(),
                port: u16::try_from(port.port).unwrap_or_default(),
                node_port: port.node_port.and_then(|p| u16::try_from(p).ok()),
                tls,
            });
        }
    }
    wanted
}

/// The host port of each of `wanted`: the one `previous` gave it while it is still ours
/// (`held`: the relay runs and holds it) or free; else the Service's own port, else its
/// node port, when free; else one the system picks. No two forwards share a port, and none
/// takes one of `reserved` (the node's published ports).
pub fn allocate(
    previous: &[Forward],
    wanted: &[Wanted],
    held: bool,
    reserved: &[u16],
    free: &dyn Fn(u16) -> bool,
    any: &mut dyn FnMut() -> std::io::Result<u16>,
) -> std::io::Result<Vec<Forward>> {
    let mut taken: Vec<u16> = reserved.to_vec();
    let mut table = Vec::new();
    for w in wanted {
        let before = previous
            .iter()
            .find(|f| f.key() == (w.namespace.as_str(), w.service.as_str(), w.port))
            .map(|f| f.host_port)
            .filter(|p| !taken.contains(p) && (held || free(*p)));
        let host_port = match before {
            Some(p) => p,
            None => {
                let preferred = [Some(w.port), w.node_port].into_iter().flatten().find(|p| {
                    *p != 0 && !taken.contains(p) && !previously_other(previous, w, *p) && free(*p)
                });
                match preferred {
                    Some(p) => p,
                    None => loop {
                        let p = any()?;
                        if !taken.contains(&p) {
                            break p;
                        }
                    },
                }
            }
        };
        taken.push(host_port);
        table.push(Forward {
            namespace: w.namespace.clone(),
            service: w.service.clone(),
            port: w.port,
            host_port,
            tls: w.tls,
        });
    }
    Ok(table)
}

/// Whether `port` belongs to another forward of `previous` that is still wanted elsewhere
/// (a port the relay holds for it looks taken, but this keeps the choice stable either way).
fn previously_other(previous: &[Forward], w: &Wanted, port: u16) -> bool {
    previous.iter().any(|f| {
        f.host_port == port && f.key() != (w.namespace.as_str(), w.service.as_str(), w.port)
    })
}

/// Whether `port` can be bound on 127.0.0.1 now.
pub fn loopback_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port of the system's choice on 127.0.0.1.
pub fn loopback_any() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Errors keeping the relay.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A file of the relay could not be written or read.
    #[error("port relay: cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The started relay did not hold its ports in time.
    #[error("the port relay of {sandbox} did not listen within {seconds} s; its log: {log}")]
    NotListening {
        /// Sandbox.
        sandbox: String,
        /// Deadline.
        seconds: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// Another relay of the sandbox runs.
    #[error("the port relay of {0} already runs")]
    AlreadyRunning(String),
}

fn io_error(action: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> ForwardError {
    move |source| ForwardError::Io {
        action,
        path,
        source,
    }
}

fn file(sandbox: &str, suffix: &str) -> PathBuf {
    crate::paths::state_dir().join(format!("forward-{sandbox}.{suffix}"))
}

/// The relay's log.
pub fn log_path(sandbox: &str) -> PathBuf {
    file(sandbox, "log")
}

/// The table `up` last decided for `sandbox` (none when unreadable).
pub fn table(sandbox: &str) -> Vec<Forward> {
    std::fs::read_to_string(file(sandbox, "json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn write_table(sandbox: &str, table: &[Forward]) -> Result<(), ForwardError> {
    let dir = crate::paths::state_dir();
    std::fs::create_dir_all(&dir).map_err(io_error("create", dir.clone()))?;
    let path = file(sandbox, "json");
    let tmp = dir.join(format!(".forward-{sandbox}.json.{}", std::process::id()));
    let text = serde_json::to_string_pretty(table).expect("a table serialises");
    std::fs::write(&tmp, text).map_err(io_error("write", tmp.clone()))?;
    std::fs::rename(&tmp, &path).map_err(io_error("write", path))
}

/// The pid of `sandbox`'s running relay: the one holding its lock file.
pub fn running(sandbox: &str) -> Option<u32> {
    let path = file(sandbox, "lock");
    let lock = std::fs::File::open(&path).ok()?;
    match lock.try_lock_shared() {
        // nobody holds it: no relay
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok()),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

fn signal(pid: u32, name: &str) {
    // through kill(1): the crate forbids unsafe code, and this is rare
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// Nothing to relay, and no relay runs.
    None,
    /// The running relay already had this table.
    Unchanged,
    /// The running relay was told the new table.
    Reloaded,
    /// A relay was started (its pid).
    Started(u32),
}

/// What the relay reports after reading its table: the table it read, and the ports of it
/// it could not listen on (another process took them since `up` chose them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Listening {
    /// The table it read.
    pub table: Vec<Forward>,
    /// Its ports it could not listen on.
    pub failed: Vec<u16>,
}

fn read_listening(sandbox: &str) -> Option<Listening> {
    let text = std::fs::read_to_string(file(sandbox, "listening")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Makes `sandbox`'s relay serve `table`: writes it, then tells the running relay to read it
/// again, or starts one; stops the relay when the table is empty. Returns once the relay
/// has read the table, with the ports it could not listen on.
pub async fn ensure(sandbox: &str, table: &[Forward]) -> Result<(Relay, Vec<u16>), ForwardError> {
    let pid = running(sandbox);
    if table.is_empty() {
        if pid.is_some() {
            stop(sandbox).await;
        }
        forget(sandbox);
        return Ok((Relay::None, Vec::new()));
    }
    let unchanged = self::table(sandbox) == table;
    write_table(sandbox, table)?;
    let relay = match pid {
        Some(_) if unchanged => Relay::Unchanged,
        Some(pid) => {
            signal(pid, "HUP");
            Relay::Reloaded
        }
        None => {
            let _ = std::fs::remove_file(file(sandbox, "listening"));
            Relay::Started(spawn(sandbox)?)
        }
    };
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(listening) = read_listening(sandbox).filter(|l| l.table == table) {
            return Ok((relay, listening.failed));
        }
        if Instant::now() > deadline {
            return Err(ForwardError::NotListening {
                sandbox: sandbox.to_string(),
                seconds: START_DEADLINE.as_secs(),
                log: file(sandbox, "log"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(sandbox: &str) -> Result<u32, ForwardError> {
    let log = file(sandbox, "log");
    let dir = crate::paths::state_dir();
    std::fs::create_dir_all(&dir).map_err(io_error("create", dir))?;
    let log_file = std::fs::File::create(&log).map_err(io_error("create", log.clone()))?;
    let exe = std::env::current_exe().map_err(io_error("find", PathBuf::from("sandbox")))?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["-q", "forward", "serve", "--name", sandbox])
        .stdin(std::process::Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .map_err(io_error("open", log.clone()))?,
        )
        .stderr(log_file);
    #[cfg(unix)]
    {
        // its own process group: a Ctrl-C of the `up` that started it does not stop it
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let child = command.spawn().map_err(io_error("start", log))?;
    Ok(child.id())
}

/// Stops `sandbox`'s relay, if one runs (its table stays: the next `up` keeps the ports);
/// whether one ran.
pub async fn stop(sandbox: &str) -> bool {
    let Some(pid) = running(sandbox) else {
        return false;
    };
    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(sandbox).is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Forgets `sandbox`'s table (`down --purge`).
pub fn forget(sandbox: &str) {
    let _ = std::fs::remove_file(file(sandbox, "json"));
}

/// Gives each LoadBalancer Service of `services` its address, as a cloud's controller would:
/// its name under `domain` (`<service>.<namespace>.<domain>`, which resolves to the
/// laptop's loopback), where its HTTP ports answer through the ingress and its other ports
/// on their relayed loopback ports. A name, not 127.0.0.1: kube-proxy would catch the node's
/// own loopback traffic to an address in the status.
pub async fn publish_addresses(
    client: &kube::Client,
    services: &[Service],
    domain: &str,
) -> Result<(), kube::Error> {
    for service in services {
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
        else {
            continue;
        };
        let hostname = crate::urls::service_host(name, namespace, domain, 0, 0);
        let current = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        if current.is_some_and(|i| i.len() == 1 && i[0].hostname.as_deref() == Some(&hostname)) {
            continue;
        }
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        let status = serde_json::json!({
            "status": {"loadBalancer": {"ingress": [{"hostname": hostname}]}}
        });
        api.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await?;
    }
    Ok(())
}

/// Runs the relay of `sandbox` until SIGTERM or SIGINT (`sandbox forward serve`).
pub async fn serve(sandbox: &str) -> Result<(), ForwardError> {
    let path = file(sandbox, "lock");
    let dir = crate::paths::state_dir();
    std::fs::create_dir_all(&dir).map_err(io_error("create", dir))?;
    let mut lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", path.clone()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(ForwardError::AlreadyRunning(sandbox.to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", path)(e)),
    }
    {
        use std::io::Write as _;
        lock.set_len(0).map_err(io_error("write", path.clone()))?;
        write!(lock, "{}", std::process::id()).map_err(io_error("write", path.clone()))?;
    }
    let client = Arc::new(Clients {
        sandbox: sandbox.to_string(),
        client: tokio::sync::Mutex::new(None),
        turn: AtomicUsize::new(0),
    });
    let mut listeners: HashMap<u16, (Forward, tokio::task::JoinHandle<()>)> = HashMap::new();
    reload(sandbox, &client, &mut listeners).await;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).map_err(io_error("watch", path.clone()))?;
        let mut term = signal(SignalKind::terminate()).map_err(io_error("watch", path.clone()))?;
        loop {
            tokio::select! {
                _ = hup.recv() => reload(sandbox, &client, &mut listeners).await,
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(lock);
    Ok(())
}

/// Listens on the table's ports: new ones bound, gone or changed ones closed.
async fn reload(
    sandbox: &str,
    clients: &Arc<Clients>,
    listeners: &mut HashMap<u16, (Forward, tokio::task::JoinHandle<()>)>,
) {
    let table = table(sandbox);
    let mut failed = Vec::new();
    listeners.retain(|port, (forward, task)| {
        let keep = table.iter().any(|f| f.host_port == *port && f == forward);
        if !keep {
            task.abort();
        }
        keep
    });
    for forward in &table {
        if listeners.contains_key(&forward.host_port) {
            continue;
        }
        match tokio::net::TcpListener::bind(("127.0.0.1", forward.host_port)).await {
            Ok(listener) => {
                eprintln!(
                    "relaying 127.0.0.1:{} to {}/{}:{}",
                    forward.host_port, forward.namespace, forward.service, forward.port
                );
                let task = tokio::spawn(accept(listener, forward.clone(), clients.clone()));
                listeners.insert(forward.host_port, (forward.clone(), task));
            }
            Err(e) => {
                eprintln!("cannot listen on 127.0.0.1:{}: {e}", forward.host_port);
                failed.push(forward.host_port);
            }
        }
    }
    let report = Listening { table, failed };
    let dir = crate::paths::state_dir();
    let tmp = dir.join(format!(
        ".forward-{sandbox}.listening.{}",
        std::process::id()
    ));
    let text = serde_json::to_string(&report).expect("a report serialises");
    if let Err(e) =
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file(sandbox, "listening")))
    {
        eprintln!("cannot write {}: {e}", file(sandbox, "listening").display());
    }
}

async fn accept(listener: tokio::net::TcpListener, forward: Forward, clients: Arc<Clients>) {
    loop {
        match listener.accept().await {
            Ok((connection, _)) => {
                let forward = forward.clone();
                let clients = clients.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(&clients, &forward, connection).await {
                        eprintln!(
                            "{}/{}:{}: {e}",
                            forward.namespace, forward.service, forward.port
                        );
                    }
                });
            }
            Err(e) => {
                // out of file descriptors, say: not a busy loop
                eprintln!("accepting on 127.0.0.1:{}: {e}", forward.host_port);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The relay's API client, made on first use and again after a failure (a node made again
/// has new certificates).
struct Clients {
    sandbox: String,
    client: tokio::sync::Mutex<Option<kube::Client>>,
    /// Which ready pod the next connection goes to.
    turn: AtomicUsize,
}

impl Clients {
    async fn get(&self) -> Result<kube::Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let engine = crate::docker::Engine::connect()
            .await
            .map_err(|e| e.to_string())?;
        let (info, profile) = crate::node::running(&engine, &self.sandbox)
            .await
            .map_err(|e| e.to_string())?;
        let kubeconfig = crate::node::host_kubeconfig(&engine, &info, &profile)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the node has no kubeconfig yet")?;
        let context = crate::plan::Names::of(&self.sandbox).context;
        let client = crate::node::upgrading_client_for(&kubeconfig, &context)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn forget(&self) {
        *self.client.lock().await = None;
    }
}

/// Relays `connection` to a ready pod of the forward's Service, through a port-forward.
async fn relay(
    clients: &Clients,
    forward: &Forward,
    mut connection: tokio::net::TcpStream,
) -> Result<(), String> {
    let client = clients.get().await?;
    let (pod, port) = match backend(&client, forward, &clients.turn).await {
        Ok(found) => found,
        Err(e) => {
            clients.forget().await;
            return Err(e);
        }
    };
    let pods: Api<Pod> = Api::namespaced(client, &forward.namespace);
    let mut forwarder = match pods.portforward(&pod, &[port]).await {
        Ok(f) => f,
        Err(e) => {
            clients.forget().await;
            return Err(format!("port-forward to pod {pod}:{port}: {e}"));
        }
    };
    let mut upstream = forwarder
        .take_stream(port)
        .ok_or("the port-forward has no stream")?;
    let error = forwarder.take_error(port);
    let _ = connection.set_nodelay(true);
    let copied = tokio::io::copy_bidirectional(&mut connection, &mut upstream).await;
    drop(upstream);
    if let Some(error) = error {
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), error).await {
            return Err(format!("pod {pod}:{port}: {message}"));
        }
    }
    forwarder.abort();
    copied
        .map(|_| ())
        .map_err(|e| format!("pod {pod}:{port}: {e}"))
}

/// A ready pod of the forward's Service and the pod's port behind the Service's port
/// (round robin over the ready pods).
async fn backend(
    client: &kube::Client,
    forward: &Forward,
    turn: &AtomicUsize,
) -> Result<(String, u16), String> {
    let services: Api<Service> = Api::namespaced(client.clone(), &forward.namespace);
    let service = services
        .get(&forward.service)
        .await
        .map_err(|e| format!("Service: {}", crate::apply::api_message(&e)))?;
    let port_name = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.port == i32::from(forward.port))
        .ok_or_else(|| format!("the Service has no port {}", forward.port))?
        .name
        .clone();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &forward.namespace);
    let endpoints = endpoints
        .get(&forward.service)
        .await
        .map_err(|e| format!("Endpoints: {}", crate::apply::api_message(&e)))?;
    let ready = ready_pods(&endpoints, port_name.as_deref());
    if ready.is_empty() {
        return Err("no ready pod behind the Service".into());
    }
    let n = turn.fetch_add(1, Ordering::Relaxed);
    Ok(ready[n % ready.len()].clone())
}

/// The ready pods of `endpoints` with their port behind the Service port named `port_name`
/// (none for the unnamed port of a one-port Service: its Endpoints' port is unnamed too),
/// sorted (pure).
fn ready_pods(endpoints: &Endpoints, port_name: Option<&str>) -> Vec<(String, u16)> {
    let mut ready = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let Some(port) = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == port_name)
            .and_then(|p| u16::try_from(p.port).ok())
        else {
            continue;
        };
        // `addresses` holds the ready ones only (`notReadyAddresses` the others)
        for address in subset.addresses.iter().flatten() {
            if let Some(pod) = address
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
            {
                ready.push((pod, port));
            }
        }
    }
    ready.sort();
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(service: &str, port: u16, node_port: Option<u16>) -> Wanted {
        Wanted {
            namespace: "shop".into(),
            service: service.into(),
            port,
            node_port,
            tls: false,
        }
    }

    fn counter(start: u16) -> impl FnMut() -> std::io::Result<u16> {
        let mut next = start;
        move || {
            next += 1;
            Ok(next - 1)
        }
    }

    #[test]
    fn a_port_keeps_its_number_where_it_can() {
        let wanted = [
            want("db", 5432, Some(30432)),
            want("smtp", 25, Some(30025)),
            want("cache", 6379, None),
        ];
        // 25 needs root here; 6379 is someone else's
        let free = |p: u16| p >= 1024 && p != 6379;
        let table = allocate(&[], &wanted, false, &[8443], &free, &mut counter(50000)).unwrap();
        let ports: Vec<u16> = table.iter().map(|f| f.host_port).collect();
        assert_eq!(ports, [5432, 30025, 50000]);
        assert_eq!(table[0].url(), "tcp://127.0.0.1:5432");
        // the next up keeps them, held by the relay (they look taken) or free again
        let busy = |_: u16| false;
        let again = allocate(&table, &wanted, true, &[8443], &busy, &mut counter(60000)).unwrap();
        assert_eq!(again, table);
        let again = allocate(&table, &wanted, false, &[8443], &free, &mut counter(60000)).unwrap();
        assert_eq!(again, table);
        // after a reboot one of them was taken: only it moves
        let free = |p: u16| p >= 1024 && p != 6379 && p != 5432;
        let moved = allocate(&table, &wanted, false, &[8443], &free, &mut counter(60000)).unwrap();
        let ports: Vec<u16> = moved.iter().map(|f| f.host_port).collect();
        assert_eq!(ports, [30432, 30025, 50000]);
    }

    #[test]
    fn no_two_forwards_and_no_published_port_share_a_number() {
        let wanted = [
            want("a", 8443, None),
            want("b", 9000, None),
            want("c", 9000, None),
        ];
        let free = |_: u16| true;
        let mut any = counter(9000);
        let table = allocate(&[], &wanted, false, &[8443], &free, &mut any).unwrap();
        let ports: Vec<u16> = table.iter().map(|f| f.host_port).collect();
        assert_eq!(ports, [9000, 9001, 9002]);
        // a port another forward had is not taken from it by a new one
        let previous = [Forward {
            namespace: "shop".into(),
            service: "old".into(),
            port: 1,
            host_port: 7000,
            tls: false,
        }];
        let table = allocate(
            &previous,
            &[want("old", 1, None), want("new", 7000, None)],
            false,
            &[],
            &free,
            &mut counter(50000),
        )
        .unwrap();
        assert_eq!(table[0].host_port, 7000);
        assert_eq!(table[1].host_port, 50000);
    }

    #[test]
    fn connections_go_to_ready_pods_on_the_port_behind_the_services() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "subsets": [{
                "addresses": [
                    {"ip": "10.0.0.2", "targetRef": {"kind": "Pod", "name": "web-b"}},
                    {"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "web-a"}},
                    {"ip": "10.0.0.9"}
                ],
                "notReadyAddresses": [{"ip": "10.0.0.3", "targetRef": {"kind": "Pod", "name": "web-c"}}],
                "ports": [{"name": "http", "port": 8080}, {"name": "db", "port": 5432}]
            }]
        }))
        .unwrap();
        assert_eq!(
            ready_pods(&endpoints, Some("db")),
            [("web-a".to_string(), 5432), ("web-b".to_string(), 5432)]
        );
        assert!(ready_pods(&endpoints, Some("other")).is_empty());
        // a Service of one port may leave it unnamed, and so do its Endpoints
        let one: Endpoints = serde_json::from_value(serde_json::json!({
            "subsets": [{
                "addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "p"}}],
                "ports": [{"port": 6379}]
            }]
        }))
        .unwrap();
        assert_eq!(ready_pods(&one, None), [("p".to_string(), 6379)]);
        assert!(ready_pods(&one, Some("redis")).is_empty());
    }

    #[test]
    fn a_tls_port_gets_an_https_url() {
        let f = Forward {
            namespace: "shop".into(),
            service: "admin".into(),
            port: 8443,
            host_port: 8443,
            tls: true,
        };
        assert_eq!(f.url(), "https://127.0.0.1:8443/");
    }
}
