//! Validated store configuration: the server URL(s), the key prefix and the
//! timeouts. Everything a user can get wrong is rejected here, once, with a
//! message naming the value and what is accepted.

use std::time::Duration;

/// Where the store's keys live and how long any call may wait.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// One URL, or the seed nodes of a Redis Cluster.
    pub urls: Vec<String>,
    /// True: `urls` are Redis Cluster nodes.
    pub cluster: bool,
    /// Prepended to every key (and pub/sub channel) the store touches.
    pub key_prefix: String,
    /// The longest any single call waits for Redis.
    pub timeout: Duration,
    /// The longest one connection attempt waits (construction and reconnects).
    pub connect_timeout: Duration,
    /// How often an idle connection is checked with a `PING`, so that
    /// `health()` notices a lost server without any traffic.
    pub health_interval: Duration,
}

/// The default of [`StoreConfig::health_interval`] (also in the binding's
/// signature).
const DEFAULT_HEALTH_INTERVAL: f64 = 1.0;
/// Checking more often than this only loads the server.
const MIN_HEALTH_INTERVAL: f64 = 0.01;

const SCHEMES: &str = "redis://, rediss:// (TLS), unix:// or redis+unix://";
const MAX_PREFIX_LEN: usize = 256;

impl StoreConfig {
    /// Validates every field; `cluster: None` means "a list of more than one
    /// URL is a cluster".
    pub fn new(
        urls: Vec<String>,
        cluster: Option<bool>,
        key_prefix: &str,
        timeout: f64,
        connect_timeout: f64,
    ) -> Result<StoreConfig, String> {
        if urls.is_empty() {
            return Err("url must be a Redis URL or a non-empty list of cluster node URLs".into());
        }
        let urls = urls
            .into_iter()
            .map(|u| unix_credentials_to_query(&u))
            .collect::<Vec<_>>();
        for url in &urls {
            check_url(url)?;
        }
        let cluster = cluster.unwrap_or(urls.len() > 1);
        if !cluster && urls.len() > 1 {
            return Err(format!(
                "cluster=False takes exactly one URL, got {} URLs",
                urls.len()
            ));
        }
        if cluster {
            if let Some(u) = urls.iter().find(|u| is_unix(u)) {
                return Err(format!(
                    "Redis Cluster nodes need redis:// or rediss:// URLs, got {}",
                    redact_url(u)
                ));
            }
        }
        check_key_part("key_prefix", key_prefix, true)?;
        if key_prefix.len() > MAX_PREFIX_LEN {
            return Err(format!(
                "key_prefix must be at most {MAX_PREFIX_LEN} bytes, got {}",
                key_prefix.len()
            ));
        }
        Ok(StoreConfig {
            urls,
            cluster,
            key_prefix: key_prefix.to_owned(),
            timeout: seconds("timeout", timeout)?,
            connect_timeout: seconds("connect_timeout", connect_timeout)?,
            health_interval: Duration::from_secs_f64(DEFAULT_HEALTH_INTERVAL),
        })
    }

    /// Sets the heartbeat interval (seconds, 0.01 to 3600).
    pub fn with_health_interval(mut self, interval: f64) -> Result<StoreConfig, String> {
        if !(interval.is_finite() && (MIN_HEALTH_INTERVAL..=3600.0).contains(&interval)) {
            return Err(format!(
                "health_interval must be a number of seconds >= {MIN_HEALTH_INTERVAL} and <= 3600, got {interval}"
            ));
        }
        self.health_interval = Duration::from_secs_f64(interval);
        Ok(self)
    }

    /// The URLs with passwords replaced by `***`, for reprs, health and errors.
    pub fn redacted_urls(&self) -> Vec<String> {
        self.urls.iter().map(|u| redact_url(u)).collect()
    }
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
        return Err(format!(
            "{name} must be a number of seconds > 0 and <= 3600, got {v}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn is_unix(url: &str) -> bool {
    url.starts_with("unix:") || url.starts_with("redis+unix:")
}

/// `unix://user:pw@/path` (the form redis-py accepts) as the redis crate
/// reads it: `unix:///path?user=user&pass=pw`.
fn unix_credentials_to_query(url: &str) -> String {
    if !is_unix(url) {
        return url.to_owned();
    }
    let Some(after) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[after..];
    let Some(at) = rest.find('@').filter(|&a| !rest[..a].contains('/')) else {
        return url.to_owned();
    };
    let (user, pass) = match rest[..at].split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (&rest[..at], None),
    };
    let mut out = format!("{}{}", &url[..after], &rest[at + 1..]);
    let mut sep = if out.contains('?') { '&' } else { '?' };
    // The userinfo is already percent-encoded, as query values must be.
    for (k, v) in [("user", Some(user)), ("pass", pass)] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push(sep);
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            sep = '&';
        }
    }
    out
}

fn check_url(url: &str) -> Result<(), String> {
    let shown = redact_url(url);
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("{shown:?} is not a valid URL ({e}); expected {SCHEMES}"))?;
    match parsed.scheme() {
        "redis" | "rediss" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(format!(
                    "{shown:?} has no host; expected redis://host:port/db"
                ));
            }
            let db = parsed.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(format!(
                    "{shown:?}: the path must be a database number (redis://host:port/0), got {db:?}"
                ));
            }
        }
        "unix" | "redis+unix" => {
            if parsed.path().is_empty() || parsed.path() == "/" {
                return Err(format!(
                    "{shown:?} has no socket path; expected unix:///path/to/redis.sock?db=0"
                ));
            }
        }
        other => {
            return Err(format!(
                "{shown:?} has the scheme {other:?}; expected {SCHEMES}"
            ))
        }
    }
    // The redis crate's own parser has the last word (ports, db numbers,
    // the protocol parameter).
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|e| format!("{shown:?} is not a usable Redis URL: {e}"))
}

/// A key part (prefix, limiter or breaker name) must be printable without
/// spaces, and (except the prefix) free of hash-tag braces so that the tag is
/// always the part the caller chose.
pub fn check_key_part(what: &str, value: &str, allow_empty: bool) -> Result<(), String> {
    if value.is_empty() && !allow_empty {
        return Err(format!("{what} must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} must not contain spaces or control characters, got {value:?} (contains {c:?})"
        ));
    }
    if what != "key_prefix" && value.contains(['{', '}']) {
        return Err(format!(
            "{what} must not contain '{{' or '}}' (they delimit the Redis Cluster hash tag), got {value:?}"
        ));
    }
    Ok(())
}

/// `url` with the password (userinfo or `pass=` query parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL: hide everything between "://" and the last '@'.
        return match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
            _ => url.to_owned(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| k == "pass") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> Result<StoreConfig, String> {
        StoreConfig::new(vec![url.into()], None, "llmedge:", 0.05, 1.0)
    }

    #[test]
    fn accepts_the_documented_url_forms() {
        for url in [
            "redis://localhost:6379/0",
            "redis://localhost",
            "rediss://cache.example.com:6380/2",
            "redis://user:secret@localhost:6379/0",
            "redis://:secret@localhost/1",
            "unix:///run/redis/redis.sock?db=3",
            "redis+unix:///tmp/redis.sock",
        ] {
            assert!(one(url).is_ok(), "{url}: {:?}", one(url).err());
        }
        let c = StoreConfig::new(
            vec!["redis://a:7000".into(), "redis://b:7001".into()],
            None,
            "x:",
            0.05,
            1.0,
        )
        .expect("cluster");
        assert!(c.cluster);
        assert!(one("redis://localhost").expect("ok").cluster.eq(&false));
    }

    #[test]
    fn rejects_bad_urls_naming_the_value() {
        for (url, needle) in [
            ("localhost:6379", "scheme"),
            ("http://localhost", "scheme \"http\""),
            ("redis://", "no host"),
            ("redis://localhost/abc", "database number"),
            ("redis://localhost:99999", "not a valid URL"),
            ("unix://", "no socket path"),
            ("", "not a valid URL"),
        ] {
            let err = one(url).expect_err(url);
            assert!(err.contains(needle), "{url}: {err}");
        }
        let err = StoreConfig::new(vec![], None, "", 0.05, 1.0).expect_err("empty");
        assert!(err.contains("non-empty list"));
        let err = StoreConfig::new(
            vec!["redis://a".into(), "unix:///s".into()],
            None,
            "",
            0.05,
            1.0,
        )
        .expect_err("unix in cluster");
        assert!(err.contains("Cluster nodes"), "{err}");
        let err = StoreConfig::new(
            vec!["redis://a".into(), "redis://b".into()],
            Some(false),
            "",
            0.05,
            1.0,
        )
        .expect_err("two urls, not cluster");
        assert!(err.contains("exactly one URL"), "{err}");
    }

    #[test]
    fn rejects_bad_prefixes_and_timeouts() {
        let bad =
            |prefix: &str| StoreConfig::new(vec!["redis://h".into()], None, prefix, 0.05, 1.0);
        assert!(bad("my app:").expect_err("space").contains("spaces"));
        assert!(bad("a\nb").expect_err("newline").contains("control"));
        assert!(bad(&"p".repeat(300)).expect_err("long").contains("at most"));
        assert!(bad("").is_ok());
        assert!(bad("{tenant}:").is_ok());
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY, 7200.0] {
            let err =
                StoreConfig::new(vec!["redis://h".into()], None, "", t, 1.0).expect_err("timeout");
            assert!(err.contains("timeout must be"), "{err}");
        }
        for t in [0.0, 0.001, -1.0, f64::NAN, 7200.0] {
            let err = one("redis://h")
                .and_then(|c| c.with_health_interval(t))
                .expect_err("interval");
            assert!(err.contains("health_interval must be"), "{err}");
        }
        let c = one("redis://h").and_then(|c| c.with_health_interval(0.25));
        assert_eq!(c.map(|c| c.health_interval), Ok(Duration::from_millis(250)));
        assert!(check_key_part("name", "a{b", false).is_err());
        assert!(check_key_part("name", "", false).is_err());
        assert!(check_key_part("name", "api:v1", false).is_ok());
    }

    #[test]
    fn unix_userinfo_becomes_query_parameters() {
        let c = one("unix://app:p%40ss@/run/redis.sock?db=1").expect("ok");
        assert_eq!(
            c.urls[0],
            "unix:///run/redis.sock?db=1&user=app&pass=p%40ss"
        );
        let c = one("unix://:pw@/run/redis.sock").expect("ok");
        assert_eq!(c.urls[0], "unix:///run/redis.sock?pass=pw");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://user:hunter2@localhost:6379/0"),
            "redis://user:***@localhost:6379/0"
        );
        assert_eq!(
            redact_url("unix:///tmp/r.sock?db=1&pass=hunter2"),
            "unix:///tmp/r.sock?db=1&pass=***"
        );
        assert_eq!(redact_url("redis://localhost"), "redis://localhost");
        assert!(!redact_url("redis://u:hunter2@bad host").contains("hunter2"));
        let err = one("redis://user:hunter2@localhost/xyz").expect_err("bad db");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
