//! The user's directories for sandbox, after the XDG base directory specification, and the
//! one rule every path under the home directory follows: its own variable when set
//! (`XDG_STATE_HOME`, `XDG_DATA_HOME`, `KUBECONFIG`, `DOCKER_CONFIG`), else under `HOME`,
//! else an error that says which to set. Never a shared directory such as `/tmp`, where
//! another user could plant or read the CA key, the locks or the kubeconfig.
//!
//! Each rule is a pure function over the environment ([`Vars`]) so that it is tested
//! without touching the process's own.

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment a path is resolved from: a variable's value, `None` when unset.
pub trait Vars {
    /// The value of `name`.
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The process's own environment.
pub struct ProcessVars;

impl Vars for ProcessVars {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

/// A home-relative path that cannot be resolved: `HOME` is unset, empty or relative, and
/// the path's own variable is not set either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    /// HOME's value when it is set but relative.
    pub relative_home: Option<String>,
    /// The path that needed it.
    pub path: HomePath,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.relative_home {
            None => write!(f, "HOME is not set")?,
            Some(home) => write!(f, "HOME ({home}) is not an absolute path")?,
        }
        write!(f, ", and {} ", self.path.what)?;
        if !self.path.under_home.is_empty() {
            write!(f, "(~/{}) ", self.path.under_home)?;
        }
        write!(f, "needs it: set HOME")?;
        if self.relative_home.is_some() {
            write!(f, " to an absolute path")?;
        }
        if let Some(instead) = self.path.instead {
            write!(f, ", or {instead}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PathError {}

/// A path under the home directory, and what else names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomePath {
    /// What the path is for (in messages).
    pub what: &'static str,
    /// Where it is under the home directory (empty: the home directory itself).
    pub under_home: &'static str,
    /// The variables that name it without HOME (in messages), if any.
    pub instead: Option<&'static str>,
}

/// The home directory itself, for files that have no variable of their own.
pub const HOME: HomePath = HomePath {
    what: "this command",
    under_home: "",
    instead: None,
};
/// sandbox's state directory (locks, records, the DNS server's files).
pub const STATE: HomePath = HomePath {
    what: "sandbox's state directory",
    under_home: ".local/state/sandbox",
    instead: Some("XDG_STATE_HOME"),
};
/// sandbox's data directory (the CA).
pub const DATA: HomePath = HomePath {
    what: "sandbox's data directory",
    under_home: ".local/share/sandbox",
    instead: Some("XDG_DATA_HOME"),
};
/// The kubeconfig sandbox merges its context into.
pub const KUBECONFIG: HomePath = HomePath {
    what: "the kubeconfig",
    under_home: ".kube/config",
    instead: Some("KUBECONFIG"),
};
/// The Docker CLI's configuration directory (contexts, registry credentials).
pub const DOCKER_CONFIG: HomePath = HomePath {
    what: "the Docker CLI's configuration",
    under_home: ".docker",
    instead: Some("DOCKER_CONFIG (or DOCKER_HOST, for the engine)"),
};

/// The home directory: `HOME` when set to an absolute path; else an error naming `path`,
/// the one that needed it.
pub fn home_in(vars: &dyn Vars, path: HomePath) -> Result<PathBuf, PathError> {
    let Some(home) = vars.var("HOME").filter(|h| !h.is_empty()) else {
        return Err(PathError {
            relative_home: None,
            path,
        });
    };
    let home = PathBuf::from(home);
    if home.is_relative() {
        return Err(PathError {
            relative_home: Some(home.display().to_string()),
            path,
        });
    }
    Ok(home)
}

/// The process's home directory (see [`home_in`]); its error names `path`, the one that
/// needed it ([`HOME`] for a file without a variable of its own).
pub fn home(path: HomePath) -> Result<PathBuf, PathError> {
    home_in(&ProcessVars, path)
}

/// `$<var>/sandbox` when `var` is an absolute path (the specification ignores a relative
/// one), else `$HOME/<under_home>`, else an error naming `path`.
fn xdg_in(vars: &dyn Vars, var: &str, path: HomePath) -> Result<PathBuf, PathError> {
    if let Some(dir) = vars.var(var).map(PathBuf::from).filter(|d| d.is_absolute()) {
        return Ok(dir.join("sandbox"));
    }
    Ok(home_in(vars, path)?.join(path.under_home))
}

/// State (locks): `$XDG_STATE_HOME/sandbox`, else `~/.local/state/sandbox`.
pub fn state_in(vars: &dyn Vars) -> Result<PathBuf, PathError> {
    xdg_in(vars, "XDG_STATE_HOME", STATE)
}

/// Data (the CA): `$XDG_DATA_HOME/sandbox`, else `~/.local/share/sandbox`.
pub fn data_in(vars: &dyn Vars) -> Result<PathBuf, PathError> {
    xdg_in(vars, "XDG_DATA_HOME", DATA)
}

/// The kubeconfig sandbox merges into: the first entry of `KUBECONFIG`, else
/// `~/.kube/config`.
pub fn kubeconfig_in(vars: &dyn Vars) -> Result<PathBuf, PathError> {
    if let Some(list) = vars.var("KUBECONFIG") {
        if let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()) {
            return Ok(first);
        }
    }
    Ok(home_in(vars, KUBECONFIG)?.join(KUBECONFIG.under_home))
}

/// The Docker CLI's configuration directory: `DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_in(vars: &dyn Vars) -> Result<PathBuf, PathError> {
    if let Some(dir) = vars.var("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    Ok(home_in(vars, DOCKER_CONFIG)?.join(DOCKER_CONFIG.under_home))
}

/// The process's state directory (see [`state_in`]).
pub fn state() -> Result<PathBuf, PathError> {
    state_in(&ProcessVars)
}

/// The process's data directory (see [`data_in`]).
pub fn data() -> Result<PathBuf, PathError> {
    data_in(&ProcessVars)
}

/// The process's kubeconfig (see [`kubeconfig_in`]).
pub fn kubeconfig() -> Result<PathBuf, PathError> {
    kubeconfig_in(&ProcessVars)
}

/// The process's Docker CLI configuration directory (see [`docker_config_in`]).
pub fn docker_config() -> Result<PathBuf, PathError> {
    docker_config_in(&ProcessVars)
}

/// Resolves every path a command may write (state, data, kubeconfig), so that a command
/// fails before it changes anything rather than halfway. `cli::run` calls it first; after
/// it, [`state_dir`], [`data_dir`] and [`crate::kubeconfig::user_kubeconfig_path`] resolve.
pub fn check() -> Result<(), PathError> {
    state()?;
    data()?;
    kubeconfig()?;
    Ok(())
}

/// [`state`], for callers after [`check`].
///
/// # Panics
/// When [`check`] did not pass in this process (the environment does not change after it).
pub fn state_dir() -> PathBuf {
    state()
        .unwrap_or_else(|e| panic!("paths::check passes before the state directory is used: {e}"))
}

/// [`data`], for callers after [`check`].
///
/// # Panics
/// When [`check`] did not pass in this process (the environment does not change after it).
pub fn data_dir() -> PathBuf {
    data().unwrap_or_else(|e| panic!("paths::check passes before the data directory is used: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Env(HashMap<&'static str, &'static str>);

    impl Vars for Env {
        fn var(&self, name: &str) -> Option<OsString> {
            self.0.get(name).map(OsString::from)
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> Env {
        Env(pairs.iter().copied().collect())
    }

    #[test]
    fn xdg_variables_win_over_home() {
        let vars = env(&[
            ("HOME", "/home/me"),
            ("XDG_STATE_HOME", "/xdg/state"),
            ("XDG_DATA_HOME", "/xdg/data"),
            ("KUBECONFIG", "/kube/a:/kube/b"),
            ("DOCKER_CONFIG", "/docker"),
        ]);
        assert_eq!(
            state_in(&vars).unwrap(),
            PathBuf::from("/xdg/state/sandbox")
        );
        assert_eq!(data_in(&vars).unwrap(), PathBuf::from("/xdg/data/sandbox"));
        assert_eq!(kubeconfig_in(&vars).unwrap(), PathBuf::from("/kube/a"));
        assert_eq!(docker_config_in(&vars).unwrap(), PathBuf::from("/docker"));
    }

    #[test]
    fn home_is_the_fallback() {
        let vars = env(&[("HOME", "/home/me"), ("XDG_STATE_HOME", "")]);
        assert_eq!(
            state_in(&vars).unwrap(),
            PathBuf::from("/home/me/.local/state/sandbox")
        );
        assert_eq!(
            data_in(&vars).unwrap(),
            PathBuf::from("/home/me/.local/share/sandbox")
        );
        assert_eq!(
            kubeconfig_in(&vars).unwrap(),
            PathBuf::from("/home/me/.kube/config")
        );
        assert_eq!(
            docker_config_in(&vars).unwrap(),
            PathBuf::from("/home/me/.docker")
        );
        // the specification ignores a relative XDG directory
        let relative = env(&[("HOME", "/home/me"), ("XDG_DATA_HOME", "data")]);
        assert_eq!(
            data_in(&relative).unwrap(),
            PathBuf::from("/home/me/.local/share/sandbox")
        );
    }

    #[test]
    fn without_home_each_path_says_what_to_set_and_none_is_shared() {
        for vars in [env(&[]), env(&[("HOME", "")])] {
            let e = state_in(&vars).unwrap_err();
            assert_eq!(
                e.to_string(),
                "HOME is not set, and sandbox's state directory (~/.local/state/sandbox) \
                 needs it: set HOME, or XDG_STATE_HOME"
            );
            assert!(data_in(&vars)
                .unwrap_err()
                .to_string()
                .ends_with("set HOME, or XDG_DATA_HOME"));
            assert!(kubeconfig_in(&vars)
                .unwrap_err()
                .to_string()
                .ends_with("set HOME, or KUBECONFIG"));
            assert!(docker_config_in(&vars)
                .unwrap_err()
                .to_string()
                .contains("DOCKER_CONFIG"));
        }
        // each path's own variable is enough without HOME
        let vars = env(&[
            ("XDG_STATE_HOME", "/s"),
            ("XDG_DATA_HOME", "/d"),
            ("KUBECONFIG", "/k/config"),
        ]);
        assert_eq!(state_in(&vars).unwrap(), PathBuf::from("/s/sandbox"));
        assert_eq!(data_in(&vars).unwrap(), PathBuf::from("/d/sandbox"));
        assert_eq!(kubeconfig_in(&vars).unwrap(), PathBuf::from("/k/config"));
        // an empty KUBECONFIG names no file
        assert!(kubeconfig_in(&env(&[("KUBECONFIG", "")])).is_err());
    }

    #[test]
    fn a_relative_home_is_refused() {
        let e = state_in(&env(&[("HOME", "me")])).unwrap_err();
        assert_eq!(
            e,
            PathError {
                relative_home: Some("me".into()),
                path: STATE,
            }
        );
        assert!(e
            .to_string()
            .starts_with("HOME (me) is not an absolute path, and sandbox's state directory"));
        assert!(e
            .to_string()
            .ends_with("set HOME to an absolute path, or XDG_STATE_HOME"));
        // a file without a variable of its own
        assert_eq!(
            home_in(&env(&[]), HOME).unwrap_err().to_string(),
            "HOME is not set, and this command needs it: set HOME"
        );
        assert_eq!(
            home_in(&env(&[("HOME", "/home/me")]), HOME).unwrap(),
            PathBuf::from("/home/me")
        );
    }
}
