//! The binary snapshot format of a cache.
//!
//! ```text
//! magic "LLMSCACH" | version u32 | identity str | dim u32 | count u64
//! count x entry { partition str | prompt str | response bytes | has_meta u8
//!                 [meta bytes] | ntags u32 | ntags x str | age f64 |
//!                 remaining f64 | dim x f32 | learned }
//! npart u32 | npart x { partition str | learned }
//! crc32 u32 (of everything before it)
//! ```
//! `learned` (what the error-bounded mode learned, `cache::learn`) is
//! `total u64 | nobs u32 | nobs x { similarity f32 | correct u8 }`. Version 1
//! files, written before that mode, have neither `learned` nor the partition
//! section; they load with nothing learned.
//! Integers and floats little-endian; `str`/`bytes` are a u32 length and the
//! bytes. Entries are written least recently used first so that loading them
//! in order restores the LRU order. Ages and remaining lifetimes are relative,
//! so a snapshot survives the monotonic clock of another process.

use std::io::Write;
use std::path::Path;

use super::learn::{EntryLearning, Observation, PartitionLearning};
use super::payload;

pub const MAGIC: &[u8; 8] = b"LLMSCACH";
/// The version written; every version from 1 up to it is read.
pub const VERSION: u32 = 2;

/// One entry as stored in a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapEntry {
    /// The partition key without the embedder identity.
    pub partition: String,
    pub prompt: String,
    pub response: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub tags: Vec<String>,
    pub age: f64,
    pub remaining: f64,
    pub vector: Vec<f32>,
    pub learning: EntryLearning,
}

/// A snapshot read back.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub version: u32,
    pub entries: Vec<SnapEntry>,
    /// What each partition (key without the embedder identity) learned.
    pub partitions: Vec<(String, PartitionLearning)>,
}
#[derive(Debug, PartialEq)]
pub enum SnapshotError {
    Io(String),
    NotASnapshot,
    Truncated,
    Corrupted,
    Version(u32),
    Identity { found: String, expected: String },
    Dimension { found: u32, expected: usize },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "{e}"),
            SnapshotError::NotASnapshot => {
                write!(f, "not an llmedge cache snapshot (bad magic bytes)")
            }
            SnapshotError::Truncated => write!(f, "snapshot is truncated"),
            SnapshotError::Corrupted => write!(f, "snapshot is corrupted (checksum mismatch)"),
            SnapshotError::Version(v) => {
                write!(
                    f,
                    "snapshot format version {v} is not supported (expected 1 to {VERSION})"
                )
            }
            SnapshotError::Identity { found, expected } => write!(
                f,
                "snapshot was made with embedder {found:?}, this cache uses {expected:?}"
            ),
            SnapshotError::Dimension { found, expected } => {
                write!(
                    f,
                    "snapshot has dimension {found}, this cache uses {expected}"
                )
            }
        }
    }
}

pub struct Writer {
    buf: Vec<u8>,
    count_at: usize,
    count: u64,
    dim: usize,
    /// The partition section, appended by `finish`.
    partitions: Vec<u8>,
    npartitions: u32,
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// `total | nobs | nobs x (similarity, correct)`.
pub fn put_learned<'a>(
    buf: &mut Vec<u8>,
    total: u64,
    obs: impl ExactSizeIterator<Item = &'a Observation>,
) {
    buf.extend_from_slice(&total.to_le_bytes());
    buf.extend_from_slice(&(obs.len() as u32).to_le_bytes());
    for o in obs {
        buf.extend_from_slice(&o.similarity.to_le_bytes());
        buf.push(u8::from(o.correct));
    }
}

impl Writer {
    pub fn new(identity: &str, dim: usize) -> Self {
        let mut w = Writer {
            buf: Vec::new(),
            count_at: 0,
            count: 0,
            dim,
            partitions: Vec::new(),
            npartitions: 0,
        };
        w.buf.extend_from_slice(MAGIC);
        w.buf.extend_from_slice(&VERSION.to_le_bytes());
        w.bytes(identity.as_bytes());
        w.buf.extend_from_slice(&(dim as u32).to_le_bytes());
        w.count_at = w.buf.len();
        w.buf.extend_from_slice(&0u64.to_le_bytes());
        w
    }

    fn bytes(&mut self, b: &[u8]) {
        put_bytes(&mut self.buf, b);
    }

    pub fn entry(&mut self, e: &SnapEntry) {
        self.bytes(e.partition.as_bytes());
        self.bytes(e.prompt.as_bytes());
        self.bytes(&e.response);
        match &e.metadata {
            Some(m) => {
                self.buf.push(1);
                self.bytes(m);
            }
            None => self.buf.push(0),
        }
        self.buf
            .extend_from_slice(&(e.tags.len() as u32).to_le_bytes());
        for t in &e.tags {
            self.bytes(t.as_bytes());
        }
        self.buf.extend_from_slice(&e.age.to_le_bytes());
        self.buf.extend_from_slice(&e.remaining.to_le_bytes());
        debug_assert_eq!(e.vector.len(), self.dim);
        for x in &e.vector {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
        put_learned(
            &mut self.buf,
            e.learning.total,
            e.learning.observations.iter(),
        );
        self.count += 1;
    }

    /// What partition `key` (without the embedder identity) learned.
    pub fn partition(&mut self, key: &str, learned: &PartitionLearning) {
        put_bytes(&mut self.partitions, key.as_bytes());
        let obs: Vec<&Observation> = learned.observations().collect();
        put_learned(&mut self.partitions, learned.total, obs.into_iter());
        self.npartitions += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        let at = self.count_at;
        self.buf[at..at + 8].copy_from_slice(&self.count.to_le_bytes());
        self.buf.extend_from_slice(&self.npartitions.to_le_bytes());
        self.buf.extend_from_slice(&self.partitions);
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Write `data` to `path` atomically: a temporary file beside it, fsync,
/// rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io(format!("cannot write {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The bytes of the snapshot file at `path`: a regular file (a device or a
/// pipe could be read without end), read whole.
pub fn read_file(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io(format!("cannot read {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(SnapshotError::Io(format!(
            "cannot read {}: not a regular file",
            path.display()
        )));
    }
    // no further than the size it had when opened
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, meta.len()), &mut data)
        .map_err(io)?;
    Ok(data)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).ok_or(SnapshotError::Corrupted)?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(SnapshotError::Corrupted)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn f64(&mut self) -> Result<f64, SnapshotError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, SnapshotError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| SnapshotError::Corrupted)
    }
    /// Skips a `learned` block.
    fn learned_raw(&mut self) -> Result<(), SnapshotError> {
        self.u64()?;
        let n = self.u32()? as usize;
        self.take(n.checked_mul(5).ok_or(SnapshotError::Corrupted)?)?;
        Ok(())
    }
    /// `total | nobs | observations`; similarities must be in [-1, 1].
    fn learned(&mut self) -> Result<(u64, Vec<Observation>), SnapshotError> {
        let total = self.u64()?;
        let n = self.u32()? as usize;
        let raw = self.take(n.checked_mul(5).ok_or(SnapshotError::Corrupted)?)?;
        let obs = parse_observations(raw).ok_or(SnapshotError::Corrupted)?;
        if (obs.len() as u64) > total {
            return Err(SnapshotError::Corrupted);
        }
        Ok((total, obs))
    }
}

/// Observations as `put_learned` writes them (5 bytes each); None for a
/// similarity outside [-1, 1] or a flag other than 0 or 1.
pub fn parse_observations(raw: &[u8]) -> Option<Vec<Observation>> {
    raw.chunks_exact(5)
        .map(|c| {
            let similarity = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let correct = match c[4] {
                0 => false,
                1 => true,
                _ => return None,
            };
            (-1.0..=1.0).contains(&similarity).then_some(Observation {
                similarity,
                correct,
            })
        })
        .collect()
}

/// Parse and verify a snapshot made by an embedder of `identity` and `dim`.
pub fn decode(data: &[u8], identity: &str, dim: usize) -> Result<Snapshot, SnapshotError> {
    if data.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(data) {
            SnapshotError::Truncated
        } else {
            SnapshotError::NotASnapshot
        });
    }
    if &data[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    // magic, version, identity length, dim, count, crc
    if data.len() < 8 + 4 + 4 + 4 + 8 + 4 {
        return Err(SnapshotError::Truncated);
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let mut r = Reader { data: body, pos: 8 };
    let version = r.u32()?;
    if !(1..=VERSION).contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    if crc32fast::hash(body) != stored {
        // A shorter file than its header promises is the common case.
        return Err(truncated_or_corrupted(body, version));
    }
    let found = r.string()?;
    let d = r.u32()?;
    if d as usize != dim {
        return Err(SnapshotError::Dimension {
            found: d,
            expected: dim,
        });
    }
    if found != identity {
        return Err(SnapshotError::Identity {
            found,
            expected: identity.to_string(),
        });
    }
    let count = r.u64()?;
    // the count is the file's word: room for no more entries than the bytes
    // left could hold
    let smallest = 4 + 4 + 4 + 1 + 4 + 8 + 8 + 4 * dim;
    let room = (body.len() - r.pos) / smallest;
    let mut out = Vec::with_capacity(usize::try_from(count).map_or(room, |c| c.min(room)));
    for _ in 0..count {
        let partition = r.string()?;
        let prompt = r.string()?;
        let response = r.bytes()?.to_vec();
        let metadata = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            _ => return Err(SnapshotError::Corrupted),
        };
        let ntags = r.u32()?;
        let mut tags = Vec::new();
        for _ in 0..ntags {
            tags.push(r.string()?);
        }
        let age = r.f64()?;
        let remaining = r.f64()?;
        let raw = r.take(dim * 4)?;
        let vector: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if !(age.is_finite() && age >= 0.0) || remaining.is_nan() {
            return Err(SnapshotError::Corrupted);
        }
        let learning = if version >= 2 {
            let (total, observations) = r.learned()?;
            EntryLearning {
                observations,
                total,
            }
        } else {
            EntryLearning::default()
        };
        // what a lookup would decode: refused now, not at the first hit
        if !payload::is_response(&response)
            || metadata.as_deref().is_some_and(|m| !payload::is_json(m))
        {
            return Err(SnapshotError::Corrupted);
        }
        out.push(SnapEntry {
            partition,
            prompt,
            response,
            metadata,
            tags,
            age,
            remaining,
            vector,
            learning,
        });
    }
    let mut partitions = Vec::new();
    if version >= 2 {
        for _ in 0..r.u32()? {
            let key = r.string()?;
            let (total, obs) = r.learned()?;
            partitions.push((key, PartitionLearning::from_parts(obs, total)));
        }
    }
    if r.pos != body.len() {
        return Err(SnapshotError::Corrupted);
    }
    Ok(Snapshot {
        version,
        entries: out,
        partitions,
    })
}

/// Walk the entries without checking the CRC: if the data runs out, the file
/// was cut short; otherwise its bytes were changed.
fn truncated_or_corrupted(body: &[u8], version: u32) -> SnapshotError {
    let mut r = Reader {
        data: body,
        pos: 12,
    };
    let walk = (|| -> Result<(), SnapshotError> {
        r.string()?;
        let dim = r.u32()? as usize;
        let count = r.u64()?;
        for _ in 0..count {
            r.bytes()?;
            r.bytes()?;
            r.bytes()?;
            if r.take(1)?[0] == 1 {
                r.bytes()?;
            }
            for _ in 0..r.u32()? {
                r.bytes()?;
            }
            r.take(16 + dim * 4)?;
            if version >= 2 {
                r.learned_raw()?;
            }
        }
        if version >= 2 {
            for _ in 0..r.u32()? {
                r.bytes()?;
                r.learned_raw()?;
            }
        }
        Ok(())
    })();
    match walk {
        Err(_) if r.pos <= body.len() => SnapshotError::Truncated,
        _ => SnapshotError::Corrupted,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)] // one per field of the entry
    fn snap(
        partition: &str,
        prompt: &str,
        response: &[u8],
        metadata: Option<&[u8]>,
        tags: &[&str],
        age: f64,
        remaining: f64,
        vector: &[f32],
    ) -> SnapEntry {
        SnapEntry {
            partition: partition.into(),
            prompt: prompt.into(),
            response: response.to_vec(),
            metadata: metadata.map(<[u8]>::to_vec),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            age,
            remaining,
            vector: vector.to_vec(),
            learning: EntryLearning::default(),
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new("emb", 2);
        let mut first = snap(
            "p",
            "hello",
            b"Shi",
            Some(b"{}"),
            &["t"],
            1.5,
            f64::INFINITY,
            &[0.6, 0.8],
        );
        first.learning.record(Observation {
            similarity: 0.9,
            correct: false,
        });
        w.entry(&first);
        w.entry(&snap("", "bye", b"Bx", None, &[], 0.0, 3.0, &[1.0, 0.0]));
        let mut pool = PartitionLearning::default();
        pool.record(Observation {
            similarity: 0.8,
            correct: true,
        });
        w.partition("p", &pool);
        w.finish()
    }

    /// A version 1 file, as written before the error-bounded mode.
    fn version_1() -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        put_bytes(&mut b, b"emb");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        for f in ["p", "hello"] {
            put_bytes(&mut b, f.as_bytes());
        }
        put_bytes(&mut b, b"Shi");
        b.push(0);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1.5f64.to_le_bytes());
        b.extend_from_slice(&3.0f64.to_le_bytes());
        for x in [0.6f32, 0.8] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn version_1_files_still_load() {
        let s = decode(&version_1(), "emb", 2).unwrap();
        assert_eq!(s.version, 1);
        assert_eq!(s.entries[0].prompt, "hello");
        assert_eq!(s.entries[0].learning, EntryLearning::default());
        assert!(s.partitions.is_empty());
        let v1 = version_1();
        assert_eq!(
            decode(&v1[..v1.len() - 3], "emb", 2),
            Err(SnapshotError::Truncated)
        );
    }

    #[test]
    fn roundtrip() {
        let s = decode(&sample(), "emb", 2).unwrap();
        assert_eq!(s.version, VERSION);
        assert_eq!(s.partitions.len(), 1);
        assert_eq!(s.partitions[0].0, "p");
        assert_eq!(s.partitions[0].1.total, 1);
        let e = s.entries;
        assert_eq!(e[0].learning.total, 1);
        assert!(!e[0].learning.observations[0].correct);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].prompt, "hello");
        assert_eq!(e[0].metadata.as_deref(), Some(&b"{}"[..]));
        assert_eq!(e[0].remaining, f64::INFINITY);
        assert_eq!(e[1].vector, vec![1.0, 0.0]);
    }

    #[test]
    fn refuses_bad_files() {
        let s = sample();
        assert_eq!(
            decode(&s, "other", 2),
            Err(SnapshotError::Identity {
                found: "emb".into(),
                expected: "other".into()
            })
        );
        assert_eq!(
            decode(&s, "emb", 3),
            Err(SnapshotError::Dimension {
                found: 2,
                expected: 3
            })
        );
        for cut in [3, 20, s.len() / 2, s.len() - 1] {
            assert!(
                matches!(decode(&s[..cut], "emb", 2), Err(SnapshotError::Truncated)),
                "cut at {cut}: {:?}",
                decode(&s[..cut], "emb", 2)
            );
        }
        let mut bad = s.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert_eq!(decode(&bad, "emb", 2), Err(SnapshotError::Corrupted));
        assert_eq!(
            decode(b"PK\x03\x04junkjunkjunkjunkjunkjunk", "emb", 2),
            Err(SnapshotError::NotASnapshot)
        );
    }
}
