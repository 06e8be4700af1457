//! `registry: local`: a registry container of the sandbox's own, the way k3d and kind run
//! one. Built images are pushed to it through the engine and the node pulls them, as a
//! shared cluster would, instead of being streamed straight into the node's containerd.
//!
//! One name works everywhere: the registry is published on `127.0.0.1:PORT`, which is the
//! name the engine pushes to (Docker treats 127.0.0.0/8 as an insecure registry, so plain
//! HTTP needs no configuration) and the name the manifests use. Inside the node that
//! address is the node itself, so its containerd gets a mirror for it: a `hosts.toml`
//! under its registry hosts directory (containerd's `config_path`, read at each pull)
//! pointing at the registry container by name on the sandbox's network. KEP-1755's
//! `local-registry-hosting` ConfigMap in `kube-public` tells tools where it is.

use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, Mount, PortBinding as DockerPortBinding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::{DockerError, Engine};
use crate::images::BuiltImage;
use crate::plan::Names;
use crate::profile::Profile;
use crate::report::Reporter;

/// The port the registry listens on inside its container.
pub const CONTAINER_PORT: u16 = 5000;
/// How long pulling the registry image may take.
const PULL_DEADLINE: Duration = Duration::from_secs(300);
/// How long a registry container may take to answer `/v2/`.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Errors of the local registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The engine failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The profile names no registry image.
    #[error("profile {profile} names no registry image (`addons.registry`)")]
    NoImage {
        /// Profile name.
        profile: String,
    },
    /// The registry did not answer in time.
    #[error("registry {container} did not answer on 127.0.0.1:{port} within {seconds} s: {last}")]
    NotAnswering {
        /// Container name.
        container: String,
        /// Host port.
        port: u16,
        /// The deadline.
        seconds: u64,
        /// What was seen last.
        last: String,
    },
    /// A push was refused.
    #[error("pushing {reference} to {registry} failed: {message}")]
    PushRefused {
        /// The reference pushed.
        reference: String,
        /// The registry.
        registry: String,
        /// The registry's (or the engine's) answer.
        message: String,
    },
    /// The node's containerd could not be given the mirror.
    #[error("cannot write the registry mirror into node {node}: {message}")]
    Mirror {
        /// Node container.
        node: String,
        /// What failed.
        message: String,
    },
    /// No free host port.
    #[error("cannot choose a free host port for the registry")]
    Port(#[source] std::io::Error),
}

/// A running local registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRegistry {
    /// Its container (and host name on the sandbox's network).
    pub container: String,
    /// The host port it is published on, on 127.0.0.1.
    pub port: u16,
}

impl LocalRegistry {
    /// `127.0.0.1:PORT`: what the engine pushes to and the manifests name.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the node's containerd reaches it: by name, on the sandbox's network.
    pub fn endpoint_in_network(&self) -> String {
        format!("http://{}:{CONTAINER_PORT}", self.container)
    }

    /// The reference of `image` in this registry: `127.0.0.1:PORT/NAME:TAG`.
    pub fn reference(&self, image: &BuiltImage) -> String {
        let (_, tag) = crate::docker::split_tag(&image.reference);
        format!("{}/{}:{tag}", self.host(), image.name)
    }
}

/// The registry container's name for sandbox `sandbox`.
pub fn container_name(sandbox: &str) -> String {
    Names::of(sandbox).registry
}

/// Its storage volume (kept by `down`, deleted by `down --purge`, like the data volume).
pub fn volume_name(sandbox: &str) -> String {
    Names::of(sandbox).registry_volume
}

/// The registry container (pure): the profile's registry image on the sandbox's network,
/// published on `127.0.0.1:port`, its storage on the registry volume.
pub fn container_body(sandbox: &str, image: &str, port: u16) -> ContainerCreateBody {
    let names = Names::of(sandbox);
    let key = format!("{CONTAINER_PORT}/tcp");
    let binding = DockerPortBinding {
        host_ip: Some("127.0.0.1".to_string()),
        host_port: Some(port.to_string()),
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        labels: Some(
            crate::plan::labels(sandbox, "registry")
                .into_iter()
                .collect(),
        ),
        exposed_ports: Some(vec![key.clone()]),
        host_config: Some(HostConfig {
            port_bindings: Some([(key, Some(vec![binding]))].into_iter().collect()),
            network_mode: Some(names.network.clone()),
            mounts: Some(vec![Mount {
                target: Some("/var/lib/registry".to_string()),
                source: Some(volume_name(sandbox)),
                typ: Some(bollard::models::MountType::VOLUME),
                ..Default::default()
            }]),
            restart_policy: Some(bollard::models::RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `hosts.toml` that makes the node's containerd pull `registry.host()` from the
/// registry container (pure).
pub fn hosts_toml(registry: &LocalRegistry) -> String {
    let endpoint = registry.endpoint_in_network();
    format!(
        "# written by sandbox: {host} is the sandbox's registry, reached by name on its network\n\
         server = \"{endpoint}\"\n\n\
         [host.\"{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        host = registry.host()
    )
}

/// k3s's `registries.yaml` with the same mirror (pure): k3s writes its hosts directory
/// anew from it at each start.
pub fn registries_yaml(registry: &LocalRegistry) -> String {
    format!(
        "# written by sandbox: {host} is the sandbox's registry\nmirrors:\n  \"{host}\":\n    endpoint:\n      - \"{endpoint}\"\n",
        host = registry.host(),
        endpoint = registry.endpoint_in_network()
    )
}

/// KEP-1755's ConfigMap (pure): where the registry is, for tools that look.
pub fn hosting_configmap(registry: &LocalRegistry) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local-registry-hosting\n  namespace: kube-public\n\
         data:\n  localRegistryHosting.v1: |\n    host: \"{host}\"\n    hostFromContainerRuntime: \"{host}\"\n    \
         hostFromClusterNetwork: \"{container}:{CONTAINER_PORT}\"\n    \
         help: \"https://github.com/kubernetes/enhancements/tree/master/keps/sig-cluster-lifecycle/generic/1755-communicating-a-local-registry\"\n",
        host = registry.host(),
        container = registry.container,
    )
}

/// The running registry of sandbox `sandbox`, if there is one.
pub async fn running(engine: &Engine, sandbox: &str) -> Result<Option<LocalRegistry>, DockerError> {
    let container = container_name(sandbox);
    if engine.container_state(&container).await?.as_deref() != Some("running") {
        return Ok(None);
    }
    let port = engine
        .bound_ports(&container)
        .await?
        .get(&CONTAINER_PORT)
        .copied();
    Ok(port.map(|port| LocalRegistry { container, port }))
}

/// Makes sure sandbox `sandbox`'s registry runs and answers: found running, started when
/// stopped (made again on another port when its own was taken meanwhile), or created.
pub async fn ensure(
    engine: &Engine,
    sandbox: &str,
    profile: &Profile,
    reporter: &Reporter,
) -> Result<LocalRegistry, RegistryError> {
    let image = profile
        .addons
        .get("registry")
        .ok_or_else(|| RegistryError::NoImage {
            profile: profile.name.clone(),
        })?;
    let container = container_name(sandbox);
    let registry = match running(engine, sandbox).await? {
        Some(r) => r,
        None => {
            let step = reporter.step(format!("starting registry {container}"));
            let existing = engine.container_state(&container).await?.is_some();
            let kept = if existing {
                engine
                    .bound_ports(&container)
                    .await?
                    .get(&CONTAINER_PORT)
                    .copied()
            } else {
                None
            };
            // a stopped container's ports are fixed: start it again where it was, or make
            // it again on a free port (its images are on its volume)
            if existing && engine.start(&container).await.is_err() {
                engine.remove_container(&container).await?;
            }
            if engine.container_state(&container).await?.as_deref() != Some("running") {
                let names = Names::of(sandbox);
                engine
                    .ensure_network(&names.network, &crate::plan::labels(sandbox, "network"))
                    .await?;
                engine
                    .ensure_volume(
                        &volume_name(sandbox),
                        &crate::plan::labels(sandbox, "registry"),
                    )
                    .await?;
                if engine.image_id(image).await?.is_none() {
                    let pulling = reporter.step(format!("pulling {image}"));
                    engine.pull(image, PULL_DEADLINE).await?;
                    pulling.done(format!("pulled {image}"));
                }
                let port = crate::plan::pick_port(kept, &[]).map_err(RegistryError::Port)?;
                engine
                    .run_container(&container, container_body(sandbox, image, port))
                    .await?;
            }
            let registry =
                running(engine, sandbox)
                    .await?
                    .ok_or_else(|| RegistryError::NotAnswering {
                        container: container.clone(),
                        port: 0,
                        seconds: 0,
                        last: "it stopped at once".into(),
                    })?;
            step.done(format!("registry {container} on {}", registry.host()));
            registry
        }
    };
    wait_answering(&registry).await?;
    Ok(registry)
}

/// Waits until the registry answers `GET /v2/` with 200.
async fn wait_answering(registry: &LocalRegistry) -> Result<(), RegistryError> {
    let started = Instant::now();
    loop {
        let last = match request(registry.port, "GET", "/v2/").await {
            Ok(200) => return Ok(()),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e,
        };
        if started.elapsed() > START_DEADLINE {
            return Err(RegistryError::NotAnswering {
                container: registry.container.clone(),
                port: registry.port,
                seconds: START_DEADLINE.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One plain HTTP request to the registry on 127.0.0.1:`port`; its status code.
async fn request(port: u16, method: &str, path: &str) -> Result<u16, String> {
    let work = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
        // a manifest list or an image manifest, as the engine pushes them
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 256];
        let n = tcp.read(&mut head).await.map_err(|e| e.to_string())?;
        crate::routes::parse_head(&String::from_utf8_lossy(&head[..n]))
            .map(|(status, _)| status)
            .ok_or_else(|| "not an HTTP answer".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// Whether the registry at `host` holds `reference`, when it can be asked without
/// credentials: a registry on this machine's loopback (plain HTTP, as the engine treats
/// it). `None` for any other, which is not asked (the push itself skips the layers it
/// has).
pub async fn holds_at(host: &str, reference: &str) -> Option<bool> {
    let port = host
        .strip_prefix("127.0.0.1:")
        .or_else(|| host.strip_prefix("localhost:"))
        .and_then(|p| p.parse::<u16>().ok())?;
    let Some(rest) = reference.strip_prefix(&format!("{host}/")) else {
        return Some(false);
    };
    let (name, tag) = crate::docker::split_tag(rest);
    Some(
        request(port, "HEAD", &format!("/v2/{name}/manifests/{tag}"))
            .await
            .is_ok_and(|code| code == 200),
    )
}

/// Whether the registry holds `reference` (`127.0.0.1:PORT/NAME:TAG`).
pub async fn holds(registry: &LocalRegistry, reference: &str) -> bool {
    holds_at(&registry.host(), reference).await == Some(true)
}

/// Pushes each built image to the registry unless it holds it already; returns the images
/// as the manifests name them there, and the references pushed.
pub async fn push_all(
    engine: &Engine,
    registry: &LocalRegistry,
    built: &[BuiltImage],
    reporter: &Reporter,
) -> Result<(Vec<BuiltImage>, Vec<String>), RegistryError> {
    push_all_to(engine, &registry.host(), None, built, reporter).await
}

/// Pushes each built image as `PREFIX/NAME:TAG` (`prefix`: `HOST[:PORT][/PATH]`) with
/// `credentials`, skipping those a loopback registry says it holds (see [`holds_at`]);
/// returns the images as the manifests name them there, and the references pushed.
pub async fn push_all_to(
    engine: &Engine,
    prefix: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
    built: &[BuiltImage],
    reporter: &Reporter,
) -> Result<(Vec<BuiltImage>, Vec<String>), RegistryError> {
    let host = prefix.split('/').next().unwrap_or(prefix);
    let mut delivered = Vec::new();
    let mut pushed = Vec::new();
    for image in built {
        let (_, tag) = crate::docker::split_tag(&image.reference);
        let repo = format!("{prefix}/{}", image.name);
        let reference = format!("{repo}:{tag}");
        engine.tag(&image.id, &repo, tag).await?;
        if holds_at(host, &reference).await != Some(true) {
            let step = reporter.step(format!("pushing {reference}"));
            let outcome = engine
                .push(&repo, tag, credentials.clone(), |status| {
                    reporter.detail(format!("{reference}: {status}"))
                })
                .await?;
            if let Err(message) = outcome {
                return Err(RegistryError::PushRefused {
                    reference,
                    registry: prefix.to_string(),
                    message,
                });
            }
            step.done(format!("pushed {reference}"));
            pushed.push(reference.clone());
        }
        delivered.push(BuiltImage {
            reference,
            ..image.clone()
        });
    }
    Ok((delivered, pushed))
}

/// Gives the node's containerd the mirror for the registry (and, where the profile has
/// one, its registries file), unless it has it already.
pub async fn configure_node(
    engine: &Engine,
    node: &str,
    profile: &Profile,
    registry: &LocalRegistry,
) -> Result<(), RegistryError> {
    let dir = format!("{}/{}", profile.node.registry_hosts_dir, registry.host());
    let mut files = vec![(format!("{dir}/hosts.toml"), hosts_toml(registry))];
    if let Some(path) = &profile.node.registries_file {
        files.push((path.clone(), registries_yaml(registry)));
    }
    for (path, content) in files {
        // written only when it differs: `cmp` against what is there, else a write through
        // a temporary file and a rename (containerd may read it at any moment)
        let script = format!(
            "set -e; f='{path}'; mkdir -p \"$(dirname \"$f\")\"; \
             printf '%s' \"$1\" | cmp -s - \"$f\" 2>/dev/null && exit 0; \
             printf '%s' \"$1\" > \"$f.tmp\" && mv \"$f.tmp\" \"$f\""
        );
        let out = engine
            .exec_simple(
                node,
                &["sh".into(), "-c".into(), script, "sh".into(), content],
            )
            .await?;
        if out.code != 0 {
            return Err(RegistryError::Mirror {
                node: node.to_string(),
                message: format!("writing {path}: exit {}: {}", out.code, out.stderr.trim()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> LocalRegistry {
        LocalRegistry {
            container: container_name("demo"),
            port: 41234,
        }
    }

    #[test]
    fn names_and_references() {
        assert_eq!(container_name("demo"), "sandbox-demo-registry");
        assert_eq!(volume_name("demo"), "sandbox-demo-registry");
        let r = registry();
        assert_eq!(r.host(), "127.0.0.1:41234");
        assert_eq!(r.endpoint_in_network(), "http://sandbox-demo-registry:5000");
        let built = BuiltImage {
            name: "example.com/team/web".into(),
            reference: "example.com/team/web:sandbox-0123456789ab".into(),
            id: "sha256:0123456789abcdef".into(),
            inputs: None,
        };
        assert_eq!(
            r.reference(&built),
            "127.0.0.1:41234/example.com/team/web:sandbox-0123456789ab"
        );
    }

    #[test]
    fn the_node_pulls_the_published_name_from_the_container() {
        let toml = hosts_toml(&registry());
        assert!(
            toml.contains("server = \"http://sandbox-demo-registry:5000\""),
            "{toml}"
        );
        assert!(
            toml.contains("[host.\"http://sandbox-demo-registry:5000\"]"),
            "{toml}"
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&registries_yaml(&registry())).unwrap();
        assert_eq!(
            yaml["mirrors"]["127.0.0.1:41234"]["endpoint"][0],
            "http://sandbox-demo-registry:5000"
        );
    }

    #[test]
    fn the_hosting_configmap_follows_kep_1755() {
        let cm: serde_yaml::Value = serde_yaml::from_str(&hosting_configmap(&registry())).unwrap();
        assert_eq!(cm["metadata"]["namespace"], "kube-public");
        assert_eq!(cm["metadata"]["name"], "local-registry-hosting");
        let hosting: serde_yaml::Value =
            serde_yaml::from_str(cm["data"]["localRegistryHosting.v1"].as_str().unwrap()).unwrap();
        assert_eq!(hosting["host"], "127.0.0.1:41234");
        assert_eq!(
            hosting["hostFromClusterNetwork"],
            "sandbox-demo-registry:5000"
        );
    }

    #[test]
    fn the_container_is_published_on_loopback_with_its_volume() {
        let body = container_body("demo", "sandbox-offline/registry:2.8.2", 41234);
        let host = body.host_config.unwrap();
        let binding = &host.port_bindings.unwrap()["5000/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("41234"));
        assert_eq!(host.network_mode.as_deref(), Some("sandbox-demo"));
        assert_eq!(
            host.mounts.unwrap()[0].source.as_deref(),
            Some("sandbox-demo-registry")
        );
        assert_eq!(body.labels.unwrap()[crate::labels::SANDBOX], "demo");
    }
}
