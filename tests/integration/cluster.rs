//! Cluster mode (issue 17): a real node brought up as the "existing cluster" (with its own
//! registry, `registry: local`); a project then deploys per-branch environments to it by
//! kube context, its image pushed to that registry (real pushes, real pulls by the node's
//! containerd). Two branches side by side, each at its own host; `down` of one leaves the
//! other; a context that is not allowed, a cluster-scoped object and a registry that
//! refuses the push each fail with nothing touched.

use std::process::Command;

use serde_json::Value;

use crate::support::{
    assert_success, docker_ok, failed_with, json_document, registry_storage, TestSandbox,
};

use crate::support::ingress_get as get;

fn url(up: &Value) -> String {
    up["urls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["kind"] == "Ingress")
        .and_then(|u| u["url"].as_str())
        .unwrap_or_else(|| panic!("no Ingress URL in {up}"))
        .to_string()
}

/// A self-signed certificate for `host` as TLS Secret `namespace/name`; returns the
/// certificate's file.
fn tls_secret(sb: &TestSandbox, namespace: &str, name: &str, host: &str) -> std::path::PathBuf {
    let issued = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let (crt, key) = (
        sb.dir.path().join(format!("{name}.crt")),
        sb.dir.path().join(format!("{name}.key")),
    );
    std::fs::write(&crt, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    assert_success(
        &sb.kubectl(&[
            "-n",
            namespace,
            "create",
            "secret",
            "tls",
            name,
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]),
        &format!("kubectl create secret tls {namespace}/{name}"),
    );
    crt
}

/// Asserts that `namespace` is gone or going (Terminating).
fn assert_going(sb: &TestSandbox, namespace: &str) {
    let phase = sb.kubectl(&[
        "get",
        "namespace",
        namespace,
        "--ignore-not-found",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    let phase = String::from_utf8_lossy(&phase.stdout).to_string();
    assert!(
        phase.is_empty() || phase == "Terminating",
        "{namespace}: {phase}"
    );
}

fn namespace_exists(sb: &TestSandbox, namespace: &str) -> bool {
    let out = sb.kubectl(&[
        "get",
        "namespace",
        namespace,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// The "existing cluster": a node of its own with a registry (`registry: local`), brought up
/// by the test; and the hello-ingress project set up for cluster mode on its context,
/// pushing to that registry.
struct Shared {
    /// The project's sandbox.yaml (cluster mode).
    file: String,
    /// The project's directory.
    project: std::path::PathBuf,
    /// The project's config text.
    config: String,
    /// The shared node's kube context.
    context: String,
    /// The registry container.
    registry: String,
    /// Where the registry is published (`127.0.0.1:PORT`).
    registry_host: String,
}

fn shared_cluster(sb: &TestSandbox) -> Shared {
    let shared = sb.cwd().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let shared_file = shared.join("sandbox.yaml");
    std::fs::write(
        &shared_file,
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nregistry: local\n",
    )
    .unwrap();
    let cluster = sb.run_json(&["up", "-f", shared_file.to_str().unwrap()]);
    let https_port = cluster["ports"]["https"].as_u64().unwrap();
    let registry = format!("sandbox-{}-registry", sb.name);
    let registry_host = docker_ok(&["port", &registry, "5000/tcp"]);
    assert!(registry_host.starts_with("127.0.0.1:"), "{registry_host}");
    let (file, project) = sb.fixture("hello-ingress");
    let context = sb.context();
    let config = std::fs::read_to_string(&file).unwrap()
        + &format!(
            "cluster:\n  context: {context}\n  registry: {registry_host}/team\n  httpsPort: {https_port}\n"
        );
    std::fs::write(&file, &config).unwrap();
    Shared {
        file,
        project,
        config,
        context,
        registry,
        registry_host,
    }
}

#[test]
fn branches_deploy_side_by_side_to_an_existing_cluster_through_its_registry() {
    let sb = TestSandbox::new("shared");
    let Shared {
        file,
        project,
        config,
        context,
        registry,
        registry_host,
    } = shared_cluster(&sb);
    let up = |namespace: &str| {
        let out = sb.run(&["up", "-f", &file, "--namespace", namespace, "-o", "json"]);
        assert_success(&out, &format!("up --namespace {namespace}"));
        (
            json_document(&out.stdout),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (a, _) = up("branch-a");
    assert_eq!(a["kind"], "ClusterUpResult", "{a}");
    assert_eq!(
        (a["context"].as_str(), a["namespace"].as_str()),
        (Some(context.as_str()), Some("branch-a"))
    );
    let reference = a["images"][0]["reference"].as_str().unwrap().to_string();
    assert!(
        reference.starts_with(&format!("{registry_host}/team/hello:sandbox-")),
        "{reference}"
    );
    assert_eq!(a["images"][0]["loaded"], true, "pushed: {a}");
    // nothing of this project on Docker but its images: no node, network or volume of its own
    let url_a = url(&a);
    assert!(
        url_a.starts_with("https://hello.branch-a.127.0.0.1.nip.io"),
        "{url_a}"
    );
    // one request: `up` returned once the URL answered through the cluster's ingress
    let (code, body) = get(&url_a);
    assert_eq!(code, 200, "{url_a}: {body}");
    assert!(body.contains("hello over https"), "{body}");
    // the node pulled the pushed image by its registry name
    let image = sb.kubectl(&["-n", "branch-a", "get", "deploy", "hello", "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].imagePullPolicy}"]);
    assert_eq!(
        String::from_utf8_lossy(&image.stdout),
        format!("{reference} IfNotPresent")
    );

    // a second branch, side by side, at its own host
    let (b, progress) = up("branch-b");
    assert!(
        !progress.contains("pushing"),
        "the same image is not pushed again: {progress}"
    );
    let url_b = url(&b);
    assert!(
        url_b.starts_with("https://hello.branch-b.127.0.0.1.nip.io"),
        "{url_b}"
    );
    assert_eq!(get(&url_b).0, 200, "{url_b}");
    assert_eq!(get(&url_a).0, 200, "{url_a} with branch-b up");

    // the same branch again: nothing built, pushed or applied
    let (again, progress) = up("branch-a");
    assert!(!progress.contains("pushing"), "{progress}");
    assert_eq!(again["unchanged"], true, "{again}\n{progress}");
    crate::support::assert_nothing_changed(&again, "the second up of branch-a");

    // one run per environment, from any machine: while another holds branch-b's Lease,
    // an up of branch-b waits (and says so) and one of branch-a does not
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .unwrap();
    let lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: sandbox-lock, namespace: branch-b}}\n\
         spec: {{holderIdentity: ci-other/1, leaseDurationSeconds: 30, renewTime: \"{}\"}}\n",
        String::from_utf8_lossy(&now.stdout).trim()
    );
    let lease_file = sb.dir.path().join("lease.yaml");
    std::fs::write(&lease_file, lease).unwrap();
    assert_success(
        &sb.kubectl(&["apply", "-f", lease_file.to_str().unwrap()]),
        "kubectl apply the other run's Lease",
    );
    let (waiting, said) = crate::support::spawn_until_said(
        sb.command(&["up", "-f", &file, "--namespace", "branch-b", "-o", "json"]),
        "waiting for it",
    );
    assert!(
        said.contains("another run holds environment branch-b (ci-other/1)"),
        "{said}"
    );
    let (other, progress) = up("branch-a");
    assert!(!progress.contains("waiting for it"), "{progress}");
    assert_eq!(other["namespace"], "branch-a");
    assert_success(
        &sb.kubectl(&["-n", "branch-b", "delete", "lease", "sandbox-lock"]),
        "kubectl delete the other run's Lease",
    );
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the up that waited");
    assert_eq!(json_document(&out.stdout)["namespace"], "branch-b");

    // urls in cluster mode: the environment's table; `load`, which puts images into a node
    // of sandbox's own, refuses (exit 2) rather than act on the local node of the same name
    let urls = sb.run_json(&["urls", "-f", &file, "--namespace", "branch-b"]);
    assert_eq!(urls["context"], context.as_str(), "{urls}");
    assert_eq!(url(&urls), url_b);
    let load = sb.run(&["load", "-f", &file, "hello", "-o", "json"]);
    assert!(failed_with(&load, 2).contains("cluster mode"));

    // TLS from a wildcard Secret of the cluster's, copied into the environment: `up` returns
    // once the controller serves it for the host (not its default certificate)
    tls_secret(
        &sb,
        "default",
        "wildcard-dev",
        "*.branch-e.127.0.0.1.nip.io",
    );
    let tls = project.join("tls.yaml");
    std::fs::write(
        &tls,
        config.clone() + "  tls: {secret: default/wildcard-dev}\n",
    )
    .unwrap();
    let out = sb.run(&[
        "up",
        "-f",
        tls.to_str().unwrap(),
        "--namespace",
        "branch-e",
        "-o",
        "json",
    ]);
    assert_success(&out, "up with cluster.tls.secret");
    let secret = sb.kubectl(&[
        "-n",
        "branch-e",
        "get",
        "ingress",
        "hello",
        "-o",
        "jsonpath={.spec.tls[0].secretName} {.spec.tls[0].hosts[0]}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&secret.stdout),
        "wildcard-dev hello.branch-e.127.0.0.1.nip.io"
    );
    assert_success(
        &sb.run(&[
            "down",
            "-f",
            tls.to_str().unwrap(),
            "--namespace",
            "branch-e",
        ]),
        "down of branch-e",
    );

    // down of one environment leaves the other
    let down = sb.run_json(&["down", "-f", &file, "--namespace", "branch-a"]);
    assert_eq!(down["removed"]["namespace"], true, "{down}");
    assert_eq!(get(&url_b).0, 200, "{url_b} after branch-a's down");
    assert!(
        sb.leftovers("container")
            .iter()
            .any(|c| c.ends_with("-node")),
        "the cluster stays"
    );

    // a context not allowed: none named, and the current one is not sandbox's own
    let prod = sb.dir.path().join("prod.kubeconfig");
    let text = std::fs::read_to_string(sb.kubeconfig()).unwrap();
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    kubeconfig["current-context"] = "prod".into();
    let contexts = kubeconfig["contexts"].as_sequence_mut().unwrap();
    let mut renamed = contexts
        .iter()
        .find(|c| c["name"] == context.as_str())
        .unwrap()
        .clone();
    renamed["name"] = "prod".into();
    contexts.push(renamed);
    std::fs::write(&prod, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let unnamed = project.join("unnamed.yaml");
    std::fs::write(
        &unnamed,
        config.replace(&format!("  context: {context}\n"), ""),
    )
    .unwrap();
    let out = sb
        .command(&[
            "up",
            "-f",
            unnamed.to_str().unwrap(),
            "--namespace",
            "branch-c",
            "-o",
            "json",
        ])
        .env("KUBECONFIG", &prod)
        .output()
        .unwrap();
    assert!(failed_with(&out, 2).contains("\"prod\""));
    assert!(!namespace_exists(&sb, "branch-c"), "nothing touched");

    // a cluster-scoped object is refused, nothing applied
    std::fs::write(
        project.join("k8s/role.yaml"),
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: hello-reader}\nrules: []\n",
    )
    .unwrap();
    let scoped = project.join("scoped.yaml");
    std::fs::write(
        &scoped,
        config.replace(
            "  - k8s/all-in-one.yaml\n",
            "  - k8s/all-in-one.yaml\n  - k8s/role.yaml\n",
        ),
    )
    .unwrap();
    let out = sb.run(&[
        "up",
        "-f",
        scoped.to_str().unwrap(),
        "--namespace",
        "branch-d",
        "-o",
        "json",
    ]);
    let message = failed_with(&out, 2);
    assert!(
        message.contains("ClusterRole") && message.contains("hello-reader"),
        "{message}"
    );
    assert!(!namespace_exists(&sb, "branch-d"), "nothing touched");

    // a registry that refuses the push: exit 5 with its answer, nothing applied
    registry_storage(&registry, "a-w");
    std::fs::write(project.join("app/www/changed.txt"), "changed\n").unwrap();
    let out = sb.run(&["up", "-f", &file, "--namespace", "branch-b", "-o", "json"]);
    registry_storage(&registry, "u+w");
    let message = failed_with(&out, 5);
    assert!(
        message.contains(&format!("pushing {registry_host}/team/hello")),
        "{message}"
    );
    let image = sb.kubectl(&[
        "-n",
        "branch-b",
        "get",
        "deploy",
        "hello",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&image.stdout),
        reference,
        "branch-b keeps its image"
    );
    // a new environment whose push is refused is not left behind (its namespace deleted)
    registry_storage(&registry, "a-w");
    let out = sb.run(&["up", "-f", &file, "--namespace", "branch-f", "-o", "json"]);
    registry_storage(&registry, "u+w");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_going(&sb, "branch-f");
}

/// A minimal CustomResourceDefinition of cert-manager's Certificate (no controller runs
/// here: the test plays cert-manager's part, issuing the Secret and setting Ready).
const CERTIFICATE_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Certificate, listKind: CertificateList, plural: certificates, singular: certificate}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

#[test]
fn every_verb_works_on_an_environment_with_its_own_maildev_and_certificate() {
    let sb = TestSandbox::new("verbs");
    let Shared {
        file,
        project,
        config,
        context,
        registry_host,
        ..
    } = shared_cluster(&sb);
    // maildev per environment, asked for in so many words
    let maildev = project.join("maildev.yaml");
    std::fs::write(&maildev, config.clone() + "addons: {maildev: true}\n").unwrap();
    let maildev = maildev.to_str().unwrap();
    let at = |args: &[&str], namespace: &str| {
        let mut all = vec![args[0], "-f", maildev, "--namespace", namespace];
        all.extend(&args[1..]);
        sb.run(&all)
    };
    let up = sb.run_json(&["up", "-f", maildev, "--namespace", "verbs-a"]);
    let urls: Vec<&str> = up["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["url"].as_str())
        .collect();
    let mail = urls
        .iter()
        .find(|u| u.starts_with("https://maildev.verbs-a.127.0.0.1.nip.io"))
        .unwrap_or_else(|| panic!("no maildev URL of the environment: {up}"));
    // its local image went through the registry like the project's
    assert!(
        up["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["reference"].as_str().unwrap().starts_with(&format!(
                "{registry_host}/team/sandbox-offline/maildev:sandbox-"
            ))),
        "{up}"
    );
    let (code, body) = get(mail);
    assert_eq!(code, 200, "{mail}: {body}");
    assert!(
        !urls.iter().any(|u| u.contains("maildev.127.0.0.1.nip.io")),
        "the shared node's own maildev is not the environment's: {urls:?}"
    );

    // status: the context's environments of this sandbox, with their workloads
    let status = sb.run_json(&["status", "-f", &file]);
    assert_eq!(status["kind"], "ClusterStatusResult", "{status}");
    assert_eq!(status["api"], "ready", "{status}");
    let env = status["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["namespace"] == "verbs-a")
        .unwrap_or_else(|| panic!("verbs-a not listed: {status}"));
    let workloads: Vec<(&str, &str)> = env["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        workloads,
        [("hello", "ready"), ("maildev", "ready")],
        "{status}"
    );
    assert_eq!(
        status["environments"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let missing = at(&["status", "-o", "json"], "verbs-x");
    assert_eq!(missing.status.code(), Some(8), "{missing:?}");

    // apply: the manifests again, nothing built
    let applied = at(&["apply", "-o", "json"], "verbs-a");
    assert_success(&applied, "apply in cluster mode");
    let applied = json_document(&applied.stdout);
    assert_eq!(applied["kind"], "ApplyResult", "{applied}");
    assert!(
        applied["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["namespace"] == "verbs-a"),
        "{applied}"
    );
    let absent = at(&["apply", "-o", "json"], "verbs-x");
    assert_eq!(
        absent.status.code(),
        Some(8),
        "apply to no environment: {absent:?}"
    );
    assert!(
        !namespace_exists(&sb, "verbs-x"),
        "apply makes no environment"
    );

    // logs of the environment's maildev
    let logs = sb.run(&[
        "logs",
        "--file",
        maildev,
        "--namespace",
        "verbs-a",
        "deploy/maildev",
    ]);
    assert_success(&logs, "logs in cluster mode");
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("[maildev-"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );

    // kubeconfig: the context alone, in the environment's namespace
    let kubeconfig = at(&["kubeconfig"], "verbs-a");
    assert_success(&kubeconfig, "kubeconfig in cluster mode");
    let kubeconfig: serde_yaml::Value = serde_yaml::from_slice(&kubeconfig.stdout).unwrap();
    assert_eq!(kubeconfig["current-context"], context.as_str());
    assert_eq!(kubeconfig["contexts"].as_sequence().unwrap().len(), 1);
    assert_eq!(kubeconfig["contexts"][0]["context"]["namespace"], "verbs-a");

    // exec: up, then the command with the environment's kubeconfig and URLs; --down
    // removes the environment, not the cluster
    let out = sb.run(&[
        "-f",
        maildev,
        "--namespace",
        "verbs-a",
        "exec",
        "--down",
        "--",
        "sh",
        "-c",
        "kubectl get deploy hello -o name && echo \"$SANDBOX_NAMESPACE $SANDBOX_CONTEXT $SANDBOX_URL_MAILDEV\"",
    ]);
    assert_success(&out, "exec --down in cluster mode");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("deployment.apps/hello"), "{said}");
    assert!(
        said.contains(&format!(
            "verbs-a {context} https://maildev.verbs-a.127.0.0.1.nip.io"
        )),
        "{said}"
    );
    assert_going(&sb, "verbs-a");
    assert!(
        sb.leftovers("container")
            .iter()
            .any(|c| c.ends_with("-node")),
        "the cluster stays"
    );

    // a Certificate per environment from cert-manager: refused where it is not installed,
    // nothing touched
    let issuer = project.join("issuer.yaml");
    std::fs::write(&issuer, config.clone() + "  tls: {issuer: team-ca}\n").unwrap();
    let issuer = issuer.to_str().unwrap();
    let out = sb.run(&["up", "-f", issuer, "--namespace", "verbs-t", "-o", "json"]);
    assert!(failed_with(&out, 2).contains("cert-manager"), "{out:?}");
    assert!(!namespace_exists(&sb, "verbs-t"), "nothing touched");
    // installed (its CRD; the test plays its controller): up returns once the Certificate
    // is Ready and the controller serves its Secret for the host
    let crd = sb.dir.path().join("certificate-crd.yaml");
    std::fs::write(&crd, CERTIFICATE_CRD).unwrap();
    assert_success(
        &sb.kubectl(&["apply", "-f", crd.to_str().unwrap()]),
        "kubectl apply the CRD",
    );
    crate::support::eventually(
        "the Certificate kind is served",
        std::time::Duration::from_secs(60),
        || {
            let out = sb.kubectl(&["get", "certificates.cert-manager.io", "-A"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).to_string())
            }
        },
    );
    let (waiting, _) = crate::support::spawn_until_said(
        sb.command(&["up", "-f", issuer, "--namespace", "verbs-t", "-o", "json"]),
        "waiting for workloads",
    );
    let hosts = crate::support::eventually(
        "the environment's Certificate",
        std::time::Duration::from_secs(60),
        || {
            let out = sb.kubectl(&[
                "-n",
                "verbs-t",
                "get",
                "certificate",
                "sandbox-tls",
                "-o",
                "jsonpath={.spec.dnsNames[*]} {.spec.issuerRef.name}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !text.is_empty() {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    assert_eq!(hosts, "hello.verbs-t.127.0.0.1.nip.io team-ca");
    let crt = tls_secret(
        &sb,
        "verbs-t",
        "sandbox-tls",
        "hello.verbs-t.127.0.0.1.nip.io",
    );
    assert_success(
        &sb.kubectl(&["-n", "verbs-t", "patch", "certificate", "sandbox-tls", "--subresource=status", "--type=merge", "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Ready","message":"Certificate is up to date and has not expired","observedGeneration":1}]}}"#]),
        "set the Certificate Ready",
    );
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "up with cluster.tls.issuer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let url = url(&json_document(&out.stdout));
    // verified against the issued certificate alone: the controller serves it
    let (host, port, _) = crate::web::split_url(&url, "https", 443);
    let served = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&crt)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&served.stdout),
        "200",
        "{url}: {served:?}"
    );
}
