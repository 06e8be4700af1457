//! `registry: local` (issue 17, item 5): a real registry process of the sandbox's own; the
//! engine pushes the built image to it, the node's containerd pulls it through its mirror
//! (the image is never loaded into the node), a second `up` pushes nothing, a registry
//! that refuses the push fails `up` with exit 5 and the registry's answer, and `down`
//! removes the registry (its volume kept until `--purge`).

use crate::support::{
    assert_success, docker_ok, http_get, json_document, node_images, registry_storage, TestSandbox,
};

/// `GET http://127.0.0.1:PORT/v2/PATH` of the registry: its body.
fn registry_get(port: u64, path: &str) -> String {
    match http_get(&format!("http://127.0.0.1:{port}/v2/{path}")) {
        Ok((200, body)) => body,
        other => panic!("GET /v2/{path} of the registry: {other:.300?}"),
    }
}

#[test]
fn images_go_through_the_sandboxs_own_registry_and_the_node_pulls_them() {
    let sb = TestSandbox::new("registry");
    let (file, project) = sb.fixture("hello");
    let config = std::fs::read_to_string(&file).unwrap() + "registry: local\n";
    std::fs::write(&file, config).unwrap();
    let file = file.as_str();
    let registry = format!("sandbox-{}-registry", sb.name);

    let up = sb.run_json(&["up", "-f", file]);
    let reference = up["images"][0]["reference"].as_str().unwrap().to_string();
    let (host, rest) = reference.split_once('/').unwrap();
    let port: u64 = host
        .strip_prefix("127.0.0.1:")
        .unwrap_or_else(|| panic!("not a reference in the local registry: {reference}"))
        .parse()
        .unwrap();
    assert!(rest.starts_with("hello:sandbox-"), "{reference}");
    assert_eq!(up["images"][0]["loaded"], true, "pushed: {up}");

    // the registry holds it (a real registry process, on the port the reference names)
    assert!(registry_get(port, "_catalog").contains("\"hello\""));
    let tag = rest.trim_start_matches("hello:");
    assert!(registry_get(port, "hello/tags/list").contains(tag));
    assert_eq!(
        docker_ok(&["port", &registry, "5000/tcp"]),
        format!("127.0.0.1:{port}")
    );

    // the node pulled it from there: it holds the registry's name, and never got the
    // image loaded under its local name
    let held = node_images(&sb);
    assert!(held.lines().any(|l| l == reference), "{held}");
    assert!(!held.contains("docker.io/library/hello:"), "{held}");
    let image = sb.kubectl(&[
        "get",
        "deploy",
        "hello",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].imagePullPolicy}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&image.stdout),
        format!("{reference} IfNotPresent")
    );
    let url = up["urls"][0]["url"].as_str().unwrap();
    match http_get(url) {
        Ok((200, body)) => assert_eq!(body.trim(), "hello from sandbox"),
        other => panic!("{url} right after up: {other:?}"),
    }

    // KEP-1755: where the registry is, for tools that look
    let hosting = sb.kubectl(&[
        "-n",
        "kube-public",
        "get",
        "configmap",
        "local-registry-hosting",
        "-o",
        "jsonpath={.data.localRegistryHosting\\.v1}",
    ]);
    let hosting = String::from_utf8_lossy(&hosting.stdout);
    assert!(
        hosting.contains(&format!("host: \"127.0.0.1:{port}\"")),
        "{hosting}"
    );

    // a second up: nothing pushed, nothing changed
    let out = sb.run(&["up", "-f", file, "-o", "json"]);
    assert_success(&out, "the second up");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pushing"));
    let again = json_document(&out.stdout);
    assert_eq!(again["unchanged"], true, "{again}");
    assert_eq!(again["images"][0]["reference"], reference.as_str());

    // `sandbox build` pushes there too: a change to the page is a new tag in the registry
    std::fs::write(project.join("app/www/built.txt"), "built\n").unwrap();
    let built = sb.run_json(&["build", "-f", file]);
    let pushed = built["images"][0]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pushed.starts_with(&format!("127.0.0.1:{port}/hello:")),
        "{built}"
    );
    assert_ne!(pushed, reference);
    assert_eq!(built["images"][0]["loaded"], true, "pushed: {built}");
    assert!(registry_get(port, "hello/tags/list").contains(pushed.rsplit(':').next().unwrap()));

    // a registry that refuses the push (its storage made read-only): exit 5 with the
    // registry's answer, and nothing applied (the Deployment keeps its image)
    registry_storage(&registry, "a-w");
    std::fs::write(project.join("app/www/index.html"), "changed\n").unwrap();
    let refused = sb.run(&["up", "-f", file, "-o", "json"]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let error = json_document(&refused.stdout);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("pushing 127.0.0.1:") && message.contains("failed"),
        "{error}"
    );
    let image = sb.kubectl(&[
        "get",
        "deploy",
        "hello",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(String::from_utf8_lossy(&image.stdout), reference);
    registry_storage(&registry, "u+w");

    // down removes the registry container, keeps its volume; --purge deletes it
    assert_success(&sb.run(&["down"]), "sandbox down");
    assert!(
        sb.leftovers("container").is_empty(),
        "{:?}",
        sb.leftovers("container")
    );
    assert!(
        sb.leftovers("volume").contains(&registry),
        "{:?}",
        sb.leftovers("volume")
    );
    assert_success(&sb.run(&["down", "--purge"]), "sandbox down --purge");
    assert!(
        sb.leftovers("volume").is_empty(),
        "{:?}",
        sb.leftovers("volume")
    );
}

/// A registry that wants a password (htpasswd, bcrypt) gets the one Docker's config holds
/// for it, as `docker push` would: a wrong one fails the push (`sandbox build` in cluster
/// mode) with exit 5 and the registry's answer; the right one pushes.
#[test]
fn a_registry_that_wants_credentials_gets_those_of_the_docker_config() {
    let sb = TestSandbox::new("creds");
    let auth = sb.dir.path().join("auth");
    std::fs::create_dir_all(&auth).unwrap();
    let hash = bcrypt::hash("s3cret", 5).unwrap();
    std::fs::write(auth.join("htpasswd"), format!("tester:{hash}\n")).unwrap();
    // the registry runs as its own user: it must read the bind-mounted file
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        auth.join("htpasswd"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let container = format!("{}-authregistry", sb.name);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &container,
        "--label",
        &format!("dev.sandbox/sandbox={}", sb.name),
        "-p",
        "127.0.0.1::5000",
        "-e",
        "REGISTRY_AUTH=htpasswd",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_REALM=sandbox-test",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd",
        "-v",
        &format!("{}:/auth:ro", auth.display()),
        "sandbox-offline/registry:2.8.2",
    ]);
    let host = docker_ok(&["port", &container, "5000/tcp"]);
    // it answers, and wants credentials
    crate::support::eventually(
        "the registry answers",
        std::time::Duration::from_secs(30),
        || match http_get(&format!("http://{host}/v2/")) {
            Ok((401, _)) => Ok(()),
            other => Err(format!("{other:.200?}")),
        },
    );
    let (file, _) = sb.fixture("hello");
    let config = std::fs::read_to_string(&file).unwrap()
        + &format!("cluster:\n  context: nowhere\n  registry: {host}/team\n");
    std::fs::write(&file, config).unwrap();
    let docker_config = sb.dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let login = |password: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("tester:{password}"));
        std::fs::write(
            docker_config.join("config.json"),
            serde_json::json!({"auths": {host.as_str(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
    };
    let build = || {
        sb.command(&["build", "-f", &file, "-o", "json"])
            .env("DOCKER_CONFIG", &docker_config)
            .output()
            .unwrap()
    };

    login("wrong");
    let out = build();
    let message = crate::support::failed_with(&out, 5);
    assert!(
        message.contains(&format!("pushing {host}/team/hello")) && message.contains("auth"),
        "the registry's answer: {message}"
    );

    login("s3cret");
    let out = build();
    assert_success(&out, "build with the right credentials");
    let built = json_document(&out.stdout);
    let image = &built["images"][0];
    assert!(
        image["reference"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{host}/team/hello:sandbox-")),
        "{built}"
    );
    assert_eq!(image["loaded"], true, "pushed: {built}");
}
