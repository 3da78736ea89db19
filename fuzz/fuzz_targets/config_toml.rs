//! A `--config` TOML file over the tiny preset: a config or an error; an accepted one
//! is validated and memory-checked as `tinylm train` does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tinylm::train::{config::TrainConfig, config_file, memory};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = TrainConfig::preset("tiny").expect("tiny preset");
    if let Ok(c) = config_file::config_from_toml(&base, text) {
        if c.validate().is_ok() {
            let _ = memory::check(&c, 1000, Some(16e9));
        }
    }
});
