//! The commands and exit codes the docs promise (docs/guide/commands.md, docs/reference.md),
//! each run as a user runs it: on a sandbox that does not exist (exit 8 and an `Error`
//! document), on a running one (`urls`, `logs`, `status --all`, `kubeconfig --write` and
//! its exit 1, `trust` and `trust uninstall` seen by curl, `exec` passing 127 through and
//! `exec --down`), and the ones that need no sandbox (`completions`, `man`, a bad command
//! line, a closed stdout).

use std::os::unix::fs::PermissionsExt;

use std::time::Duration;

use crate::support::{assert_success, json_document, Running, TestSandbox};

#[test]
fn commands_on_a_sandbox_that_does_not_exist_exit_8() {
    let sb = TestSandbox::new("absent");
    for args in [
        &["status"][..],
        &["kubeconfig"],
        &["load", "sandbox-offline/busybox:1.35"],
        &["urls"],
        &["logs"],
    ] {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = sb.run(&all);
        let what = format!("sandbox {}", args.join(" "));
        assert_eq!(out.status.code(), Some(8), "{what}: {out:?}");
        let error = json_document(&out.stdout);
        assert_eq!(error["kind"], "Error", "{what}: {error}");
        assert_eq!(error["exitCode"], 8, "{what}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&sb.name) && message.contains("sandbox up"),
            "{what}: {message}"
        );
    }
    // interrupted (SIGINT) while it waits for the sandbox's lock, which this test holds:
    // exit 130, and still one JSON document on stdout
    let state = sb.dir.path().join("state/sandbox");
    std::fs::create_dir_all(&state).unwrap();
    let lock = std::fs::File::create(state.join(format!("{}.lock", sb.name))).unwrap();
    lock.lock().unwrap();
    let interrupt = |up: &std::process::Child| {
        assert_success(
            &std::process::Command::new("kill")
                .args(["-INT", &up.id().to_string()])
                .output()
                .unwrap(),
            "kill -INT",
        );
    };
    let (up, said) =
        crate::support::spawn_until_said(sb.command(&["up", "-o", "json"]), "waiting for it");
    interrupt(&up);
    let out = up.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{said}");
    let error = json_document(&out.stdout);
    assert_eq!(
        (error["kind"].as_str(), error["exitCode"].as_i64()),
        (Some("Error"), Some(130)),
        "{error}"
    );
    // the same with its stderr closed (the reader of a pipeline gone): it still exits 130
    // (it hung: the failed write of the message panicked, and the panic waited for the
    // lock still awaited)
    let mut up = sb
        .command(&["up", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(up.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("waiting for it") {
        let read = std::io::BufRead::read_line(&mut stderr, &mut said).unwrap();
        assert!(read > 0, "up ended before waiting for the lock: {said}");
    }
    drop(stderr);
    interrupt(&up);
    let out = up.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{said}");
    assert_eq!(json_document(&out.stdout)["exitCode"], 130);
    drop(lock);

    // nothing was created on the way
    for kind in ["container", "network", "volume"] {
        assert!(
            sb.leftovers(kind).is_empty(),
            "{kind}: {:?}",
            sb.leftovers(kind)
        );
    }

    // no sandbox needed: completions, the man page, and clap's exit 2 for a bad line
    let bash = sb.run(&["completions", "bash"]);
    assert_success(&bash, "sandbox completions bash");
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("_sandbox()") && script.contains("complete "),
        "{script:.300}"
    );
    let man = sb.run(&["man"]);
    assert_success(&man, "sandbox man");
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH sandbox 1"), "{page:.300}");
    for verb in ["up", "down", "exec", "trust", "dns"] {
        assert!(page.contains(verb), "the man page lacks {verb}");
    }
    let bad = sb.run(&["up", "--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));

    // a reader that has gone (`sandbox man | head -1`): exit 0, no panic; an error document
    // still exits with its own code
    for (args, code) in [
        (&["man"][..], 0),
        (&["completions", "bash"], 0),
        (&["status", "--all", "-o", "json"], 0),
        (&["urls", "-o", "json"], 8),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        // closed before the command writes: every write meets a closed pipe
        drop(reader);
        let out = sb.command(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "sandbox {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "sandbox {args:?}: {stderr}");
    }
}

#[test]
fn commands_on_a_running_sandbox() {
    let sb = TestSandbox::new("commands");
    let (file, _) = sb.fixture("hello");
    let file = file.as_str();
    let up = sb.run_json(&["up", "-f", file]);

    // urls: the same table as up's
    let urls = sb.run_json(&["-f", file, "urls"]);
    assert_eq!(urls["kind"], "UrlsResult", "{urls}");
    assert_eq!(urls["urls"], up["urls"], "urls vs up");
    assert_eq!(urls["apiServer"], up["apiServer"]);

    // logs of a workload: each line prefixed with its pod and container
    let logs = sb.run(&["-f", file, "logs", "deploy/hello", "--tail", "5"]);
    assert_success(&logs, "sandbox logs deploy/hello");
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.lines().all(|l| l.starts_with("[hello-")) && text.contains("/web]"),
        "{text}"
    );
    // kubectl's flags: a label selector and a duration; no previous instance is a warning
    let logs = sb.run(&[
        "-f",
        file,
        "logs",
        "-l",
        "app=hello",
        "--since",
        "1h",
        "-c",
        "web",
    ]);
    assert_success(&logs, "sandbox logs -l app=hello --since 1h");
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.lines().all(|l| l.starts_with("[hello-")), "{text}");
    let logs = sb.run(&["-f", file, "logs", "deploy/hello", "-p"]);
    assert_success(&logs, "sandbox logs -p");
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("has a previous instance"),
        "{logs:?}"
    );
    // -f follows the workload through a rollout: the new pods' lines come too (the readiness
    // probe makes busybox httpd log a request a second)
    let pods_now = || {
        let out = sb.kubectl(&["get", "pods", "-l", "app=hello", "-o", "name"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_start_matches("pod/").to_string())
            .collect::<Vec<_>>()
    };
    let before = pods_now();
    let mut follow =
        Running::spawn(sb.command(&["logs", "--file", file, "deploy/hello", "-f", "--tail", "0"]));
    follow.printed("a line of a running pod", Duration::from_secs(60), |l| {
        before.iter().any(|p| l.starts_with(&format!("[{p}/web] ")))
    });
    for args in [
        &["rollout", "restart", "deploy/hello"][..],
        &["rollout", "status", "deploy/hello", "--timeout", "120s"],
    ] {
        assert_success(&sb.kubectl(args), &format!("kubectl {args:?}"));
    }
    let line = follow.printed(
        "a line of a pod of the rollout",
        Duration::from_secs(60),
        |l| l.starts_with("[hello-") && !before.iter().any(|p| l.starts_with(&format!("[{p}/"))),
    );
    assert!(
        pods_now()
            .iter()
            .any(|p| line.starts_with(&format!("[{p}/web] "))),
        "{line}"
    );
    assert!(
        follow.child.try_wait().unwrap().is_none(),
        "-f keeps following"
    );
    drop(follow);

    // status --all: this sandbox, ready, with its add-ons
    let status = sb.run_json(&["status", "--all"]);
    let mine = status["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandbox"] == sb.name.as_str())
        .unwrap_or_else(|| panic!("{} missing from {status}", sb.name));
    assert_eq!(mine["api"], "ready", "{mine}");
    assert_eq!(mine["state"], "running", "{mine}");

    // kubeconfig --write: a private file kubectl can use on its own
    let written = sb.dir.path().join("written.kubeconfig");
    assert_success(
        &sb.run(&["kubeconfig", "--write", written.to_str().unwrap()]),
        "sandbox kubeconfig --write",
    );
    let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", written.display());
    let nodes = std::process::Command::new(crate::support::kubectl())
        .args([
            "--kubeconfig",
            written.to_str().unwrap(),
            "get",
            "nodes",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert_success(&nodes, "kubectl --kubeconfig <written> get nodes");
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).trim(),
        format!("node/sandbox-{}-node", sb.name)
    );

    // exit 1, an I/O failure: a kubeconfig to write under a path that is a file
    let blocked = sb.dir.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let under = blocked.join("config");
    let out = sb.run(&[
        "kubeconfig",
        "--write",
        under.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let error = json_document(&out.stdout);
    assert_eq!(error["exitCode"], 1, "{error}");
    assert!(
        error.to_string().contains(blocked.to_str().unwrap()),
        "the error names the path: {error}"
    );

    trust_is_what_curl_sees(&sb, &up);

    // apply builds nothing: an image never built here is a usage error (exit 2), nothing applied
    let (_, project) = sb.fixture("hello");
    let never = project.join("never-built.yaml");
    let config = std::fs::read_to_string(project.join("sandbox.yaml"))
        .unwrap()
        .replace(
            "name: hello\n    context: app",
            &format!("name: never-built-{}\n    context: app", sb.name),
        );
    assert!(config.contains("never-built-"), "{config}");
    std::fs::write(&never, config).unwrap();
    let out = sb.run(&["-f", never.to_str().unwrap(), "apply", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let error = json_document(&out.stdout);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("has never been built here"),
        "{error}"
    );

    // exec passes a command's exit code through, 127 for one that does not exist
    let missing = sb.run(&["-f", file, "exec", "--", "no-such-command-for-sandbox"]);
    assert_eq!(missing.status.code(), Some(127), "{missing:?}");

    // exec --down: the command runs against the sandbox, which is then taken down (its data
    // volume kept), whatever the command's result
    let down = sb.run(&[
        "-f",
        file,
        "exec",
        "--down",
        "--",
        "sh",
        "-c",
        "kubectl get deploy hello >/dev/null && exit 5",
    ]);
    assert_eq!(down.status.code(), Some(5), "{down:?}");
    assert!(
        sb.leftovers("container").is_empty(),
        "{:?}",
        sb.leftovers("container")
    );
    assert_eq!(
        sb.leftovers("volume"),
        [format!("sandbox-{}-data", sb.name)],
        "the data volume is kept"
    );
}

/// `curl URL` (the system's CA bundle) on the sandbox's first HTTPS URL: its exit code
/// (60: the certificate does not verify).
fn curl(sb: &TestSandbox, up: &serde_json::Value) -> Option<i32> {
    let url = up["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["url"].as_str())
        .find(|u| u.starts_with("https://"))
        .unwrap_or_else(|| panic!("no HTTPS URL in {up}"));
    let (host, port, _) = crate::web::split_url(url, "https", 443);
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(url)
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .current_dir(sb.cwd())
        .output()
        .unwrap();
    out.status.code()
}

/// `sandbox trust` puts the sandbox CA in the system store, so plain `curl` verifies the
/// sandbox's certificate; `trust uninstall` takes it out again. The system store needs
/// root (or sudo, which may ask for a password): not root, `trust` with no sudo on its PATH
/// exits 1 and names the commands to run as root.
fn trust_is_what_curl_sees(sb: &TestSandbox, up: &serde_json::Value) {
    // its own home: the NSS databases it creates are the test's
    let home = sb.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let trust = |args: &[&str], path: Option<&str>| {
        let mut command = sb.command(args);
        command.env("HOME", &home);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        command.output().unwrap()
    };
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        let out = trust(&["trust", "-o", "json"], Some("/nonexistent"));
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let error = json_document(&out.stdout);
        assert!(error["hint"].to_string().contains("run as root"), "{error}");
        eprintln!("commands: not root, so `trust` did not touch the system store");
        return;
    }
    // should this test stop halfway, the store is cleaned up all the same
    struct Uninstall<'a>(&'a dyn Fn());
    impl Drop for Uninstall<'_> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let uninstall = || {
        let _ = trust(&["trust", "uninstall"], None);
    };
    let _guard = Uninstall(&uninstall);

    assert_eq!(
        curl(sb, up),
        Some(60),
        "curl verified the sandbox CA before trust"
    );
    let out = trust(&["trust", "-o", "json"], None);
    assert_success(&out, "sandbox trust");
    let result = json_document(&out.stdout);
    assert_eq!(result["kind"], "TrustResult", "{result}");
    let system = result["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"].as_str().is_some_and(|s| s.starts_with("system")))
        .unwrap_or_else(|| panic!("no system store in {result}"));
    assert_eq!(system["result"], "installed", "{result}");
    assert_eq!(curl(sb, up), Some(0), "curl after sandbox trust");
    let again = json_document(&trust(&["trust", "-o", "json"], None).stdout);
    assert!(again.to_string().contains("already-present"), "{again}");

    let out = trust(&["trust", "uninstall", "-o", "json"], None);
    assert_success(&out, "sandbox trust uninstall");
    assert!(
        json_document(&out.stdout)
            .to_string()
            .contains("\"removed\""),
        "{out:?}"
    );
    assert_eq!(curl(sb, up), Some(60), "curl after sandbox trust uninstall");
}
