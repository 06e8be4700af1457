//! The URL table: every Ingress host and every NodePort/LoadBalancer Service the laptop
//! can reach, found through the API. Pure rendering from the objects, thin listing I/O.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};

/// A URL the laptop can open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Url {
    /// `namespace/name` of the object.
    pub name: String,
    /// How it is exposed: `Ingress`, `NodePort`, `LoadBalancer`.
    pub kind: String,
    /// The URL.
    pub url: String,
    /// How to check that it answers through the route a user takes (not printed).
    #[serde(skip)]
    pub probe: Probe,
}

/// What a URL's check asks (see [`crate::routes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The path to request: one the Ingress routes (its rule's first path), else `/`.
    pub path: String,
    /// Whether the Ingress has a TLS section for the host: its certificate, not the
    /// controller's default, must be served.
    pub tls: bool,
}

/// Namespaces whose objects are the cluster's own, not the project's.
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// URLs of a Service's node ports, at `node_ip` (the node's address on its network).
pub fn service_urls(service: &Service, node_ip: &str) -> Vec<Url> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind != "NodePort" && kind != "LoadBalancer" {
        return Vec::new();
    }
    let name = format!(
        "{}/{}",
        service.metadata.namespace.as_deref().unwrap_or("default"),
        service.metadata.name.as_deref().unwrap_or_default()
    );
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let node_port = p.node_port?;
            let https = p.port == 443 || p.name.as_deref().is_some_and(|n| n.contains("https"));
            let scheme = if https { "https" } else { "http" };
            Some(Url {
                name: name.clone(),
                kind: kind.to_string(),
                url: format!("{scheme}://{node_ip}:{node_port}/"),
                probe: Probe::default(),
            })
        })
        .collect()
}

/// URLs of an Ingress's hosts, over HTTPS on the published port (shown unless 443).
pub fn ingress_urls(ingress: &Ingress, https_port: u16) -> Vec<Url> {
    let name = format!(
        "{}/{}",
        ingress.metadata.namespace.as_deref().unwrap_or("default"),
        ingress.metadata.name.as_deref().unwrap_or_default()
    );
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let tls_hosts: Vec<&str> = ingress
        .spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .flat_map(|t| t.hosts.iter().flatten())
        .map(String::as_str)
        .collect();
    let mut urls: Vec<Url> = Vec::new();
    for rule in ingress.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
        let Some(host) = rule.host.as_deref().filter(|h| !h.contains('*')) else {
            continue;
        };
        let url = format!("https://{host}{port}/");
        // a path the rule routes (a regular expression of ImplementationSpecific: `/`)
        let path = rule
            .http
            .iter()
            .flat_map(|h| h.paths.iter())
            .filter_map(|p| p.path.as_deref())
            .find(|p| p.starts_with('/'))
            .filter(|p| !p.contains(['(', '*', '[', '$', '^']))
            .unwrap_or("/")
            .to_string();
        if !urls.iter().any(|u| u.url == url) {
            urls.push(Url {
                name: name.clone(),
                kind: "Ingress".to_string(),
                url,
                probe: Probe {
                    path,
                    tls: tls_hosts.contains(&host),
                },
            });
        }
    }
    urls
}

/// The URLs `docs` will have once applied: their Ingresses' hosts, and the node ports the
/// manifests fix themselves (a node port the cluster picks is not known before).
pub fn planned(
    docs: &[crate::manifests::Document],
    https_port: u16,
    node_ip: Option<&str>,
    namespace: &str,
) -> Vec<Url> {
    let mut urls = Vec::new();
    // only Ingresses and Services are copied into their types
    let placed = |doc: &crate::manifests::Document| {
        let mut object = doc.object.clone();
        if doc.namespace().is_none() {
            object["metadata"]["namespace"] = namespace.into();
        }
        object
    };
    for doc in docs {
        match (doc.kind(), node_ip) {
            ("Ingress", _) => {
                if let Ok(ingress) = serde_json::from_value::<Ingress>(placed(doc)) {
                    urls.extend(ingress_urls(&ingress, https_port));
                }
            }
            ("Service", Some(ip)) => {
                if let Ok(service) = serde_json::from_value::<Service>(placed(doc)) {
                    urls.extend(service_urls(&service, ip));
                }
            }
            _ => {}
        }
    }
    urls
}

/// The URL table as text: `heading` then one line per URL, each after `indent`; nothing
/// when there is no URL.
pub fn table(urls: &[Url], heading: &str, indent: &str) -> String {
    if urls.is_empty() {
        return String::new();
    }
    let mut out = heading.to_string();
    for u in urls {
        out.push_str(&format!(
            "{indent}{:<12} {:<30} {}\n",
            u.kind, u.name, u.url
        ));
    }
    out
}

/// `SANDBOX_URL_<NAME>` → URL, `<NAME>` from each URL's object name; an object's first URL
/// (and an Ingress before a Service of the same name) wins.
pub fn variables(urls: &[Url]) -> std::collections::BTreeMap<String, String> {
    let mut vars = std::collections::BTreeMap::new();
    for url in urls {
        let object = url.name.rsplit('/').next().unwrap_or_default();
        vars.entry(crate::manifests::url_variable(object))
            .or_insert_with(|| url.url.clone());
    }
    vars
}

/// Every URL in the cluster's project namespaces (or only in `namespace`, with the shared
/// add-ons' when `shared_addons`).
pub async fn collect(
    client: &kube::Client,
    namespace: Option<&str>,
    node_ip: Option<&str>,
    https_port: u16,
    shared_addons: bool,
) -> Result<Vec<Url>, kube::Error> {
    let (services, ingresses): (Api<Service>, Api<Ingress>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let project =
        |ns: &Option<String>| !SYSTEM_NAMESPACES.contains(&ns.as_deref().unwrap_or_default());
    let mut urls = Vec::new();
    for ingress in ingresses.list(&ListParams::default()).await?.items {
        if project(&ingress.metadata.namespace) {
            urls.extend(ingress_urls(&ingress, https_port));
        }
    }
    // an environment also lists the add-ons' web UIs (maildev), which it shares
    if shared_addons && namespace.is_some_and(|ns| ns != crate::addons::NAMESPACE) {
        let addons: Api<Ingress> = Api::namespaced(client.clone(), crate::addons::NAMESPACE);
        for ingress in addons.list(&ListParams::default()).await?.items {
            urls.extend(ingress_urls(&ingress, https_port));
        }
    }
    if let Some(ip) = node_ip {
        for service in services.list(&ListParams::default()).await?.items {
            if project(&service.metadata.namespace) {
                urls.extend(service_urls(&service, ip));
            }
        }
    }
    // the project's own first, the add-ons' (maildev) after
    urls.sort_by_key(|u| {
        u.name
            .starts_with(&format!("{}/", crate::addons::NAMESPACE))
    });
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ports_become_urls() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "NodePort", "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "https", "port": 443, "nodePort": 30443}]}
        }))
        .unwrap();
        let urls = service_urls(&svc, "172.18.0.2");
        assert_eq!(urls[0].url, "http://172.18.0.2:30080/");
        assert_eq!(urls[1].url, "https://172.18.0.2:30443/");
        assert_eq!(urls[0].name, "shop/web");
        let cluster_ip: Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}]}}),
        )
        .unwrap();
        assert!(service_urls(&cluster_ip, "172.18.0.2").is_empty());
    }

    #[test]
    fn planned_urls_and_their_variables() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web-app}\n\
            spec: {rules: [{host: app.127.0.0.1.nip.io}, {host: www.127.0.0.1.nip.io}]}\n---\n\
            apiVersion: v1\nkind: Service\nmetadata: {name: web-app}\n\
            spec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}\n---\n\
            apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: other}\n\
            spec: {type: NodePort, ports: [{port: 80, nodePort: 30081}]}\n---\n\
            apiVersion: v1\nkind: Service\nmetadata: {name: picked}\n\
            spec: {type: NodePort, ports: [{port: 80}]}\n";
        let docs = crate::manifests::parse(text, std::path::Path::new("all.yaml")).unwrap();
        let urls = planned(&docs, 8443, Some("172.18.0.2"), "shop");
        let got: Vec<(&str, &str)> = urls
            .iter()
            .map(|u| (u.name.as_str(), u.url.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("shop/web-app", "https://app.127.0.0.1.nip.io:8443/"),
                ("shop/web-app", "https://www.127.0.0.1.nip.io:8443/"),
                ("shop/web-app", "http://172.18.0.2:30080/"),
                ("other/api", "http://172.18.0.2:30081/"),
            ]
        );
        let vars = variables(&urls);
        assert_eq!(
            vars.into_iter().collect::<Vec<_>>(),
            [
                (
                    "SANDBOX_URL_API".to_string(),
                    "http://172.18.0.2:30081/".to_string()
                ),
                (
                    "SANDBOX_URL_WEB_APP".to_string(),
                    "https://app.127.0.0.1.nip.io:8443/".to_string()
                ),
            ]
        );
        // without the node's address, only the Ingresses
        assert_eq!(planned(&docs, 443, None, "shop").len(), 2);
    }

    #[test]
    fn ingress_urls_are_probed_on_a_routed_path_and_their_own_certificate() {
        let ing: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "default"},
            "spec": {"tls": [{"hosts": ["api.127.0.0.1.nip.io"], "secretName": "api-tls"}],
                     "rules": [
                {"host": "api.127.0.0.1.nip.io", "http": {"paths": [
                    {"path": "/v1", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}},
                {"host": "re.127.0.0.1.nip.io", "http": {"paths": [
                    {"path": "/(.*)", "pathType": "ImplementationSpecific", "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}}]}
        }))
        .unwrap();
        let probes: Vec<Probe> = ingress_urls(&ing, 443)
            .into_iter()
            .map(|u| u.probe)
            .collect();
        assert_eq!(
            probes,
            [
                Probe {
                    path: "/v1".into(),
                    tls: true
                },
                Probe {
                    path: "/".into(),
                    tls: false
                }
            ]
        );
    }

    #[test]
    fn ingress_hosts_become_https_urls() {
        let ing: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"rules": [{"host": "app.127.0.0.1.nip.io"}, {"host": "*.127.0.0.1.nip.io"},
                               {"host": "app.127.0.0.1.nip.io"}, {}]}
        }))
        .unwrap();
        let urls = ingress_urls(&ing, 443);
        assert_eq!(urls.len(), 1);
        assert_eq!(urls[0].url, "https://app.127.0.0.1.nip.io/");
        assert_eq!(
            urls[0].probe,
            Probe {
                path: "/".into(),
                tls: false
            }
        );
        assert_eq!(
            ingress_urls(&ing, 8443)[0].url,
            "https://app.127.0.0.1.nip.io:8443/"
        );
    }
}
