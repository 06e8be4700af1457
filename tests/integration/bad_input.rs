//! Bad input fails early with a message naming the file and line, exit code 2, and no
//! Docker object created.

use crate::support::TestSandbox;

fn fails_with(sb: &TestSandbox, config: &str, expected: &[&str]) {
    let file = sb.cwd().join("sandbox.yaml");
    std::fs::write(&file, config).unwrap();
    let out = sb.run(&["up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
    }
    assert!(
        sb.leftovers("container").is_empty(),
        "bad input must create nothing"
    );
}

#[test]
fn bad_config_and_manifests_fail_before_anything_is_created() {
    let sb = TestSandbox::new("badinput");
    fails_with(
        &sb,
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nmanifest: [a.yaml]\n",
        &["sandbox.yaml:3:", "unknown field `manifest`"],
    );
    fails_with(
        &sb,
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nprofile: minikube\n",
        &["unknown profile \"minikube\""],
    );
    std::fs::write(
        sb.cwd().join("app.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  x: ${UNDEFINED}\n",
    )
    .unwrap();
    fails_with(
        &sb,
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nmanifests: [app.yaml]\n",
        &["app.yaml:6: unknown variable ${UNDEFINED}"],
    );
    fails_with(
        &sb,
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nmanifests: [missing/*.yaml]\n",
        &["matches no"],
    );
}
