//! Add-ons sandbox runs in every cluster, whatever the profile: the ingress controller
//! (Traefik) and the mail catcher (maildev). Their manifests are embedded and rendered with the node's ports and the
//! profile's images, then applied and waited on like the project's, under an inventory of
//! their own in [`NAMESPACE`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::manifests::{self, Builtins, Document, ManifestError};
use crate::profile::Profile;

/// The namespace of the add-ons (and of their inventory).
pub const NAMESPACE: &str = "sandbox-system";
/// Label value of `dev.sandbox/role` on the add-ons' namespace, so that it is not taken for
/// a project environment.
pub const ROLE: &str = "addons";

/// The embedded add-on manifests, by name.
const MANIFESTS: &[(&str, &str)] = &[
    ("ingress", include_str!("../profiles/addons/ingress.yaml")),
    ("node", include_str!("../profiles/addons/node.yaml")),
    ("maildev", include_str!("../profiles/addons/maildev.yaml")),
];
/// maildev's SMTP port.
pub const SMTP_PORT: u16 = 1025;
/// maildev's cluster DNS name.
pub const SMTP_DNS_NAME: &str = "maildev.sandbox-system.svc.cluster.local";
/// For profiles with cluster DNS: the sandbox's names resolve, inside the cluster, to the
/// ingress controller.
const CLUSTER_DNS: (&str, &str) = (
    "coredns-custom",
    include_str!("../profiles/addons/coredns-custom.yaml"),
);

/// The add-on documents for `profile`, rendered with `builtins`.
pub fn documents(
    profile: &Profile,
    builtins: &Builtins,
    maildev: bool,
) -> Result<Vec<Document>, ManifestError> {
    let mut vars = manifests::variables(builtins, &BTreeMap::new());
    for (role, image) in &profile.addons {
        vars.insert(
            format!("SANDBOX_{}_IMAGE", role.to_uppercase()),
            image.clone(),
        );
    }
    let mut docs = Vec::new();
    let dns = profile.provides.cluster_dns.then_some(&CLUSTER_DNS);
    let wanted = MANIFESTS
        .iter()
        .filter(|(name, _)| maildev || *name != "maildev");
    for (name, text) in wanted.chain(dns) {
        let path = Path::new("(built-in add-on)").join(format!("{name}.yaml"));
        let text = manifests::substitute(text, &vars, &path)?;
        docs.extend(manifests::parse(&text, &path)?);
    }
    Ok(docs)
}

/// maildev alone, in `namespace` (an environment's own, in cluster mode), its web UI at
/// `maildev.<builtins.domain>`, its image `image`.
pub fn maildev_documents(
    builtins: &Builtins,
    namespace: &str,
    image: &str,
) -> Result<Vec<Document>, ManifestError> {
    let mut vars = manifests::variables(builtins, &BTreeMap::new());
    vars.insert("SANDBOX_MAILDEV_IMAGE".into(), image.to_string());
    let path = Path::new("(built-in add-on)/maildev.yaml");
    let (_, text) = MANIFESTS
        .iter()
        .find(|(name, _)| *name == "maildev")
        .expect("maildev is embedded");
    let text = manifests::substitute(text, &vars, path)?;
    let mut docs = manifests::parse(&text, path)?;
    for doc in &mut docs {
        doc.object["metadata"]["namespace"] = serde_json::json!(namespace);
    }
    Ok(docs)
}

/// maildev's SMTP host as the pods of `namespace` reach it when it runs there.
pub fn smtp_host_in(namespace: &str) -> String {
    format!("maildev.{namespace}.svc.cluster.local")
}

/// The images the add-ons run: loaded from the local engine when it holds them (the
/// offline profile builds them), pulled by the node otherwise.
pub fn images(profile: &Profile, maildev: bool) -> Vec<String> {
    let used: &[&str] = if maildev {
        &["ingress", "maildev"]
    } else {
        &["ingress"]
    };
    used.iter()
        .filter_map(|role| profile.addons.get(*role).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtins(https_port: u16) -> Builtins {
        Builtins {
            name: "demo".into(),
            namespace: "default".into(),
            domain: "127.0.0.1.nip.io".into(),
            ip: "127.0.0.1".into(),
            http_port: 80,
            https_port,
            smtp_host: SMTP_DNS_NAME.into(),
            smtp_port: SMTP_PORT,
        }
    }

    fn container(docs: &[Document]) -> &serde_json::Value {
        let deployment = docs
            .iter()
            .find(|d| d.kind() == "Deployment" && d.name() == "traefik")
            .expect("a Deployment");
        &deployment.object["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn the_controller_marks_routed_answers_with_the_header_up_checks() {
        let profile = Profile::named("offline").unwrap();
        let docs = documents(&profile, &builtins(443), true).unwrap();
        let dynamic = docs
            .iter()
            .find(|d| d.kind() == "ConfigMap" && d.name() == "traefik-sandbox")
            .expect("Traefik's file-provider ConfigMap");
        let config: serde_yaml::Value =
            serde_yaml::from_str(dynamic.object["data"]["dynamic.yaml"].as_str().unwrap()).unwrap();
        let headers =
            &config["http"]["middlewares"]["sandbox-routed"]["headers"]["customResponseHeaders"];
        let names: Vec<String> = headers
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_ascii_lowercase())
            .collect();
        assert_eq!(names, [crate::routes::ROUTED_HEADER]);
        let args = container(&docs)["args"].as_array().unwrap().clone();
        for arg in [
            "--entrypoints.websecure.http.middlewares=sandbox-routed@file",
            "--providers.file.filename=/etc/traefik/sandbox/dynamic.yaml",
        ] {
            assert!(args.iter().any(|a| a == arg), "{arg} missing: {args:?}");
        }
    }

    #[test]
    fn every_profile_renders_its_ingress_controller() {
        for name in ["k3s", "offline"] {
            let profile = Profile::named(name).unwrap();
            let docs = documents(&profile, &builtins(443), true).unwrap();
            assert_eq!(container(&docs)["image"], profile.addons["ingress"]);
            assert!(docs
                .iter()
                .filter(|d| d.name() != "coredns-custom")
                .all(|d| d.namespace().is_none_or(|ns| ns == NAMESPACE)));
            let custom = docs.iter().find(|d| d.name() == "coredns-custom");
            assert_eq!(custom.is_some(), profile.provides.cluster_dns, "{name}");
            if let Some(custom) = custom {
                assert_eq!(custom.namespace(), Some("kube-system"));
                let block = custom.object["data"]["sandbox.override"].as_str().unwrap();
                assert!(
                    block.contains("traefik.sandbox-system.svc.cluster.local."),
                    "{block}"
                );
            }
            let ns = docs.iter().find(|d| d.kind() == "Namespace").unwrap();
            assert_eq!(ns.name(), NAMESPACE);
            assert_eq!(ns.object["metadata"]["labels"]["dev.sandbox/role"], ROLE);
            assert_eq!(
                images(&profile, true),
                [
                    profile.addons["ingress"].clone(),
                    profile.addons["maildev"].clone()
                ]
            );
            let maildev = docs
                .iter()
                .find(|d| d.kind() == "Ingress" && d.name() == "maildev")
                .unwrap();
            assert_eq!(
                maildev.object["spec"]["rules"][0]["host"],
                "maildev.127.0.0.1.nip.io"
            );
        }
    }

    #[test]
    fn maildev_can_be_left_out() {
        let profile = Profile::named("offline").unwrap();
        let docs = documents(&profile, &builtins(443), false).unwrap();
        assert!(docs.iter().all(|d| d.name() != "maildev"));
        assert_eq!(images(&profile, false), [profile.addons["ingress"].clone()]);
    }

    #[test]
    fn http_redirects_to_the_laptops_https_port() {
        let profile = Profile::named("offline").unwrap();
        let docs = documents(&profile, &builtins(8443), true).unwrap();
        let args: Vec<&str> = container(&docs)["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.contains(&"--entrypoints.web.http.redirections.entrypoint.to=:8443"),
            "{args:?}"
        );
        let ports = &container(&docs)["ports"];
        assert_eq!(ports[0]["hostPort"], 80);
        assert_eq!(ports[1]["hostPort"], 443);
    }

    #[test]
    fn maildev_alone_goes_into_an_environment() {
        let builtins = Builtins {
            domain: "pr-7.dev.example.com".into(),
            ..builtins(443)
        };
        let docs = maildev_documents(&builtins, "pr-7", "registry.test/maildev:sandbox-1").unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d.kind()).collect();
        assert_eq!(kinds, ["Deployment", "Service", "Ingress"]);
        assert!(docs
            .iter()
            .all(|d| d.object["metadata"]["namespace"] == "pr-7"));
        assert_eq!(
            docs[0].object["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.test/maildev:sandbox-1"
        );
        assert_eq!(
            docs[2].object["spec"]["rules"][0]["host"],
            "maildev.pr-7.dev.example.com"
        );
        assert_eq!(smtp_host_in("pr-7"), "maildev.pr-7.svc.cluster.local");
    }
}
