//! Profiles: what node to run and what it provides, embedded from `profiles/*.yaml`.
//!
//! The rest of the code is flavour-blind: it asks the profile for the image, the admin
//! kubeconfig path, the image import command and so on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Profile sources compiled into the binary, by name.
const EMBEDDED: &[(&str, &str)] = &[
    ("k3s", include_str!("../profiles/k3s.yaml")),
    ("offline", include_str!("../profiles/offline.yaml")),
];

/// The profile users get when a registry can serve its image.
pub const PREFERRED: &str = "k3s";
/// The profile used when the preferred one's image is not available.
pub const FALLBACK: &str = "offline";

/// Errors finding or reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No embedded profile has that name.
    #[error("unknown profile {name:?}; known profiles: {known}")]
    Unknown {
        /// The requested name.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
    /// An embedded profile does not parse (a build defect).
    #[error("embedded profile {name:?} is invalid: {message}")]
    Invalid {
        /// The profile name.
        name: String,
        /// The parser's message.
        message: String,
    },
}

/// A node flavour and its add-ons.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// How to run the node container.
    pub node: NodeProfile,
    /// What the node brings.
    pub provides: Provides,
    /// Add-on images by role.
    #[serde(default)]
    pub addons: BTreeMap<String, String>,
}

/// The node container's recipe.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeProfile {
    /// Image reference, pinned.
    pub image: String,
    /// Arguments passed to the image's entrypoint.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run Docker's init as PID 1 (else the image's entrypoint is PID 1).
    #[serde(default)]
    pub init: bool,
    /// The node cannot run without `--privileged`: when the engine refuses it, creating
    /// the node fails instead of falling back to the capability set.
    #[serde(default)]
    pub requires_privileged: bool,
    /// The API server's port inside the node.
    pub api_port: u16,
    /// Path of the admin kubeconfig inside the node.
    pub kubeconfig_path: String,
    /// Directory inside the node backed by the sandbox's data volume.
    pub data_path: String,
    /// Further paths where the data volume is mounted too, for state the node keeps
    /// outside `data_path` that must outlive the container. The whole volume is mounted
    /// there: what the node writes at such a path lands at the volume's root.
    #[serde(default)]
    pub extra_data_paths: Vec<String>,
    /// tmpfs mounts.
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// Command that imports an image archive read from stdin.
    pub image_import: Vec<String>,
    /// Command that lists the node's images as a table with REF and DIGEST in the first
    /// and third columns (`ctr images ls`).
    pub image_list: Vec<String>,
    /// Command that gives an image held by the node another name: `... SOURCE TARGET`.
    pub image_tag: Vec<String>,
    /// Default deadline from container start to node Ready.
    #[serde(with = "duration_text")]
    pub boot_timeout: Duration,
    /// What to tell a user whose engine lacks the image, when it cannot be pulled.
    #[serde(default)]
    pub build_hint: Option<String>,
}

/// What the node provides by itself.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Provides {
    /// Ingress controller that comes with the node (`none` when sandbox deploys one).
    pub ingress: String,
    /// Whether the node runs cluster DNS.
    pub cluster_dns: bool,
    /// Default StorageClass, if any.
    pub storage_class: Option<String>,
}

mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::config::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Profile {
    /// Loads an embedded profile by name.
    pub fn named(name: &str) -> Result<Profile, ProfileError> {
        let (_, text) =
            EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| ProfileError::Unknown {
                    name: name.to_string(),
                    known: names().join(", "),
                })?;
        let profile: Profile = serde_yaml::from_str(text).map_err(|e| ProfileError::Invalid {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        Ok(profile)
    }
}

/// Names of every embedded profile.
pub fn names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_profile_parses_and_is_consistent() {
        for name in names() {
            let p = Profile::named(name).unwrap();
            assert_eq!(p.name, name);
            assert!(
                p.node.image.contains(':'),
                "{name}: image must be pinned by tag"
            );
            assert!(!p.node.image.ends_with(":latest"), "{name}: no :latest");
            assert!(p.node.kubeconfig_path.starts_with('/'));
            assert!(p.node.data_path.starts_with('/'));
            assert_eq!(p.node.image_import.last().map(String::as_str), Some("-"));
            assert!(p.addons.contains_key("maildev"), "{name}: maildev add-on");
            assert!(p.addons.contains_key("ingress"), "{name}: ingress add-on");
        }
    }

    #[test]
    fn preferred_and_fallback_exist() {
        assert_eq!(
            Profile::named(PREFERRED).unwrap().node.image,
            "rancher/k3s:v1.31.4-k3s1"
        );
        let offline = Profile::named(FALLBACK).unwrap();
        assert!(offline.node.image.starts_with("sandbox-offline/"));
        assert_eq!(offline.provides.ingress, "none");
    }

    #[test]
    fn k3s_keeps_its_node_free_of_disk_pressure_and_host_port_clashes() {
        let k3s = Profile::named("k3s").unwrap();
        let args = &k3s.node.args;
        let has = |arg: &str| args.iter().any(|a| a == arg);
        // ServiceLB's hostPort pods would take 80/443 from sandbox's Traefik (hostPort
        // 80/443, profiles/addons/ingress.yaml); LoadBalancer Services keep their node
        // ports, which the URL table lists (src/urls.rs)
        assert!(has("--disable=servicelb"), "{args:?}");
        assert!(has("--disable=traefik"), "{args:?}");
        // every hard eviction threshold off ("0%" is ignored by the kubelet's
        // parseThresholdStatement) and image GC off (100), as on the offline node, so a
        // nearly full laptop disk neither taints the node nor deletes loaded images
        let kubelet: Vec<&str> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--kubelet-arg="))
            .collect();
        let eviction = kubelet
            .iter()
            .find_map(|a| a.strip_prefix("eviction-hard="))
            .expect("eviction-hard");
        let mut signals: Vec<&str> = eviction.split(',').collect();
        signals.sort();
        assert_eq!(
            signals,
            [
                "imagefs.available<0%",
                "memory.available<0%",
                "nodefs.available<0%",
                "nodefs.inodesFree<0%"
            ]
        );
        assert!(
            kubelet.contains(&"image-gc-high-threshold=100"),
            "{kubelet:?}"
        );
        // the offline node's kubelet configuration, mirrored
        let entrypoint = include_str!("../profiles/offline/node/entrypoint");
        assert!(entrypoint.contains("imageGCHighThresholdPercent: 100"));
        assert!(entrypoint.contains(
            r#"evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}"#
        ));
    }

    #[test]
    fn k3s_runs_as_pid_1_only_where_it_is_privileged() {
        let k3s = Profile::named("k3s").unwrap();
        assert!(!k3s.node.init);
        assert!(k3s.node.requires_privileged);
        assert_eq!(k3s.node.extra_data_paths, ["/etc/rancher/node"]);
        let offline = Profile::named("offline").unwrap();
        assert!(!offline.node.requires_privileged);
        assert!(offline.node.extra_data_paths.is_empty());
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let err = Profile::named("minikube").unwrap_err().to_string();
        assert!(err.contains("k3s, offline"), "{err}");
    }
}
