//! Unique names for per-test databases, key prefixes and directories.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name unique across the processes and threads of one machine: `<stem>_<pid>_<time>_<n>`,
/// lowercase ASCII letters, digits and underscores only.
pub(crate) fn unique(stem: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() % 1_000_000_000_000);
    format!("{stem}_{}_{micros}_{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::unique;

    #[test]
    fn names_differ_and_stay_identifier_safe() {
        let a = unique("gs_test");
        let b = unique("gs_test");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.starts_with("gs_test_"));
            assert!(
                name.len() <= 63,
                "{name} is longer than a PostgreSQL identifier"
            );
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{name}"
            );
        }
    }
}
