//! The packet decoder: never panics, and decode followed by encode is byte exact.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    utp_fuzz::hostile::decode_roundtrip(data);
});
