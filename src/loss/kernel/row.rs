//! One row of the cross-entropy kernel: passes A (max), B (exponentials and their sum)
//! and C (the gradient), the scalars that turn them into the loss, and the software
//! pipeline that writes a streamed row's gradient during the next row's pass B.

use super::elem::{Elem, Real, EXP_LANES, STREAM_BLOCK};
use crate::cpu::as_uninit;
use std::mem::MaybeUninit;

/// Independent accumulators per inner loop: 16 f32 = one AVX-512 register.
const LANES: usize = 16;

/// What every row needs to know besides its data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub v: usize,
    pub ignore_index: Option<u32>,
    pub label_smoothing: f64,
    pub z_loss: f64,
    pub softcap: Option<f64>,
}

/// How d(loss)/d(row loss) is given: one factor for all rows (mean: 1/count, sum: 1),
/// or one per row (reduction none, from the upstream gradient).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowScale<'a> {
    Uniform(f64),
    PerRow(&'a [f64]),
}

impl RowScale<'_> {
    /// The factor of row `i`.
    #[inline(always)]
    pub(super) fn of_row(self, i: usize) -> f64 {
        match self {
            RowScale::Uniform(s) => s,
            RowScale::PerRow(s) => s[i],
        }
    }
}

/// Whether the first maximum of row `x` (whose max is `m`) is at `t`: argmax == target
/// with ties going to the first index, as torch.argmax.
#[inline(always)]
pub(super) fn first_max_at<T: Elem<F>, F: Real>(x: &[T], t: usize, m: F) -> bool {
    x[t].load() == m && !x[..t].iter().any(|&xv| xv.load() == m)
}

/// Per-row results. Ignored rows have loss 0, lse 0, correct false.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowOut {
    pub loss: f64,
    pub lse: f64,
    pub correct: bool,
    pub counted: bool,
    /// Why the row has no loss, if it has none for a reason other than being ignored.
    pub fault: Option<RowFault>,
}

/// What can be wrong with a row (the job driver reports the first one with its row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowFault {
    /// NaN or +inf among the logits.
    NonFinite,
    /// Every logit is -inf.
    AllNegInf,
    /// The target is not the ignore index and not below V.
    TargetOutOfRange,
}

/// Scratch rows reused across the rows of one rayon job.
pub(super) struct Scratch<F> {
    /// The row as the passes read it when not the logits themselves: soft-capped,
    /// y = c·tanh(x/c), or widened to f32 ([`Elem::widen`]).
    y: Vec<F>,
    /// exp(y - m), when the gradient row cannot hold it or the gradient is streamed.
    e: Vec<F>,
    /// The previous streamed row's exp(y - m), while its pass C is pending.
    e_prev: Vec<F>,
    /// One block of the streamed gradient, staged (see `Real::stream_affine`).
    blk: Vec<F>,
}

impl<F: Real> Scratch<F> {
    pub(super) fn new() -> Self {
        Self {
            y: Vec::new(),
            e: Vec::new(),
            e_prev: Vec::new(),
            // Pass C's blocks run up to a line of a 16-bit gradient (32 values) past
            // STREAM_BLOCK values.
            blk: vec![F::ZERO; STREAM_BLOCK + 32],
        }
    }
}

/// Pass A: max of the row. NaN entries are skipped here (`v > max` is false for them)
/// and caught after pass B, where they make the sum NaN; +inf makes the max +inf.
#[inline(always)]
fn pass_max<T: Elem<F>, F: Real>(x: &[T]) -> F {
    let mut mx = [-F::INF; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            let v = c[l].load();
            mx[l] = if v > mx[l] { v } else { mx[l] };
        }
    }
    for (l, &t) in it.remainder().iter().enumerate() {
        let v = t.load();
        mx[l] = if v > mx[l] { v } else { mx[l] };
    }
    let mut m = mx[0];
    for &v in &mx[1..] {
        m = if v > m { v } else { m };
    }
    m
}

/// Pass B: e_j = exp(y_j - m) (stored in `e` when given), returns (Σ e_j, Σ (m - y_j)).
/// The second sum is only accumulated when `want_dsum` (label smoothing). `next` is
/// the row that comes after this one, prefetched as this one is read.
///
/// With `e`, the exponentials are written first and summed in a second loop over `e`
/// (in L1/L2): summing while storing made LLVM keep the 16 accumulators on the stack,
/// a store-to-load chain through memory. Without (the loss alone), they are computed
/// `EXP_LANES` at a time ([`Elem::exp_shifted_lanes`]).
#[inline(always)]
fn pass_exp<T: Elem<F>, F: Real, N>(
    x: &[T],
    m: F,
    e: Option<&mut [F]>,
    want_dsum: bool,
    next: &[N],
) -> (F, F) {
    let mut s = [F::ZERO; LANES];
    let mut ds = [F::ZERO; LANES];
    match e {
        Some(e) => {
            exp_block(x, m, e, &mut s, Prefetch::of(next, 0));
            if want_dsum {
                dsum_lanes(x, m, &mut ds);
            }
        }
        None => {
            let pf = Prefetch::of(next, 0);
            let mut xi = x.chunks_exact(EXP_LANES);
            for (k, xc) in (&mut xi).enumerate() {
                for c in 0..EXP_LANES / LANES {
                    pf.chunk(k * (EXP_LANES / LANES) + c);
                }
                let xv: [F; EXP_LANES] = std::array::from_fn(|l| xc[l].load());
                let mut ev = [F::ZERO; EXP_LANES];
                T::exp_shifted_lanes(&xv, m, &mut ev);
                add_lanes(&mut s, &ev);
            }
            let r0 = x.len() / EXP_LANES;
            let mut xi = xi.remainder().chunks_exact(LANES);
            for (k, xc) in (&mut xi).enumerate() {
                pf.chunk(r0 * (EXP_LANES / LANES) + k);
                let mut ev = [F::ZERO; LANES];
                for l in 0..LANES {
                    ev[l] = T::exp_shifted(xc[l].load(), m);
                }
                for l in 0..LANES {
                    s[l] = s[l] + ev[l];
                }
            }
            for (l, xv) in xi.remainder().iter().enumerate() {
                s[l] = s[l] + T::exp_shifted(xv.load(), m);
            }
            if want_dsum {
                dsum_lanes(x, m, &mut ds);
            }
        }
    }
    (reduce_lanes(s), reduce_lanes(ds))
}

/// s[l] += v[c·LANES + l] for each chunk c of `v` in order: the order of a loop that
/// adds one chunk at a time.
#[inline(always)]
fn add_lanes<F: Real>(s: &mut [F; LANES], v: &[F]) {
    for c in v.chunks_exact(LANES) {
        for l in 0..LANES {
            s[l] = s[l] + c[l];
        }
    }
}

/// Pairwise over the lanes: the same fixed order every time.
#[inline(always)]
fn reduce_lanes<F: Real>(mut s: [F; LANES]) -> F {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            s[l] = s[l] + s[l + w];
        }
    }
    s[0]
}

/// ds[l] += Σ (m - y_j) over the lanes of `x` (label smoothing's mean term).
#[inline(always)]
fn dsum_lanes<T: Elem<F>, F: Real>(x: &[T], m: F, ds: &mut [F; LANES]) {
    let mut xi = x.chunks_exact(LANES);
    for xc in &mut xi {
        for l in 0..LANES {
            ds[l] = ds[l] + (m - xc[l].load());
        }
    }
    for (l, xv) in xi.remainder().iter().enumerate() {
        ds[l] = ds[l] + (m - xv.load());
    }
}

/// Pass B over a block of a row: e_j = exp(x_j - m) into `e`, added into the lane
/// sums `s`. Blocks of a multiple of `LANES` elements (with any remainder only in the
/// last) sum in exactly the order of one call over the whole row.
#[inline(always)]
fn exp_block<T: Elem<F>, F: Real, N>(
    x: &[T],
    m: F,
    e: &mut [F],
    s: &mut [F; LANES],
    pf: Prefetch<N>,
) {
    debug_assert_eq!(x.len(), e.len());
    if T::simd_exp_block(x, m, e, s, |k| pf.chunk(k)) {
        return;
    }
    let mut xi = x.chunks_exact(LANES);
    let mut ei = e.chunks_exact_mut(LANES);
    for (k, (xc, ec)) in (&mut xi).zip(&mut ei).enumerate() {
        pf.chunk(k);
        for l in 0..LANES {
            ec[l] = T::exp_shifted(xc[l].load(), m);
        }
    }
    // Summed from `e` (see `pass_exp`).
    let mut ei = e.chunks_exact(LANES);
    for ec in &mut ei {
        for l in 0..LANES {
            s[l] = s[l] + ec[l];
        }
    }
    let r0 = x.len() / LANES * LANES;
    for (l, (xv, ev)) in xi.remainder().iter().zip(&mut e[r0..]).enumerate() {
        *ev = T::exp_shifted(xv.load(), m);
        s[l] = s[l] + *ev;
    }
}

/// The next row's bytes from element `first_elem` on, to be brought into L2 one
/// `LANES`-element chunk per chunk read here, so that its read from memory overlaps
/// this row's arithmetic instead of following it. Empty (a no-op) for the last row.
struct Prefetch<N> {
    base: *const u8,
    len: usize,
    /// The next row's element type (which need not be the type of the row read: a
    /// widened row is read as f32), known at compile time so that a chunk's prefetch
    /// stays one instruction (two for f64's 128-byte chunks).
    _next: std::marker::PhantomData<N>,
}

impl<N> Clone for Prefetch<N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<N> Copy for Prefetch<N> {}

impl<N> Prefetch<N> {
    #[inline(always)]
    fn of(next: &[N], first_elem: usize) -> Self {
        let bytes = std::mem::size_of_val(next);
        let off = (first_elem * std::mem::size_of::<N>()).min(bytes);
        Self {
            base: (next.as_ptr() as *const u8).wrapping_add(off),
            len: bytes - off,
            _next: std::marker::PhantomData,
        }
    }

    /// Prefetches the bytes of chunk `k` (elements k·LANES .. (k+1)·LANES).
    ///
    /// A chunk of at most one line (f32, 16-bit) takes one prefetch, of its first byte,
    /// the address the general loop's first (and for a line-aligned chunk only)
    /// iteration took: the loop, inlined into every chunk of pass B, cost more
    /// instructions than the exponentials of a bf16 chunk (BENCHMARKS.md). A row
    /// that starts inside a line can leave its last line (and the values after the
    /// last whole chunk) to a demand miss, as before.
    #[inline(always)]
    fn chunk(self, k: usize) {
        let sz = LANES * std::mem::size_of::<N>();
        if sz <= 64 {
            prefetch_line(self.base, self.len, k * sz);
        } else {
            prefetch_range(self.base, self.len, k * sz, sz);
        }
    }
}

/// Asks for the line holding byte `off` of the `total`-byte block at `base` to be
/// brought into L2, if `off` lies inside the block.
#[inline(always)]
fn prefetch_line(base: *const u8, total: usize, off: usize) {
    #[cfg(target_arch = "x86_64")]
    if off < total {
        // SAFETY: prefetch never faults; the address lies inside the block.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                base.wrapping_add(off) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, total, off);
}

/// Asks for bytes [off, off + len) of the `total`-byte block at `base` to be brought
/// into L2 (64-byte lines), so that the next row's read from memory overlaps this
/// row's arithmetic instead of following it.
#[inline(always)]
fn prefetch_range(base: *const u8, total: usize, off: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut o = off;
        while o < off + len && o < total {
            // SAFETY: prefetch never faults; the address lies inside the block.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    base.wrapping_add(o) as *const i8,
                )
            };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, total, off, len);
}

/// Pass C, in place: g_j = a·e_j - b, times the soft-cap chain factor 1 - (y_j/c)².
#[inline(always)]
fn pass_grad_inplace<F: Real>(g: &mut [F], a: F, b: F, capped: Option<(&[F], F)>) {
    match capped {
        None => {
            for gv in g.iter_mut() {
                *gv = a * *gv - b;
            }
        }
        Some((y, inv_c)) => {
            for (gv, &yv) in g.iter_mut().zip(y) {
                let u = yv * inv_c;
                *gv = (a * *gv - b) * (F::ONE - u * u);
            }
        }
    }
}

/// A streamed row whose pass C is still to do: its gradient row (of the logits' type
/// T), to be written as g_j = a·e_j - b (minus `hit` at the target t) from the
/// exponentials that pass B left in the scratch row `Scratch::e_prev`. Kept so that
/// the next row's pass B can write it (see `pass_exp_pipelined`).
pub(super) struct Pending<'g, T, F> {
    g: &'g mut [MaybeUninit<T>],
    a: F,
    b: F,
    t: usize,
    hit: F,
}

impl<T: Elem<F>, F: Real> Pending<'_, T, F> {
    /// Pass C for elements `j0 .. j0 + e.len()` of the row: computed into `buf` (L1)
    /// and written to the gradient with non-temporal stores. Pass B writing e_j into
    /// the gradient itself and pass C rescaling it there would pull every gradient line
    /// into the cache before overwriting it: 12 bytes of memory traffic per element
    /// instead of 8.
    #[inline(always)]
    fn write_block(&mut self, j0: usize, e: &[F], buf: &mut [F]) {
        let t = (j0..j0 + e.len()).contains(&self.t).then(|| self.t - j0);
        let g = &mut self.g[j0..j0 + e.len()];
        T::stream_grad(g, e, (self.a, self.b), t, self.hit, buf);
    }

    /// Where pass C's block k (of `blocks(v)`) starts. Its blocks end on the
    /// gradient's 64-byte lines, wherever the row starts (a caller's buffer is seldom
    /// line-aligned): the values outside whole lines, written one at a time, are then
    /// the row's first and last few, not every block's.
    #[inline(always)]
    fn block_start(&self, k: usize) -> usize {
        let n = self.g.len();
        // Values before the first line boundary, 0 to 64/size - 1. align_offset can
        // say usize::MAX (no offset aligns) only for a pointer that is not T-aligned;
        // the cap keeps every block within the staging row even then.
        let head = self
            .g
            .as_ptr()
            .align_offset(64)
            .min(64 / std::mem::size_of::<T>() - 1);
        match k {
            0 => 0,
            _ => (k * STREAM_BLOCK + head).min(n),
        }
    }

    /// Pass C's block k of the row from its exponentials `e` (the whole row).
    #[inline(always)]
    fn block(&mut self, k: usize, e: &[F], buf: &mut [F]) {
        let lo = self.block_start(k);
        let hi = if k + 1 >= blocks(e.len()) {
            e.len()
        } else {
            self.block_start(k + 1)
        };
        self.write_block(lo, &e[lo..hi], buf);
    }

    /// The whole pass C, a block at a time.
    #[inline(always)]
    fn write(mut self, e: &[F], buf: &mut [F]) {
        for k in 0..blocks(e.len()) {
            self.block(k, e, buf);
        }
    }
}

/// Blocks of a row of v values in the pipeline: pass B's of `STREAM_BLOCK` values
/// (the last shorter), and as many of pass C's.
#[inline(always)]
fn blocks(v: usize) -> usize {
    v.div_ceil(STREAM_BLOCK)
}

/// Pass B of this row fused with pass C of the previous one, a block at a time:
/// e_j = exp(x_j - m) into `e` (lane sums as `pass_exp`, so the same bits), and,
/// between the blocks, the previous row's streamed gradient block from `e_prev`.
/// Done one after the other, the row's arithmetic and its gradient's stores each left
/// the memory or the vector units idle; interleaved, the stores drain while the
/// exponentials are computed (and the next row, prefetched, arrives meanwhile).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_exp_pipelined<X: Elem<F>, T: Elem<F>, F: Real>(
    x: &[X],
    m: F,
    e: &mut [F],
    want_dsum: bool,
    next: &[T],
    mut prev: Option<(Pending<'_, T, F>, &[F])>,
    buf: &mut [F],
) -> (F, F) {
    let mut s = [F::ZERO; LANES];
    for (k, (xb, eb)) in x
        .chunks(STREAM_BLOCK)
        .zip(e.chunks_mut(STREAM_BLOCK))
        .enumerate()
    {
        let j0 = k * STREAM_BLOCK;
        exp_block(xb, m, eb, &mut s, Prefetch::of(next, j0));
        if let Some((pend, e_prev)) = prev.as_mut() {
            pend.block(k, e_prev, buf);
        }
    }
    let mut ds = [F::ZERO; LANES];
    if want_dsum {
        dsum_lanes(x, m, &mut ds);
    }
    (reduce_lanes(s), reduce_lanes(ds))
}

/// Pass C into a narrower gradient type.
#[inline(always)]
fn pass_grad_convert<F: Real, G: Elem<F>>(
    e: &[F],
    g: &mut [G],
    a: F,
    b: F,
    capped: Option<(&[F], F)>,
) {
    match capped {
        None => {
            for (gv, &ev) in g.iter_mut().zip(e) {
                *gv = G::store(a * ev - b);
            }
        }
        Some((y, inv_c)) => {
            for ((gv, &ev), &yv) in g.iter_mut().zip(e).zip(y) {
                let u = yv * inv_c;
                *gv = G::store((a * ev - b) * (F::ONE - u * u));
            }
        }
    }
}

/// Pass B in place: the row holds y on entry and e_j = exp(y_j - m) on exit.
#[inline(always)]
fn pass_exp_inplace<F: Real>(xe: &mut [F], m: F, want_dsum: bool) -> (F, F) {
    let mut s = [F::ZERO; LANES];
    let mut ds = [F::ZERO; LANES];
    let mut it = xe.chunks_exact_mut(LANES);
    for c in &mut it {
        for l in 0..LANES {
            let d = m - c[l];
            let ev = F::exp_nonpos(-d);
            c[l] = ev;
            s[l] = s[l] + ev;
            if want_dsum {
                ds[l] = ds[l] + d;
            }
        }
    }
    for (l, xv) in it.into_remainder().iter_mut().enumerate() {
        let d = m - *xv;
        *xv = F::exp_nonpos(-d);
        s[l] = s[l] + *xv;
        ds[l] = ds[l] + d;
    }
    (reduce_lanes(s), reduce_lanes(ds))
}

/// Where a row's data comes from and its gradient goes.
pub(crate) enum RowIo<'a, T> {
    /// Read the logits, write the gradient (if any) to a separate row.
    Separate(&'a [T], Option<&'a mut [T]>),
    /// The row holds the logits on entry and the gradient on exit (T must be the
    /// arithmetic type).
    InPlace(&'a mut [T]),
    /// Read the logits, stream the gradient into uninitialised memory, writing every
    /// element (no soft-cap).
    Fresh(&'a [T], &'a mut [MaybeUninit<T>]),
}

/// One row: loss, lse, argmax-correct and, if a gradient row is given, the gradient
/// scaled by `scale`. Soft-capping happens here.
///
/// A streamed gradient row (see `RowIo`) is left in `pending`, to be written during the
/// next row's pass B (`pass_exp_pipelined`); a row that is not streamed first writes
/// what is pending. The caller flushes `pending` after its last row ([`flush`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn row<'g, T: Elem<F>, F: Real>(
    io: RowIo<'g, T>,
    next: &[T],
    target: u32,
    p: &Params,
    scale: F,
    scratch: &mut Scratch<F>,
    pending: &mut Option<Pending<'g, T, F>>,
) -> RowOut {
    let v = p.v;
    let (x_ro, grad, fresh): (Option<&[T]>, Option<&mut [T]>, _) = match io {
        RowIo::Separate(x, g) => (Some(x), g, None),
        RowIo::InPlace(g) => (None, Some(g), None),
        RowIo::Fresh(x, g) => (Some(x), None, Some(g)),
    };
    let in_place = x_ro.is_none();
    let streamed = fresh.is_some() || (grad.is_some() && !in_place && p.softcap.is_none());
    if !streamed || p.ignore_index == Some(target) || target as usize >= v {
        flush(pending, scratch);
    }
    if p.ignore_index == Some(target) {
        if let Some(g) = grad {
            g.fill(T::store(F::ZERO));
        }
        if let Some(g) = fresh {
            g.fill(MaybeUninit::new(T::store(F::ZERO)));
        }
        return RowOut::default();
    }
    if target as usize >= v {
        return RowOut {
            fault: Some(RowFault::TargetOutOfRange),
            ..RowOut::default()
        };
    }
    let t = target as usize;
    let want_dsum = p.label_smoothing != 0.0;

    // Under a soft-cap the kernel works on y = c·tanh(x/c), materialised once; an f16
    // row may be widened into y instead (`Elem::widen`).
    let mut y = std::mem::take(&mut scratch.y);
    let mut e_scratch = std::mem::take(&mut scratch.e);
    let inv_cap = p.softcap.map(|c| F::ONE / F::from_f64(c));

    // Everything that reads the logits before the first write. `wide`: the passes
    // read y (the capped logits, or the row widened by `Elem::widen`), not the row.
    let (m, y_t, correct, any_nan, wide) = {
        let xs: &[T] = match x_ro {
            Some(x) => x,
            None => grad.as_deref().expect("in-place rows carry data"),
        };
        let wide = match (p.softcap, inv_cap) {
            (Some(c), Some(inv_c)) => {
                let c = F::from_f64(c);
                y.clear();
                y.extend(xs.iter().map(|&xv| c * (xv.load() * inv_c).tanh()));
                true
            }
            _ => x_ro.is_some() && T::widen(xs, &mut y),
        };
        if wide {
            let m = pass_max::<F, F>(&y);
            let y_t = y[t];
            let correct = first_max_at::<F, F>(&y, t, m);
            // Only looked for when the max says the row is all -inf (or NaN).
            let any_nan = m == -F::INF && y.iter().any(|&v| v.is_nan());
            (m, y_t, correct, any_nan, wide)
        } else {
            let m = T::simd_max(xs).unwrap_or_else(|| pass_max::<T, F>(xs));
            let y_t = xs[t].load();
            let correct = first_max_at::<T, F>(xs, t, m);
            let any_nan = m == -F::INF && xs.iter().any(|&xv| xv.load().is_nan());
            (m, y_t, correct, any_nan, wide)
        }
    };
    let fault = if m == F::INF || any_nan {
        Some(RowFault::NonFinite)
    } else if m == -F::INF {
        Some(RowFault::AllNegInf)
    } else {
        None
    };
    if fault.is_some() {
        scratch.y = y;
        scratch.e = e_scratch;
        flush(pending, scratch);
        return RowOut {
            fault,
            ..RowOut::default()
        };
    }

    // Separate rows without a soft-cap: pass B parks e_j in the scratch row (L2), pass
    // C streams the gradient during the next row's pass B (see `Pending`).
    let (mut grad, stream_to) = match (fresh, grad) {
        (Some(f), _) => (None, Some(f)),
        (None, Some(g)) if streamed => (None, Some(as_uninit(g))),
        (None, g) => (g, None),
    };
    let (s, dsum) = if stream_to.is_some() {
        e_scratch.resize(v + 64 / std::mem::size_of::<F>(), F::ZERO);
        let x = x_ro.expect("streamed rows are separate");
        let prev = pending
            .take()
            .map(|pd| (pd, &scratch.e_prev[line_row(&scratch.e_prev, v)]));
        let row = line_row(&e_scratch, v);
        let e = &mut e_scratch[row];
        let blk = &mut scratch.blk;
        if wide {
            pass_exp_pipelined::<F, T, F>(&y, m, e, want_dsum, next, prev, blk)
        } else {
            pass_exp_pipelined::<T, T, F>(x, m, e, want_dsum, next, prev, blk)
        }
    } else {
        match grad.as_deref_mut() {
            None if wide => pass_exp::<F, F, T>(&y, m, None, want_dsum, next),
            None => pass_exp::<T, F, T>(
                x_ro.expect("no gradient, so not in place"),
                m,
                None,
                want_dsum,
                next,
            ),
            Some(g) => {
                // Where pass B parks e_j: the gradient row itself when it is of the
                // arithmetic type, else the scratch row.
                let e_row: &mut [F] = match T::as_real_mut(g) {
                    Some(gr) => gr,
                    None => {
                        e_scratch.resize(v, F::ZERO);
                        &mut e_scratch[..]
                    }
                };
                match x_ro {
                    _ if wide => pass_exp::<F, F, T>(&y, m, Some(e_row), want_dsum, next),
                    Some(x) => pass_exp::<T, F, T>(x, m, Some(e_row), want_dsum, next),
                    None => pass_exp_inplace(e_row, m, want_dsum),
                }
            }
        }
    };
    // A NaN logit (skipped by pass A) made the sum NaN.
    if s.is_nan() {
        scratch.y = y;
        scratch.e = e_scratch;
        return RowOut {
            fault: Some(RowFault::NonFinite),
            ..RowOut::default()
        };
    }
    let chain = inv_cap
        .map(|inv_c| F::ONE - (y_t * inv_c) * (y_t * inv_c))
        .unwrap_or(F::ONE);
    let RowScalars {
        loss,
        lse,
        a,
        b,
        hit,
    } = row_scalars(m, y_t, s, dsum, p, scale, chain);
    if let Some(g) = stream_to {
        *pending = Some(Pending { g, a, b, t, hit });
        std::mem::swap(&mut e_scratch, &mut scratch.e_prev);
    } else if let Some(g) = grad {
        let cap = inv_cap.map(|inv_c| (&y[..], inv_c));
        match T::as_real_mut(g) {
            Some(gr) => {
                pass_grad_inplace(gr, a, b, cap);
                gr[t] = gr[t] - hit;
            }
            None => {
                debug_assert!(!in_place, "in-place rows are of the arithmetic type");
                pass_grad_convert(&e_scratch, g, a, b, cap);
                // The target entry from F, not a subtraction in G's precision.
                g[t] = T::store((a * e_scratch[t] - b) * chain - hit);
            }
        }
    }
    scratch.y = y;
    scratch.e = e_scratch;
    RowOut {
        loss: loss.to_f64(),
        lse: lse.to_f64(),
        correct,
        counted: true,
        fault: None,
    }
}

/// What a row's loss and gradient need besides its exponentials e_j.
pub(super) struct RowScalars<F> {
    pub(super) loss: F,
    pub(super) lse: F,
    /// g_j = a·e_j - b, minus `hit` at the target (times the soft-cap's chain factor).
    pub(super) a: F,
    pub(super) b: F,
    pub(super) hit: F,
}

/// The row's loss, lse and gradient coefficients from its max m, target logit y_t,
/// s = Σ e_j and dsum = Σ (m - y_j) (used only under label smoothing); `chain` is the
/// soft-cap's 1 - (y_t/c)² at the target (1 without one). One function for every path
/// that computes rows, so that they give the same bits.
#[inline(always)]
pub(super) fn row_scalars<F: Real>(
    m: F,
    y_t: F,
    s: F,
    dsum: F,
    p: &Params,
    scale: F,
    chain: F,
) -> RowScalars<F> {
    let eps = F::from_f64(p.label_smoothing);
    let z = F::from_f64(p.z_loss);
    let ln_s = s.ln();
    let lse = m + ln_s;
    let vf = F::from_f64(p.v as f64);
    // loss = lse - (1-ε)·y_t - ε·mean(y) + z·lse², arranged so that only
    // non-negative quantities are summed.
    let mut loss = ln_s + (F::ONE - eps) * (m - y_t);
    if p.label_smoothing != 0.0 {
        loss = loss + eps * (dsum / vf);
    }
    if p.z_loss != 0.0 {
        loss = loss + z * lse * lse;
    }
    RowScalars {
        loss,
        lse,
        // Without a z-loss the factor 1 + 2z·lse is exactly 1 (lse is finite here):
        // the same bits without waiting for the logarithm.
        a: if p.z_loss == 0.0 {
            scale / s
        } else {
            scale * (F::ONE + (z + z) * lse) / s
        },
        b: scale * eps / vf,
        hit: scale * (F::ONE - eps) * chain,
    }
}

/// Where a row of `v` exponentials sits in a scratch buffer of v + 64/size values: from
/// its first 64-byte boundary, so that pass B's vector stores never straddle two lines
/// and pass C can stream a 64-byte-aligned gradient row straight from registers
/// (`Real::stream_affine`). A function of the buffer's address, so a pending row finds
/// its exponentials again in `Scratch::e_prev` after the swap.
#[inline(always)]
fn line_row<F>(e: &[F], v: usize) -> std::ops::Range<usize> {
    let start = e
        .as_ptr()
        .align_offset(64)
        .min(64 / std::mem::size_of::<F>());
    start..start + v
}

/// Writes the pending streamed row (pass C), if any.
#[inline(always)]
pub(super) fn flush<T: Elem<F>, F: Real>(
    pending: &mut Option<Pending<'_, T, F>>,
    scratch: &mut Scratch<F>,
) {
    if let Some(pd) = pending.take() {
        let e_prev = &scratch.e_prev[line_row(&scratch.e_prev, pd.g.len())];
        pd.write(e_prev, &mut scratch.blk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// Pass B's two sums over the row `x` (max `m`), as exact f64 bits: without the
    /// row of exponentials (`stored` false: the loss alone) or storing it.
    fn sums<T: Elem<F>, F: Real>(x: &[T], m: F, stored: bool) -> (u64, u64) {
        let mut e = vec![F::ZERO; x.len()];
        let row = stored.then_some(&mut e[..]);
        let (s, ds) = pass_exp::<T, F, f32>(x, m, row, true, &[]);
        (s.to_f64().to_bits(), ds.to_f64().to_bits())
    }

    fn max_of<F: Real>(x: &[F]) -> F {
        x.iter().fold(-F::INF, |a, &b| if b > a { b } else { a })
    }

    /// The bytes of a slice, to compare rows of any element type bit for bit.
    fn bytes_of<T>(s: &[T]) -> &[u8] {
        // SAFETY: the slice's own memory, read as the bytes it is made of.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
    }

    /// Pass C's blocks on the gradient's lines, at every element offset of the row
    /// within a line and row lengths around the block and line edges: they tile the
    /// row (every block from the second starting on a line, none longer than the
    /// staging row), and written through `Pending::write` or the pipeline they give
    /// the bits of one whole-row `stream_grad`, touching nothing outside the row.
    fn blocks_tile_the_row<T: Elem<F>, F: Real>(sentinel: T) {
        let lanes = 64 / std::mem::size_of::<T>();
        let (a, b, hit) = (F::from_f64(0.37), F::from_f64(1e-3), F::from_f64(0.9));
        let lens = [
            1,
            2,
            15,
            16,
            17,
            31,
            33,
            1000,
            1023,
            1024,
            1025,
            1024 + lanes - 1,
        ];
        let more = [
            1024 + lanes,
            1024 + lanes + 1,
            1055,
            1056,
            1057,
            2047,
            2048,
            2049,
        ];
        for v in lens
            .into_iter()
            .chain(more)
            .chain([2048 + lanes, 2500, 3079, 8200])
        {
            let e: Vec<F> = (0..v)
                .map(|j| F::from_f64(((j * 37) % 101) as f64 / 101.0))
                .collect();
            let t = (v * 7 / 11).min(v - 1);
            let mut want = vec![sentinel; v];
            let mut staging = vec![F::ZERO; v];
            T::stream_grad(as_uninit(&mut want), &e, (a, b), Some(t), hit, &mut staging);
            let mut store = vec![sentinel; v + 3 * lanes];
            let base = store.as_ptr().align_offset(64);
            for at in base..base + lanes {
                for pipelined in [false, true] {
                    store.fill(sentinel);
                    let start = store[at..].as_ptr() as usize;
                    let mut sc = Scratch::<F>::new();
                    let pd = Pending {
                        g: as_uninit(&mut store[at..at + v]),
                        a,
                        b,
                        t,
                        hit,
                    };
                    let mut total = 0;
                    for k in 0..blocks(v) {
                        let lo = pd.block_start(k);
                        let hi = if k + 1 >= blocks(v) {
                            v
                        } else {
                            pd.block_start(k + 1)
                        };
                        assert!(lo <= hi && hi - lo <= sc.blk.len(), "v {v} at {at} k {k}");
                        if k >= 1 && lo < v {
                            let addr = start + lo * std::mem::size_of::<T>();
                            assert_eq!(addr % 64, 0, "v {v} at {at}: block {k} off a line");
                        }
                        total += hi - lo;
                    }
                    assert_eq!(total, v, "v {v} at {at}");
                    if pipelined {
                        let (x, mut ee) = (vec![F::ZERO; v], vec![F::ZERO; v]);
                        let prev = Some((pd, &e[..]));
                        let next: [T; 0] = [];
                        pass_exp_pipelined::<F, T, F>(
                            &x,
                            F::ZERO,
                            &mut ee,
                            false,
                            &next,
                            prev,
                            &mut sc.blk,
                        );
                    } else {
                        pd.write(&e, &mut sc.blk);
                    }
                    let got = &store[at..at + v];
                    assert!(
                        bytes_of(got) == bytes_of(&want),
                        "v {v} at {at} {pipelined}"
                    );
                    let guard = bytes_of(std::slice::from_ref(&sentinel));
                    for j in (0..at).chain(at + v..store.len()) {
                        assert!(bytes_of(&store[j..j + 1]) == guard, "v {v}: {j} written");
                    }
                }
            }
        }
    }

    #[test]
    fn pass_c_blocks_tile_the_row_on_its_lines() {
        blocks_tile_the_row::<f32, f32>(f32::from_bits(0x7FBF_FFF1));
        blocks_tile_the_row::<f64, f64>(f64::from_bits(0x7FF7_FFFF_FFFF_FFF1));
        blocks_tile_the_row::<half::bf16, f32>(half::bf16::from_bits(0x7FBF));
        blocks_tile_the_row::<f16, f32>(f16::from_bits(0x7DFF));
    }

    /// Pass B's sums (Σ e and Σ (m - y)) have the same bits whether the exponentials
    /// are stored (16 at a time, summed from the row) or only summed (the loss alone:
    /// 64 at a time through `add_lanes`), for f32, f64, f16 and bf16 rows (the f16 row
    /// read as it is against its widened copy), at every length up to 300 and a few
    /// longer.
    #[test]
    fn pass_exp_sums_alike_with_and_without_the_row() {
        for n in (1..=300).chain([1000, 1024 + 77]) {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 97.0 - 5.0)
                .collect();
            let m = max_of(&x);
            assert_eq!(sums(&x, m, false), sums(&x, m, true), "f32, {n}");
            let x64: Vec<f64> = x.iter().map(|&v| v as f64 / 3.0).collect();
            let m64 = max_of(&x64);
            assert_eq!(sums(&x64, m64, false), sums(&x64, m64, true), "f64, {n}");
            let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let wide: Vec<f32> = xh.iter().map(|h| h.to_f32()).collect();
            let mh = max_of(&wide);
            assert_eq!(sums(&xh, mh, false), sums(&wide, mh, true), "f16, {n}");
            // bf16: the loss-alone loop against the stored one (on AVX-512, the
            // latter is `bf16_rows::exp_block`).
            let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let mb = max_of(&xb.iter().map(|h| h.to_f32()).collect::<Vec<f32>>());
            assert_eq!(sums(&xb, mb, false), sums(&xb, mb, true), "bf16, {n}");
        }
    }
}
