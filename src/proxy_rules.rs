//! Whether the node's kube-proxy sends each Service where its Endpoints say. A rollout is
//! over for the API (the Deployment rolled out, its Endpoints list the new pods only) up to
//! a second before kube-proxy writes it into the node's rules: kube-proxy syncs at most
//! once per `--iptables-min-sync-period` (1 s), and a rollout changes the Endpoints several
//! times within one. Until then a node port or a cluster address still reaches the old
//! pods, which serve the old content while they terminate (or refuse the connection once
//! gone). `up` returns only once the rules match, so that the first request after it gets
//! the new pods.
//!
//! What the rules send a Service to is read from `iptables-save -t nat` in the node: each
//! `KUBE-SEP-*` chain holds one endpoint (`-j DNAT --to-destination IP:PORT`, with the
//! Service's `namespace/name:port` as its comment), and a Service's endpoints are the
//! `KUBE-SEP-*` chains its `KUBE-SVC-*` (or, for `externalTrafficPolicy: Local`,
//! `KUBE-SVL-*`/`KUBE-XLB-*`) chains jump to. A chain nothing jumps to any more is not
//! counted (kube-proxy may delete stale chains later than it rewires the Service's).
//!
//! [`wait_converged`] also waits for the ingress controller's own routes (see
//! [`crate::ingress_servers`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;

use crate::ingress_servers::{host, list};

/// The command that prints the node's NAT rules.
pub const RULES: [&str; 3] = ["iptables-save", "-t", "nat"];
/// Pause between two reads of the rules.
const RETRY: Duration = Duration::from_millis(50);

/// Each Service (`namespace/name`) the rules send traffic for → the pod addresses they
/// send it to.
pub fn destinations(iptables_save: &str) -> BTreeMap<String, BTreeSet<String>> {
    // KUBE-SEP chain → (service, address)
    let mut endpoints: HashMap<&str, (String, String)> = HashMap::new();
    let mut reached: BTreeSet<&str> = BTreeSet::new();
    for line in iptables_save.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let Some(chain) = rule.split_whitespace().next() else {
            continue;
        };
        let jump = word_after(rule, "-j");
        if chain.starts_with("KUBE-SEP-") {
            if jump == Some("DNAT") {
                if let (Some(service), Some(to)) =
                    (comment(rule), word_after(rule, "--to-destination"))
                {
                    endpoints.insert(chain, (service, host(to).to_string()));
                }
            }
        } else if let Some(target) = jump.filter(|j| j.starts_with("KUBE-SEP-")) {
            reached.insert(target);
        }
    }
    let mut by_service: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (chain, (service, address)) in endpoints {
        if reached.contains(chain) {
            by_service.entry(service).or_default().insert(address);
        }
    }
    by_service
}

/// The word after `flag` in `rule`.
fn word_after<'a>(rule: &'a str, flag: &str) -> Option<&'a str> {
    let mut words = rule.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next()
}

/// The Service of a rule's comment: `"default/hello:http"` (or, in later kube-proxies,
/// `"default/hello:http -> 10.244.0.5:8080"`) → `default/hello`.
fn comment(rule: &str) -> Option<String> {
    let start = rule.find("--comment ")? + "--comment ".len();
    let text = rule[start..].trim_start_matches('"');
    let text = text.split(['"', ' ']).next()?;
    let (namespace, name_port) = text.split_once('/')?;
    let name = name_port.split(':').next()?;
    Some(format!("{namespace}/{name}"))
}

/// Whether kube-proxy writes rules for `object`: a Service that selects pods and has a
/// cluster address (not headless).
pub fn proxied(object: &serde_json::Value) -> bool {
    crate::wait::selects_pods(object) && object["spec"]["clusterIP"] != "None"
}

/// The ready pod addresses of an Endpoints object.
pub fn ready_addresses(endpoints: &Endpoints) -> BTreeSet<String> {
    endpoints
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

/// The Services whose rules differ from their Endpoints, described: `default/hello (rules
/// send to 10.244.0.7, Endpoints list 10.244.0.9)`.
pub fn lagging(
    rules: &BTreeMap<String, BTreeSet<String>>,
    wanted: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let none = BTreeSet::new();
    wanted
        .iter()
        .filter_map(|(service, want)| {
            let have = rules.get(service).unwrap_or(&none);
            (have != want).then(|| {
                format!(
                    "{service} (rules send to {}, its Endpoints list {})",
                    list(have),
                    list(want)
                )
            })
        })
        .collect()
}

/// What [`wait_converged`] found when it stopped waiting.
#[derive(Debug, Default)]
pub struct Converged {
    /// What still differed when the budget ran out (empty: every path converged).
    pub lagging: Vec<String>,
    /// The paths that could not be read, and so were not waited on.
    pub unread: Vec<&'static str>,
}

/// Waits until the node's rules send each of `services` (`(namespace, name)`, Services
/// with a cluster address that select pods) to the ready addresses of its Endpoints, and
/// the ingress controller sends each backend of `ingresses` to those of its Service, up
/// to `budget`. A path that cannot be read (a node without `iptables-save`, a kube-proxy
/// in another mode, an ingress controller whose API does not answer) is not waited on.
pub async fn wait_converged(
    engine: &crate::docker::Engine,
    node: &str,
    client: &kube::Client,
    services: &[(String, String)],
    ingresses: &[serde_json::Value],
    budget: Duration,
    on_wait: &(dyn Fn(String) + Sync),
) -> Converged {
    let backends: BTreeSet<crate::ingress_servers::Backend> = ingresses
        .iter()
        .flat_map(crate::ingress_servers::backends)
        .collect();
    let mut converged = Converged::default();
    let (mut rules_read, mut ingress_read) = (!services.is_empty(), !backends.is_empty());
    let mut all: BTreeSet<(String, String)> = services.iter().cloned().collect();
    all.extend(backends.iter().map(|b| b.service.clone()));
    let started = Instant::now();
    let command: Vec<String> = RULES.iter().map(|s| s.to_string()).collect();
    while rules_read || ingress_read {
        let (rules, routed, ready) = tokio::join!(
            async {
                if !rules_read {
                    return None;
                }
                read_rules(engine, node, &command).await
            },
            async {
                if ingress_read {
                    ingress_servers(client).await
                } else {
                    None
                }
            },
            ready_of(client, &all)
        );
        let mut lag = Vec::new();
        match rules {
            Some(rules) => lag.extend(kube_proxy_lag(&rules, services, &ready.addresses)),
            None if rules_read => {
                rules_read = false;
                converged
                    .unread
                    .push("the node's Service rules (iptables-save)");
            }
            None => {}
        }
        match routed {
            Some(routed) => lag.extend(crate::ingress_servers::lagging(
                &routed,
                &backends,
                &ready.addresses,
                &ready.cluster_ips,
            )),
            None if ingress_read => {
                ingress_read = false;
                converged
                    .unread
                    .push("the ingress controller's routes (its API)");
            }
            None => {}
        }
        if lag.is_empty() || started.elapsed() >= budget {
            converged.lagging = lag;
            break;
        }
        on_wait(format!("not yet sent to the new pods: {}", lag.join("; ")));
        tokio::time::sleep(RETRY).await;
    }
    converged
}

/// What the node's rules send each Service to (see [`destinations`]); `None` when they
/// cannot be read: `iptables-save` failed, or its NAT table has no kube-proxy chains (a
/// node without it, or a kube-proxy in another mode).
async fn read_rules(
    engine: &crate::docker::Engine,
    node: &str,
    command: &[String],
) -> Option<BTreeMap<String, BTreeSet<String>>> {
    match engine.exec_simple(node, command).await {
        Ok(out) if out.code == 0 && out.stdout.contains("KUBE-SERVICES") => {
            Some(destinations(&out.stdout))
        }
        _ => None,
    }
}

/// The Services among `services` (`(namespace, name)`) whose `rules` differ from the
/// ready addresses of their Endpoints (`ready`: `namespace/name` → addresses; a Service
/// without any wants none), described and marked as kube-proxy's (see [`lagging`]).
fn kube_proxy_lag(
    rules: &BTreeMap<String, BTreeSet<String>>,
    services: &[(String, String)],
    ready: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let wanted = services
        .iter()
        .map(|(ns, name)| {
            let key = format!("{ns}/{name}");
            let addresses = ready.get(&key).cloned().unwrap_or_default();
            (key, addresses)
        })
        .collect();
    lagging(rules, &wanted)
        .into_iter()
        .map(|l| format!("kube-proxy: {l}"))
        .collect()
}

/// The ready addresses and cluster address of each Service.
#[derive(Default)]
struct Ready {
    /// `namespace/name` → ready addresses of its Endpoints.
    addresses: BTreeMap<String, BTreeSet<String>>,
    /// `namespace/name` → its cluster address.
    cluster_ips: BTreeMap<String, String>,
}

async fn ready_of(client: &kube::Client, services: &BTreeSet<(String, String)>) -> Ready {
    let reads = services.iter().map(|(namespace, name)| async move {
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
        let service: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client.clone(), namespace);
        let (endpoints, service) = tokio::join!(endpoints.get_opt(name), service.get_opt(name));
        let addresses = match endpoints {
            Ok(Some(e)) => ready_addresses(&e),
            _ => BTreeSet::new(),
        };
        let cluster_ip = service
            .ok()
            .flatten()
            .and_then(|s| s.spec?.cluster_ip)
            .filter(|ip| ip != "None");
        (format!("{namespace}/{name}"), addresses, cluster_ip)
    });
    let mut ready = Ready::default();
    for (key, addresses, cluster_ip) in futures_util::future::join_all(reads).await {
        if let Some(ip) = cluster_ip {
            ready.cluster_ips.insert(key.clone(), ip);
        }
        ready.addresses.insert(key, addresses);
    }
    ready
}

/// The servers of each service of sandbox's ingress controller, read from its API
/// through the API server's pod proxy; `None` when no ready controller pod answers.
async fn ingress_servers(client: &kube::Client) -> Option<BTreeMap<String, BTreeSet<String>>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), crate::addons::NAMESPACE);
    let params = kube::api::ListParams::default().labels("app.kubernetes.io/name=traefik");
    let listed = pods.list(&params).await.ok()?;
    let pod = listed.items.into_iter().find(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })?;
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy/api/http/services",
        crate::addons::NAMESPACE,
        pod.metadata.name?,
        crate::ingress_servers::API_PORT
    );
    let request = http::Request::get(path).body(Vec::new()).ok()?;
    let text = client.request_text(request).await.ok()?;
    let services: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(crate::ingress_servers::servers(&services))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-save -t nat` of kube-proxy 1.20 in the middle of a rollout: the Service's
    /// chain jumps to the new pod (10.244.0.21) and the old one (10.244.0.20); the chain of
    /// a pod already gone (10.244.0.19) is still there, but nothing jumps to it.
    const ROLLING: &str = r#"*nat
:KUBE-SEP-IKQMWQQVH2B4MEHG - [0:0]
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/hello:http" -m tcp --dport 30638 -j KUBE-SVC-BMS7TTZGRMITTABD
-A KUBE-SEP-IKQMWQQVH2B4MEHG -s 10.244.0.21/32 -m comment --comment "default/hello:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-IKQMWQQVH2B4MEHG -p tcp -m comment --comment "default/hello:http" -m tcp -j DNAT --to-destination 10.244.0.21:8080
-A KUBE-SEP-TKWV2XUSXTLTJMJ5 -p tcp -m comment --comment "default/hello:http" -m tcp -j DNAT --to-destination 10.244.0.20:8080
-A KUBE-SEP-OLDOLDOLDOLDOLDO -p tcp -m comment --comment "default/hello:http" -m tcp -j DNAT --to-destination 10.244.0.19:8080
-A KUBE-SEP-EN7EJ3GMT5VRW7BZ -p tcp -m comment --comment "sandbox-system/maildev:smtp" -m tcp -j DNAT --to-destination 10.244.0.2:1025
-A KUBE-SEP-PS2VEUY3KHZ6XQUA -p tcp -m comment --comment "sandbox-system/maildev:web" -m tcp -j DNAT --to-destination 10.244.0.2:1080
-A KUBE-SERVICES -d 10.96.141.7/32 -p tcp -m comment --comment "default/hello:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-BMS7TTZGRMITTABD
-A KUBE-SVC-BMS7TTZGRMITTABD -m comment --comment "default/hello:http" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-IKQMWQQVH2B4MEHG
-A KUBE-SVC-BMS7TTZGRMITTABD -m comment --comment "default/hello:http" -j KUBE-SEP-TKWV2XUSXTLTJMJ5
-A KUBE-SVC-J4XINL4FCWG46T3R -m comment --comment "sandbox-system/maildev:smtp" -j KUBE-SEP-EN7EJ3GMT5VRW7BZ
-A KUBE-SVC-TNN4R6VRAB5G4CWQ -m comment --comment "sandbox-system/maildev:web" -j KUBE-SEP-PS2VEUY3KHZ6XQUA
COMMIT
"#;

    #[test]
    fn a_services_destinations_are_the_endpoint_chains_it_jumps_to() {
        let rules = destinations(ROLLING);
        assert_eq!(
            rules["default/hello"],
            BTreeSet::from(["10.244.0.20".to_string(), "10.244.0.21".to_string()])
        );
        // both ports of maildev, one pod
        assert_eq!(
            rules["sandbox-system/maildev"],
            BTreeSet::from(["10.244.0.2".to_string()])
        );
        assert_eq!(rules.len(), 2);
    }

    #[test]
    fn later_kube_proxies_comments_and_local_policy_chains_are_read() {
        // kube-proxy 1.31 (k3s): the jump's comment names the endpoint too; a Service with
        // externalTrafficPolicy: Local jumps from its KUBE-SVL chain
        let text = r#"-A KUBE-SEP-AAAA -p tcp -m comment --comment "web/api:http" -m tcp -j DNAT --to-destination 10.42.0.9:3000
-A KUBE-SVC-BBBB -m comment --comment "web/api:http -> 10.42.0.9:3000" -j KUBE-SEP-AAAA
-A KUBE-SEP-CCCC -p tcp -m comment --comment "web/edge" -m tcp -j DNAT --to-destination [fd00::7]:80
-A KUBE-SVL-DDDD -m comment --comment "web/edge -> [fd00::7]:80" -j KUBE-SEP-CCCC
"#;
        let rules = destinations(text);
        assert_eq!(rules["web/api"], BTreeSet::from(["10.42.0.9".to_string()]));
        assert_eq!(rules["web/edge"], BTreeSet::from(["fd00::7".to_string()]));
    }

    #[test]
    fn kube_proxy_lags_where_its_rules_are_not_the_ready_addresses() {
        let rules = destinations(ROLLING);
        let services = [
            ("default".to_string(), "hello".to_string()),
            ("sandbox-system".to_string(), "maildev".to_string()),
            // no rules and no ready address: nothing to wait for
            ("default".to_string(), "idle".to_string()),
        ];
        let ready = BTreeMap::from([
            (
                "default/hello".to_string(),
                BTreeSet::from(["10.244.0.21".to_string()]),
            ),
            (
                "sandbox-system/maildev".to_string(),
                BTreeSet::from(["10.244.0.2".to_string()]),
            ),
        ]);
        let lag = kube_proxy_lag(&rules, &services, &ready);
        assert_eq!(lag.len(), 1, "{lag:?}");
        assert!(
            lag[0].starts_with("kube-proxy: default/hello (rules send to"),
            "{lag:?}"
        );
    }

    #[test]
    fn hosts_of_addresses_with_and_without_ports() {
        assert_eq!(host("10.244.0.5:8080"), "10.244.0.5");
        assert_eq!(host("10.244.0.5"), "10.244.0.5");
        assert_eq!(host("[fd00::5]:8080"), "fd00::5");
        assert_eq!(host("[fd00::5]"), "fd00::5");
    }

    #[test]
    fn headless_and_selectorless_services_have_no_rules() {
        let service =
            |spec: serde_json::Value| serde_json::json!({"kind": "Service", "spec": spec});
        assert!(proxied(&service(
            serde_json::json!({"selector": {"app": "web"}, "clusterIP": "10.96.0.9"})
        )));
        assert!(!proxied(&service(
            serde_json::json!({"selector": {"app": "web"}, "clusterIP": "None"})
        )));
        assert!(!proxied(&service(
            serde_json::json!({"clusterIP": "10.96.0.9"})
        )));
        assert!(!proxied(
            &serde_json::json!({"kind": "Deployment", "spec": {"selector": {"matchLabels": {"app": "web"}}}})
        ));
    }

    #[test]
    fn rules_lag_until_they_send_exactly_to_the_ready_addresses() {
        let rules = destinations(ROLLING);
        let mut wanted = BTreeMap::new();
        wanted.insert(
            "default/hello".to_string(),
            BTreeSet::from(["10.244.0.21".to_string(), "10.244.0.22".to_string()]),
        );
        wanted.insert(
            "sandbox-system/maildev".to_string(),
            BTreeSet::from(["10.244.0.2".to_string()]),
        );
        assert_eq!(
            lagging(&rules, &wanted),
            vec![
                "default/hello (rules send to 10.244.0.20, 10.244.0.21, its Endpoints list \
                  10.244.0.21, 10.244.0.22)"
                    .to_string()
            ]
        );
        wanted.insert(
            "default/hello".to_string(),
            BTreeSet::from(["10.244.0.20".to_string(), "10.244.0.21".to_string()]),
        );
        assert!(lagging(&rules, &wanted).is_empty());
        // a Service with no ready pod: no endpoint chain either
        wanted.insert("default/idle".to_string(), BTreeSet::new());
        assert!(lagging(&rules, &wanted).is_empty());
    }
}
