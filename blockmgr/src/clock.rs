//! Wall-clock time as the node writes it down (manifests, deadlines on the wire).

/// `t` in milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Now, in seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    unix_ms(std::time::SystemTime::now()) / 1000
}
