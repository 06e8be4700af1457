//! The node's lifecycle: find it through its labels, create it (with the privilege
//! fallback), start it, judge it ready through the API, and remove it.

use std::time::{Duration, Instant};

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Node as KubeNode, ServiceAccount};
use kube::api::{Api, ApiResource};

use crate::docker::{DockerError, Engine, NodeInfo};
use crate::kubeconfig::{self, KubeconfigError};
use crate::plan::{self, HostPorts, Names, Security};
use crate::profile::{self, Profile, ProfileError};
use crate::report::Reporter;
use crate::wait::{Changes, Key};

/// How long to try pulling the preferred node image before falling back.
const PULL_DEADLINE: Duration = Duration::from_secs(300);
/// Log lines shown when the node fails.
const LOG_TAIL: usize = 40;

/// Errors bringing a node up or down.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A Docker operation failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The profile is unknown.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The node image is neither present nor pullable.
    #[error("node image {image} is not in the Docker engine and cannot be pulled; {hint}")]
    ImageUnavailable {
        /// Image reference.
        image: String,
        /// What to do.
        hint: String,
        /// The pull failure.
        #[source]
        source: DockerError,
    },
    /// The sandbox runs a different profile than requested.
    #[error("sandbox {sandbox} runs profile {running}, not {requested}; run `sandbox down --name {sandbox}` first to switch")]
    ProfileMismatch {
        /// Sandbox name.
        sandbox: String,
        /// Profile of the running node.
        running: String,
        /// Requested profile.
        requested: String,
    },
    /// The node container stopped while booting.
    #[error("node container {name} exited while booting; its last log lines:\n{logs}")]
    Exited {
        /// Container name.
        name: String,
        /// Log tail.
        logs: String,
    },
    /// The engine refused `--privileged` and the profile cannot run without it.
    #[error(
        "the Docker engine refused --privileged (its host cannot grant every capability), and \
         profile {profile} cannot run without it: {reason}; `--profile offline` runs without it"
    )]
    PrivilegedRequired {
        /// Profile name.
        profile: String,
        /// Why the profile needs it.
        reason: &'static str,
    },
    /// The node did not become ready in time.
    #[error("node {name} was not ready within {seconds} s (last seen: {last}); its last log lines:\n{logs}")]
    BootTimeout {
        /// Container name.
        name: String,
        /// The deadline.
        seconds: u64,
        /// The last observation.
        last: String,
        /// Log tail.
        logs: String,
    },
    /// The command needs a running sandbox.
    #[error("sandbox {sandbox} is not running (`sandbox up` starts it)")]
    NotRunning {
        /// Sandbox name.
        sandbox: String,
    },
    /// Choosing host ports failed.
    #[error("cannot choose free host ports")]
    Ports(#[source] std::io::Error),
    /// The kubeconfig could not be built or merged.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// The node's kubeconfig gives no working client.
    #[error("cannot build a Kubernetes client for {context}: {message}")]
    Client {
        /// Context name.
        context: String,
        /// What failed.
        message: String,
    },
}

/// A running, ready node and how to reach it.
#[derive(Clone)]
pub struct Node {
    /// The container as Docker sees it.
    pub info: NodeInfo,
    /// Its profile.
    pub profile: Profile,
    /// Host ports.
    pub ports: HostPorts,
    /// The node's address on its Docker network (reachable from a Linux host).
    pub ip: Option<String>,
    /// Standalone host kubeconfig (context `sandbox-<name>`).
    pub kubeconfig: serde_yaml::Value,
    /// A client for the node's API server.
    pub client: kube::Client,
    /// Whether this run created the container.
    pub created: bool,
    /// Whether this run created the sandbox (its data volume): a first boot that fails
    /// leaves nothing behind.
    pub fresh: bool,
    /// When the container last started (its pods' statuses of before are stale).
    pub started: Option<k8s_openapi::jiff::Timestamp>,
}

/// Picks the profile for a new node: the requested one, else k3s when its image is in the
/// engine (and the engine is not known to refuse the `--privileged` k3s needs), else the
/// offline profile when its image is, else k3s pulled.
pub async fn choose_profile(
    engine: &Engine,
    requested: Option<&str>,
    reporter: &Reporter,
) -> Result<Profile, NodeError> {
    if let Some(name) = requested {
        let profile = Profile::named(name)?;
        ensure_image(engine, &profile, reporter).await?;
        return Ok(profile);
    }
    let preferred = Profile::named(profile::PREFERRED)?;
    let fallback = Profile::named(profile::FALLBACK)?;
    let has = async |p: &Profile| engine.image_id(&p.node.image).await.map(|id| id.is_some());
    if has(&preferred).await? {
        // an engine known to refuse --privileged cannot run it: the fallback can
        let refused = preferred.node.requires_privileged
            && engine.id().await.as_deref().is_some_and(refuses_privileged);
        if !refused || !has(&fallback).await? {
            return Ok(preferred);
        }
        reporter.info(format!(
            "this Docker engine refuses --privileged, which profile {} needs; using profile {} ({})",
            preferred.name, fallback.name, fallback.node.image
        ));
        return Ok(fallback);
    }
    if has(&fallback).await? {
        reporter.info(format!(
            "{} is not in the Docker engine; using profile {} ({})",
            preferred.node.image, fallback.name, fallback.node.image
        ));
        return Ok(fallback);
    }
    ensure_image(engine, &preferred, reporter).await?;
    Ok(preferred)
}

async fn ensure_image(
    engine: &Engine,
    profile: &Profile,
    reporter: &Reporter,
) -> Result<(), NodeError> {
    let image = &profile.node.image;
    if engine.image_id(image).await?.is_some() {
        return Ok(());
    }
    let step = reporter.step(format!("pulling {image}"));
    match engine.pull(image, PULL_DEADLINE).await {
        Ok(()) => {
            step.done(format!("pulled {image}"));
            Ok(())
        }
        Err(source) => Err(NodeError::ImageUnavailable {
            image: image.clone(),
            hint: profile.node.build_hint.clone().unwrap_or_else(|| {
                "check the registry is reachable, or use `--profile offline`".to_string()
            }),
            source,
        }),
    }
}

/// Finds sandbox `sandbox`'s node, starting it when stopped or creating it when absent,
/// then waits until it is ready.
pub async fn ensure(
    engine: &Engine,
    sandbox: &str,
    requested_profile: Option<&str>,
    boot_timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<Node, NodeError> {
    boot(engine, sandbox, requested_profile, reporter)
        .await?
        .ready(engine, boot_timeout, reporter)
        .await
}

/// A node container that runs (created or started by this run, or found running) and may
/// still be booting: its container runtime answers first, its API server later.
#[derive(Debug, Clone)]
pub struct Booting {
    /// The sandbox's names.
    pub names: Names,
    /// Its profile.
    pub profile: Profile,
    /// Whether this run created it.
    pub created: bool,
    /// Whether this run created the sandbox (its data volume).
    pub fresh: bool,
}

/// Finds sandbox `sandbox`'s node, starting it when stopped or creating it when absent,
/// without waiting for it to boot.
pub async fn boot(
    engine: &Engine,
    sandbox: &str,
    requested_profile: Option<&str>,
    reporter: &Reporter,
) -> Result<Booting, NodeError> {
    let names = Names::of(sandbox);
    let mut existing = engine.list_nodes(Some(sandbox)).await?.into_iter().next();
    if let Some(info) = existing.take_if(|n| n.never_started()) {
        // it holds nothing yet (the data is on the volume), and a privileged one the engine
        // refuses would never start: make it afresh
        reporter.info(format!(
            "node {} was created but never started (an interrupted `up`); creating it again",
            info.name
        ));
        engine.remove_container(&info.name).await?;
    }
    let (profile, created, fresh) = match existing {
        Some(info) => {
            if let Some(requested) = requested_profile {
                if requested != info.profile {
                    return Err(NodeError::ProfileMismatch {
                        sandbox: sandbox.to_string(),
                        running: info.profile,
                        requested: requested.to_string(),
                    });
                }
            }
            let profile = Profile::named(&info.profile)?;
            let created = !info.running() && start(engine, &info, &profile, reporter).await?;
            (profile, created, false)
        }
        None => {
            let profile = choose_profile(engine, requested_profile, reporter).await?;
            let fresh = create(engine, sandbox, &profile, None, reporter).await?;
            (profile, true, fresh)
        }
    };
    Ok(Booting {
        names,
        profile,
        created,
        fresh,
    })
}

impl Booting {
    /// Waits until the node is ready to run pods (within `boot_timeout`, else the
    /// profile's); a node this run created and that never became ready is removed.
    pub async fn ready(
        self,
        engine: &Engine,
        boot_timeout: Option<Duration>,
        reporter: &Reporter,
    ) -> Result<Node, NodeError> {
        let deadline = self.deadline(boot_timeout);
        let node = self.serving(engine, deadline, reporter).await?;
        node.schedulable(engine, deadline, reporter).await?;
        Ok(node)
    }

    /// When booting must be over: `boot_timeout` from now, else the profile's.
    pub fn deadline(&self, boot_timeout: Option<Duration>) -> BootDeadline {
        let timeout = boot_timeout.unwrap_or(self.profile.node.boot_timeout);
        BootDeadline {
            at: Instant::now() + timeout,
            seconds: timeout.as_secs(),
        }
    }

    /// Waits until the node's API server takes objects (it is ready and the default
    /// ServiceAccount exists), by `deadline`. Its pods are scheduled once the node itself
    /// is Ready ([`Node::schedulable`]): objects can be applied meanwhile. A node this run
    /// created and that never got there is removed.
    pub async fn serving(
        self,
        engine: &Engine,
        deadline: BootDeadline,
        reporter: &Reporter,
    ) -> Result<Node, NodeError> {
        let Booting {
            names,
            profile,
            created,
            fresh,
        } = self;
        let step = reporter.step(format!(
            "waiting for node {} ({})",
            names.node, profile.name
        ));
        let watch = BootWatch {
            engine,
            names: &names,
            deadline,
            created,
            fresh,
        };
        let node = wait_serving(&watch, &profile, &step).await?;
        step.done(format!("API server of node {} ready", names.node));
        Ok(Node {
            created,
            fresh,
            ..node
        })
    }
}

impl Node {
    /// Waits until the node is Ready to run pods, by `deadline`; a node this run created
    /// and that never got there is removed.
    pub async fn schedulable(
        &self,
        engine: &Engine,
        deadline: BootDeadline,
        reporter: &Reporter,
    ) -> Result<(), NodeError> {
        let names = Names::of(&self.info.sandbox);
        let watch = BootWatch {
            engine,
            names: &names,
            deadline,
            created: self.created,
            fresh: self.fresh,
        };
        let step = reporter.step(format!("waiting for node {} to be Ready", names.node));
        // the node's own changes (its Ready condition, the taint lifted after it) wake the
        // check the moment they happen; without them, it comes every CHECK_AT_MOST
        let (mut changes, node) = node_changes(&self.client, &names.node);
        let pause = async || {
            let until = Instant::now() + CHECK_AT_MOST;
            changes.next(until, &node).await;
        };
        watch
            .poll(&step, String::new(), pause, async || {
                node_ready(&self.client, &names.node).await
            })
            .await?;
        step.done(format!("node {} ready", names.node));
        Ok(())
    }
}

/// The longest pause between two checks of a node taking pods: the container's state is
/// looked at as often.
const CHECK_AT_MOST: Duration = Duration::from_millis(250);

/// The changes of Node `name` (a metadata watch of the Nodes, see [`crate::wait::Changes`]),
/// and the key they name it by.
fn node_changes(client: &kube::Client, name: &str) -> (Changes, HashSet<Key>) {
    let kind = "Node".to_string();
    let nodes = (ApiResource::erase::<KubeNode>(&()), None, kind.clone());
    let key = (kind, None, name.to_string());
    (Changes::of(client, vec![nodes]), HashSet::from([key]))
}

/// When a node's boot must be over.
#[derive(Debug, Clone, Copy)]
pub struct BootDeadline {
    at: Instant,
    seconds: u64,
}

/// A booting node watched until a deadline: it must keep running, and a node this run
/// created that fails to boot is removed (it is not worth keeping), with the whole sandbox
/// when this run created it (a first boot that fails leaves nothing behind).
struct BootWatch<'a> {
    engine: &'a Engine,
    names: &'a Names,
    deadline: BootDeadline,
    created: bool,
    fresh: bool,
}

impl BootWatch<'_> {
    /// Tries `probe` until it gives a value, after each `pause`. Each time, it first checks
    /// that the container still runs, reports on `step` what the probe observed (its `Err`)
    /// when that changed, and gives up at the deadline with the last observation (`last`
    /// until the probe has said anything).
    async fn poll<T>(
        &self,
        step: &crate::report::Step,
        mut last: String,
        mut pause: impl AsyncFnMut(),
        mut probe: impl AsyncFnMut() -> Result<T, String>,
    ) -> Result<T, NodeError> {
        loop {
            self.check_running().await?;
            match probe().await {
                Ok(value) => return Ok(value),
                Err(observed) => {
                    if observed != last {
                        step.update(format!("waiting for node {}: {observed}", self.names.node));
                    }
                    last = observed;
                }
            }
            self.check_time(&last).await?;
            pause().await;
        }
    }

    /// `Err` (with the node's last log lines) once the container stopped running.
    async fn check_running(&self) -> Result<(), NodeError> {
        let state = self.engine.container_state(&self.names.node).await?;
        if state.as_deref() == Some("running") {
            return Ok(());
        }
        let logs = self.logs().await;
        Err(self
            .failed(NodeError::Exited {
                name: self.names.node.clone(),
                logs,
            })
            .await)
    }

    /// `Err` once the deadline passed; `last` is what was observed last.
    async fn check_time(&self, last: &str) -> Result<(), NodeError> {
        if Instant::now() < self.deadline.at {
            return Ok(());
        }
        let logs = self.logs().await;
        Err(self
            .failed(NodeError::BootTimeout {
                name: self.names.node.clone(),
                seconds: self.deadline.seconds,
                last: last.to_string(),
                logs,
            })
            .await)
    }

    async fn logs(&self) -> String {
        self.engine
            .logs_tail(&self.names.node, LOG_TAIL)
            .await
            .unwrap_or_default()
    }

    async fn failed(&self, error: NodeError) -> NodeError {
        if self.fresh {
            let _ = remove(self.engine, &self.names.sandbox, true).await;
        } else if self.created {
            let _ = self.engine.remove_container(&self.names.node).await;
        }
        error
    }
}

/// Starts the stopped node `info`; returns whether it had to be created again instead:
/// when another program (another sandbox's node on 80/443) took one of its host ports
/// while it was stopped, as a container's ports are fixed. Its cluster lives on the data
/// volume and carries on.
async fn start(
    engine: &Engine,
    info: &NodeInfo,
    profile: &Profile,
    reporter: &Reporter,
) -> Result<bool, NodeError> {
    let step = reporter.step(format!("starting stopped node {}", info.name));
    match engine.start(&info.name).await {
        Ok(()) => {
            step.done(format!("started node {}", info.name));
            Ok(false)
        }
        Err(DockerError::StartContainer { ref source, .. })
            if crate::docker::is_port_conflict(source) =>
        {
            drop(step);
            reporter.info(format!(
                "a host port of node {} was taken while it was stopped; creating it again, on its other ports (its data is kept)",
                info.name
            ));
            // a stopped container publishes nothing: its ports are in its configuration
            let bound = engine.bound_ports(&info.name).await?;
            let port = |p| bound.get(&p).copied().unwrap_or_default();
            let previous = HostPorts {
                api: port(profile.node.api_port),
                http: port(plan::INGRESS_HTTP_PORT),
                https: port(plan::INGRESS_HTTPS_PORT),
            };
            engine.remove_container(&info.name).await?;
            create(engine, &info.sandbox, profile, Some(previous), reporter).await?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// The running node container of sandbox `sandbox` and its profile.
pub async fn running(engine: &Engine, sandbox: &str) -> Result<(NodeInfo, Profile), NodeError> {
    let info = engine
        .list_nodes(Some(sandbox))
        .await?
        .into_iter()
        .find(|n| n.running())
        .ok_or_else(|| NodeError::NotRunning {
            sandbox: sandbox.to_string(),
        })?;
    let profile = Profile::named(&info.profile)?;
    Ok((info, profile))
}

/// The running node of sandbox `sandbox`, connected, without creating or starting
/// anything.
pub async fn ensure_running(engine: &Engine, sandbox: &str) -> Result<Node, NodeError> {
    let (info, profile) = running(engine, sandbox).await?;
    let kubeconfig = host_kubeconfig(engine, &info, &profile)
        .await?
        .ok_or_else(|| NodeError::NotRunning {
            sandbox: sandbox.to_string(),
        })?;
    attach(engine, info, profile, kubeconfig).await
}

/// The running node `info` with its host kubeconfig (as [`host_kubeconfig`] made it),
/// connected.
pub async fn attach(
    engine: &Engine,
    info: NodeInfo,
    profile: Profile,
    kubeconfig: serde_yaml::Value,
) -> Result<Node, NodeError> {
    let names = Names::of(&info.sandbox);
    let client = client_for(&kubeconfig, &names.context).await?;
    assemble(engine, info, profile, kubeconfig, client).await
}

/// The node of `info`, reached with `client` (made from `kubeconfig`).
async fn assemble(
    engine: &Engine,
    info: NodeInfo,
    profile: Profile,
    kubeconfig: serde_yaml::Value,
    client: kube::Client,
) -> Result<Node, NodeError> {
    let names = Names::of(&info.sandbox);
    let ports = ports_of(&info, &profile);
    let (ip, started) = engine
        .container_ip_and_start(&names.node, &names.network)
        .await?;
    Ok(Node {
        info,
        profile,
        ports,
        ip,
        kubeconfig,
        client,
        created: false,
        fresh: false,
        started,
    })
}

/// Creates and starts the node container with `--privileged`, falling back to the explicit
/// capability set when the engine refuses it; on the `previous` host ports still free, if
/// given (see [`plan::choose_host_ports`]).
async fn create(
    engine: &Engine,
    sandbox: &str,
    profile: &Profile,
    previous: Option<HostPorts>,
    reporter: &Reporter,
) -> Result<bool, NodeError> {
    let names = Names::of(sandbox);
    let step = reporter.step(format!(
        "creating node {} from {}",
        names.node, profile.node.image
    ));
    engine
        .ensure_network(&names.network, &plan::labels(sandbox, "network"))
        .await?;
    let fresh = engine
        .ensure_volume(&names.data_volume, &plan::labels(sandbox, "data"))
        .await?;
    let engine_id = engine.id().await;
    let refused_before = engine_id.as_deref().is_some_and(refuses_privileged);
    let mut security = Security::first(profile, refused_before);
    let mut attempts = 0;
    let ports = loop {
        attempts += 1;
        let ports = plan::choose_host_ports(previous).map_err(NodeError::Ports)?;
        let spec = plan::node_spec(sandbox, profile, ports, security.clone());
        match engine.run_node(&spec).await {
            Ok(()) => break ports,
            Err(DockerError::StartContainer { ref source, .. })
                if security == Security::Privileged
                    && crate::docker::is_privilege_refusal(source) =>
            {
                if let Some(id) = engine_id.as_deref().filter(|_| !refused_before) {
                    remember_privileged_refusal(id);
                }
                let Some(fallback) = Security::after_refusal(profile) else {
                    return Err(NodeError::PrivilegedRequired {
                        profile: profile.name.clone(),
                        reason: PRIVILEGED_REASON,
                    });
                };
                reporter.info(
                    "the Docker engine refused --privileged (the host cannot grant every capability); \
                     using all capabilities but SYS_RESOURCE instead (remembered for this engine)",
                );
                security = fallback;
            }
            // another sandbox took a port between the check and the start: choose again
            Err(DockerError::StartContainer { ref source, .. })
                if crate::docker::is_port_conflict(source) && attempts < 5 => {}
            Err(e) => return Err(e.into()),
        }
    };
    if ports.http != plan::INGRESS_HTTP_PORT || ports.https != plan::INGRESS_HTTPS_PORT {
        reporter.info(format!(
            "host ports 80/443 are taken; ingress is published on 127.0.0.1:{} (http) and 127.0.0.1:{} (https)",
            ports.http, ports.https
        ));
    }
    step.done(format!("created node {}", names.node));
    Ok(fresh)
}

/// Why a profile that requires `--privileged` does (the only one that does is k3s).
const PRIVILEGED_REASON: &str =
    "its containerd gives every pod sandbox oom_score_adj -998, which needs CAP_SYS_RESOURCE";

/// The file listing the engines (by ID) that refused `--privileged`: the next node on them
/// is created with the capability set at once (a refused attempt costs about a second).
fn refusals_path() -> std::path::PathBuf {
    crate::paths::state_dir().join("privileged-refused")
}

fn refuses_privileged(engine_id: &str) -> bool {
    std::fs::read_to_string(refusals_path())
        .is_ok_and(|text| text.lines().any(|line| line == engine_id))
}

/// Best effort: a lost note costs one refused attempt next time.
fn remember_privileged_refusal(engine_id: &str) {
    use std::io::Write;
    let path = refusals_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(file, "{engine_id}");
    }
}

async fn wait_serving(
    watch: &BootWatch<'_>,
    profile: &Profile,
    step: &crate::report::Step,
) -> Result<Node, NodeError> {
    let (engine, names) = (watch.engine, watch.names);
    let mut connected: Option<(kube::Client, serde_yaml::Value)> = None;
    let every = Duration::from_millis(250);
    let pause = async || tokio::time::sleep(every).await;
    let (client, kubeconfig) = watch
        .poll(step, "container starting".to_string(), pause, async || {
            if connected.is_none() {
                connected = match connect(engine, names, profile).await {
                    Ok(Some(c)) => Some(c),
                    Ok(None) => {
                        return Err(format!("{} not written yet", profile.node.kubeconfig_path))
                    }
                    Err(e) => return Err(e.to_string()),
                };
            }
            let (client, _) = connected.as_ref().expect("connected above");
            serving(client).await?;
            Ok(connected.take().expect("connected above"))
        })
        .await?;
    let info = engine
        .list_nodes(Some(&names.sandbox))
        .await?
        .into_iter()
        .find(|n| n.name == names.node)
        .ok_or_else(|| NodeError::Exited {
            name: names.node.clone(),
            logs: String::new(),
        })?;
    assemble(engine, info, profile.clone(), kubeconfig, client).await
}

/// The host ports a node publishes.
pub fn ports_of(info: &NodeInfo, profile: &Profile) -> HostPorts {
    HostPorts {
        api: info.host_port(profile.node.api_port).unwrap_or_default(),
        http: info.host_port(plan::INGRESS_HTTP_PORT).unwrap_or_default(),
        https: info.host_port(plan::INGRESS_HTTPS_PORT).unwrap_or_default(),
    }
}

/// Reads the node's admin kubeconfig and rewrites it for the host. `None` until the node
/// has written it.
pub async fn host_kubeconfig(
    engine: &Engine,
    info: &NodeInfo,
    profile: &Profile,
) -> Result<Option<serde_yaml::Value>, NodeError> {
    let names = Names::of(&info.sandbox);
    let Some(admin) = engine
        .read_file(&info.name, &profile.node.kubeconfig_path)
        .await?
    else {
        return Ok(None);
    };
    let Some(api) = info.host_port(profile.node.api_port) else {
        return Ok(None);
    };
    let admin = String::from_utf8_lossy(&admin);
    let server = format!("https://127.0.0.1:{api}");
    Ok(Some(kubeconfig::for_host(&admin, &names.context, &server)?))
}

/// A Kubernetes client from a host kubeconfig made by [`host_kubeconfig`].
pub async fn client_for(
    kubeconfig: &serde_yaml::Value,
    context: &str,
) -> Result<kube::Client, NodeError> {
    let config = config_for(kubeconfig, context).await?;
    multiplexed_client(config, RESPONSE_TIMEOUT).map_err(|e| client_error(context, e))
}

/// A client for requests that upgrade their connection (exec, attach, port-forward): kube's
/// own, over HTTP/1.1, since an HTTP/2 connection cannot be upgraded.
pub async fn upgrading_client_for(
    kubeconfig: &serde_yaml::Value,
    context: &str,
) -> Result<kube::Client, NodeError> {
    let config = config_for(kubeconfig, context).await?;
    kube::Client::try_from(config).map_err(|e| client_error(context, e))
}

fn client_error(context: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Client {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// The client config of `context` of `kubeconfig`.
async fn config_for(
    kubeconfig: &serde_yaml::Value,
    context: &str,
) -> Result<kube::Config, NodeError> {
    let parsed: kube::config::Kubeconfig =
        serde_yaml::from_value(kubeconfig.clone()).map_err(|e| client_error(context, e))?;
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(parsed, &options)
        .await
        .map_err(|e| client_error(context, e))
}

/// How long a request may wait for its response's head (a hung API server).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client whose requests share one connection: HTTP/2 when the server offers it (every
/// Kubernetes API server does), so that a burst of concurrent requests (the lists of a
/// no-change `up`, 16 applies at once, the readiness checks) costs one TLS handshake, not
/// one each as kube's HTTP/1.1 client pays. A dead connection is found by HTTP/2 pings; a
/// response whose head has not come within `timeout` fails (a streamed body, a watch's or
/// `logs --follow`'s, is not bounded).
fn multiplexed_client(
    config: kube::Config,
    timeout: Duration,
) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(tower::timeout::TimeoutLayer::new(timeout))
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}

async fn connect(
    engine: &Engine,
    names: &Names,
    profile: &Profile,
) -> Result<Option<(kube::Client, serde_yaml::Value)>, NodeError> {
    let Some(info) = engine
        .list_nodes(Some(&names.sandbox))
        .await?
        .into_iter()
        .find(|n| n.name == names.node)
    else {
        return Ok(None);
    };
    let Some(kubeconfig) = host_kubeconfig(engine, &info, profile).await? else {
        return Ok(None);
    };
    let client = client_for(&kubeconfig, &names.context).await?;
    Ok(Some((client, kubeconfig)))
}

/// The API server's own readiness (`/readyz`).
pub async fn api_ready(client: &kube::Client) -> Result<(), kube::Error> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("static request");
    client.request_text(request).await.map(drop)
}

/// Whether the API server takes objects: `/readyz`, and the default ServiceAccount (pods
/// are refused without it). `Err` carries what was observed.
async fn serving(client: &kube::Client) -> Result<(), String> {
    api_ready(client)
        .await
        .map_err(|e| format!("API server not ready: {}", short_error(&e)))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    match accounts.get_opt("default").await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("default ServiceAccount not created yet".to_string()),
        Err(e) => Err(format!("cannot read ServiceAccounts: {}", short_error(&e))),
    }
}

/// Whether node `node_name` is registered, Ready and free of the lifecycle taints that keep
/// pods off it. `Err` carries what was observed.
pub(crate) async fn node_ready(client: &kube::Client, node_name: &str) -> Result<(), String> {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let node = nodes
        .get_opt(node_name)
        .await
        .map_err(|e| format!("cannot read nodes: {}", short_error(&e)))?
        .ok_or_else(|| format!("node {node_name} not registered yet"))?;
    takes_pods(&node, node_name)
}

/// Prefixes of the taints Kubernetes itself puts on a node and lifts again: the node
/// lifecycle controller's and the kubelet's (`node.kubernetes.io/not-ready`,
/// `.../disk-pressure`, ...) and the cloud provider's `uninitialized` (k3s runs its own
/// cloud controller).
const SYSTEM_TAINTS: &[&str] = &["node.kubernetes.io/", "node.cloudprovider.kubernetes.io/"];

/// Whether `node` (named `name`) takes pods: Ready, and no system taint that keeps pods
/// off it. `Err` says what holds it back, naming the taint and, for a pressure taint, the
/// kubelet's condition message.
fn takes_pods(node: &KubeNode, name: &str) -> Result<(), String> {
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    // the node lifecycle controller lifts the not-ready taint a moment after Ready; a pod
    // created before that is refused and tried again only after a back-off
    let held_off = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .find(|t| {
            SYSTEM_TAINTS.iter().any(|p| t.key.starts_with(p)) && t.effect != "PreferNoSchedule"
        });
    match ready {
        Some(c) if c.status == "True" => match held_off {
            Some(t) => {
                let mut text = format!("node {name} has taint {}:{}", t.key, t.effect);
                // node.kubernetes.io/disk-pressure comes with the condition DiskPressure
                let condition = t
                    .key
                    .strip_prefix("node.kubernetes.io/")
                    .map(|k| k.replace('-', ""))
                    .and_then(|k| conditions.iter().find(|c| c.type_.eq_ignore_ascii_case(&k)))
                    .filter(|c| c.status == "True");
                if let Some(c) = condition {
                    let why = c.message.as_deref().or(c.reason.as_deref()).unwrap_or("");
                    text.push_str(&format!(" ({}: {why})", c.type_));
                }
                if t.key.ends_with("/disk-pressure") {
                    text.push_str("; free space on the Docker engine's disk");
                }
                Err(text)
            }
            None => Ok(()),
        },
        Some(c) => Err(format!(
            "node {name} not Ready: {}",
            c.message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
        )),
        None => Err(format!("node {name} has no Ready condition yet")),
    }
}

fn short_error(e: &kube::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text.chars().take(200).collect()
}

/// What `down` removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Removed {
    /// Containers.
    pub containers: Vec<String>,
    /// Networks.
    pub networks: Vec<String>,
    /// Volumes (the data volume only with purge).
    pub volumes: Vec<String>,
    /// Whether the kube context was removed.
    pub context: bool,
}

/// Removes everything sandbox `sandbox` made; the data volume only when `purge`.
pub async fn remove(engine: &Engine, sandbox: &str, purge: bool) -> Result<Removed, NodeError> {
    let names = Names::of(sandbox);
    let mut removed = Removed::default();
    for container in engine.list_containers(sandbox).await? {
        engine.remove_container(&container).await?;
        removed.containers.push(container);
    }
    for network in engine.list_networks(sandbox).await? {
        engine.remove_network(&network).await?;
        removed.networks.push(network);
    }
    if purge {
        for volume in engine.list_volumes(sandbox).await? {
            engine.remove_volume(&volume).await?;
            removed.volumes.push(volume);
        }
    }
    removed.context = kubeconfig::uninstall(&kubeconfig::user_kubeconfig_path(), &names.context)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conditions: serde_json::Value, taints: serde_json::Value) -> KubeNode {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn ready() -> serde_json::Value {
        serde_json::json!({"type": "Ready", "status": "True", "reason": "KubeletReady"})
    }

    #[test]
    fn a_ready_untainted_node_takes_pods() {
        assert_eq!(
            takes_pods(
                &node(serde_json::json!([ready()]), serde_json::json!([])),
                "n"
            ),
            Ok(())
        );
        // a taint of the user's own, or one that only steers, does not hold the node back
        let taints = serde_json::json!([
            {"key": "example.com/gpu", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/whatever", "effect": "PreferNoSchedule"},
        ]);
        assert_eq!(
            takes_pods(&node(serde_json::json!([ready()]), taints), "n"),
            Ok(())
        );
    }

    #[test]
    fn the_taint_that_holds_the_node_back_is_named() {
        let conditions = serde_json::json!([
            ready(),
            {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure",
             "message": "kubelet has disk pressure"},
        ]);
        let taints = serde_json::json!([
            {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
        ]);
        let held = takes_pods(&node(conditions, taints), "n").unwrap_err();
        assert_eq!(
            held,
            "node n has taint node.kubernetes.io/disk-pressure:NoSchedule \
             (DiskPressure: kubelet has disk pressure); free space on the Docker engine's disk"
        );
        // and the boot timeout shows it as what it saw last
        let error = NodeError::BootTimeout {
            name: "n".into(),
            seconds: 180,
            last: held,
            logs: String::new(),
        };
        assert!(
            error.to_string().contains(
                "(last seen: node n has taint node.kubernetes.io/disk-pressure:NoSchedule"
            ),
            "{error}"
        );
        // k3s's own cloud controller lifts this one (the kubelet runs with an external
        // cloud provider): pods created before are refused too
        let taints = serde_json::json!([
            {"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true",
             "effect": "NoSchedule"},
        ]);
        assert_eq!(
            takes_pods(&node(serde_json::json!([ready()]), taints), "n").unwrap_err(),
            "node n has taint node.cloudprovider.kubernetes.io/uninitialized:NoSchedule"
        );
    }

    #[test]
    fn a_node_not_ready_says_why() {
        let conditions = serde_json::json!([
            {"type": "Ready", "status": "False", "message": "container runtime network not ready"},
        ]);
        let taints = serde_json::json!([
            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
        ]);
        assert_eq!(
            takes_pods(&node(conditions, taints), "n").unwrap_err(),
            "node n not Ready: container runtime network not ready"
        );
        assert_eq!(
            takes_pods(&node(serde_json::json!([]), serde_json::json!([])), "n").unwrap_err(),
            "node n has no Ready condition yet"
        );
    }

    #[test]
    fn a_refused_privileged_k3s_says_what_to_do() {
        let error = NodeError::PrivilegedRequired {
            profile: "k3s".into(),
            reason: PRIVILEGED_REASON,
        };
        let text = error.to_string();
        assert!(text.contains("refused --privileged"), "{text}");
        assert!(text.contains("profile k3s cannot run without it"), "{text}");
        assert!(text.contains("CAP_SYS_RESOURCE"), "{text}");
        assert!(text.contains("`--profile offline`"), "{text}");
    }

    #[tokio::test]
    async fn a_request_the_api_server_never_answers_fails() {
        // a server that takes connections and requests and never answers
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = kube::Config::new(format!("http://{address}").parse().unwrap());
        let client = multiplexed_client(config, Duration::from_millis(200)).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(20), api_ready(&client)).await;
        let error = outcome
            .expect("the client gives up by itself")
            .expect_err("nothing answered");
        assert!(error.to_string().contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn a_node_watch_that_cannot_open_leaves_checks_paced() {
        // nothing listens there any more: every watch is refused at once
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let config = kube::Config::new(format!("http://{address}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (mut changes, node) = node_changes(&client, "n");
        for _ in 0..2 {
            let started = Instant::now();
            let until = started + CHECK_AT_MOST;
            tokio::time::timeout(Duration::from_secs(20), changes.next(until, &node))
                .await
                .expect("a failed watch does not hold the check back");
            // not a busy loop: the check comes at the pace it would without a watch
            assert!(started.elapsed() >= CHECK_AT_MOST);
        }
    }
}
