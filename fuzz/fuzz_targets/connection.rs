//! A connected pair under arbitrary operations (writes, reads, time jumps, loss,
//! crafted packets): every byte read is the byte written, in order, and buffers stay
//! bounded (see `hostile::connection_program`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = utp_fuzz::hostile::connection_program(data);
});
