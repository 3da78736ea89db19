//! `tinylm plot`: a run's curves from its `metrics.jsonl`, drawn with plotters into one
//! SVG or PNG figure (training loss, validation bits per byte, learning rate, gradient
//! norm, tokens/s), one colour per run. Training calls [`write_run_curves`] so that
//! every run directory holds an up-to-date `curves.svg`.
//!
//! Reading is lenient because the file may belong to a killed or running run: a line
//! that does not parse (a truncated last line) is skipped and counted, a missing value
//! (serde_json writes NaN as null) is a missing point, and the lines a resumed run
//! wrote again replace the ones from before its last checkpoint.

mod draw;

use anyhow::Context;
use serde::Deserialize;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// The figure `tinylm train` keeps in each run directory.
pub const CURVES_FILE: &str = "curves.svg";

/// At most this many runs in one figure: each gets a colour of its own and two legend
/// lines.
pub const MAX_RUNS: usize = 10;

/// Longer lines are skipped unread: a metrics line is ~300 bytes.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// More points than this per series are thinned (evenly, keeping the last): a figure
/// is ~1000 pixels wide, and a million-point polyline only makes the file huge.
const MAX_POINTS: usize = 4000;

/// The horizontal axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XAxis {
    /// Optimizer steps.
    Step,
    /// Wall-clock seconds of training (evaluation included).
    Time,
    /// Training tokens consumed.
    Tokens,
    /// Training bytes consumed (tokens × the run's bytes per token).
    Bytes,
}

/// One line of `metrics.jsonl`, every field optional so that old, new and hand-written
/// files all read (unknown fields are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Row {
    pub step: f64,
    pub elapsed_s: Option<f64>,
    pub tokens: Option<f64>,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tok_per_s: Option<f64>,
    pub bytes_per_token: Option<f64>,
}

impl Row {
    fn is_eval(&self) -> bool {
        self.val_loss.is_some() || self.val_bpb.is_some() || self.bytes_per_token.is_some()
    }
}

/// A run as read from its directory.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run directory's name (the preset and start time for default names).
    pub name: String,
    /// The metrics file read (as given, or `<dir>/metrics.jsonl`): warnings name it.
    pub metrics: PathBuf,
    pub preset: Option<String>,
    pub tokenizer: Option<String>,
    /// B·T·k from config.toml: tokens per step, for metrics written before `tokens` was.
    pub tokens_per_step: Option<f64>,
    pub rows: Vec<Row>,
    /// Lines of metrics.jsonl that did not parse, and the 1-based number of the first.
    pub skipped: usize,
    pub first_skipped: Option<usize>,
    /// Lines in the file (read or skipped).
    pub lines: usize,
}

/// `path` is a run directory or a metrics.jsonl file: (metrics file, run directory).
fn locate(path: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    anyhow::ensure!(path.exists(), "run {} not found", path.display());
    if path.is_dir() {
        let m = path.join("metrics.jsonl");
        anyhow::ensure!(
            m.is_file(),
            "run {}: no metrics.jsonl in it (is it a run directory?)",
            path.display()
        );
        Ok((m, path.to_path_buf()))
    } else {
        Ok((path.to_path_buf(), crate::data::dir_of(path).to_path_buf()))
    }
}

/// Reads a run: its metrics, and from config.toml (when there is one that parses) its
/// preset, tokenizer and tokens per step.
pub fn read_run(path: &Path) -> anyhow::Result<Run> {
    let (metrics, dir) = locate(path)?;
    let file = std::fs::File::open(&metrics)
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut rows: Vec<Row> = Vec::new();
    let (mut skipped, mut first_skipped, mut lines) = (0, None, 0);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", metrics.display()))?;
        if n == 0 {
            break;
        }
        let mut too_long = false;
        if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE_BYTES {
            // Skip the rest of an over-long line.
            too_long = true;
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = (&mut reader)
                    .take(MAX_LINE_BYTES)
                    .read_until(b'\n', &mut rest)?;
                if m == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
        }
        lines += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Row>(&buf)
            .ok()
            .filter(|_| !too_long)
        {
            Some(row) if row.step.is_finite() && row.step >= 0.0 => push_row(&mut rows, row),
            _ => {
                skipped += 1;
                first_skipped.get_or_insert(lines);
            }
        }
    }
    let name = run_name(&dir);
    let config = read_config(&dir);
    let get = |key: &str| {
        config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let int = |v: Option<&toml::Value>| v.and_then(|v| v.as_integer()).map(|i| i as f64);
    let tokens_per_step = config.as_ref().and_then(|c| {
        let b = int(c.get("batch_size"))?;
        let k = int(c.get("grad_accum"))?;
        let t = int(c.get("model").and_then(|m| m.get("block_size")))?;
        Some(b * k * t)
    });
    let preset = get("preset").or_else(|| preset_from_name(&name));
    Ok(Run {
        name,
        metrics,
        preset,
        tokenizer: get("tokenizer"),
        tokens_per_step,
        rows,
        skipped,
        first_skipped,
        lines,
    })
}

/// Appends a row; when its step goes back (a resumed run re-doing the steps after its
/// last checkpoint), the rows it replaces are dropped first.
fn push_row(rows: &mut Vec<Row>, row: Row) {
    while let Some(last) = rows.last() {
        let replaced =
            last.step > row.step || (last.step == row.step && last.is_eval() == row.is_eval());
        if !replaced {
            break;
        }
        rows.pop();
    }
    rows.push(row);
}

fn run_name(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// config.toml as a plain TOML table: any config (old, new, hand-edited) labels a run,
/// and a missing or broken one only costs the label.
fn read_config(dir: &Path) -> Option<toml::Value> {
    let path = dir.join("config.toml");
    let len = std::fs::metadata(&path).ok()?.len();
    if len > crate::train::config_file::MAX_CONFIG_BYTES as u64 {
        return None;
    }
    toml::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Default run names are `<preset>-<YYYYmmdd-HHMMSS>`.
fn preset_from_name(name: &str) -> Option<String> {
    crate::train::config::PRESETS.iter().find_map(|p| {
        let stamp = name.strip_prefix(p)?.strip_prefix('-')?;
        let b = stamp.as_bytes();
        let is_stamp = b.len() == 15
            && b[8] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 8 || c.is_ascii_digit());
        is_stamp.then(|| p.to_string())
    })
}

/// What one panel shows of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    TrainLoss,
    ValBpb,
    Lr,
    GradNorm,
    TokPerS,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::TrainLoss,
        Metric::ValBpb,
        Metric::Lr,
        Metric::GradNorm,
        Metric::TokPerS,
    ];

    /// The panel's title (tests find panels by it).
    pub fn title(self) -> &'static str {
        match self {
            Metric::TrainLoss => "Training loss",
            Metric::ValBpb => "Validation bits per byte",
            Metric::Lr => "Learning rate",
            Metric::GradNorm => "Gradient norm (before clipping)",
            Metric::TokPerS => "Throughput",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::TrainLoss => "nats/token",
            Metric::ValBpb => "bits/byte",
            Metric::Lr => "learning rate",
            Metric::GradNorm => "L2 norm",
            Metric::TokPerS => "tokens/s",
        }
    }

    fn of(self, r: &Row) -> Option<f64> {
        match self {
            Metric::TrainLoss => r.train_loss,
            Metric::ValBpb => r.val_bpb,
            // Eval lines repeat the lr of the step after them; the train lines carry it.
            Metric::Lr if r.is_eval() => None,
            Metric::Lr => r.lr,
            Metric::GradNorm => r.grad_norm,
            Metric::TokPerS => r.tok_per_s,
        }
    }

    /// Validation points are few and each is a measurement: they get markers.
    fn marked(self) -> bool {
        self == Metric::ValBpb
    }
}

/// A run's points, ready to draw.
#[derive(Debug, Clone)]
pub struct Curves {
    /// Legend lines: the name, then preset, tokenizer and end points.
    pub label: String,
    pub details: String,
    /// One series per [`Metric::ALL`], finite points only, x ascending.
    pub series: Vec<Vec<(f64, f64)>>,
}

/// The x value of each row, or why this run cannot have that axis.
fn x_values(run: &Run, x: XAxis) -> anyhow::Result<Vec<Option<f64>>> {
    let tokens = |r: &Row| r.tokens.or(run.tokens_per_step.map(|t| r.step * t));
    Ok(match x {
        XAxis::Step => run.rows.iter().map(|r| Some(r.step)).collect(),
        XAxis::Time => run.rows.iter().map(|r| r.elapsed_s).collect(),
        XAxis::Tokens => {
            anyhow::ensure!(
                run.rows.iter().all(|r| tokens(r).is_some()),
                "run {}: its metrics have no token counts and it has no readable config.toml \
                 to compute them from; use --x step or --x time",
                run.name
            );
            run.rows.iter().map(tokens).collect()
        }
        XAxis::Bytes => {
            // The validation text's bytes per token, which eval lines record; a byte
            // tokenizer's is 1 whatever the metrics say.
            let bpt = run
                .rows
                .iter()
                .rev()
                .find_map(|r| r.bytes_per_token.filter(|b| b.is_finite() && *b > 0.0))
                .or((run.tokenizer.as_deref() == Some("bytes")).then_some(1.0));
            let Some(bpt) = bpt else {
                anyhow::bail!(
                    "run {}: no bytes per token recorded (no evaluation yet, or metrics from \
                     before tinylm recorded it); use --x tokens",
                    run.name
                );
            };
            anyhow::ensure!(
                run.rows.iter().all(|r| tokens(r).is_some()),
                "run {}: its metrics have no token counts and it has no readable config.toml \
                 to compute them from; use --x step or --x time",
                run.name
            );
            run.rows
                .iter()
                .map(|r| tokens(r).map(|t| t * bpt))
                .collect()
        }
    })
}

/// Keeps at most `max` points, evenly spaced, the first and last included.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    let n = points.len();
    if n <= max || max < 2 {
        return points;
    }
    (0..max).map(|i| points[i * (n - 1) / (max - 1)]).collect()
}

/// The figure's data for `runs` on axis `x`.
pub fn curves(runs: &[Run], x: XAxis) -> anyhow::Result<Vec<Curves>> {
    runs.iter()
        .map(|run| {
            let xs = x_values(run, x)?;
            let series = Metric::ALL
                .iter()
                .map(|&m| {
                    let pts = run
                        .rows
                        .iter()
                        .zip(&xs)
                        .filter_map(|(r, x)| Some((*x)?).zip(m.of(r)))
                        .filter(|(x, y)| x.is_finite() && y.is_finite())
                        .collect();
                    thin(pts, MAX_POINTS)
                })
                .collect();
            Ok(Curves {
                label: run.name.clone(),
                details: details(run),
                series,
            })
        })
        .collect()
}

/// "preset tiny, tokenizer bytes: 60 steps, 41 s, last val 3.2 bits/byte".
fn details(run: &Run) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &run.preset {
        parts.push(format!("preset {p}"));
    }
    if let Some(t) = &run.tokenizer {
        parts.push(format!("tokenizer {t}"));
    }
    let mut end = Vec::new();
    match run.rows.last() {
        None => end.push("no metrics yet".to_string()),
        Some(last) => {
            end.push(format!("{} steps", last.step));
            if let Some(t) = last.elapsed_s.filter(|t| t.is_finite()) {
                end.push(format!("{t:.0} s"));
            }
        }
    }
    if let Some(v) = run
        .rows
        .iter()
        .rev()
        .find_map(|r| r.val_bpb.filter(|v| v.is_finite()))
    {
        end.push(format!("last val {v:.3} bits/byte"));
    }
    let head = parts.join(", ");
    if head.is_empty() {
        end.join(", ")
    } else {
        format!("{head}: {}", end.join(", "))
    }
}

/// The output format, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => anyhow::bail!("output {} must end in .svg or .png", path.display()),
        }
    }
}

/// Draws `runs` into `out` (SVG or PNG by its extension) through a temporary file
/// beside it, so that a viewer or `--watch` never sees half a file. Unless `replace`,
/// nothing already at `out` is touched: the figure only appears where nothing is.
/// Warns on stderr about skipped lines.
pub fn plot_runs(
    paths: &[PathBuf],
    out: &Path,
    x: XAxis,
    title: &str,
    replace: bool,
) -> anyhow::Result<()> {
    let format = Format::of(out)?;
    let runs = paths
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runs = distinct_names(runs, paths);
    for run in &runs {
        if run.skipped > 0 {
            eprintln!(
                "warning: {}: skipped {} unreadable line(s) of {} (first: line {}; a killed run cuts its last line)",
                run.metrics.display(),
                run.skipped,
                run.lines,
                run.first_skipped.unwrap_or(0)
            );
        }
    }
    let curves = curves(&runs, x)?;
    let fig = draw::Figure {
        title: title.to_string(),
        x,
        runs: curves,
    };
    let stem = out
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Beside the output (a rename does not cross file systems), and new, so that no one
    // else's file is written over; it keeps the extension, which the PNG encoder goes by.
    let ext = if format == Format::Svg { "svg" } else { "png" };
    let tmp = out.with_file_name(format!(".{stem}.tmp-{}.{ext}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = match format {
        Format::Svg => draw::svg(&fig).and_then(|s| {
            std::fs::write(&tmp, s).with_context(|| format!("cannot write {}", tmp.display()))
        }),
        Format::Png => draw::png(&fig, &tmp),
    };
    let published = written.and_then(|_| publish(&tmp, out, replace));
    if published.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    published
}

/// Moves the finished `tmp` to `out`: a rename when replacing; otherwise a hard link,
/// which fails rather than replace whatever appeared at `out` since the check at start
/// (or, on a file system without hard links, a rename after a fresh check).
fn publish(tmp: &Path, out: &Path, replace: bool) -> anyhow::Result<()> {
    let cannot = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", out.display());
    if replace {
        return std::fs::rename(tmp, out).map_err(cannot);
    }
    match std::fs::hard_link(tmp, out) {
        Ok(()) => {
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(crate::data::out_exists_error(out))
        }
        Err(_) => {
            if std::fs::symlink_metadata(out).is_ok() {
                return Err(crate::data::out_exists_error(out));
            }
            std::fs::rename(tmp, out).map_err(cannot)
        }
    }
}

/// Runs named alike (`a/run`, `b/run`) are told apart by the paths they were given as.
fn distinct_names(mut runs: Vec<Run>, paths: &[PathBuf]) -> Vec<Run> {
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for (run, path) in runs.iter_mut().zip(paths) {
        if names.iter().filter(|n| **n == run.name).count() > 1 {
            run.name = path.display().to_string();
        }
    }
    runs
}

/// Redraws `<run_dir>/curves.svg` from its metrics (training calls this after each
/// evaluation and at the end). Returns the figure's path.
pub fn write_run_curves(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let out = run_dir.join(CURVES_FILE);
    let name = run_name(run_dir);
    plot_runs(
        &[run_dir.to_path_buf()],
        &out,
        XAxis::Step,
        &format!("tinylm run {name}"),
        // The run's own figure, redrawn all through training.
        true,
    )?;
    Ok(out)
}

/// The figure's title for a `tinylm plot` of `n` runs.
fn plot_title(n: usize) -> String {
    if n == 1 {
        "tinylm training curves".to_string()
    } else {
        format!("tinylm training curves: {n} runs")
    }
}

/// `tinylm plot`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Run directories (or their metrics.jsonl files), one colour each.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The figure: .svg or .png. Refused if the path exists, unless --force.
    #[arg(long, default_value = "curves.svg")]
    pub out: PathBuf,
    /// Replace --out if it is a regular file. Anything else there (a directory, a
    /// symbolic link, a FIFO) is refused all the same: a link is never followed.
    #[arg(long)]
    pub force: bool,
    /// Horizontal axis: optimizer steps, seconds, tokens or bytes of training text seen.
    #[arg(long, value_enum, default_value_t = XAxis::Step)]
    pub x: XAxis,
    /// Redraw whenever a run's metrics.jsonl changes, until Ctrl-C. --out is checked
    /// once, at start: later redraws replace the figure this command drew.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between checks of the metrics files in --watch mode (0.05 to 3600).
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Stop --watch after this many checks (for tests).
    #[arg(long, hide = true)]
    pub watch_checks: Option<u64>,
}

/// `tinylm plot`: checks every option before any work, then draws once or watches.
pub fn cmd_plot(a: &PlotArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.runs.len() <= MAX_RUNS,
        "at most {MAX_RUNS} runs in one figure, got {}",
        a.runs.len()
    );
    Format::of(&a.out)?;
    anyhow::ensure!(
        a.interval.is_finite() && (0.05..=3600.0).contains(&a.interval),
        "--interval must be in [0.05, 3600] seconds, got {}",
        a.interval
    );
    if let Some(n) = a.watch_checks {
        anyhow::ensure!(n > 0, "--watch-checks must be at least 1");
    }
    let dir = crate::data::dir_of(&a.out);
    anyhow::ensure!(
        dir.is_dir(),
        "cannot write {}: directory {} not found",
        a.out.display(),
        dir.display()
    );
    crate::data::check_out_file(&a.out, a.force, "plot")?;
    let title = plot_title(a.runs.len());
    if !a.watch {
        plot_runs(&a.runs, &a.out, a.x, &title, a.force)?;
        println!("{}", a.out.display());
        return Ok(());
    }
    watch(a, &title)
}

/// Size and modification time of each run's metrics file (None while it is missing).
fn fingerprint(runs: &[PathBuf]) -> Vec<Option<(u64, std::time::SystemTime)>> {
    runs.iter()
        .map(|p| {
            let (m, _) = locate(p).ok()?;
            let meta = std::fs::metadata(m).ok()?;
            Some((meta.len(), meta.modified().ok()?))
        })
        .collect()
}

/// Polls the metrics files and redraws when one changes. A run that has not started
/// yet is waited for; a failed draw is a warning, and the next change tries again.
/// Once drawn, the figure is its own to replace.
fn watch(a: &PlotArgs, title: &str) -> anyhow::Result<()> {
    let mut replace = a.force;
    let mut last = None;
    let mut checks = 0u64;
    println!(
        "watching {} run(s); redrawing {} on change (Ctrl-C to stop)",
        a.runs.len(),
        a.out.display()
    );
    loop {
        let now = fingerprint(&a.runs);
        if last.as_ref() != Some(&now) {
            if now.iter().any(Option::is_none) {
                let missing: Vec<String> = a
                    .runs
                    .iter()
                    .zip(&now)
                    .filter(|(_, f)| f.is_none())
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                println!("waiting for metrics of {}", missing.join(", "));
            } else {
                match plot_runs(&a.runs, &a.out, a.x, title, replace) {
                    Ok(()) => {
                        replace = true;
                        println!("drew {}", a.out.display());
                    }
                    Err(e) => eprintln!("warning: {e:#}"),
                }
            }
            last = Some(now);
        }
        checks += 1;
        if a.watch_checks.is_some_and(|n| checks >= n) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(a.interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: f64, eval: bool) -> Row {
        Row {
            step,
            val_bpb: eval.then_some(3.0),
            train_loss: (!eval).then_some(2.0),
            ..Default::default()
        }
    }

    #[test]
    fn a_resumed_run_replaces_the_rows_after_its_checkpoint() {
        let mut rows = Vec::new();
        // Evals every 20 steps, logs every 10; killed after step 30, resumed at 20.
        for (s, e) in [
            (0., true),
            (10., false),
            (20., false),
            (20., true),
            (30., false),
        ] {
            push_row(&mut rows, row(s, e));
        }
        for (s, e) in [(20., true), (30., false), (40., false), (40., true)] {
            push_row(&mut rows, row(s, e));
        }
        let got: Vec<(f64, bool)> = rows.iter().map(|r| (r.step, r.is_eval())).collect();
        assert_eq!(
            got,
            [
                (0., true),
                (10., false),
                (20., false),
                (20., true),
                (30., false),
                (40., false),
                (40., true)
            ]
        );
    }

    #[test]
    fn thinning_keeps_the_ends_and_the_count() {
        let pts: Vec<(f64, f64)> = (0..10_001).map(|i| (i as f64, 0.0)).collect();
        let t = thin(pts.clone(), 100);
        assert_eq!(t.len(), 100);
        assert_eq!(t[0], pts[0]);
        assert_eq!(*t.last().unwrap(), *pts.last().unwrap());
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(thin(pts[..50].to_vec(), 100).len(), 50);
    }

    #[test]
    fn preset_is_read_off_default_run_names_only() {
        assert_eq!(
            preset_from_name("default-20261129-224105").as_deref(),
            Some("default")
        );
        assert_eq!(
            preset_from_name("bench-ref-20260101-000000").as_deref(),
            Some("bench-ref")
        );
        assert_eq!(preset_from_name("default-run"), None);
        assert_eq!(preset_from_name("tiny"), None);
        assert_eq!(preset_from_name("mine-20261129-224105"), None);
    }

    fn run_of(rows: Vec<Row>, tokenizer: Option<&str>, tps: Option<f64>) -> Run {
        Run {
            name: "r".into(),
            metrics: PathBuf::from("r/metrics.jsonl"),
            preset: None,
            tokenizer: tokenizer.map(str::to_string),
            tokens_per_step: tps,
            rows,
            skipped: 0,
            first_skipped: None,
            lines: 0,
        }
    }

    #[test]
    fn token_and_byte_axes_fall_back_or_refuse() {
        let rows = vec![row(0.0, true), row(10.0, false)];
        // Old metrics (no tokens, no bytes/token): tokens from the config's B·T·k ...
        let r = run_of(rows.clone(), Some("bpe:8192"), Some(512.0));
        assert_eq!(
            x_values(&r, XAxis::Tokens).unwrap(),
            [Some(0.0), Some(5120.0)]
        );
        // ... but bytes need the bytes per token, except for a byte tokenizer.
        let e = x_values(&r, XAxis::Bytes).unwrap_err().to_string();
        assert!(e.contains("--x tokens"), "{e}");
        let r = run_of(rows.clone(), Some("bytes"), Some(512.0));
        assert_eq!(
            x_values(&r, XAxis::Bytes).unwrap(),
            [Some(0.0), Some(5120.0)]
        );
        // No config at all: tokens cannot be had.
        let r = run_of(rows.clone(), None, None);
        assert!(x_values(&r, XAxis::Tokens).is_err());
        // New metrics carry both.
        let mut rows = rows;
        rows[0].tokens = Some(0.0);
        rows[0].bytes_per_token = Some(3.0);
        rows[1].tokens = Some(100.0);
        let r = run_of(rows, None, None);
        assert_eq!(
            x_values(&r, XAxis::Bytes).unwrap(),
            [Some(0.0), Some(300.0)]
        );
    }

    #[test]
    fn non_finite_and_missing_values_are_left_out() {
        let mut rows = vec![row(0.0, true), row(10.0, false), row(20.0, false)];
        rows[1].train_loss = None;
        rows[2].train_loss = Some(f64::INFINITY);
        rows[2].grad_norm = Some(0.5);
        rows.push(row(30.0, false));
        let c = curves(&[run_of(rows, None, None)], XAxis::Step).unwrap();
        assert_eq!(c[0].series[0], [(30.0, 2.0)]);
        assert_eq!(c[0].series[1], [(0.0, 3.0)]);
        assert_eq!(c[0].series[3], [(20.0, 0.5)]);
        // Time is missing from every row: no points, no error.
        let c = curves(&[run_of(vec![row(1.0, false)], None, None)], XAxis::Time).unwrap();
        assert!(c[0].series.iter().all(Vec::is_empty));
    }

    /// Runs `f` on a thread of its own, failing (not hanging) if it takes over a minute.
    pub(super) fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("drawing hung (or panicked)")
    }

    /// The review's hang: a series from 1e308 to -1e308 (max − min overflows), in every
    /// field on the axis that shows it, and the x extremes, in SVG and PNG.
    #[test]
    fn values_spanning_all_of_f64_draw() {
        let dir = tempfile::tempdir().unwrap();
        let mut cases: Vec<(String, XAxis)> =
            ["train_loss", "lr", "grad_norm", "tok_per_s", "val_bpb"]
                .iter()
                .map(|f| {
                    let m =
                        format!("{{\"step\":1,\"{f}\":1e308}}\n{{\"step\":2,\"{f}\":-1e308}}\n");
                    (m, XAxis::Step)
                })
                .collect();
        let max = "1.7976931348623157e308";
        cases.extend([
            (
                "{\"step\":1,\"tokens\":1e308,\"train_loss\":1}\n\
                 {\"step\":2,\"tokens\":-1e308,\"train_loss\":2}\n"
                    .to_string(),
                XAxis::Tokens,
            ),
            (
                format!(
                    "{{\"step\":1,\"elapsed_s\":-{max},\"train_loss\":1}}\n\
                     {{\"step\":2,\"elapsed_s\":{max},\"train_loss\":2}}\n"
                ),
                XAxis::Time,
            ),
            (
                format!("{{\"step\":0,\"train_loss\":1}}\n{{\"step\":{max},\"train_loss\":2}}\n"),
                XAxis::Step,
            ),
        ]);
        for (i, (metrics, x)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.jsonl"));
            std::fs::write(&path, &metrics).unwrap();
            for ext in ["svg", "png"] {
                let out = dir.path().join(format!("{i}.{ext}"));
                let (p, o) = (path.clone(), out.clone());
                within_a_minute(move || plot_runs(&[p], &o, x, "t", true))
                    .unwrap_or_else(|e| panic!("{metrics}: {e:#}"));
                if ext == "svg" {
                    let svg = std::fs::read_to_string(&out).unwrap();
                    assert_eq!(svg.matches("stroke-width=\"2\"").count(), 1, "{metrics}");
                }
            }
        }
    }

    /// Without `replace`, a file that appeared at `out` after the check at start (as one
    /// may while `--watch` waits for a run) is kept, and nothing is left beside it.
    #[test]
    fn a_first_draw_never_replaces_what_appeared_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let runs = [dir.path().join("m.jsonl")];
        std::fs::write(&runs[0], "{\"step\":1,\"train_loss\":2}\n").unwrap();
        let out = dir.path().join("f.svg");
        plot_runs(&runs, &out, XAxis::Step, "t", false).unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().starts_with("<svg"));
        std::fs::write(&out, "precious").unwrap();
        let e = plot_runs(&runs, &out, XAxis::Step, "t", false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
        let names = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names(), 2);
        plot_runs(&runs, &out, XAxis::Step, "t", true).unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().starts_with("<svg"));
        assert_eq!(names(), 2);
    }

    #[test]
    fn formats_go_by_extension() {
        assert_eq!(Format::of(Path::new("a/b.SVG")).unwrap(), Format::Svg);
        assert_eq!(Format::of(Path::new("b.png")).unwrap(), Format::Png);
        for bad in ["b.jpg", "b", "svg"] {
            assert!(Format::of(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
