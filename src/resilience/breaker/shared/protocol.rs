//! The wire protocol of a breaker whose state lives in Redis: key names, the
//! Lua scripts, how a batch of outcomes and the configuration become script
//! arguments, and how a script's reply or a published event becomes a
//! [`Snapshot`]. Pure data, no I/O: [`super::SharedBreaker`] does the calls.
//!
//! Keys (all under the store's prefix, the name escaped so that it cannot end
//! the hash tag early): `cb:{<name>}:s` the state hash, `cb:{<name>}:w` the
//! window, `cb:{<name>}:l` the half-open leases. Every change other processes
//! must act on is published on `cb:events` as the snapshot's fields joined by
//! `|`, followed by the breaker's name.

use std::sync::LazyLock;

use super::super::config::{BreakerConfig, State, WindowType};
use super::super::window::Counts;

const COMMON: &str = include_str!("lua/common.lua");

fn with_prelude(body: &str) -> String {
    format!("{COMMON}\n{body}")
}

/// Applies a batch of closed-state outcomes; opens the circuit when the
/// cluster-wide counts cross a threshold.
pub static REPORT: LazyLock<String> =
    LazyLock::new(|| with_prelude(include_str!("lua/report.lua")));
/// Takes a half-open probe lease (half-opening an open circuit whose timeout passed).
pub static ACQUIRE: LazyLock<String> =
    LazyLock::new(|| with_prelude(include_str!("lua/acquire.lua")));
/// Settles a probe: success, failure or no outcome.
pub static PROBE_DONE: LazyLock<String> =
    LazyLock::new(|| with_prelude(include_str!("lua/probe_done.lua")));
/// reset / force_open / disable for every process.
pub static CONTROL: LazyLock<String> =
    LazyLock::new(|| with_prelude(include_str!("lua/control.lua")));

/// Idle keys expire after a day: a breaker nobody used for that long starts closed.
pub const KEY_TTL_MS: u64 = 86_400_000;

/// `%`, `{` and `}` percent-escaped: the name stays one hash tag, and distinct
/// names stay distinct.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The three keys of one breaker, in the order the scripts take them.
pub fn keys(prefix: &str, name: &str) -> [String; 3] {
    let base = format!("{prefix}cb:{{{}}}:", escape_name(name));
    [format!("{base}s"), format!("{base}w"), format!("{base}l")]
}

pub fn channel(prefix: &str) -> String {
    format!("{prefix}cb:events")
}

fn ms(seconds: f64) -> u64 {
    // Configuration is validated (finite, positive); at least one millisecond.
    (seconds * 1000.0).round().max(1.0) as u64
}

/// ARGV[1..=14] of every script.
pub fn config_args(cfg: &BreakerConfig, name: &str, channel: &str) -> Vec<String> {
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let window = if cfg.uses_window() {
        cfg.window_type.as_str()
    } else {
        ""
    };
    vec![
        cfg.failure_threshold.to_string(),
        cfg.success_threshold.to_string(),
        cfg.half_open_max_calls.to_string(),
        cfg.minimum_calls.to_string(),
        window.to_owned(),
        cfg.window_size.to_string(),
        opt(cfg.failure_rate_threshold),
        opt(cfg.slow_rate_threshold()),
        ms(cfg.recovery_timeout).to_string(),
        cfg.max_recovery_timeout
            .map(|m| ms(m).to_string())
            .unwrap_or_default(),
        cfg.backoff_multiplier.to_string(),
        KEY_TTL_MS.to_string(),
        name.to_owned(),
        channel.to_owned(),
    ]
}

/// Closed-state outcomes of one process since its last report, reduced to
/// what the script needs: the runs of failures that decide the consecutive
/// count, the codes a count window needs, and totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub epoch: u64,
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
    /// Failures before the first success (all of them when there is none).
    pub lead: u64,
    pub has_success: bool,
    /// Longest run of failures from the first success on.
    pub max_run: u64,
    /// Failures after the last success.
    pub trail: u64,
    /// One byte per call (b'0' + failed + 2 * slow), at most `keep` of the latest.
    codes: Vec<u8>,
    keep: usize,
}

impl Batch {
    /// `keep`: how many codes the window can use (its size for a count
    /// window, 0 otherwise).
    pub fn new(epoch: u64, keep: usize) -> Batch {
        Batch {
            epoch,
            keep,
            ..Batch::default()
        }
    }

    pub fn for_config(cfg: &BreakerConfig, epoch: u64) -> Batch {
        let keep = if cfg.uses_window() && cfg.window_type == WindowType::Count {
            cfg.window_size as usize
        } else {
            0
        };
        Batch::new(epoch, keep)
    }

    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }

    pub fn push(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        self.slow += u64::from(slow);
        if failed {
            if self.has_success {
                self.trail += 1;
                self.max_run = self.max_run.max(self.trail);
            } else {
                self.lead += 1;
            }
        } else {
            self.has_success = true;
            self.trail = 0;
        }
        if self.keep > 0 {
            // Drop the oldest half at once: amortised O(1) per call.
            if self.codes.len() >= 2 * self.keep {
                self.codes.drain(..self.codes.len() - self.keep);
            }
            self.codes
                .push(b'0' + u8::from(failed) + 2 * u8::from(slow));
        }
    }

    /// The counts of `self` followed by `later` (codes are not kept): what
    /// Redis will have heard once a batch in flight and the next one arrive.
    pub fn then(&self, later: &Batch) -> Batch {
        let (lead, max_run, trail) = match (self.has_success, later.has_success) {
            (false, false) => (self.lead + later.lead, 0, 0),
            (false, true) => (self.lead + later.lead, later.max_run, later.trail),
            (true, false) => {
                let trail = self.trail + later.lead;
                (self.lead, self.max_run.max(trail), trail)
            }
            (true, true) => (
                self.lead,
                self.max_run.max(self.trail + later.lead).max(later.max_run),
                later.trail,
            ),
        };
        Batch {
            epoch: later.epoch,
            calls: self.calls + later.calls,
            failures: self.failures + later.failures,
            slow: self.slow + later.slow,
            lead,
            has_success: self.has_success || later.has_success,
            max_run,
            trail,
            codes: Vec::new(),
            keep: 0,
        }
    }

    /// Takes the outcomes, leaving an empty batch for `epoch`.
    pub fn take(&mut self, epoch: u64) -> Batch {
        let fresh = Batch::new(epoch, self.keep);
        std::mem::replace(self, fresh)
    }

    fn codes(&self) -> &[u8] {
        &self.codes[self.codes.len().saturating_sub(self.keep)..]
    }

    /// ARGV[15..=23] of the report script.
    pub fn args(&self) -> Vec<String> {
        vec![
            self.epoch.to_string(),
            self.lead.to_string(),
            if self.has_success { "1" } else { "0" }.to_owned(),
            self.max_run.to_string(),
            self.trail.to_string(),
            String::from_utf8_lossy(self.codes()).into_owned(),
            self.calls.to_string(),
            self.failures.to_string(),
            self.slow.to_string(),
        ]
    }
}

/// What a probe-lease request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    None,
    Probe,
    /// The circuit is closed or disabled: a plain call.
    Plain,
}

/// The shared state as a script returned it or an event carried it.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Identifies one life of the state hash: after Redis lost it (a restart
    /// without persistence), the sequence numbers start again under a new one.
    pub gen: i64,
    /// Increases with every script run on this state.
    pub seq: i64,
    pub epoch: u64,
    pub state: State,
    /// Seconds until an open circuit admits a probe (the recovery timeout when
    /// forced open, else 0).
    pub remaining: f64,
    pub recovery: f64,
    pub consecutive_failures: u32,
    pub half_open_successes: u32,
    pub free_leases: u32,
    pub window: Counts,
    pub grant: Grant,
    pub time_in_state: f64,
    /// With no free lease: seconds until the first lease expires.
    pub lease_wait: f64,
}

const SNAPSHOT_FIELDS: usize = 15;

impl Snapshot {
    /// Whether `self` is newer than `other` (a different life counts as newer).
    pub fn newer_than(&self, other: &Snapshot) -> bool {
        self.gen != other.gen || self.seq > other.seq
    }

    pub fn parse(fields: &[String]) -> Result<Snapshot, String> {
        if fields.len() != SNAPSHOT_FIELDS {
            return Err(format!(
                "breaker script returned {} fields, expected {SNAPSHOT_FIELDS}: {fields:?}",
                fields.len()
            ));
        }
        let int = |i: usize| -> Result<i64, String> {
            fields[i]
                .parse::<i64>()
                .map_err(|_| format!("breaker state field {i} is {:?}, not an integer", fields[i]))
        };
        let count = |i: usize| int(i).map(|v| v.max(0) as u64);
        let small = |i: usize| int(i).map(|v| v.clamp(0, i64::from(u32::MAX)) as u32);
        let secs = |i: usize| int(i).map(|v| v.max(0) as f64 / 1000.0);
        let state = State::parse(&fields[3])
            .ok_or_else(|| format!("breaker state is {:?}, not a state name", fields[3]))?;
        Ok(Snapshot {
            gen: int(0)?,
            seq: int(1)?,
            epoch: count(2)?,
            state,
            remaining: secs(4)?,
            recovery: secs(5)?,
            consecutive_failures: small(6)?,
            half_open_successes: small(7)?,
            free_leases: small(8)?,
            window: Counts {
                calls: count(9)?,
                failures: count(10)?,
                slow: count(11)?,
            },
            grant: match int(12)? {
                1 => Grant::Probe,
                2 => Grant::Plain,
                _ => Grant::None,
            },
            time_in_state: secs(13)?,
            lease_wait: secs(14)?,
        })
    }

    /// An event from the channel: (breaker name, snapshot).
    pub fn parse_event(payload: &str) -> Result<(String, Snapshot), String> {
        let parts: Vec<&str> = payload.splitn(SNAPSHOT_FIELDS + 1, '|').collect();
        if parts.len() != SNAPSHOT_FIELDS + 1 {
            return Err(format!("malformed breaker event {payload:?}"));
        }
        let fields: Vec<String> = parts[..SNAPSHOT_FIELDS]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        Ok((parts[SNAPSHOT_FIELDS].to_owned(), Snapshot::parse(&fields)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(seq: &[bool]) -> Batch {
        let mut b = Batch::new(3, 4);
        for &f in seq {
            b.push(f, false);
        }
        b
    }

    #[test]
    fn batch_keeps_the_runs_that_decide_consecutive_failures() {
        let b = outcomes(&[true, true, false, true, true, true, false, true]);
        assert_eq!((b.lead, b.has_success, b.max_run, b.trail), (2, true, 3, 1));
        assert_eq!((b.calls, b.failures), (8, 6));
        let b = outcomes(&[true, true]);
        assert_eq!(
            (b.lead, b.has_success, b.max_run, b.trail),
            (2, false, 0, 0)
        );
    }

    #[test]
    fn batches_compose_like_one_sequence() {
        let seqs: [&[bool]; 6] = [
            &[],
            &[true],
            &[false],
            &[true, true, false, true],
            &[false, true, true, true],
            &[true, false, true, true, false, true, true],
        ];
        for a in seqs {
            for b in seqs {
                let joined: Vec<bool> = a.iter().chain(b).copied().collect();
                let want = outcomes(&joined);
                let got = outcomes(a).then(&outcomes(b));
                let key = |x: &Batch| {
                    (
                        x.calls,
                        x.failures,
                        x.lead,
                        x.has_success,
                        x.max_run,
                        x.trail,
                    )
                };
                assert_eq!(key(&got), key(&want), "{a:?} then {b:?}");
            }
        }
    }

    #[test]
    fn batch_sends_only_the_codes_the_window_holds() {
        let mut b = Batch::new(0, 3);
        for i in 0..100 {
            b.push(i % 2 == 0, i % 3 == 0);
        }
        // calls 97, 98, 99: failed+slow? 97 no/no, 98 yes/no, 99 no/yes
        assert_eq!(b.args()[5], "012");
        assert!(b.codes.len() <= 6);
        let taken = b.take(7);
        assert_eq!(taken.calls, 100);
        assert!(b.is_empty());
        assert_eq!(b.epoch, 7);
        assert_eq!(b.args()[5], "");
    }

    #[test]
    fn keys_share_one_hash_tag_whatever_the_name() {
        for name in ["llm", "a}b", "}", "{x}", "50%"] {
            let ks = keys("app:", name);
            let tag = |k: &str| {
                let open = k.find('{').expect("open");
                let close = k[open + 1..].find('}').expect("close") + open + 1;
                k[open + 1..close].to_owned()
            };
            assert!(!tag(&ks[0]).is_empty(), "{name:?}: {ks:?}");
            assert!(ks.iter().all(|k| tag(k) == tag(&ks[0])), "{ks:?}");
        }
        assert_ne!(keys("", "a}b")[0], keys("", "a%7Db")[0]);
        assert_eq!(keys("p:", "llm")[0], "p:cb:{llm}:s");
    }

    #[test]
    fn config_becomes_fourteen_arguments() {
        let cfg = BreakerConfig {
            failure_rate_threshold: Some(0.5),
            recovery_timeout: 2.5,
            ..BreakerConfig::default()
        };
        let a = config_args(&cfg, "n", "ch");
        assert_eq!(a.len(), 14);
        assert_eq!(a[4], "count");
        assert_eq!(a[6], "0.5");
        assert_eq!(a[7], "");
        assert_eq!(a[8], "2500");
        assert_eq!(a[9], "");
        let plain = config_args(&BreakerConfig::default(), "n", "ch");
        assert_eq!(plain[4], "", "no window without rate thresholds");
    }

    #[test]
    fn snapshots_parse_from_replies_and_events() {
        let event = "17|4|2|open|1500|2000|5|0|0|10|5|0|0|12|0|a|b";
        let (name, s) = Snapshot::parse_event(event).expect("valid");
        assert_eq!(name, "a|b");
        assert_eq!((s.gen, s.seq, s.epoch, s.state), (17, 4, 2, State::Open));
        assert_eq!((s.remaining, s.recovery), (1.5, 2.0));
        assert_eq!(s.window.failures, 5);
        assert_eq!(s.grant, Grant::None);
        assert!(Snapshot::parse_event("17|4|2|ajar|0|0|0|0|0|0|0|0|0|0|0|n")
            .expect_err("bad state")
            .contains("ajar"));
        assert!(Snapshot::parse_event("1|2|3").is_err());
        let later = Snapshot {
            seq: 5,
            ..s.clone()
        };
        assert!(later.newer_than(&s) && !s.newer_than(&later));
        let reborn = Snapshot {
            gen: 18,
            seq: 1,
            ..s.clone()
        };
        assert!(reborn.newer_than(&s));
    }
}
