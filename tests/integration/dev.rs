//! `sandbox dev` (issue 18), driven as a child process: an edit of the image's files
//! rebuilds and rolls (the new page served), the pods' logs stream prefixed
//! `[pod/container]`, an edit under a `sync:` rule is copied into the running containers
//! (no build, no restart) and survives the next rebuild, a broken Dockerfile is reported
//! and the next fix recovers, a `git checkout` of 50 files makes one update, and Ctrl-C
//! (SIGINT) exits 130 leaving the sandbox up. It runs with `--fast-rollout`, which a plain
//! `up` undoes. An update applies the add-ons only when they changed (here: an object of
//! theirs deleted behind sandbox's back), and once it is done every request reaches the
//! new pods.

use std::time::Duration;

use crate::support::{eventually, http_get, Running, TestSandbox};

/// Asserts that `url` answers 200 with `text` in its body, 10 requests in a row, right
/// away: once an update is done, no request reaches a pod of before (`up` waits until
/// kube-proxy's rules send the Service to the new pods only, src/proxy_rules.rs), nor a
/// container not synced into.
fn serves_at_once(url: &str, text: &str) {
    for attempt in 1..=10 {
        match http_get(url) {
            Ok((200, body)) if body.contains(text) => {}
            other => panic!("request {attempt} to {url} after the update: {other:.200?}"),
        }
    }
}

#[test]
fn dev_keeps_the_sandbox_up_to_date_as_files_change() {
    let sb = TestSandbox::new("dev");
    let (file, project) = sb.fixture("hello");
    // files under www/synced/ are synced into the running containers (writable by the
    // container's user), the rest rebuilds
    let dockerfile = project.join("app/Dockerfile");
    let good = std::fs::read_to_string(&dockerfile)
        .unwrap()
        .replace("COPY www /www", "COPY --chown=65534:65534 www /www");
    std::fs::write(&dockerfile, &good).unwrap();
    std::fs::create_dir_all(project.join("app/www/synced")).unwrap();
    std::fs::write(project.join("app/www/synced/page.txt"), "first\n").unwrap();
    let config = std::fs::read_to_string(&file).unwrap().replace(
        "    context: app\n",
        "    context: app\n    sync:\n      - {from: www/synced/, to: /www/synced/, run: 'date > /www/synced/ran.txt'}\n",
    );
    assert!(config.contains("sync:"), "{config}");
    std::fs::write(&file, config).unwrap();
    // a branch that adds 50 files, for a real `git checkout` later
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args(args)
            .current_dir(&project)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "base"]);
    git(&["checkout", "-qb", "burst"]);
    for i in 0..50 {
        std::fs::write(project.join(format!("app/www/burst-{i}.txt")), "x\n").unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "50 files"]);
    git(&["checkout", "-q", "main"]);
    assert!(!project.join("app/www/burst-0.txt").exists());
    let mut dev = Running::spawn(sb.command(&["-v", "dev", "-f", &file, "--fast-rollout"]));
    dev.said("watching", Duration::from_secs(300));
    // --fast-rollout: the Deployment rolls every new pod at once while dev runs
    let strategy = || {
        let out = sb.kubectl(&[
            "get",
            "deploy/hello",
            "-o",
            "jsonpath={.spec.strategy.rollingUpdate.maxSurge}/{.spec.strategy.rollingUpdate.maxUnavailable}",
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(strategy(), "100%/0");
    let urls = sb.run_json(&["urls", "-f", &file]);
    let url = urls["urls"][0]["url"].as_str().unwrap().to_string();
    // the NodePort by name through the ingress (http_get sends it to 127.0.0.1)
    assert!(url.starts_with("https://hello.default."), "{urls}");

    // an edit of a file of the image: rebuilt, loaded, rolled out
    let page = project.join("app/www/index.html");
    let original = std::fs::read_to_string(&page).unwrap();
    std::fs::write(&page, format!("{original}edited once\n")).unwrap();
    let line = dev.said("update 1 done", Duration::from_secs(120));
    assert!(line.contains("1 image loaded"), "{line}");
    assert!(dev
        .said("update 1:", Duration::ZERO)
        .contains("app/www/index.html"));
    serves_at_once(&url, &format!("{original}edited once"));
    // the add-ons did not change: not applied again beside the build
    let said = dev.stderr.lock().unwrap().clone();
    let update_1 = &said[said.find("update 1:").unwrap()..];
    assert!(
        update_1.contains("the add-ons are as the last up left them"),
        "{update_1}"
    );
    // one of them changed behind sandbox's back: the next update's up applies them again
    let addon = [
        "-n",
        "sandbox-system",
        "get",
        "configmap",
        "traefik-sandbox",
    ];
    let deleted = sb.kubectl(&[
        "-n",
        "sandbox-system",
        "delete",
        "configmap",
        "traefik-sandbox",
    ]);
    assert!(deleted.status.success(), "{deleted:?}");

    // the pods' logs, prefixed with the pod and container (busybox httpd -v logs requests)
    let stdout = dev.stdout.clone();
    eventually(
        "a request in the streamed logs",
        Duration::from_secs(60),
        || {
            let _ = http_get(&url);
            let logs = stdout.lock().unwrap().clone();
            match logs.lines().find(|l| l.starts_with("[hello-")) {
                Some(_) => Ok(()),
                None => Err(logs),
            }
        },
    );

    // an edit under the sync rule: copied into both running containers, then the rule's
    // command runs there; no build, no pod restarted
    let pods = || {
        let out = sb.kubectl(&[
            "-n",
            "default",
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.uid}:{.status.containerStatuses[0].restartCount} {end}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = pods();
    std::fs::write(project.join("app/www/synced/page.txt"), "synced twice\n").unwrap();
    let synced = dev.said("update 2 done", Duration::from_secs(60));
    assert!(
        synced.contains("1 file synced into 2 containers"),
        "{synced}"
    );
    let base = url.trim_end_matches('/').to_string();
    serves_at_once(&format!("{base}/synced/page.txt"), "synced twice");
    serves_at_once(&format!("{base}/synced/ran.txt"), "");
    assert_eq!(pods(), before, "the same pods, none restarted");

    // a broken Dockerfile: reported, and dev keeps watching
    std::fs::write(&dockerfile, format!("{good}RUN exit 3\n")).unwrap();
    let failed = dev.said("update 3 failed", Duration::from_secs(120));
    assert!(failed.contains("Dockerfile"), "{failed}");
    assert!(dev.child.try_wait().unwrap().is_none(), "dev keeps running");
    // the next good change recovers
    std::fs::write(&dockerfile, &good).unwrap();
    std::fs::write(&page, format!("{original}fixed\n")).unwrap();
    dev.said("update 4 done", Duration::from_secs(120));
    serves_at_once(&url, &format!("{original}fixed"));
    assert!(
        sb.kubectl(&addon).status.success(),
        "the add-ons applied again"
    );
    // the synced file was not lost: the image is built from the same files
    serves_at_once(&format!("{base}/synced/page.txt"), "synced twice");

    // a `git checkout` of a branch with 50 more files: one update
    git(&["checkout", "-q", "burst"]);
    let update = dev.said("update 5:", Duration::from_secs(30));
    assert!(
        update.contains("and 47 more"),
        "one update for the 50 files: {update}"
    );
    dev.said("update 5 done", Duration::from_secs(120));
    serves_at_once(&format!("{base}/burst-49.txt"), "x");

    // Ctrl-C: exit 130, the sandbox stays up
    let pid = dev.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = eventually("dev exits", Duration::from_secs(30), || {
        match dev.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(status.code(), Some(130), "{}", dev.stderr.lock().unwrap());
    assert!(
        !dev.stderr
            .lock()
            .unwrap()
            .lines()
            .any(|l| l.contains("update 6")),
        "no update after the burst's"
    );
    let status = sb.run_json(&["status", "-f", &file]);
    assert_eq!(status["sandboxes"][0]["state"], "running", "{status}");
    serves_at_once(&url, "fixed");
    // a plain up applies the user's strategy again (the fixture names none: the defaults)
    sb.run_json(&["up", "-f", &file]);
    assert_eq!(strategy(), "25%/25%");
}
