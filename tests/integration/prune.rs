//! Objects removed from the manifests are pruned on the next apply; `sandbox apply` applies
//! without building.

use crate::support::TestSandbox;

#[test]
fn removed_objects_are_pruned_and_apply_builds_nothing() {
    let sb = TestSandbox::new("prune");
    let (file, project) = sb.fixture("rolling");
    let file = file.as_str();

    // apply needs a running sandbox
    let early = sb.run(&["apply", "-f", file]);
    assert_eq!(
        early.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );

    sb.run_json(&["up", "-f", file]);
    let exists = |what: &str| {
        let out = sb.kubectl(&["get", what, "--ignore-not-found", "-o", "name"]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(exists("deploy/api") && exists("service/api"));

    std::fs::remove_file(project.join("k8s/api.yaml")).unwrap();
    let applied = sb.run_json(&["apply", "-f", file]);
    assert_eq!(applied["kind"], "ApplyResult");
    let mut pruned: Vec<String> = applied["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["kind"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect();
    pruned.sort();
    // with the Ingress that gave its NodePort a name through the ingress
    assert_eq!(
        pruned,
        ["Deployment/api", "Ingress/api-sandbox-url", "Service/api"]
    );
    assert!(!exists("deploy/api") && !exists("service/api") && !exists("ingress/api-sandbox-url"));
    assert!(exists("deploy/web"), "web must stay");

    // an object someone else created is never pruned, even in the sandbox's namespace
    assert!(sb
        .kubectl(&["create", "configmap", "not-ours"])
        .status
        .success());
    let again = sb.run_json(&["apply", "-f", file]);
    assert!(again["pruned"].as_array().unwrap().is_empty(), "{again}");
    assert!(exists("configmap/not-ours"));
}
