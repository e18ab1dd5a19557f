//! Progress of a long command (`migrate`) on standard error: a bar redrawn
//! in place with counts and rate when that is a terminal, and a plain line
//! every few seconds otherwise (logs, CI), so neither gets a flood.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    total: u64,
    done: u64,
    records: u64,
    started: Instant,
    last: Option<Instant>,
}

/// Least time between two redraws of the bar, and between two plain lines.
const TTY_EVERY: Duration = Duration::from_millis(100);
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new() -> Self {
        Progress { tty: std::io::stderr().is_terminal(), total: 0, done: 0, records: 0, started: Instant::now(), last: None }
    }

    pub fn start(&mut self, total: u64) {
        self.total = total;
        self.started = Instant::now();
        self.line(&format!("{total} events to read"));
    }

    /// `events` more read; `records` so far.
    pub fn advance(&mut self, events: u64, records: u64) {
        self.done += events;
        self.records = records;
        let every = if self.tty { TTY_EVERY } else { LINE_EVERY };
        if self.last.is_none_or(|t| t.elapsed() >= every) {
            self.last = Some(Instant::now());
            self.draw();
        }
    }

    /// A message of its own line (the bar is redrawn after it).
    pub fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{text}");
    }

    pub fn finish(&mut self) {
        self.draw();
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }

    fn draw(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let counts = format!("{}/{} events, {} records, {rate:.0} events/s", self.done, self.total, self.records);
        let mut err = std::io::stderr().lock();
        if self.tty {
            const WIDTH: u64 = 30;
            let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH).min(WIDTH) as usize;
            let bar = format!("{}{}", "#".repeat(filled), " ".repeat(WIDTH as usize - filled));
            let _ = write!(err, "\r\x1b[2K[{bar}] {counts}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "progress: {counts}");
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
