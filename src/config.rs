//! `sandbox.yaml`, version `sandbox.dev/v1alpha1`: strict parsing, defaults and validation.
//!
//! The file is optional: with none, [`SandboxConfig::builtin_default`] describes the built-in
//! default sandbox (cluster only). Unknown fields are errors that name the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The only config version this build reads.
pub const API_VERSION: &str = "sandbox.dev/v1alpha1";
/// The config kind.
pub const KIND: &str = "Sandbox";
/// The file looked for in the current directory when `-f` is not given.
pub const DEFAULT_FILE: &str = "sandbox.yaml";
/// The sandbox name used when neither the config nor `--name` gives one.
pub const DEFAULT_NAME: &str = "sandbox";

/// Errors reading or validating a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema (unknown field, wrong type).
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem (0 when the parser gave none).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The YAML parsed but a value is not acceptable.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The raw document, exactly as the schema allows it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    api_version: String,
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    manifests: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    images: Vec<ImageConfig>,
    #[serde(default)]
    secrets: Vec<SecretConfig>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    addons: RawAddons,
    #[serde(default)]
    registry: Option<String>,
    #[serde(default)]
    cluster: Option<RawCluster>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    registry: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    https_port: Option<u16>,
    #[serde(default)]
    ingress_class: Option<String>,
    #[serde(default)]
    tls: Option<RawClusterTls>,
    #[serde(default)]
    allow_cluster_scoped: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClusterTls {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

/// `cluster:`: deploying to an existing cluster through a kube context, instead of a
/// Docker node of sandbox's own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterConfig {
    /// The kube context allowed (`None`: only one named with `--context`).
    pub context: Option<String>,
    /// Where built images are pushed: `HOST[:PORT][/PREFIX]`.
    pub registry: Option<String>,
    /// The base domain of the environments' hosts (`<name>.<namespace>.<domain>`).
    pub domain: Option<String>,
    /// The port the cluster's ingress serves HTTPS on (URLs and their checks).
    pub https_port: u16,
    /// The IngressClass set on Ingresses that name none.
    pub ingress_class: Option<String>,
    /// A TLS Secret (`NAMESPACE/NAME`) copied into each environment and used by its
    /// Ingresses.
    pub tls_secret: Option<(String, String)>,
    /// A cert-manager ClusterIssuer: each environment gets a Certificate from it for its
    /// Ingresses' hosts.
    pub tls_issuer: Option<String>,
    /// Whether cluster-scoped objects may be applied.
    pub allow_cluster_scoped: bool,
}
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAddons {
    #[serde(default)]
    maildev: Option<bool>,
}

/// Where built images go on their way to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    /// `registry: local`: a registry container of the sandbox's own, on its network and
    /// published on 127.0.0.1; images are pushed there and the node pulls them.
    Local,
}

/// Which optional add-ons run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addons {
    /// maildev, the mail catcher (on unless `addons: {maildev: false}`).
    pub maildev: bool,
    /// Whether sandbox.yaml asks for maildev in so many words (`addons: {maildev: true}`):
    /// cluster mode deploys it into the environment only then.
    pub maildev_asked: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTimeouts {
    #[serde(default)]
    boot: Option<String>,
    #[serde(default)]
    ready: Option<String>,
}

/// One image the project builds (`images:` entry).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageConfig {
    /// The repository name the manifests use (`hello`, `example.com/team/app`), without a tag.
    pub name: String,
    /// Build context directory, relative to the config file.
    #[serde(default = "default_context")]
    pub context: PathBuf,
    /// Dockerfile path relative to the context.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// Multi-stage target, if any.
    #[serde(default)]
    pub target: Option<String>,
    /// Build arguments.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Files `sandbox dev` copies into the running containers instead of rebuilding.
    #[serde(default)]
    pub sync: Vec<SyncRule>,
    /// Build secrets (`RUN --mount=type=secret,id=ID`), served to BuildKit during the
    /// build and never written into the image or its cache.
    #[serde(default)]
    pub secrets: BuildSecrets,
}

/// The build secrets of an image, by id: read at build time from a file (relative to the
/// config file) or an environment variable.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildSecrets {
    /// Ids read from files, relative to the config file.
    #[serde(default)]
    pub from_file: BTreeMap<String, PathBuf>,
    /// Ids read from environment variables.
    #[serde(default)]
    pub from_env: BTreeMap<String, String>,
}

impl BuildSecrets {
    /// True when the image has none.
    pub fn is_empty(&self) -> bool {
        self.from_file.is_empty() && self.from_env.is_empty()
    }

    /// Every id, in order.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.from_file.keys().chain(self.from_env.keys())
    }
}

/// A `sync:` rule of an image: a change under `from` (in the build context) is copied to
/// `to` in every running container of the image, then `run` runs there.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncRule {
    /// A directory (or file) of the build context, relative to it.
    pub from: PathBuf,
    /// Where it is in the image: an absolute path.
    pub to: String,
    /// A command run in each container after a sync: a string for `sh -c`, or an argv.
    #[serde(default)]
    pub run: Option<Command>,
}

/// A command: a string run with `sh -c`, or an argv list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Command {
    /// Run with `sh -c`.
    Shell(String),
    /// Run as is.
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            Command::Argv(a) => a.clone(),
        }
    }
}

fn default_context() -> PathBuf {
    PathBuf::from(".")
}

fn default_dockerfile() -> String {
    "Dockerfile".to_string()
}

/// A Secret made from local files or environment variables (`secrets:` entry). Its values
/// are read at `up` time and never printed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretConfig {
    /// Secret name.
    pub name: String,
    /// Namespace (default: the sandbox's namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Secret type (default `Opaque`).
    #[serde(default = "default_secret_type", rename = "type")]
    pub kind: String,
    /// Keys read from files, relative to the config file.
    #[serde(default)]
    pub from_file: BTreeMap<String, PathBuf>,
    /// Keys read from environment variables.
    #[serde(default)]
    pub from_env: BTreeMap<String, String>,
}

fn default_secret_type() -> String {
    "Opaque".to_string()
}

/// Deadlines the user may tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From container start to node Ready (`None`: the profile's own).
    pub boot: Option<Duration>,
    /// For the project's workloads to become ready after apply.
    pub ready: Duration,
}

/// A validated sandbox configuration with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The file it came from (`None` for the built-in default).
    pub source: Option<PathBuf>,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Sandbox name: a DNS label, part of every Docker object name.
    pub name: String,
    /// Profile name, or `None` for automatic choice.
    pub profile: Option<String>,
    /// Namespace for namespaced objects that name none.
    pub namespace: String,
    /// The per-branch environment this run deploys, when one is selected (`namespace:
    /// auto` or `--namespace`): its namespace, also the subdomain of its hosts.
    pub environment: Option<String>,
    /// Manifest paths, directories or globs, relative to `base_dir`.
    pub manifests: Vec<String>,
    /// User variables for `${VAR}` substitution.
    pub variables: BTreeMap<String, String>,
    /// Images to build and load.
    pub images: Vec<ImageConfig>,
    /// Secrets from local files and environment variables.
    pub secrets: Vec<SecretConfig>,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Optional add-ons.
    pub addons: Addons,
    /// Where built images go (`None`: loaded straight into the node).
    pub registry: Option<Registry>,
    /// The existing cluster to deploy to (`cluster:`), if any; with `--context` the
    /// context comes from the command line.
    pub cluster: Option<ClusterConfig>,
    /// `sandbox dev --fast-rollout`: the project's Deployments roll out every new pod at
    /// once (see [`crate::manifests::fast_rollout`]). Never from the file.
    pub fast_rollout: bool,
}

/// Default deadline for workloads to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);

impl SandboxConfig {
    /// The built-in default: the cluster and its add-ons, no project.
    pub fn builtin_default(base_dir: PathBuf) -> Self {
        SandboxConfig {
            source: None,
            base_dir,
            name: DEFAULT_NAME.to_string(),
            profile: None,
            namespace: "default".to_string(),
            environment: None,
            manifests: Vec::new(),
            variables: BTreeMap::new(),
            images: Vec::new(),
            secrets: Vec::new(),
            timeouts: Timeouts {
                boot: None,
                ready: DEFAULT_READY_TIMEOUT,
            },
            addons: Addons {
                maildev: true,
                maildev_asked: false,
            },
            registry: None,
            cluster: None,
            fast_rollout: false,
        }
    }

    /// Finds and loads the config: `explicit` if given, else `sandbox.yaml` in `cwd` when
    /// present, else the built-in default.
    pub fn discover(explicit: Option<&Path>, cwd: &Path) -> Result<Self, ConfigError> {
        match explicit {
            Some(path) => Self::load(path),
            None => {
                let candidate = cwd.join(DEFAULT_FILE);
                if candidate.is_file() {
                    Self::load(&candidate)
                } else {
                    Ok(Self::builtin_default(cwd.to_path_buf()))
                }
            }
        }
    }

    /// Reads and validates one config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is used for error messages and to resolve relative paths.
    /// In three steps: the YAML read as the schema allows it (`read_raw`), its values
    /// checked (`validate`), then what it leaves out defaulted and `namespace: auto`
    /// resolved (`Validated::resolve`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = read_raw(text, path)?;
        let valid = validate(raw, path)?;
        valid.resolve(path)
    }

    /// A short description of where this config came from, for messages.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "the built-in default".to_string(),
        }
    }
}

/// The document of config text `text`, exactly as the schema allows it: malformed YAML, an
/// unknown field or a wrong type is an error at its line and column.
fn read_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: strip_location(&e.to_string()),
        }
    })
}

/// The error of field `field` of the config file at `path`.
fn invalid_field(path: &Path, field: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    }
}

/// A document whose values were checked, with the values read on the way (durations, the
/// registry, `cluster:`); what the file leaves out is not filled in yet.
struct Validated {
    /// The document (its `cluster:` taken out, into `cluster`).
    raw: RawConfig,
    /// `timeouts.boot`.
    boot: Option<Duration>,
    /// `timeouts.ready`.
    ready: Option<Duration>,
    /// `registry`.
    registry: Option<Registry>,
    /// `cluster:`, checked, its own defaults in.
    cluster: Option<ClusterConfig>,
}

/// Checks every value of `raw`; the error names the first field that is wrong, in the
/// order the checks come in here. Reads nothing but `raw`: `namespace: auto` is resolved
/// after (it asks git), so a file with a mistake is refused before any command runs.
fn validate(mut raw: RawConfig, path: &Path) -> Result<Validated, ConfigError> {
    let invalid = |field: &str, message: String| invalid_field(path, field, message);
    if raw.api_version != API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!(
                "unsupported version {:?}; this sandbox reads {API_VERSION:?}",
                raw.api_version
            ),
        ));
    }
    if raw.kind != KIND {
        return Err(invalid(
            "kind",
            format!("expected {KIND:?}, found {:?}", raw.kind),
        ));
    }
    if let Some(name) = &raw.name {
        validate_name(name).map_err(|m| invalid("name", m))?;
    }
    // `auto` becomes a branch's environment name, a DNS label whatever the branch
    if let Some(ns) = raw.namespace.as_deref().filter(|ns| *ns != AUTO_NAMESPACE) {
        validate_dns_label(ns, 63).map_err(|m| invalid("namespace", m))?;
    }
    validate_images(&raw.images).map_err(|(field, m)| invalid(&field, m))?;
    validate_secrets(&raw.secrets).map_err(|(field, m)| invalid(&field, m))?;
    validate_variables(&raw.variables).map_err(|(field, m)| invalid(&field, m))?;
    let duration = |text: &Option<String>, field: &str| {
        text.as_deref()
            .map(|t| parse_duration(t).map_err(|m| invalid(field, m)))
            .transpose()
    };
    let boot = duration(&raw.timeouts.boot, "timeouts.boot")?;
    let ready = duration(&raw.timeouts.ready, "timeouts.ready")?;
    let registry = match raw.registry.as_deref() {
        None => None,
        Some("local") => Some(Registry::Local),
        Some(other) => {
            return Err(invalid(
                "registry",
                format!(
                    "{other:?} is not a registry sandbox knows: \
                     `local` runs one of the sandbox's own"
                ),
            ))
        }
    };
    let cluster = raw
        .cluster
        .take()
        .map(|c| cluster_config(c).map_err(|(field, message)| invalid(field, message)))
        .transpose()?;
    Ok(Validated {
        raw,
        boot,
        ready,
        registry,
        cluster,
    })
}

impl Validated {
    /// The config: defaults for what the file leaves out, relative paths against the
    /// file's directory, and `namespace: auto` resolved to the environment of the git
    /// branch checked out there (the one step that runs a command).
    fn resolve(self, path: &Path) -> Result<SandboxConfig, ConfigError> {
        let Validated {
            raw,
            boot,
            ready,
            registry,
            cluster,
        } = self;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let (namespace, environment) = match raw.namespace {
            Some(ns) if ns == AUTO_NAMESPACE => {
                let branch =
                    git_branch(&base_dir).map_err(|m| invalid_field(path, "namespace", m))?;
                let env = environment_name(&branch);
                (env.clone(), Some(env))
            }
            Some(ns) => (ns, None),
            None => ("default".to_string(), None),
        };
        Ok(SandboxConfig {
            source: Some(path.to_path_buf()),
            base_dir,
            name: raw.name.unwrap_or_else(|| DEFAULT_NAME.to_string()),
            profile: raw.profile,
            namespace,
            environment,
            manifests: raw.manifests,
            variables: raw.variables,
            images: raw.images,
            secrets: raw.secrets,
            timeouts: Timeouts {
                boot,
                ready: ready.unwrap_or(DEFAULT_READY_TIMEOUT),
            },
            addons: Addons {
                maildev: raw.addons.maildev.unwrap_or(true),
                maildev_asked: raw.addons.maildev == Some(true),
            },
            registry,
            cluster,
            fast_rollout: false,
        })
    }
}

/// Checks `images:`: names, each given once, sync rules, build secrets. The error names
/// the field (`images[1].sync[0].to`) and what is wrong.
fn validate_images(images: &[ImageConfig]) -> Result<(), (String, String)> {
    for (i, image) in images.iter().enumerate() {
        validate_image_name(&image.name).map_err(|m| (format!("images[{i}].name"), m))?;
        if images[..i].iter().any(|other| other.name == image.name) {
            return Err((
                format!("images[{i}].name"),
                format!("image {:?} is listed twice", image.name),
            ));
        }
        for (j, rule) in image.sync.iter().enumerate() {
            let field = format!("images[{i}].sync[{j}]");
            let inside = rule.from.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if !inside {
                return Err((
                    format!("{field}.from"),
                    format!(
                        "{} is not a path inside the build context (relative, no `..`)",
                        rule.from.display()
                    ),
                ));
            }
            if !rule.to.starts_with('/') {
                return Err((
                    format!("{field}.to"),
                    format!("{:?} is not an absolute path in the container", rule.to),
                ));
            }
            if rule.run.as_ref().is_some_and(|r| r.argv().is_empty()) {
                return Err((format!("{field}.run"), "an empty command".into()));
            }
        }
        validate_build_secrets(&image.secrets)
            .map_err(|(field, m)| (format!("images[{i}].secrets{field}"), m))?;
    }
    Ok(())
}

/// Checks `secrets:`: names, namespaces, a source, the keys. The error names the field
/// (`secrets[0].name`, `secrets[0]: key "a b"`) and what is wrong.
fn validate_secrets(secrets: &[SecretConfig]) -> Result<(), (String, String)> {
    for (i, secret) in secrets.iter().enumerate() {
        let field = format!("secrets[{i}]");
        validate_dns_subdomain(&secret.name).map_err(|m| (format!("{field}.name"), m))?;
        if let Some(ns) = &secret.namespace {
            validate_dns_label(ns, 63).map_err(|m| (format!("{field}.namespace"), m))?;
        }
        if secret.from_file.is_empty() && secret.from_env.is_empty() {
            return Err((field, "give `fromFile` or `fromEnv` (or both)".to_string()));
        }
        for key in secret.from_file.keys().chain(secret.from_env.keys()) {
            let ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err((
                    format!("{field}: key {key:?}"),
                    "Secret keys are letters, digits, `-`, `_` and `.`".to_string(),
                ));
            }
        }
        if let Some(key) = secret
            .from_file
            .keys()
            .find(|k| secret.from_env.contains_key(*k))
        {
            return Err((
                format!("{field}: key {key:?}"),
                "given both in `fromFile` and `fromEnv`".to_string(),
            ));
        }
    }
    Ok(())
}

/// Checks the names of `variables:`: variable names, neither a URL variable's nor a
/// built-in's. The error names the field (`variables.NAME`) and what is wrong.
fn validate_variables(variables: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for key in variables.keys() {
        let field = format!("variables.{key}");
        if !is_variable_name(key) {
            return Err((
                field,
                "variable names are letters, digits and `_`, not starting with a digit".to_string(),
            ));
        }
        if key.starts_with(crate::manifests::URL_VARIABLE_PREFIX) {
            return Err((
                field,
                format!(
                    "{}<NAME> variables are the project's URLs, found in its Ingresses",
                    crate::manifests::URL_VARIABLE_PREFIX
                ),
            ));
        }
        if crate::manifests::BUILTIN_VARIABLES.contains(&key.as_str()) {
            return Err((
                field,
                format!("{key} is a built-in variable and cannot be redefined"),
            ));
        }
    }
    Ok(())
}

/// Validates `cluster:`; an error names the field.
fn cluster_config(raw: RawCluster) -> Result<ClusterConfig, (&'static str, String)> {
    let invalid = |field: &'static str, message: String| (field, message);
    let tls = raw.tls.unwrap_or_default();
    let tls_issuer = tls.issuer;
    if let Some(issuer) = &tls_issuer {
        if tls.secret.is_some() {
            return Err(invalid(
                "cluster.tls",
                "give `secret` or `issuer`, not both".into(),
            ));
        }
        if validate_dns_subdomain(issuer).is_err() {
            return Err(invalid(
                "cluster.tls.issuer",
                format!("{issuer:?} is not a ClusterIssuer name"),
            ));
        }
    }
    let tls_secret = match tls.secret {
        None => None,
        Some(s) => match s.split_once('/') {
            Some((ns, name)) if validate_dns_label(ns, 63).is_ok() && !name.is_empty() => {
                Some((ns.to_string(), name.to_string()))
            }
            _ => {
                return Err(invalid(
                    "cluster.tls.secret",
                    format!("{s:?} is not NAMESPACE/NAME"),
                ))
            }
        },
    };
    if let Some(domain) = &raw.domain {
        if validate_dns_subdomain(domain).is_err() {
            return Err(invalid(
                "cluster.domain",
                format!("{domain:?} is not a DNS name"),
            ));
        }
    }
    if let Some(registry) = &raw.registry {
        if registry.is_empty() || registry.contains("://") || registry.ends_with('/') {
            return Err(invalid(
                "cluster.registry",
                format!("{registry:?} is not HOST[:PORT][/PREFIX] (no scheme, no trailing /)"),
            ));
        }
    }
    Ok(ClusterConfig {
        context: raw.context,
        registry: raw.registry,
        domain: raw.domain,
        https_port: raw.https_port.unwrap_or(443),
        ingress_class: raw.ingress_class,
        tls_secret,
        tls_issuer,
        allow_cluster_scoped: raw.allow_cluster_scoped,
    })
}

/// serde_yaml appends " at line X column Y" to its messages; the error already carries them.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// `namespace: auto`: one namespace per git branch.
pub const AUTO_NAMESPACE: &str = "auto";

/// The current git branch of the checkout holding `dir`.
pub fn git_branch(dir: &Path) -> Result<String, String> {
    // symbolic-ref works before the first commit and fails on a detached HEAD
    let out = std::process::Command::new("git")
        .args(["symbolic-ref", "--short", "-q", "HEAD"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("`auto` needs git to find the branch: {e}"))?;
    let branch = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || branch.is_empty() {
        return Err(format!(
            "`auto` needs a git checkout on a branch (not a checkout, or HEAD is detached; \
             pass --namespace instead){}",
            match String::from_utf8_lossy(&out.stderr).trim() {
                "" => String::new(),
                e => format!(": {e}"),
            }
        ));
    }
    Ok(branch)
}

/// A git branch as a DNS label: lowercase, other characters as `-`, at most 63.
pub fn environment_name(branch: &str) -> String {
    let mut out = String::new();
    for c in branch.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "branch".to_string()
    } else {
        out
    }
}

/// Sandbox names become parts of Docker object names and kube context names.
pub fn validate_name(name: &str) -> Result<(), String> {
    validate_dns_label(name, 40)
}

/// The ids of an image's build secrets: BuildKit's (`[A-Za-z0-9._-]`), each given once.
/// The error names the field under `secrets` (`.fromEnv.ID`) and what is wrong.
fn validate_build_secrets(secrets: &BuildSecrets) -> Result<(), (String, String)> {
    for (kind, ids) in [
        ("fromFile", secrets.from_file.keys().collect::<Vec<_>>()),
        ("fromEnv", secrets.from_env.keys().collect()),
    ] {
        for id in ids {
            let field = format!(".{kind}.{id}");
            let ok = !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err((
                    field,
                    format!("{id:?} is not a secret id (letters, digits, `.`, `_`, `-`)"),
                ));
            }
            if kind == "fromEnv" && secrets.from_file.contains_key(id) {
                return Err((field, format!("secret {id:?} is also under `fromFile`")));
            }
        }
    }
    Ok(())
}

fn validate_dns_label(value: &str, max: usize) -> Result<(), String> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.is_empty()
        || value.len() > max
        || !ok_chars
        || value.starts_with('-')
        || value.ends_with('-')
    {
        return Err(format!(
            "{value:?} is not a DNS label: use 1 to {max} lowercase letters, digits and `-`, \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_dns_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .split('.')
            .all(|label| validate_dns_label(label, 63).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid Kubernetes object name (lowercase DNS subdomain)"
        ))
    }
}

fn validate_image_name(name: &str) -> Result<(), String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.is_empty() || last.contains(':') || name.contains('@') {
        return Err(format!(
            "{name:?} must be a repository name without tag or digest (e.g. `hello` or \
             `example.com/team/app`); sandbox chooses the tag"
        ));
    }
    let ok = name.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
    });
    if !ok {
        return Err(format!(
            "{name:?} is not a valid repository name (lowercase letters, digits, `._-/`)"
        ));
    }
    Ok(())
}

/// True when `s` may be used as `${s}`.
pub fn is_variable_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses `90s`, `5m`, `1h`, `1m30s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (examples: `90s`, `5m`, `1m30s`)");
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        // checked: `18446744073709551615m` overflowed (a panic in debug builds)
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SandboxConfig, ConfigError> {
        SandboxConfig::parse(text, Path::new("proj/sandbox.yaml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\n").unwrap();
        assert_eq!(c.name, "sandbox");
        assert_eq!(c.namespace, "default");
        assert_eq!(c.base_dir, PathBuf::from("proj"));
        assert_eq!(c.timeouts.ready, DEFAULT_READY_TIMEOUT);
        assert!(c.images.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            "apiVersion: sandbox.dev/v1alpha1
kind: Sandbox
name: hello
profile: offline
namespace: web
manifests: [k8s/, extra/*.yaml]
variables: {GREETING: hi}
images:
  - name: hello
    context: app
    target: runtime
    args: {VERSION: '1'}
timeouts: {boot: 2m, ready: 90s}
",
        )
        .unwrap();
        assert_eq!(c.name, "hello");
        assert_eq!(c.profile.as_deref(), Some("offline"));
        assert_eq!(c.manifests, vec!["k8s/", "extra/*.yaml"]);
        assert_eq!(c.images[0].context, PathBuf::from("app"));
        assert_eq!(c.images[0].dockerfile, "Dockerfile");
        assert_eq!(c.timeouts.boot, Some(Duration::from_secs(120)));
        assert_eq!(c.timeouts.ready, Duration::from_secs(90));
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let err = parse("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nnmae: x\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("proj/sandbox.yaml:3:"), "{text}");
        assert!(text.contains("unknown field `nmae`"), "{text}");
    }

    #[test]
    fn nested_unknown_field_is_rejected() {
        let err = parse(
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nimages:\n  - name: a\n    contxt: .\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("proj/sandbox.yaml:5:"), "{err}");
    }

    #[test]
    fn wrong_version_and_kind_are_rejected() {
        let err = parse("apiVersion: sandbox.dev/v2\nkind: Sandbox\n").unwrap_err();
        assert!(err.to_string().contains("field `apiVersion`"), "{err}");
        let err = parse("apiVersion: sandbox.dev/v1alpha1\nkind: Cluster\n").unwrap_err();
        assert!(err.to_string().contains("field `kind`"), "{err}");
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["Hello", "-a", "a_b", "", &"x".repeat(41)] {
            let text = format!("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nname: {bad:?}\n");
            let err = parse(&text).unwrap_err();
            assert!(err.to_string().contains("field `name`"), "{bad}: {err}");
        }
    }

    #[test]
    fn image_names_carry_no_tag_and_are_unique() {
        let err = parse(
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nimages: [{name: 'hello:v1'}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("images[0].name"), "{err}");
        let err = parse(
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nimages: [{name: a}, {name: a}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        // a registry host with a port is not a tag
        parse("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nimages: [{name: 'localhost:5000/app'}]\n")
            .unwrap();
    }

    #[test]
    fn builtin_variables_cannot_be_redefined() {
        let err = parse(
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nvariables: {SANDBOX_DOMAIN: x}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("built-in"), "{err}");
        for name in ["SANDBOX_SMTP_HOST", "SANDBOX_URL_WEB"] {
            let err = parse(&format!(
                "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nvariables: {{{name}: x}}\n"
            ))
            .unwrap_err();
            assert!(
                err.to_string().contains(&format!("variables.{name}")),
                "{err}"
            );
        }
    }

    #[test]
    fn secrets_need_a_source_and_valid_keys() {
        let c = parse(
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nsecrets:\n  - name: db\n    fromFile: {password: secrets/db.txt}\n    fromEnv: {token: API_TOKEN}\n",
        )
        .unwrap();
        assert_eq!(c.secrets[0].kind, "Opaque");
        assert_eq!(c.secrets[0].from_env["token"], "API_TOKEN");
        let err = parse("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nsecrets: [{name: db}]\n")
            .unwrap_err();
        assert!(err.to_string().contains("secrets[0]"), "{err}");
        let err = parse("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nsecrets: [{name: db, fromEnv: {'a b': X}}]\n").unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        let err = parse("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nsecrets: [{name: Db, fromEnv: {a: X}}]\n").unwrap_err();
        assert!(err.to_string().contains("secrets[0].name"), "{err}");
    }

    #[test]
    fn branches_become_dns_labels() {
        assert_eq!(environment_name("feature/Login-Page"), "feature-login-page");
        assert_eq!(environment_name("fix__#12"), "fix-12");
        assert_eq!(environment_name("///"), "branch");
        assert_eq!(environment_name(&"x".repeat(80)).len(), 63);
        assert_eq!(
            environment_name(&format!("{}-y", "x".repeat(62))),
            "x".repeat(62)
        );
    }

    #[test]
    fn auto_namespace_follows_the_git_branch() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                ok.status.success(),
                "{}",
                String::from_utf8_lossy(&ok.stderr)
            );
        };
        git(&["init", "-q", "-b", "feature/Sign-In"]);
        let path = dir.path().join("sandbox.yaml");
        std::fs::write(
            &path,
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nnamespace: auto\n",
        )
        .unwrap();
        let c = SandboxConfig::load(&path).unwrap();
        assert_eq!(c.namespace, "feature-sign-in");
        assert_eq!(c.environment.as_deref(), Some("feature-sign-in"));
        let outside = tempfile::tempdir().unwrap();
        let path = outside.path().join("sandbox.yaml");
        std::fs::write(
            &path,
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nnamespace: auto\n",
        )
        .unwrap();
        let err = SandboxConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("field `namespace`"), "{err}");
        // the file's own mistakes come first: git is asked only about a valid file
        std::fs::write(
            &path,
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nnamespace: auto\nregistry: hub\n",
        )
        .unwrap();
        let err = SandboxConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("field `registry`"), "{err}");
    }

    #[test]
    fn published_schema_matches_the_parser() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/sandbox.v1alpha1.schema.json")).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        // a config made of every property's example parses: the schema names no field the
        // parser rejects
        let mut doc = serde_json::Map::new();
        for (key, spec) in properties {
            let example = spec
                .get("const")
                .or_else(|| spec["examples"].get(0))
                .unwrap_or_else(|| panic!("{key}: no example"));
            doc.insert(key.clone(), example.clone());
        }
        let text = serde_yaml::to_string(&doc).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = SandboxConfig::parse(&text, &dir.path().join("sandbox.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.name, "hello");
        // and the parser accepts no top-level field the schema does not name
        for field in [
            "apiVersion",
            "kind",
            "name",
            "profile",
            "namespace",
            "manifests",
            "variables",
            "images",
            "secrets",
            "timeouts",
            "addons",
            "registry",
            "cluster",
        ] {
            assert!(properties.contains_key(field), "schema lacks {field}");
        }
        assert_eq!(properties.len(), 13);
        let cluster = c.cluster.as_ref().expect("the example has a cluster");
        assert_eq!(cluster.context.as_deref(), Some("team-shared"));
        assert_eq!(
            cluster.tls_secret,
            Some(("ingress".to_string(), "wildcard-dev".to_string()))
        );
        assert!(!c.addons.maildev, "the example turns maildev off");
        assert_eq!(c.registry, Some(Registry::Local));
    }

    #[test]
    fn a_registry_sandbox_does_not_know_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = SandboxConfig::parse(
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nregistry: docker.io\n",
            &dir.path().join("sandbox.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("field `registry`") && err.contains("`local`"),
            "{err}"
        );
    }

    #[test]
    fn cluster_fields_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |cluster: &str| {
            SandboxConfig::parse(
                &format!("apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\ncluster: {cluster}\n"),
                &dir.path().join("sandbox.yaml"),
            )
        };
        for (cluster, field) in [
            ("{tls: {secret: wildcard}}", "cluster.tls.secret"),
            ("{domain: 'Dev.Example'}", "cluster.domain"),
            (
                "{registry: 'https://registry.example.com'}",
                "cluster.registry",
            ),
            ("{registry: 'registry.example.com/'}", "cluster.registry"),
            (
                "{tls: {secret: ingress/wildcard, issuer: letsencrypt}}",
                "cluster.tls",
            ),
            ("{tls: {issuer: 'Lets Encrypt'}}", "cluster.tls.issuer"),
        ] {
            let err = parse(cluster).unwrap_err().to_string();
            assert!(
                err.contains(&format!("field `{field}`")),
                "{cluster}: {err}"
            );
        }
        let err = parse("{contxt: x}").unwrap_err().to_string();
        assert!(err.contains("contxt"), "{err}");
        let c = parse("{context: team, registry: 'registry.example.com:5000/team'}").unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.https_port, 443);
        assert!(!cluster.allow_cluster_scoped);
        assert_eq!(
            cluster.registry.as_deref(),
            Some("registry.example.com:5000/team")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10x").is_err());
    }

    #[test]
    fn huge_durations_are_errors_not_overflows() {
        assert!(parse_duration("18446744073709551615m").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615s1s").is_err());
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn discover_falls_back_to_builtin_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = SandboxConfig::discover(None, dir.path()).unwrap();
        assert_eq!(c.source, None);
        assert_eq!(c.name, DEFAULT_NAME);
        std::fs::write(
            dir.path().join(DEFAULT_FILE),
            "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nname: found\n",
        )
        .unwrap();
        assert_eq!(
            SandboxConfig::discover(None, dir.path()).unwrap().name,
            "found"
        );
    }

    #[test]
    fn sync_rules_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |sync: &str| {
            SandboxConfig::parse(
                &format!(
                    "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\n\
                     images: [{{name: web, context: app, sync: {sync}}}]\n"
                ),
                &dir.path().join("sandbox.yaml"),
            )
        };
        let c = parse("[{from: www/, to: /www/}, {from: src, to: /app/src, run: 'kill -HUP 1'}, {from: conf, to: /etc/app, run: [touch, /tmp/reload]}]").unwrap();
        let sync = &c.images[0].sync;
        assert_eq!(sync[0].from, PathBuf::from("www/"));
        assert_eq!(sync[0].run, None);
        assert_eq!(
            sync[1].run.as_ref().unwrap().argv(),
            ["sh", "-c", "kill -HUP 1"]
        );
        assert_eq!(
            sync[2].run.as_ref().unwrap().argv(),
            ["touch", "/tmp/reload"]
        );
        for (sync, field) in [
            ("[{from: ../secrets, to: /x}]", "images[0].sync[0].from"),
            ("[{from: /etc, to: /x}]", "images[0].sync[0].from"),
            ("[{from: www, to: www}]", "images[0].sync[0].to"),
            ("[{from: www, to: /www, run: []}]", "images[0].sync[0].run"),
        ] {
            let err = parse(sync).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{sync}: {err}");
        }
    }

    #[test]
    fn build_secrets_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |secrets: &str| {
            SandboxConfig::parse(
                &format!(
                    "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\n\
                     images: [{{name: web, secrets: {secrets}}}]\n"
                ),
                &dir.path().join("sandbox.yaml"),
            )
        };
        let c = parse("{fromFile: {npmrc: .npmrc}, fromEnv: {token.v2: NPM_TOKEN}}").unwrap();
        let secrets = &c.images[0].secrets;
        assert_eq!(secrets.from_file["npmrc"], PathBuf::from(".npmrc"));
        assert_eq!(secrets.from_env["token.v2"], "NPM_TOKEN");
        assert_eq!(secrets.ids().collect::<Vec<_>>(), ["npmrc", "token.v2"]);
        assert!(parse("{}").unwrap().images[0].secrets.is_empty());
        for (secrets, field) in [
            ("{fromEnv: {'a b': X}}", "images[0].secrets.fromEnv.a b"),
            ("{fromFile: {'': x}}", "images[0].secrets.fromFile."),
            (
                "{fromFile: {t: x}, fromEnv: {t: T}}",
                "images[0].secrets.fromEnv.t",
            ),
        ] {
            let err = parse(secrets).unwrap_err().to_string();
            assert!(
                err.contains(&format!("field `{field}`")),
                "{secrets}: {err}"
            );
        }
        let err = parse("{fromVault: {t: x}}").unwrap_err().to_string();
        assert!(err.contains("fromVault"), "{err}");
    }
}
