//! Pure planning: every Docker object of a sandbox, named and labelled, decided before
//! anything runs. `docker.rs` translates these plans to the engine's types.

use std::collections::BTreeMap;

use crate::labels;
use crate::profile::Profile;

/// Capabilities the engine may refuse to grant (absent from the host's bounding set).
/// `--privileged` asks for all of them, so a host lacking one refuses it outright.
pub const DROPPABLE_CAPABILITIES: &[&str] = &["SYS_RESOURCE"];

/// How the node gets the powers a Kubernetes node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// `--privileged`.
    Privileged,
    /// Everything `--privileged` gives, minus capabilities the engine cannot grant.
    Capabilities {
        /// Capabilities dropped from ALL.
        drop: Vec<String>,
    },
}

impl Security {
    /// The fallback used when the engine refuses `--privileged`.
    pub fn fallback() -> Security {
        Security::Capabilities {
            drop: DROPPABLE_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
        }
    }

    /// How a new node of `profile` is first created: with the capability set at once on
    /// an engine known to refuse `--privileged` (`engine_refuses`), unless the profile
    /// cannot run without it (it asks, and is refused, again: see [`Security::after_refusal`]).
    pub fn first(profile: &Profile, engine_refuses: bool) -> Security {
        match Security::after_refusal(profile) {
            Some(fallback) if engine_refuses => fallback,
            _ => Security::Privileged,
        }
    }

    /// What a node of `profile` gets when the engine refuses `--privileged`: the
    /// capability set, or `None` when the profile requires `--privileged`.
    pub fn after_refusal(profile: &Profile) -> Option<Security> {
        (!profile.node.requires_privileged).then(Security::fallback)
    }

    /// The label value recorded on the node.
    pub fn label(&self) -> &'static str {
        match self {
            Security::Privileged => "privileged",
            Security::Capabilities { .. } => "capabilities",
        }
    }
}

/// A host port binding on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBinding {
    /// Port inside the node.
    pub container: u16,
    /// Port on the host's loopback.
    pub host: u16,
}

/// Host ports chosen for a new node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPorts {
    /// Kubernetes API.
    pub api: u16,
    /// Ingress HTTP (80 when it was free).
    pub http: u16,
    /// Ingress HTTPS (443 when it was free).
    pub https: u16,
}

/// Everything needed to create a sandbox's node container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Container name, also its hostname and the Kubernetes node name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Arguments to the image's entrypoint.
    pub args: Vec<String>,
    /// Environment as `KEY=value`.
    pub env: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Network the node joins.
    pub network: String,
    /// Named data volume and where it is mounted.
    pub data_volume: String,
    /// Mount point of the data volume.
    pub data_path: String,
    /// Further mount points of the (whole) data volume.
    pub extra_data_paths: Vec<String>,
    /// tmpfs mounts.
    pub tmpfs: Vec<String>,
    /// Ports published on 127.0.0.1.
    pub ports: Vec<PortBinding>,
    /// Privileges.
    pub security: Security,
    /// Run Docker's init.
    pub init: bool,
}

/// Names of a sandbox's Docker objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The sandbox's own name.
    pub sandbox: String,
    /// Node container.
    pub node: String,
    /// Network.
    pub network: String,
    /// Data volume (kept across `down` unless `--purge`).
    pub data_volume: String,
    /// Kube context merged into the user's kubeconfig.
    pub context: String,
    /// Registry container (`registry: local`).
    pub registry: String,
    /// The registry's storage volume (kept across `down` unless `--purge`).
    pub registry_volume: String,
}

impl Names {
    /// The names for sandbox `sandbox`.
    pub fn of(sandbox: &str) -> Names {
        Names {
            sandbox: sandbox.to_string(),
            node: format!("sandbox-{sandbox}-node"),
            network: format!("sandbox-{sandbox}"),
            data_volume: format!("sandbox-{sandbox}-data"),
            context: format!("sandbox-{sandbox}"),
            registry: format!("sandbox-{sandbox}-registry"),
            registry_volume: format!("sandbox-{sandbox}-registry"),
        }
    }
}

/// Labels every object of sandbox `sandbox` carries, with its role.
pub fn labels(sandbox: &str, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::SANDBOX.to_string(), sandbox.to_string()),
        (labels::ROLE.to_string(), role.to_string()),
        (
            labels::VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

/// Container ports the ingress listens on inside the node.
pub const INGRESS_HTTP_PORT: u16 = 80;
/// Container HTTPS ingress port.
pub const INGRESS_HTTPS_PORT: u16 = 443;

/// Plans the node container of sandbox `sandbox` running `profile`.
pub fn node_spec(
    sandbox: &str,
    profile: &Profile,
    ports: HostPorts,
    security: Security,
) -> NodeSpec {
    let names = Names::of(sandbox);
    let mut labels = labels(sandbox, "node");
    labels.insert(labels::PROFILE.to_string(), profile.name.clone());
    labels.insert(labels::SECURITY.to_string(), security.label().to_string());
    labels.insert(labels::DNS_OWNER.to_string(), crate::dns_daemon::owner());
    let mut env: Vec<String> = profile
        .node
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("NODE_NAME={}", names.node));
    NodeSpec {
        name: names.node,
        image: profile.node.image.clone(),
        args: profile.node.args.clone(),
        env,
        labels,
        network: names.network,
        data_volume: names.data_volume,
        data_path: profile.node.data_path.clone(),
        extra_data_paths: profile.node.extra_data_paths.clone(),
        tmpfs: profile.node.tmpfs.clone(),
        ports: vec![
            PortBinding {
                container: profile.node.api_port,
                host: ports.api,
            },
            PortBinding {
                container: INGRESS_HTTP_PORT,
                host: ports.http,
            },
            PortBinding {
                container: INGRESS_HTTPS_PORT,
                host: ports.https,
            },
        ],
        security,
        init: profile.node.init,
    }
}

/// Picks host ports: `preferred` when it can be bound on 127.0.0.1, else a free one.
/// `taken` lists ports already promised in this plan.
pub fn pick_port(preferred: Option<u16>, taken: &[u16]) -> std::io::Result<u16> {
    pick_port_from(&LoopbackPorts, preferred, taken)
}

/// Where ports are looked for: the host's loopback, or a fixed set in unit tests (the
/// host's free ports change under tests that run side by side).
trait PortSource {
    /// Whether `port` can be bound now.
    fn is_free(&self, port: u16) -> bool;
    /// A port the system chooses.
    fn any(&self) -> std::io::Result<u16>;
}

struct LoopbackPorts;

impl PortSource for LoopbackPorts {
    fn is_free(&self, port: u16) -> bool {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    }

    fn any(&self) -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port())
    }
}

fn pick_port_from(
    source: &impl PortSource,
    preferred: Option<u16>,
    taken: &[u16],
) -> std::io::Result<u16> {
    if let Some(p) = preferred {
        if !taken.contains(&p) && source.is_free(p) {
            return Ok(p);
        }
    }
    loop {
        let port = source.any()?;
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
}

/// Chooses the host ports of a new node: API on a free port, 80/443 when free; or, for a
/// node made again, each of its `previous` ports (0: none) that is still free, so that its
/// URLs stay put.
pub fn choose_host_ports(previous: Option<HostPorts>) -> std::io::Result<HostPorts> {
    choose_host_ports_from(&LoopbackPorts, previous)
}

fn choose_host_ports_from(
    source: &impl PortSource,
    previous: Option<HostPorts>,
) -> std::io::Result<HostPorts> {
    let kept = |port: fn(&HostPorts) -> u16| previous.as_ref().map(port).filter(|p| *p != 0);
    let api = pick_port_from(source, kept(|p| p.api), &[])?;
    let http = pick_port_from(source, kept(|p| p.http).or(Some(INGRESS_HTTP_PORT)), &[api])?;
    let https = pick_port_from(
        source,
        kept(|p| p.https).or(Some(INGRESS_HTTPS_PORT)),
        &[api, http],
    )?;
    Ok(HostPorts { api, http, https })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> HostPorts {
        HostPorts {
            api: 40001,
            http: 80,
            https: 443,
        }
    }

    #[test]
    fn names_are_namespaced_by_sandbox() {
        let n = Names::of("demo");
        assert_eq!(n.node, "sandbox-demo-node");
        assert_eq!(n.network, "sandbox-demo");
        assert_eq!(n.data_volume, "sandbox-demo-data");
        assert_eq!(n.context, "sandbox-demo");
    }

    #[test]
    fn node_spec_from_offline_profile() {
        let p = Profile::named("offline").unwrap();
        let s = node_spec("demo", &p, ports(), Security::Privileged);
        assert_eq!(s.name, "sandbox-demo-node");
        assert_eq!(s.image, p.node.image);
        assert_eq!(s.labels[labels::SANDBOX], "demo");
        assert_eq!(s.labels[labels::ROLE], "node");
        assert_eq!(s.labels[labels::PROFILE], "offline");
        assert_eq!(s.labels[labels::SECURITY], "privileged");
        assert_eq!(s.data_path, "/var/lib/sandbox");
        assert!(s.env.contains(&"NODE_NAME=sandbox-demo-node".to_string()));
        assert_eq!(
            s.ports[0],
            PortBinding {
                container: 6443,
                host: 40001
            }
        );
        assert!(s.tmpfs.contains(&"/tmp".to_string()));
    }

    #[test]
    fn node_spec_from_k3s_profile() {
        let p = Profile::named("k3s").unwrap();
        let s = node_spec("demo", &p, ports(), Security::Privileged);
        assert_eq!(s.args[0], "server");
        // k3s must be PID 1: it evacuates the root cgroup (cgroup v2) only then (k3s
        // pkg/cli/cmds/init_linux.go), and reaps its children as PID 1 (log_linux.go)
        assert!(!s.init);
        assert!(s.env.contains(&"K3S_KUBECONFIG_MODE=644".to_string()));
        assert_eq!(s.labels[labels::SECURITY], "privileged");
        assert_eq!(s.data_path, "/var/lib/rancher/k3s");
        // the node password the server checks lives with the server's state
        assert_eq!(s.extra_data_paths, ["/etc/rancher/node"]);
    }

    #[test]
    fn k3s_never_falls_back_to_the_capability_set() {
        // its containerd lowers each pod sandbox's oom_score_adj, which needs the very
        // capability the fallback lacks (k3s pkg/agent/templates/templates_linux.go)
        let k3s = Profile::named("k3s").unwrap();
        assert_eq!(Security::after_refusal(&k3s), None);
        // it asks for --privileged even on an engine known to refuse it, and says why
        assert_eq!(Security::first(&k3s, true), Security::Privileged);
        assert_eq!(Security::first(&k3s, false), Security::Privileged);
    }

    #[test]
    fn offline_falls_back_to_the_capability_set() {
        let offline = Profile::named("offline").unwrap();
        assert_eq!(
            Security::after_refusal(&offline),
            Some(Security::fallback())
        );
        assert_eq!(Security::first(&offline, true), Security::fallback());
        assert_eq!(Security::first(&offline, false), Security::Privileged);
        let s = node_spec("demo", &offline, ports(), Security::fallback());
        assert!(s.extra_data_paths.is_empty());
        assert!(!s.init);
    }

    #[test]
    fn fallback_drops_sys_resource() {
        assert_eq!(
            Security::fallback(),
            Security::Capabilities {
                drop: vec!["SYS_RESOURCE".to_string()]
            }
        );
    }

    /// Every port can be bound but the `busy` ones; the system hands out 50000, 50001, ...
    struct FakePorts {
        busy: Vec<u16>,
        next: std::cell::Cell<u16>,
    }

    impl PortSource for FakePorts {
        fn is_free(&self, port: u16) -> bool {
            !self.busy.contains(&port)
        }

        fn any(&self) -> std::io::Result<u16> {
            let port = self.next.get();
            self.next.set(port + 1);
            Ok(port)
        }
    }

    fn fake(busy: &[u16]) -> FakePorts {
        FakePorts {
            busy: busy.to_vec(),
            next: std::cell::Cell::new(50000),
        }
    }

    #[test]
    fn a_node_made_again_keeps_its_ports_that_are_still_free() {
        let previous = HostPorts {
            api: 40001,
            http: 40002,
            https: 40003,
        };
        let chosen = choose_host_ports_from(&fake(&[40002]), Some(previous)).unwrap();
        assert_eq!(
            (chosen.api, chosen.http, chosen.https),
            (40001, 50000, 40003)
        );
        // a new node: any API port, 80 and 443 when free, else any
        let chosen = choose_host_ports_from(&fake(&[443]), None).unwrap();
        assert_eq!((chosen.api, chosen.http, chosen.https), (50000, 80, 50001));
        // a previous port of 0 was never published: the default is tried
        let none = HostPorts {
            api: 40001,
            http: 0,
            https: 0,
        };
        let chosen = choose_host_ports_from(&fake(&[]), Some(none)).unwrap();
        assert_eq!((chosen.http, chosen.https), (80, 443));
    }

    #[test]
    fn a_port_already_chosen_is_not_chosen_again() {
        // free, but the API already has it
        let source = fake(&[]);
        assert_eq!(
            pick_port_from(&source, Some(40001), &[40001]).unwrap(),
            50000
        );
        // the system hands out one the API has: the next is asked for
        assert_eq!(pick_port_from(&source, None, &[50001]).unwrap(), 50002);
    }

    #[test]
    fn taken_preferred_port_is_replaced() {
        let held = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let busy = held.local_addr().unwrap().port();
        let got = pick_port(Some(busy), &[]).unwrap();
        assert_ne!(got, busy);
        let free = pick_port(None, &[got]).unwrap();
        assert_ne!(free, got);
    }
}
