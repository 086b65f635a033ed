//! Progress and events. Commands talk to a `Reporter`; what the user sees
//! (spinners on a terminal, plain lines in a log, JSON events) is decided
//! here, at the edge.

mod human;
mod json;

use std::io::IsTerminal;

pub use human::{Human, human_bytes};
pub use json::Json;

/// Which output stream of a machine a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How one machine's part of a command ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// It worked; what was done, in a few words.
    Done { summary: String },
    /// It failed; the error, with its causes.
    Failed { error: String },
    /// It was not attempted.
    Skipped { reason: String },
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done { .. })
    }
}

/// Receives what a long command does, machine by machine.
pub trait Reporter: Send + Sync {
    /// A machine starts a step ("creating", "provisioning packages").
    fn step(&self, machine: &str, step: &str);
    /// A line of output from a machine.
    fn line(&self, machine: &str, stream: Stream, text: &str);
    /// A machine's part of the command ended.
    fn finished(&self, machine: &str, outcome: &Outcome);
    /// A message not about one machine ("waiting for the project lock").
    fn note(&self, text: &str);
    /// The command ended; the last event.
    fn result(&self, ok: bool, outcomes: &[(String, Outcome)]);
    /// A transfer of `total` bytes (when known) begins.
    fn transfer(&self, _what: &str, _total: Option<u64>) -> Box<dyn Transfer> {
        Box::new(NoTransfer)
    }
}

/// Progress of one transfer.
pub trait Transfer {
    /// Bytes done so far.
    fn set(&self, done: u64);
    fn finish(&self);
}

struct NoTransfer;

impl Transfer for NoTransfer {
    fn set(&self, _: u64) {}
    fn finish(&self) {}
}

/// How output should look.
#[derive(Debug, Clone, Copy)]
pub struct OutputMode {
    pub json: bool,
    pub quiet: bool,
}

pub fn reporter(mode: OutputMode) -> Box<dyn Reporter> {
    if mode.json {
        Box::new(Json)
    } else {
        Box::new(Human::new(mode.quiet, std::io::stderr().is_terminal()))
    }
}

/// Styles for human output; anstream drops them where colour is off.
pub mod style {
    use anstyle::{AnsiColor, Style};

    pub const MACHINE: Style = AnsiColor::Cyan.on_default().bold();
    pub const OK: Style = AnsiColor::Green.on_default();
    pub const ERROR: Style = AnsiColor::Red.on_default().bold();
    pub const WARN: Style = AnsiColor::Yellow.on_default();
    pub const DIM: Style = Style::new().dimmed();
    pub const BOLD: Style = Style::new().bold();
}

/// Print a JSON document on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    let text = serde_json::to_string_pretty(value).expect("output serializes");
    anstream::println!("{text}");
}
