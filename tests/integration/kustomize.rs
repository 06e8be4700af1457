//! Manifests as people write them for kubectl, on one node: a kustomize overlay rendered,
//! applied, waited for and rolled by what changed; a missing kustomize failing before
//! anything is applied; and the list-map keys that the node's server-side apply needs
//! written out, read from its OpenAPI, are exactly those sandbox fills.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{assert_success, json_document, serves, TestSandbox};

/// `(kind, name, changed)` of every object of an `UpResult`.
fn objects(up: &Value) -> Vec<(String, String, bool)> {
    up["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {up}"))
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_string(),
                o["name"].as_str().unwrap().to_string(),
                o["changed"] == true,
            )
        })
        .collect()
}

#[test]
fn kustomize_overlay_applies_rolls_only_what_changed_and_needs_a_renderer() {
    let sb = TestSandbox::new("kustomize");
    let (file, project) = sb.fixture("kustomize");
    let file = file.as_str();

    let up = sb.run_json(&["up", "-f", file, "-v"]);
    let first = objects(&up);
    // the overlay's names: prefix, and the generated ConfigMap's content hash
    let config_map = first
        .iter()
        .find(|(k, n, _)| k == "ConfigMap" && n.starts_with("dev-web-config-"))
        .unwrap_or_else(|| panic!("no generated ConfigMap in {first:?}"))
        .1
        .clone();
    for (kind, name) in [
        ("Deployment", "dev-web"),
        ("Deployment", "dev-api"),
        ("Service", "dev-web"),
        ("Service", "dev-api"),
    ] {
        assert!(
            first.iter().any(|(k, n, _)| k == kind && n == name),
            "{kind} {name} missing from {first:?}"
        );
    }
    // the patch (2 replicas) and the rewritten image (newTag replaced by sandbox's tag)
    let deploy = sb.kubectl(&[
        "get",
        "deploy",
        "dev-web",
        "-o",
        "jsonpath={.status.readyReplicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].imagePullPolicy}",
    ]);
    let deploy = String::from_utf8_lossy(&deploy.stdout).to_string();
    let reference = up["images"][0]["reference"].as_str().unwrap();
    assert_eq!(deploy, format!("2 {reference} Never"));
    let url = up["urls"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(up["urls"][0]["name"], "default/dev-web", "{up}");
    let greeting = format!("{url}cgi-bin/greeting");
    serves(&greeting, "web hello from the dev overlay");

    let again = sb.run_json(&["up", "-f", file]);
    assert_eq!(again["unchanged"], true, "the second up: {again}");
    crate::support::assert_nothing_changed(&again, "the second up");

    // a new literal in the overlay: a new ConfigMap (the old one pruned), dev-web rolls,
    // nothing else changes
    let overlay = project.join("k8s/overlays/dev/kustomization.yaml");
    let text = std::fs::read_to_string(&overlay).unwrap();
    std::fs::write(
        &overlay,
        text.replace("hello from the dev overlay", "hello from a new overlay"),
    )
    .unwrap();
    let changed = sb.run_json(&["up", "-f", file]);
    let rolled: BTreeSet<(String, String)> = objects(&changed)
        .into_iter()
        .filter(|(_, _, c)| *c)
        .map(|(k, n, _)| (k, n))
        .collect();
    let new_map = rolled
        .iter()
        .find(|(k, _)| k == "ConfigMap")
        .unwrap_or_else(|| panic!("no new ConfigMap in {changed}"))
        .1
        .clone();
    assert_ne!(new_map, config_map);
    assert_eq!(
        rolled,
        BTreeSet::from([
            ("ConfigMap".to_string(), new_map),
            ("Deployment".to_string(), "dev-web".to_string())
        ]),
        "only the generated ConfigMap and its Deployment change: {changed}"
    );
    assert_eq!(
        changed["pruned"],
        serde_json::json!([{"kind": "ConfigMap", "namespace": "default", "name": config_map}])
    );
    serves(&greeting, "web hello from a new overlay");

    // no renderer on PATH: exit 2 before anything is applied, with a hint
    std::fs::write(
        &overlay,
        text.replace("hello from the dev overlay", "not applied"),
    )
    .unwrap();
    let empty = sb.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = sb
        .command(&["up", "-f", file, "-o", "json"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let error = json_document(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("k8s/overlays/dev holds a kustomization, but neither `kustomize` nor `kubectl` is on PATH"),
        "{message}"
    );
    assert!(
        error["hint"].as_str().unwrap().contains("kustomize"),
        "{error}"
    );
    serves(&greeting, "web hello from a new overlay");

    list_keys_the_server_needs_are_those_sandbox_fills(&sb);
}

/// Lists of the node's OpenAPI that server-side apply treats as maps (`x-kubernetes-list-
/// map-keys`, or a merge patch key) with a key their items do not require: before 1.21, an
/// entry omitting it is rejected. Those the server defaults must be exactly
/// `DEFAULTED_LIST_KEYS`; the others have no default (the user must write them, or they
/// are status, which sandbox drops).
fn list_keys_the_server_needs_are_those_sandbox_fills(sb: &TestSandbox) {
    let out = sb.kubectl(&["get", "--raw", "/openapi/v2"]);
    assert_success(&out, "kubectl get --raw /openapi/v2");
    let openapi: Value = serde_json::from_slice(&out.stdout).unwrap();
    let definitions = openapi["definitions"].as_object().unwrap();
    let mut optional = BTreeSet::new();
    for definition in definitions.values() {
        let Some(properties) = definition["properties"].as_object() else {
            continue;
        };
        for property in properties.values() {
            if property["type"] != "array" {
                continue;
            }
            let keys: Vec<&str> = match (
                property["x-kubernetes-list-map-keys"].as_array(),
                property["x-kubernetes-patch-merge-key"].as_str(),
            ) {
                (Some(keys), _) => keys.iter().filter_map(Value::as_str).collect(),
                (None, Some(key))
                    if property["x-kubernetes-patch-strategy"]
                        .as_str()
                        .is_some_and(|s| s.contains("merge")) =>
                {
                    vec![key]
                }
                _ => continue,
            };
            let item = property["items"]["$ref"]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_default();
            let required: Vec<&str> = definitions
                .get(item)
                .and_then(|d| d["required"].as_array())
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for key in keys {
                if !required.contains(&key) {
                    optional.insert((item.to_string(), key.to_string()));
                }
            }
        }
    }
    let filled: BTreeSet<(String, String)> = sandbox::normalize::DEFAULTED_LIST_KEYS
        .iter()
        .map(|(item, key, _)| (item.to_string(), key.to_string()))
        .collect();
    // no server default: a pod's host alias and pull secret, an account's secret (dropped
    // from dumps), and status lists (dropped)
    let undefaulted: BTreeSet<(String, String)> = [
        ("io.k8s.api.core.v1.HostAlias", "ip"),
        ("io.k8s.api.core.v1.LocalObjectReference", "name"),
        ("io.k8s.api.core.v1.ObjectReference", "name"),
        ("io.k8s.api.core.v1.PodIP", "ip"),
        ("io.k8s.api.flowcontrol.v1beta1.FlowSchemaCondition", "type"),
        (
            "io.k8s.api.flowcontrol.v1beta1.PriorityLevelConfigurationCondition",
            "type",
        ),
    ]
    .iter()
    .map(|(i, k)| (i.to_string(), k.to_string()))
    .collect();
    let expected: BTreeSet<_> = filled.union(&undefaulted).cloned().collect();
    assert_eq!(
        optional, expected,
        "the node's optional list-map keys differ from sandbox's table (normalize::DEFAULTED_LIST_KEYS)"
    );
}
