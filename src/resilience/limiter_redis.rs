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

/// ARGV: mode, now (µs, or "" for the server's TIME), limit count, then per
/// limit: field, interval (µs), tau (µs), cost (or burst, for "avail").
/// Returns {allowed, wait µs as a string, available per limit (mode "avail")}.
const GCRA_LUA: &str = r#"
local mode = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local n = tonumber(ARGV[3])
local fields = {}
for i = 1, n do fields[i] = ARGV[4 * i] end
local stored = redis.call('HMGET', KEYS[1], unpack(fields))
-- Sums of float intervals drift by a few ulps: the same slack as in process.
local eps = math.max(1e-3, now * 1e-15)
local tats = {}
for i = 1, n do
  local tat = now
  if stored[i] then
    local v = tonumber(stored[i])
    if v == nil then
      return redis.error_reply('LLMEDGE field ' .. fields[i] .. ' of key ' .. KEYS[1] ..
        ' holds ' .. string.format('%q', string.sub(stored[i], 1, 40)) .. ', not a rate limiter TAT')
    end
    if v > now then tat = v end
  end
  tats[i] = tat
end
if mode == 'avail' then
  local out = {1, '0'}
  for i = 1, n do
    local interval = tonumber(ARGV[4 * i + 1])
    local tau = tonumber(ARGV[4 * i + 2])
    local burst = tonumber(ARGV[4 * i + 3])
    local credit = math.floor((tau - (tats[i] - now) + eps) / interval)
    if credit < 0 then credit = 0 end
    if credit > burst then credit = burst end
    out[i + 2] = credit
  end
  return out
end
local wait = 0
local new = {}
local latest = now
local charged = false
for i = 1, n do
  local interval = tonumber(ARGV[4 * i + 1])
  local tau = tonumber(ARGV[4 * i + 2])
  local cost = tonumber(ARGV[4 * i + 3])
  local new_tat = tats[i] + cost * interval
  local excess = new_tat - now - tau
  if excess > eps and excess > wait then wait = excess end
  new[i] = new_tat
  if cost > 0 then charged = true end
  if new_tat > latest then latest = new_tat end
end
if wait > 0 then return {0, string.format('%.17g', wait)} end
if mode == 'acquire' and charged then
  local args = {}
  for i = 1, n do
    args[2 * i - 1] = fields[i]
    args[2 * i] = string.format('%.17g', new[i])
  end
  redis.call('HSET', KEYS[1], unpack(args))
  redis.call('PEXPIRE', KEYS[1], math.ceil((latest - now) / 1000) + 1)
end
return {1, '0'}
"#;

fn script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(GCRA_LUA))
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

    fn args<'a>(&'a self, mode: &'a str, now_us: &'a str, counts: &'a [String]) -> Vec<&'a str> {
        let mut args = Vec::with_capacity(3 + 4 * self.limits.len());
        args.extend([mode, now_us, counts[0].as_str()]);
        for (fixed, v) in self.static_args.iter().zip(&counts[1..]) {
            args.extend(fixed.iter().map(String::as_str));
            args.push(v);
        }
        args
    }

    fn run(
        &self,
        store: &Store,
        user_key: &str,
        mode: &str,
        now_us: Option<f64>,
        per_limit: &[u64],
    ) -> Result<Vec<Value>, StoreError> {
        let key = self.key(store, user_key);
        let now_us = now_us.map_or_else(String::new, |t| format!("{t:.17e}"));
        // The limit count, then each limit's cost (or burst).
        let counts: Vec<String> = std::iter::once(self.limits.len().to_string())
            .chain(per_limit.iter().map(u64::to_string))
            .collect();
        let args = self.args(mode, &now_us, &counts);
        match store.eval_blocking(script(), &[key.as_str()], &args)? {
            Value::Array(items) if items.len() >= 2 => Ok(items),
            other => Err(StoreError::Reply(format!(
                "the rate limiter script answered {other:?} for key {key}"
            ))),
        }
    }

    fn decision(items: &[Value]) -> Result<Decision, StoreError> {
        match (&items[0], &items[1]) {
            (Value::Int(1), _) => Ok(Decision::Allowed),
            (Value::Int(0), Value::BulkString(w)) => std::str::from_utf8(w)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .map(|us| Decision::Denied {
                    retry_after: us / 1e6,
                })
                .ok_or_else(|| StoreError::Reply(format!("unexpected wait {w:?}"))),
            (a, b) => Err(StoreError::Reply(format!(
                "unexpected rate limiter reply {a:?}, {b:?}"
            ))),
        }
    }

    /// Charges `costs` (validated by the caller) if every limit allows it.
    pub fn try_acquire(
        &self,
        store: &Store,
        user_key: &str,
        costs: &[u64],
    ) -> Result<Decision, StoreError> {
        Self::decision(&self.run(store, user_key, "acquire", None, costs)?)
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
        Self::decision(&self.run(store, user_key, "acquire", Some(now_us), costs)?)
    }

    /// Seconds until `costs` could be charged (0.0: now); charges nothing.
    pub fn retry_after(
        &self,
        store: &Store,
        user_key: &str,
        costs: &[u64],
    ) -> Result<f64, StoreError> {
        Ok(
            match Self::decision(&self.run(store, user_key, "peek", None, costs)?)? {
                Decision::Allowed => 0.0,
                Decision::Denied { retry_after } => retry_after,
            },
        )
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
        let items = self.run(store, user_key, "avail", now_us, &bursts)?;
        items[2..]
            .iter()
            .map(|v| match v {
                Value::Int(n) => u64::try_from(*n)
                    .map_err(|_| StoreError::Reply(format!("negative availability {n}"))),
                other => Err(StoreError::Reply(format!(
                    "unexpected availability {other:?}"
                ))),
            })
            .collect()
    }

    /// Forgets `user_key`; true if it carried state.
    pub fn reset(&self, store: &Store, user_key: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(store, user_key));
        Ok(matches!(store.query_blocking(&cmd)?, Value::Int(n) if n > 0))
    }

    /// The keys of this limiter in Redis (SCAN; single servers only).
    fn scan(&self, store: &Store) -> Result<Vec<Vec<u8>>, StoreError> {
        if store.config().cluster {
            return Err(StoreError::Reply(
                "listing a limiter's keys is not supported on Redis Cluster \
                 (reset(key) works on every deployment)"
                    .into(),
            ));
        }
        let pattern = store.key(&format!("rl:{}:*", glob_escape(&self.name)));
        let mut keys = Vec::new();
        let mut cursor = 0_u64;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let Value::Array(reply) = store.query_blocking(&cmd)? else {
                return Err(StoreError::Reply("unexpected SCAN reply".into()));
            };
            let [Value::BulkString(next), Value::Array(batch)] = reply.as_slice() else {
                return Err(StoreError::Reply("unexpected SCAN reply".into()));
            };
            keys.extend(batch.iter().filter_map(|k| match k {
                Value::BulkString(b) => Some(b.clone()),
                _ => None,
            }));
            cursor = std::str::from_utf8(next)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Reply("unexpected SCAN cursor".into()))?;
            if cursor == 0 {
                return Ok(keys);
            }
        }
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
