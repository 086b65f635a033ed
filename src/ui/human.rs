//! Output for people: a spinner per machine on a terminal, tagged lines
//! everywhere else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::style;
use super::{Outcome, Reporter, Stream, Transfer};

pub struct Human {
    quiet: bool,
    /// Present only when stderr is a terminal.
    bars: Option<(MultiProgress, Mutex<HashMap<String, ProgressBar>>)>,
}

impl Human {
    pub fn new(quiet: bool, terminal: bool) -> Self {
        let bars = (terminal && !quiet).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                Mutex::new(HashMap::new()),
            )
        });
        Self { quiet, bars }
    }

    /// Print a line above the spinners (or plainly on stderr).
    fn emit(&self, text: String) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(&text);
            }
            None => anstream::eprintln!("{text}"),
        }
    }

    fn tag(machine: &str) -> String {
        let s = style::MACHINE;
        format!("{s}{machine}{s:#}")
    }
}

impl Reporter for Human {
    fn step(&self, machine: &str, step: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some((multi, bars)) => {
                let mut bars = bars.lock().expect("bars lock");
                let bar = bars.entry(machine.to_owned()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed:.dim}")
                            .expect("static template"),
                    );
                    b.set_prefix(Self::tag(machine));
                    b.enable_steady_tick(Duration::from_millis(100));
                    b
                });
                bar.set_message(step.to_owned());
            }
            None => self.emit(format!("==> {}: {step}", Self::tag(machine))),
        }
    }

    fn line(&self, machine: &str, stream: Stream, text: &str) {
        if self.quiet {
            return;
        }
        let dim = style::DIM;
        // What a machine printed: it cannot drive the terminal.
        let text = crate::ident::shown(text);
        let body = match stream {
            Stream::Stdout => text,
            Stream::Stderr => format!("{dim}{text}{dim:#}"),
        };
        self.emit(format!("{} | {body}", Self::tag(machine)));
    }

    fn finished(&self, machine: &str, outcome: &Outcome) {
        if let Some((_, bars)) = &self.bars
            && let Some(bar) = bars.lock().expect("bars lock").remove(machine)
        {
            bar.finish_and_clear();
        }
        let (ok, err, warn) = (style::OK, style::ERROR, style::WARN);
        let text = match outcome {
            Outcome::Done { summary } if !self.quiet => {
                format!("{ok}✓{ok:#} {}: {summary}", Self::tag(machine))
            }
            Outcome::Done { .. } => return,
            Outcome::Failed { error } => {
                format!(
                    "{err}✗{err:#} {}: {}",
                    Self::tag(machine),
                    crate::ident::shown(error)
                )
            }
            Outcome::Skipped { reason } => {
                format!("{warn}-{warn:#} {}: skipped: {reason}", Self::tag(machine))
            }
        };
        self.emit(text);
    }

    fn note(&self, text: &str) {
        if !self.quiet {
            self.emit(crate::ident::shown(text));
        }
    }

    fn transfer(&self, what: &str, total: Option<u64>) -> Box<dyn Transfer> {
        if self.quiet {
            return Box::new(Lines {
                what: None,
                start: std::time::Instant::now(),
                done: Default::default(),
            });
        }
        match &self.bars {
            Some((multi, _)) => {
                let bar = multi.add(match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::new_spinner(),
                });
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_message(short(what));
                Box::new(Bar(bar))
            }
            None => {
                let size = total
                    .map(|t| format!(" ({})", human_bytes(t)))
                    .unwrap_or_default();
                self.emit(format!("downloading {what}{size}"));
                Box::new(Lines {
                    what: Some(what.to_owned()),
                    start: std::time::Instant::now(),
                    done: Default::default(),
                })
            }
        }
    }

    fn result(&self, _ok: bool, _outcomes: &[(String, Outcome)]) {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
    }
}

fn short(url: &str) -> String {
    url.rsplit('/').next().unwrap_or(url).to_owned()
}

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m as f64 {
            return format!("{:.1} {unit}", n / m as f64);
        }
    }
    format!("{n} B")
}

struct Bar(ProgressBar);

impl Transfer for Bar {
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Off a terminal: one line when it ends.
struct Lines {
    what: Option<String>,
    start: std::time::Instant,
    done: std::sync::atomic::AtomicU64,
}

impl Transfer for Lines {
    fn set(&self, done: u64) {
        self.done.store(done, std::sync::atomic::Ordering::Relaxed);
    }

    fn finish(&self) {
        if let Some(what) = &self.what {
            let secs = self.start.elapsed().as_secs_f64().max(0.001);
            let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
            anstream::eprintln!(
                "got {what}: {} in {secs:.1}s ({}/s)",
                human_bytes(done),
                human_bytes((done as f64 / secs) as u64)
            );
        }
    }
}
