//! Shared support for the integration tests: unique sandbox names, an isolated kubeconfig
//! and working directory per test, a guard that tears down before and after, bounded
//! parallelism for node boots, and a failure dump.

#![allow(dead_code)]

use std::io::BufRead;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// At most this many nodes boot at once (2 cores: more only slows every test down).
const NODE_SLOTS: usize = 2;
static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test's own sandbox: unique name, private kubeconfig and working directory.
pub struct TestSandbox {
    /// Sandbox name.
    pub name: String,
    /// Private directory (kubeconfig, cwd, XDG dirs).
    pub dir: tempfile::TempDir,
    slot: bool,
}

impl TestSandbox {
    /// A new sandbox named after the test; waits for a node slot.
    pub fn new(test: &str) -> TestSandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}-{}-{}", std::process::id() % 100000, n, test)
            .chars()
            .take(40)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string();
        let mut taken = SLOTS.lock().unwrap();
        while *taken >= NODE_SLOTS {
            taken = SLOT_FREED.wait(taken).unwrap();
        }
        *taken += 1;
        drop(taken);
        let sandbox = TestSandbox {
            name,
            dir: tempfile::tempdir().expect("temp dir"),
            slot: true,
        };
        std::fs::create_dir_all(sandbox.cwd()).unwrap();
        sandbox.teardown();
        sandbox
    }

    /// The working directory commands run in (no sandbox.yaml unless a test puts one).
    pub fn cwd(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Copies `fixtures/apps/<app>` into the working directory (tests edit their copy) and
    /// returns the path of its sandbox.yaml and the copy's directory.
    pub fn fixture(&self, app: &str) -> (String, PathBuf) {
        let project = self.cwd().join(app);
        copy_dir(&root().join("fixtures/apps").join(app), &project);
        let file = project
            .join("sandbox.yaml")
            .to_str()
            .expect("UTF-8 temp path")
            .to_string();
        (file, project)
    }

    /// The test's kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kube").join("config")
    }

    /// The kube context of this sandbox.
    pub fn context(&self) -> String {
        format!("sandbox-{}", self.name)
    }

    /// A `sandbox` command with this test's name, kubeconfig and environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox"));
        // global options first: `exec -- CMD` takes everything after `--`
        cmd.arg("--name")
            .arg(&self.name)
            .args(args)
            .current_dir(self.cwd())
            .env("KUBECONFIG", self.kubeconfig())
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("CI", "true")
            .env_remove("SANDBOX_NAME")
            .env_remove("SANDBOX_FILE")
            .env_remove("SANDBOX_NAMESPACE");
        with_test_profile(&mut cmd);
        cmd
    }

    /// Runs `sandbox ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("the sandbox binary runs")
    }

    /// Runs `sandbox ARGS -o json`, requires success and parses stdout.
    pub fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all);
        assert_success(&out, &format!("sandbox {}", all.join(" ")));
        if std::env::var_os("SANDBOX_TEST_DEBUG").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        json_document(&out.stdout)
    }

    /// `kubectl --context sandbox-<name> ARGS` with this test's kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(kubectl())
            .arg("--context")
            .arg(self.context())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .expect("kubectl runs")
    }

    /// Removes every Docker object of this sandbox, whatever state it is in.
    pub fn teardown(&self) {
        let _ = self.command(&["down", "--purge"]).output();
        // the test's own DNS server (its state dir is private): `down` stops it only when
        // no sandbox at all is left on the engine
        let record = self.dir.path().join("state/sandbox/dns.json");
        if let Ok(text) = std::fs::read_to_string(&record) {
            let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = record["pid"].as_u64() {
                let _ = Command::new("kill").arg(pid.to_string()).output();
            }
        }
        let label = format!("label=dev.sandbox/sandbox={}", self.name);
        for (kind, list) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            for id in docker_lines(&list) {
                let rm: Vec<&str> = match kind {
                    "container" => vec!["rm", "-f", "-v", &id],
                    "network" => vec!["network", "rm", &id],
                    _ => vec!["volume", "rm", "-f", &id],
                };
                let _ = Command::new("docker").args(&rm).output();
            }
        }
    }

    /// Names of Docker objects of `kind` (`container`, `network`, `volume`) carrying this
    /// sandbox's label.
    pub fn leftovers(&self, kind: &str) -> Vec<String> {
        let label = format!("label=dev.sandbox/sandbox={}", self.name);
        let args: Vec<&str> = match kind {
            "container" => vec!["ps", "-a", "--format", "{{.Names}}", "--filter", &label],
            "network" => vec!["network", "ls", "--format", "{{.Name}}", "--filter", &label],
            _ => vec!["volume", "ls", "--format", "{{.Name}}", "--filter", &label],
        };
        docker_lines(&args)
    }
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump(&self.name);
        }
        self.teardown();
        if self.slot {
            *SLOTS.lock().unwrap() -= 1;
            SLOT_FREED.notify_one();
        }
    }
}

/// The non-empty lines `docker ARGS` prints.
pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The kubectl the tests use: `SANDBOX_TEST_KUBECTL`, else `kubectl` on PATH.
pub fn kubectl() -> String {
    std::env::var("SANDBOX_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

/// Prints what a failing test needs to be understood: the sandbox's containers and the
/// node's last log lines.
pub fn dump(name: &str) {
    let label = format!("label=dev.sandbox/sandbox={name}");
    let ps = Command::new("docker")
        .args(["ps", "-a", "--filter", &label])
        .output();
    if let Ok(ps) = ps {
        eprintln!(
            "--- docker ps (sandbox {name})\n{}",
            String::from_utf8_lossy(&ps.stdout)
        );
    }
    let logs = Command::new("docker")
        .args(["logs", "--tail", "30", &format!("sandbox-{name}-node")])
        .output();
    if let Ok(logs) = logs {
        eprintln!(
            "--- node logs\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }
}

/// Parses a command's `-o json` stdout: one document, which must validate against the
/// published schema (else the test fails with the schema's complaints and the document).
pub fn json_document(stdout: &[u8]) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(stdout)
        )
    });
    let found = crate::output_schema::violations(&doc);
    assert!(
        found.is_empty(),
        "stdout does not validate against schema/output.v1alpha1.schema.json:\n{}\n--- document\n{doc:#}",
        found.join("\n")
    );
    doc
}

/// Fails the test unless an `UpResult`/`ApplyResult` reports objects, none of them changed.
pub fn assert_nothing_changed(result: &serde_json::Value, what: &str) {
    let objects = result["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {result}"));
    assert!(!objects.is_empty(), "{what}: no objects reported: {result}");
    let changed: Vec<_> = objects.iter().filter(|o| o["changed"] == true).collect();
    assert!(changed.is_empty(), "{what} changed {changed:?}");
}

/// Fails the test with the command's output unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.0 GET; returns the status code and body. An `https://` URL (a Service's
/// name through the ingress) goes to 127.0.0.1, as its name resolves there, certificate not
/// verified (tests/integration/exposed.rs verifies it).
pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    if url.starts_with("https://") {
        return match ingress_get(url) {
            (0, _) => Err(std::io::Error::other(format!("{url}: no answer"))),
            answer => Ok(answer),
        };
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("not an http URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:.80}")))?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// Waits (60 s at most) until `url` answers 200 with `want` (trimmed). (`up` returns once
/// kube-proxy sends the Services to the new pods only; the dev test checks that with
/// requests right away.)
pub fn serves(url: &str, want: &str) {
    eventually(
        &format!("{url} serves {want:?}"),
        Duration::from_secs(60),
        || match http_get(url) {
            Ok((200, body)) if body.trim() == want => Ok(()),
            Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// Polls `check` until it returns `Some`, failing after `deadline` with the last
/// observation.
pub fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > deadline => {
                panic!("{what}: not true within {deadline:?}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Copies a fixture directory into `dest` (tests edit their copy, never the original).
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dest.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Pids of the background DNS servers recorded under `state` (one per user: never two).
pub fn dns_servers(state: &Path) -> Vec<u32> {
    let wanted = format!("XDG_STATE_HOME={}", state.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read =
                |file: &str| std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
            let cmdline = read("cmdline");
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(3)
                .any(|w| w[0] == b"dns" && w[1] == b"serve" && w[2] == b"--record")
                && read("environ")
                    .split(|b| *b == 0)
                    .any(|v| v == wanted.as_bytes())
        })
        .collect()
}

/// The node's image references, as its containerd lists them (`ctr images ls -q`).
pub fn node_images(sb: &TestSandbox) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            &format!("sandbox-{}-node", sb.name),
            "ctr",
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Starts `command` with its stdout and stderr piped and reads its stderr until a line holds
/// `text`; returns the child (its stderr taken) and what it said. Fails if it ends first.
/// The rest of its stderr is drained in the background (a closed pipe would fail its
/// next write).
pub fn spawn_until_said(mut command: Command, text: &str) -> (std::process::Child, String) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains(text) {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "it ended before saying {text:?}: {said}");
        said.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, said)
}

/// `docker ARGS`, which must succeed: its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert_success(&out, &format!("docker {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes a registry container's storage read-only (`a-w`: it refuses pushes) or writable
/// again (`u+w`).
pub fn registry_storage(container: &str, mode: &str) {
    docker_ok(&[
        "exec",
        "-u",
        "0",
        container,
        "chmod",
        "-R",
        mode,
        "/var/lib/registry",
    ]);
}

/// One HTTPS GET of `url` through 127.0.0.1 (a node's published ingress, whatever the
/// URL's host resolves to), the certificate not verified: status (0 when none) and body.
pub fn ingress_get(url: &str) -> (u16, String) {
    let (host, port, _) = crate::web::split_url(url, "https", 443);
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--resolve",
        ])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Asserts that a `-o json` command exited with `code` and returns its `Error` message.
pub fn failed_with(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    json_document(&out.stdout)["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no Error message on stdout: {out:?}"))
        .to_string()
}

/// The child and everything it has written so far.
pub struct Running {
    /// The process.
    pub child: std::process::Child,
    /// Its stdout so far.
    pub stdout: Arc<Mutex<String>>,
    /// Its stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let into = text.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

impl Running {
    /// Starts `command` with its stdout and stderr collected.
    pub fn spawn(mut command: std::process::Command) -> Running {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sandbox starts");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until stderr has a line containing `text`; returns that line.
    pub fn said(&mut self, text: &str, deadline: Duration) -> String {
        let stderr = self.stderr.clone();
        self.line_in(
            &stderr,
            |l| l.contains(text),
            &format!("says {text:?}"),
            deadline,
        )
    }

    /// Waits until stdout has a line for which `wanted` holds; returns that line.
    pub fn printed(
        &mut self,
        what: &str,
        deadline: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let stdout = self.stdout.clone();
        self.line_in(&stdout, wanted, what, deadline)
    }

    fn line_in(
        &mut self,
        text: &Mutex<String>,
        wanted: impl Fn(&str) -> bool,
        what: &str,
        deadline: Duration,
    ) -> String {
        let child = &mut self.child;
        eventually(what, deadline, || {
            let all = text.lock().unwrap().clone();
            if let Some(line) = all.lines().find(|l| wanted(l)) {
                return Ok(line.to_string());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the command ended ({status}) before {what}:\n{all}");
            }
            Err(all.lines().last().unwrap_or_default().to_string())
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- the command's stderr\n{}", self.stderr.lock().unwrap());
        }
    }
}

/// The suite's node profile: `SANDBOX_TEST_PROFILE` (`k3s` in .github/workflows/k3s.yml,
/// where Docker Hub is reachable), else sandbox's own choice (`offline` here). The same
/// tests run on either.
pub fn with_test_profile(cmd: &mut Command) {
    match std::env::var("SANDBOX_TEST_PROFILE") {
        Ok(profile) if !profile.is_empty() => cmd.env("SANDBOX_PROFILE", profile),
        _ => cmd.env_remove("SANDBOX_PROFILE"),
    };
}
