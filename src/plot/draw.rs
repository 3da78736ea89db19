//! The figure: a title, five panels in a 3×2 grid and the legend in the sixth cell.

use super::{Curves, Metric, XAxis};
use ab_glyph::Font;
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

/// Tick labels short enough for a narrow axis: 12k, 3.4M, 2e-4, 0.25.
pub fn tick(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') && !s.contains('e') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a == 0.0 {
        "0".to_string()
    } else if a >= 1e9 {
        trim(format!("{:.2}", v / 1e9)) + "G"
    } else if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a < 1e-2 {
        let s = format!("{v:.1e}");
        // "2.0e-4" reads as "2e-4".
        s.replace(".0e", "e")
    } else {
        trim(format!("{v:.3}"))
    }
}

/// (low, high) of the values, widened so that a flat or empty series still has a
/// range and no point sits on the frame.
fn range(vals: impl Iterator<Item = f64>, pad: bool) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let margin = if span > 0.0 {
        if pad {
            0.05 * span
        } else {
            0.0
        }
    } else if hi != 0.0 {
        0.05 * hi.abs()
    } else {
        1.0
    };
    let (mut a, b) = (lo - margin, hi + margin);
    // Never below zero for values that cannot be negative (losses, norms, rates).
    if lo >= 0.0 && a < 0.0 {
        a = 0.0;
    }
    if a.is_finite() && b.is_finite() && a < b {
        (a, b)
    } else {
        (lo, hi.max(lo + 1.0))
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
    // One x range for every panel, so that a step lines up across them.
    let xr = range(
        fig.runs
            .iter()
            .flat_map(|r| r.series.iter().flatten())
            .map(|p| p.0 * x_scale),
        false,
    );
    for (k, (metric, cell)) in Metric::ALL.iter().zip(&cells).enumerate() {
        panel(cell, fig, k, *metric, (x_scale, x_desc), xr)?;
    }
    legend(&cells[5], fig, png)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    k: usize,
    metric: Metric,
    (x_scale, x_desc): (f64, &str),
    xr: (f64, f64),
) -> DrawResult<DB> {
    let series: Vec<Vec<(f64, f64)>> = fig
        .runs
        .iter()
        .map(|r| r.series[k].iter().map(|&(x, y)| (x * x_scale, y)).collect())
        .collect();
    let all = || series.iter().flatten();
    let yr = range(all().map(|p| p.1), true);
    let mut chart = ChartBuilder::on(area)
        .caption(metric.title(), bold(17.0))
        .margin(10)
        .margin_right(24)
        .x_label_area_size(42)
        .y_label_area_size(68)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(metric.unit())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style(style(13.0))
        .axis_desc_style(style(14.0))
        .bold_line_style(RGBColor(210, 210, 210))
        .light_line_style(RGBColor(240, 240, 240))
        .max_light_lines(2)
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
        let (a, b) = range([-1e308, 1e308].into_iter(), true);
        assert!(a.is_finite() && b.is_finite() && a < b);
    }

    #[test]
    fn png_text_replaces_what_the_font_lacks() {
        assert_eq!(printable("run 春眠", true, 80), "run ??");
        assert_eq!(printable("run 春眠", false, 80), "run 春眠");
        assert_eq!(printable("a\u{7}b", false, 80), "a?b");
        assert_eq!(printable("abcdef", false, 4), "abc…");
    }
}
