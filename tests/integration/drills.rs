//! Reliability drills (issue 7): `up` killed with SIGKILL at each phase, two `up`s of one
//! sandbox at once and three sandboxes side by side, a dead or silent Docker engine, the
//! node killed, restarted or removed behind sandbox's back with data on a claim, and the
//! DNS server under a soak.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    assert_success, dns_servers, eventually, http_get, json_document, kubectl, TestSandbox,
};
use crate::web::{url_of, Browser};

/// How long a phase of `up` may take to show up in its progress on a loaded machine.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);
/// What `up` says when it waits for another command's lock.
const LOCK_WAIT: &str = "another sandbox command is changing";

/// An `up` running in the background, its progress (stderr, plain lines) read as it comes.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    fn spawn(mut command: Command) -> Background {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sandbox binary runs");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads progress until a line contains `marker`; fails with what was seen when `up`
    /// ends first or the deadline passes.
    fn wait_for(&mut self, marker: &str) {
        let deadline = Instant::now() + PHASE_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(marker);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "`up` never printed {marker:?} ({e}; exit {status:?}); its progress:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// SIGKILL (`kill -9`), reaped; returns every line it printed.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        // the pipe ends with the process (the DNS server it may start logs to a file)
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        seen
    }
}

impl Drop for Background {
    /// A failing test does not leave its `up` running (holding the lock teardown needs).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last step `up` started or finished before it died, for the test's log.
fn last_step(lines: &[String]) -> String {
    lines
        .iter()
        .rev()
        .find(|l| l.contains('▸') || l.contains('✓'))
        .cloned()
        .unwrap_or_default()
}

/// `up -f FILE -o json` with its progress: requires success.
fn up_json(command: Command, what: &str) -> (Value, String) {
    let out = output(command);
    assert_success(&out, what);
    if std::env::var_os("SANDBOX_TEST_DEBUG").is_some() {
        eprintln!("--- {what}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    (
        json_document(&out.stdout),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn output(mut command: Command) -> Output {
    command.output().expect("the sandbox binary runs")
}

fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
    assert_success(&out, &format!("docker {}", args.join(" ")));
    out
}

/// Exactly one node container, one network and one data volume carry the sandbox's label.
fn assert_one_of_each(leftovers: impl Fn(&str) -> Vec<String>, name: &str, when: &str) {
    for (kind, expected) in [
        ("container", format!("sandbox-{name}-node")),
        ("network", format!("sandbox-{name}")),
        ("volume", format!("sandbox-{name}-data")),
    ] {
        assert_eq!(leftovers(kind), vec![expected], "{kind}s {when}");
    }
}

/// Deployment `name` is rolled out, as `kubectl rollout status` judges it, checked once
/// (`up` returned only once it was: no waiting here).
fn assert_rolled_out(sb: &TestSandbox, name: &str) {
    let deployment = format!("deployment/{name}");
    let out = sb.kubectl(&["rollout", "status", &deployment, "--watch=false"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("successfully rolled out"),
        "{deployment} right after up: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first environment variable of Deployment `name`'s first container.
fn first_env(sb: &TestSandbox, name: &str) -> String {
    let value = sb.kubectl(&[
        "get",
        &format!("deployment/{name}"),
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[0].value}",
    ]);
    String::from_utf8_lossy(&value.stdout).to_string()
}

/// One GET of `url` right after `up`, which must answer 200 (no retry); returns the body.
fn http_ok(url: &str) -> String {
    match http_get(url) {
        Ok((200, body)) => body,
        other => panic!("{url} right after up: {other:.200?}"),
    }
}

/// The URL of `up`'s JSON named `name` (`default/hello`).
fn url_named(up: &Value, name: &str) -> String {
    up["urls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no URL {name} in {up}"))["url"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Sets the fixture's GREETING variable (a new pod template: the Deployment rolls).
fn set_greeting(file: &str, greeting: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let start = text
        .find("GREETING: ")
        .expect("the hello fixture sets GREETING");
    let end = start + text[start..].find('\n').unwrap();
    let text = format!("{}GREETING: {greeting}{}", &text[..start], &text[end..]);
    std::fs::write(file, text).unwrap();
}

/// Adds image `name`, built from `dockerfile`, to the sandbox config `file` of `project`.
fn add_image(file: &str, project: &std::path::Path, name: &str, dockerfile: &str) {
    let context = project.join(name);
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.replacen(
        "images:\n",
        &format!("images:\n  - name: {name}\n    context: {name}\n"),
        1,
    );
    assert!(
        text.contains(&format!("name: {name}")),
        "no images: in {file}"
    );
    std::fs::write(file, text).unwrap();
}

#[test]
fn up_killed_at_each_phase_then_up_converges() {
    let started = Instant::now();
    let sb = TestSandbox::new("drills-kill");
    let (file, project) = sb.fixture("hello");
    // an image big enough to be caught loading (the add-ons' come pre-loaded in the node):
    // 90 MB, built through the engine's cache from an image the offline profile builds
    add_image(
        &file,
        &project,
        "drill-bulk",
        "FROM sandbox-offline/redis:7\n",
    );
    let node = format!("sandbox-{}-node", sb.name);
    let up = || sb.command(&["up", "-f", &file]);
    let leftovers = |kind: &str| sb.leftovers(kind);
    let after_kill = |phase: &str, lines: &[String]| {
        eprintln!(
            "drills: killed `up` {phase}; its last step: {}",
            last_step(lines)
        );
        // each `up` started after the previous one was killed: none may wait for a lock
        assert!(
            !lines.iter().any(|l| l.contains(LOCK_WAIT)),
            "a stale lock: {lines:?}"
        );
        assert_one_of_each(leftovers, &sb.name, &format!("after a kill {phase}"));
    };

    // 1. while the node container is being created: killed once the engine has it
    let mut first = Background::spawn(up());
    first.wait_for("▸ creating node");
    let state = eventually("the node container exists", Duration::from_secs(60), || {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name=^{node}$"),
            "--format",
            "{{.State}}",
        ]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state.is_empty() {
            Err("no container yet".to_string())
        } else {
            Ok(state)
        }
    });
    let lines = first.kill();
    after_kill(&format!("with the node container {state}"), &lines);

    // 2. while the node boots; this `up` first had to get past the node left by the kill
    // (a container created but never started is made again: the engine may refuse to
    // start a privileged one)
    let mut second = Background::spawn(up());
    second.wait_for("▸ waiting for node");
    let lines = second.kill();
    after_kill("while the node boots", &lines);

    // 3. while an image streams into the node (90 MB: seconds)
    let mut third = Background::spawn(up());
    third.wait_for("▸ loading drill-bulk");
    let lines = third.kill();
    after_kill("while an image loads", &lines);

    // then `up` converges on the same node: ready, loaded, applied, answering
    let mut command = up();
    command.args(["-o", "json"]);
    let (result, progress) = up_json(command, "up after the kills");
    assert!(!progress.contains(LOCK_WAIT), "a stale lock: {progress}");
    assert_eq!(
        result["node"]["created"], false,
        "the booted node is reused"
    );
    assert_one_of_each(leftovers, &sb.name, "after the converging up");
    assert_rolled_out(&sb, "hello");
    assert_eq!(first_env(&sb, "hello"), "hello from sandbox");
    assert_eq!(
        http_ok(&url_named(&result, "default/hello")).trim(),
        "hello from sandbox"
    );

    // 4. mid-apply and 5. mid-wait, each on a change that rolls the Deployment
    for (phase, marker, greeting) in [
        ("mid-apply", "▸ applying ", "drill mid-apply"),
        ("mid-wait", "▸ waiting for workloads", "drill mid-wait"),
    ] {
        set_greeting(&file, greeting);
        let mut run = Background::spawn(up());
        loop {
            // "▸ applying the add-ons" comes first: the project's step counts objects
            run.wait_for(marker);
            if run.seen.last().unwrap().contains("add-ons") {
                continue;
            }
            break;
        }
        let lines = run.kill();
        after_kill(phase, &lines);
        let mut command = up();
        command.args(["-o", "json"]);
        let (result, progress) = up_json(command, &format!("up after a kill {phase}"));
        assert!(!progress.contains(LOCK_WAIT), "a stale lock: {progress}");
        assert_eq!(result["node"]["created"], false);
        assert_one_of_each(
            leftovers,
            &sb.name,
            &format!("after the up that followed {phase}"),
        );
        assert_rolled_out(&sb, "hello");
        assert_eq!(first_env(&sb, "hello"), greeting);
        http_ok(&url_named(&result, "default/hello"));
    }

    // one DNS server for this user, however many `up`s were killed
    let servers = dns_servers(&sb.dir.path().join("state"));
    assert_eq!(servers.len(), 1, "DNS servers: {servers:?}");
    eprintln!("drills: kill drill took {:?}", started.elapsed());
}

/// The token the pvc-token fixture wrote to its claim, read through its NodePort with one
/// request: `up` has returned, so it answers (after a node restart or re-creation behind
/// sandbox's back too: the pods the API shows from before the node started do not count).
fn token(up: &Value) -> String {
    let url = format!("{}token", url_named(up, "default/token"));
    match http_get(&url) {
        Ok((200, body)) if body.trim().len() == 36 => body.trim().to_string(),
        other => panic!("GET {url} right after up: {other:.300?}"),
    }
}

#[test]
fn node_restarted_killed_or_removed_behind_sandboxs_back_is_repaired_and_keeps_claim_data() {
    let started = Instant::now();
    let sb = TestSandbox::new("drills-node");
    let (file, _) = sb.fixture("pvc-token");
    let node = format!("sandbox-{}-node", sb.name);
    let up = |what: &str| up_json(sb.command(&["up", "-f", &file, "-o", "json"]), what);
    let (first, _) = up("first up");
    let written = token(&first);
    let at = |what: &str| eprintln!("drills: [{:5.1}s] {what}", started.elapsed().as_secs_f64());
    at("token written");

    // `docker restart` of the node: the cluster comes back by itself, with the data, at the
    // same URL (the Service's name through the node's published ingress port)
    docker(&["restart", &node]);
    let url = format!("{}token", url_named(&first, "default/token"));
    // no `up` in between: the cluster comes back by itself, so this one waits
    let served = eventually(
        "the token served after docker restart",
        Duration::from_secs(90),
        || match http_get(&url) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:.200?}")),
        },
    );
    assert_eq!(served.trim(), written, "after docker restart");
    at("token served after docker restart");
    let (result, _) = up("up after docker restart");
    assert_eq!(result["node"]["created"], false);
    assert_eq!(token(&result), written);
    at("up after docker restart");

    // `docker kill`: the next up starts the node again
    docker(&["kill", &node]);
    let (result, progress) = up("up after docker kill");
    assert!(progress.contains("starting stopped node"), "{progress}");
    // the containers that died with the node are started again; that is no crash loop to
    // watch for 10 s (wait::STEADY)
    assert!(
        !progress.contains("checking that it stays up"),
        "{progress}"
    );
    assert_eq!(result["node"]["created"], false);
    assert_eq!(token(&result), written, "after docker kill");
    at("up after docker kill");

    // killed again, and its HTTP port taken meanwhile (another sandbox's node would take
    // 80/443 once free): the next up makes the node again on free ports
    let before = result["ports"].clone();
    let http = before["http"].as_u64().unwrap() as u16;
    docker(&["kill", &node]);
    // the engine's proxy lets go of the port a moment after the kill: take it once free
    let taker = eventually(
        &format!("the node's HTTP port {http} is free to take"),
        Duration::from_secs(10),
        || TcpListener::bind(("127.0.0.1", http)).map_err(|e| e.to_string()),
    );
    let (result, progress) = up("up after docker kill with the node's port taken");
    assert!(
        progress.contains("was taken while it was stopped"),
        "{progress}"
    );
    assert_eq!(result["node"]["created"], true);
    assert_ne!(result["ports"]["http"], http, "{result}");
    // its other ports are kept: the API server and the URLs stay where they were
    assert_eq!(result["ports"]["api"], before["api"], "{result}");
    assert_eq!(result["ports"]["https"], before["https"], "{result}");
    assert_one_of_each(
        |k| sb.leftovers(k),
        &sb.name,
        "after the node was re-created",
    );
    assert_eq!(
        token(&result),
        written,
        "after docker kill and a port taken"
    );
    drop(taker);
    at("up after docker kill with the node's port taken");

    // `docker rm -f`: the next up creates the node again, on the same data volume
    docker(&["rm", "-f", "-v", &node]);
    let (result, _) = up("up after docker rm -f");
    assert_eq!(result["node"]["created"], true);
    assert_one_of_each(
        |k| sb.leftovers(k),
        &sb.name,
        "after the node was re-created",
    );
    assert_eq!(token(&result), written, "after docker rm -f");
    assert_rolled_out(&sb, "token");
    at("up after docker rm -f");

    // `down` keeps the data volume (persistence.rs: and `up` finds the data again); only
    // `down --purge` deletes it
    assert_success(&sb.run(&["down"]), "sandbox down");
    assert_eq!(
        sb.leftovers("volume"),
        vec![format!("sandbox-{}-data", sb.name)]
    );
    let purged = sb.run_json(&["down", "--purge"]);
    assert_eq!(
        purged["removed"]["volumes"],
        serde_json::json!([format!("sandbox-{}-data", sb.name)])
    );
    for kind in ["container", "network", "volume"] {
        assert!(
            sb.leftovers(kind).is_empty(),
            "{kind}: {:?}",
            sb.leftovers(kind)
        );
    }
    eprintln!("drills: node drill took {:?}", started.elapsed());
}

/// Another sandbox of the same user: its own name, the given directory's kubeconfig and
/// XDG dirs (so one DNS server and one CA for all). Takes no node slot of its own; torn
/// down on drop.
struct Neighbour {
    name: String,
    dir: PathBuf,
}

impl Neighbour {
    fn new(name: String, dir: &Path) -> Neighbour {
        let neighbour = Neighbour {
            name,
            dir: dir.to_path_buf(),
        };
        neighbour.teardown();
        neighbour
    }

    /// A `sandbox` command as this user, for this sandbox (as [`TestSandbox::command`]).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox"));
        cmd.arg("--name")
            .arg(&self.name)
            .args(args)
            .current_dir(self.dir.join("work"))
            .env("KUBECONFIG", self.dir.join("kube").join("config"))
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("CI", "true")
            .env_remove("SANDBOX_NAME")
            .env_remove("SANDBOX_FILE");
        crate::support::with_test_profile(&mut cmd);
        cmd
    }

    fn leftovers(&self, kind: &str) -> Vec<String> {
        let label = format!("label=dev.sandbox/sandbox={}", self.name);
        let args: Vec<&str> = match kind {
            "container" => vec!["ps", "-a", "--format", "{{.Names}}", "--filter", &label],
            "network" => vec!["network", "ls", "--format", "{{.Name}}", "--filter", &label],
            _ => vec!["volume", "ls", "--format", "{{.Name}}", "--filter", &label],
        };
        crate::support::docker_lines(&args)
    }

    fn teardown(&self) {
        let _ = self.command(&["down", "--purge"]).output();
        for kind in ["container", "network", "volume"] {
            for name in self.leftovers(kind) {
                let rm: Vec<&str> = match kind {
                    "container" => vec!["rm", "-f", "-v", &name],
                    "network" => vec!["network", "rm", &name],
                    _ => vec!["volume", "rm", "-f", &name],
                };
                let _ = Command::new("docker").args(&rm).output();
            }
        }
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::support::dump(&self.name);
        }
        self.teardown();
    }
}

#[test]
fn two_ups_at_once_are_serialised_and_three_sandboxes_live_side_by_side() {
    let started = Instant::now();
    let sb = TestSandbox::new("drills-3");
    let (file, _) = sb.fixture("hello-ingress");
    // the ingress controller is enough: three nodes already weigh on 2 cores
    let mut config = std::fs::read_to_string(&file).unwrap();
    config.push_str("addons:\n  maildev: false\n");
    std::fs::write(&file, config).unwrap();
    let b = Neighbour::new(format!("{}-b", sb.name), sb.dir.path());
    let c = Neighbour::new(format!("{}-c", sb.name), sb.dir.path());

    // 80 and 443 taken (by this test when they are free, else by someone else's node):
    // every sandbox must publish its ingress elsewhere
    let listeners: Vec<(u16, TcpListener)> = [80, 443]
        .into_iter()
        .filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok().map(|l| (p, l)))
        .collect();
    let held: Vec<u16> = listeners.iter().map(|(p, _)| *p).collect();
    eprintln!("drills: holding ports {held:?}");

    // four `up`s at once: two of the first sandbox, one of each neighbour
    let args = ["up", "-f", file.as_str(), "-o", "json"];
    let commands = [
        sb.command(&args),
        sb.command(&args),
        b.command(&args),
        c.command(&args),
    ];
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let running: Vec<_> = commands
            .into_iter()
            .map(|command| s.spawn(move || output(command)))
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        assert_success(out, &format!("up #{i}"));
    }
    let results: Vec<Value> = outputs.iter().map(|o| json_document(&o.stdout)).collect();
    let progress: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        .collect();

    // the two `up`s of one sandbox: one created the node, the other waited and reused it
    let created: Vec<bool> = results[..2]
        .iter()
        .map(|r| r["node"]["created"] == true)
        .collect();
    assert_eq!(
        created.iter().filter(|c| **c).count(),
        1,
        "created: {created:?}"
    );
    let waited = progress[..2]
        .iter()
        .filter(|p| p.contains(LOCK_WAIT))
        .count();
    assert_eq!(
        waited,
        1,
        "exactly one up waits for the other:\n{}",
        progress[..2].join("\n---\n")
    );
    assert_eq!(results[0]["ports"], results[1]["ports"]);
    assert_one_of_each(|k| sb.leftovers(k), &sb.name, "after two concurrent ups");

    // three sandboxes: their own names, no port shared; the ingress off 80/443 when they
    // are taken, which the `up` that created the node says, and the URLs show
    let creator = if created[0] { 0 } else { 1 };
    let three = [
        (&results[creator], &progress[creator]),
        (&results[2], &progress[2]),
        (&results[3], &progress[3]),
    ];
    let names = [sb.name.as_str(), b.name.as_str(), c.name.as_str()];
    let mut ports: Vec<u64> = Vec::new();
    for ((result, progress), name) in three.iter().zip(names) {
        assert_eq!(result["node"]["container"], format!("sandbox-{name}-node"));
        for kind in ["api", "http", "https"] {
            ports.push(result["ports"][kind].as_u64().unwrap());
        }
        let http = result["ports"]["http"].as_u64().unwrap();
        let https = result["ports"]["https"].as_u64().unwrap();
        assert!(!held.contains(&80) || http != 80, "{result}");
        assert!(!held.contains(&443) || https != 443, "{result}");
        if (http, https) != (80, 443) {
            let said = format!(
                "ingress is published on 127.0.0.1:{http} (http) and 127.0.0.1:{https} (https)"
            );
            assert!(progress.contains(&said), "{progress}");
        }
        let url = url_of(result, "hello");
        if https == 443 {
            assert_eq!(url, "https://hello.127.0.0.1.nip.io/");
        } else {
            assert_eq!(url, format!("https://hello.127.0.0.1.nip.io:{https}/"));
        }
    }
    let mut distinct = ports.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ports.len(), "a port is shared: {ports:?}");
    assert_one_of_each(|k| b.leftovers(k), &b.name, "side by side");
    assert_one_of_each(|k| c.leftovers(k), &c.name, "side by side");

    // all three answer: each API server is its own node, each ingress serves over HTTPS
    for ((result, _), name) in three.iter().zip(names) {
        let nodes = Command::new(kubectl())
            .args([
                "--context",
                &format!("sandbox-{name}"),
                "get",
                "nodes",
                "-o",
                "name",
            ])
            .env("KUBECONFIG", sb.kubeconfig())
            .output()
            .unwrap();
        assert_success(&nodes, "kubectl get nodes");
        assert_eq!(
            String::from_utf8_lossy(&nodes.stdout).trim(),
            format!("node/sandbox-{name}-node")
        );
        let response = Browser::of(&sb, result).get_ok(&url_of(result, "hello"));
        assert!(response.contains("hello over https"), "{response}");
    }

    drop(listeners);

    // and all three go
    for (down, name) in [
        sb.run(&["down", "--purge"]),
        output(b.command(&["down", "--purge"])),
        output(c.command(&["down", "--purge"])),
    ]
    .iter()
    .zip(names)
    {
        assert_success(down, &format!("down --purge of {name}"));
    }
    for kind in ["container", "network", "volume"] {
        for left in [sb.leftovers(kind), b.leftovers(kind), c.leftovers(kind)] {
            assert!(left.is_empty(), "{kind}s left: {left:?}");
        }
    }
    eprintln!("drills: side-by-side drill took {:?}", started.elapsed());
}

/// Runs `sandbox up -o json` of the built-in default against the engine at `docker_host`:
/// (exit code, stderr, the `Error` document, seconds taken).
fn up_against(sb: &Neighbour, docker_host: &str) -> (Option<i32>, String, Value, f64) {
    let start = Instant::now();
    let out = output({
        let mut command = sb.command(&["up", "-o", "json"]);
        command.env("DOCKER_HOST", docker_host);
        command
    });
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.code(),
        stderr,
        json_document(&out.stdout),
        seconds,
    )
}

#[test]
fn a_dead_or_silent_docker_engine_fails_fast_with_a_hint() {
    // no node: no slot; a neighbour of a scratch directory, torn down in case a broken
    // build reached the real engine after all
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let sb = Neighbour::new(
        format!("t{}-drills-engine", std::process::id() % 100000),
        dir.path(),
    );

    // nothing at the address: the socket file is absent, or nothing listens on the port
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let absent = format!("unix://{}", dir.path().join("absent.sock").display());
    for host in [absent, format!("tcp://127.0.0.1:{closed}")] {
        let (code, stderr, error, seconds) = up_against(&sb, &host);
        assert_eq!(code, Some(3), "{stderr}");
        assert_eq!(error["exitCode"], 3);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("cannot reach the Docker engine at {host}")),
            "{message}"
        );
        assert!(
            error["hint"].as_str().unwrap().contains("DOCKER_HOST"),
            "{error}"
        );
        assert!(stderr.contains("\nhint: "), "{stderr}");
        assert!(seconds < 5.0, "{host}: {seconds:.1} s");
    }

    // something accepts connections there and never answers: fails at the handshake's
    // deadline (10 s), not after the client library's two minutes
    let silent = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let host = format!("unix://{}", silent.display());
    let (code, stderr, error, seconds) = up_against(&sb, &host);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(
        error["message"],
        format!("the Docker engine at {host} (DOCKER_HOST) did not answer within 10 s")
    );
    assert!(
        error["hint"].as_str().unwrap().contains("restart"),
        "{error}"
    );
    assert!((9.0..30.0).contains(&seconds), "{seconds:.1} s");

    // none of it touched the real engine
    for kind in ["container", "network", "volume"] {
        assert!(
            sb.leftovers(kind).is_empty(),
            "{kind}: {:?}",
            sb.leftovers(kind)
        );
    }
}

/// Queries per second of the soak.
const SOAK_RATE: u64 = 500;
/// Queries sent together every tick (500 qps in 10 ms ticks).
const SOAK_BATCH: u64 = 5;

/// The soak's query `seq`: a name with an address in one of three nip.io/sslip.io forms,
/// and the address it must resolve to.
fn soak_query(seq: u64) -> (String, std::net::Ipv4Addr) {
    let [_, _, _, _, _, x, y, z] = seq.to_be_bytes();
    let ip = std::net::Ipv4Addr::new(10, x, y, z);
    let name = match seq % 3 {
        0 => format!("q{seq}.10.{x}.{y}.{z}.nip.io."),
        1 => format!("q{seq}-10-{x}-{y}-{z}.sslip.io."),
        _ => format!("q{seq}-{:08x}.nip.io.", u32::from(ip)),
    };
    (name, ip)
}

/// The sequence number in an answered name (`q123...`).
fn soak_seq(name: &str) -> Option<u64> {
    let digits: String = name
        .strip_prefix('q')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// Kills the DNS server however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dns_server_soak_keeps_answering_without_memory_growth() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};

    let seconds: u64 = std::env::var("SANDBOX_DNS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
        .max(2);
    let warm_up = Duration::from_secs((seconds / 10).max(1));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("dns.log")).unwrap();
    // the background server's own command line (`up` starts exactly this)
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_sandbox"))
            .args(["-q", "dns", "serve", "--record", "--listen", "127.0.0.1:0"])
            .env("XDG_STATE_HOME", &state)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let address: SocketAddr = eventually(
        "the DNS server records its address",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(state.join("sandbox/dns.json"))
                .map_err(|e| e.to_string())?;
            let record: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            record["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or(text)
        },
    );

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let total = SOAK_RATE * seconds;
    // per query: micros after the start when sent (0: not yet) and when answered
    let sent_at: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
    let answered = AtomicUsize::new(0);
    let wrong = AtomicUsize::new(0);
    let slowest = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut base_rss = None;

    std::thread::scope(|s| {
        // answers: each must carry the address its name embeds
        s.spawn(|| {
            let mut buf = [0u8; 1500];
            let mut seen = vec![false; total as usize];
            while !done.load(Ordering::SeqCst) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let ok = Message::from_vec(&buf[..n]).ok().and_then(|reply| {
                    let seq = soak_seq(&reply.queries.first()?.name().to_ascii())?;
                    let expected = soak_query(seq).1;
                    let got = reply.answers.first().map(|a| a.data.clone());
                    (got == Some(RData::A(expected.into())) && !seen[seq as usize]).then_some(seq)
                });
                match ok {
                    Some(seq) => {
                        seen[seq as usize] = true;
                        let now = start.elapsed().as_micros() as u64;
                        let latency =
                            now.saturating_sub(sent_at[seq as usize].load(Ordering::SeqCst));
                        slowest.fetch_max(latency, Ordering::SeqCst);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    None => {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });

        // queries at a fixed rate, on absolute ticks (no drift); RSS every 30 s
        let tick = Duration::from_micros(1_000_000 * SOAK_BATCH / SOAK_RATE);
        let mut seq = 0;
        let mut next_sample = Duration::ZERO;
        while seq < total {
            let due = tick * (seq / SOAK_BATCH) as u32;
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            for _ in 0..SOAK_BATCH {
                let (name, _) = soak_query(seq);
                let mut query = Message::query();
                query.metadata.id = seq as u16;
                query.add_query(Query::query(
                    Name::from_ascii(&name).unwrap(),
                    RecordType::A,
                ));
                sent_at[seq as usize].store(start.elapsed().as_micros() as u64, Ordering::SeqCst);
                // a full send buffer is a lost query like any other
                let _ = socket.send(&query.to_vec().unwrap());
                seq += 1;
            }
            if base_rss.is_none() && start.elapsed() >= warm_up {
                base_rss = Some(rss_kib(pid));
            }
            if start.elapsed() >= next_sample {
                samples.push((start.elapsed().as_secs(), rss_kib(pid)));
                next_sample += Duration::from_secs(30);
            }
        }
        // stragglers: every answer in flight arrives well within two seconds on loopback
        let drained = Instant::now();
        while answered.load(Ordering::SeqCst) < total as usize
            && drained.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        done.store(true, Ordering::SeqCst);
    });

    let end_rss = rss_kib(pid);
    let base_rss = base_rss.expect("the soak outlasts its warm-up");
    let answered = answered.into_inner() as u64;
    let lost = total - answered;
    let report = format!(
        "{total} queries in {seconds} s: {answered} answered, {lost} lost, {} wrong, slowest {} ms; \
         RSS {base_rss} KiB after {warm_up:?} of warm-up, {end_rss} KiB at the end; samples (s, KiB): {samples:?}",
        wrong.load(Ordering::SeqCst),
        slowest.load(Ordering::SeqCst) / 1000,
    );
    eprintln!("drills: DNS soak: {report}");
    assert_eq!(wrong.into_inner(), 0, "{report}");
    // UDP may drop a datagram when the server is descheduled long enough for its socket
    // buffer to fill (2 shared cores, nodes booting next to it): allow one in a thousand;
    // a server that stops answering loses them all
    assert!(lost * 1000 <= total, "{report}");
    assert!(end_rss * 10 < base_rss * 11, "RSS grew over 10%: {report}");
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the DNS server exited: {report}"
    );
}
