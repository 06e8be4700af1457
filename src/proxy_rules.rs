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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;

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
        let mut words = rule.split_whitespace();
        let Some(chain) = words.next() else { continue };
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

/// `10.244.0.5:8080` → `10.244.0.5` (`[fd00::5]:8080` → `fd00::5`).
fn host(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    }
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

fn list(addresses: &BTreeSet<String>) -> String {
    if addresses.is_empty() {
        "no address".into()
    } else {
        addresses.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Waits until the node's rules send each of `services` (`(namespace, name)`, Services
/// with a cluster address that select pods) to the ready addresses of its Endpoints, up to
/// `budget`. Returns what still lagged when the budget ran out (empty: converged), or
/// `None` when the node's rules cannot be read (a node without `iptables-save`, a kube-proxy
/// in another mode): there is then nothing to wait on.
pub async fn wait_converged(
    engine: &crate::docker::Engine,
    node: &str,
    client: &kube::Client,
    services: &[(String, String)],
    budget: Duration,
    on_wait: &(dyn Fn(String) + Sync),
) -> Option<Vec<String>> {
    if services.is_empty() {
        return Some(Vec::new());
    }
    let started = Instant::now();
    let command: Vec<String> = RULES.iter().map(|s| s.to_string()).collect();
    loop {
        let (rules, wanted) = tokio::join!(engine.exec_simple(node, &command), async {
            let mut wanted = BTreeMap::new();
            for (namespace, name) in services {
                let api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
                let addresses = match api.get_opt(name).await {
                    Ok(Some(endpoints)) => ready_addresses(&endpoints),
                    _ => BTreeSet::new(),
                };
                wanted.insert(format!("{namespace}/{name}"), addresses);
            }
            wanted
        });
        let rules = match rules {
            Ok(out) if out.code == 0 && out.stdout.contains("KUBE-SERVICES") => {
                destinations(&out.stdout)
            }
            _ => return None,
        };
        let lag = lagging(&rules, &wanted);
        if lag.is_empty() || started.elapsed() >= budget {
            return Some(lag);
        }
        on_wait(format!("kube-proxy has not yet written {}", lag.join("; ")));
        tokio::time::sleep(RETRY).await;
    }
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
