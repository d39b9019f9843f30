//! Helpers shared by the integration tests.

pub mod hostile;
pub mod vnet;

/// A byte stream of `len` bytes that differs per `salt` (xorshift), so that any loss,
/// duplication or reordering of data shows in a comparison.
pub fn pattern(len: usize, salt: u64) -> Vec<u8> {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
