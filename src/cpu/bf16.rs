//! bf16 from and to f32, in one place for the whole crate (the loss kernel's logits and
//! gradients, the factors `--dtype bf16`'s products pack and the activations stored
//! for them), so that a value rounded in one place has the bits it would have been
//! given in another.

/// bf16 bits as f32 (exact). A NaN stays a NaN (`half` also sets its quiet bit; no
/// caller needs more than that it is one).
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// x rounded to the nearest bf16, ties to even (overflow to ±inf); a NaN is quieted
/// keeping its top payload bits, as `half::bf16::from_f32` does.
#[inline(always)]
pub(crate) fn bf16_bits_rne(x: f32) -> u16 {
    let w = x.to_bits();
    // Adding 0x7FFF plus the kept lowest bit carries into bit 16 exactly when the
    // dropped half is above the halfway point, or at it with an odd kept part.
    let rounded = w.wrapping_add(0x7FFF + ((w >> 16) & 1)) >> 16;
    let nan = (w >> 16) | 0x40;
    (if w & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

/// [`bf16_bits_rne`] with subnormal inputs flushed to a zero of their sign first, as
/// `vcvtne2ps2bf16` treats them: bf16 shares f32's exponent range, so only values
/// below 2^-126 in magnitude differ.
#[inline(always)]
pub(crate) fn bf16_bits_rne_ftz(x: f32) -> u16 {
    let w = x.to_bits();
    if w & 0x7FFF_FFFF < 0x0080_0000 {
        (w >> 16) as u16 & 0x8000
    } else {
        bf16_bits_rne(x)
    }
}
