//! What the engine sends a BuildKit build: `/build`'s response lines ([`buildkit::event`],
//! base64 protobuf `StatusResponse`s in them, turned into progress lines) and the session's
//! gRPC requests ([`buildkit::grpc_messages`], [`buildkit::answer`]).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use sandbox::buildkit::{self, Event, Lines, Progress, METHODS};

fuzz_target!(|data: &[u8]| {
    let mut progress = Progress::default();
    if let Ok(status) = buildkit::decode_status(data) {
        let _ = progress.lines(&status);
    }
    let mut lines = Lines::default();
    for line in lines.push(data).into_iter().chain(lines.rest()) {
        if let Ok(Event::Status(status)) = buildkit::event(&line) {
            let _ = progress.lines(&status);
        }
    }
    let _ = progress.failed().map(buildkit::instruction);
    let secrets = BTreeMap::from([("token".to_string(), b"value".to_vec())]);
    if let Ok(messages) = buildkit::grpc_messages(data) {
        for message in messages {
            for method in METHODS {
                let _ = buildkit::answer(method, message, &secrets);
            }
        }
    }
});
