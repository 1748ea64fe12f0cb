//! Progress bars (indicatif) and logs (tracing) on stderr, without tearing each other.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use trainer::Event;

/// Owns the bars; logs (set up by [`Ui::init_logging`]) suspend them while printing.
#[derive(Clone)]
pub struct Ui {
    multi: MultiProgress,
}

impl Ui {
    /// Bars are drawn only when stderr is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Self {
        let target = if quiet || !io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Ui { multi: MultiProgress::with_draw_target(target) }
    }

    /// Starts tracing to stderr at the level `-v` asks for (RUST_LOG wins).
    pub fn init_logging(&self, verbose: u8) {
        let default = match verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
        let multi = self.multi.clone();
        let no_color = std::env::var_os("NO_COLOR").is_some()
            || std::env::var("TERM").is_ok_and(|term| term == "dumb")
            || !io::stderr().is_terminal();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(!no_color)
            .with_target(false)
            .with_writer(move || SuspendingWriter { multi: multi.clone() })
            .try_init();
    }

    /// A callback that turns trainer events into bars.
    pub fn events(&self) -> impl FnMut(Event) + '_ {
        let mut bar: Option<ProgressBar> = None;
        move |event| match event {
            Event::PhaseStarted { label, steps } => {
                let new_bar = self.multi.add(ProgressBar::new(steps));
                new_bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                new_bar.set_prefix(label);
                new_bar.enable_steady_tick(Duration::from_millis(200));
                bar = Some(new_bar);
            }
            Event::Step => {
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            Event::PhaseFinished => {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
            // The trainer logs each epoch itself (at info level).
            Event::Epoch(_) => {}
            Event::Resumed { epochs } => {
                self.message(&format!("resuming: {} epoch(s) already done", epochs.len()));
            }
        }
    }

    /// A line for the user on stderr, above any bar.
    pub fn message(&self, text: &str) {
        self.multi.suspend(|| eprintln!("{text}"));
    }
}

/// Writes a log line with the bars cleared, then redraws them.
struct SuspendingWriter {
    multi: MultiProgress,
}

impl Write for SuspendingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.multi.suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
