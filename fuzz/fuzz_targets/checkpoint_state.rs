//! A checkpoint's state.json: any bytes give a state or an error, and an accepted
//! state goes through what the binary does next (validation, the memory check).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tinylm::train::{checkpoint, memory};

fuzz_target!(|data: &[u8]| {
    if let Ok((state, _files)) = checkpoint::parse_state(data) {
        if state.config.validate().is_ok() {
            let _ = memory::check(&state.config, 1000, Some(16e9));
        }
    }
});
