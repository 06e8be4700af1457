//! The built-in default sandbox: up, reuse, status, kubeconfig, down, data kept, purge.

use crate::support::{assert_success, TestSandbox};

#[test]
fn default_sandbox_boots_reuses_and_tears_down_cleanly() {
    let sb = TestSandbox::new("lifecycle");

    // up on the built-in default: node Ready, context merged
    let up = sb.run_json(&["up"]);
    assert_eq!(up["kind"], "UpResult");
    assert_eq!(up["sandbox"], sb.name.as_str());
    assert_eq!(up["node"]["created"], true);
    assert_eq!(up["context"], sb.context().as_str());
    assert!(up["config"].is_null(), "no sandbox.yaml: built-in default");
    let nodes = sb.kubectl(&["get", "nodes", "--no-headers"]);
    assert_success(&nodes, "kubectl get nodes");
    let nodes = String::from_utf8_lossy(&nodes.stdout);
    assert!(nodes.contains(" Ready"), "node not Ready: {nodes}");

    // state written through the API survives `down` (the data volume is kept)
    assert_success(
        &sb.kubectl(&["create", "configmap", "survivor", "--from-literal=k=v"]),
        "kubectl create configmap",
    );

    // a second up reuses the running node and changes nothing
    let again = sb.run_json(&["up"]);
    assert_eq!(again["node"]["created"], false);
    assert_eq!(again["ports"], up["ports"]);

    let status = sb.run_json(&["status"]);
    assert_eq!(status["sandboxes"][0]["api"], "ready", "{status}");

    let kubeconfig = sb.run(&["kubeconfig"]);
    assert_success(&kubeconfig, "sandbox kubeconfig");
    let text = String::from_utf8_lossy(&kubeconfig.stdout);
    let api_port = up["ports"]["api"].as_u64().unwrap();
    assert!(
        text.contains(&format!("server: https://127.0.0.1:{api_port}")),
        "{text}"
    );

    // down: no container, network or context left; the data volume stays
    let down = sb.run_json(&["down"]);
    assert_eq!(down["removed"]["context"], true);
    assert!(
        sb.leftovers("container").is_empty(),
        "{:?}",
        sb.leftovers("container")
    );
    assert!(
        sb.leftovers("network").is_empty(),
        "{:?}",
        sb.leftovers("network")
    );
    assert_eq!(
        sb.leftovers("volume"),
        vec![format!("sandbox-{}-data", sb.name)]
    );
    let contexts = sb.kubectl(&["config", "get-contexts", "-o", "name"]);
    assert!(
        !String::from_utf8_lossy(&contexts.stdout).contains(&sb.context()),
        "context left behind"
    );

    // up again on the kept volume: the cluster's objects are still there
    let revived = sb.run_json(&["up"]);
    assert_eq!(revived["node"]["created"], true);
    // once: `up` returned with the API server serving
    let cm = sb.kubectl(&["get", "configmap", "survivor", "-o", "jsonpath={.data.k}"]);
    assert_success(&cm, "kubectl get configmap survivor right after up");
    assert_eq!(String::from_utf8_lossy(&cm.stdout), "v");

    // down --purge also deletes the data volume
    let purged = sb.run_json(&["down", "--purge"]);
    assert_eq!(purged["purged"], true);
    for kind in ["container", "network", "volume"] {
        assert!(
            sb.leftovers(kind).is_empty(),
            "{kind}: {:?}",
            sb.leftovers(kind)
        );
    }

    // down of a sandbox that does not exist is not an error
    let absent = sb.run(&["down"]);
    assert_success(&absent, "down of an absent sandbox");
    assert!(String::from_utf8_lossy(&absent.stdout).contains("does not exist"));
}
