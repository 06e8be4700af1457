//! HTTPS for the project's Ingresses: every Ingress with hosts under the sandbox domain
//! gets a TLS section and a `kubernetes.io/tls` Secret issued by the user's CA, unless it
//! names a Secret of its own; a named Secret that neither the manifests nor the cluster
//! hold is provisioned. Planning is pure; issuing reads the Secrets already in the cluster
//! so that a certificate is kept (and the apply is a no-change) until it needs renewal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::SystemTime;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{json, Value};

use crate::manifests::Document;
use crate::tls::{Ca, TlsError};

/// The Secret sandbox adds to an Ingress that has no TLS section.
pub const DEFAULT_SECRET: &str = "sandbox-tls";
/// The ConfigMap that carries the CA certificate (key `ca.crt`) to the project's pods.
pub const CA_CONFIGMAP: &str = "sandbox-ca";

/// A TLS Secret the apply needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecret {
    /// Namespace.
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// The names its certificate covers, sorted.
    pub hosts: BTreeSet<String>,
    /// Whether the manifests named it (then a Secret of the same name that sandbox did not
    /// make is the user's, and is left alone).
    pub named_by_user: bool,
    /// The Ingresses that use it, for messages.
    pub ingresses: Vec<String>,
}

/// Whether `host` is `domain` or below it.
pub fn under(host: &str, domain: &str) -> bool {
    let host = host.trim_start_matches("*.");
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

fn hosts_of(ingress: &Value) -> Vec<String> {
    ingress["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["host"].as_str())
        .map(|h| h.to_ascii_lowercase())
        .collect()
}

/// The Secrets that `docs` define, as (namespace, name); one without a namespace is in
/// `default_namespace`. A Secret an Ingress names is provisioned only when it is not among
/// them.
fn defined_secrets(docs: &[Document], default_namespace: &str) -> BTreeSet<(String, String)> {
    docs.iter()
        .filter(|d| d.kind() == "Secret")
        .map(|d| {
            let ns = d.namespace().unwrap_or(default_namespace).to_string();
            (ns, d.name().to_string())
        })
        .collect()
}

/// Adds a TLS section to every Ingress that has hosts under `domain` and none, and lists
/// the Secrets to issue: those it added, and those the Ingresses name that no Secret in
/// `docs` defines. Namespaced objects without a namespace are in `default_namespace`.
pub fn plan(docs: &mut [Document], domain: &str, default_namespace: &str) -> Vec<TlsSecret> {
    let defined = defined_secrets(docs, default_namespace);
    let mut needed: BTreeMap<(String, String), TlsSecret> = BTreeMap::new();
    for doc in docs.iter_mut() {
        if doc.kind() != "Ingress" {
            continue;
        }
        let namespace = doc.namespace().unwrap_or(default_namespace).to_string();
        let id = format!("Ingress {namespace}/{}", doc.name());
        let ours: Vec<String> = hosts_of(&doc.object)
            .into_iter()
            .filter(|h| under(h, domain))
            .collect();
        let has_tls = doc.object["spec"]["tls"]
            .as_array()
            .is_some_and(|t| !t.is_empty());
        let mut wanted: Vec<(String, Vec<String>, bool)> = Vec::new();
        if !has_tls {
            if ours.is_empty() {
                continue;
            }
            doc.object["spec"]["tls"] = json!([{"hosts": ours, "secretName": DEFAULT_SECRET}]);
            let mut hosts = ours.clone();
            hosts.extend([format!("*.{domain}"), domain.to_string()]);
            wanted.push((DEFAULT_SECRET.to_string(), hosts, false));
        } else {
            for entry in doc.object["spec"]["tls"].as_array().into_iter().flatten() {
                let Some(secret) = entry["secretName"].as_str() else {
                    continue;
                };
                let listed: Vec<String> = entry["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str())
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
                let hosts: Vec<String> = if listed.is_empty() {
                    ours.clone()
                } else {
                    listed
                }
                .into_iter()
                .filter(|h| under(h, domain))
                .collect();
                if hosts.is_empty() || defined.contains(&(namespace.clone(), secret.to_string())) {
                    continue;
                }
                wanted.push((secret.to_string(), hosts, true));
            }
        }
        for (name, hosts, named_by_user) in wanted {
            let slot = needed
                .entry((namespace.clone(), name.clone()))
                .or_insert_with(|| TlsSecret {
                    namespace: namespace.clone(),
                    name,
                    hosts: BTreeSet::new(),
                    named_by_user,
                    ingresses: Vec::new(),
                });
            slot.hosts.extend(hosts);
            slot.named_by_user |= named_by_user;
            slot.ingresses.push(id.clone());
        }
    }
    needed
        .into_values()
        .map(|mut s| {
            s.hosts = covered(&s.hosts);
            s
        })
        .collect()
}

/// `hosts` without the names a wildcard among them already covers.
fn covered(hosts: &BTreeSet<String>) -> BTreeSet<String> {
    let wildcards: Vec<&str> = hosts.iter().filter_map(|h| h.strip_prefix("*.")).collect();
    hosts
        .iter()
        .filter(|h| {
            h.starts_with("*.")
                || !wildcards
                    .iter()
                    .any(|w| h.split_once('.').is_some_and(|(_, parent)| parent == *w))
        })
        .cloned()
        .collect()
}

/// A `kubernetes.io/tls` Secret document.
fn secret_document(secret: &TlsSecret, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Document {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Document {
        path: PathBuf::from(format!("(TLS for {})", secret.ingresses.join(", "))),
        index: 1,
        line: 0,
        kustomized: false,
        object: json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": secret.name, "namespace": secret.namespace},
            "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem), "ca.crt": b64(ca_pem)},
        }),
    }
}

/// The ConfigMap that gives pods in `namespace` the CA certificate.
pub fn ca_configmap(ca_pem: &str, namespace: &str) -> Document {
    Document {
        path: PathBuf::from("(sandbox CA)"),
        index: 1,
        line: 0,
        kustomized: false,
        object: json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CA_CONFIGMAP, "namespace": namespace},
            "data": {"ca.crt": ca_pem},
        }),
    }
}

/// What [`issue`] decided for one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    /// A new certificate (none before, or renewal due).
    New,
    /// The certificate in the cluster is still good and is kept.
    Kept,
    /// A Secret of that name that sandbox did not make exists: left alone.
    Users,
}

/// Issues (or keeps) the certificate of each planned Secret, returning the documents to
/// apply and what was done for each.
pub async fn issue(
    client: &kube::Client,
    ca: &Ca,
    planned: &[TlsSecret],
    owner_label: &str,
) -> Result<Vec<(TlsSecret, Issued, Option<Document>)>, TlsError> {
    let mut out = Vec::new();
    for secret in planned {
        let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
        // unreadable is treated as absent: the apply itself reports a real API problem
        let existing = api.get_opt(&secret.name).await.ok().flatten();
        let ours = existing.as_ref().is_some_and(|s| {
            s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(owner_label))
        });
        if existing.is_some() && !ours {
            out.push((secret.clone(), Issued::Users, None));
            continue;
        }
        let hosts: Vec<String> = secret.hosts.iter().cloned().collect();
        let kept = existing.as_ref().and_then(|s| {
            let data = s.data.as_ref()?;
            let cert = String::from_utf8(data.get("tls.crt")?.0.clone()).ok()?;
            let key = String::from_utf8(data.get("tls.key")?.0.clone()).ok()?;
            (!ca.needs_renewal(&cert, &hosts, SystemTime::now())).then_some((cert, key))
        });
        let (issued, cert, key) = match kept {
            Some((cert, key)) => (Issued::Kept, cert, key),
            None => {
                let leaf = ca.issue(&hosts)?;
                (Issued::New, leaf.cert_pem, leaf.key_pem)
            }
        };
        let doc = secret_document(secret, &cert, &key, ca.ca_pem());
        out.push((secret.clone(), issued, Some(doc)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "127.0.0.1.nip.io";

    fn docs(yaml: &str) -> Vec<Document> {
        crate::manifests::parse(yaml, std::path::Path::new("all.yaml")).unwrap()
    }

    #[test]
    fn names_under_the_domain() {
        assert!(under("hello.127.0.0.1.nip.io", DOMAIN));
        assert!(under("127.0.0.1.nip.io", DOMAIN));
        assert!(under("*.dev.127.0.0.1.nip.io", DOMAIN));
        assert!(!under("x127.0.0.1.nip.io", DOMAIN));
        assert!(!under("example.com", DOMAIN));
    }

    #[test]
    fn an_ingress_without_tls_gets_the_default_secret() {
        let mut d = docs(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  rules:\n  - host: hello.127.0.0.1.nip.io\n  - host: a.b.127.0.0.1.nip.io\n  - host: example.com\n",
        );
        let planned = plan(&mut d, DOMAIN, "demo");
        assert_eq!(
            d[0].object["spec"]["tls"],
            json!([{"hosts": ["hello.127.0.0.1.nip.io", "a.b.127.0.0.1.nip.io"], "secretName": "sandbox-tls"}])
        );
        assert_eq!(planned.len(), 1);
        let s = &planned[0];
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str()),
            ("demo", DEFAULT_SECRET)
        );
        assert!(!s.named_by_user);
        // hello.* is covered by the wildcard, a.b.* is not
        assert_eq!(
            s.hosts.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "*.127.0.0.1.nip.io",
                "127.0.0.1.nip.io",
                "a.b.127.0.0.1.nip.io"
            ]
        );
        assert_eq!(s.ingresses, ["Ingress demo/web"]);
    }

    #[test]
    fn a_named_missing_secret_is_provisioned_and_a_defined_one_is_not() {
        let mut d = docs(concat!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: puma, namespace: app}\n",
            "spec:\n  tls: [{hosts: [puma.127.0.0.1.nip.io], secretName: demoapp-puma-tls}]\n",
            "  rules: [{host: puma.127.0.0.1.nip.io}]\n---\n",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: own, namespace: app}\n",
            "spec:\n  tls: [{hosts: [own.127.0.0.1.nip.io], secretName: own-tls}]\n",
            "  rules: [{host: own.127.0.0.1.nip.io}]\n---\n",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: own-tls, namespace: app}\ntype: kubernetes.io/tls\n",
        ));
        let before = d[0].object.clone();
        let planned = plan(&mut d, DOMAIN, "demo");
        assert_eq!(d[0].object, before, "an Ingress with TLS is not rewritten");
        assert_eq!(planned.len(), 1, "{planned:?}");
        assert_eq!(planned[0].name, "demoapp-puma-tls");
        assert!(planned[0].named_by_user);
        assert_eq!(
            planned[0].hosts.iter().collect::<Vec<_>>(),
            ["puma.127.0.0.1.nip.io"]
        );
    }

    #[test]
    fn ingresses_outside_the_domain_are_left_alone() {
        let mut d = docs(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  rules: [{host: example.com}]\n",
        );
        assert!(plan(&mut d, DOMAIN, "demo").is_empty());
        assert!(d[0].object["spec"].get("tls").is_none());
    }

    #[test]
    fn ingresses_of_one_namespace_share_the_default_secret() {
        let mut d = docs(concat!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a}\nspec: {rules: [{host: a.127.0.0.1.nip.io}]}\n---\n",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: b}\nspec: {rules: [{host: b.127.0.0.1.nip.io}]}\n",
        ));
        let planned = plan(&mut d, DOMAIN, "demo");
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].ingresses, ["Ingress demo/a", "Ingress demo/b"]);
        assert_eq!(
            planned[0].hosts.iter().collect::<Vec<_>>(),
            ["*.127.0.0.1.nip.io", "127.0.0.1.nip.io"]
        );
    }

    #[test]
    fn secret_documents_hold_the_pem_files() {
        let s = TlsSecret {
            namespace: "demo".into(),
            name: "sandbox-tls".into(),
            hosts: BTreeSet::from(["*.127.0.0.1.nip.io".to_string()]),
            named_by_user: false,
            ingresses: vec!["Ingress demo/web".into()],
        };
        let doc = secret_document(&s, "CERT", "KEY", "CA");
        assert_eq!(doc.object["type"], "kubernetes.io/tls");
        assert_eq!(doc.object["data"]["tls.crt"], "Q0VSVA==");
        assert_eq!(
            doc.describe(),
            "(TLS for Ingress demo/web) (Secret/sandbox-tls)"
        );
        let cm = ca_configmap("PEM", "demo");
        assert_eq!(cm.object["data"]["ca.crt"], "PEM");
    }
}
