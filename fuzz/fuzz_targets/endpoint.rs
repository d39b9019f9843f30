//! An endpoint fed arbitrary datagrams from arbitrary addresses, with time advancing
//! and application calls: bounded tables, no amplification towards unvalidated
//! addresses, valid output, no busy timers (see `hostile::endpoint_program`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    utp_fuzz::hostile::endpoint_program(data);
});
