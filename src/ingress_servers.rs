//! Whether sandbox's ingress controller (Traefik) sends each Ingress backend to the ready
//! pods of its Service. Traefik routes to the pod addresses of the Service's Endpoints
//! itself (not through kube-proxy), and loads a change of them up to its providers'
//! throttle (0.1 s, profiles/addons/ingress.yaml) after it sees it: until then a request
//! through the Ingress right after a rollout can still reach an old pod, which answers
//! with the old content while it terminates. `up` waits for it as it waits for
//! kube-proxy's rules ([`crate::proxy_rules`]).
//!
//! What Traefik routes to is read from its API (`--api.insecure`, on its internal
//! entry point `:9000`, reached through the API server's pod proxy): each service of its
//! Kubernetes Ingress provider is named `NAMESPACE-SERVICE-PORT@kubernetes` (PORT: the
//! backend's port name or number) and lists its servers' URLs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The port of Traefik's internal entry point (ping, API).
pub const API_PORT: u16 = 9000;

/// A backend of an Ingress: the Service's namespace and name, and Traefik's name for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// `namespace/name` of the Service.
    pub service: (String, String),
    /// Traefik's service name (`default-hello-80@kubernetes`).
    pub traefik: String,
}

/// Every Service backend of an Ingress (`networking.k8s.io/v1`, or the `v1beta1` shape
/// with `serviceName`/`servicePort`), default backend included.
pub fn backends(ingress: &Value) -> BTreeSet<Backend> {
    let namespace = ingress["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let spec = &ingress["spec"];
    let mut found = BTreeSet::new();
    let mut add = |backend: &Value| {
        let (name, port) = if backend["service"].is_object() {
            let port = &backend["service"]["port"];
            let port = match port["name"].as_str() {
                Some(name) if !name.is_empty() => name.to_string(),
                _ => port["number"]
                    .as_i64()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            };
            (backend["service"]["name"].as_str(), port)
        } else {
            let port = match &backend["servicePort"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            (backend["serviceName"].as_str(), port)
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            found.insert(Backend {
                service: (namespace.to_string(), name.to_string()),
                traefik: format!(
                    "{}@kubernetes",
                    normalize(&format!("{namespace}-{name}-{port}"))
                ),
            });
        }
    };
    for key in ["defaultBackend", "backend"] {
        if spec[key].is_object() {
            add(&spec[key]);
        }
    }
    for rule in spec["rules"].as_array().into_iter().flatten() {
        for path in rule["http"]["paths"].as_array().into_iter().flatten() {
            add(&path["backend"]);
        }
    }
    found
}

/// Traefik's `provider.Normalize`: every character but ASCII letters and digits becomes
/// `-`.
fn normalize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Traefik's `/api/http/services` answer → each service's name → its servers' hosts.
pub fn servers(services: &Value) -> BTreeMap<String, BTreeSet<String>> {
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s["name"].as_str()?.to_string();
            let hosts = s["loadBalancer"]["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|server| server["url"].as_str())
                .filter_map(url_host)
                .collect();
            Some((name, hosts))
        })
        .collect()
}

/// `http://10.244.0.5:8080` → `10.244.0.5` (`http://[fd00::5]:80` → `fd00::5`).
fn url_host(url: &str) -> Option<String> {
    let authority = url.split_once("://")?.1.split('/').next()?;
    Some(host(authority).to_string())
}

/// The backends whose servers in Traefik differ from the ready addresses of their
/// Service (`ready`: `namespace/name` → addresses), described. A backend Traefik has no
/// service for lags when its Service has ready pods (Traefik drops a service while its
/// Endpoints are empty, and its routes answer the controller's own 404 until it loads it
/// again: after a node was made again, the Endpoints go empty and come back after the
/// URL check may have passed); with none ready, it is the URL check's to wait for. One
/// Traefik sends to the Service's cluster address (`cluster_ips`; Traefik's `nativeLB`)
/// goes through kube-proxy's rules.
pub fn lagging(
    routed: &BTreeMap<String, BTreeSet<String>>,
    backends: &BTreeSet<Backend>,
    ready: &BTreeMap<String, BTreeSet<String>>,
    cluster_ips: &BTreeMap<String, String>,
) -> Vec<String> {
    let none = BTreeSet::new();
    backends
        .iter()
        .filter_map(|b| {
            let (namespace, name) = &b.service;
            let key = format!("{namespace}/{name}");
            let want = ready.get(&key).unwrap_or(&none);
            let Some(have) = routed.get(&b.traefik) else {
                return (!want.is_empty()).then(|| {
                    format!(
                        "{namespace}/{name} (the ingress controller has no route to its ready pods {})",
                        list(want)
                    )
                });
            };
            let native = cluster_ips
                .get(&key)
                .is_some_and(|ip| have.len() == 1 && have.contains(ip));
            (have != want && !native).then(|| {
                format!(
                    "{namespace}/{name} (the ingress controller sends to {}, its Endpoints list {})",
                    list(have),
                    list(want)
                )
            })
        })
        .collect()
}

/// `10.244.0.5:8080` → `10.244.0.5` (`[fd00::5]:8080` → `fd00::5`).
/// An address without a port is its own host (`[fd00::5]` → `fd00::5`).
pub(crate) fn host(address: &str) -> &str {
    match address.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => address.rsplit_once(':').map_or(address, |(host, _)| host),
    }
}

/// `10.244.0.5, 10.244.0.6`, or `no address`.
pub(crate) fn list(addresses: &BTreeSet<String>) -> String {
    if addresses.is_empty() {
        "no address".into()
    } else {
        addresses.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backends_of_both_ingress_shapes() {
        let v1 = json!({"metadata": {"namespace": "shop", "name": "web"}, "spec": {
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [{"host": "a.example", "http": {"paths": [
                {"path": "/", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/api", "backend": {"service": {"name": "api.v2", "port": {"name": "http"}}}},
                {"path": "/bucket", "backend": {"resource": {"kind": "StorageBucket", "name": "b"}}}]}}]}});
        let names: Vec<String> = backends(&v1).into_iter().map(|b| b.traefik).collect();
        assert_eq!(
            names,
            ["shop-api-v2-http@kubernetes", "shop-web-80@kubernetes"]
        );
        // an old tutorial's extensions/v1beta1 Ingress, no namespace
        let beta = json!({"metadata": {"name": "old"}, "spec": {"rules": [{"http": {"paths": [
            {"backend": {"serviceName": "guestbook", "servicePort": 3000}},
            {"backend": {"serviceName": "redis", "servicePort": "tcp"}}]}}]}});
        let found: Vec<Backend> = backends(&beta).into_iter().collect();
        assert_eq!(found[0].service, ("default".into(), "guestbook".into()));
        assert_eq!(found[0].traefik, "default-guestbook-3000@kubernetes");
        assert_eq!(found[1].traefik, "default-redis-tcp@kubernetes");
    }

    #[test]
    fn traefik_servers_are_compared_with_the_ready_addresses() {
        let api = json!([
            {"name": "default-hello-80@kubernetes", "provider": "kubernetes",
             "loadBalancer": {"servers": [{"url": "http://10.244.0.20:8080"}, {"url": "http://10.244.0.21:8080"}]}},
            {"name": "sandbox-routed@file", "provider": "file"},
            {"name": "v6-web-80@kubernetes", "loadBalancer": {"servers": [{"url": "http://[fd00::7]:80"}]}}
        ]);
        let routed = servers(&api);
        assert_eq!(
            routed["v6-web-80@kubernetes"],
            BTreeSet::from(["fd00::7".to_string()])
        );
        let hello = BTreeSet::from([Backend {
            service: ("default".into(), "hello".into()),
            traefik: "default-hello-80@kubernetes".into(),
        }]);
        let mut ready = BTreeMap::new();
        ready.insert(
            "default/hello".to_string(),
            BTreeSet::from(["10.244.0.21".to_string(), "10.244.0.22".to_string()]),
        );
        let no_ips = BTreeMap::new();
        assert_eq!(
            lagging(&routed, &hello, &ready, &no_ips),
            vec![
                "default/hello (the ingress controller sends to 10.244.0.20, 10.244.0.21, \
                  its Endpoints list 10.244.0.21, 10.244.0.22)"
                    .to_string()
            ]
        );
        ready.insert(
            "default/hello".to_string(),
            BTreeSet::from(["10.244.0.20".to_string(), "10.244.0.21".to_string()]),
        );
        assert!(lagging(&routed, &hello, &ready, &no_ips).is_empty());
        // a backend Traefik has not loaded: with no ready pod, the URL check's to wait for;
        // with ready pods, it lags
        let other = BTreeSet::from([Backend {
            service: ("default".into(), "new".into()),
            traefik: "default-new-80@kubernetes".into(),
        }]);
        assert!(lagging(&routed, &other, &ready, &no_ips).is_empty());
        ready.insert(
            "default/new".to_string(),
            BTreeSet::from(["10.244.0.30".to_string()]),
        );
        assert_eq!(
            lagging(&routed, &other, &ready, &no_ips),
            vec![
                "default/new (the ingress controller has no route to its ready pods 10.244.0.30)"
                    .to_string()
            ]
        );
        // Traefik's nativeLB: the Service's cluster address, kube-proxy's to route
        let native = json!([{"name": "default-hello-80@kubernetes",
            "loadBalancer": {"servers": [{"url": "http://10.96.0.44:80"}]}}]);
        let ips = BTreeMap::from([("default/hello".to_string(), "10.96.0.44".to_string())]);
        assert!(lagging(&servers(&native), &hello, &ready, &ips).is_empty());
    }
}
