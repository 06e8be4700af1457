//! The built-in default sandbox: up, reuse, status, kubeconfig, down, data kept, purge;
//! the user's DNS server started by `up` and stopped by the last `down`; another sandbox's
//! command never makes this one wait.

use crate::support::{assert_success, dns_servers, json_document, TestSandbox};

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
    // this test's state directory is its user's: one DNS server, started by this up
    let home = sb.dir.path().join("state");
    assert!(!up["dns"]["address"].is_null(), "{up}");
    assert_eq!(dns_servers(&home).len(), 1, "DNS servers after up");
    let nodes = sb.kubectl(&["get", "nodes", "--no-headers"]);
    assert_success(&nodes, "kubectl get nodes");
    let nodes = String::from_utf8_lossy(&nodes.stdout);
    assert!(nodes.contains(" Ready"), "node not Ready: {nodes}");

    // state written through the API survives `down` (the data volume is kept)
    assert_success(
        &sb.kubectl(&["create", "configmap", "survivor", "--from-literal=k=v"]),
        "kubectl create configmap",
    );

    // a second up reuses the running node and changes nothing; another sandbox's command
    // (here: its lock, held) does not make it wait
    let state = sb.dir.path().join("state/sandbox");
    let other = std::fs::File::create(state.join(format!("{}-other.lock", sb.name))).unwrap();
    other.lock().unwrap();
    let out = sb.run(&["up", "-o", "json"]);
    assert_success(&out, "sandbox up while another sandbox's lock is held");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(!progress.contains("waiting for it"), "{progress}");
    drop(other);
    let again = json_document(&out.stdout);
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
    // the user's last sandbox (other tests' sandboxes are other users'): the DNS server
    // stops with it
    assert_eq!(down["dnsStopped"], true, "{down}");
    assert_eq!(
        dns_servers(&home),
        Vec::<u32>::new(),
        "DNS servers after down"
    );
    assert!(!state.join("dns.json").exists());
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
    assert_eq!(dns_servers(&home).len(), 1, "DNS servers after up again");
    // once: `up` returned with the API server serving
    let cm = sb.kubectl(&["get", "configmap", "survivor", "-o", "jsonpath={.data.k}"]);
    assert_success(&cm, "kubectl get configmap survivor right after up");
    assert_eq!(String::from_utf8_lossy(&cm.stdout), "v");

    // down --purge also deletes the data volume
    let purged = sb.run_json(&["down", "--purge"]);
    assert_eq!(purged["purged"], true);
    assert_eq!(purged["dnsStopped"], true, "{purged}");
    assert_eq!(
        dns_servers(&home),
        Vec::<u32>::new(),
        "DNS servers after down --purge"
    );
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
