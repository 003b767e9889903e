//! The demo's live terminal view: a block of lines redrawn in place every second on a terminal
//! (ANSI cursor movement), one summary line per second otherwise (a pipe, a log file, a test).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

/// One second's numbers.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub duration: Duration,
    /// What the demo is doing now ("running", "draining", …).
    pub phase: String,
    pub published: u64,
    pub ingest_per_s: f64,
    pub messages_in: u64,
    pub deduped: u64,
    pub windows: u64,
    pub refired: u64,
    pub late: u64,
    pub dead_letters: u64,
    pub outbox_records: Option<u64>,
    pub open_windows: Option<u64>,
    pub link_up: bool,
    pub uplink_connected: bool,
    pub outages: u64,
    pub delivered: usize,
    pub repeats: usize,
    pub window_results: usize,
    pub alerts: usize,
    pub by_version: [usize; 2],
    pub swap: Option<String>,
}

/// Where the view writes.
#[derive(Debug)]
pub struct View {
    tty: bool,
    /// Lines of the block last drawn (to move back over), 0 after a note.
    drawn: usize,
}

impl View {
    /// A view on stdout, with `header` printed once.
    pub fn new(header: &str) -> View {
        println!("{header}");
        View {
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
        }
    }

    /// A line that stays: on a terminal it takes the block's place, and the block is drawn
    /// again below it.
    pub fn note(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty && self.drawn > 0 {
            // Up over the block, and clear from there to the end of the screen.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
        }
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
        self.drawn = 0;
    }

    pub fn draw(&mut self, s: &Snapshot) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let lines = lines(s);
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in &lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            self.drawn = lines.len();
        } else {
            let _ = writeln!(out, "{}", line(s));
        }
        let _ = out.flush();
    }
}

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn uplink(s: &Snapshot) -> &'static str {
    match (s.link_up, s.uplink_connected) {
        (true, true) => "UP",
        (true, false) => "UP (weir reconnecting)",
        (false, _) => "DOWN",
    }
}

/// The block drawn on a terminal.
fn lines(s: &Snapshot) -> Vec<String> {
    vec![
        format!(
            "{:>4.0} s of {:.0} s   {}   sensors published {}",
            s.elapsed.as_secs_f64(),
            s.duration.as_secs_f64(),
            s.phase,
            s.published
        ),
        format!(
            "  ingest      {:>7.0} msg/s   {} taken in, {} resends dropped",
            s.ingest_per_s, s.messages_in, s.deduped
        ),
        format!(
            "  windows     {:>7} emitted   {} re-fired with late data, {} open",
            s.windows,
            s.refired,
            opt(s.open_windows)
        ),
        format!(
            "  late        {:>7}           dead letters {}",
            s.late, s.dead_letters
        ),
        format!(
            "  outbox      {:>7} records   uplink {:<22} outages {}",
            opt(s.outbox_records),
            uplink(s),
            s.outages
        ),
        format!(
            "  upstream    {:>7} records   {} window results ({} by counter v1, {} by v2), {} cold alerts; {} repeats dropped by id",
            s.delivered, s.window_results, s.by_version[0], s.by_version[1], s.alerts, s.repeats
        ),
        format!(
            "  hot swap    {}",
            s.swap.as_deref().unwrap_or("due at half time")
        ),
    ]
}

/// The line written each second when stdout is not a terminal.
fn line(s: &Snapshot) -> String {
    format!(
        "{:.0}s {}: published {} | ingest {:.0} msg/s, in {} | windows {} | late {} | dead letters {} | outbox {} | uplink {} (outages {}) | upstream {} records, {} repeats dropped",
        s.elapsed.as_secs_f64(),
        s.phase,
        s.published,
        s.ingest_per_s,
        s.messages_in,
        s.windows,
        s.late,
        s.dead_letters,
        opt(s.outbox_records),
        uplink(s),
        s.outages,
        s.delivered,
        s.repeats,
    )
}
