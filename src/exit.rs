//! Exit codes, documented in docs/reference.md (Exit codes): decided for every error in [`crate::error`].

/// Success.
pub const OK: i32 = 0;
/// An unexpected failure.
pub const FAILURE: i32 = 1;
/// Bad input: command line, environment (HOME), sandbox.yaml, manifests, unknown profile.
pub const USAGE: i32 = 2;
/// The Docker engine is unreachable or refused an operation.
pub const DOCKER: i32 = 3;
/// The node could not be created or did not become ready.
pub const NODE: i32 = 4;
/// An image failed to build or load.
pub const IMAGE: i32 = 5;
/// The API server rejected a manifest.
pub const APPLY: i32 = 6;
/// Workloads failed or were not ready in time.
pub const NOT_READY: i32 = 7;
/// The named sandbox does not exist.
pub const NOT_FOUND: i32 = 8;
/// Interrupted (Ctrl-C, SIGINT).
pub const INTERRUPTED: i32 = 130;
