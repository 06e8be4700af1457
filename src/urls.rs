//! The URL table: every Ingress host and every NodePort/LoadBalancer Service the laptop
//! can reach, found through the API. Pure rendering from the objects, thin listing I/O.

use crate::labels;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
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

/// How the laptop reaches a Service port that the Service exposes (NodePort,
/// LoadBalancer): never at the node's address, which only a Linux host can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It speaks HTTP: through the ingress, by name (`<service>.<namespace>.<domain>`),
    /// with the sandbox's certificate.
    Ingress,
    /// Anything else over TCP (a database, SMTP, a server that speaks TLS itself): a
    /// loopback port relayed to it (see [`crate::forward`]).
    Forward {
        /// Whether it speaks TLS (its URL is `https://`).
        tls: bool,
    },
    /// Not TCP (UDP, SCTP): no URL.
    None,
}

/// Port numbers that speak plain HTTP by convention, when neither the port's
/// `appProtocol` nor its name says otherwise.
const HTTP_PORTS: &[i32] = &[80, 3000, 4200, 5000, 8000, 8008, 8080, 8081, 8888];

/// Whether a Service of `type_` exposes its ports outside the cluster.
pub fn exposed(type_: Option<&str>) -> bool {
    matches!(type_, Some("NodePort" | "LoadBalancer"))
}

/// The spec of `service` when it exposes its ports (see [`exposed`]).
pub fn exposed_spec(service: &Service) -> Option<&ServiceSpec> {
    service
        .spec
        .as_ref()
        .filter(|s| exposed(s.type_.as_deref()))
}

/// How the published HTTPS port shows in a URL: nothing for 443, else `:PORT`.
fn https_suffix(https_port: u16) -> String {
    if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    }
}

/// A document's object with its namespace: its own, else `namespace`.
fn placed(doc: &crate::manifests::Document, namespace: &str) -> serde_json::Value {
    let mut object = doc.object.clone();
    if doc.namespace().is_none() {
        object["metadata"]["namespace"] = namespace.into();
    }
    object
}

/// How the laptop reaches `port` (pure): by its `appProtocol` (Kubernetes' own field), else
/// its name (`http`, `http-*`, `web`, `https`, ...), else its number.
pub fn route(port: &ServicePort) -> Route {
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return Route::None;
    }
    if let Some(app) = &port.app_protocol {
        return match app.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" | "ws" => Route::Ingress,
            "https" | "kubernetes.io/wss" | "wss" | "tls" => Route::Forward { tls: true },
            _ => Route::Forward { tls: false },
        };
    }
    let name = port
        .name
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let named = |word: &str| {
        name == word || name.starts_with(&format!("{word}-")) || name.ends_with(&format!("-{word}"))
    };
    if named("https") || named("tls") || port.port == 443 || port.port == 8443 {
        Route::Forward { tls: true }
    } else if named("http") || named("web") || named("www") || named("ui") {
        Route::Ingress
    } else if name.is_empty() || name.parse::<i32>().is_ok() {
        if HTTP_PORTS.contains(&port.port) {
            Route::Ingress
        } else {
            Route::Forward { tls: false }
        }
    } else if HTTP_PORTS.contains(&port.port) && !named("metrics") {
        Route::Ingress
    } else {
        Route::Forward { tls: false }
    }
}

/// The name through the ingress of the `index`th HTTP port (`port`) of Service `service`:
/// `<service>.<namespace>.<domain>` for the first, `<service>-<port>.<namespace>.<domain>`
/// for the others.
pub fn service_host(
    service: &str,
    namespace: &str,
    domain: &str,
    index: usize,
    port: i32,
) -> String {
    if index == 0 {
        format!("{service}.{namespace}.{domain}")
    } else {
        format!("{service}-{port}.{namespace}.{domain}")
    }
}

/// The HTTP ports of `service` (if it exposes them), each with its name through the ingress.
fn http_ports<'a>(service: &'a Service, domain: &str) -> Vec<(&'a ServicePort, String)> {
    let Some(spec) = exposed_spec(service) else {
        return Vec::new();
    };
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    spec.ports
        .iter()
        .flatten()
        .filter(|p| route(p) == Route::Ingress)
        .enumerate()
        .map(|(i, p)| (p, service_host(name, namespace, domain, i, p.port)))
        .collect()
}

/// The Ingress through which the laptop reaches `service`'s HTTP ports by name (none when
/// it has none): sandbox applies it with the Service, and [`crate::ingress::plan`] gives it
/// the sandbox's certificate.
pub fn service_ingress(service: &Service, domain: &str) -> Option<serde_json::Value> {
    let ports = http_ports(service, domain);
    if ports.is_empty() {
        return None;
    }
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let kind = service
        .spec
        .as_ref()
        .and_then(|s| s.type_.clone())
        .unwrap_or_default();
    let rules: Vec<serde_json::Value> = ports
        .iter()
        .map(|(port, host)| {
            serde_json::json!({
                "host": host,
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"number": port.port}}},
                }]},
            })
        })
        .collect();
    Some(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": format!("{name}-sandbox-url"),
            "namespace": service.metadata.namespace.as_deref().unwrap_or("default"),
            "labels": {labels::URL_OF: name},
            "annotations": {crate::labels::URL_KIND: kind},
        },
        "spec": {"rules": rules},
    }))
}

/// URLs of a Service's exposed ports: its HTTP ports by name through the ingress (at
/// `domain`, on the published HTTPS port), the others at their loopback `forwards`.
pub fn service_urls(
    service: &Service,
    domain: Option<&str>,
    https_port: u16,
    forwards: &[crate::forward::Forward],
) -> Vec<Url> {
    let Some(spec) = exposed_spec(service) else {
        return Vec::new();
    };
    let kind = spec.type_.clone().unwrap_or_default();
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let service_name = service.metadata.name.as_deref().unwrap_or_default();
    let name = format!("{namespace}/{service_name}");
    let suffix = https_suffix(https_port);
    let mut urls: Vec<Url> = domain
        .map(|domain| http_ports(service, domain))
        .unwrap_or_default()
        .into_iter()
        .map(|(_, host)| Url {
            name: name.clone(),
            kind: kind.clone(),
            url: format!("https://{host}{suffix}/"),
            probe: Probe {
                path: "/".into(),
                tls: true,
            },
        })
        .collect();
    for port in spec.ports.iter().flatten() {
        if let Some(forward) = forwards.iter().find(|f| {
            f.namespace == namespace && f.service == service_name && i32::from(f.port) == port.port
        }) {
            urls.push(Url {
                name: name.clone(),
                kind: kind.clone(),
                url: forward.url(),
                probe: Probe::default(),
            });
        }
    }
    urls
}

/// URLs of an Ingress's hosts, over HTTPS on the published port (shown unless 443).
pub fn ingress_urls(ingress: &Ingress, https_port: u16) -> Vec<Url> {
    let name = format!(
        "{}/{}",
        ingress.metadata.namespace.as_deref().unwrap_or("default"),
        ingress.metadata.name.as_deref().unwrap_or_default()
    );
    let port = https_suffix(https_port);
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

/// The URLs `docs` will have once applied: their Ingresses' hosts, and their Services' HTTP
/// ports by name under `domain` (none without a domain: an existing cluster's). A port
/// relayed to a loopback port gets its port only once applied.
pub fn planned(
    docs: &[crate::manifests::Document],
    https_port: u16,
    domain: Option<&str>,
    namespace: &str,
) -> Vec<Url> {
    let mut urls = Vec::new();
    // only Ingresses and Services are copied into their types
    for doc in docs {
        match (doc.kind(), domain) {
            ("Ingress", _) => {
                if let Ok(ingress) = serde_json::from_value::<Ingress>(placed(doc, namespace)) {
                    urls.extend(ingress_urls(&ingress, https_port));
                }
            }
            ("Service", Some(domain)) => {
                if let Ok(service) = serde_json::from_value::<Service>(placed(doc, namespace)) {
                    urls.extend(service_urls(&service, Some(domain), https_port, &[]));
                }
            }
            _ => {}
        }
    }
    urls
}

/// The Ingresses that give `docs`' Services their names through the ingress (see
/// [`service_ingress`]), as documents of the same origin.
pub fn service_ingresses(
    docs: &[crate::manifests::Document],
    domain: &str,
    namespace: &str,
) -> Vec<crate::manifests::Document> {
    docs.iter()
        .filter(|doc| doc.kind() == "Service")
        .filter_map(|doc| {
            let service: Service = serde_json::from_value(placed(doc, namespace)).ok()?;
            let mut made = doc.clone();
            made.object = service_ingress(&service, domain)?;
            Some(made)
        })
        .collect()
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

/// What [`collect`] does, for the error of a failed call: it lists the Ingresses and
/// Services its URLs come from.
pub const COLLECT_ACTION: &str = "list the Ingresses and Services that give the URLs";

/// Every URL in the cluster's project namespaces (or only in `namespace`, with the shared
/// add-ons' when `shared_addons`): Ingress hosts, Service HTTP ports by name under `domain`
/// (where their sandbox-made Ingress exists), and the loopback `forwards`.
pub async fn collect(
    client: &kube::Client,
    namespace: Option<&str>,
    domain: Option<&str>,
    https_port: u16,
    shared_addons: bool,
    forwards: &[crate::forward::Forward],
) -> Result<Vec<Url>, kube::Error> {
    let ingresses: Api<Ingress> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let project =
        |ns: &Option<String>| !SYSTEM_NAMESPACES.contains(&ns.as_deref().unwrap_or_default());
    let mut urls = Vec::new();
    // the Services whose names through the ingress exist: (namespace, Service)
    let mut named = std::collections::BTreeSet::new();
    for ingress in ingresses.list(&ListParams::default()).await?.items {
        if !project(&ingress.metadata.namespace) {
            continue;
        }
        match ingress
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::URL_OF))
        {
            Some(service) => {
                named.insert((
                    ingress.metadata.namespace.clone().unwrap_or_default(),
                    service.clone(),
                ));
            }
            None => urls.extend(ingress_urls(&ingress, https_port)),
        }
    }
    // an environment also lists the add-ons' web UIs (maildev), which it shares
    if shared_addons && namespace.is_some_and(|ns| ns != crate::addons::NAMESPACE) {
        let addons: Api<Ingress> = Api::namespaced(client.clone(), crate::addons::NAMESPACE);
        for ingress in addons.list(&ListParams::default()).await?.items {
            urls.extend(ingress_urls(&ingress, https_port));
        }
    }
    if domain.is_some() || !forwards.is_empty() {
        for service in project_services(client, namespace).await? {
            let key = (
                service.metadata.namespace.clone().unwrap_or_default(),
                service.metadata.name.clone().unwrap_or_default(),
            );
            let domain = domain.filter(|_| named.contains(&key));
            urls.extend(service_urls(&service, domain, https_port, forwards));
        }
    }
    // the project's own first, the add-ons' (maildev) after
    urls.sort_by_key(|u| {
        u.name
            .starts_with(&format!("{}/", crate::addons::NAMESPACE))
    });
    Ok(urls)
}

/// The services of the cluster's project namespaces (or of `namespace`).
pub async fn project_services(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<Service>, kube::Error> {
    let services: Api<Service> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(services
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| {
            !SYSTEM_NAMESPACES.contains(&s.metadata.namespace.as_deref().unwrap_or_default())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn port(value: serde_json::Value) -> ServicePort {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn ports_are_routed_by_app_protocol_then_name_then_number() {
        use serde_json::json;
        let (http, tcp, tls) = (
            Route::Ingress,
            Route::Forward { tls: false },
            Route::Forward { tls: true },
        );
        for (written, routed) in [
            (json!({"port": 80}), http),
            (json!({"port": 8080, "name": "http-api"}), http),
            (json!({"port": 9000, "name": "web"}), http),
            (json!({"port": 5000, "name": "5000"}), http),
            (json!({"port": 9000, "appProtocol": "http"}), http),
            // a conventional HTTP number that its name or appProtocol says is something else
            (json!({"port": 80, "appProtocol": "postgresql"}), tcp),
            (json!({"port": 8080, "name": "metrics"}), tcp),
            (json!({"port": 443}), tls),
            (json!({"port": 9443, "name": "https-admin"}), tls),
            (json!({"port": 5432}), tcp),
            (json!({"port": 1025, "name": "smtp"}), tcp),
            (json!({"port": 53, "protocol": "UDP"}), Route::None),
        ] {
            assert_eq!(route(&port(written.clone())), routed, "{written}");
        }
    }

    #[test]
    fn exposed_ports_get_loopback_urls_only() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "NodePort", "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "admin", "port": 8080, "nodePort": 30081},
                {"name": "https", "port": 443, "nodePort": 30443},
                {"name": "db", "port": 5432, "nodePort": 30432},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}
        }));
        let forwards = crate::forward::allocate(
            &[],
            &crate::forward::wanted(std::slice::from_ref(&svc)),
            false,
            &[],
            &|p| p != 443,
            &mut || Ok(40000),
        )
        .unwrap();
        let urls = service_urls(&svc, Some("127.0.0.1.nip.io"), 8443, &forwards);
        let got: Vec<&str> = urls.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(
            got,
            [
                "https://web.shop.127.0.0.1.nip.io:8443/",
                "https://web-8080.shop.127.0.0.1.nip.io:8443/",
                "https://127.0.0.1:30443/",
                "tcp://127.0.0.1:5432",
            ]
        );
        assert!(urls
            .iter()
            .all(|u| u.name == "shop/web" && u.kind == "NodePort"));
        // the names through the ingress are checked against the sandbox's certificate
        assert!(urls[0].probe.tls && urls[0].probe.path == "/");
        // the Ingress that carries them
        let ingress = service_ingress(&svc, "127.0.0.1.nip.io").unwrap();
        assert_eq!(ingress["metadata"]["name"], "web-sandbox-url");
        assert_eq!(ingress["metadata"]["namespace"], "shop");
        assert_eq!(ingress["metadata"]["labels"][labels::URL_OF], "web");
        let rules = ingress["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["host"], "web-8080.shop.127.0.0.1.nip.io");
        assert_eq!(
            rules[1]["http"]["paths"][0]["backend"]["service"],
            serde_json::json!({"name": "web", "port": {"number": 8080}})
        );
        // a ClusterIP Service is not exposed
        let cluster_ip = service(serde_json::json!({
            "metadata": {"name": "db"}, "spec": {"ports": [{"port": 80}]}
        }));
        assert!(service_urls(&cluster_ip, Some("127.0.0.1.nip.io"), 443, &[]).is_empty());
        assert!(service_ingress(&cluster_ip, "127.0.0.1.nip.io").is_none());
    }

    #[test]
    fn planned_urls_and_their_variables() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web-app}\n\
            spec: {rules: [{host: app.127.0.0.1.nip.io}, {host: www.127.0.0.1.nip.io}]}\n---\n\
            apiVersion: v1\nkind: Service\nmetadata: {name: web-app}\n\
            spec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}\n---\n\
            apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: other}\n\
            spec: {type: LoadBalancer, ports: [{port: 80}]}\n---\n\
            apiVersion: v1\nkind: Service\nmetadata: {name: db}\n\
            spec: {type: NodePort, ports: [{port: 5432}]}\n";
        let docs = crate::manifests::parse(text, std::path::Path::new("all.yaml")).unwrap();
        let urls = planned(&docs, 8443, Some("127.0.0.1.nip.io"), "shop");
        let got: Vec<(&str, &str)> = urls
            .iter()
            .map(|u| (u.name.as_str(), u.url.as_str()))
            .collect();
        // the database's loopback port is known once applied
        assert_eq!(
            got,
            [
                ("shop/web-app", "https://app.127.0.0.1.nip.io:8443/"),
                ("shop/web-app", "https://www.127.0.0.1.nip.io:8443/"),
                (
                    "shop/web-app",
                    "https://web-app.shop.127.0.0.1.nip.io:8443/"
                ),
                ("other/api", "https://api.other.127.0.0.1.nip.io:8443/"),
            ]
        );
        let vars = variables(&urls);
        assert_eq!(
            vars.into_iter().collect::<Vec<_>>(),
            [
                (
                    "SANDBOX_URL_API".to_string(),
                    "https://api.other.127.0.0.1.nip.io:8443/".to_string()
                ),
                (
                    "SANDBOX_URL_WEB_APP".to_string(),
                    "https://app.127.0.0.1.nip.io:8443/".to_string()
                ),
            ]
        );
        // an existing cluster's (no domain of the sandbox's): only the Ingresses
        assert_eq!(planned(&docs, 443, None, "shop").len(), 2);
        // the Ingresses that carry the Services' names, in the Services' namespaces
        let made = service_ingresses(&docs, "127.0.0.1.nip.io", "shop");
        let names: Vec<(&str, &str)> = made
            .iter()
            .map(|d| {
                (
                    d.object["metadata"]["namespace"].as_str().unwrap(),
                    d.object["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("shop", "web-app-sandbox-url"),
                ("other", "api-sandbox-url")
            ]
        );
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
