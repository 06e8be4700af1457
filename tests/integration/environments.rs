//! Per-branch environments: the same project deployed twice, side by side, in its own
//! namespaces on one cluster; removing one leaves the other answering.

use std::time::Duration;

use serde_json::Value;

use crate::support::{assert_success, eventually, http_get, TestSandbox};

fn answers(url: &str) {
    eventually(
        &format!("{url} answers"),
        Duration::from_secs(60),
        || match http_get(url) {
            Ok((200, _)) => Ok(()),
            Ok((code, _)) => Err(format!("HTTP {code}")),
            Err(e) => Err(e.to_string()),
        },
    );
}

fn url(up: &Value) -> String {
    up["urls"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no URL in {up}"))
        .to_string()
}

#[test]
fn two_environments_side_by_side_and_one_removed() {
    let sb = TestSandbox::new("envs");
    let (file, _) = sb.fixture("hello");
    let file = file.as_str();

    let a = sb.run_json(&["up", "-f", file, "--namespace", "feature-a"]);
    let b = sb.run_json(&["up", "-f", file, "--namespace", "feature-b"]);
    let names: Vec<&str> = a["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["feature-a/hello", "sandbox-system/maildev"],
        "only its own namespace, and the shared add-ons: {a}"
    );
    assert_eq!(a["urls"][0]["name"], "feature-a/hello");
    assert_eq!(b["urls"][0]["name"], "feature-b/hello");
    answers(&url(&a));
    answers(&url(&b));

    let status = sb.run_json(&["status"]);
    let addons: Vec<(&str, &str)> = status["sandboxes"][0]["addons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        addons,
        [("maildev", "ready"), ("traefik", "ready")],
        "{status}"
    );
    assert!(status["dns"]["address"].is_string(), "{status}");
    let envs = status["sandboxes"][0]["environments"].as_array().unwrap();
    for ns in ["feature-a", "feature-b"] {
        assert!(envs.iter().any(|e| e == ns), "{ns} missing from {envs:?}");
    }

    let down = sb.run_json(&["down", "--namespace", "feature-a"]);
    assert_eq!(down["removed"]["namespace"], true);
    // deleting a namespace takes the namespace controller a while: terminating is enough
    let out = sb.kubectl(&[
        "get",
        "namespace",
        "feature-a",
        "--ignore-not-found",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    let phase = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        phase.is_empty() || phase == "Terminating",
        "feature-a is {phase}"
    );
    answers(&url(&b));
    // the cluster is still there
    assert_success(&sb.kubectl(&["get", "nodes"]), "kubectl get nodes");
}
