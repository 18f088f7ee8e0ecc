//! The GCRA limiter's state in Redis: key layout, the Lua script and its
//! replies (pure Rust; the binding adds the fallback policy and the deny cache).
//!
//! Each user key of a limiter is one Redis hash,
//! `{prefix}rl:{name}:{<user key>}`, with one field per limit (`tat` for a
//! single limit, the limit's name for several) holding the theoretical
//! arrival time in microseconds of the server's clock. The user key is the
//! hash tag, so a key and all its limits live on one Cluster slot, and one
//! script reads and charges every limit atomically: all or nothing, exactly as
//! [`Gcra`](super::Gcra) does in process. Time is the server's `TIME`, so
//! hosts with skewed clocks agree. After a charge the hash expires when its
//! last TAT passes (an idle key holds no information: its buckets are full).
//!
//! A value in the hash that is not a number (another program wrote it) is
//! reported as a `LLMEDGE` error naming the key and field; a key of another
//! type as Redis' `WRONGTYPE`. Both reach the caller as
//! [`StoreError::Reply`].

use std::sync::OnceLock;

use redis::Value;

use super::limiter::{Decision, Limit};
use crate::store::{check_key_part, Script, Store, StoreError};

/// ARGV: mode ("a" acquire, "p" peek, "v" available), now (µs, or "" for
/// the server's TIME), then per limit: field, interval (µs), tau (µs), cost
/// (or burst, for "v"). Returns 0 (allowed), the wait in nanoseconds (an
/// integer > 0), or for "v" the units available per limit.
///
/// Every Redis command inside a script costs server time that each caller
/// waits for: one read (HGET, or HMGET for several limits), and on a charge
/// one HSET of the charged fields and one PEXPIRE. The reply is one integer.
const GCRA_LUA: &str = r#"
local now = ARGV[2]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
else
  now = tonumber(now)
end
local key = KEYS[1]
local n = (#ARGV - 2) / 4
local stored
if n == 1 then
  stored = {redis.call('HGET', key, ARGV[3])}
else
  local fields = {}
  for i = 1, n do fields[i] = ARGV[4 * i - 1] end
  stored = redis.call('HMGET', key, unpack(fields))
end
-- Sums of float intervals drift by a few ulps: the same slack as in process.
local eps = now * 1e-15
if eps < 1e-3 then eps = 1e-3 end
local mode = ARGV[1]
local wait, latest, m = 0, now, 0
local out = {}
for i = 1, n do
  local j = 4 * i
  local tat = now
  if stored[i] then
    local v = tonumber(stored[i])
    if v == nil then
      return redis.error_reply('LLMEDGE field ' .. ARGV[j - 1] .. ' of key ' .. key ..
        ' holds ' .. string.format('%q', string.sub(stored[i], 1, 40)) .. ', not a rate limiter TAT')
    end
    if v > now then tat = v end
  end
  local interval, tau, cost = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  if mode == 'v' then
    local credit = math.floor((tau - (tat - now) + eps) / interval)
    if credit < 0 then credit = 0 elseif credit > cost then credit = cost end
    out[i] = credit
  else
    tat = tat + cost * interval
    local excess = tat - now - tau
    if excess > eps and excess > wait then wait = excess end
    if cost > 0 then
      out[m + 1] = ARGV[j - 1]
      out[m + 2] = string.format('%.17g', tat)
      m = m + 2
    end
    if tat > latest then latest = tat end
  end
end
if mode == 'v' then return out end
if wait > 0 then
  if wait > 9e15 then wait = 9e15 end
  return math.ceil(wait * 1000)
end
if mode == 'a' and m > 0 then
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, math.ceil((latest - now) / 1000) + 1)
end
return 0
"#;

fn script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(GCRA_LUA))
}

/// What the script does.
#[derive(Clone, Copy)]
enum Mode {
    Acquire,
    Peek,
    Available,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Acquire => "a",
            Mode::Peek => "p",
            Mode::Available => "v",
        }
    }
}

/// One script call: the Redis key and the ARGV.
struct Request {
    key: String,
    args: Vec<String>,
}

impl Request {
    fn decide_blocking(&self, store: &Store) -> Result<Decision, StoreError> {
        self.decision(store.eval_blocking(script(), &[self.key.as_str()], &self.args)?)
    }

    /// 0: allowed; n > 0: denied for n nanoseconds.
    fn decision(&self, reply: Value) -> Result<Decision, StoreError> {
        match reply {
            Value::Int(0) => Ok(Decision::Allowed),
            Value::Int(ns) if ns > 0 => Ok(Decision::Denied {
                retry_after: ns as f64 / 1e9,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, reply: &Value) -> StoreError {
        StoreError::Reply(format!(
            "the rate limiter script answered {reply:?} for key {}",
            self.key
        ))
    }
}

/// One limiter's view of Redis: its limits, its name and its key layout.
#[derive(Clone, Debug)]
pub struct RedisGcra {
    limits: Vec<Limit>,
    name: String,
    /// Per limit: the hash field, interval and tau (µs), formatted once.
    static_args: Vec<[String; 3]>,
}

impl RedisGcra {
    /// `name: None` derives the name from the limits, so limiters with the
    /// same configuration share their state.
    pub fn new(limits: Vec<Limit>, name: Option<&str>) -> Result<RedisGcra, String> {
        if limits.is_empty() {
            return Err("at least one limit is needed".into());
        }
        let name = match name {
            Some(n) => {
                check_key_part("name", n, false)?;
                n.to_owned()
            }
            None => default_name(&limits),
        };
        let single = limits.len() == 1 && limits[0].name.is_empty();
        let static_args = limits
            .iter()
            .map(|l| {
                [
                    if single {
                        "tat".to_owned()
                    } else {
                        l.name.clone()
                    },
                    format!("{:.17e}", l.interval() * 1e6),
                    format!("{:.17e}", l.tau() * 1e6),
                ]
            })
            .collect();
        Ok(RedisGcra {
            limits,
            name,
            static_args,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The Redis key holding `user_key`'s state.
    pub fn key(&self, store: &Store, user_key: &str) -> String {
        store.key(&format!("rl:{}:{{{user_key}}}", self.name))
    }

    /// The key and ARGV of one script call.
    fn request(
        &self,
        store: &Store,
        user_key: &str,
        mode: Mode,
        now_us: Option<f64>,
        per_limit: &[u64],
    ) -> Request {
        let mut args = Vec::with_capacity(2 + 4 * self.limits.len());
        args.push(mode.arg().to_owned());
        args.push(now_us.map_or_else(String::new, |t| format!("{t:.17e}")));
        for (fixed, v) in self.static_args.iter().zip(per_limit) {
            args.extend(fixed.iter().cloned());
            args.push(v.to_string());
        }
        Request {
            key: self.key(store, user_key),
            args,
        }
    }

    /// Charges `costs` (validated by the caller) if every limit allows it.
    pub fn try_acquire(
        &self,
        store: &Store,
        user_key: &str,
        costs: &[u64],
    ) -> Result<Decision, StoreError> {
        self.request(store, user_key, Mode::Acquire, None, costs)
            .decide_blocking(store)
    }

    /// [`RedisGcra::try_acquire`] for a caller on the store's runtime.
    pub async fn try_acquire_async(
        &self,
        store: &Store,
        user_key: &str,
        costs: &[u64],
    ) -> Result<Decision, StoreError> {
        let req = self.request(store, user_key, Mode::Acquire, None, costs);
        let reply = store.eval(script(), &[req.key.as_str()], &req.args).await;
        req.decision(reply?)
    }

    /// `try_acquire` at a given time (µs) instead of the server's: lets the
    /// tests compare decisions with the in-process limiter exactly.
    #[cfg(test)]
    fn try_acquire_at(
        &self,
        store: &Store,
        user_key: &str,
        costs: &[u64],
        now_us: f64,
    ) -> Result<Decision, StoreError> {
        self.request(store, user_key, Mode::Acquire, Some(now_us), costs)
            .decide_blocking(store)
    }

    /// Seconds until `costs` could be charged (0.0: now); charges nothing.
    pub fn retry_after(
        &self,
        store: &Store,
        user_key: &str,
        costs: &[u64],
    ) -> Result<f64, StoreError> {
        let req = self.request(store, user_key, Mode::Peek, None, costs);
        Ok(match req.decide_blocking(store)? {
            Decision::Allowed => 0.0,
            Decision::Denied { retry_after } => retry_after,
        })
    }

    /// Units of each limit `user_key` could spend now.
    pub fn available(&self, store: &Store, user_key: &str) -> Result<Vec<u64>, StoreError> {
        self.available_at(store, user_key, None)
    }

    fn available_at(
        &self,
        store: &Store,
        user_key: &str,
        now_us: Option<f64>,
    ) -> Result<Vec<u64>, StoreError> {
        let bursts: Vec<u64> = self.limits.iter().map(|l| l.burst).collect();
        let req = self.request(store, user_key, Mode::Available, now_us, &bursts);
        let reply = store.eval_blocking(script(), &[req.key.as_str()], &req.args)?;
        let credits = match &reply {
            Value::Array(items) if items.len() == self.limits.len() => items
                .iter()
                .map(|v| match v {
                    Value::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<u64>>>(),
            _ => None,
        };
        credits.ok_or_else(|| req.unexpected(&reply))
    }

    /// Forgets `user_key`; true if it carried state.
    pub fn reset(&self, store: &Store, user_key: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(store, user_key));
        Ok(matches!(store.query_blocking(&cmd)?, Value::Int(n) if n > 0))
    }

    /// The keys of this limiter in Redis (on every master of a cluster).
    fn scan(&self, store: &Store) -> Result<Vec<Vec<u8>>, StoreError> {
        store.scan_blocking(&store.key(&format!("rl:{}:*", glob_escape(&self.name))))
    }

    /// Keys of this limiter that carry state (idle ones have expired).
    pub fn stored_keys(&self, store: &Store) -> Result<usize, StoreError> {
        Ok(self.scan(store)?.len())
    }

    /// Deletes every key of this limiter.
    pub fn clear(&self, store: &Store) -> Result<(), StoreError> {
        for chunk in self.scan(store)?.chunks(500) {
            let mut cmd = redis::cmd("UNLINK");
            cmd.arg(chunk);
            store.query_blocking(&cmd)?;
        }
        Ok(())
    }
}

/// The name limiters of the same configuration share: `10/1/10` (rate, per,
/// burst), or `requests=500/60/500,tokens=...` sorted by limit name.
fn default_name(limits: &[Limit]) -> String {
    let one = |l: &Limit| format!("{}/{}/{}", l.rate, l.per, l.burst);
    if limits.len() == 1 && limits[0].name.is_empty() {
        return one(&limits[0]);
    }
    let mut parts: Vec<String> = limits
        .iter()
        .map(|l| format!("{}={}", l.name, one(l)))
        .collect();
    parts.sort();
    parts.join(",")
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
