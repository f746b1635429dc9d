#![no_main]

use libfuzzer_sys::fuzz_target;

// The clock is read once, as the origin of the virtual clock the script advances.
fuzz_target!(|data: &[u8]| proto::fuzzing::control_state(data, std::time::Instant::now()));
