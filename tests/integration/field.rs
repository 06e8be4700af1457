//! The field corpus (`fixtures/field/<case>/`): small projects whose manifests are written
//! the way people write them for `kubectl apply -f` (guestbook files without `protocol`,
//! `kind: List`, JSON, YAML anchors and merge keys, CRLF with a byte order mark, Helm's
//! comment-only documents, `kubectl get -o yaml` dumps, kompose output, a CRD with its
//! resources, cluster-scoped RBAC, hostNetwork and hostPort pods ...), each applied with
//! `up` on one shared node.
//!
//! Each case's `expect.txt` says what `up` must report for it: `object KIND NS/NAME` (or
//! `object KIND NAME` when cluster-scoped), `url KIND NS/NAME [TEXT]` (a URL `up` lists,
//! answering 200 with TEXT in its body) and `host PORT PATH [TEXT]` (a hostNetwork or
//! hostPort server at the node's address). For every case: `up` succeeds, reports every
//! object, has rolled out every Deployment, StatefulSet and DaemonSet, every URL of the
//! case's namespaces answers, and a second `up` changes nothing (`unchanged: true`). A
//! failing case does not stop the others: the test fails at the end with every failure.
//! `SANDBOX_TEST_FIELD_CASES=guestbook,kompose` runs only the cases named.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{copy_dir, http_get, json_document, root, TestSandbox};
use crate::web::Browser;

/// How long a host port (hostNetwork, hostPort) may take to answer after `up`: `up` does not
/// print those, and a pod without a readiness probe is Ready before its server listens.
const HOST_PORT_DEADLINE: Duration = Duration::from_secs(30);

/// One object `up` must report: kind, namespace (`None`: cluster-scoped), name.
type ObjectKey = (String, Option<String>, String);

/// A case's `expect.txt`.
#[derive(Default)]
struct Expect {
    objects: Vec<ObjectKey>,
    /// kind (`NodePort`, `LoadBalancer`, `Ingress`), `ns/name`, text the body holds
    urls: Vec<(String, String, Option<String>)>,
    /// port, path, text the body holds
    hosts: Vec<(u16, String, Option<String>)>,
}

fn rest(words: &[&str]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

fn read_expect(file: &Path) -> Result<Expect, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut expect = Expect::default();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("{}:{}: cannot read {line:?}", file.display(), i + 1);
        match words.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["object", kind, name] => {
                let key = match name.split_once('/') {
                    Some((ns, name)) => (kind.to_string(), Some(ns.to_string()), name.to_string()),
                    None => (kind.to_string(), None, name.to_string()),
                };
                expect.objects.push(key);
            }
            ["url", kind, name, text @ ..] if name.contains('/') => {
                expect
                    .urls
                    .push((kind.to_string(), name.to_string(), rest(text)))
            }
            ["host", port, path, text @ ..] => {
                let port = port.parse().map_err(|_| bad())?;
                expect.hosts.push((port, path.to_string(), rest(text)))
            }
            _ => return Err(bad()),
        }
    }
    Ok(expect)
}

/// The last `n` lines of a command's stderr.
fn tail(out: &Output, n: usize) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `check` until it succeeds or `deadline` passes; the last observation on failure.
fn poll(deadline: Duration, mut check: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(last) if start.elapsed() > deadline => {
                return Err(format!("not within {deadline:?}; last seen: {last}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// `Ok` when the answer is 200 and holds `text`.
fn judge(answer: Result<(u16, String), String>, text: Option<&str>) -> Result<(), String> {
    match answer {
        Ok((200, body)) => match text {
            Some(t) if !body.contains(t) => Err(format!("200 without {t:?}: {body:.300}")),
            _ => Ok(()),
        },
        Ok((code, body)) => Err(format!("HTTP {code}: {body:.300}")),
        Err(e) => Err(e),
    }
}

/// `up -f FILE -o json` (with `-v` when asked): the output, or why it failed.
fn up(sb: &TestSandbox, file: &str, verbose: bool) -> Result<(Value, Output), String> {
    let mut args = vec!["up", "-f", file, "-o", "json"];
    if verbose {
        args.push("-v");
    }
    let out = sb.run(&args);
    if std::env::var_os("SANDBOX_TEST_DEBUG").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        return Err(format!(
            "`sandbox {}` exited with {:?}\n{}",
            args.join(" "),
            out.status.code(),
            tail(&out, 25)
        ));
    }
    Ok((json_document(&out.stdout), out))
}

/// Judges a workload's fields (as numbers, and as read) for being rolled out.
type RolledOut = fn(&[i64], &[&str]) -> bool;

/// Whether the workload is rolled out, read once with kubectl.
fn rolled_out(sb: &TestSandbox, kind: &str, ns: &str, name: &str) -> Result<(), String> {
    let (jsonpath, done): (&str, RolledOut) = match kind {
        "Deployment" => (
            "{.metadata.generation}|{.status.observedGeneration}|{.spec.replicas}|\
             {.status.updatedReplicas}|{.status.availableReplicas}|{.status.replicas}",
            |n, _| n[1] >= n[0] && n[3] == n[2] && n[4] >= n[2] && n[5] == n[3],
        ),
        "StatefulSet" => (
            "{.metadata.generation}|{.status.observedGeneration}|{.spec.replicas}|\
             {.status.readyReplicas}|{.status.updatedReplicas}|{.status.currentRevision}|\
             {.status.updateRevision}",
            |n, raw| n[1] >= n[0] && n[3] == n[2] && n[4] == n[2] && raw[5] == raw[6],
        ),
        "DaemonSet" => (
            "{.metadata.generation}|{.status.observedGeneration}|\
             {.status.desiredNumberScheduled}|{.status.updatedNumberScheduled}|\
             {.status.numberAvailable}",
            |n, _| n[1] >= n[0] && n[2] > 0 && n[3] == n[2] && n[4] == n[2],
        ),
        _ => return Ok(()),
    };
    let out = sb.kubectl(&[
        "-n",
        ns,
        "get",
        &kind.to_lowercase(),
        name,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ]);
    let seen = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("kubectl get {kind} {ns}/{name}: {}", tail(&out, 3)));
    }
    let raw: Vec<&str> = seen.split('|').collect();
    let numbers: Vec<i64> = raw.iter().map(|s| s.parse().unwrap_or(0)).collect();
    if done(&numbers, &raw) {
        Ok(())
    } else {
        Err(format!(
            "{kind} {ns}/{name} is not rolled out after `up`: {jsonpath} = {seen}"
        ))
    }
}

/// Applies one case twice and returns what is wrong with it (empty: it passes).
fn check_case(sb: &TestSandbox, case: &str, expect: &Expect) -> Vec<String> {
    let mut failures = Vec::new();
    let file = format!("field/{case}/sandbox.yaml");
    let (first, _) = match up(sb, &file, false) {
        Ok(v) => v,
        Err(e) => return vec![format!("the first up failed: {e}")],
    };

    // every object of the case, as the manifests name it
    let reported: BTreeSet<ObjectKey> = first["objects"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .map(|o| {
                    (
                        o["kind"].as_str().unwrap_or_default().to_string(),
                        o["namespace"].as_str().map(str::to_string),
                        o["name"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for key in &expect.objects {
        if !reported.contains(key) {
            failures.push(format!(
                "`up` does not report {key:?}; it reports {reported:?}"
            ));
        }
    }

    // every workload rolled out: `up` promises it, so it is read once
    for (kind, ns, name) in &expect.objects {
        if let Some(ns) = ns {
            if let Err(e) = rolled_out(sb, kind, ns, name) {
                failures.push(e);
            }
        }
    }

    // every URL of the case's namespaces answers
    let mut namespaces: BTreeSet<String> = expect
        .objects
        .iter()
        .filter_map(|(_, ns, _)| ns.clone())
        .collect();
    namespaces.insert(format!("field-{case}"));
    let urls: Vec<(String, String, String)> = first["urls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            (
                u["kind"].as_str().unwrap_or_default().to_string(),
                u["name"].as_str().unwrap_or_default().to_string(),
                u["url"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(_, name, _)| {
            name.split_once('/')
                .is_some_and(|(ns, _)| namespaces.contains(ns))
        })
        .collect();
    for (kind, name, _) in &expect.urls {
        if !urls.iter().any(|(k, n, _)| k == kind && n == name) {
            failures.push(format!(
                "`up` lists no {kind} URL for {name}; it lists {urls:?}"
            ));
        }
    }
    let browser = urls
        .iter()
        .any(|(_, _, url)| url.starts_with("https://"))
        .then(|| Browser::of(sb, &first));
    for (kind, name, url) in &urls {
        let text = expect
            .urls
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .and_then(|(_, _, text)| text.as_deref());
        // every URL opens from the laptop on any OS: none at the node's address
        let (scheme, rest) = url.split_once("://").unwrap_or_default();
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        if host != "127.0.0.1" && !host.ends_with(".127.0.0.1.nip.io") {
            failures.push(format!(
                "{kind} {name}: {url} is not on the laptop's loopback"
            ));
        }
        // one request: `up` returned only once every URL it prints answered
        let answered = match (scheme, &browser) {
            ("https", Some(browser)) => judge(browser.request("GET", url, None), text),
            // a relayed TCP port of a stand-in that speaks HTTP
            ("tcp", _) => judge(
                http_get(&format!("http://{rest}/")).map_err(|e| e.to_string()),
                text,
            ),
            _ => judge(http_get(url).map_err(|e| e.to_string()), text),
        };
        if let Err(e) = answered {
            failures.push(format!("{kind} {name}: {url} does not answer: {e}"));
        }
    }

    // hostNetwork and hostPort servers, at the node's address
    let node_ip = first["node"]["ip"].as_str().unwrap_or_default().to_string();
    for (port, path, text) in &expect.hosts {
        let url = format!("http://{node_ip}:{port}{path}");
        let answered = poll(HOST_PORT_DEADLINE, || {
            judge(http_get(&url).map_err(|e| e.to_string()), text.as_deref())
        });
        if let Err(e) = answered {
            failures.push(format!("{url} (host port) does not answer: {e}"));
        }
    }

    // a second up: the record holds, nothing is applied again
    match up(sb, &file, true) {
        Err(e) => failures.push(format!("the second up failed: {e}")),
        Ok((again, out)) => {
            let changed: Vec<String> = again["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["changed"] == true)
                .map(|o| format!("{} {}/{}", o["kind"], o["namespace"], o["name"]))
                .collect();
            if again["unchanged"] != true || !changed.is_empty() {
                // `-v` says why the record did not hold
                let stderr = String::from_utf8_lossy(&out.stderr);
                let reason = stderr
                    .lines()
                    .find(|l| l.contains("a full up"))
                    .unwrap_or("(no reason given)");
                failures.push(format!(
                    "the second up was not a no-op: unchanged = {}, changed {changed:?}; {reason}\n{}",
                    again["unchanged"],
                    tail(&out, 15)
                ));
            }
        }
    }
    failures
}

/// The corpus's cases (`SANDBOX_TEST_FIELD_CASES` picks some), in the order they apply:
/// Kubernetes 1.20 has no range kept for fixed nodePorts, so a case that writes one goes
/// before the cases whose Services get one at random, which could take it.
fn cases(corpus: &Path) -> Vec<String> {
    let only: Option<BTreeSet<String>> = std::env::var("SANDBOX_TEST_FIELD_CASES")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let mut cases: Vec<String> = std::fs::read_dir(corpus)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("sandbox.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| !name.starts_with('_') && !name.starts_with('.'))
        .filter(|name| only.as_ref().is_none_or(|only| only.contains(name)))
        .collect();
    cases.sort();
    let fixes_node_port = |case: &String| {
        walk(&corpus.join(case))
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n != "expect.txt"))
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("nodePort")))
    };
    cases.sort_by_key(|case| !fixes_node_port(case));
    assert!(cases.len() >= 16 || only.is_some(), "only {cases:?}");
    cases
}

/// Runs `check` on every case (a panic is a failure of that case), then fails with every
/// case's failures.
fn run_cases(
    what: &str,
    corpus: &Path,
    cases: &[String],
    check: impl Fn(&str, &Expect) -> Vec<String>,
) {
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut passed: Vec<String> = Vec::new();
    for case in cases {
        let case_started = Instant::now();
        let found = match read_expect(&corpus.join(case).join("expect.txt")) {
            Err(e) => vec![e],
            Ok(expect) => std::panic::catch_unwind(AssertUnwindSafe(|| check(case, &expect)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    vec![format!("panicked: {message}")]
                }),
        };
        eprintln!(
            "{what} case {case}: {} in {:.1} s",
            if found.is_empty() { "ok" } else { "FAILED" },
            case_started.elapsed().as_secs_f64()
        );
        if found.is_empty() {
            passed.push(case.clone());
        }
        failures.extend(found.into_iter().map(|f| format!("[{case}] {f}")));
    }
    eprintln!(
        "{what}: {} of {} cases passed in {:.0} s",
        passed.len(),
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases failed (passed: {passed:?}):\n\n{}",
        cases.len() - passed.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn field_corpus_applies_on_one_node() {
    let sb = TestSandbox::new("field");
    let corpus = root().join("fixtures/field");
    // the contexts are relative (`../_images/web`): copy the whole corpus once
    copy_dir(&corpus, &sb.cwd().join("field"));
    run_cases("field corpus", &corpus, &cases(&corpus), |case, expect| {
        check_case(&sb, case, expect)
    });
}

/// The same corpus in cluster mode: each case deployed as an environment (its namespace)
/// to an existing cluster (a node brought up with `registry: local`), its images pushed to
/// that registry. A case with cluster-scoped objects or objects in other namespaces is
/// refused (exit 2) with nothing made; every other case is deployed: every object
/// reported, every workload rolled out, every Ingress URL answering through the cluster's
/// ingress, and a second `up` changes nothing.
#[test]
fn field_corpus_deploys_as_environments_in_cluster_mode() {
    let sb = TestSandbox::new("fieldenv");
    let corpus = root().join("fixtures/field");
    copy_dir(&corpus, &sb.cwd().join("field"));
    let shared = sb.cwd().join("shared.yaml");
    std::fs::write(
        &shared,
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nregistry: local\naddons: {maildev: false}\n",
    )
    .unwrap();
    let cluster = sb.run_json(&["up", "-f", shared.to_str().unwrap()]);
    let https_port = cluster["ports"]["https"].as_u64().unwrap();
    let registry = format!("sandbox-{}-registry", sb.name);
    let registry_host = crate::support::docker_ok(&["port", &registry, "5000/tcp"]);
    let section = format!(
        "\ncluster:\n  context: {}\n  registry: {registry_host}/field\n  httpsPort: {https_port}\n",
        sb.context()
    );
    run_cases(
        "field corpus in cluster mode",
        &corpus,
        &cases(&corpus),
        |case, expect| check_environment(&sb, case, expect, &section),
    );
}

/// One case as an environment in cluster mode (see above): what is wrong with it.
fn check_environment(sb: &TestSandbox, case: &str, expect: &Expect, section: &str) -> Vec<String> {
    let namespace = format!("field-{case}");
    let dir = sb.cwd().join("field").join(case);
    let text = std::fs::read_to_string(dir.join("sandbox.yaml")).unwrap() + section;
    std::fs::write(dir.join("cluster.yaml"), text).unwrap();
    let file = format!("field/{case}/cluster.yaml");
    let up = || {
        let out = sb.run(&[
            "up",
            "-f",
            &file,
            "--namespace",
            &namespace,
            "-o",
            "json",
            "-v",
        ]);
        (out.status.code(), json_document(&out.stdout), out)
    };
    let leaves = expect
        .objects
        .iter()
        .any(|(_, ns, _)| ns.as_deref() != Some(namespace.as_str()));
    let (code, first, out) = up();
    if leaves {
        let message = first["message"].as_str().unwrap_or_default();
        let mut failures = Vec::new();
        if code != Some(2)
            || !(message.contains("cluster-scoped") || message.contains("name another"))
        {
            failures.push(format!(
                "a case that leaves its namespace is not refused: exit {code:?}, {first}"
            ));
        }
        let made = sb.kubectl(&[
            "get",
            "namespace",
            &namespace,
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        if !String::from_utf8_lossy(&made.stdout).trim().is_empty() {
            failures.push(format!("refused, yet namespace {namespace} was made"));
        }
        return failures;
    }
    if code != Some(0) {
        return vec![format!(
            "up exited with {code:?}: {first}\n{}",
            tail(&out, 25)
        )];
    }
    let mut failures = Vec::new();
    let reported: BTreeSet<ObjectKey> = first["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["namespace"].as_str().map(str::to_string),
                o["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for key in &expect.objects {
        if !reported.contains(key) {
            failures.push(format!(
                "`up` does not report {key:?}; it reports {reported:?}"
            ));
        }
        if let (kind, Some(ns), name) = key {
            if let Err(e) = rolled_out(sb, kind, ns, name) {
                failures.push(e);
            }
        }
    }
    // the Ingress URLs (an environment has no node address: no node-port URLs), each one
    // request through the shared node's ingress
    for (kind, name, text) in expect.urls.iter().filter(|(kind, _, _)| kind == "Ingress") {
        let listed = first["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["kind"] == kind.as_str() && u["name"] == name.as_str());
        let Some(url) = listed.and_then(|u| u["url"].as_str()) else {
            failures.push(format!(
                "`up` lists no {kind} URL for {name}: {}",
                first["urls"]
            ));
            continue;
        };
        if let Err(e) = judge(Ok(crate::support::ingress_get(url)), text.as_deref()) {
            failures.push(format!("{kind} {name}: {url} does not answer: {e}"));
        }
    }
    let (code, again, out) = up();
    if code != Some(0) || again["unchanged"] != true {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .find(|l| l.contains("a full run"))
            .unwrap_or("(no reason given)");
        failures.push(format!(
            "the second up was not a no-op: exit {code:?}, unchanged = {}; {reason}",
            again["unchanged"]
        ));
    }
    failures
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
