//! The guest's `config` object, read once per instance. A bad value is an
//! error naming the key, returned by the first call (the channel's `tail`
//! when the gateway starts), so a typo stops start-up.

use crate::session::Settings;
use std::time::Duration;

/// The keys this guest reads, for the error on a bad one.
const KEYS: &str = "addr, prefix, keepalive_secs, username, password, client_id, ack_timeout_ms, connect_timeout_ms, reconnect_ms, buffer_events, buffer_bytes, max_message_bytes";

/// How many received messages, and how many bytes of them, the log holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buffer {
    pub events: usize,
    pub bytes: usize,
}

/// Reads the settings from `get` (the host's `config`), plus the log's bounds.
pub fn read(get: impl Fn(&str) -> Option<String>, random: u64) -> Result<(Settings, Buffer), String> {
    let addr = get("addr").ok_or(format!("config.addr is missing: the broker's host:port, also granted in grants.net (keys: {KEYS})"))?;
    if !addr.contains(':') {
        return Err(format!("config.addr must be host:port, got {addr:?}"));
    }
    let prefix = get("prefix").unwrap_or_else(|| "stategate".into());
    if prefix.is_empty() || prefix.contains(['+', '#', '\0']) || prefix.len() > 1024 {
        return Err(format!("config.prefix must be a non-empty MQTT topic name without + # or NUL, got {prefix:?}"));
    }
    let number = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
        match get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or(format!("config.{key} must be a whole number from {min} to {max}, got {v}")),
        }
    };
    // Below the host's default 5 s call time limit, so a failed wait is
    // reported by the guest rather than cut off by the host.
    let settings = Settings {
        topic: format!("{prefix}/events"),
        client_id: format!("{}-{random:016x}", get("client_id").unwrap_or_else(|| "stategate".into())),
        keep_alive: Duration::from_secs(number("keepalive_secs", 30, 0, 65535)?),
        username: get("username"),
        password: get("password"),
        ack_timeout: Duration::from_millis(number("ack_timeout_ms", 3000, 1, 600_000)?),
        connect_timeout: Duration::from_millis(number("connect_timeout_ms", 2000, 1, 600_000)?),
        reconnect: Duration::from_millis(number("reconnect_ms", 500, 1, 600_000)?),
        max_message: number("max_message_bytes", 8 << 20, 1024, crate::codec::MAX_REMAINING as u64)? as usize,
        addr,
    };
    if settings.client_id.len() > 65535 {
        return Err("config.client_id is too long".into());
    }
    let buffer = Buffer {
        events: number("buffer_events", 10_000, 1, 10_000_000)? as usize,
        // Well under the host's default 256 MiB memory cap per instance.
        bytes: number("buffer_bytes", 64 << 20, 1024, 1 << 40)? as usize,
    };
    Ok((settings, buffer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(pairs: &[(&str, &str)]) -> Result<(Settings, Buffer), String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        read(|k| map.get(k).cloned(), 0xfeed)
    }

    #[test]
    fn defaults_and_overrides() {
        let (s, buffer) = with(&[("addr", "127.0.0.1:1883")]).unwrap();
        assert_eq!(s.topic, "stategate/events");
        assert_eq!(s.client_id, "stategate-000000000000feed");
        assert_eq!(s.keep_alive, Duration::from_secs(30));
        assert_eq!(buffer, Buffer { events: 10_000, bytes: 64 << 20 });
        let (s, buffer) = with(&[("addr", "b:1"), ("prefix", "t/x"), ("keepalive_secs", "5"), ("buffer_events", "3")]).unwrap();
        assert_eq!((s.topic.as_str(), s.keep_alive.as_secs(), buffer.events), ("t/x/events", 5, 3));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(with(&[]).unwrap_err().contains("config.addr is missing"));
        assert!(with(&[("addr", "nohost")]).unwrap_err().contains("host:port"));
        assert!(with(&[("addr", "a:1"), ("prefix", "a/#")]).unwrap_err().contains("config.prefix"));
        assert!(with(&[("addr", "a:1"), ("keepalive_secs", "-1")]).unwrap_err().contains("config.keepalive_secs"));
        assert!(with(&[("addr", "a:1"), ("buffer_events", "0")]).unwrap_err().contains("config.buffer_events"));
    }
}
