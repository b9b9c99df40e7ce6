//! Unique tags, ETags and ids.

use std::sync::atomic::{AtomicU64, Ordering};

/// Unique tags and ids: a random salt from the OS and a counter.
pub struct Ids {
    salt: u64,
    counter: AtomicU64,
}

impl Ids {
    pub fn new() -> Ids {
        let mut b = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut b);
        }
        Ids {
            salt: u64::from_le_bytes(b) | 1,
            counter: AtomicU64::new(1),
        }
    }

    pub fn tag(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "bl{:x}",
            (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ self.salt
        )
    }

    /// A fresh 64-bit value, unique within this process and unpredictable across processes.
    pub fn next(&self) -> u64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.salt
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new()
    }
}
