//! The Docker engine: the only module that speaks bollard.
//!
//! Translation from the plan's types to the engine's ([`container_body`]) is pure and
//! unit-tested, and so is finding the engine as the docker CLI does ([`engine_endpoints`]);
//! everything else is thin I/O with one error variant per operation.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerSummary, DeviceMapping, HostConfig, HostConfigCgroupnsModeEnum,
    Mount, NetworkCreateRequest, PortBinding as DockerPortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::labels;
use crate::plan::{NodeSpec, Security};

/// Errors talking to the Docker engine, one variant per operation.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answers at the address found (see [`engine_endpoints`]), or at any of the
    /// default ones: each attempt names its address, where it came from and what failed.
    #[error("{}", unreachable(tried))]
    Connect {
        /// The addresses tried, in order.
        tried: Vec<Attempt>,
        /// Cause, when one address was tried (with several, each attempt says its own).
        #[source]
        source: Option<BollardError>,
    },
    /// Something accepts connections at the engine's address but does not answer.
    #[error("the Docker engine at {host} ({origin}) did not answer within {seconds} s")]
    NotAnswering {
        /// The engine's address.
        host: String,
        /// Where the address came from.
        origin: Box<Origin>,
        /// The deadline.
        seconds: u64,
    },
    /// The Docker CLI's configuration directory has no place (no DOCKER_CONFIG, no HOME).
    #[error(transparent)]
    ConfigDir(#[from] crate::paths::PathError),
    /// The Docker CLI's config file (which names the current context) cannot be used.
    #[error("{path}: {problem}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A Docker context cannot be used: its meta.json is missing, malformed or has no
    /// Docker endpoint.
    #[error("Docker context \"{name}\" ({chosen_by}): {path}: {problem}")]
    Context {
        /// The context's name.
        name: String,
        /// What selected it: `DOCKER_CONTEXT`, or the config file's `currentContext`.
        chosen_by: String,
        /// Its meta.json.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The engine's address is of a kind sandbox cannot connect to (`ssh://`, `npipe://`).
    #[error("the Docker engine at {host} ({origin}) {problem}")]
    Unsupported {
        /// The address.
        host: String,
        /// Where it came from.
        origin: Box<Origin>,
        /// Why, and what to do instead.
        problem: String,
    },
    /// A TLS file of the engine's endpoint (CA, client certificate or key) cannot be used.
    #[error("cannot use {path} for TLS to the Docker engine ({origin}): {problem}")]
    TlsMaterial {
        /// The file.
        path: PathBuf,
        /// Where the endpoint came from.
        origin: Box<Origin>,
        /// What is wrong.
        problem: String,
    },
    /// Listing containers, networks or volumes failed.
    #[error("cannot list {what}")]
    List {
        /// What was listed.
        what: &'static str,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Creating the node container failed.
    #[error("cannot create container {name}")]
    CreateContainer {
        /// Container name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Starting a container failed.
    #[error("cannot start container {name}")]
    StartContainer {
        /// Container name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Inspecting a container failed.
    #[error("cannot inspect container {name}")]
    InspectContainer {
        /// Container name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Removing a container failed.
    #[error("cannot remove container {name}")]
    RemoveContainer {
        /// Container name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Creating a network failed.
    #[error("cannot create network {name}")]
    CreateNetwork {
        /// Network name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Removing a network failed.
    #[error("cannot remove network {name}")]
    RemoveNetwork {
        /// Network name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Creating a volume failed.
    #[error("cannot create volume {name}")]
    CreateVolume {
        /// Volume name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Removing a volume failed.
    #[error("cannot remove volume {name}")]
    RemoveVolume {
        /// Volume name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Running a command in a container failed (not: the command exited non-zero).
    #[error("cannot run `{command}` in container {container}")]
    Exec {
        /// Container name.
        container: String,
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Streaming data into an exec's stdin failed.
    #[error("cannot stream input to `{command}` in container {container}")]
    ExecInput {
        /// Container name.
        container: String,
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Copying a file out of a container failed.
    #[error("cannot copy {path} out of container {container}")]
    CopyFrom {
        /// Container name.
        container: String,
        /// Path inside the container.
        path: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// The archive of a copied file could not be read.
    #[error("cannot read the archive of {path} from container {container}")]
    Archive {
        /// Container name.
        container: String,
        /// Path inside the container.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a container's logs failed.
    #[error("cannot read the logs of container {name}")]
    Logs {
        /// Container name.
        name: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Inspecting an image failed for a reason other than absence.
    #[error("cannot inspect image {image}")]
    InspectImage {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Pulling an image failed.
    #[error("cannot pull image {image}")]
    Pull {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Pulling an image did not finish in time.
    #[error("pulling image {image} did not finish within {seconds} s")]
    PullTimeout {
        /// Image reference.
        image: String,
        /// The deadline.
        seconds: u64,
    },
    /// Pushing an image failed at the engine level.
    #[error("cannot push image {image}")]
    Push {
        /// Reference.
        image: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// A request made on a connection of our own (BuildKit's build and session) failed.
    #[error("cannot {what} on the engine")]
    Request {
        /// What was asked (`start a BuildKit session for image web`).
        what: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Building an image failed at the engine level.
    #[error("cannot build image {image}")]
    Build {
        /// Image name.
        image: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
    /// Exporting an image failed.
    #[error("cannot export image {image}")]
    Export {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
}

/// True when `e` is the engine saying "no such object".
pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when `e` is the engine refusing a privileged container because the host cannot
/// grant every capability (runc "unable to apply caps: operation not permitted").
pub fn is_privilege_refusal(e: &BollardError) -> bool {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            let m = message.to_lowercase();
            m.contains("apply caps") || (m.contains("operation not permitted") && m.contains("cap"))
        }
        _ => false,
    }
}

/// True when `e` is the engine failing to publish a port another process took between
/// our check and the start (two sandboxes created at once).
pub fn is_port_conflict(e: &BollardError) -> bool {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            message.contains("port is already allocated")
                || message.contains("address already in use")
        }
        _ => false,
    }
}

/// A node container as found through its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Container ID (a node re-created under the same name has another).
    pub id: String,
    /// Container name (without the leading `/`).
    pub name: String,
    /// Sandbox name (label).
    pub sandbox: String,
    /// Profile name (label).
    pub profile: String,
    /// Security mode (label).
    pub security: String,
    /// Image reference.
    pub image: String,
    /// Docker's state word (`running`, `exited`, `created`, ...).
    pub state: String,
    /// Published ports: container port → host port on 127.0.0.1.
    pub ports: HashMap<u16, u16>,
    /// Whose DNS server it keeps running (label; `None` on nodes made before the label).
    pub dns_owner: Option<String>,
}

impl NodeInfo {
    /// True when the container runs.
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// True when the container was created but never started: what an `up` interrupted
    /// between creating and starting the node leaves (the engine may refuse to start it).
    pub fn never_started(&self) -> bool {
        self.state == "created"
    }

    /// The host port publishing container port `port`.
    pub fn host_port(&self, port: u16) -> Option<u16> {
        self.ports.get(&port).copied()
    }
}

/// Output of a finished exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (-1 when the engine did not say).
    pub code: i64,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// The engine's default socket, tried first when neither `DOCKER_HOST` nor a Docker
/// context names one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long the engine has to answer the handshake (version, ping): a hung engine fails in
/// seconds, not after bollard's two-minute request timeout.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// bollard's timeout of one request, in seconds (its own default).
const REQUEST_TIMEOUT: u64 = 120;

/// Where an engine address came from, as messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The `DOCKER_HOST` variable.
    DockerHost,
    /// The Docker endpoint of a context.
    Context {
        /// The context's name.
        name: String,
        /// What selected it: `DOCKER_CONTEXT`, or the config file's `currentContext`.
        chosen_by: String,
        /// Its meta.json.
        meta: PathBuf,
    },
    /// The default socket: no context is selected, or the one named `default` is.
    Default {
        /// What selected the context `default`, when something did.
        chosen_by: Option<String>,
    },
    /// A per-user socket that exists where a well-known engine puts it.
    WellKnown(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::DockerHost => write!(f, "DOCKER_HOST"),
            Origin::Context {
                name,
                chosen_by,
                meta,
            } => write!(
                f,
                "Docker context \"{name}\", selected by {chosen_by}, endpoint in {}",
                meta.display()
            ),
            Origin::Default { chosen_by: None } => write!(f, "the default socket"),
            Origin::Default {
                chosen_by: Some(by),
            } => write!(
                f,
                "the default socket, as Docker context \"default\" selected by {by}"
            ),
            Origin::WellKnown(what) => write!(f, "{what}"),
        }
    }
}

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address (`HOST:PORT`).
    Tcp(String),
}

/// The TLS settings of a TCP endpoint, as the docker CLI applies them: the CA when there is
/// one (else the system's roots), the client certificate when there are both files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `ca.pem`, when present.
    pub ca: Option<PathBuf>,
    /// `cert.pem`, when present.
    pub cert: Option<PathBuf>,
    /// `key.pem`, when present.
    pub key: Option<PathBuf>,
    /// False with `SkipTLSVerify` (or `DOCKER_TLS` without `DOCKER_TLS_VERIFY`): any
    /// server certificate is accepted.
    pub verify: bool,
}

/// One address the engine may be at, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written where it came from (`unix:///var/run/docker.sock`, `tcp://HOST:2376`).
    pub host: String,
    /// Where it listens.
    pub address: Address,
    /// TLS, for a TCP address that uses it.
    pub tls: Option<TlsFiles>,
    /// Where it came from.
    pub origin: Origin,
}

/// One failed attempt to reach the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The address.
    pub host: String,
    /// Where it came from.
    pub origin: Origin,
    /// What failed (the whole cause chain).
    pub error: String,
}

fn unreachable(tried: &[Attempt]) -> String {
    match tried {
        [one] => format!(
            "cannot reach the Docker engine at {} ({})",
            one.host, one.origin
        ),
        _ => {
            let mut text = String::from("cannot reach the Docker engine; tried, in order:");
            for a in tried {
                text.push_str(&format!("\n  {} ({}): {}", a.host, a.origin, a.error));
            }
            text
        }
    }
}

/// What finding the engine reads: environment variables (through [`crate::paths::Vars`]),
/// the Docker CLI's files, and which sockets exist. The process's own is
/// [`ProcessSources`]; tests give their own.
pub trait EngineSources: crate::paths::Vars {
    /// The text of the file at `path`.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// Whether something (a socket, a file) is at `path`.
    fn exists(&self, path: &Path) -> bool;
}

/// The process's environment and file system.
pub struct ProcessSources;

impl crate::paths::Vars for ProcessSources {
    fn var(&self, name: &str) -> Option<std::ffi::OsString> {
        std::env::var_os(name)
    }
}

impl EngineSources for ProcessSources {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// A variable's value, when set, UTF-8 and not blank.
fn text_var(src: &dyn EngineSources, name: &str) -> Option<String> {
    src.var(name)
        .and_then(|v| v.into_string().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The docker CLI's config file, as far as finding the engine goes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CliConfig {
    #[serde(default)]
    current_context: Option<String>,
}

/// A context's `meta.json`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContextMeta {
    #[serde(default)]
    endpoints: HashMap<String, EndpointMeta>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointMeta {
    #[serde(default)]
    host: Option<String>,
    #[serde(default, rename = "SkipTLSVerify")]
    skip_tls_verify: bool,
}

/// Where the engine may be, in the order to try, found as the docker CLI finds it:
/// `DOCKER_HOST` (with `DOCKER_TLS_VERIFY`, `DOCKER_TLS` and `DOCKER_CERT_PATH`); else the
/// context `DOCKER_CONTEXT` names; else the `currentContext` of the CLI's `config.json` (in
/// `DOCKER_CONFIG`, else `~/.docker`); a context's endpoint is the `Endpoints.docker` of
/// `contexts/meta/<sha256 of its name>/meta.json`, its TLS files those of
/// `contexts/tls/<sha256>/docker/`. With none of these (or the context `default`): the
/// default socket, then each well-known per-user socket that exists (Docker Desktop,
/// Colima, rootless Docker, Podman).
pub fn engine_endpoints(src: &dyn EngineSources) -> Result<Vec<Endpoint>, DockerError> {
    if let Some(host) = text_var(src, "DOCKER_HOST") {
        let tls = env_tls(src)?;
        return Ok(vec![endpoint(&host, tls, Origin::DockerHost)?]);
    }
    let chosen = match text_var(src, "DOCKER_CONTEXT") {
        Some(name) => Some((name, "DOCKER_CONTEXT".to_string())),
        None => current_context(src)?,
    };
    match chosen {
        Some((name, chosen_by)) if name != "default" => {
            Ok(vec![context_endpoint(src, &name, chosen_by)?])
        }
        chosen => Ok(default_endpoints(src, chosen.map(|(_, by)| by))),
    }
}

/// `DOCKER_HOST`'s TLS: `DOCKER_TLS_VERIFY` (verified) or `DOCKER_TLS` (not verified) set
/// to anything, with the files of `DOCKER_CERT_PATH` (else the CLI's config directory).
fn env_tls(src: &dyn EngineSources) -> Result<Option<TlsFiles>, DockerError> {
    let verify = text_var(src, "DOCKER_TLS_VERIFY").is_some();
    if !verify && text_var(src, "DOCKER_TLS").is_none() {
        return Ok(None);
    }
    let dir = match text_var(src, "DOCKER_CERT_PATH") {
        Some(dir) => PathBuf::from(dir),
        None => crate::paths::docker_config_in(src)?,
    };
    Ok(Some(tls_files(src, &dir, verify)))
}

/// The TLS files in `dir` that exist.
fn tls_files(src: &dyn EngineSources, dir: &Path, verify: bool) -> TlsFiles {
    let file = |name: &str| Some(dir.join(name)).filter(|p| src.exists(p));
    TlsFiles {
        ca: file("ca.pem"),
        cert: file("cert.pem"),
        key: file("key.pem"),
        verify,
    }
}

/// The context the CLI's config file makes current, and what selected it.
fn current_context(src: &dyn EngineSources) -> Result<Option<(String, String)>, DockerError> {
    let path = crate::paths::docker_config_in(src)?.join("config.json");
    let text = match src.read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DockerError::DockerConfig {
                problem: format!("cannot read the Docker CLI's config: {e}"),
                path,
            })
        }
    };
    let config: CliConfig = serde_json::from_str(&text).map_err(|e| DockerError::DockerConfig {
        problem: format!("not a Docker CLI config (JSON): {e}"),
        path: path.clone(),
    })?;
    Ok(config
        .current_context
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .map(|name| (name, format!("currentContext in {}", path.display()))))
}

/// The Docker endpoint of context `name`, from its meta.json and TLS files.
fn context_endpoint(
    src: &dyn EngineSources,
    name: &str,
    chosen_by: String,
) -> Result<Endpoint, DockerError> {
    let contexts = crate::paths::docker_config_in(src)?.join("contexts");
    let id = crate::warm::digest(name.as_bytes());
    let meta = contexts.join("meta").join(&id).join("meta.json");
    let error = |problem: String| DockerError::Context {
        name: name.to_string(),
        chosen_by: chosen_by.clone(),
        path: meta.clone(),
        problem,
    };
    let text = src.read(&meta).map_err(|e| {
        error(if e.kind() == std::io::ErrorKind::NotFound {
            "no such context: its meta.json does not exist (`docker context ls` lists the \
             contexts there are)"
                .to_string()
        } else {
            format!("cannot read it: {e}")
        })
    })?;
    let parsed: ContextMeta = serde_json::from_str(&text)
        .map_err(|e| error(format!("not a context's meta.json: {e}")))?;
    let docker = parsed.endpoints.get("docker");
    let Some(host) = docker
        .and_then(|d| d.host.as_deref())
        .map(str::trim)
        .filter(|h| !h.is_empty())
    else {
        return Err(error(
            "no Docker endpoint (Endpoints.docker.Host)".to_string(),
        ));
    };
    let skip_verify = docker.is_some_and(|d| d.skip_tls_verify);
    let files = tls_files(
        src,
        &contexts.join("tls").join(&id).join("docker"),
        !skip_verify,
    );
    let has_files = files.ca.is_some() || files.cert.is_some() || files.key.is_some();
    let tls = (has_files || skip_verify).then_some(files);
    let origin = Origin::Context {
        name: name.to_string(),
        chosen_by,
        meta,
    };
    endpoint(host, tls, origin)
}

/// The default socket, then the well-known per-user sockets that exist.
fn default_endpoints(src: &dyn EngineSources, chosen_by: Option<String>) -> Vec<Endpoint> {
    let socket = |path: PathBuf, origin: Origin| Endpoint {
        host: format!("unix://{}", path.display()),
        address: Address::Unix(path),
        tls: None,
        origin,
    };
    let mut out = vec![socket(
        PathBuf::from(DEFAULT_SOCKET),
        Origin::Default { chosen_by },
    )];
    let home = crate::paths::home_in(src, crate::paths::HOME).ok();
    let runtime = src
        .var("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute());
    let well_known = [
        (&home, ".docker/run/docker.sock", "Docker Desktop's socket"),
        (&home, ".colima/default/docker.sock", "Colima's socket"),
        (&runtime, "docker.sock", "rootless Docker's socket"),
        (&runtime, "podman/podman.sock", "Podman's socket"),
    ];
    for (dir, under, what) in well_known {
        if let Some(path) = dir.as_ref().map(|d| d.join(under)) {
            if src.exists(&path) && path != Path::new(DEFAULT_SOCKET) {
                out.push(socket(path, Origin::WellKnown(what)));
            }
        }
    }
    out
}

/// The endpoint at `host` (`unix://PATH`, `tcp://HOST[:PORT]`; `http://` as `tcp://`).
fn endpoint(host: &str, tls: Option<TlsFiles>, origin: Origin) -> Result<Endpoint, DockerError> {
    let unsupported = |problem: &str| DockerError::Unsupported {
        host: host.to_string(),
        origin: Box::new(origin.clone()),
        problem: problem.to_string(),
    };
    let (scheme, rest) = host.split_once("://").unwrap_or(("", host));
    let address = match scheme {
        "unix" if !rest.is_empty() => Address::Unix(PathBuf::from(rest)),
        "tcp" | "http" => {
            let authority = rest.split('/').next().unwrap_or_default();
            let parsed: http::uri::Authority = authority
                .parse()
                .map_err(|_| unsupported("is not a TCP address (tcp://HOST:PORT)"))?;
            // the docker CLI's default ports: 2376 with TLS, else 2375
            let port = parsed
                .port_u16()
                .unwrap_or(if tls.is_some() { 2376 } else { 2375 });
            Address::Tcp(format!("{}:{port}", parsed.host()))
        }
        "ssh" => {
            return Err(unsupported(
                "is reached over SSH, which sandbox does not support: forward the remote \
                 socket (`ssh -nNT -L $HOME/.docker-remote.sock:/var/run/docker.sock USER@HOST`) \
                 and set DOCKER_HOST=unix://$HOME/.docker-remote.sock, or run sandbox on that \
                 host",
            ))
        }
        _ => {
            return Err(unsupported(
                "is not an address sandbox connects to: it takes unix://PATH and \
                 tcp://HOST:PORT",
            ))
        }
    };
    let tls = tls.filter(|_| matches!(address, Address::Tcp(_)));
    Ok(Endpoint {
        host: host.to_string(),
        address,
        tls,
        origin,
    })
}

/// The whole cause chain of `e`, on one line.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A client of the engine at `endpoint` (no request made yet). Each transport is chosen
/// here, not by bollard's `connect_with_local_defaults` (which ignores a `tcp://` address
/// and silently talks to the local socket) nor `connect_with_ssl` (which has no
/// `SkipTLSVerify` and needs a `ca.pem`).
fn client(endpoint: &Endpoint) -> Result<(Docker, Dial), Refusal> {
    match (&endpoint.address, &endpoint.tls) {
        (Address::Unix(path), _) => Docker::connect_with_unix(
            &endpoint.host,
            REQUEST_TIMEOUT,
            bollard::API_DEFAULT_VERSION,
        )
        .map(|docker| (docker, Dial::Unix(path.clone())))
        .map_err(Refusal::Engine),
        (Address::Tcp(addr), None) => Docker::connect_with_http(
            &format!("tcp://{addr}"),
            REQUEST_TIMEOUT,
            bollard::API_DEFAULT_VERSION,
        )
        .map(|docker| (docker, Dial::Tcp(addr.clone())))
        .map_err(Refusal::Engine),
        (Address::Tcp(addr), Some(files)) => {
            let config = tls_config(files, &endpoint.origin).map_err(Refusal::Fatal)?;
            let dial = Dial::Tls {
                addr: addr.clone(),
                config: std::sync::Arc::new(config.clone()),
            };
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .build();
            let mut builder =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
            builder.pool_max_idle_per_host(0);
            let client = std::sync::Arc::new(builder.build(https));
            Docker::connect_with_custom_transport(
                move |request: bollard::BollardRequest| {
                    let client = client.clone();
                    async move { client.request(request).await.map_err(BollardError::from) }
                },
                Some(format!("https://{addr}")),
                REQUEST_TIMEOUT,
                bollard::API_DEFAULT_VERSION,
            )
            .map(|docker| (docker, dial))
            .map_err(Refusal::Engine)
        }
    }
}

/// How to open a connection of one's own to the engine, for the requests bollard does not
/// make (BuildKit's session and build, see [`crate::buildkit`]).
#[derive(Clone)]
pub enum Dial {
    /// A unix socket.
    Unix(PathBuf),
    /// Plain TCP (`HOST:PORT`).
    Tcp(String),
    /// TLS over TCP, with the client the engine's other requests use.
    Tls {
        /// `HOST:PORT`.
        addr: String,
        /// The rustls client.
        config: std::sync::Arc<rustls::ClientConfig>,
    },
}

/// A connection to the engine.
pub trait EngineIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> EngineIo for T {}

impl Dial {
    /// A new connection.
    pub async fn connect(&self) -> std::io::Result<Box<dyn EngineIo>> {
        match self {
            #[cfg(unix)]
            Dial::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
            #[cfg(not(unix))]
            Dial::Unix(path) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{}: unix sockets need a unix", path.display()),
            )),
            Dial::Tcp(addr) => Ok(Box::new(tokio::net::TcpStream::connect(addr).await?)),
            Dial::Tls { addr, config } => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// Why one endpoint gave no engine: refused (the next one is tried), or fatal.
enum Refusal {
    Engine(BollardError),
    Fatal(DockerError),
}

/// The rustls client of a TLS endpoint, as the docker CLI sets up its Go one.
fn tls_config(files: &TlsFiles, origin: &Origin) -> Result<rustls::ClientConfig, DockerError> {
    use hyper_rustls::ConfigBuilderExt;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let error = |path: &Path, problem: String| DockerError::TlsMaterial {
        path: path.to_path_buf(),
        origin: Box::new(origin.clone()),
        problem,
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| error(path, e.to_string()));
    let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, DockerError> {
        let certs = CertificateDer::pem_slice_iter(&read(path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(path, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(error(path, "holds no certificate".into()));
        }
        Ok(certs)
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match &files.ca {
        _ if !files.verify => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(
                    crate::routes::AnyCertificate(provider),
                ))
        }
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| error(ca, format!("not a CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .with_native_roots()
            .map_err(|e| DockerError::TlsMaterial {
                path: PathBuf::from("(the system's CA certificates)"),
                origin: Box::new(origin.clone()),
                problem: e.to_string(),
            })?,
    };
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| error(key, format!("not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| error(key, format!("does not fit {}: {e}", cert.display())))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A connected Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    dial: Dial,
}

/// Builds the container create body of a node (pure).
pub fn container_body(spec: &NodeSpec) -> ContainerCreateBody {
    let mut port_bindings = HashMap::new();
    let mut exposed = Vec::new();
    for p in &spec.ports {
        let key = format!("{}/tcp", p.container);
        exposed.push(key.clone());
        port_bindings.insert(
            key,
            Some(vec![DockerPortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                host_port: Some(p.host.to_string()),
            }]),
        );
    }
    let tmpfs = spec
        .tmpfs
        .iter()
        .map(|t| (t.clone(), String::new()))
        .collect();
    let mut host = HostConfig {
        port_bindings: Some(port_bindings),
        tmpfs: Some(tmpfs),
        // the data volume, at the profile's data path and at its extra ones
        mounts: Some(
            std::iter::once(&spec.data_path)
                .chain(&spec.extra_data_paths)
                .map(|target| Mount {
                    target: Some(target.clone()),
                    source: Some(spec.data_volume.clone()),
                    typ: Some(bollard::models::MountType::VOLUME),
                    ..Default::default()
                })
                .collect(),
        ),
        network_mode: Some(spec.network.clone()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        // on an engine with userns-remap, a privileged container (or one that mounts and
        // manages cgroups) must opt out of the remapping, as k3d's node does (k3d
        // pkg/runtimes/docker/translate.go); elsewhere "host" is the default anyway
        userns_mode: Some("host".to_string()),
        init: Some(spec.init),
        security_opt: Some(vec![
            "seccomp=unconfined".to_string(),
            "apparmor=unconfined".to_string(),
        ]),
        ..Default::default()
    };
    match &spec.security {
        Security::Privileged => host.privileged = Some(true),
        Security::Capabilities { drop } => {
            // everything --privileged gives, spelled out, minus what the host cannot grant
            host.cap_add = Some(vec!["ALL".to_string()]);
            host.cap_drop = Some(drop.clone());
            // the CLI's `--security-opt systempaths=unconfined`: nothing masked or read-only
            host.masked_paths = Some(Vec::new());
            host.readonly_paths = Some(Vec::new());
            host.device_cgroup_rules = Some(vec!["a *:* rwm".to_string()]);
            host.devices = Some(vec![DeviceMapping {
                path_on_host: Some("/dev/kmsg".to_string()),
                path_in_container: Some("/dev/kmsg".to_string()),
                cgroup_permissions: Some("rwm".to_string()),
            }]);
        }
    }
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        hostname: Some(spec.name.clone()),
        cmd: if spec.args.is_empty() {
            None
        } else {
            Some(spec.args.clone())
        },
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: Some(exposed),
        host_config: Some(host),
        ..Default::default()
    }
}

fn label_filter(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

fn node_info(c: &ContainerSummary) -> Option<NodeInfo> {
    let labels = c.labels.as_ref()?;
    let ports = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.private_port, p.public_port?)))
        .collect();
    Some(NodeInfo {
        id: c.id.clone().unwrap_or_default(),
        name: c
            .names
            .as_ref()?
            .first()?
            .trim_start_matches('/')
            .to_string(),
        sandbox: labels.get(labels::SANDBOX)?.clone(),
        profile: labels.get(labels::PROFILE).cloned().unwrap_or_default(),
        security: labels.get(labels::SECURITY).cloned().unwrap_or_default(),
        image: c.image.clone().unwrap_or_default(),
        state: c.state.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        ports,
        dns_owner: labels.get(labels::DNS_OWNER).cloned(),
    })
}

/// The host ports of a container's port bindings (`"6443/tcp"` → host port), as created:
/// known even while it is stopped, when the engine lists no published port.
pub fn bound_ports(
    bindings: &HashMap<String, Option<Vec<DockerPortBinding>>>,
) -> HashMap<u16, u16> {
    bindings
        .iter()
        .filter_map(|(key, binding)| {
            let container = key.split('/').next()?.parse().ok()?;
            let host = binding
                .as_ref()?
                .first()?
                .host_port
                .as_deref()?
                .parse()
                .ok()?;
            Some((container, host))
        })
        .collect()
}

impl Engine {
    /// Connects to the engine found by [`engine_endpoints`] and agrees on an API version,
    /// within [`HANDSHAKE_DEADLINE`].
    pub async fn connect() -> Result<Engine, DockerError> {
        let endpoints = engine_endpoints(&ProcessSources)?;
        Engine::connect_first(&endpoints, HANDSHAKE_DEADLINE).await
    }

    /// Connects to the first of `endpoints` whose engine answers. An address where nothing
    /// listens (no socket, connection refused, permission denied) passes to the next; one
    /// that accepts but has not answered the handshake within `deadline` ends the search
    /// (an engine is there, hung: another one would be a surprise).
    pub async fn connect_first(
        endpoints: &[Endpoint],
        deadline: Duration,
    ) -> Result<Engine, DockerError> {
        let mut tried = Vec::new();
        let mut last = None;
        for endpoint in endpoints {
            let refused = match Engine::handshake(endpoint, deadline).await {
                Ok(engine) => return Ok(engine),
                Err(Refusal::Fatal(e)) => return Err(e),
                Err(Refusal::Engine(e)) => e,
            };
            tried.push(Attempt {
                host: endpoint.host.clone(),
                origin: endpoint.origin.clone(),
                error: chain_text(&refused),
            });
            last = Some(refused);
        }
        Err(DockerError::Connect {
            source: last.filter(|_| tried.len() == 1),
            tried,
        })
    }

    async fn handshake(endpoint: &Endpoint, deadline: Duration) -> Result<Engine, Refusal> {
        let (docker, dial) = client(endpoint)?;
        let handshake = async {
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok(docker)
        };
        match tokio::time::timeout(deadline, handshake).await {
            Ok(Ok(docker)) => Ok(Engine { docker, dial }),
            Ok(Err(source)) => Err(Refusal::Engine(source)),
            Err(_) => Err(Refusal::Fatal(DockerError::NotAnswering {
                host: endpoint.host.clone(),
                origin: Box::new(endpoint.origin.clone()),
                seconds: deadline.as_secs(),
            })),
        }
    }

    /// The engine's ID (stable across restarts of the engine); `None` when it does not say.
    pub async fn id(&self) -> Option<String> {
        self.docker.info().await.ok().and_then(|info| info.id)
    }

    /// Every sandbox node container, running or not.
    pub async fn list_nodes(&self, sandbox: Option<&str>) -> Result<Vec<NodeInfo>, DockerError> {
        let mut pairs = vec![(labels::ROLE, "node")];
        if let Some(s) = sandbox {
            pairs.push((labels::SANDBOX, s));
        }
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filter(&pairs))
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "containers",
                source,
            })?;
        let mut nodes: Vec<NodeInfo> = list.iter().filter_map(node_info).collect();
        nodes.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        Ok(nodes)
    }

    /// Names of every container carrying sandbox `sandbox`'s label.
    pub async fn list_containers(&self, sandbox: &str) -> Result<Vec<String>, DockerError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filter(&[(labels::SANDBOX, sandbox)]))
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "containers",
                source,
            })?;
        Ok(list
            .iter()
            .filter_map(|c| c.names.as_ref()?.first().cloned())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }

    /// Names of networks carrying sandbox `sandbox`'s label.
    pub async fn list_networks(&self, sandbox: &str) -> Result<Vec<String>, DockerError> {
        let options = ListNetworksOptionsBuilder::new()
            .filters(&label_filter(&[(labels::SANDBOX, sandbox)]))
            .build();
        let list = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "networks",
                source,
            })?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    /// Names of volumes carrying sandbox `sandbox`'s label.
    pub async fn list_volumes(&self, sandbox: &str) -> Result<Vec<String>, DockerError> {
        let options = ListVolumesOptionsBuilder::new()
            .filters(&label_filter(&[(labels::SANDBOX, sandbox)]))
            .build();
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "volumes",
                source,
            })?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    /// Container `name`'s inspection.
    async fn inspect(
        &self,
        name: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, DockerError> {
        self.docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(|source| DockerError::InspectContainer {
                name: name.to_string(),
                source,
            })
    }

    /// Names of anonymous volumes mounted by container `name` (removed with it).
    pub async fn container_volumes(&self, name: &str) -> Result<Vec<String>, DockerError> {
        let inspect = self.inspect(name).await?;
        Ok(inspect
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .filter_map(|m| m.name)
            .collect())
    }

    /// Creates the network unless it exists.
    pub async fn ensure_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, DockerError> {
        let existing = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new()
                    .filters(&HashMap::from([("name", vec![name])]))
                    .build(),
            ))
            .await
            .map_err(|source| DockerError::List {
                what: "networks",
                source,
            })?;
        // the name filter matches substrings
        if existing.iter().any(|n| n.name.as_deref() == Some(name)) {
            return Ok(false);
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|source| DockerError::CreateNetwork {
                name: name.to_string(),
                source,
            })?;
        Ok(true)
    }

    /// Creates the named volume unless it exists; returns whether it was created.
    pub async fn ensure_volume(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, DockerError> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => return Ok(false),
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(DockerError::CreateVolume {
                    name: name.to_string(),
                    source,
                })
            }
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(|source| DockerError::CreateVolume {
                name: name.to_string(),
                source,
            })?;
        Ok(true)
    }

    /// Creates and starts a node container. A start refused for lack of privileges is
    /// returned as [`DockerError::StartContainer`] with the container already removed.
    pub async fn run_node(&self, spec: &NodeSpec) -> Result<(), DockerError> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(options), container_body(spec))
            .await
            .map_err(|source| DockerError::CreateContainer {
                name: spec.name.clone(),
                source,
            })?;
        if let Err(source) = self.start(&spec.name).await {
            let _ = self.remove_container(&spec.name).await;
            return Err(source);
        }
        Ok(())
    }

    /// Starts an existing container.
    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|source| DockerError::StartContainer {
                name: name.to_string(),
                source,
            })
    }

    /// The container's state word, or `None` when it does not exist.
    pub async fn container_state(&self, name: &str) -> Result<Option<String>, DockerError> {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(
                c.state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::InspectContainer {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// The host ports container `name` was created to publish (see [`bound_ports`]).
    pub async fn bound_ports(&self, name: &str) -> Result<HashMap<u16, u16>, DockerError> {
        let inspect = self.inspect(name).await?;
        Ok(inspect
            .host_config
            .and_then(|h| h.port_bindings)
            .map(|b| bound_ports(&b))
            .unwrap_or_default())
    }

    /// The container's IPv4 address on `network`, if it has one.
    pub async fn container_ip(
        &self,
        name: &str,
        network: &str,
    ) -> Result<Option<String>, DockerError> {
        Ok(self.container_ip_and_start(name, network).await?.0)
    }

    /// The container's IPv4 address on `network`, if it has one, and when it last started,
    /// if it has.
    pub async fn container_ip_and_start(
        &self,
        name: &str,
        network: &str,
    ) -> Result<(Option<String>, Option<k8s_openapi::jiff::Timestamp>), DockerError> {
        let inspect = self.inspect(name).await?;
        let started = inspect
            .state
            .and_then(|s| s.started_at)
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            // a container never started shows the zero time
            .filter(|t| t.as_second() > 0);
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty());
        Ok((ip, started))
    }

    /// Removes a container and its anonymous volumes; absent is fine.
    pub async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::RemoveContainer {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Removes a network; absent is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::RemoveNetwork {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Removes a volume; absent is fine.
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveVolumeOptionsBuilder::new().force(true).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::RemoveVolume {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// The last `lines` lines of a container's output.
    pub async fn logs_tail(&self, name: &str, lines: usize) -> Result<String, DockerError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(name, Some(options))
            .try_collect()
            .await
            .map_err(|source| DockerError::Logs {
                name: name.to_string(),
                source,
            })?;
        Ok(chunks.iter().map(|c| c.to_string()).collect())
    }

    /// Reads one regular file out of a container; `None` when it does not exist (yet).
    pub async fn read_file(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let chunks: Result<Vec<Bytes>, _> = self
            .docker
            .download_from_container(container, Some(options))
            .try_collect()
            .await;
        let archive = match chunks {
            Ok(chunks) => chunks.concat(),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(source) => {
                return Err(DockerError::CopyFrom {
                    container: container.to_string(),
                    path: path.to_string(),
                    source,
                })
            }
        };
        let archive_error = |source| DockerError::Archive {
            container: container.to_string(),
            path: path.to_string(),
            source,
        };
        let mut tar = tar::Archive::new(archive.as_slice());
        for entry in tar.entries().map_err(archive_error)? {
            let mut entry = entry.map_err(archive_error)?;
            if entry.header().entry_type().is_file() {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(archive_error)?;
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// Runs `cmd` in `container`, feeding it `input` on stdin when given, and collects its
    /// output.
    pub async fn exec<S>(
        &self,
        container: &str,
        cmd: &[String],
        input: Option<S>,
    ) -> Result<ExecOutput, DockerError>
    where
        S: Stream<Item = Result<Bytes, DockerError>> + Unpin,
    {
        let command = cmd.join(" ");
        let exec_error = |source| DockerError::Exec {
            container: container.to_string(),
            command: command.clone(),
            source,
        };
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(exec_error)?;
        let started = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(exec_error)?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = started
        {
            let collect = async {
                while let Some(chunk) = output.next().await {
                    match chunk.map_err(exec_error)? {
                        bollard::container::LogOutput::StdErr { message } => {
                            stderr.push_str(&String::from_utf8_lossy(&message))
                        }
                        other => stdout.push_str(&String::from_utf8_lossy(&other.into_bytes())),
                    }
                }
                Ok::<(), DockerError>(())
            };
            let feed = feed_input(input, &mut stdin, container, &command);
            let (fed, collected) = tokio::join!(feed, collect);
            fed?;
            collected?;
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(exec_error)?;
        Ok(ExecOutput {
            code: inspect.exit_code.unwrap_or(-1),
            stdout,
            stderr,
        })
    }

    /// Runs `cmd` with no input.
    pub async fn exec_simple(
        &self,
        container: &str,
        cmd: &[String],
    ) -> Result<ExecOutput, DockerError> {
        self.exec(
            container,
            cmd,
            None::<futures_util::stream::Empty<Result<Bytes, DockerError>>>,
        )
        .await
    }

    /// The image's ID (`sha256:...`), or `None` when the engine does not have it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::InspectImage {
                image: image.to_string(),
                source,
            }),
        }
    }

    /// Tags of `repo` in the engine with their image IDs, newest first.
    pub async fn repo_tags(&self, repo: &str) -> Result<Vec<(String, String)>, DockerError> {
        let options = bollard::query_parameters::ListImagesOptionsBuilder::new()
            .filters(&HashMap::from([("reference", vec![format!("{repo}:*")])]))
            .build();
        let mut images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "images",
                source,
            })?;
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        Ok(images
            .into_iter()
            .flat_map(|i| {
                let id = i.id.clone();
                i.repo_tags.into_iter().map(move |t| (t, id.clone()))
            })
            .collect())
    }

    /// Pulls an image, giving up after `deadline`.
    pub async fn pull(&self, image: &str, deadline: Duration) -> Result<(), DockerError> {
        let (repo, tag) = split_tag(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        let pull = self
            .docker
            .create_image(Some(options), None, None)
            .try_for_each(|_| async { Ok(()) });
        match tokio::time::timeout(deadline, pull).await {
            Ok(result) => result.map_err(|source| DockerError::Pull {
                image: image.to_string(),
                source,
            }),
            Err(_) => Err(DockerError::PullTimeout {
                image: image.to_string(),
                seconds: deadline.as_secs(),
            }),
        }
    }

    /// `docker save` of one image as a byte stream.
    pub fn export_image(
        &self,
        image: &str,
    ) -> impl Stream<Item = Result<Bytes, DockerError>> + Unpin + '_ {
        let image_name = image.to_string();
        self.docker
            .export_image(image)
            .map_err(move |source| DockerError::Export {
                image: image_name.clone(),
                source,
            })
            .boxed()
    }

    /// How to open a connection of one's own to this engine.
    pub fn dial(&self) -> &Dial {
        &self.dial
    }

    /// Builds an image from a tar'ed context with the classic builder; returns the image ID.
    /// `on_line` receives each line of build output.
    pub async fn build_image(
        &self,
        image: &str,
        options: bollard::query_parameters::BuildImageOptions,
        context_tar: Vec<u8>,
        mut on_line: impl FnMut(&str),
    ) -> Result<Result<String, String>, DockerError> {
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(Bytes::from(context_tar))),
        );
        let mut id = None;
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                // the classic builder reports a failed step as an error message in the stream
                Err(BollardError::DockerStreamError { error }) => return Ok(Err(error)),
                Err(source) => {
                    return Err(DockerError::Build {
                        image: image.to_string(),
                        source,
                    })
                }
            };
            if let Some(text) = info.stream.as_deref() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    on_line(line);
                }
            }
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Ok(Err(error));
            }
            if let Some(aux) = info.aux.and_then(|a| a.id) {
                id = Some(aux);
            }
        }
        match id {
            Some(id) => Ok(Ok(id)),
            None => Ok(Err("the engine reported no image ID".to_string())),
        }
    }

    /// Pushes `repo:tag` to its registry with `credentials`; the inner `Err` is the
    /// registry's (or the engine's) refusal, as the engine words it.
    pub async fn push(
        &self,
        repo: &str,
        tag: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
        mut on_status: impl FnMut(&str),
    ) -> Result<Result<(), String>, DockerError> {
        let options = bollard::query_parameters::PushImageOptionsBuilder::new()
            .tag(tag)
            .build();
        let mut stream = self.docker.push_image(repo, Some(options), credentials);
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(BollardError::DockerStreamError { error }) => return Ok(Err(error)),
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    return Ok(Err(message))
                }
                Err(source) => {
                    return Err(DockerError::Push {
                        image: format!("{repo}:{tag}"),
                        source,
                    })
                }
            };
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Ok(Err(error));
            }
            if let Some(status) = info.status.as_deref() {
                on_status(status);
            }
        }
        Ok(Ok(()))
    }

    /// Creates and starts container `name` from `body` (the container is removed again
    /// when it cannot start).
    pub async fn run_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<(), DockerError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| DockerError::CreateContainer {
                name: name.to_string(),
                source,
            })?;
        if let Err(source) = self.start(name).await {
            let _ = self.remove_container(name).await;
            return Err(source);
        }
        Ok(())
    }

    /// Tags an image.
    pub async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), DockerError> {
        let options = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(|e| DockerError::InspectImage {
                image: source.to_string(),
                source: e,
            })
    }
}

/// Writes `input`, when given, to the `stdin` of the exec of `command` in `container`, then
/// half-closes it so that the command sees end of input. Kept apart from [`Engine::exec`],
/// which runs it alongside collecting the output, as a command may write before it has
/// read all its input.
async fn feed_input<S, W>(
    input: Option<S>,
    stdin: &mut W,
    container: &str,
    command: &str,
) -> Result<(), DockerError>
where
    S: Stream<Item = Result<Bytes, DockerError>> + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    if let Some(mut input) = input {
        let input_error = |source| DockerError::ExecInput {
            container: container.to_string(),
            command: command.to_string(),
            source,
        };
        while let Some(chunk) = input.next().await {
            stdin.write_all(&chunk?).await.map_err(input_error)?;
        }
        stdin.flush().await.map_err(input_error)?;
        // half-close: the command sees end of input
        stdin.shutdown().await.map_err(input_error)?;
    }
    Ok(())
}

/// Splits `repo:tag` (a registry port is not a tag); the tag defaults to `latest`.
pub fn split_tag(image: &str) -> (&str, &str) {
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{node_spec, HostPorts};
    use crate::profile::Profile;

    fn spec(security: Security) -> NodeSpec {
        profile_spec("offline", security)
    }

    fn profile_spec(profile: &str, security: Security) -> NodeSpec {
        let p = Profile::named(profile).unwrap();
        node_spec(
            "demo",
            &p,
            HostPorts {
                api: 40001,
                http: 8080,
                https: 8443,
            },
            security,
        )
    }

    #[test]
    fn privileged_body() {
        let body = container_body(&spec(Security::Privileged));
        let host = body.host_config.unwrap();
        assert_eq!(host.privileged, Some(true));
        assert_eq!(host.cap_add, None);
        assert_eq!(
            host.cgroupns_mode,
            Some(HostConfigCgroupnsModeEnum::PRIVATE)
        );
        assert_eq!(host.network_mode.as_deref(), Some("sandbox-demo"));
        let api = &host.port_bindings.unwrap()["6443/tcp"];
        assert_eq!(
            api.as_ref().unwrap()[0],
            DockerPortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                host_port: Some("40001".to_string())
            }
        );
        assert_eq!(body.hostname.as_deref(), Some("sandbox-demo-node"));
        assert_eq!(body.labels.unwrap()["dev.sandbox/sandbox"], "demo");
    }

    #[test]
    fn fallback_body_spells_out_privileges() {
        let host = container_body(&spec(Security::fallback()))
            .host_config
            .unwrap();
        assert_eq!(host.privileged, None);
        assert_eq!(host.cap_add, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_drop, Some(vec!["SYS_RESOURCE".to_string()]));
        let opts = host.security_opt.unwrap();
        for o in ["seccomp=unconfined", "apparmor=unconfined"] {
            assert!(opts.contains(&o.to_string()), "{o}");
        }
        // the API's form of the CLI's `systempaths=unconfined`
        assert_eq!(host.masked_paths, Some(Vec::new()));
        assert_eq!(host.readonly_paths, Some(Vec::new()));
        assert_eq!(
            host.device_cgroup_rules,
            Some(vec!["a *:* rwm".to_string()])
        );
        assert_eq!(
            host.devices.unwrap()[0].path_on_host.as_deref(),
            Some("/dev/kmsg")
        );
        let tmpfs = host.tmpfs.unwrap();
        assert!(tmpfs.contains_key("/run") && tmpfs.contains_key("/tmp"));
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("sandbox-demo-data"));
        assert_eq!(mount.target.as_deref(), Some("/var/lib/sandbox"));
    }

    #[test]
    fn every_node_opts_out_of_userns_remap() {
        // k3d's node does the same (pkg/runtimes/docker/translate.go): Docker refuses a
        // privileged container on an engine with userns-remap unless it asks for "host"
        for profile in crate::profile::names() {
            for security in [Security::Privileged, Security::fallback()] {
                let host = container_body(&profile_spec(profile, security))
                    .host_config
                    .unwrap();
                assert_eq!(host.userns_mode.as_deref(), Some("host"), "{profile}");
            }
        }
    }

    #[test]
    fn the_k3s_node_runs_k3s_as_pid_1_and_keeps_its_password_on_the_data_volume() {
        let body = container_body(&profile_spec("k3s", Security::Privileged));
        // no Docker init and no entrypoint of ours: the image's /bin/k3s is PID 1, which
        // is when k3s evacuates the root cgroup on cgroup v2 and reaps its children
        // (k3s pkg/cli/cmds/init_linux.go, log_linux.go)
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd.as_ref().unwrap()[0], "server");
        let host = body.host_config.unwrap();
        assert_eq!(host.init, Some(false));
        let mounts: Vec<(&str, &str)> = host
            .mounts
            .iter()
            .flatten()
            .map(|m| {
                assert_eq!(m.typ, Some(bollard::models::MountType::VOLUME));
                (m.source.as_deref().unwrap(), m.target.as_deref().unwrap())
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("sandbox-demo-data", "/var/lib/rancher/k3s"),
                ("sandbox-demo-data", "/etc/rancher/node"),
            ]
        );
    }

    #[test]
    fn the_offline_node_mounts_its_data_volume_once() {
        let host = container_body(&spec(Security::Privileged))
            .host_config
            .unwrap();
        assert_eq!(host.mounts.unwrap().len(), 1);
        assert_eq!(host.init, Some(false));
    }

    #[test]
    fn privilege_refusal_is_recognised() {
        let refused = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "OCI runtime create failed: runc create failed: unable to start container \
                      process: unable to apply caps: operation not permitted: unknown"
                .to_string(),
        };
        assert!(is_privilege_refusal(&refused));
        let other = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "port is already allocated".to_string(),
        };
        assert!(!is_privilege_refusal(&other));
        assert!(is_port_conflict(&other));
    }

    #[test]
    fn bound_ports_read_back_what_the_body_binds() {
        let body = container_body(&spec(Security::Privileged));
        let bound = bound_ports(&body.host_config.unwrap().port_bindings.unwrap());
        assert_eq!(
            bound,
            HashMap::from([(6443, 40001), (80, 8080), (443, 8443)])
        );
        let unbound = HashMap::from([("80/tcp".to_string(), None)]);
        assert!(bound_ports(&unbound).is_empty());
    }

    #[test]
    fn only_a_created_container_never_started() {
        let node = |state: &str| NodeInfo {
            id: "0123".to_string(),
            name: "sandbox-demo-node".to_string(),
            sandbox: "demo".to_string(),
            profile: "offline".to_string(),
            security: "privileged".to_string(),
            image: "sandbox-offline/node:v1.20.2".to_string(),
            state: state.to_string(),
            ports: HashMap::new(),
            dns_owner: None,
        };
        assert!(node("created").never_started());
        for state in ["running", "exited", "paused", "restarting", "dead"] {
            assert!(!node(state).never_started(), "{state}");
        }
    }

    /// Environment, files and sockets for [`engine_endpoints`], all in memory.
    #[derive(Default)]
    struct Fake {
        vars: HashMap<String, String>,
        files: HashMap<PathBuf, String>,
        sockets: Vec<PathBuf>,
    }

    impl Fake {
        fn var(mut self, name: &str, value: &str) -> Fake {
            self.vars.insert(name.into(), value.into());
            self
        }

        fn file(mut self, path: impl Into<PathBuf>, text: &str) -> Fake {
            self.files.insert(path.into(), text.into());
            self
        }

        fn socket(mut self, path: &str) -> Fake {
            self.sockets.push(path.into());
            self
        }

        /// Context `name` in `/cfg` with `meta` as its meta.json.
        fn context(self, name: &str, meta: &str) -> Fake {
            let path = meta_path(name);
            self.file(path, meta)
        }
    }

    impl crate::paths::Vars for Fake {
        fn var(&self, name: &str) -> Option<std::ffi::OsString> {
            self.vars.get(name).map(Into::into)
        }
    }

    impl EngineSources for Fake {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }

        fn exists(&self, path: &Path) -> bool {
            self.files.contains_key(path) || self.sockets.iter().any(|s| s == path)
        }
    }

    fn meta_path(name: &str) -> PathBuf {
        PathBuf::from(format!(
            "/cfg/contexts/meta/{}/meta.json",
            crate::warm::digest(name.as_bytes())
        ))
    }

    fn tls_path(name: &str, file: &str) -> PathBuf {
        PathBuf::from(format!(
            "/cfg/contexts/tls/{}/docker/{file}",
            crate::warm::digest(name.as_bytes())
        ))
    }

    fn meta(name: &str, host: &str) -> String {
        format!(
            r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#
        )
    }

    fn hosts(endpoints: &[Endpoint]) -> Vec<&str> {
        endpoints.iter().map(|e| e.host.as_str()).collect()
    }

    #[test]
    fn docker_host_comes_before_any_context() {
        let src = Fake::default()
            .var("HOME", "/home/me")
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_HOST", " tcp://10.0.0.5 ")
            .var("DOCKER_CONTEXT", "remote")
            .file("/cfg/config.json", r#"{"currentContext":"remote"}"#)
            .context("remote", &meta("remote", "unix:///remote.sock"));
        let endpoints = engine_endpoints(&src).unwrap();
        assert_eq!(
            endpoints,
            [Endpoint {
                host: "tcp://10.0.0.5".into(),
                address: Address::Tcp("10.0.0.5:2375".into()),
                tls: None,
                origin: Origin::DockerHost,
            }]
        );
        // any scheme bollard speaks; a blank DOCKER_HOST counts as unset
        let unix = Fake::default().var("DOCKER_HOST", "unix:///run/user/1000/docker.sock");
        assert_eq!(
            engine_endpoints(&unix).unwrap()[0].address,
            Address::Unix("/run/user/1000/docker.sock".into())
        );
        let blank = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_HOST", "  ");
        assert_eq!(
            hosts(&engine_endpoints(&blank).unwrap()),
            ["unix:///var/run/docker.sock"]
        );
    }

    #[test]
    fn docker_host_takes_tls_from_docker_tls_verify_and_docker_cert_path() {
        let src = Fake::default()
            .var("DOCKER_HOST", "tcp://engine.example:2376")
            .var("DOCKER_TLS_VERIFY", "1")
            .var("DOCKER_CERT_PATH", "/certs")
            .file("/certs/ca.pem", "")
            .file("/certs/cert.pem", "")
            .file("/certs/key.pem", "");
        let endpoint = engine_endpoints(&src).unwrap().remove(0);
        assert_eq!(
            endpoint.tls,
            Some(TlsFiles {
                ca: Some("/certs/ca.pem".into()),
                cert: Some("/certs/cert.pem".into()),
                key: Some("/certs/key.pem".into()),
                verify: true,
            })
        );
        // DOCKER_TLS alone: TLS without verification, files from the config directory
        let src = Fake::default()
            .var("DOCKER_HOST", "tcp://engine.example")
            .var("DOCKER_TLS", "1")
            .var("DOCKER_CONFIG", "/cfg")
            .file("/cfg/ca.pem", "");
        let endpoint = engine_endpoints(&src).unwrap().remove(0);
        assert_eq!(endpoint.address, Address::Tcp("engine.example:2376".into()));
        let tls = endpoint.tls.unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.ca, Some("/cfg/ca.pem".into()));
        assert_eq!(tls.cert, None);
    }

    #[test]
    fn docker_context_comes_before_the_current_context() {
        let src = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_CONTEXT", "colima")
            .file("/cfg/config.json", r#"{"currentContext":"desktop-linux"}"#)
            .context(
                "colima",
                &meta("colima", "unix:///home/me/.colima/docker.sock"),
            )
            .context(
                "desktop-linux",
                &meta("desktop-linux", "unix:///desktop.sock"),
            );
        assert_eq!(
            engine_endpoints(&src).unwrap(),
            [Endpoint {
                host: "unix:///home/me/.colima/docker.sock".into(),
                address: Address::Unix("/home/me/.colima/docker.sock".into()),
                tls: None,
                origin: Origin::Context {
                    name: "colima".into(),
                    chosen_by: "DOCKER_CONTEXT".into(),
                    meta: meta_path("colima"),
                },
            }]
        );
    }

    #[test]
    fn the_current_context_is_read_from_the_config_directory() {
        let src = Fake::default()
            .var("HOME", "/home/me")
            .file(
                "/home/me/.docker/config.json",
                r#"{"auths":{},"currentContext":"desktop-linux"}"#,
            )
            .file(
                format!(
                    "/home/me/.docker/contexts/meta/{}/meta.json",
                    crate::warm::digest(b"desktop-linux")
                ),
                &meta(
                    "desktop-linux",
                    "unix:///home/me/.docker/desktop/docker.sock",
                ),
            );
        let endpoint = engine_endpoints(&src).unwrap().remove(0);
        assert_eq!(endpoint.host, "unix:///home/me/.docker/desktop/docker.sock");
        let origin = endpoint.origin.to_string();
        assert_eq!(
            origin,
            format!(
                "Docker context \"desktop-linux\", selected by currentContext in \
                 /home/me/.docker/config.json, endpoint in /home/me/.docker/contexts/meta/{}/meta.json",
                crate::warm::digest(b"desktop-linux")
            )
        );
    }

    #[test]
    fn a_tcp_context_uses_its_tls_files() {
        let src = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_CONTEXT", "remote")
            .context("remote", &meta("remote", "tcp://build.example:2376"))
            .file(tls_path("remote", "ca.pem"), "")
            .file(tls_path("remote", "cert.pem"), "")
            .file(tls_path("remote", "key.pem"), "");
        let endpoint = engine_endpoints(&src).unwrap().remove(0);
        assert_eq!(endpoint.address, Address::Tcp("build.example:2376".into()));
        assert_eq!(
            endpoint.tls,
            Some(TlsFiles {
                ca: Some(tls_path("remote", "ca.pem")),
                cert: Some(tls_path("remote", "cert.pem")),
                key: Some(tls_path("remote", "key.pem")),
                verify: true,
            })
        );
        // SkipTLSVerify without files: TLS, any certificate
        let skip = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_CONTEXT", "skip")
            .context(
                "skip",
                r#"{"Name":"skip","Endpoints":{"docker":{"Host":"tcp://h:1","SkipTLSVerify":true}}}"#,
            );
        let tls = engine_endpoints(&skip).unwrap().remove(0).tls.unwrap();
        assert!(!tls.verify && tls.ca.is_none() && tls.cert.is_none());
        // no files, no SkipTLSVerify: plain TCP; and a socket never uses TLS
        let plain = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_CONTEXT", "plain")
            .context("plain", &meta("plain", "tcp://h:2375"));
        assert_eq!(engine_endpoints(&plain).unwrap()[0].tls, None);
        let socket = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_CONTEXT", "sock")
            .context("sock", &meta("sock", "unix:///s.sock"))
            .file(tls_path("sock", "ca.pem"), "");
        assert_eq!(engine_endpoints(&socket).unwrap()[0].tls, None);
    }

    #[test]
    fn a_broken_context_is_an_error_naming_its_file() {
        let base = || {
            Fake::default()
                .var("DOCKER_CONFIG", "/cfg")
                .file("/cfg/config.json", r#"{"currentContext":"gone"}"#)
        };
        let missing = engine_endpoints(&base()).unwrap_err().to_string();
        assert_eq!(
            missing,
            format!(
                "Docker context \"gone\" (currentContext in /cfg/config.json): {}: no such \
                 context: its meta.json does not exist (`docker context ls` lists the contexts \
                 there are)",
                meta_path("gone").display()
            )
        );
        let malformed = engine_endpoints(&base().context("gone", "{not json"))
            .unwrap_err()
            .to_string();
        assert!(
            malformed.contains(&format!(
                "{}: not a context's meta.json",
                meta_path("gone").display()
            )),
            "{malformed}"
        );
        let no_host = engine_endpoints(&base().context("gone", r#"{"Endpoints":{}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            no_host.ends_with("no Docker endpoint (Endpoints.docker.Host)"),
            "{no_host}"
        );
        let config = engine_endpoints(
            &Fake::default()
                .var("DOCKER_CONFIG", "/cfg")
                .file("/cfg/config.json", "{"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            config.starts_with("/cfg/config.json: not a Docker CLI config (JSON)"),
            "{config}"
        );
    }

    #[test]
    fn the_default_context_is_the_default_socket() {
        for src in [
            Fake::default()
                .var("DOCKER_CONFIG", "/cfg")
                .var("DOCKER_CONTEXT", "default"),
            Fake::default()
                .var("DOCKER_CONFIG", "/cfg")
                .file("/cfg/config.json", r#"{"currentContext":"default"}"#),
        ] {
            let endpoints = engine_endpoints(&src).unwrap();
            assert_eq!(hosts(&endpoints), ["unix:///var/run/docker.sock"]);
            assert!(matches!(
                endpoints[0].origin,
                Origin::Default { chosen_by: Some(_) }
            ));
        }
    }

    #[test]
    fn without_a_context_the_default_socket_comes_first_then_those_that_exist() {
        let src = Fake::default()
            .var("HOME", "/home/me")
            .var("XDG_RUNTIME_DIR", "/run/user/1000")
            .file("/home/me/.docker/config.json", r#"{"auths":{}}"#)
            .socket("/home/me/.colima/default/docker.sock")
            .socket("/run/user/1000/docker.sock")
            .socket("/run/user/1000/podman/podman.sock");
        let endpoints = engine_endpoints(&src).unwrap();
        assert_eq!(
            hosts(&endpoints),
            [
                "unix:///var/run/docker.sock",
                "unix:///home/me/.colima/default/docker.sock",
                "unix:///run/user/1000/docker.sock",
                "unix:///run/user/1000/podman/podman.sock",
            ]
        );
        let origins: Vec<String> = endpoints.iter().map(|e| e.origin.to_string()).collect();
        assert_eq!(
            origins,
            [
                "the default socket",
                "Colima's socket",
                "rootless Docker's socket",
                "Podman's socket"
            ]
        );
        let desktop = Fake::default()
            .var("HOME", "/home/me")
            .socket("/home/me/.docker/run/docker.sock");
        assert_eq!(
            engine_endpoints(&desktop).unwrap()[1].origin,
            Origin::WellKnown("Docker Desktop's socket")
        );
    }

    #[test]
    fn without_home_the_config_directory_must_be_named() {
        let e = engine_endpoints(&Fake::default()).unwrap_err();
        assert!(matches!(e, DockerError::ConfigDir(_)), "{e}");
        assert!(e.to_string().contains("DOCKER_HOST"), "{e}");
        // DOCKER_CONFIG is enough; the sockets under HOME are then not looked for
        let src = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .socket("/home/me/.docker/run/docker.sock");
        assert_eq!(
            hosts(&engine_endpoints(&src).unwrap()),
            ["unix:///var/run/docker.sock"]
        );
    }

    #[test]
    fn ssh_and_other_schemes_are_refused_with_what_to_do() {
        let ssh = engine_endpoints(&Fake::default().var("DOCKER_HOST", "ssh://me@build"))
            .unwrap_err()
            .to_string();
        assert!(
            ssh.starts_with("the Docker engine at ssh://me@build (DOCKER_HOST) is reached over SSH, which sandbox does not support"),
            "{ssh}"
        );
        assert!(ssh.contains("DOCKER_HOST=unix://"), "{ssh}");
        let src = Fake::default()
            .var("DOCKER_CONFIG", "/cfg")
            .var("DOCKER_CONTEXT", "remote")
            .context("remote", &meta("remote", "ssh://me@build"));
        let e = engine_endpoints(&src).unwrap_err().to_string();
        assert!(e.contains("Docker context \"remote\""), "{e}");
        assert!(e.contains("over SSH"), "{e}");
        let pipe = engine_endpoints(&Fake::default().var("DOCKER_HOST", "npipe:////./pipe/x"))
            .unwrap_err()
            .to_string();
        assert!(pipe.contains("unix://PATH and tcp://HOST:PORT"), "{pipe}");
    }

    #[tokio::test]
    async fn every_address_tried_is_named_with_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let socket = endpoint(
            &format!("unix://{}", absent.display()),
            None,
            Origin::Default { chosen_by: None },
        )
        .unwrap();
        let tcp = endpoint(
            &format!("tcp://127.0.0.1:{port}"),
            None,
            Origin::WellKnown("Podman's socket"),
        )
        .unwrap();
        let e = Engine::connect_first(&[socket.clone(), tcp.clone()], Duration::from_secs(10))
            .await
            .err()
            .expect("nothing listens");
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cannot reach the Docker engine; tried, in order:");
        assert!(
            lines[1].starts_with(&format!(
                "  {} (the default socket): Socket not found",
                socket.host
            )),
            "{text}"
        );
        assert!(
            lines[2].starts_with(&format!("  {} (Podman's socket): ", tcp.host)),
            "{text}"
        );
        // one address: the message names it, the cause follows
        let e = Engine::connect_first(std::slice::from_ref(&tcp), Duration::from_secs(10))
            .await
            .err()
            .expect("nothing listens");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the Docker engine at {} (Podman's socket)",
                tcp.host
            )
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    /// Answers one request of `stream` as an engine does the handshake's two: `/_ping` with
    /// `OK`, anything else with the version document.
    async fn answer<S>(mut stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        let (kind, body) = if head.contains("/_ping") {
            ("text/plain", "OK")
        } else {
            (
                "application/json",
                r#"{"Version":"27.0.0","ApiVersion":"1.45","MinAPIVersion":"1.24"}"#,
            )
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    #[tokio::test]
    async fn an_address_where_nothing_listens_passes_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream));
            }
        });
        let absent = dir.path().join("absent.sock");
        let endpoints = [
            endpoint(
                &format!("unix://{}", absent.display()),
                None,
                Origin::Default { chosen_by: None },
            )
            .unwrap(),
            endpoint(
                &format!("unix://{}", path.display()),
                None,
                Origin::WellKnown("Colima's socket"),
            )
            .unwrap(),
        ];
        let engine = Engine::connect_first(&endpoints, Duration::from_secs(10)).await;
        assert!(engine.is_ok(), "{:?}", engine.err());
    }

    /// A CA, and a certificate it signs for `name` (`ServerAuth` or `ClientAuth`): PEMs of
    /// the CA, the certificate and its key.
    fn pki(name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![name.to_string()]).unwrap();
        leaf.extended_key_usages = vec![usage];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    /// An engine over TLS on 127.0.0.1 that requires a client certificate signed by
    /// `client_ca`: its address.
    async fn tls_engine(cert_pem: &str, key_pem: &str, client_ca: &str) -> String {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        answer(tls).await;
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn a_tls_endpoint_trusts_its_ca_and_presents_its_client_certificate() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server_ca, server_cert, server_key) = pki("127.0.0.1", ServerAuth);
        let (client_ca, client_cert, client_key) = pki("client", ClientAuth);
        let (other_ca, _, _) = pki("127.0.0.1", ServerAuth);
        let address = tls_engine(&server_cert, &server_key, &client_ca).await;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            Some(path)
        };
        let files = TlsFiles {
            ca: file("ca.pem", &server_ca),
            cert: file("cert.pem", &client_cert),
            key: file("key.pem", &client_key),
            verify: true,
        };
        let connect = |tls: TlsFiles| {
            let context = Origin::Context {
                name: "remote".into(),
                chosen_by: "DOCKER_CONTEXT".into(),
                meta: "/cfg/contexts/meta/x/meta.json".into(),
            };
            let endpoint = endpoint(&format!("tcp://{address}"), Some(tls), context).unwrap();
            async move { Engine::connect_first(&[endpoint], Duration::from_secs(10)).await }
        };
        let verified = connect(files.clone()).await;
        assert!(verified.is_ok(), "{:?}", verified.err());
        // SkipTLSVerify: no CA needed, the client certificate still presented
        let skipped = connect(TlsFiles {
            ca: None,
            verify: false,
            ..files.clone()
        })
        .await;
        assert!(skipped.is_ok(), "{:?}", skipped.err());
        // another CA: the server is not trusted
        let untrusted = connect(TlsFiles {
            ca: file("other-ca.pem", &other_ca),
            ..files.clone()
        })
        .await;
        match untrusted {
            Err(e @ DockerError::Connect { .. }) => {
                assert!(chain_text(&e).contains("invalid peer certificate"), "{e:?}")
            }
            other => panic!("an untrusted server answered: {:?}", other.err()),
        }
        // no client certificate: the server refuses
        let anonymous = connect(TlsFiles {
            cert: None,
            key: None,
            ..files.clone()
        })
        .await;
        assert!(
            matches!(anonymous, Err(DockerError::Connect { .. })),
            "{:?}",
            anonymous.err()
        );
        // a CA file that is not PEM is named
        let garbage = file("garbage.pem", "not a certificate");
        match connect(TlsFiles {
            ca: garbage.clone(),
            ..files
        })
        .await
        {
            Err(e @ DockerError::TlsMaterial { .. }) => assert!(
                e.to_string().starts_with(&format!(
                    "cannot use {} for TLS to the Docker engine (Docker context \"remote\"",
                    garbage.unwrap().display()
                )),
                "{e}"
            ),
            other => panic!("a garbage CA was used: {:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn an_engine_that_never_answers_fails_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        // accepts connections, never answers
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let host = format!("unix://{}", path.display());
        let silent = endpoint(&host, None, Origin::DockerHost).unwrap();
        let started = std::time::Instant::now();
        match Engine::connect_first(&[silent], Duration::from_millis(300)).await {
            Err(e @ DockerError::NotAnswering { .. }) => assert_eq!(
                e.to_string(),
                format!("the Docker engine at {host} (DOCKER_HOST) did not answer within 0 s")
            ),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a silent socket answered"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(
            split_tag("rancher/k3s:v1.31.4-k3s1"),
            ("rancher/k3s", "v1.31.4-k3s1")
        );
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app", "latest")
        );
        assert_eq!(
            split_tag("localhost:5000/app:v2"),
            ("localhost:5000/app", "v2")
        );
        assert_eq!(split_tag("hello"), ("hello", "latest"));
    }
}
