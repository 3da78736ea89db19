//! The streaming UTF-8 decoder: the first byte of the input chooses the piece sizes,
//! the rest is the byte stream; the output must equal a one-shot lossy decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tinylm::tokenizer::utf8::StreamDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, bytes)) = data.split_first() else {
        return;
    };
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    let (mut start, mut i) = (0, 0u32);
    while start < bytes.len() {
        let bits = shape.rotate_right(i % 8);
        if bits & 8 != 0 {
            out.push_str(&dec.push(&[])); // empty pieces are legal too
        }
        // Pieces of 1 to 4 bytes: every way a character can be cut.
        let n = (1 + (bits & 3) as usize).min(bytes.len() - start);
        out.push_str(&dec.push(&bytes[start..start + n]));
        start += n;
        i += 1;
    }
    out.push_str(&dec.finish());
    assert_eq!(out, String::from_utf8_lossy(bytes));
});
