//! Content hashes: FNV-1a 64, the fingerprint of a task batch (`world::shard`) and the hash
//! binding each file of a result folder to its `summary.json` (`io::output`).

/// FNV-1a, 64 bits: a fast, stable hash (the same on every machine and build) for telling
/// worlds and files apart (another batch, a file rewritten by another run), not for security.
#[derive(Clone, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Hashes `bytes` in.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Hashes a length or count in (as 8 little-endian bytes), so that `[a, b] + [c]` and
    /// `[a] + [b, c]` differ.
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.bytes(&(n as u64).to_le_bytes())
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The hash of `bytes` as `summary.json` records it: `fnv1a64:` and 16 hex digits.
pub fn file_hash(bytes: &[u8]) -> String {
    format!("fnv1a64:{:016x}", Fnv1a::default().bytes(bytes).finish())
}
