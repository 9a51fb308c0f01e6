//! Recurring jobs: a schedule's definition and which of its slots are due.
//!
//! A schedule fires a handler job at each slot of a cron pattern (five
//! fields, or six with seconds first) read in a named time zone, so that
//! "30 2 * * *" stays at 02:30 local time across DST changes (a slot in the
//! hour skipped in spring fires when that hour ends; one in the hour
//! repeated in autumn fires once). Every host that fires schedules computes
//! the same slots; the store makes each slot fire once (a unique key on
//! schedule and slot time), so no host needs to be the leader.
//!
//! Ground floor: imports nothing of the crate.

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A slot this much past due still fires; an older one was missed (no host
/// was there to fire it), and [`Missed`] says what to do.
pub const GRACE_SECONDS: f64 = 60.0;
/// Slots one schedule fires per look, at most; the rest at the next.
const MAX_SLOTS: usize = 100;

/// What a schedule does with slots missed while no host ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Missed {
    /// Fire none of them; go on from the next slot.
    #[default]
    Skip,
    /// Fire one job for them all (at the first missed slot's time).
    Once,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Once => "once",
        }
    }

    pub fn parse(s: &str) -> Option<Missed> {
        match s {
            "skip" => Some(Missed::Skip),
            "once" => Some(Missed::Once),
            _ => None,
        }
    }
}

/// A recurring job as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub tz: String,
    pub operation: String,
    /// The job's params, JSON text.
    pub params: Vec<u8>,
    pub queue: String,
    pub priority: i32,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub missed: Missed,
    /// The first slot not fired yet (seconds since the epoch).
    pub next_at: f64,
    /// The last slot fired.
    pub last_at: Option<f64>,
    pub created_at: f64,
}

impl Schedule {
    /// Whether `other` defines the same recurring job (slots aside).
    pub fn same_definition(&self, other: &Schedule) -> bool {
        let key = |s: &Schedule| {
            (s.cron.clone(), s.tz.clone(), s.operation.clone(), s.params.clone(), s.queue.clone(), s.priority, s.timeout_ms, s.max_attempts, s.missed)
        };
        key(self) == key(other)
    }
}

/// A cron pattern read in a time zone.
#[derive(Debug)]
pub struct Timing {
    cron: Cron,
    tz: Tz,
}

impl Timing {
    /// Parses `pattern` (5 fields, or 6 with seconds first) and the IANA
    /// time zone `tz`; the message says what is wrong.
    pub fn parse(pattern: &str, tz: &str) -> Result<Timing, String> {
        let tz: Tz = tz.parse().map_err(|_| format!("unknown time zone \"{tz}\" (an IANA name such as \"Europe/Berlin\" or \"UTC\")"))?;
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser.parse(pattern).map_err(|e| format!("the cron pattern \"{pattern}\" does not parse: {e}"))?;
        let timing = Timing { cron, tz };
        if timing.next_after(crate_now()).is_none() {
            return Err(format!("the cron pattern \"{pattern}\" never fires"));
        }
        Ok(timing)
    }

    /// The first slot strictly after `t` (seconds since the epoch).
    pub fn next_after(&self, t: f64) -> Option<f64> {
        let secs = t.floor() as i64;
        let start = Utc.timestamp_opt(secs, 0).single()?.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp() as f64)
    }
}

fn crate_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// What a host firing `s` at `now` does: the slots to fire, oldest first,
/// and the schedule's next slot after them.
pub fn due(s: &Schedule, timing: &Timing, now: f64) -> (Vec<f64>, f64) {
    let mut fire = Vec::new();
    let mut t = s.next_at;
    if t > now {
        return (fire, t);
    }
    if now - t > GRACE_SECONDS {
        // Missed while no host ran: once fires the first of them.
        if s.missed == Missed::Once {
            fire.push(t);
        }
        match timing.next_after(now - GRACE_SECONDS) {
            Some(n) => t = n,
            None => return (fire, f64::INFINITY),
        }
    }
    while t <= now && fire.len() < MAX_SLOTS {
        fire.push(t);
        match timing.next_after(t) {
            Some(n) => t = n,
            None => return (fire, f64::INFINITY),
        }
    }
    (fire, t)
}
