//! The corpus of broken inputs under fixtures/broken/: each case fails `up` with a clear
//! message (checked against its expect.yaml), the documented exit code, and, for invalid
//! manifests, no object created.

use std::path::PathBuf;

use crate::support::{copy_dir, root, TestSandbox};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    exit: i32,
    #[serde(default)]
    cluster: bool,
    stderr: Vec<String>,
    #[serde(default)]
    absent: Vec<String>,
}

fn cases(cluster: bool) -> Vec<(String, PathBuf, Expect)> {
    let dir = root().join("fixtures/broken");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('_') {
            continue;
        }
        let text = std::fs::read_to_string(path.join("expect.yaml"))
            .unwrap_or_else(|e| panic!("{name}: expect.yaml: {e}"));
        let expect: Expect = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        if expect.cluster == cluster {
            out.push((name, path, expect));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Runs one case from a copy of the corpus (cases may share `_` directories), in its own
/// environment (namespace) when one is given.
fn run_case(sb: &TestSandbox, name: &str, expect: &Expect, namespace: Option<&str>) -> Vec<String> {
    let copy = sb.cwd().join("broken");
    if !copy.exists() {
        copy_dir(&root().join("fixtures/broken"), &copy);
    }
    let file = copy.join(name).join("sandbox.yaml");
    let mut args = vec!["up", "-f", file.to_str().unwrap(), "-o", "json"];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    let out = sb.run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let mut failures = Vec::new();
    let error = crate::support::json_document(&out.stdout);
    if error["kind"] != "Error" || error["exitCode"] != expect.exit {
        failures.push(format!(
            "{name}: stdout is not the Error of exit {}: {error}",
            expect.exit
        ));
    }
    if out.status.code() != Some(expect.exit) {
        failures.push(format!(
            "{name}: exit {:?}, expected {}",
            out.status.code(),
            expect.exit
        ));
    }
    for want in &expect.stderr {
        // `${NAMESPACE}`: the namespace the case runs in
        let want = want.replace("${NAMESPACE}", namespace.unwrap_or("default"));
        if !stderr.contains(want.as_str()) {
            failures.push(format!("{name}: stderr lacks {want:?}"));
        }
    }
    if stderr.lines().count() > 40 {
        failures.push(format!(
            "{name}: error longer than one screen ({} lines)",
            stderr.lines().count()
        ));
    }
    if !failures.is_empty() {
        failures.push(format!("--- {name} stderr:\n{stderr}"));
    }
    failures
}

fn report(failures: Vec<String>) {
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn broken_inputs_fail_before_anything_is_created() {
    let sb = TestSandbox::new("broken");
    let cases = cases(false);
    assert!(cases.len() >= 15, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for (name, _, expect) in &cases {
        failures.extend(run_case(&sb, name, expect, None));
        for kind in ["container", "network", "volume"] {
            let left = sb.leftovers(kind);
            if !left.is_empty() {
                failures.push(format!("{name}: a {kind} was created: {left:?}"));
                sb.teardown();
            }
        }
    }
    report(failures);
}

fn exists(sb: &TestSandbox, namespace: &str, object: &str) -> bool {
    let out = sb.kubectl(&[
        "-n",
        namespace,
        "get",
        object,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[test]
fn broken_inputs_on_a_cluster_fail_clearly_and_apply_nothing_invalid() {
    let sb = TestSandbox::new("broken-cluster");
    sb.run_json(&["up"]);
    let cases = cases(true);
    assert!(
        cases.len() >= 6,
        "cluster corpus too small: {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (i, (name, _, expect)) in cases.iter().enumerate() {
        // each case in a namespace of its own: none sees what another left
        let namespace = format!("broken-{i}");
        failures.extend(run_case(&sb, name, expect, Some(&namespace)));
        for object in &expect.absent {
            if exists(&sb, &namespace, object) {
                failures.push(format!(
                    "{name}: {object} was created although the input is invalid"
                ));
            }
        }
    }
    report(failures);
}
