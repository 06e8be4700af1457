//! The guestbook-style fixture: image built locally, Deployment + NodePort Service, URL
//! answering from the host; a second `up` changes nothing.

use crate::support::{http_get, TestSandbox};

#[test]
fn hello_fixture_answers_and_second_up_changes_nothing() {
    let sb = TestSandbox::new("hello");
    let (file, _) = sb.fixture("hello");
    let file = file.as_str();

    let up = sb.run_json(&["up", "-f", file]);
    let url = up["urls"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no URL in {up}"))
        .to_string();
    assert_eq!(up["urls"][0]["kind"], "NodePort");
    assert_eq!(up["images"][0]["loaded"], true);
    let reference = up["images"][0]["reference"].as_str().unwrap().to_string();
    assert!(reference.starts_with("hello:sandbox-"), "{reference}");

    // one request, no retry: `up` returns once every URL it printed answers
    let body = match http_get(&url) {
        Ok((200, body)) => body,
        other => panic!("{url} right after up: {other:?}"),
    };
    assert_eq!(body.trim(), "hello from sandbox");

    // the rewritten reference is what runs, and it never pulls
    let image = sb.kubectl(&["get", "deploy", "hello", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].imagePullPolicy}"]);
    assert_eq!(
        String::from_utf8_lossy(&image.stdout),
        format!("{reference} Never")
    );

    // a second up on the running sandbox: nothing rebuilt differently, loaded or changed
    let again = sb.run_json(&["up", "-f", file]);
    assert_eq!(again["node"]["created"], false);
    assert_eq!(again["images"][0]["reference"], reference.as_str());
    assert_eq!(again["images"][0]["loaded"], false);
    crate::support::assert_nothing_changed(&again, "the second up");

    // exec: the command sees the sandbox's URLs and kubeconfig; its exit code is passed through
    let ok = sb.run(&[
        "-f",
        file,
        "exec",
        "--",
        "sh",
        "-c",
        // the URL is the Service's name through the ingress, verified with the CA bundle
        // `exec` exports; its nip.io name goes to 127.0.0.1 as nip.io itself would send it
        r#"curl --fail -sS --connect-to ::127.0.0.1: "$SANDBOX_URL_HELLO" && kubectl get deploy hello"#,
    ]);
    crate::support::assert_success(&ok, "sandbox exec curl");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("hello from sandbox"));
    let failing = sb.run(&["-f", file, "exec", "--", "sh", "-c", "exit 3"]);
    assert_eq!(
        failing.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failing.stderr)
    );
}
