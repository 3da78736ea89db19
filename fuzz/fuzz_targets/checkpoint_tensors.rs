//! A checkpoint's safetensors file: any bytes give f32 tensors or an error, and no
//! allocation is sized by a number in the file beyond the file's own length.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tinylm::train::checkpoint;

fuzz_target!(|data: &[u8]| {
    let _ = checkpoint::parse_tensors(data, &candle_core::Device::Cpu);
});
