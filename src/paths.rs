//! The user's directories for sandbox, after the XDG base directory specification.

use std::path::PathBuf;

/// `$<var>/sandbox`, else `~/<fallback>/sandbox` (`/tmp/<fallback>/sandbox` with no HOME).
pub fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp"))
                .join(fallback)
        })
        .join("sandbox")
}

/// State (locks): `$XDG_STATE_HOME/sandbox`, else `~/.local/state/sandbox`.
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state")
}

/// Data (the CA): `$XDG_DATA_HOME/sandbox`, else `~/.local/share/sandbox`.
pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share")
}
