//! Progress reporting, passed down explicitly: spinners on a terminal, timestamped plain
//! lines otherwise (CI, pipes), nothing when quiet. Progress always goes to stderr so that
//! stdout carries only results (text or JSON).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spinners (stderr is a terminal and `CI` is unset).
    Interactive,
    /// One timestamped line per event.
    Plain,
    /// Warnings only.
    Quiet,
}

impl Mode {
    /// Interactive on a terminal outside CI, plain otherwise; quiet when asked.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            Mode::Interactive
        } else {
            Mode::Plain
        }
    }
}

/// The reporter handed to every long operation.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    start: Instant,
    multi: MultiProgress,
    verbose: bool,
}

/// One step in progress; finish it with [`Step::done`] or drop it on failure.
pub struct Step {
    reporter: Reporter,
    bar: Option<ProgressBar>,
    started: Instant,
    finished: bool,
}

impl Reporter {
    /// A reporter in `mode`; `verbose` also shows detail lines (build output).
    pub fn new(mode: Mode, verbose: bool) -> Reporter {
        let multi = MultiProgress::with_draw_target(match mode {
            Mode::Interactive => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        });
        Reporter {
            inner: Arc::new(Inner {
                mode,
                start: Instant::now(),
                multi,
                verbose,
            }),
        }
    }

    fn line(&self, marker: &str, message: &str) {
        let elapsed = self.inner.start.elapsed().as_secs_f64();
        let text = format!("[{elapsed:6.1}s] {marker} {message}");
        match self.inner.mode {
            Mode::Interactive => {
                let _ = self.inner.multi.println(format!("{marker} {message}"));
            }
            Mode::Plain | Mode::Quiet => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            }
        }
    }

    /// Starts a step.
    pub fn step(&self, message: impl Into<String>) -> Step {
        let message = message.into();
        let bar = match self.inner.mode {
            Mode::Interactive => {
                let bar = self.inner.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                        .expect("static template"),
                );
                bar.set_message(message);
                bar.enable_steady_tick(Duration::from_millis(100));
                Some(bar)
            }
            Mode::Plain => {
                self.line("▸", &message);
                None
            }
            Mode::Quiet => None,
        };
        Step {
            reporter: self.clone(),
            bar,
            started: Instant::now(),
            finished: false,
        }
    }

    /// A notable fact (shown unless quiet).
    pub fn info(&self, message: impl AsRef<str>) {
        if self.inner.mode != Mode::Quiet {
            self.line("•", message.as_ref());
        }
    }

    /// Something the user should know even when quiet.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.line("!", message.as_ref());
    }

    /// Detail (build output lines): shown only when verbose.
    pub fn detail(&self, message: impl AsRef<str>) {
        if self.inner.verbose && self.inner.mode != Mode::Quiet {
            self.line(" ", message.as_ref());
        }
    }
}

impl Step {
    /// Updates the step's message while it runs.
    pub fn update(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None => self.reporter.detail(message),
        }
    }

    /// Marks the step finished with a final message.
    pub fn done(mut self, message: impl AsRef<str>) {
        self.finished = true;
        let secs = self.started.elapsed().as_secs_f64();
        let text = format!("{} ({secs:.1}s)", message.as_ref());
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.reporter.inner.multi.remove(&bar);
        }
        if self.reporter.inner.mode != Mode::Quiet {
            self.reporter.line("✓", &text);
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.reporter.inner.multi.remove(&bar);
        }
        if !self.finished && self.reporter.inner.mode == Mode::Plain && std::thread::panicking() {
            self.reporter.line("✗", "step aborted");
        }
    }
}
