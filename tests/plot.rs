//! `tinylm plot` and the curves `tinylm train` keeps, through the binary: real and
//! hand-written metrics, damaged ones (no validation, a cut last line, NaN, missing
//! files), the figure's structure, PNG output and `--watch`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod bin_util;
use bin_util::{output as tinylm, utf8 as text};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `tinylm plot args...`, asserting success; returns stderr.
fn plot_ok(args: &[&str]) -> String {
    let mut all = vec!["plot"];
    all.extend_from_slice(args);
    let out = tinylm(&all);
    let err = text(&out.stderr);
    assert!(
        out.status.success(),
        "plot {args:?} failed: {err}{}",
        text(&out.stdout)
    );
    err
}

/// Runs `tinylm plot args...`, asserting a one-line error; returns it.
fn plot_err(args: &[&str]) -> String {
    let mut all = vec!["plot"];
    all.extend_from_slice(args);
    let out = tinylm(&all);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "plot {args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The SVG text of a figure, checked to be well-formed XML with an <svg> root.
fn read_svg(path: &Path) -> String {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(!svg.is_empty());
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    svg
}

/// All <text> contents of an SVG, trimmed.
fn texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

const PANELS: [&str; 5] = [
    "Training loss",
    "Validation bits per byte",
    "Learning rate",
    "Gradient norm (before clipping)",
    "Throughput",
];

/// Per panel, in drawing order: (stroke colours of its series' polylines, number of
/// circles).
fn panels(svg: &str) -> Vec<(Vec<String>, usize)> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    let mut out: Vec<(Vec<String>, usize)> = Vec::new();
    let mut current: Option<usize> = None;
    for n in doc.root_element().children().filter(|n| n.is_element()) {
        let t = n.text().unwrap_or("").trim();
        if n.has_tag_name("text") && PANELS.contains(&t) {
            assert_eq!(PANELS[out.len()], t, "panels out of order");
            out.push((Vec::new(), 0));
            current = Some(out.len() - 1);
        } else if n.has_tag_name("text") && t == "Runs" {
            current = None;
        } else if let Some(i) = current {
            // Series are 2 px wide; axes and ticks (1 px black polylines) are not.
            if n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2") {
                out[i].0.push(n.attribute("stroke").unwrap().to_string());
            } else if n.has_tag_name("circle") {
                out[i].1 += 1;
            }
        }
    }
    out
}

/// A hand-written metrics.jsonl in the format `tinylm train` writes: eval lines every
/// `eval` steps, train lines every 10, `steps` steps of 512 tokens.
fn metrics(steps: usize, eval: usize, loss0: f64) -> String {
    let mut m = String::new();
    for step in (0..=steps).step_by(10) {
        if step > 0 {
            m += &format!(
                "{{\"step\":{step},\"elapsed_s\":{},\"tokens\":{},\"train_loss\":{},\"val_loss\":null,\"val_bpb\":null,\"val_bpc\":null,\"lr\":0.001,\"grad_norm\":{},\"tok_per_s\":40000.0,\"mfu\":0.5,\"bytes_per_token\":null}}\n",
                step as f64 * 0.1,
                step * 512,
                loss0 - step as f64 * 0.01,
                1.0 / (1.0 + step as f64)
            );
        }
        if step % eval == 0 {
            m += &format!(
                "{{\"step\":{step},\"elapsed_s\":{},\"tokens\":{},\"train_loss\":null,\"val_loss\":{},\"val_bpb\":{},\"val_bpc\":2.0,\"lr\":0.001,\"grad_norm\":null,\"tok_per_s\":null,\"mfu\":null,\"bytes_per_token\":3.0}}\n",
                step as f64 * 0.1,
                step * 512,
                loss0 - step as f64 * 0.01,
                (loss0 - step as f64 * 0.01) / 3.0 / std::f64::consts::LN_2
            );
        }
    }
    m
}

fn write_run(dir: &Path, metrics: &str, config: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join("config.toml"), c).unwrap();
    }
    dir.to_path_buf()
}

/// A real 60-step tiny run, shared.
fn real_run() -> &'static (Output, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, Output, PathBuf)> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("tiny-run");
        let out = tinylm(&[
            "train",
            "--preset",
            "tiny",
            "--max-steps",
            "60",
            "--eval-interval",
            "20",
            "--data",
            "data/zh_tiny.txt",
            "--out",
            s(&run),
            "--sample-tokens",
            "0",
            "--no-progress",
        ]);
        assert!(out.status.success(), "train: {}", text(&out.stderr));
        (dir, out, run)
    });
    // The tuple without the TempDir (kept alive in the static).
    static VIEW: OnceLock<(Output, PathBuf)> = OnceLock::new();
    VIEW.get_or_init(|| (r.1.clone(), r.2.clone()))
}

#[test]
fn training_keeps_curves_and_records_tokens_and_bytes_per_token() {
    let (out, run) = real_run();
    let stdout = text(&out.stdout);
    let curves = run.join("curves.svg");
    assert!(
        stdout.contains(&format!("curves: {}", curves.display())),
        "{stdout}"
    );
    let svg = read_svg(&curves);
    let t = texts(&svg);
    assert!(t.iter().any(|x| x == "tiny-run"), "{t:?}");
    assert!(t.iter().any(|x| x.contains("preset tiny")), "{t:?}");
    // Evals at 0, 20, 40 and the final one at 60: four validation dots.
    let p = panels(&svg);
    assert_eq!(p.len(), 5);
    assert_eq!(p[1].1, 4, "{p:?}");
    assert!(p.iter().all(|(lines, _)| lines.len() == 1), "{p:?}");

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut evals = 0;
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        if v.get("form").is_some() {
            // The end-of-run report on the form of the samples, not a training step.
            continue;
        }
        // tiny: B = 8, T = 64, one micro-batch: 512 tokens a step.
        assert_eq!(v["tokens"].as_u64(), Some(step * 512), "{line}");
        if v["val_loss"].is_number() {
            evals += 1;
            // A byte tokenizer: one byte per token.
            assert_eq!(v["bytes_per_token"].as_f64(), Some(1.0), "{line}");
        }
    }
    assert_eq!(evals, 4);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("preset = \"tiny\""), "{config}");
}

#[test]
fn plot_of_a_real_run_on_every_axis_names_it() {
    let (_, run) = real_run();
    let dir = tempfile::tempdir().unwrap();
    for (x, desc) in [
        ("step", "optimizer step"),
        ("time", "training time (s)"),
        ("tokens", "training tokens seen"),
        ("bytes", "training bytes seen"),
    ] {
        let out = dir.path().join(format!("{x}.svg"));
        plot_ok(&[s(run), "--x", x, "--out", s(&out)]);
        let svg = read_svg(&out);
        let t = texts(&svg);
        assert!(t.iter().any(|l| l == "tiny-run"), "{x}: {t:?}");
        assert!(t.iter().any(|l| l.starts_with(desc)), "{x}: {t:?}");
        let p = panels(&svg);
        assert!(p.iter().all(|(lines, _)| lines.len() == 1), "{x}: {p:?}");
    }
    // On the bytes axis of a byte-tokenizer run, the last x tick is tokens: 60 × 512.
    let t = texts(&std::fs::read_to_string(dir.path().join("bytes.svg")).unwrap());
    assert!(t.iter().any(|l| l == "30k"), "{t:?}");
}

#[test]
fn png_output_is_a_png_of_the_figure() {
    let (_, run) = real_run();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("curves.PNG");
    plot_ok(&[s(run), "--out", s(&out)]);
    let b = std::fs::read(&out).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&b[12..16], b"IHDR");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    assert_eq!((w, h), (1200, 1100));
    // A blank figure compresses to a few kB; curves and text take far more.
    assert!(b.len() > 50_000, "{} bytes", b.len());
    // Nothing left over from the atomic write.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// Golden structure: two runs give five panels in order, each with one polyline per
/// run in the run's own colour, dots for every evaluation, both runs in the legend.
#[test]
fn two_runs_give_five_panels_of_two_series() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_run(
        &dir.path().join("default-20260101-000000"),
        &metrics(100, 50, 5.0),
        None,
    );
    let b = write_run(
        &dir.path().join("bytes-run"),
        &metrics(200, 40, 4.0),
        Some("preset = \"tiny\"\ntokenizer = \"bytes\"\n"),
    );
    let out = dir.path().join("both.svg");
    plot_ok(&[s(&a), s(&b), "--out", s(&out)]);
    let svg = read_svg(&out);
    let p = panels(&svg);
    assert_eq!(p.len(), 5, "{p:?}");
    let colours = &p[0].0;
    assert_eq!(colours.len(), 2);
    assert_ne!(colours[0], colours[1]);
    for (i, (lines, circles)) in p.iter().enumerate() {
        assert_eq!(lines, colours, "panel {}", PANELS[i]);
        // Evaluations: 0, 50, 100 and 0, 40, ..., 200.
        assert_eq!(
            *circles,
            if i == 1 { 3 + 6 } else { 0 },
            "panel {}",
            PANELS[i]
        );
    }
    let t = texts(&svg);
    assert!(t.iter().any(|l| l == "default-20260101-000000"), "{t:?}");
    assert!(t.iter().any(|l| l == "bytes-run"), "{t:?}");
    // The preset from the directory name, or from config.toml.
    assert!(t.iter().any(|l| l.starts_with("preset default:")), "{t:?}");
    assert!(
        t.iter()
            .any(|l| l.starts_with("preset tiny, tokenizer bytes:")),
        "{t:?}"
    );
    assert!(
        t.iter().any(|l| l == "tinylm training curves: 2 runs"),
        "{t:?}"
    );
    // Each polyline of the first run in the training-loss panel has its 10 points.
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let first = doc
        .descendants()
        .find(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .unwrap();
    assert_eq!(
        first
            .attribute("points")
            .unwrap()
            .split_whitespace()
            .count(),
        10
    );
}

#[test]
fn damaged_metrics_still_give_a_figure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.svg");

    // No validation rows: the panel says so, the others draw.
    let no_val: String = metrics(100, 1000, 5.0)
        .lines()
        .filter(|l| !l.contains("\"val_loss\":5") && !l.contains("\"val_loss\":4"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!no_val.contains("bytes_per_token\":3"), "{no_val}");
    let r = write_run(&dir.path().join("noval"), &no_val, None);
    // The figures after this one replace it: --force.
    plot_ok(&[s(&r), "--out", s(&out)]);
    let svg = read_svg(&out);
    let p = panels(&svg);
    assert_eq!(p[1], (vec![], 0), "{p:?}");
    assert_eq!(p[0].0.len(), 1);
    assert!(texts(&svg).iter().any(|l| l == "no data yet"));

    // A killed run: the last line cut short.
    let full = metrics(100, 50, 5.0);
    let cut = &full[..full.len() - 40];
    let r = write_run(&dir.path().join("killed"), cut, None);
    let err = plot_ok(&[s(&r), "--out", s(&out), "--force"]);
    assert!(err.contains("skipped 1 unreadable line"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The warning names the file read.
    let read = r.join("metrics.jsonl");
    assert!(
        err.starts_with(&format!("warning: {}: ", read.display())),
        "{err}"
    );
    assert!(texts(&read_svg(&out)).iter().any(|l| l == "killed"));

    // NaN: tinylm writes null; a hand-written NaN is not JSON and is skipped.
    let nan = full.replacen("\"train_loss\":4.9", "\"train_loss\":null", 1)
        + "{\"step\":110,\"elapsed_s\":11.0,\"train_loss\":NaN,\"lr\":0.001}\n"
        + "{\"step\":120,\"elapsed_s\":12.0,\"train_loss\":1e300,\"lr\":-1e300,\"grad_norm\":0}\n";
    let r = write_run(&dir.path().join("nan"), &nan, None);
    let err = plot_ok(&[s(&r), "--out", s(&out), "--force"]);
    assert!(err.contains("skipped 1 unreadable line"), "{err}");
    read_svg(&out);
    // A metrics file of another name, named directly: the warning names it.
    let named = dir.path().join("nan/nan.jsonl");
    std::fs::write(&named, &nan).unwrap();
    let err = plot_ok(&[s(&named), "--out", s(&out), "--force"]);
    assert!(
        err.starts_with(&format!("warning: {}: skipped 1 ", named.display())),
        "{err}"
    );
    assert!(!err.contains("metrics.jsonl"), "{err}");

    // Empty, binary and over-long-line files.
    let r = write_run(&dir.path().join("empty"), "", None);
    plot_ok(&[s(&r), "--out", s(&out), "--force"]);
    assert!(texts(&read_svg(&out)).iter().any(|l| l == "no data yet"));
    let junk: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.path().join("empty/metrics.jsonl"), &junk).unwrap();
    plot_ok(&[s(&r), "--out", s(&out), "--force"]);
    read_svg(&out);
    let long = format!(
        "{{\"step\":1,\"x\":\"{}\"}}\n{}",
        "a".repeat(200_000),
        metrics(20, 10, 5.0)
    );
    std::fs::write(dir.path().join("empty/metrics.jsonl"), long).unwrap();
    let err = plot_ok(&[s(&r), "--out", s(&out), "--force"]);
    assert!(err.contains("skipped 1 unreadable line"), "{err}");
    assert_eq!(panels(&read_svg(&out))[0].0.len(), 1);

    // A metrics file named directly; odd characters in the run's name.
    let odd = write_run(&dir.path().join("a&b<c> 春"), &full, None);
    plot_ok(&[s(&odd.join("metrics.jsonl")), "--out", s(&out), "--force"]);
    assert!(texts(&read_svg(&out)).iter().any(|l| l == "a&b<c> 春"));
    let png = dir.path().join("f.png");
    plot_ok(&[s(&odd), "--out", s(&png)]);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_run(&dir.path().join("good"), &metrics(20, 10, 5.0), None);
    let out = dir.path().join("f.svg");
    let missing = dir.path().join("missing");
    let e = plot_err(&[s(&missing), "--out", s(&out)]);
    assert!(e.contains("not found"), "{e}");
    let e = plot_err(&[s(dir.path()), "--out", s(&out)]);
    assert!(e.contains("no metrics.jsonl"), "{e}");
    let e = plot_err(&[s(&good), "--out", s(&dir.path().join("f.jpg"))]);
    assert!(e.contains(".svg or .png"), "{e}");
    let e = plot_err(&[s(&good), "--out", s(&dir.path().join("no/such/f.svg"))]);
    assert!(e.contains("not found"), "{e}");
    let e = plot_err(&[s(&good), "--watch", "--interval", "0", "--out", s(&out)]);
    assert!(e.contains("--interval"), "{e}");
    let many: Vec<&str> = std::iter::repeat_n(s(&good), 11).collect();
    let e = plot_err(&[&many[..], &["--out", s(&out)]].concat());
    assert!(e.contains("at most 10 runs"), "{e}");
    // Old metrics without bytes per token, of a BPE run: no bytes axis, but tokens
    // come from the config's B·T·k.
    let old: String = metrics(20, 10, 5.0)
        .replace(",\"bytes_per_token\":3.0", "")
        .replace(",\"bytes_per_token\":null", "")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut v = v.as_object().unwrap().clone();
            v.remove("tokens");
            format!("{}\n", serde_json::Value::Object(v))
        })
        .collect();
    let cfg =
        "tokenizer = \"bpe:8192\"\nbatch_size = 4\ngrad_accum = 2\n[model]\nblock_size = 16\n";
    let r = write_run(&dir.path().join("old"), &old, Some(cfg));
    let e = plot_err(&[s(&r), "--x", "bytes", "--out", s(&out)]);
    assert!(e.contains("use --x tokens"), "{e}");
    plot_ok(&[s(&r), "--x", "tokens", "--out", s(&out)]);
    // 20 steps of 4·2·16 = 128 tokens: the axis runs to 2560.
    assert!(texts(&read_svg(&out)).iter().any(|l| l == "2500"));
    // Bad arguments are clap's one line, exit 2.
    let o = tinylm(&["plot", s(&good), "--x", "epochs"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stderr).trim_end().lines().count(), 1);
    let o = tinylm(&["plot"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Whatever is at --out is refused, before any metrics are read (a missing run is not
/// what the error is about), and left as it was; --force replaces a regular file only.
#[test]
fn an_existing_out_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_run(&dir.path().join("good"), &metrics(20, 10, 5.0), None);
    let missing = dir.path().join("missing");
    let mine = dir.path().join("my.svg");
    std::fs::write(&mine, "precious").unwrap();
    for run in [&good, &missing] {
        for watch in [&[][..], &["--watch", "--watch-checks", "1"][..]] {
            let e = plot_err(&[&[s(run), "--out", s(&mine)][..], watch].concat());
            assert!(e.contains(s(&mine)) && e.contains("--force"), "{e}");
        }
    }
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "precious");
    plot_ok(&[s(&good), "--out", s(&mine), "--force"]);
    read_svg(&mine);

    // The default --out, curves.svg in the current directory.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::write(cwd.join("curves.svg"), "precious").unwrap();
    let o = bin_util::cmd(&["plot", s(&good)])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.starts_with("error: curves.svg exists") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(cwd.join("curves.svg")).unwrap(),
        "precious"
    );
}

/// What is not a regular file at --out is refused even with --force, and left as it
/// was: a symbolic link (and its target), a FIFO (never opened), a directory.
#[cfg(unix)]
#[test]
fn special_files_at_out_are_refused_even_forced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let good = write_run(&dir.path().join("good"), &metrics(20, 10, 5.0), None);
    let target = dir.path().join("target.svg");
    std::fs::write(&target, "precious").unwrap();
    let link = dir.path().join("link.svg");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo.svg");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let folder = dir.path().join("folder.svg");
    std::fs::create_dir(&folder).unwrap();
    for (path, kind) in [
        (&link, "a symbolic link"),
        (&fifo, "not a regular file"),
        (&folder, "a directory"),
    ] {
        for force in [&[][..], &["--force"][..]] {
            let e = plot_err(&[&[s(&good), "--out", s(path)][..], force].concat());
            assert!(e.contains(s(path)) && e.contains(kind), "{e}");
            assert!(e.contains("--force"), "{e}");
        }
    }
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
}

/// Waits (bounded) for a line of `lines` that satisfies `want`.
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("watch never printed the line waited for: {e}"),
        }
    }
}

#[test]
fn watch_waits_for_a_run_then_redraws_as_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("live");
    std::fs::create_dir_all(&run).unwrap();
    let out = dir.path().join("live.svg");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinylm"))
        .args([
            "plot",
            "--watch",
            s(&run),
            "--out",
            s(&out),
            "--interval",
            "0.05",
            "--watch-checks",
            "2000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    wait_for(&rx, |l| l.starts_with("waiting for metrics of"));
    // Up to the evaluation at step 50 (7 lines), appearing whole (a rename).
    let full = metrics(100, 50, 5.0);
    let lines: Vec<&str> = full.lines().collect();
    let tmp = dir.path().join("tmp.jsonl");
    std::fs::write(&tmp, lines[..7].join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, run.join("metrics.jsonl")).unwrap();
    wait_for(&rx, |l| l.starts_with("drew "));
    let before = panels(&read_svg(&out));
    assert_eq!(before[1].1, 2, "{before:?}");
    // The rest, as training appends it: redrawn (maybe more than once, should the
    // append be seen half done) until the last evaluation is in.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .unwrap();
    f.write_all((lines[7..].join("\n") + "\n").as_bytes())
        .unwrap();
    drop(f);
    let evals = || panels(&read_svg(&out))[1].1;
    while evals() < 3 {
        wait_for(&rx, |l| l.starts_with("drew "));
    }
    assert_eq!(evals(), 3);
    child.kill().unwrap();
    child.wait().unwrap();
    // --watch-checks ends it by itself; --force lets it replace the figure above.
    let o = tinylm(&[
        "plot",
        "--watch",
        s(&run),
        "--out",
        s(&out),
        "--force",
        "--interval",
        "0.05",
        "--watch-checks",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).matches("drew ").count(), 1);
}
