//! Build progress: one spinner per step with its elapsed time on a terminal, plain lines
//! otherwise (CI logs), nothing when hidden (tests that print their own summary).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Spinners when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Plain,
    Hidden,
}

/// Reports the steps of one build.
#[derive(Debug)]
pub struct Steps {
    mode: ProgressMode,
}

impl Steps {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if !std::io::stderr().is_terminal() => ProgressMode::Plain,
            m => m,
        };
        Self { mode }
    }

    /// Prints a line that is not a step (a summary, a notice).
    pub fn note(&self, text: &str) {
        tracing::info!("{text}");
        if self.mode != ProgressMode::Hidden {
            eprintln!("{text}");
        }
    }

    /// Starts a step; finish it with [`Step::done`]. Dropping it unfinished marks it failed.
    pub fn start(&self, title: &str) -> Step {
        let bar = match self.mode {
            ProgressMode::Auto => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner:.cyan} {prefix:.bold} {wide_msg:.dim} {elapsed:>4}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(title.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            ProgressMode::Plain => {
                eprintln!("==> {title}");
                None
            }
            ProgressMode::Hidden => None,
        };
        Step {
            title: title.to_string(),
            started: Instant::now(),
            bar,
            mode: self.mode,
            finished: false,
        }
    }
}

#[derive(Debug)]
pub struct Step {
    title: String,
    started: Instant,
    bar: Option<ProgressBar>,
    mode: ProgressMode,
    finished: bool,
}

impl Step {
    /// Updates the step's one-line status (e.g. the package debootstrap is unpacking).
    pub fn status(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Marks the step done, with a short result (`""` for none).
    pub fn done(mut self, result: &str) -> Duration {
        self.finished = true;
        let elapsed = self.elapsed();
        self.finish_line('✓', result, elapsed);
        tracing::info!(step = %self.title, secs = elapsed.as_secs_f64(), "{result}");
        elapsed
    }

    fn finish_line(&self, mark: char, result: &str, elapsed: Duration) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.mode == ProgressMode::Hidden {
            return;
        }
        let sep = if result.is_empty() { "" } else { ": " };
        eprintln!(
            "{mark} {}{sep}{result} ({:.1}s)",
            self.title,
            elapsed.as_secs_f64()
        );
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            self.finish_line('✗', "failed", self.elapsed());
        }
    }
}
