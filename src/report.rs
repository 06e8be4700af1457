//! Progress reporting, passed down explicitly: spinners on a terminal, timestamped plain
//! lines otherwise (CI, pipes), nothing when quiet. Progress always goes to stderr so that
//! stdout carries only results (text or JSON).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `1 image`, `2 images`: a count with its noun.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

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
    items: std::sync::Mutex<Vec<Item>>,
}

/// One resource's line under a step: its last state, and its spinner on a terminal.
struct Item {
    key: String,
    state: String,
    bar: Option<ProgressBar>,
}

/// How many item lines a terminal shows under a step; the rest are counted on the step.
const SHOWN_ITEMS: usize = 12;

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
            items: Default::default(),
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

    /// Shows the state of one resource under the step (`key`, e.g. `deployment/web`). A
    /// terminal keeps a line per resource (the first [`SHOWN_ITEMS`]); plain output prints a
    /// line each time a resource's state changes, so a CI log tells what each one went
    /// through.
    pub fn item(&self, key: &str, state: &str) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let index = match items.iter().position(|i| i.key == key) {
            Some(index) if items[index].state == state => return,
            Some(index) => index,
            None => {
                let shown: Vec<&ProgressBar> =
                    items.iter().filter_map(|i| i.bar.as_ref()).collect();
                let bar = match (&self.bar, shown.len() < SHOWN_ITEMS) {
                    (Some(parent), true) => {
                        let after = shown.last().copied().unwrap_or(parent);
                        let bar = self
                            .reporter
                            .inner
                            .multi
                            .insert_after(after, ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("    {spinner:.dim} {msg}")
                                .expect("static template"),
                        );
                        bar.enable_steady_tick(Duration::from_millis(100));
                        Some(bar)
                    }
                    _ => None,
                };
                items.push(Item {
                    key: key.to_string(),
                    state: String::new(),
                    bar,
                });
                items.len() - 1
            }
        };
        let item = &mut items[index];
        item.state = state.to_string();
        match &item.bar {
            Some(bar) => bar.set_message(format!("{key}: {state}")),
            None if self.reporter.inner.mode == Mode::Plain => {
                self.reporter.line(" ", &format!("{key}: {state}"))
            }
            None => {}
        }
    }

    /// Marks one resource finished: its terminal line goes, plain output says so once.
    pub fn item_done(&self, key: &str, state: &str) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let Some(index) = items.iter().position(|i| i.key == key) else {
            if self.reporter.inner.mode == Mode::Plain {
                self.reporter.line(" ", &format!("{key}: {state}"));
            }
            return;
        };
        let item = items.remove(index);
        match item.bar {
            Some(bar) => {
                bar.finish_and_clear();
                self.reporter.inner.multi.remove(&bar);
            }
            None if self.reporter.inner.mode == Mode::Plain => {
                self.reporter.line(" ", &format!("{key}: {state}"))
            }
            None => {}
        }
    }

    fn clear_items(&self) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for item in items.drain(..) {
            if let Some(bar) = item.bar {
                bar.finish_and_clear();
                self.reporter.inner.multi.remove(&bar);
            }
        }
    }

    /// Marks the step finished with a final message.
    pub fn done(mut self, message: impl AsRef<str>) {
        self.clear_items();
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
        self.clear_items();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.reporter.inner.multi.remove(&bar);
        }
        if !self.finished && self.reporter.inner.mode == Mode::Plain && std::thread::panicking() {
            self.reporter.line("✗", "step aborted");
        }
    }
}

/// Writes `text` to stdout. A reader that has gone (`sandbox man | head -1`: a closed pipe)
/// took what it wanted: the command ends there with exit 0, as it would with the default
/// SIGPIPE, instead of the panic of `print!`. (Nothing is left half done: output is written
/// once the work is.)
pub fn stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
            std::process::exit(crate::exit::FAILURE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_name_their_noun_in_the_singular_only_for_one() {
        assert_eq!(count(0, "image"), "0 images");
        assert_eq!(count(1, "trust store"), "1 trust store");
        assert_eq!(count(2, "object"), "2 objects");
    }

    #[test]
    fn items_keep_one_line_per_resource_until_done() {
        let reporter = Reporter::new(Mode::Quiet, false);
        let step = reporter.step("waiting");
        step.item("deployment/web", "0 of 2 replicas ready");
        step.item("deployment/web", "1 of 2 replicas ready");
        step.item("job/setup", "running");
        let keys = |step: &Step| -> Vec<(String, String)> {
            let items = step.items.lock().unwrap();
            items
                .iter()
                .map(|i| (i.key.clone(), i.state.clone()))
                .collect()
        };
        assert_eq!(
            keys(&step),
            [
                ("deployment/web".into(), "1 of 2 replicas ready".into()),
                ("job/setup".into(), "running".into())
            ]
        );
        step.item_done("deployment/web", "ready");
        step.item_done("service/unknown", "ready");
        assert_eq!(keys(&step), [("job/setup".into(), "running".into())]);
        step.done("all ready");
    }
}
