//! How the work is cut: tile geometry under the causal mask, the packed Kᵀ the tiles
//! read, and whether heads alone keep the threads busy.

use super::tile_ops::{Elem, L};

/// Query rows per tile unless the caller asks otherwise.
pub(crate) const BLOCK_Q: usize = 64;
/// Key columns per tile unless the caller asks otherwise.
pub(crate) const BLOCK_K: usize = 64;

/// Shapes and constants shared by every tile task.
#[derive(Clone, Copy)]
pub(crate) struct Dims<T> {
    pub(super) bh: usize,
    pub(super) tq: usize,
    pub(super) tk: usize,
    pub(super) d: usize,
    pub(super) causal: bool,
    pub(super) bq: usize,
    pub(super) bk: usize,
    pub(super) scale: T,
}

impl<T: Elem> Dims<T> {
    /// `bh` heads of `tq` queries against `tk` keys of width `d`, in tiles of
    /// `bq` x `bk`; scores scaled by 1/sqrt(D).
    pub(crate) fn new(
        (bh, tq, tk, d): (usize, usize, usize, usize),
        causal: bool,
        (bq, bk): (usize, usize),
    ) -> Self {
        Self {
            bh,
            tq,
            tk,
            d,
            causal,
            bq,
            bk,
            scale: T::from_f64(1.0 / (d.max(1) as f64).sqrt()),
        }
    }
    pub(super) fn n_qtiles(&self) -> usize {
        self.tq.div_ceil(self.bq)
    }
    pub(super) fn n_ktiles(&self) -> usize {
        self.tk.div_ceil(self.bk)
    }
    /// Number of keys visible to query row r (absolute index within Tq): query row r
    /// sits at absolute position r + Tk - Tq.
    #[inline(always)]
    pub(super) fn visible(&self, r: usize) -> usize {
        if self.causal {
            (r + self.tk - self.tq + 1).min(self.tk)
        } else {
            self.tk
        }
    }
    /// Rows [r0, r0 + len) of the query tile i.
    pub(super) fn qtile(&self, i: usize) -> (usize, usize) {
        let r0 = i * self.bq;
        (r0, self.bq.min(self.tq - r0))
    }
    /// Columns [c0, c0 + len) of the key tile j.
    pub(super) fn ktile(&self, j: usize) -> (usize, usize) {
        let c0 = j * self.bk;
        (c0, self.bk.min(self.tk - c0))
    }
    /// Key tiles a query tile starting at r0 with `len` rows has to visit: 0..n.
    pub(super) fn ktiles_for(&self, r0: usize, len: usize) -> usize {
        self.visible(r0 + len - 1).div_ceil(self.bk)
    }
    /// First query tile that sees any key of the key tile starting at c0.
    pub(super) fn first_qtile_for(&self, c0: usize) -> usize {
        if self.causal {
            c0.saturating_sub(self.tk - self.tq) / self.bq
        } else {
            0
        }
    }
    /// Index (within the query tile starting at r0) of the first row that sees key c.
    #[inline(always)]
    pub(super) fn first_row_seeing(&self, r0: usize, c: usize) -> usize {
        if self.causal {
            c.saturating_sub(self.tk - self.tq).saturating_sub(r0)
        } else {
            0
        }
    }
    /// Columns (within a key tile starting at c0, `width` wide) that rows
    /// [r0, r0 + rows) need, rounded up to whole 16-lane chunks: in diagonal tiles only
    /// the chunks some row can see are computed.
    #[inline(always)]
    pub(super) fn cols_needed(&self, r0: usize, c0: usize, width: usize, rows: usize) -> usize {
        let vis = self.visible(r0 + rows - 1).saturating_sub(c0).min(width);
        (vis.div_ceil(L) * L).min(width)
    }
}

/// Inputs of one (b, h): q [Tq, D], k and v [Tk, D], kt = packed Kᵀ.
pub(super) struct Head<'a, T> {
    pub(super) q: &'a [T],
    pub(super) k: &'a [T],
    pub(super) v: &'a [T],
    pub(super) kt: &'a [T],
}

/// Writes Kᵀ of one (b, h) as key tiles: tile j is a contiguous [D, width_j] block at
/// offset c0·D, so that S = Q·Kᵀ reads B rows contiguously.
pub(super) fn pack_transposed<T: Elem>(dm: &Dims<T>, src: &[T], dst: &mut [T]) {
    let d = dm.d;
    for j in 0..dm.n_ktiles() {
        let (c0, w) = dm.ktile(j);
        let blk = &mut dst[c0 * d..(c0 + w) * d];
        for c in 0..w {
            let row = &src[(c0 + c) * d..(c0 + c + 1) * d];
            for (dd, &x) in row.iter().enumerate() {
                blk[dd * w + c] = x;
            }
        }
    }
}

/// Whether one task per (b, h) balances the threads: tiles are only split across
/// threads when there are few heads. Both schedules compute every tile identically.
pub(super) fn heads_keep_threads_busy(bh: usize) -> bool {
    let threads = rayon::current_num_threads();
    bh.is_multiple_of(threads) || bh >= 4 * threads
}
