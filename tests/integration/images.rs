//! Images built from a real (multi-stage) Dockerfile, loaded into the node; a change to one
//! image's source rebuilds and rolls only its Deployment; no change builds, loads and rolls
//! nothing.

use serde_json::Value;

use crate::support::{assert_success, json_document, node_images, serves, TestSandbox};

fn image<'a>(up: &'a Value, name: &str) -> &'a Value {
    up["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {up}"))
}

fn url(up: &Value, service: &str) -> String {
    up["urls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == format!("default/{service}"))
        .unwrap_or_else(|| panic!("no URL for {service} in {up}"))["url"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `metadata.generation` of a Deployment and the names of its pods that are not
/// terminating.
fn rollout(sb: &TestSandbox, deploy: &str) -> (String, Vec<String>) {
    let generation = sb.kubectl(&[
        "get",
        "deploy",
        deploy,
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    let pods = sb.kubectl(&["get", "pods", "-l", &format!("app={deploy}"), "-o", "json"]);
    let pods: Value = serde_json::from_slice(&pods.stdout).expect("kubectl prints JSON");
    let mut names: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    (
        String::from_utf8_lossy(&generation.stdout).to_string(),
        names,
    )
}

#[test]
fn changed_image_rolls_only_its_deployment_and_no_change_does_nothing() {
    let sb = TestSandbox::new("rolling");
    let (file, project) = sb.fixture("rolling");
    let file = file.as_str();

    let first = sb.run_json(&["up", "-f", file]);
    serves(&url(&first, "web"), "web v1");
    serves(&url(&first, "api"), "api v1");
    let web_v1 = image(&first, "rolling-web")["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let api_v1 = image(&first, "rolling-api")["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let held = node_images(&sb);
    assert!(
        held.contains(&format!("docker.io/library/{web_v1}")),
        "{held}"
    );
    let (web_gen, web_pods) = rollout(&sb, "web");
    let (api_gen, api_pods) = rollout(&sb, "api");

    // change one source file of one image
    std::fs::write(project.join("web/www/index.html"), "web v2\n").unwrap();
    let second = sb.run_json(&["up", "-f", file]);
    let web_v2 = image(&second, "rolling-web");
    assert_ne!(
        web_v2["reference"],
        web_v1.as_str(),
        "web must get a new tag"
    );
    assert_eq!(web_v2["loaded"], true);
    let api = image(&second, "rolling-api");
    assert_eq!(api["reference"], api_v1.as_str(), "api did not change");
    assert_eq!(api["loaded"], false);
    serves(&url(&second, "web"), "web v2");
    // web rolled: new generation, its old pod replaced; api untouched
    let (web_gen2, web_pods2) = rollout(&sb, "web");
    assert_ne!(web_gen2, web_gen);
    assert!(
        web_pods2.iter().all(|p| !web_pods.contains(p)),
        "old web pods remain: {web_pods2:?}\nup: {second}\npods: {}",
        String::from_utf8_lossy(&sb.kubectl(&["get", "rs,pods", "-o", "wide"]).stdout)
    );
    assert_eq!(rollout(&sb, "api"), (api_gen, api_pods));

    // no change: nothing built anew, loaded or rolled
    let before = (rollout(&sb, "web"), node_images(&sb));
    let third = sb.run_json(&["up", "-f", file]);
    for name in ["rolling-web", "rolling-api"] {
        assert_eq!(
            image(&third, name)["reference"],
            image(&second, name)["reference"]
        );
        assert_eq!(image(&third, name)["loaded"], false);
    }
    crate::support::assert_nothing_changed(&third, "the third up");
    assert_eq!((rollout(&sb, "web"), node_images(&sb)), before);
    assert_eq!(third["unchanged"], true, "the third up: {third}");

    // a change made behind sandbox's back: the next up is a full one and undoes it
    let replicas = || {
        let out = sb.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let configured = replicas();
    assert_success(
        &sb.kubectl(&["scale", "deploy", "web", "--replicas=3"]),
        "kubectl scale",
    );
    let fourth = sb.run_json(&["up", "-f", file]);
    assert_eq!(fourth["unchanged"], false, "after kubectl scale: {fourth}");
    assert_eq!(replicas(), configured);
    // a file touched: its image's inputs changed (the build gives the same image)
    let page = project.join("web/www/index.html");
    std::fs::write(&page, std::fs::read(&page).unwrap()).unwrap();
    let fifth = sb.run_json(&["up", "-f", file]);
    assert_eq!(
        fifth["unchanged"], false,
        "after a file was rewritten: {fifth}"
    );
    assert_eq!(
        image(&fifth, "rolling-web")["reference"],
        web_v2["reference"]
    );
    crate::support::assert_nothing_changed(&fifth, "the up after a rewrite");
    assert_eq!(sb.run_json(&["up", "-f", file])["unchanged"], true);

    // the base image re-tagged (as a `docker pull` of a newer busybox does): the image
    // built from it has new inputs, and the next up is a full one that rebuilds it
    let base = format!("sandbox-test/base-{}:1", sb.name);
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert_success(&out, &format!("docker {}", args.join(" ")));
    };
    docker(&["tag", "sandbox-offline/busybox:1.35", &base]);
    let config = std::fs::read_to_string(file).unwrap().replace(
        "  - name: rolling-web\n    context: web\n",
        &format!("  - name: rolling-web\n    context: web\n    args: {{BASE: {base}}}\n"),
    );
    assert!(config.contains(&base), "{config}");
    std::fs::write(file, config).unwrap();
    sb.run_json(&["up", "-f", file]);
    let before = sb.run_json(&["up", "-f", file]);
    assert_eq!(before["unchanged"], true, "{before}");
    let newer = sb.dir.path().join("newer-base");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(
        newer.join("Dockerfile"),
        format!(
            "FROM sandbox-offline/busybox:1.35\nLABEL dev.sandbox.test={}\n",
            sb.name
        ),
    )
    .unwrap();
    docker(&["build", "-q", "-t", &base, newer.to_str().unwrap()]);
    let out = sb.run(&["up", "-f", file, "-v", "-o", "json"]);
    assert_success(&out, "up after the base image was re-tagged");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("a full up: image rolling-web has new inputs"),
        "{progress}"
    );
    let rebuilt = json_document(&out.stdout);
    assert_ne!(
        image(&rebuilt, "rolling-web")["reference"],
        image(&before, "rolling-web")["reference"],
        "built on the new base: {rebuilt}"
    );
    assert_eq!(image(&rebuilt, "rolling-api")["reference"], api_v1.as_str());
    serves(&url(&rebuilt, "web"), "web v2");

    // `sandbox load` of an image the node holds loads nothing
    let load = sb.run_json(&["load", &web_v1]);
    assert_eq!(load["images"][0]["loaded"], false);
    assert_success(&sb.run(&["build", "-f", file]), "sandbox build");
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &base])
        .output();
}
