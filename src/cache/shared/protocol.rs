//! The Redis side of a shared semantic cache: key names, the Lua scripts,
//! the entry format and how script replies and stream events are read.
//! Pure data, no I/O: [`super::Replica`] does the calls.
//!
//! Keys of namespace `ns` (under the store's prefix; one hash tag, so every
//! script runs on one Redis Cluster slot): `cache:{ns}:meta` (embedder
//! identity, dimension, format, epoch, last `clear`), `cache:{ns}:seq` (the
//! event counter), `cache:{ns}:log` (the event stream), `cache:{ns}:idx`
//! (entries by event number), `cache:{ns}:e:<id>` (one entry: its encoded
//! form, event number, partition hash and tag hashes), and the tombstones
//! `x:<id>`, `xp:<partition hash>`, `xt:<tag hash>` holding the event number
//! of the invalidation. Events are also announced on the channel
//! `cache:{ns}:events` so followers read the stream at once.
//!
//! Every event takes the next number from the counter: a follower that sees
//! a number jump knows it missed events (the stream was trimmed past it) and
//! reloads; a different epoch means the namespace was recreated (Redis
//! restarted empty).

use std::sync::LazyLock;

use redis::Value;

use crate::cache::learn::EntryLearning;
use crate::cache::partition::normalize_prompt;
use crate::cache::snapshot::{parse_observations, put_learned};

const COMMON: &str = include_str!("lua/common.lua");

fn with_prelude(body: &str) -> String {
    format!("{COMMON}\n{body}")
}

pub static JOIN: LazyLock<String> = LazyLock::new(|| with_prelude(include_str!("lua/join.lua")));
pub static WRITE: LazyLock<String> = LazyLock::new(|| with_prelude(include_str!("lua/write.lua")));
pub static INVALIDATE: LazyLock<String> =
    LazyLock::new(|| with_prelude(include_str!("lua/invalidate.lua")));
pub static READ: LazyLock<String> = LazyLock::new(|| with_prelude(include_str!("lua/read.lua")));
pub static LOAD: LazyLock<String> = LazyLock::new(|| with_prelude(include_str!("lua/load.lua")));
pub static FETCH: LazyLock<String> = LazyLock::new(|| with_prelude(include_str!("lua/fetch.lua")));

/// The namespace's format (checked when a cache joins): the layout of keys,
/// scripts and events.
pub const FORMAT: u8 = 1;
/// The newest entry encoding. Version 2 adds what the entry learned in the
/// error-bounded mode; an entry that learned nothing is still written as
/// version 1, which every reader understands. Versions 1 and 2 are read;
/// others are skipped (counted as invalid).
pub const ENTRY_VERSION: u8 = 2;
const MAGIC: &[u8; 4] = b"LMCE";

/// The keys of one namespace, in the order every script takes them, and
/// the base the scripts derive entry and tombstone keys from.
#[derive(Clone, Debug)]
pub struct Keys {
    pub base: String,
    pub keys: [String; 4],
    pub channel: String,
}

impl Keys {
    pub fn new(prefix: &str, namespace: &str) -> Keys {
        let base = format!("{prefix}cache:{{{namespace}}}:");
        Keys {
            keys: [
                format!("{base}meta"),
                format!("{base}seq"),
                format!("{base}log"),
                format!("{base}idx"),
            ],
            channel: format!("{base}events"),
            base,
        }
    }

    pub fn entry(&self, id: &str) -> String {
        format!("{}e:{id}", self.base)
    }
}

fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = seed;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hash_hex(parts: &[&[u8]]) -> String {
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325, parts),
        fnv(0x6c62_272e_07bb_0142, parts)
    )
}

/// The id of the entry of `prompt` in `partition` (canonical key): the same
/// in every process, equal for prompts the exact tier treats as equal.
pub fn entry_id(partition: &str, prompt: &str) -> String {
    hash_hex(&[partition.as_bytes(), normalize_prompt(prompt).as_bytes()])
}

pub fn partition_hash(partition: &str) -> String {
    hash_hex(&[b"p", partition.as_bytes()])
}

pub fn tag_hash(tag: &str) -> String {
    hash_hex(&[b"t", tag.as_bytes()])
}

/// Tag hashes joined by spaces (the form the scripts split).
pub fn tag_hashes(tags: &[String]) -> String {
    tags.iter()
        .map(|t| tag_hash(t))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One entry as it travels through Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub identity: String,
    /// Canonical partition key (not scoped by the identity).
    pub partition: String,
    pub prompt: String,
    pub response: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub tags: Vec<String>,
    /// Seconds to live when written; `INFINITY` never expires.
    pub ttl: f64,
    pub vector: Vec<f32>,
    /// What it learned (error-bounded mode; empty in version 1).
    pub learning: EntryLearning,
}

/// Why an encoded entry was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not an entry at all, or cut short, or its checksum does not match.
    Corrupt,
    /// Another format version.
    Version(u8),
    /// Another embedder or dimension.
    Foreign,
}

fn put(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

impl Entry {
    /// `LMCE`, version, metadata flag, dimension, ttl, identity, partition,
    /// prompt, response, [metadata], tags, vector (f32 LE), [version 2: total
    /// u64, count u32, count x (similarity f32, correct u8)], crc32 of the rest.
    pub fn encode(&self) -> Vec<u8> {
        let version = if self.learning.total > 0 {
            ENTRY_VERSION
        } else {
            1
        };
        let mut buf = Vec::with_capacity(
            64 + self.identity.len()
                + self.partition.len()
                + self.prompt.len()
                + self.response.len()
                + self.metadata.as_ref().map_or(0, Vec::len)
                + self.tags.iter().map(|t| t.len() + 4).sum::<usize>()
                + 4 * self.vector.len(),
        );
        buf.extend_from_slice(MAGIC);
        buf.push(version);
        buf.push(u8::from(self.metadata.is_some()));
        buf.extend_from_slice(&(self.vector.len() as u32).to_le_bytes());
        buf.extend_from_slice(&self.ttl.to_le_bytes());
        put(&mut buf, self.identity.as_bytes());
        put(&mut buf, self.partition.as_bytes());
        put(&mut buf, self.prompt.as_bytes());
        put(&mut buf, &self.response);
        if let Some(m) = &self.metadata {
            put(&mut buf, m);
        }
        buf.extend_from_slice(&(self.tags.len() as u32).to_le_bytes());
        for t in &self.tags {
            put(&mut buf, t.as_bytes());
        }
        for x in &self.vector {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        if version >= 2 {
            put_learned(
                &mut buf,
                self.learning.total,
                self.learning.observations.iter(),
            );
        }
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Reads an entry written by [`Entry::encode`] for a cache of `identity`
    /// and `dim`; anything else is refused, never trusted.
    pub fn decode(data: &[u8], identity: &str, dim: usize) -> Result<Entry, Invalid> {
        if data.len() < MAGIC.len() + 2 + 4 || &data[..4] != MAGIC {
            return Err(Invalid::Corrupt);
        }
        let version = data[4];
        if !(1..=ENTRY_VERSION).contains(&version) {
            return Err(Invalid::Version(version));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(Invalid::Corrupt);
        }
        let mut r = Reader { data: body, at: 5 };
        let has_metadata = match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(Invalid::Corrupt),
        };
        let n = r.u32()? as usize;
        let ttl = f64::from_le_bytes(r.take(8)?.try_into().map_err(|_| Invalid::Corrupt)?);
        if ttl.is_nan() || ttl <= 0.0 {
            return Err(Invalid::Corrupt);
        }
        let found_identity = r.string()?;
        if found_identity != identity || n != dim {
            return Err(Invalid::Foreign);
        }
        let partition = r.string()?;
        let prompt = r.string()?;
        if prompt.trim().is_empty() {
            return Err(Invalid::Corrupt);
        }
        let response = r.bytes()?.to_vec();
        let metadata = if has_metadata {
            Some(r.bytes()?.to_vec())
        } else {
            None
        };
        let ntags = r.u32()? as usize;
        let mut tags = Vec::with_capacity(ntags.min(1024));
        for _ in 0..ntags {
            tags.push(r.string()?);
        }
        let raw = r.take(n.checked_mul(4).ok_or(Invalid::Corrupt)?)?;
        let vector: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut learning = EntryLearning::default();
        if version >= 2 {
            let total = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| Invalid::Corrupt)?);
            let n = r.u32()? as usize;
            let raw = r.take(n.checked_mul(5).ok_or(Invalid::Corrupt)?)?;
            learning.observations = parse_observations(raw).ok_or(Invalid::Corrupt)?;
            learning.total = total;
            if learning.observations.len() as u64 > total
                || learning.observations.len() > crate::cache::learn::ENTRY_OBSERVATIONS
            {
                return Err(Invalid::Corrupt);
            }
        }
        if r.at != body.len() {
            return Err(Invalid::Corrupt);
        }
        Ok(Entry {
            identity: found_identity,
            partition,
            prompt,
            response,
            metadata,
            tags,
            ttl,
            vector,
            learning,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        let end = self.at.checked_add(n).ok_or(Invalid::Corrupt)?;
        let s = self.data.get(self.at..end).ok_or(Invalid::Corrupt)?;
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, Invalid> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Invalid> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, Invalid> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Invalid::Corrupt)
    }
}

/// What an event in the stream says.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// An entry was written (its encoded form, not yet validated).
    Set(Vec<u8>),
    Invalidate {
        partition: String,
        prompt: String,
    },
    Partition(String),
    Tag(String),
    Clear,
}

/// One event read from the stream.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub id: String,
    /// Its number; `None` for an entry another program added.
    pub seq: Option<u64>,
    pub origin: Vec<u8>,
    /// The writer's wall clock in microseconds when it queued the change.
    pub wall_us: Option<u64>,
    /// `None`: not an event of this protocol (counted as invalid).
    pub change: Option<Change>,
}

pub fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.as_bytes()),
        _ => None,
    }
}

pub fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::Int(n) => Some(n.to_string()),
        other => bytes_of(other).and_then(|b| String::from_utf8(b.to_vec()).ok()),
    }
}

pub fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => string_of(other).and_then(|s| s.parse().ok()),
    }
}

pub fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// The field/value pairs of a stream entry (RESP2 array or RESP3 map).
fn fields(v: &Value) -> Vec<(Vec<u8>, &Value)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((bytes_of(k)?.to_vec(), v)))
            .collect(),
        other => items(other)
            .chunks_exact(2)
            .filter_map(|c| Some((bytes_of(&c[0])?.to_vec(), &c[1])))
            .collect(),
    }
}

/// The events of an `XRANGE` reply; `None` for a reply that is not one.
pub fn parse_events(v: &Value) -> Option<Vec<Event>> {
    let mut out = Vec::new();
    for e in items(v) {
        let pair = items(e);
        let id = string_of(pair.first()?)?;
        let f = fields(pair.get(1)?);
        let get = |name: &[u8]| f.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let text = |name: &[u8]| get(name).and_then(string_of);
        let seq = get(b"s")
            .and_then(int_of)
            .and_then(|n| u64::try_from(n).ok());
        let change = match text(b"k").as_deref() {
            Some("set") => get(b"d")
                .and_then(bytes_of)
                .map(|d| Change::Set(d.to_vec())),
            Some("inv") => match (text(b"p"), text(b"q")) {
                (Some(partition), Some(prompt)) => Some(Change::Invalidate { partition, prompt }),
                _ => None,
            },
            Some("part") => text(b"p").map(Change::Partition),
            Some("tag") => text(b"q").map(Change::Tag),
            Some("clear") => Some(Change::Clear),
            _ => None,
        };
        out.push(Event {
            id,
            seq: if change.is_some() { seq } else { None },
            origin: get(b"o").and_then(bytes_of).unwrap_or_default().to_vec(),
            wall_us: get(b"w")
                .and_then(int_of)
                .and_then(|n| u64::try_from(n).ok()),
            change,
        });
    }
    Some(out)
}

/// The milliseconds part of a stream id (`<ms>-<n>`).
pub fn id_ms(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            identity: "hash-384".into(),
            partition: "{\"model\":\"m\"}".into(),
            prompt: "What is Rust?".into(),
            response: b"a language".to_vec(),
            metadata: Some(b"{\"k\":1}".to_vec()),
            tags: vec!["docs".into(), "v1".into()],
            ttl: 60.0,
            vector: vec![0.6, 0.8, 0.0],
            learning: EntryLearning::default(),
        }
    }

    #[test]
    fn entries_round_trip_and_refuse_what_is_not_theirs() {
        let e = entry();
        let data = e.encode();
        assert_eq!(Entry::decode(&data, "hash-384", 3), Ok(e.clone()));
        let mut no_meta = e.clone();
        no_meta.metadata = None;
        no_meta.ttl = f64::INFINITY;
        assert_eq!(Entry::decode(&no_meta.encode(), "hash-384", 3), Ok(no_meta));
        assert_eq!(Entry::decode(&data, "other", 3), Err(Invalid::Foreign));
        assert_eq!(Entry::decode(&data, "hash-384", 4), Err(Invalid::Foreign));
        for cut in [0, 3, 10, data.len() / 2, data.len() - 1] {
            assert_eq!(
                Entry::decode(&data[..cut], "hash-384", 3),
                Err(Invalid::Corrupt),
                "cut at {cut}"
            );
        }
        let mut flipped = data.clone();
        flipped[20] ^= 1;
        assert_eq!(
            Entry::decode(&flipped, "hash-384", 3),
            Err(Invalid::Corrupt)
        );
        let mut newer = data.clone();
        newer[4] = ENTRY_VERSION + 1;
        assert_eq!(
            Entry::decode(&newer, "hash-384", 3),
            Err(Invalid::Version(ENTRY_VERSION + 1))
        );
        // nothing learned: version 1, as before the error-bounded mode
        assert_eq!(data[4], 1);
        let mut learned = e.clone();
        for (similarity, correct) in [(0.91, true), (0.88, false)] {
            learned.learning.record(crate::cache::learn::Observation {
                similarity,
                correct,
            });
        }
        let v2 = learned.encode();
        assert_eq!(v2[4], 2);
        assert_eq!(Entry::decode(&v2, "hash-384", 3), Ok(learned));
        let mut bad = v2.clone();
        let at = v2.len() - 4 - 1; // the last observation's flag
        bad[at] = 7;
        let crc = crc32fast::hash(&bad[..v2.len() - 4]);
        bad[v2.len() - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Entry::decode(&bad, "hash-384", 3), Err(Invalid::Corrupt));
        assert_eq!(
            Entry::decode(b"\x80\x04pickle", "hash-384", 3),
            Err(Invalid::Corrupt)
        );
    }

    #[test]
    fn ids_follow_the_exact_tier_and_keys_share_one_tag() {
        assert_eq!(entry_id("p", "Hello  World"), entry_id("p", "hello world"));
        assert_ne!(entry_id("p", "hello"), entry_id("q", "hello"));
        assert_ne!(entry_id("ab", "c"), entry_id("a", "bc"));
        let k = Keys::new("llmedge:", "chat");
        for key in k.keys.iter().chain([&k.entry("x"), &k.channel]) {
            assert!(key.starts_with("llmedge:cache:{chat}:"), "{key}");
        }
    }

    #[test]
    fn events_of_other_programs_are_recognised() {
        let ev = |fields: Vec<(&str, &[u8])>| {
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"5-0".to_vec()),
                Value::Array(
                    fields
                        .into_iter()
                        .flat_map(|(k, v)| {
                            [
                                Value::BulkString(k.as_bytes().to_vec()),
                                Value::BulkString(v.to_vec()),
                            ]
                        })
                        .collect(),
                ),
            ])])
        };
        let good = parse_events(&ev(vec![
            ("s", b"7"),
            ("o", b"a"),
            ("k", b"tag"),
            ("q", b"t"),
        ]))
        .unwrap();
        assert_eq!(good[0].seq, Some(7));
        assert_eq!(good[0].change, Some(Change::Tag("t".into())));
        let junk = parse_events(&ev(vec![("s", b"8"), ("hello", b"world")])).unwrap();
        assert_eq!(junk[0].seq, None);
        assert!(junk[0].change.is_none());
        assert!(parse_events(&Value::Array(vec![Value::Int(3)])).is_none());
        assert_eq!(id_ms("1700-3"), Some(1700));
    }
}
