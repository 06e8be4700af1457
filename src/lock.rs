//! Serialises commands that change one sandbox (`up`, `down`) across processes with an
//! advisory file lock in the user's state directory.

use std::fs::File;
use std::path::PathBuf;

use crate::report::Reporter;

/// Errors taking the lock.
#[derive(Debug, thiserror::Error)]
#[error("cannot lock {path}")]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Held while a command changes a sandbox; released on drop.
pub struct SandboxLock {
    _file: File,
}

/// Takes sandbox `name`'s lock, waiting (and saying so) while another process holds it.
pub async fn acquire(name: &str, reporter: &Reporter) -> Result<SandboxLock, LockError> {
    let dir = crate::paths::state_dir();
    let path = dir.join(format!("{name}.lock"));
    let error = |source| LockError {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(error)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(error)?;
    match file.try_lock() {
        Ok(()) => return Ok(SandboxLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => {
            reporter.info(format!(
                "another sandbox command is changing {name}; waiting for it"
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(error(e)),
    }
    let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .expect("locking does not panic")
        .map_err(error)?;
    Ok(SandboxLock { _file: file })
}
