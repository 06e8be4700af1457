//! The `-o json` documents against their published schema,
//! `schema/output.v1alpha1.schema.json`: every command's document, made by the code that
//! prints it from realistic values, validates; a broken one does not.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use crate::apply::{Applied, InventoryEntry};
use crate::config::SandboxConfig;
use crate::docker::NodeInfo;
use crate::error::Error;
use crate::images::BuiltImage;
use crate::plan::HostPorts;
use crate::trust::{Action, Exports, Plan, StoreOutcome, StoreReport};
use crate::urls::Url;

#[path = "../../tests/integration/output_schema.rs"]
mod shared;
use shared::{violations, SCHEMA};

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("the schema is JSON")
}

fn node_info(name: &str, state: &str, ports: &[(u16, u16)]) -> NodeInfo {
    NodeInfo {
        id: format!("{name}-id"),
        name: format!("sandbox-{name}-node"),
        sandbox: name.to_string(),
        profile: "offline".to_string(),
        security: "privileged".to_string(),
        image: "sandbox-offline/node:v1.20.2".to_string(),
        state: state.to_string(),
        ports: ports.iter().copied().collect::<HashMap<_, _>>(),
        dns_owner: None,
    }
}

fn applied() -> Vec<Applied> {
    vec![
        Applied {
            document: "k8s/hello.yaml#0".to_string(),
            resource: ApiResource::erase::<Deployment>(&()),
            namespace: Some("default".to_string()),
            name: "hello".to_string(),
            object: json!({}),
            changed: true,
        },
        Applied {
            document: "k8s/namespace.yaml#0".to_string(),
            resource: ApiResource::erase::<Namespace>(&()),
            namespace: None,
            name: "hello".to_string(),
            object: json!({}),
            changed: false,
        },
    ]
}

fn pruned() -> Vec<InventoryEntry> {
    vec![
        InventoryEntry {
            api_version: "apps/v1".to_string(),
            kind: "Deployment".to_string(),
            namespace: Some("default".to_string()),
            name: "old".to_string(),
        },
        InventoryEntry {
            api_version: "v1".to_string(),
            kind: "Namespace".to_string(),
            namespace: None,
            name: "old".to_string(),
        },
    ]
}

fn built() -> Vec<BuiltImage> {
    vec![BuiltImage {
        name: "hello".to_string(),
        reference: "hello:sandbox-0123456789ab".to_string(),
        id: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string(),
        inputs: None,
    }]
}

fn urls() -> Vec<Url> {
    vec![
        Url {
            probe: Default::default(),
            name: "default/hello".to_string(),
            kind: "NodePort".to_string(),
            url: "http://172.18.0.2:31234/".to_string(),
        },
        Url {
            probe: Default::default(),
            name: "sandbox-system/maildev".to_string(),
            kind: "Ingress".to_string(),
            url: "https://maildev.127.0.0.1.nip.io:8443/".to_string(),
        },
    ]
}

/// `up`'s outcome: `config` and everything else as a real run leaves it, but no DNS server
/// and no node address for the built-in default.
async fn up_outcome(config: SandboxConfig) -> crate::up::Outcome {
    let default = config.source.is_none();
    let name = config.name.clone();
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:40123".parse().unwrap()))
            .expect("a client (it connects only when asked)");
    let node = crate::node::Node {
        info: node_info(&name, "running", &[(6443, 40123), (80, 80), (443, 443)]),
        profile: crate::profile::Profile::named("offline").unwrap(),
        ports: HostPorts {
            api: 40123,
            http: 80,
            https: 443,
        },
        ip: (!default).then(|| "172.18.0.2".to_string()),
        kubeconfig: serde_yaml::Value::Null,
        client,
        created: !default,
        fresh: !default,
        started: None,
    };
    crate::up::Outcome {
        config,
        node,
        kubeconfig: "/home/me/.kube/config".into(),
        built: if default { Vec::new() } else { built() },
        loaded: vec!["hello:sandbox-0123456789ab".to_string()],
        applied: if default { Vec::new() } else { applied() },
        pruned: if default { Vec::new() } else { pruned() },
        urls: urls(),
        dns: (!default).then(|| "127.0.0.1:15353".parse().unwrap()),
        unchanged: false,
        seconds: 21.43,
        timings: Default::default(),
    }
}

/// One document or more of every kind, each made by the function its command prints with.
async fn documents() -> Vec<Value> {
    let project = SandboxConfig::parse(
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nname: hello\n",
        Path::new("/home/me/hello/sandbox.yaml"),
    )
    .unwrap();
    let project_config = project.clone();
    let default = SandboxConfig::builtin_default("/home/me".into());
    let loaded = ["hello:sandbox-0123456789ab".to_string()];
    let mut documents = vec![
        up_outcome(project).await.json(),
        up_outcome(default).await.json(),
        cluster_up_result(&project_config, &loaded),
        super::apply::result_json("hello", &loaded, &applied(), &pruned(), 12.34),
        super::apply::result_json("hello", &[], &[], &[], 0.04),
        urls_result(),
    ];
    documents.extend(down_results());
    documents.extend(status_results());
    documents.push(cluster_status_result(&project_config));
    documents.extend([
        super::build::result_json("hello", &built(), &loaded),
        super::load::result_json("hello", &["web:1".to_string(), loaded[0].clone()], &loaded),
    ]);
    documents.extend(trust_results());
    documents.extend(dns_setups());
    documents.extend(errors());
    documents
}

/// `ClusterUpResult` of environment `feature-a` of `config`, with images built and
/// `loaded` pushed, objects applied and pruned.
fn cluster_up_result(config: &SandboxConfig, loaded: &[String]) -> Value {
    super::cluster::result_json(
        config,
        "sandbox-shared",
        "feature-a",
        &super::target::Applying {
            built: built(),
            delivered: loaded.to_vec(),
            applied: applied(),
            pruned: pruned(),
            urls: urls(),
            unchanged: false,
        },
        3.21,
    )
}

/// `UrlsResult` of sandbox `hello`, reached on its own API port.
fn urls_result() -> Value {
    super::urls::result_json(
        "hello",
        &super::target::Access {
            kubeconfig: serde_yaml::Value::Null,
            context: "sandbox-hello".into(),
            server: "https://127.0.0.1:40123".into(),
        },
        &urls(),
    )
}

/// `DownResult` in its three forms: a sandbox removed with everything it had, one that
/// did not exist, and an environment removed with its namespace.
fn down_results() -> [Value; 3] {
    let removed = crate::node::Removed {
        containers: vec!["sandbox-hello-node".to_string()],
        networks: vec!["sandbox-hello".to_string()],
        volumes: vec!["sandbox-hello-data".to_string()],
        context: true,
    };
    [
        super::down::result_json("hello", true, &removed, true),
        super::down::result_json("absent", false, &crate::node::Removed::default(), false),
        super::down::environment_result_json("hello", "feature-a", true),
    ]
}

/// `StatusResult` with a sandbox of each state (running with add-ons and an environment,
/// stopped, of a profile this build does not know) and the DNS server, then one of none.
fn status_results() -> [Value; 2] {
    let dns_record = crate::dns_daemon::DaemonRecord {
        pid: 4242,
        address: "127.0.0.1:15353".parse().unwrap(),
    };
    let ports = |api, http, https| HostPorts { api, http, https };
    let rows = vec![
        super::status::row_json(
            &node_info("hello", "running", &[(6443, 40123), (80, 80), (443, 443)]),
            Some(ports(40123, 80, 443)),
            "ready",
            &["feature-a".to_string()],
            &[
                (
                    "maildev".to_string(),
                    "Deployment sandbox-system/maildev: 0 of 1 replicas available".to_string(),
                ),
                ("traefik".to_string(), "ready".to_string()),
            ],
        ),
        super::status::row_json(
            &node_info("stopped", "exited", &[]),
            Some(ports(0, 0, 0)),
            "stopped",
            &[],
            &[],
        ),
        super::status::row_json(
            &node_info("future", "running", &[]),
            None,
            "unknown profile future",
            &[],
            &[],
        ),
    ];
    [
        super::status::result_json(rows, Some(&dns_record)),
        super::status::result_json(Vec::new(), None),
    ]
}

/// `ClusterStatusResult` of `config` on a ready API: an environment with a workload and
/// its Lease held, one with neither.
fn cluster_status_result(config: &SandboxConfig) -> Value {
    super::cluster::status_json(
        config,
        "team-shared",
        "https://team.example.com:6443",
        "ready",
        &[
            (
                "pr-7".to_string(),
                vec![("hello".to_string(), "ready".to_string())],
                Some("ci-2/77".to_string()),
            ),
            ("pr-8".to_string(), Vec::new(), None),
        ],
    )
}

/// `TrustResult` of an install into stores of each outcome and of an uninstall, then
/// `TrustExports` with and without the system bundle.
fn trust_results() -> [Value; 4] {
    let plan = Plan {
        nickname: "sandbox-ca-me".into(),
        ca_path: "/home/me/.local/share/sandbox/ca/ca.crt".into(),
        ca_pem: None,
        common_name: None,
        stores: Vec::new(),
        skipped: Vec::new(),
    };
    let report = |label: &str, location: Option<&str>, outcome| StoreReport {
        label: label.to_string(),
        location: location.map(Into::into),
        outcome,
    };
    let reports = [
        report(
            "system (debian)",
            Some("/usr/local/share/ca-certificates/sandbox-ca-me.crt"),
            StoreOutcome::Installed,
        ),
        report(
            "nss (chromium)",
            Some("/home/me/.pki/nssdb"),
            StoreOutcome::AlreadyPresent,
        ),
        report(
            "nss (firefox)",
            None,
            StoreOutcome::Skipped("certutil not found".into()),
        ),
    ];
    let exports = |system_bundle: Option<&str>| Exports {
        ca_cert: "/home/me/.local/share/sandbox/ca/ca.crt".into(),
        bundle: "/home/me/.local/share/sandbox/ca/bundle.crt".into(),
        system_bundle: system_bundle.map(Into::into),
    };
    [
        super::trust::result_json(Action::Install, &plan, &reports),
        super::trust::result_json(Action::Uninstall, &plan, &[]),
        super::trust::exports_json(&exports(Some("/etc/ssl/certs/ca-certificates.crt"))),
        super::trust::exports_json(&exports(None)),
    ]
}

/// `DnsSetup` of the resolver hook on Linux and on macOS.
fn dns_setups() -> [Value; 2] {
    let server = "127.0.0.1:15353".parse().unwrap();
    let (linux_files, linux_reload) = super::dns::resolver_hook("linux", server);
    let (macos_files, macos_reload) = super::dns::resolver_hook("macos", server);
    [
        super::dns::setup_json(server, &linux_files, linux_reload.as_deref()),
        super::dns::setup_json(server, &macos_files, macos_reload.as_deref()),
    ]
}

/// `Error` documents: a missing sandbox, workloads not ready, and no container engine
/// reachable (with what was tried).
fn errors() -> [Value; 3] {
    let not_ready = crate::wait::WaitError::NotReady {
        summary: "1 workload not ready after 5m".to_string(),
        details: "Deployment default/hello: 0 of 1 replicas available".to_string(),
    };
    let no_engine = crate::docker::DockerError::Connect {
        tried: vec![crate::docker::Attempt {
            host: "unix:///var/run/docker.sock".to_string(),
            origin: crate::docker::Origin::Default { chosen_by: None },
            error: "Socket not found: /var/run/docker.sock".to_string(),
        }],
        source: Some(bollard::errors::Error::SocketNotFoundError(
            "/var/run/docker.sock".to_string(),
        )),
    };
    [
        Error::NotFound("hello".to_string()).json(),
        Error::from(not_ready).json(),
        Error::from(no_engine).json(),
    ]
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the schema is not a valid schema: {e}");
    }
    jsonschema::draft202012::new(&schema).expect("the schema compiles");
    // every kind is listed, has its definition and is one branch of the oneOf
    let kinds: BTreeSet<&str> = schema["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let branches: BTreeSet<&str> = schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["$ref"].as_str().unwrap().trim_start_matches("#/$defs/"))
        .collect();
    assert_eq!(kinds, branches);
    for kind in kinds {
        let def = &schema["$defs"][kind];
        assert_eq!(def["properties"]["kind"]["const"], kind);
        assert!(def["description"].is_string(), "{kind} has no description");
        let required = def["required"].as_array().unwrap();
        assert!(required.contains(&json!("apiVersion")) && required.contains(&json!("kind")));
    }
}

#[tokio::test]
async fn every_document_validates_against_the_schema() {
    let documents = documents().await;
    for doc in &documents {
        let found = violations(doc);
        assert!(found.is_empty(), "{}\n{doc:#}", found.join("\n"));
    }
    // and every kind of the schema was among them
    let schema = schema();
    let printed: BTreeSet<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    let kinds: BTreeSet<&str> = schema["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(printed, kinds);
}

#[tokio::test]
async fn documents_that_break_the_schema_are_rejected() {
    let documents = documents().await;
    let up = documents.iter().find(|d| d["kind"] == "UpResult").unwrap();
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut doc = up.clone();
        edit(&mut doc);
        violations(&doc)
    };
    let missing = broken(&|d| {
        d.as_object_mut().unwrap().remove("elapsedSeconds");
    });
    assert!(
        missing.iter().any(|v| v.contains("elapsedSeconds")),
        "{missing:?}"
    );
    assert!(!broken(&|d| d["node"]["created"] = json!("yes")).is_empty());
    assert!(!broken(&|d| d["urls"][0]["kind"] = json!("ClusterIP")).is_empty());
    assert!(!broken(&|d| d["apiVersion"] = json!("sandbox.dev/v1")).is_empty());
    assert!(!broken(&|d| d["kind"] = json!("Unknown")).is_empty());
    // the other form of DownResult: an environment's removal says whether its namespace went
    let mut environment = documents
        .iter()
        .find(|d| d["kind"] == "DownResult" && d["environment"].is_string())
        .unwrap()
        .clone();
    environment["removed"] = json!({"containers": []});
    assert!(!violations(&environment).is_empty());
    // fields added within the version do not break consumers
    assert!(broken(&|d| d["node"]["added"] = json!(1)).is_empty());
}
