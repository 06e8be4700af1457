//! Every URL `up` prints opens from the laptop on any OS: a NodePort Service's HTTP ports by
//! name through the ingress (with the sandbox's certificate), a LoadBalancer's other port on
//! a loopback port relayed through the API server, kept across `up`s; the LoadBalancer gets
//! an address in its status.

use std::process::Command;

use serde_json::Value;

use crate::support::{assert_nothing_changed, assert_success, http_get, TestSandbox};

/// `(scheme, host, port)` of a URL.
fn parts(url: &str) -> (String, String, u16) {
    let (scheme, rest) = url.split_once("://").expect(url);
    let authority = rest.split('/').next().unwrap();
    let default = if scheme == "https" { 443 } else { 0 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().expect(url)),
        None => (authority.to_string(), default),
    };
    (scheme.to_string(), host, port)
}

/// One request to `url` the way a user's client makes it: HTTPS verified against the
/// sandbox's CA (names under the nip.io domain sent to 127.0.0.1, as nip.io or the
/// sandbox's DNS server would), a `tcp://` port with an HTTP request of its own.
fn open(sb: &TestSandbox, url: &str) -> Result<(u16, String), String> {
    let (scheme, _, port) = parts(url);
    match scheme.as_str() {
        "https" => {
            let ca = sb.dir.path().join("data/sandbox/ca/ca.crt");
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
                .arg("--cacert")
                .arg(&ca)
                .args(["--connect-to", "::127.0.0.1:", url])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).to_string());
            }
            let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
            Ok((code.trim().parse().unwrap_or(0), body.to_string()))
        }
        "tcp" => http_get(&format!("http://127.0.0.1:{port}/")).map_err(|e| e.to_string()),
        other => Err(format!("unexpected scheme {other}")),
    }
}

fn urls(result: &Value) -> Vec<(String, String, String)> {
    result["urls"]
        .as_array()
        .unwrap_or_else(|| panic!("no URLs in {result}"))
        .iter()
        .map(|u| {
            (
                u["kind"].as_str().unwrap().to_string(),
                u["name"].as_str().unwrap().to_string(),
                u["url"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_url_is_on_loopback_and_answers() {
    let sb = TestSandbox::new("exposed");
    // its image is hello's, built from ../hello/app
    sb.fixture("hello");
    let (file, _) = sb.fixture("exposed");
    let file = file.as_str();
    let up = sb.run_json(&["up", "-f", file]);
    let listed = urls(&up);
    let kinds: Vec<String> = listed
        .iter()
        .map(|(k, n, u)| format!("{k} {n} {}", parts(u).0))
        .collect();
    assert_eq!(
        kinds,
        [
            "LoadBalancer default/raw tcp",
            "NodePort default/web https",
            "NodePort default/web https",
            "Ingress sandbox-system/maildev https",
        ],
        "{listed:?}"
    );
    let web = |i: usize| listed[i].2.clone();
    assert!(
        web(1).starts_with("https://web.default.127.0.0.1.nip.io"),
        "{listed:?}"
    );
    assert!(
        web(2).starts_with("https://web-8080.default.127.0.0.1.nip.io"),
        "{listed:?}"
    );

    // every URL: a loopback host, answering at once (up returned once each answered)
    for (kind, name, url) in &listed {
        let (_, host, _) = parts(url);
        assert!(
            host == "127.0.0.1" || host.ends_with(".127.0.0.1.nip.io"),
            "{kind} {name}: {url} is not on the laptop's loopback"
        );
        match open(&sb, url) {
            Ok((200, body))
                if name == "sandbox-system/maildev" || body.trim() == "hello from sandbox" => {}
            other => panic!("{kind} {name}: {url} right after up: {other:?}"),
        }
    }

    // the LoadBalancer's address, as a cloud's controller would give it
    let status = sb.kubectl(&[
        "get",
        "svc",
        "raw",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[0].hostname}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "raw.default.127.0.0.1.nip.io"
    );

    // `urls` and `exec` agree with `up`
    let printed = sb.run_json(&["urls", "-f", file]);
    let printed: Vec<_> = urls(&printed)
        .into_iter()
        .filter(|(kind, _, _)| kind != "API")
        .collect();
    assert_eq!(printed, listed);
    let exec = sb.run(&[
        "-f",
        file,
        "exec",
        "--",
        "sh",
        "-c",
        "echo \"$SANDBOX_URL_RAW\"",
    ]);
    assert_success(&exec, "sandbox exec");
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), listed[0].2);

    // the next up keeps every port, and the relay keeps serving
    let again = sb.run_json(&["up", "-f", file]);
    assert_nothing_changed(&again, "the second up");
    assert_eq!(urls(&again), listed);
    assert!(matches!(open(&sb, &listed[0].2), Ok((200, _))));

    // an environment of the same project gets ports of its own beside them; its down
    // frees its own only
    let env = sb.run_json(&["up", "-f", file, "--namespace", "exposed-env"]);
    let env_raw = urls(&env)
        .into_iter()
        .find(|(_, name, _)| name == "exposed-env/raw")
        .unwrap_or_else(|| panic!("no URL for exposed-env/raw in {env}"))
        .2;
    assert_ne!(env_raw, listed[0].2);
    assert!(matches!(open(&sb, &env_raw), Ok((200, _))), "{env_raw}");
    let down = sb.run(&["down", "-f", file, "--namespace", "exposed-env"]);
    assert_success(&down, "sandbox down --namespace");
    let (_, _, env_port) = parts(&env_raw);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", env_port)).is_err(),
        "the environment's port {env_port} still listens after its down"
    );
    assert!(matches!(open(&sb, &listed[0].2), Ok((200, _))));

    // down stops the relay: its port is free again
    let down = sb.run(&["down", "-f", file]);
    assert_success(&down, "sandbox down");
    let (_, _, port) = parts(&listed[0].2);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the relay still listens on {port} after down"
    );
}
