//! BuildKit builds through the engine's API (the engine `./install.sh` starts has BuildKit
//! on): a cache mount kept from one build to the next, secrets served from a file and from
//! a variable and found nowhere in the image, progress streamed, the failing step's line;
//! and the classic builder when `DOCKER_BUILDKIT=0` asks for it, which refuses secrets.

use std::path::Path;
use std::process::Output;

use crate::support::{assert_success, docker_ok, failed_with, json_document, TestSandbox};

const DOCKERFILE: &str = "FROM sandbox-offline/busybox:1.35
COPY stamp /stamp
RUN --mount=type=cache,target=/cache,id=CACHE cat /stamp >> /cache/log && cp /cache/log /log
RUN --mount=type=secret,id=token,required=true sha256sum /run/secrets/token | cut -c1-64 > /token.sha256
RUN --mount=type=secret,id=other,required=true wc -c < /run/secrets/other > /other.len
";

/// `sandbox build -v -o json` of `file`, with `env`.
fn build(sb: &TestSandbox, file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = sb.command(&["build", "-v", "-f", file.to_str().unwrap(), "-o", "json"]);
    command
        .env_remove("DOCKER_BUILDKIT")
        .env_remove("BUILDKIT_TEST_OTHER");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the sandbox binary runs")
}

/// The reference of the one image a build made.
fn reference(out: &Output) -> String {
    assert_success(out, "sandbox build");
    json_document(&out.stdout)["images"][0]["reference"]
        .as_str()
        .unwrap_or_else(|| panic!("no image reference: {out:?}"))
        .to_string()
}

#[test]
fn buildkit_serves_cache_mounts_and_secrets_and_classic_stays_a_fallback() {
    let sb = TestSandbox::new("buildkit");
    let project = sb.cwd().join("bk");
    let app = project.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let file = project.join("sandbox.yaml");
    let image = format!("sandbox-test/bk-{}", sb.name);
    let config = format!(
        "apiVersion: sandbox.dev/v1alpha1\nkind: Sandbox\nimages:\n  - name: {image}\n    \
         context: app\n    secrets:\n      fromFile: {{token: token.txt}}\n      \
         fromEnv: {{other: BUILDKIT_TEST_OTHER}}\n"
    );
    std::fs::write(&file, &config).unwrap();
    // a value found nowhere else: not in the Dockerfile, the config or the context
    let token = format!("tok-{}-{}", sb.name, std::process::id());
    std::fs::write(project.join("token.txt"), &token).unwrap();
    let dockerfile = DOCKERFILE.replace("CACHE", &sb.name);
    std::fs::write(app.join("Dockerfile"), &dockerfile).unwrap();
    std::fs::write(app.join("stamp"), "first\n").unwrap();
    let other_value = format!("other-{token}");
    let other = [("BUILDKIT_TEST_OTHER", other_value.as_str())];
    let read = |reference: &str, path: &str| {
        docker_ok(&["run", "--rm", "--entrypoint", "cat", reference, path])
    };

    // the first build: BuildKit's progress streamed as `#N` lines, secrets served
    let out = build(&sb, &file, &other);
    let first = reference(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[stage-0 3/5] RUN --mount=type=cache") && stderr.contains(" DONE "),
        "no BuildKit progress: {stderr}"
    );
    assert_eq!(read(&first, "/log"), "first");
    let expected = {
        let out = std::process::Command::new("sha256sum")
            .arg(project.join("token.txt"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    assert_eq!(read(&first, "/token.sha256"), expected);
    assert_eq!(read(&first, "/other.len"), other_value.len().to_string());

    // a change to the context reruns the step, and the cache mount kept the first run's file
    std::fs::write(app.join("stamp"), "second\n").unwrap();
    let second = reference(&build(&sb, &file, &other));
    assert_ne!(second, first);
    assert_eq!(read(&second, "/log"), "first\nsecond");

    // the secrets are in no layer and no history of the image
    let saved = std::process::Command::new("docker")
        .args(["save", &second])
        .output()
        .unwrap();
    assert_success(&saved, "docker save");
    let found = |value: &str| {
        saved
            .stdout
            .windows(value.len())
            .any(|w| w == value.as_bytes())
    };
    assert!(!found(&token), "the token is in the saved image");
    assert!(!found(&other_value), "the variable is in the saved image");

    // an unset variable is named before anything is built
    let message = failed_with(&build(&sb, &file, &[]), 2);
    assert!(
        message.contains("build secret other") && message.contains("BUILDKIT_TEST_OTHER"),
        "{message}"
    );
    // secrets with the classic builder asked for
    let message = failed_with(&build(&sb, &file, &[other[0], ("DOCKER_BUILDKIT", "0")]), 2);
    assert!(message.contains("need BuildKit"), "{message}");

    // a failing step: its line in the Dockerfile, its output in the message
    std::fs::write(
        app.join("Dockerfile"),
        format!("{dockerfile}RUN echo about to fail && exit 3\n"),
    )
    .unwrap();
    let out = build(&sb, &file, &other);
    let message = failed_with(&out, 5);
    assert!(
        message.contains("Dockerfile:6") && message.contains("exit code: 3"),
        "{message}"
    );
    assert!(message.contains("about to fail"), "{message}");

    // the classic builder, asked for, builds what needs no BuildKit
    std::fs::write(&file, config.split("    secrets:").next().unwrap()).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        "FROM sandbox-offline/busybox:1.35\nCOPY stamp /stamp\n",
    )
    .unwrap();
    let out = build(&sb, &file, &[("DOCKER_BUILDKIT", "0")]);
    let classic = reference(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Step 2/3 : COPY stamp /stamp"), "{stderr}");
    assert!(!stderr.contains("no BuildKit"), "{stderr}");
    assert_eq!(read(&classic, "/stamp"), "second");

    for reference in [&first, &second, &classic] {
        docker_ok(&["rmi", "-f", reference]);
    }
}
