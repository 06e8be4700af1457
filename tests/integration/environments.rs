//! Per-branch environments: the same project deployed twice, side by side, in its own
//! namespaces on one cluster, each on its own subdomain with its own certificate, served
//! over trusted HTTPS by name; removing one leaves the other answering.

use std::time::Duration;

use serde_json::Value;

use crate::support::{assert_success, eventually, TestSandbox};
use crate::web::{url_of, Browser};

/// The one Ingress URL of an environment's `up`, checked to be on its own subdomain.
fn env_url(up: &Value, env: &str) -> String {
    let url = url_of(up, "hello");
    assert!(
        url.starts_with(&format!("https://hello.{env}.127.0.0.1.nip.io")),
        "{env}: {url}"
    );
    url
}

#[test]
fn two_environments_side_by_side_and_one_removed() {
    let sb = TestSandbox::new("envs");
    let (file, _) = sb.fixture("hello-ingress");
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
    assert_eq!(b["urls"][0]["name"], "feature-b/hello");
    // each on its own subdomain, with its own certificate, by name through the sandbox's DNS
    let (url_a, url_b) = (env_url(&a, "feature-a"), env_url(&b, "feature-b"));
    let browser = Browser::of(&sb, &b);
    for url in [&url_a, &url_b] {
        assert!(browser.get_ok(url).contains("hello over https"));
    }
    // and each app knows its own public URL
    for (ns, url) in [("feature-a", &url_a), ("feature-b", &url_b)] {
        let out = sb.kubectl(&[
            "-n",
            ns,
            "get",
            "deploy",
            "hello",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[2].value}",
        ]);
        assert_eq!(&String::from_utf8_lossy(&out.stdout), url, "{ns}");
    }

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
    // the other one still answers; the removed one's name no longer routes
    assert!(browser.get_ok(&url_b).contains("hello over https"));
    eventually(
        "feature-a's route is gone",
        Duration::from_secs(60),
        || match browser.request("GET", &url_a, None) {
            // the route gone first, or its certificate too (Traefik's own default one)
            Ok((404, _)) => Ok(()),
            Err(e) if e.contains("UnknownIssuer") => Ok(()),
            other => Err(format!("{other:.200?}")),
        },
    );
    // the cluster is still there
    assert_success(&sb.kubectl(&["get", "nodes"]), "kubectl get nodes");
}
