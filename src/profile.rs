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
    /// The directory containerd reads registry hosts from (`config_path`: a
    /// `HOST/hosts.toml` file per registry, read at each pull, so a mirror is added without
    /// a restart).
    pub registry_hosts_dir: String,
    /// A file the node reads its registry mirrors from at start (k3s's `registries.yaml`,
    /// from which it writes `registry_hosts_dir` anew), kept in step with it.
    #[serde(default)]
    pub registries_file: Option<String>,
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

    /// The `sandbox.override` key of the coredns-custom ConfigMap, as `up` renders it for
    /// the k3s profile.
    fn rendered_override() -> String {
        let k3s = Profile::named("k3s").unwrap();
        let builtins = crate::manifests::Builtins {
            name: "demo".into(),
            namespace: "default".into(),
            domain: "127.0.0.1.nip.io".into(),
            ip: "127.0.0.1".into(),
            http_port: 80,
            https_port: 443,
            smtp_host: crate::addons::SMTP_DNS_NAME.into(),
            smtp_port: crate::addons::SMTP_PORT,
        };
        let docs = crate::addons::documents(&k3s, &builtins, true).unwrap();
        let custom = docs.iter().find(|d| d.name() == "coredns-custom").unwrap();
        assert_eq!(custom.namespace(), Some("kube-system"));
        custom.object["data"]["sandbox.override"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A checker of `rewrite` directives as CoreDNS v1.12.0 (the one k3s v1.31.4+k3s1
    /// ships: k3s-io/docs docs/release-notes/v1.31.X.md, k3s#11454) reads them, written
    /// from its sources:
    /// - coredns/caddy's Caddyfile lexer: tokens are split on white space; `"` quotes,
    ///   `#` starts a comment (even inside a token) and `{$NAME}` is an environment
    ///   variable; a backslash outside quotes is kept as it is;
    /// - plugin/rewrite/setup.go (`rewriteParse`): with fewer than two arguments on the
    ///   directive's line, every token of its `{ }` block is appended to them;
    /// - plugin/rewrite/rewrite.go (`newRule`): an optional `stop`/`continue`, then the
    ///   field (`name` here);
    /// - plugin/rewrite/name.go (`newNameRule`, `parseAnswerRules`): a match type, FROM,
    ///   TO, then answer options `answer auto | answer name FROM TO | answer value FROM TO`
    ///   (`answer` may be left out after the first), `auto` not combined with `name`; a
    ///   regex FROM must compile (RE2) and TO may use no more `{N}` groups than it has.
    mod rewrite_grammar {
        /// The tokens of a Corefile fragment, or why the lexer would read it otherwise.
        pub fn tokens(text: &str) -> Result<Vec<Vec<String>>, String> {
            let mut lines = Vec::new();
            for line in text.lines() {
                if line.contains(['"', '#']) || line.contains("{$") {
                    return Err(format!("quote, comment or variable in {line:?}"));
                }
                let words: Vec<String> = line.split_whitespace().map(String::from).collect();
                if !words.is_empty() {
                    lines.push(words);
                }
            }
            Ok(lines)
        }

        /// The argument lists of every `rewrite` directive, as `rewriteParse` builds them.
        pub fn directives(text: &str) -> Result<Vec<Vec<String>>, String> {
            let mut lines = tokens(text)?.into_iter();
            let mut out = Vec::new();
            while let Some(line) = lines.next() {
                let (name, rest) = line.split_first().ok_or("empty line")?;
                if name != "rewrite" {
                    return Err(format!("not a rewrite directive: {line:?}"));
                }
                let mut args: Vec<String> = rest.to_vec();
                if args.last().map(String::as_str) == Some("{") {
                    args.pop();
                    if args.len() >= 2 {
                        return Err("a block after two arguments is not read".into());
                    }
                    loop {
                        let block = lines.next().ok_or("unclosed block")?;
                        if block == ["}"] {
                            break;
                        }
                        if block.iter().any(|t| t == "{" || t == "}") {
                            return Err(format!("nested or misplaced brace: {block:?}"));
                        }
                        args.extend(block);
                    }
                }
                out.push(args);
            }
            Ok(out)
        }

        /// Checks one directive's arguments as `newRule` and `newNameRule` would.
        pub fn check(args: &[String]) -> Result<(), String> {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let rest = match args.first() {
                Some(&"stop") | Some(&"continue") => &args[1..],
                _ => &args[..],
            };
            let (field, rule) = rest.split_first().ok_or("no rule type")?;
            if *field != "name" {
                return Err(format!("only name rules are checked here, not {field}"));
            }
            let [kind, from, to, options @ ..] = rule else {
                return Err("a name rule with options needs a match type, FROM and TO".into());
            };
            if !["exact", "prefix", "suffix", "substring", "regex"].contains(kind) {
                return Err(format!("unknown match type {kind}"));
            }
            if *kind == "regex" {
                groups_fit(from, to)?;
            }
            if !options.is_empty() {
                answers(options)?;
            }
            Ok(())
        }

        /// A replacement `to` uses no more `{N}` groups than the regular expression `from` has.
        fn groups_fit(from: &str, to: &str) -> Result<(), String> {
            let groups = re2_groups(from)?;
            let used = (0..=100)
                .filter(|i| to.contains(&format!("{{{i}}}")))
                .count();
            if used > groups {
                return Err(format!("{to} uses {used} groups of {groups}"));
            }
            Ok(())
        }

        /// `parseAnswerRules`.
        fn answers(mut args: &[&str]) -> Result<(), String> {
            if args.len() < 2 {
                return Err("invalid arguments for answer rules".into());
            }
            let (mut first, mut auto, mut names) = (true, false, 0);
            while !args.is_empty() {
                if args[0] == "answer" {
                    args = &args[1..];
                } else if first {
                    return Err(format!("{:?} is not an answer rule", args[0]));
                }
                first = false;
                let (kind, rest) = args.split_first().ok_or("answer type missing")?;
                args = rest;
                match *kind {
                    "auto" => auto = true,
                    "name" | "value" => {
                        let [from, to, rest @ ..] = args else {
                            return Err(format!("{kind} answer rule: 2 arguments required"));
                        };
                        groups_fit(from, to)?;
                        names += usize::from(*kind == "name");
                        args = rest;
                    }
                    other => return Err(format!("invalid answer rule type {other:?}")),
                }
            }
            if auto && names > 0 {
                return Err("answer auto cannot be combined with answer name".into());
            }
            Ok(())
        }

        /// The capture groups of an RE2 pattern, or why it would not compile: brackets
        /// must balance, and RE2 has no look-around nor back-references.
        fn re2_groups(pattern: &str) -> Result<usize, String> {
            let (mut depth, mut groups, mut class) = (0usize, 0, false);
            let mut chars = pattern.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(d) if d.is_ascii_digit() && !class => {
                            return Err(format!("back-reference \\{d} in {pattern}"))
                        }
                        Some(_) => {}
                        None => return Err(format!("trailing backslash in {pattern}")),
                    },
                    '[' if !class => class = true,
                    ']' if class => class = false,
                    '(' if !class => {
                        depth += 1;
                        if chars.peek() == Some(&'?') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            if matches!(ahead.next(), Some('=' | '!' | '<')) {
                                return Err(format!("look-around in {pattern}"));
                            }
                        } else {
                            groups += 1;
                        }
                    }
                    ')' if !class => {
                        depth = depth
                            .checked_sub(1)
                            .ok_or(format!("unbalanced ) in {pattern}"))?
                    }
                    _ => {}
                }
            }
            if depth != 0 || class {
                return Err(format!("unbalanced brackets in {pattern}"));
            }
            Ok(groups)
        }

        #[test]
        fn the_checker_refuses_what_coredns_refuses() {
            let rule = |text: &str| {
                directives(text).and_then(|d| d.iter().try_for_each(|args| check(args)))
            };
            assert!(rule("rewrite stop {\n  name regex (a).b x.{1}.\n  answer auto\n}\n").is_ok());
            assert!(rule("rewrite name regex (a).b x.{1}. answer name (x)\\. {1}.b.").is_ok());
            // the classic two-line form (CoreDNS before 1.8.5 accepted only this one)
            assert!(rule("rewrite stop {\n name regex (a) b\n answer name (b) {1}\n}").is_ok());
            for bad in [
                "rewrite stop {\n  name regex (a b.\n  answer auto\n}\n",
                "rewrite stop {\n  name regex (a) {1}.{2}\n}\n",
                "rewrite stop {\n  name regex a b\n  answer question\n}\n",
                "rewrite stop {\n  name regex a b\n  answer auto name a b\n}\n",
                "rewrite stop {\n  name regex a b\n  auto\n}\n",
                "rewrite stop {\n  name regex a b\n  answer\n}\n",
                "rewrite stop {\n  name regex (?=a) b\n}\n",
                "rewrite stop {\n  name regex a#b c\n}\n",
                "rewrite stop {\n  name glob a b answer auto\n}\n",
                "rewrite stop {\n  name regex a b\n",
            ] {
                assert!(rule(bad).is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn the_in_cluster_names_rewrite_is_one_coredns_1_12_accepts() {
        let text = rendered_override();
        // the exact text; its grammar: see `rewrite_grammar`. `answer auto` (CoreDNS
        // 1.8.5 and later, plugin/rewrite/name.go `AutoMatch`) maps the answer's owner
        // name, traefik.sandbox-system.svc.cluster.local., back to the name asked, as
        // `answer name` cannot: every nip.io form differs. Without it the answer's name
        // differs from the question's and resolvers (glibc, Go) drop the records.
        assert_eq!(
            text,
            "rewrite stop {\n  \
             name regex ^(.*[.-])?(127[.-]0[.-]0[.-]1|7f000001)\\.(nip|sslip)\\.io\\.$ \
             traefik.sandbox-system.svc.cluster.local.\n  \
             answer auto\n\
             }\n"
        );
        let rules = rewrite_grammar::directives(&text).unwrap();
        assert_eq!(rules.len(), 1);
        rewrite_grammar::check(&rules[0]).unwrap();
        assert_eq!(
            rules[0],
            [
                "stop",
                "name",
                "regex",
                r"^(.*[.-])?(127[.-]0[.-]0[.-]1|7f000001)\.(nip|sslip)\.io\.$",
                "traefik.sandbox-system.svc.cluster.local.",
                "answer",
                "auto"
            ]
        );
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let err = Profile::named("minikube").unwrap_err().to_string();
        assert!(err.contains("k3s, offline"), "{err}");
    }
}
