//! The figure: a title, five panels in a 3×2 grid and the legend in the sixth cell.

use super::{Curves, Metric, XAxis};
use ab_glyph::Font;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// Pixels; the SVG is scalable, this also sets its proportions and text size.
const SIZE: (u32, u32) = (1200, 1100);

/// Colour-blind-friendly and print-safe (matplotlib's tab10), in legend order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Everything drawn, in the order drawn.
pub struct Figure {
    pub title: String,
    pub x: XAxis,
    pub runs: Vec<Curves>,
}

/// The one font: embedded, so that text renders (PNG) and is measured (both formats)
/// the same on every machine, with no system fonts.
fn font() -> anyhow::Result<&'static ab_glyph::FontRef<'static>> {
    static FONT: OnceLock<Result<ab_glyph::FontRef<'static>, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let bad = |_| "the embedded DejaVu font does not load".to_string();
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(bad)?;
        plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold())
            .map_err(bad)?;
        ab_glyph::FontRef::try_from_slice(dejavu::sans::regular()).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Text as it can be shown: control characters (not allowed in XML) become '?', and in
/// a PNG so does every character the font lacks (Han characters among them: DejaVu has
/// none), rather than an empty box; an SVG viewer draws those with its own fonts.
fn printable(s: &str, png: bool, max_chars: usize) -> String {
    let font = font().ok();
    let mut out: String = s
        .chars()
        .map(|c| {
            let missing = png && font.is_some_and(|f| f.glyph_id(c).0 == 0);
            if c.is_control() || missing {
                '?'
            } else {
                c
            }
        })
        .collect();
    if out.chars().count() > max_chars {
        out = out.chars().take(max_chars.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

/// Tick labels short enough for a narrow axis: 12k, 3.4M, 2e-4, 1.72e308, 0.25.
pub fn tick(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') && !s.contains('e') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    // "2.000e-4" reads as "2e-4", "1.720e308" as "1.72e308".
    let sci = |v: f64| {
        let s = format!("{v:.3e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{e}", trim(m.to_string()))
    };
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a == 0.0 {
        "0".to_string()
    } else if a >= 1e12 {
        sci(v)
    } else if a >= 1e9 {
        trim(format!("{:.2}", v / 1e9)) + "G"
    } else if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a < 1e-2 {
        sci(v)
    } else {
        trim(format!("{v:.3}"))
    }
}

/// (low, high) of the values, widened so that a flat or empty series still has a
/// range and no point sits on the frame. Both ends are finite for any finite values;
/// high − low may still overflow (values near ±f64::MAX), which [`Axis`] handles.
fn range(vals: impl Iterator<Item = f64>, pad: bool) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    // Half the span: finite even when the span itself is not.
    let half = hi / 2.0 - lo / 2.0;
    let margin = if half > 0.0 {
        if pad {
            0.1 * half
        } else {
            0.0
        }
    } else if hi != 0.0 {
        0.05 * hi.abs()
    } else {
        1.0
    };
    let widen = |m: f64| {
        let a = (lo - m).max(-f64::MAX);
        let b = (hi + m).min(f64::MAX);
        // Never below zero for values that cannot be negative (losses, norms, rates).
        (if lo >= 0.0 && a < 0.0 { 0.0 } else { a }, b)
    };
    match widen(margin) {
        // A flat series so close to zero that its margin underflowed.
        (a, b) if a >= b => widen(1.0),
        r => r,
    }
}

/// At most this many labelled ticks on an axis.
const TICKS: usize = 6;

/// The multiples of `step` in [lo, hi], at most `max` of them: a bounded loop whatever
/// the floats (plotters' own tick search never ends when hi − lo overflows).
fn multiples(lo: f64, hi: f64, step: f64, max: usize) -> Vec<f64> {
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let first = (lo / step).ceil();
    let n = (hi / step).floor() - first + 1.0;
    if n.is_nan() || n < 1.0 {
        return Vec::new();
    }
    let mut out: Vec<f64> = (0..n.min(max as f64) as usize)
        .map(|i| (first + i as f64) * step)
        .filter(|v| v.is_finite() && lo <= *v && *v <= hi)
        .collect();
    out.dedup();
    out
}

/// Tick values for [lo, hi] (finite, lo < hi): the multiples of the smallest round step
/// (1, 2 or 5 × 10^k) that gives at most `max` of them, and that step; the two ends
/// when no round step fits in f64.
fn ticks(lo: f64, hi: f64, max: usize) -> (Vec<f64>, f64) {
    // The step that would give `max` ticks, from half the span (which cannot overflow).
    let raw = (hi / 2.0 - lo / 2.0) * (2.0 / max as f64);
    let mag = 10f64.powf(raw.log10().floor());
    for e in [0.1, 1.0, 10.0, 100.0] {
        for m in [1.0, 2.0, 5.0] {
            let step = m * mag * e;
            let n = (hi / step).floor() - (lo / step).ceil() + 1.0;
            if step.is_finite() && step > 0.0 && n <= max as f64 {
                let t = multiples(lo, hi, step, max);
                if !t.is_empty() {
                    return (t, step);
                }
            }
        }
    }
    (vec![lo, hi], f64::NAN)
}

/// plotters' linear f64 coordinate with the ticks given, never those of its own search.
struct Linear {
    range: RangedCoordf64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for Linear {
    // Labels come from our formatter; this only makes plotters' mesh accept the axis.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(v, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.range()
    }
}

/// One axis: its range and ticks in the values' units, and the factor that takes values
/// to drawing units.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    /// Light grid lines: half steps.
    light: Vec<f64>,
    /// 1, or 2^-8 when hi − lo overflows: plotters maps a point by (v − lo) / (hi − lo),
    /// which must be finite. A power of two, so that scaling and unscaling are exact.
    shrink: f64,
}

impl Axis {
    fn new(vals: impl Iterator<Item = f64>, pad: bool) -> Axis {
        let (lo, hi) = range(vals, pad);
        let (ticks, step) = ticks(lo, hi, TICKS);
        Axis {
            lo,
            hi,
            light: multiples(lo, hi, step / 2.0, 2 * TICKS + 1),
            ticks,
            shrink: if (hi - lo).is_finite() {
                1.0
            } else {
                1.0 / 256.0
            },
        }
    }

    /// The value `v` in drawing units.
    fn at(&self, v: f64) -> f64 {
        v * self.shrink
    }

    /// plotters' coordinate, in drawing units.
    fn coord(&self) -> Linear {
        let s = self.shrink;
        Linear {
            range: RangedCoordf64::from(self.lo * s..self.hi * s),
            bold: self.ticks.iter().map(|t| t * s).collect(),
            light: self.light.iter().map(|t| t * s).collect(),
        }
    }

    /// The label of a tick given in drawing units.
    fn label(&self, v: f64) -> String {
        tick(v / self.shrink)
    }
}

fn style(size: f64) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font()).color(&BLACK)
}

fn bold(size: f64) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font().style(FontStyle::Bold)).color(&BLACK)
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
    png: bool,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let body = root.titled(&printable(&fig.title, png, 90), bold(24.0))?;
    let cells = body.split_evenly((3, 2));
    // Time in minutes once seconds get long.
    let max_x = fig
        .runs
        .iter()
        .flat_map(|r| r.series.iter().flatten())
        .fold(0f64, |m, p| m.max(p.0));
    let (x_scale, x_desc) = match fig.x {
        XAxis::Step => (1.0, "optimizer step"),
        XAxis::Time if max_x > 1200.0 => (1.0 / 60.0, "training time (min)"),
        XAxis::Time => (1.0, "training time (s)"),
        XAxis::Tokens => (1.0, "training tokens seen"),
        XAxis::Bytes => (1.0, "training bytes seen (tokens × validation bytes/token)"),
    };
    // One x axis for every panel, so that a step lines up across them.
    let xa = Axis::new(
        fig.runs
            .iter()
            .flat_map(|r| r.series.iter().flatten())
            .map(|p| p.0 * x_scale),
        false,
    );
    for (k, (metric, cell)) in Metric::ALL.iter().zip(&cells).enumerate() {
        panel(cell, fig, k, *metric, (x_scale, x_desc), &xa)?;
    }
    legend(&cells[5], fig, png)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    k: usize,
    metric: Metric,
    (x_scale, x_desc): (f64, &str),
    xa: &Axis,
) -> DrawResult<DB> {
    let ya = Axis::new(
        fig.runs
            .iter()
            .flat_map(|r| r.series[k].iter().map(|p| p.1)),
        true,
    );
    // In drawing units.
    let series: Vec<Vec<(f64, f64)>> = fig
        .runs
        .iter()
        .map(|r| {
            r.series[k]
                .iter()
                .map(|&(x, y)| (xa.at(x * x_scale), ya.at(y)))
                .collect()
        })
        .collect();
    let all = || series.iter().flatten();
    let mut chart = ChartBuilder::on(area)
        .caption(metric.title(), bold(17.0))
        .margin(10)
        .margin_right(24)
        .x_label_area_size(42)
        .y_label_area_size(68)
        .build_cartesian_2d(xa.coord(), ya.coord())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(metric.unit())
        .x_label_formatter(&|v| xa.label(*v))
        .y_label_formatter(&|v| ya.label(*v))
        .label_style(style(13.0))
        .axis_desc_style(style(14.0))
        .bold_line_style(RGBColor(210, 210, 210))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    for (i, pts) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let color = PALETTE[i % PALETTE.len()];
        chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?;
        if metric.marked() {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    if all().next().is_none() {
        let (w, h) = area.dim_in_pixel();
        let note = style(15.0)
            .color(&RGBColor(120, 120, 120))
            .pos(Pos::new(HPos::Center, VPos::Center));
        area.draw(&Text::new(
            "no data yet",
            (w as i32 / 2, h as i32 / 2),
            note,
        ))?;
    }
    Ok(())
}

fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    png: bool,
) -> DrawResult<DB> {
    area.draw(&Text::new("Runs", (24, 14), bold(17.0)))?;
    let grey = RGBColor(90, 90, 90);
    for (i, run) in fig.runs.iter().enumerate() {
        let y = 46 + 30 * i as i32;
        let color = PALETTE[i % PALETTE.len()];
        area.draw(&Rectangle::new([(24, y + 4), (48, y + 10)], color.filled()))?;
        area.draw(&Text::new(
            printable(&run.label, png, 60),
            (58, y),
            style(14.0),
        ))?;
        area.draw(&Text::new(
            printable(&run.details, png, 80),
            (58, y + 15),
            style(11.5).color(&grey),
        ))?;
    }
    let y = 46 + 30 * fig.runs.len() as i32 + 8;
    area.draw(&Text::new(
        "Dots: validation evaluations. Bits per byte compare across tokenizers.",
        (24, y),
        style(11.5).color(&grey),
    ))?;
    Ok(())
}

/// The figure as SVG text.
pub fn svg(fig: &Figure) -> anyhow::Result<String> {
    font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw_figure(&root, fig, false).map_err(|e| anyhow::anyhow!("cannot draw: {e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("cannot draw: {e}"))?;
    }
    Ok(out)
}

/// The figure as a PNG file at `path` (whose name must end in .png).
pub fn png(fig: &Figure, path: &Path) -> anyhow::Result<()> {
    font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw_figure(&root, fig, true).map_err(|e| anyhow::anyhow!("cannot draw: {e}"))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::within_a_minute;

    #[test]
    fn ticks_are_short() {
        for (v, want) in [
            (0.0, "0"),
            (0.25, "0.25"),
            (3.0, "3"),
            (2.345678, "2.346"),
            (1500.0, "1500"),
            (12_000.0, "12k"),
            (3_400_000.0, "3.4M"),
            (2e9, "2G"),
            (2e-4, "2e-4"),
            (1.5e-3, "1.5e-3"),
            (-0.5, "-0.5"),
            (1e12, "1e12"),
            (-1e308, "-1e308"),
            (1.72e308, "1.72e308"),
            (1.2341e-7, "1.234e-7"),
        ] {
            assert_eq!(tick(v), want, "{v}");
        }
    }

    #[test]
    fn ranges_are_never_empty_or_infinite() {
        assert_eq!(range(std::iter::empty(), true), (0.0, 1.0));
        let (a, b) = range([2.0, 2.0].into_iter(), true);
        assert!(a < 2.0 && b > 2.0);
        assert_eq!(range([0.0].into_iter(), true), (0.0, 1.0));
        // No padding below zero for non-negative values.
        assert_eq!(range([0.0, 10.0].into_iter(), true), (0.0, 10.5));
        for vals in [
            vec![-1e308, 1e308],
            vec![-f64::MAX, f64::MAX],
            vec![f64::MAX],
            vec![-f64::MAX],
            vec![5e-324],
            vec![0.0, f64::MAX],
        ] {
            for pad in [false, true] {
                let (a, b) = range(vals.iter().copied(), pad);
                assert!(a.is_finite() && b.is_finite() && a < b, "{vals:?}: {a} {b}");
                assert!(
                    vals.iter().all(|v| (a..=b).contains(v)),
                    "{vals:?}: {a} {b}"
                );
            }
        }
    }

    #[test]
    fn ticks_are_round_bounded_and_inside() {
        assert_eq!(
            ticks(0.0, 2560.0, 6).0,
            [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0]
        );
        assert_eq!(ticks(0.0, 30720.0, 6).0, [0.0, 1e4, 2e4, 3e4]);
        assert_eq!(
            ticks(-1e308, 1e308, 6).0,
            [-1e308, -5e307, 0.0, 5e307, 1e308]
        );
        // Spans that overflow, ulp-wide ones, subnormal ones: never more than `max`, never
        // outside, ascending (plotters' own search never returns on the first ones).
        let m = f64::MAX;
        for (lo, hi) in [
            (-m, m),
            (0.0, m),
            (m * 0.95, m),
            (1.0, 1.0 + f64::EPSILON),
            (1e300, 1e300 * (1.0 + 4.0 * f64::EPSILON)),
            (0.0, 5e-324),
            (-1e-310, 1e-310),
            (-3.0, -2.0),
        ] {
            let (t, _) = ticks(lo, hi, TICKS);
            assert!((1..=TICKS).contains(&t.len()), "{lo} {hi}: {t:?}");
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{lo} {hi}: {t:?}");
            assert!(t.iter().all(|v| (lo..=hi).contains(v)), "{lo} {hi}: {t:?}");
            assert!(multiples(lo, hi, f64::MIN_POSITIVE, 100).len() <= 100);
        }
    }

    #[test]
    fn an_axis_beyond_f64_is_drawn_shrunk_and_labelled_unshrunk() {
        let a = Axis::new([-1e308, 1e308].into_iter(), true);
        assert!(a.shrink < 1.0);
        let c = a.coord();
        assert!((c.range.range().end - c.range.range().start).is_finite());
        let labels: Vec<String> = c.bold.iter().map(|v| a.label(*v)).collect();
        assert_eq!(labels, ["-1e308", "-5e307", "0", "5e307", "1e308"]);
        assert_eq!(Axis::new([0.0, 10.0].into_iter(), true).shrink, 1.0);
    }

    #[test]
    fn a_figure_of_values_near_f64_max_draws() {
        let m = f64::MAX;
        let series: Vec<Vec<(f64, f64)>> = vec![
            vec![(1.0, 1e308), (2.0, -1e308)],
            vec![(0.0, m), (m, m)],
            vec![(-m, -m), (m, m)],
            vec![(-1e308, 5e-324), (1e308, 1e-310)],
            vec![(0.0, 1.0), (1e308, 2.0)],
        ];
        let fig = || Figure {
            title: "t".into(),
            x: XAxis::Tokens,
            runs: vec![Curves {
                label: "r".into(),
                details: "d".into(),
                series: series.clone(),
            }],
        };
        let f = fig();
        let svg = within_a_minute(move || svg(&f).unwrap());
        // Every panel's series drawn: five 2-px polylines.
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 5, "{svg}");
        assert!(svg.contains("-1e308"), "{svg}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.png");
        let (f, p) = (fig(), path.clone());
        within_a_minute(move || png(&f, &p).unwrap());
        assert_eq!(&std::fs::read(&path).unwrap()[..4], b"\x89PNG");
    }

    #[test]
    fn png_text_replaces_what_the_font_lacks() {
        assert_eq!(printable("run 春眠", true, 80), "run ??");
        assert_eq!(printable("run 春眠", false, 80), "run 春眠");
        assert_eq!(printable("a\u{7}b", false, 80), "a?b");
        assert_eq!(printable("abcdef", false, 4), "abc…");
    }
}
