//! BuildKit builds through the engine's API, as `docker build` does with BuildKit: `POST
//! /build?version=2&session=ID` carries the context and streams BuildKit's progress, and
//! a session (`POST /session`, upgraded to HTTP/2, where the engine is the gRPC client and
//! we are the server) answers the builder's calls back for build secrets.
//!
//! The wire formats are small enough to speak by hand: the progress is a protobuf
//! `StatusResponse` (moby/buildkit `api/services/control/control.proto`) in base64 in the
//! `aux` of `moby.buildkit.trace` messages, and the session serves two unary gRPC methods
//! (`grpc.health.v1.Health/Check`, `moby.buildkit.secrets.v1.Secrets/GetSecret`). Doing it
//! here keeps tonic and prost (and their build time) out of the crate; the decoder is
//! fuzzed (`fuzz/fuzz_targets/buildkit_status.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::docker::{Dial, DockerError};

/// Which builder the engine runs a build with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// BuildKit (`Builder-Version: 2` in the engine's `_ping`).
    BuildKit,
    /// The classic builder.
    Classic,
}

/// The builder for an engine whose `_ping` says `builder_version`, with `DOCKER_BUILDKIT`
/// set to `forced` (as the docker CLI reads it: `0`/`false` forces the classic builder,
/// `1`/`true` BuildKit). `Err` when BuildKit is forced on an engine that lacks it, or the
/// variable is not a boolean.
pub fn choose(builder_version: Option<&str>, forced: Option<&str>) -> Result<Builder, String> {
    let engine_has = engine_has_buildkit(builder_version);
    match forced.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(if engine_has {
            Builder::BuildKit
        } else {
            Builder::Classic
        }),
        Some("0" | "false") => Ok(Builder::Classic),
        Some("1" | "true") if engine_has => Ok(Builder::BuildKit),
        Some("1" | "true") => Err(
            "DOCKER_BUILDKIT=1, but the engine has no BuildKit (its _ping has no \
             `Builder-Version: 2`); turn it on with {\"features\": {\"buildkit\": true}} \
             in its daemon.json, or unset DOCKER_BUILDKIT"
                .to_string(),
        ),
        Some(other) => Err(format!(
            "DOCKER_BUILDKIT={other:?} is neither 0 nor 1 (nor true/false)"
        )),
    }
}

/// Whether an engine whose `_ping` says `builder_version` has BuildKit.
pub fn engine_has_buildkit(builder_version: Option<&str>) -> bool {
    builder_version.map(str::trim) == Some("2")
}

/// A new session id: 25 random base-36 characters, as BuildKit's `identity.NewID`.
pub fn session_id() -> String {
    let mut bytes = [0u8; 25];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system has randomness");
    bytes
        .iter()
        .map(|b| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[usize::from(*b) % 36]))
        .collect()
}

// --- protobuf, the little of it used here --------------------------------------------------

/// A protobuf message that is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

/// One field of a protobuf message: its number and its value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(DecodeError("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError("varint longer than 10 bytes"))
}

/// The fields of a message, in wire order.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u64, Value<'_>), DecodeError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let field = (|| {
            let key = varint(&mut buf)?;
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut buf)?),
                1 | 5 => {
                    let n = if key & 7 == 1 { 8 } else { 4 };
                    if buf.len() < n {
                        return Err(DecodeError("truncated fixed-width field"));
                    }
                    buf = &buf[n..];
                    Value::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?)
                        .map_err(|_| DecodeError("length out of range"))?;
                    if buf.len() < len {
                        return Err(DecodeError("truncated length-delimited field"));
                    }
                    let (bytes, rest) = buf.split_at(len);
                    buf = rest;
                    Value::Bytes(bytes)
                }
                _ => return Err(DecodeError("unknown wire type")),
            };
            Ok((key >> 3, value))
        })();
        if field.is_err() {
            buf = &[];
        }
        Some(field)
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `google.protobuf.Timestamp`, in seconds.
fn timestamp(bytes: &[u8]) -> Result<f64, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    for field in fields(bytes) {
        match field? {
            // int64 and int32 are two's complement in a varint
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    Ok(seconds as f64 + nanos as f64 / 1e9)
}

/// One step of a build (`Vertex`), as far as the progress shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vertex {
    /// Its digest: the key the logs refer to.
    pub digest: String,
    /// What it is (`[stage-0 2/3] RUN make`).
    pub name: String,
    /// Its result came from the cache.
    pub cached: bool,
    /// When it started, in seconds since the epoch.
    pub started: Option<f64>,
    /// When it completed.
    pub completed: Option<f64>,
    /// Why it failed.
    pub error: String,
}

/// Output of a step's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VertexLog {
    /// The step's digest.
    pub vertex: String,
    /// Bytes it wrote.
    pub msg: Vec<u8>,
}

/// One `StatusResponse`: steps that changed and their output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Steps, as they are now.
    pub vertexes: Vec<Vertex>,
    /// Output.
    pub logs: Vec<VertexLog>,
}

/// Decodes a `StatusResponse`.
pub fn decode_status(bytes: &[u8]) -> Result<Status, DecodeError> {
    let mut status = Status::default();
    for field in fields(bytes) {
        match field? {
            (1, Value::Bytes(v)) => status.vertexes.push(decode_vertex(v)?),
            (3, Value::Bytes(l)) => {
                let mut log = VertexLog::default();
                for field in fields(l) {
                    match field? {
                        (1, Value::Bytes(b)) => log.vertex = text(b),
                        (4, Value::Bytes(b)) => log.msg = b.to_vec(),
                        _ => {}
                    }
                }
                status.logs.push(log);
            }
            _ => {}
        }
    }
    Ok(status)
}

fn decode_vertex(bytes: &[u8]) -> Result<Vertex, DecodeError> {
    let mut vertex = Vertex::default();
    for field in fields(bytes) {
        match field? {
            (1, Value::Bytes(b)) => vertex.digest = text(b),
            (3, Value::Bytes(b)) => vertex.name = text(b),
            (4, Value::Varint(v)) => vertex.cached = v != 0,
            (5, Value::Bytes(b)) => vertex.started = Some(timestamp(b)?),
            (6, Value::Bytes(b)) => vertex.completed = Some(timestamp(b)?),
            (7, Value::Bytes(b)) => vertex.error = text(b),
            _ => {}
        }
    }
    Ok(vertex)
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A length-delimited field `number` holding `bytes`.
fn put_bytes(out: &mut BytesMut, number: u64, bytes: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

// --- progress ------------------------------------------------------------------------------

/// Turns BuildKit's status messages into lines, as `docker build --progress=plain` prints
/// them: `#3 [2/3] RUN make`, `#3 0.412 compiling`, `#3 DONE 1.2s`, `#3 CACHED`,
/// `#3 ERROR: ...`.
#[derive(Debug, Default)]
pub struct Progress {
    /// Each step's number (in the order first printed) and what was printed of it.
    steps: HashMap<String, Step>,
    /// Numbers given so far.
    numbered: usize,
    /// The name of the step that failed.
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct Step {
    number: usize,
    started: bool,
    ended: bool,
    /// Output after the last newline.
    partial: Vec<u8>,
}

/// A line for the step label: the step's name, when it is one of the Dockerfile's.
pub fn is_instruction(name: &str) -> bool {
    name.starts_with('[') && !name.starts_with("[internal]")
}

impl Progress {
    /// The lines `status` adds, in order: steps that start, then output, then steps that
    /// end (their output was written before the end that comes with it).
    pub fn lines(&mut self, status: &Status) -> Vec<String> {
        let mut out = Vec::new();
        let shown = |v: &Vertex| v.started.is_some() || v.cached || !v.error.is_empty();
        for v in status.vertexes.iter().filter(|v| shown(v)) {
            let step = self.step(&v.digest);
            if !step.started {
                step.started = true;
                out.push(format!("#{} {}", step.number, v.name));
            }
        }
        for log in &status.logs {
            let step = self.step(&log.vertex);
            step.partial.extend_from_slice(&log.msg);
            while let Some(i) = step.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = step.partial.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line[..i]);
                let line = line.trim_end_matches('\r');
                out.push(format!("#{} {line}", step.number));
            }
        }
        for v in status.vertexes.iter().filter(|v| shown(v)) {
            let step = self.step(&v.digest);
            let n = step.number;
            if step.ended {
                continue;
            }
            if !v.error.is_empty() {
                step.ended = true;
                flush(step, &mut out);
                out.push(format!("#{n} ERROR: {}", v.error));
                self.failed = Some(v.name.clone());
            } else if v.cached {
                step.ended = true;
                out.push(format!("#{n} CACHED"));
            } else if let (Some(start), Some(end)) = (v.started, v.completed) {
                step.ended = true;
                flush(step, &mut out);
                out.push(format!("#{n} DONE {:.1}s", (end - start).max(0.0)));
            }
        }
        out
    }

    /// The step of `digest`, numbered now if it was not yet.
    fn step(&mut self, digest: &str) -> &mut Step {
        let step = self.steps.entry(digest.to_string()).or_default();
        if step.number == 0 {
            self.numbered += 1;
            step.number = self.numbered;
        }
        step
    }

    /// The name of the step that failed (`[stage-0 2/3] RUN make`), if one did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

/// Prints what is left of a step's output without a newline.
fn flush(step: &mut Step, out: &mut Vec<String>) {
    if !step.partial.is_empty() {
        let line = String::from_utf8_lossy(&step.partial).into_owned();
        out.push(format!("#{} {line}", step.number));
        step.partial.clear();
    }
}

/// The Dockerfile instruction of a BuildKit step's name: `[stage-0 2/3] RUN make` is
/// `RUN make`.
pub fn instruction(name: &str) -> Option<&str> {
    is_instruction(name).then(|| name.split_once("] ").map(|(_, i)| i.trim()))?
}

// --- the build's response stream -----------------------------------------------------------

/// One JSON message of `/build`'s response.
#[derive(Debug, serde::Deserialize)]
struct Message {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    aux: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorDetail")]
    error_detail: Option<ErrorDetail>,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
}

/// What one message of the response means.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Progress.
    Status(Status),
    /// A line for the log (`Successfully tagged ...`).
    Line(String),
    /// The image built.
    ImageId(String),
    /// The build failed, with the engine's words.
    Failed(String),
    /// Nothing to show.
    Nothing,
}

/// Reads one line of `/build`'s response.
pub fn event(line: &[u8]) -> Result<Event, String> {
    use base64::Engine as _;
    let message: Message =
        serde_json::from_slice(line).map_err(|e| format!("an unreadable build message: {e}"))?;
    if let Some(text) = message
        .error_detail
        .and_then(|d| d.message)
        .or(message.error)
    {
        return Ok(Event::Failed(text));
    }
    match (message.id.as_deref(), message.aux) {
        (Some("moby.buildkit.trace"), Some(serde_json::Value::String(b64))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("a build progress message that is not base64: {e}"))?;
            decode_status(&bytes)
                .map(Event::Status)
                .map_err(|e| format!("a build progress message that is not a status: {}", e.0))
        }
        (Some("moby.image.id"), Some(aux)) => match aux.get("ID").and_then(|id| id.as_str()) {
            Some(id) => Ok(Event::ImageId(id.to_string())),
            None => Err("an image id message without an ID".to_string()),
        },
        _ => Ok(match message.stream {
            Some(s) if !s.trim().is_empty() => Event::Line(s.trim_end().to_string()),
            _ => Event::Nothing,
        }),
    }
}

/// Splits a byte stream into lines: `push` takes what arrived and returns the complete
/// lines in it.
#[derive(Debug, Default)]
pub struct Lines(BytesMut);

impl Lines {
    /// The complete lines of what arrived so far (without their newline).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.0.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.0.iter().position(|&b| b == b'\n') {
            let line = self.0.split_to(i + 1).freeze().slice(..i);
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(line);
            }
        }
        out
    }

    /// What is left without a newline at the end.
    pub fn rest(self) -> Option<Bytes> {
        (!self.0.iter().all(u8::is_ascii_whitespace)).then(|| self.0.freeze())
    }
}

// --- the session ---------------------------------------------------------------------------

/// The gRPC methods the session answers, as the engine is told in
/// `X-Docker-Expose-Session-Grpc-Method`.
pub const METHODS: [&str; 2] = [
    "/grpc.health.v1.Health/Check",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
];

/// The answer to one unary call: its message, or a gRPC status code and message.
pub fn answer(
    path: &str,
    request: &[u8],
    secrets: &BTreeMap<String, Vec<u8>>,
) -> Result<Bytes, (u32, String)> {
    let mut out = BytesMut::new();
    match path {
        // HealthCheckResponse { status: SERVING }
        "/grpc.health.v1.Health/Check" => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 1);
        }
        "/moby.buildkit.secrets.v1.Secrets/GetSecret" => {
            let mut id = None;
            for field in fields(request) {
                if let (1, Value::Bytes(b)) = field.map_err(|e| (3, e.0.to_string()))? {
                    id = Some(text(b));
                }
            }
            let id = id.unwrap_or_default();
            // BuildKit reads NotFound as "no such secret": an error for `required=true`,
            // an empty mount skipped otherwise
            let value = secrets
                .get(&id)
                .ok_or_else(|| (5, format!("secret {id} not found: not in sandbox.yaml")))?;
            put_bytes(&mut out, 1, value);
        }
        _ => return Err((12, format!("{path} is not served by sandbox's session"))),
    }
    Ok(out.freeze())
}

/// The gRPC messages in a request body (each is a flag byte, a 4-byte length, the bytes).
pub fn grpc_messages(mut body: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(DecodeError("truncated gRPC message header"));
        }
        if body[0] != 0 {
            return Err(DecodeError("a compressed gRPC message"));
        }
        let len = (&body[1..5]).get_u32() as usize;
        if body.len() < 5 + len {
            return Err(DecodeError("truncated gRPC message"));
        }
        out.push(&body[5..5 + len]);
        body = &body[5 + len..];
    }
    Ok(out)
}

fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Serves the session on `io` (the upgraded `/session` connection) until the engine
/// closes it.
pub async fn serve<T>(io: T, secrets: Arc<BTreeMap<String, Vec<u8>>>) -> Result<(), h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut connection = h2::server::handshake(io).await?;
    while let Some(call) = connection.accept().await {
        let (request, respond) = call?;
        tokio::spawn(unary(request, respond, secrets.clone()));
    }
    Ok(())
}

async fn unary(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    secrets: Arc<BTreeMap<String, Vec<u8>>>,
) {
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let result = grpc_messages(&bytes)
        .map_err(|e| (13, e.0.to_string()))
        .and_then(|messages| answer(&path, messages.first().copied().unwrap_or(&[]), &secrets));
    let head = |status: Option<(u32, &str)>| {
        let mut builder = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        if let Some((code, message)) = status {
            builder = builder
                .header("grpc-status", code.to_string())
                .header("grpc-message", percent(message));
        }
        builder.body(()).expect("a valid response head")
    };
    match result {
        Ok(message) => {
            let Ok(mut stream) = respond.send_response(head(None), false) else {
                return;
            };
            let _ = stream.send_data(grpc_frame(&message), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = stream.send_trailers(trailers);
        }
        // a trailers-only response
        Err((code, message)) => {
            let _ = respond.send_response(head(Some((code, &message))), true);
        }
    }
}

/// `grpc-message` is percent-encoded outside printable ASCII.
fn percent(message: &str) -> String {
    message
        .bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// --- the requests ---------------------------------------------------------------------------

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

fn request_error(
    what: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DockerError {
    let what = what.into();
    move |source| DockerError::Request { what, source }
}

/// An HTTP/1.1 client on a new connection to the engine (upgrades allowed).
async fn connect(dial: &Dial, what: &str) -> Result<Sender, DockerError> {
    let io = dial
        .connect()
        .await
        .map_err(|e| request_error(what)(e.into()))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| request_error(what)(e.into()))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

fn post(path: &str) -> http::request::Builder {
    http::Request::post(path).header(http::header::HOST, "docker")
}

/// The `Builder-Version` header of the engine's `_ping` (`2`: BuildKit; bollard's `ping`
/// returns only the body).
pub async fn builder_version(dial: &Dial) -> Result<Option<String>, DockerError> {
    let what = "read the engine's builder version";
    let mut sender = connect(dial, what).await?;
    let request = http::Request::get("/_ping")
        .header(http::header::HOST, "docker")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| request_error(what)(e.into()))?;
    Ok(response
        .headers()
        .get("builder-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

/// Opens a session `id` on the engine that serves `secrets`; it ends when the returned
/// task is aborted or the engine closes it.
async fn session(
    dial: &Dial,
    id: &str,
    name: &str,
    secrets: Arc<BTreeMap<String, Vec<u8>>>,
) -> Result<tokio::task::JoinHandle<()>, DockerError> {
    let what = format!("start a BuildKit session for image {name}");
    let mut sender = connect(dial, &what).await?;
    let mut request = post("/session")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c")
        .header("X-Docker-Expose-Session-Uuid", id)
        .header("X-Docker-Expose-Session-Name", name)
        .header("X-Docker-Expose-Session-Sharedkey", name);
    for method in METHODS {
        request = request.header("X-Docker-Expose-Session-Grpc-Method", method);
    }
    let request = request
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|e| request_error(&what)(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| request_error(&what)(e.into()))?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = body_text(response.into_body()).await;
        return Err(request_error(&what)(
            format!("the engine answered {status}: {body}").into(),
        ));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| request_error(&what)(e.into()))?;
    Ok(tokio::spawn(async move {
        let _ = serve(hyper_util::rt::TokioIo::new(upgraded), secrets).await;
    }))
}

/// A response body as text (an error's `{"message": ...}`, its message).
async fn body_text(body: hyper::body::Incoming) -> String {
    use http_body_util::BodyExt;
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string())
}

/// A build that ran and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The engine's words.
    pub message: String,
    /// The step that failed, as BuildKit names it (`[stage-0 2/3] RUN make`).
    pub step: Option<String>,
}

/// Builds `tar` with BuildKit: `query` is `/build`'s (without `version` and `session`),
/// `secrets` are served by id, `on_line` receives each line of progress (a Dockerfile
/// step starting is `#N [stage 2/3] RUN ...`). Returns the image ID, or how it failed.
pub async fn build(
    dial: &Dial,
    name: &str,
    query: &[(&str, String)],
    tar: Vec<u8>,
    secrets: BTreeMap<String, Vec<u8>>,
    mut on_line: impl FnMut(&str),
) -> Result<Result<String, Failure>, DockerError> {
    use http_body_util::BodyExt;
    let id = session_id();
    let session = session(dial, &id, name, Arc::new(secrets)).await?;
    // the session ends with this function, however it returns
    let _session = AbortOnDrop(session);
    let what = format!("build image {name} with BuildKit");
    let mut sender = connect(dial, &what).await?;
    let mut url = form_urlencoded::Serializer::new(String::from("/build?"));
    for (key, value) in query {
        url.append_pair(key, value);
    }
    url.append_pair("version", "2").append_pair("session", &id);
    let request = post(&url.finish())
        .header(http::header::CONTENT_TYPE, "application/x-tar")
        .body(http_body_util::Full::new(Bytes::from(tar)))
        .map_err(|e| request_error(&what)(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| request_error(&what)(e.into()))?;
    if !response.status().is_success() {
        let message = body_text(response.into_body()).await;
        return Ok(Err(Failure {
            message,
            step: None,
        }));
    }
    let mut body = response.into_body();
    let mut lines = Lines::default();
    let mut progress = Progress::default();
    let mut image = None;
    let mut failed = None;
    let mut handle = |line: &[u8], on_line: &mut dyn FnMut(&str)| match event(line) {
        Ok(Event::Status(status)) => {
            for text in progress.lines(&status) {
                on_line(&text);
            }
        }
        Ok(Event::Line(text)) => on_line(&text),
        Ok(Event::ImageId(id)) => image = Some(id),
        Ok(Event::Failed(message)) => failed = Some(message),
        Ok(Event::Nothing) => {}
        // a message this version cannot read is shown, not fatal
        Err(problem) => on_line(&format!("({problem})")),
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| request_error(&what)(e.into()))?;
        if let Some(chunk) = frame.data_ref() {
            for line in lines.push(chunk) {
                handle(&line, &mut on_line);
            }
        }
    }
    if let Some(line) = lines.rest() {
        handle(&line, &mut on_line);
    }
    Ok(match (failed, image) {
        (Some(message), _) => Err(Failure {
            message,
            step: progress.failed().map(str::to_string),
        }),
        (None, Some(id)) => Ok(id),
        (None, None) => Err(Failure {
            message: "the engine reported no image ID".to_string(),
            step: progress.failed().map(str::to_string),
        }),
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn message(fields: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (n, b) in fields {
            put_bytes(&mut out, *n, b);
        }
        out.to_vec()
    }

    fn time(seconds: u64, nanos: u64) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_varint(&mut out, 1 << 3);
        put_varint(&mut out, seconds);
        put_varint(&mut out, 2 << 3);
        put_varint(&mut out, nanos);
        out.to_vec()
    }

    fn vertex(digest: &str, name: &str, extra: &[(u64, &[u8])], cached: bool) -> Vec<u8> {
        let mut fields: Vec<(u64, &[u8])> = vec![(1, digest.as_bytes()), (3, name.as_bytes())];
        fields.extend_from_slice(extra);
        let mut out = BytesMut::from(&message(&fields)[..]);
        if cached {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, 1);
        }
        out.to_vec()
    }

    #[test]
    fn the_builder_follows_the_engine_and_docker_buildkit() {
        assert_eq!(choose(Some("2"), None), Ok(Builder::BuildKit));
        assert_eq!(choose(Some("1"), None), Ok(Builder::Classic));
        assert_eq!(choose(None, None), Ok(Builder::Classic));
        assert_eq!(choose(Some("2"), Some("0")), Ok(Builder::Classic));
        assert_eq!(choose(Some("2"), Some("false")), Ok(Builder::Classic));
        assert_eq!(choose(Some("2"), Some("1")), Ok(Builder::BuildKit));
        assert_eq!(choose(Some("2"), Some("")), Ok(Builder::BuildKit));
        assert!(choose(None, Some("1")).unwrap_err().contains("daemon.json"));
        assert!(choose(Some("2"), Some("yes"))
            .unwrap_err()
            .contains("\"yes\""));
    }

    #[test]
    fn a_status_is_decoded_and_printed_as_plain_progress() {
        let (t0, t1) = (time(100, 0), time(101, 250_000_000));
        let run = "[stage-0 2/3] RUN make";
        let first = message(&[
            (
                1,
                &vertex(
                    "sha256:a",
                    "[internal] load build context",
                    &[(5, &t0)],
                    false,
                ),
            ),
            (1, &vertex("sha256:b", "[stage-0 1/3] FROM base", &[], true)),
            (1, &vertex("sha256:c", run, &[(5, &t0)], false)),
            (3, &message(&[(1, b"sha256:c"), (4, b"compil")])),
        ]);
        let second = message(&[
            (3, &message(&[(1, b"sha256:c"), (4, b"ing\r\nlinking\nha")])),
            (1, &vertex("sha256:c", run, &[(5, &t0), (6, &t1)], false)),
            (
                1,
                &vertex(
                    "sha256:a",
                    "[internal] load build context",
                    &[(5, &t0), (6, &t0)],
                    false,
                ),
            ),
        ]);
        let mut progress = Progress::default();
        let status = decode_status(&first).unwrap();
        assert_eq!(status.vertexes[2].started, Some(100.0));
        assert!(status.vertexes[1].cached);
        assert_eq!(
            progress.lines(&status),
            [
                "#1 [internal] load build context",
                "#2 [stage-0 1/3] FROM base",
                "#3 [stage-0 2/3] RUN make",
                "#2 CACHED"
            ]
        );
        assert_eq!(
            progress.lines(&decode_status(&second).unwrap()),
            [
                "#3 compiling",
                "#3 linking",
                "#3 ha",
                "#3 DONE 1.2s",
                "#1 DONE 0.0s"
            ]
        );
        assert_eq!(progress.failed(), None);
    }

    #[test]
    fn a_failed_step_is_named_with_its_instruction() {
        let t0 = time(5, 0);
        let failed = message(&[
            (3, &message(&[(1, b"sha256:c"), (4, b"no such file")])),
            (
                1,
                &vertex(
                    "sha256:c",
                    "[stage-0 2/3] RUN make",
                    &[(5, &t0), (6, &t0), (7, b"exit code: 2")],
                    false,
                ),
            ),
        ]);
        let mut progress = Progress::default();
        let lines = progress.lines(&decode_status(&failed).unwrap());
        assert_eq!(
            lines,
            [
                "#1 [stage-0 2/3] RUN make",
                "#1 no such file",
                "#1 ERROR: exit code: 2"
            ]
        );
        assert_eq!(progress.failed(), Some("[stage-0 2/3] RUN make"));
        assert_eq!(instruction("[stage-0 2/3] RUN make"), Some("RUN make"));
        assert_eq!(instruction("[internal] load metadata"), None);
        assert_eq!(instruction("copy /context /"), None);
    }

    #[test]
    fn the_response_stream_is_read_as_events() {
        let status = message(&[(1, &vertex("d", "[1/1] FROM x", &[], true))]);
        let trace = format!(
            r#"{{"id":"moby.buildkit.trace","aux":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(&status)
        );
        assert_eq!(
            event(trace.as_bytes()),
            Ok(Event::Status(decode_status(&status).unwrap()))
        );
        assert_eq!(
            event(br#"{"id":"moby.image.id","aux":{"ID":"sha256:f6"}}"#),
            Ok(Event::ImageId("sha256:f6".into()))
        );
        assert_eq!(
            event(br#"{"stream":"Successfully tagged x:1\n"}"#),
            Ok(Event::Line("Successfully tagged x:1".into()))
        );
        assert_eq!(
            event(br#"{"errorDetail":{"message":"exit code: 1"},"error":"exit code: 1"}"#),
            Ok(Event::Failed("exit code: 1".into()))
        );
        assert_eq!(event(br#"{"stream":"\n"}"#), Ok(Event::Nothing));
        assert!(event(b"{not json").is_err());
        assert!(event(br#"{"id":"moby.buildkit.trace","aux":"%%"}"#).is_err());
        assert!(event(br#"{"id":"moby.buildkit.trace","aux":"/w=="}"#).is_err());
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut lines = Lines::default();
        assert!(lines.push(b"{\"a\"").is_empty());
        assert_eq!(
            lines.push(b":1}\n\n{\"b\":2}\n{"),
            ["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(lines.rest().as_deref(), Some(&b"{"[..]));
    }

    #[test]
    fn broken_messages_are_errors_not_panics() {
        for bytes in [
            &[0x0a, 0x05, 0x01][..], // field 1, 5 bytes, 1 present
            &[0x08][..],             // varint key, no value
            &[0x0b][..],             // wire type 3
            &[0x09, 0, 0][..],       // fixed64 truncated
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ][..],
        ] {
            assert!(decode_status(bytes).is_err(), "{bytes:?}");
        }
        // unknown fields of every wire type are skipped
        let mut skip = BytesMut::new();
        put_varint(&mut skip, 9 << 3);
        put_varint(&mut skip, 7);
        skip.put_slice(&[0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1d, 1, 2, 3, 4]);
        assert_eq!(decode_status(&skip), Ok(Status::default()));
    }

    #[test]
    fn the_session_answers_health_and_secrets() {
        let secrets = BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]);
        assert_eq!(
            &answer(METHODS[0], &[], &secrets).unwrap()[..],
            &[0x08, 0x01]
        );
        let request = message(&[(1, b"token")]);
        let reply = answer(METHODS[1], &request, &secrets).unwrap();
        assert_eq!(reply, Bytes::from(message(&[(1, b"s3cret")])));
        let (code, text) = answer(METHODS[1], &message(&[(1, b"npmrc")]), &secrets).unwrap_err();
        assert_eq!(code, 5);
        assert!(text.contains("npmrc"), "{text}");
        assert_eq!(answer("/x.Y/Z", &[], &secrets).unwrap_err().0, 12);
        // framing, both ways
        let body = grpc_frame(&request);
        assert_eq!(grpc_messages(&body).unwrap(), [&request[..]]);
        assert!(grpc_messages(&body[..4]).is_err());
        assert!(grpc_messages(&[1, 0, 0, 0, 0]).is_err());
        assert_eq!(percent("not found: é%"), "not found: %C3%A9%25");
    }

    #[test]
    fn session_ids_are_base36_and_differ() {
        let (a, b) = (session_id(), session_id());
        assert_eq!(a.len(), 25);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }
}
