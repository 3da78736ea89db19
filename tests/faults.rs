//! Faults and hostile input (issue 7), against the real binary wherever possible:
//! Ctrl-C, kill -9 at random moments, a full disk and a read-only directory, NaN
//! losses, damaged and hostile checkpoint files, configs too large for memory, and two
//! runs on one directory. The property tests at the end fuzz the loaders in the normal
//! test run (the cargo-fuzz targets in fuzz/ do the same for longer).

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tinylm::train::checkpoint;
use tinylm::train::memory::StepKind;

mod bin_util;
use bin_util::*;

/// A child whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(args: &[String], env: &[(&str, &str)]) -> Self {
        let mut child = cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 60 s) for a stdout line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.starts_with(prefix) {
                    return line;
                }
            }
        }
        panic!(
            "no line starting with {prefix:?}; seen:\n{}",
            self.seen.join("\n")
        );
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for exit; returns (status, all stdout, stderr).
    fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"), stderr)
    }
}

/// Starts a long run, sends `sig` after step 3 and checks the clean stop: exit 0, the
/// interrupt message, a checkpoint at the step reported, the resume hint, no lock left.
/// Returns (temporary directory, run directory, steps done).
fn stop_with_signal(sig: &str) -> (tempfile::TempDir, PathBuf, usize) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = train_args(
        &run,
        &["--max-steps", "100000", "--checkpoint-interval", "1000"],
    );
    let mut r = Running::spawn(&args, &[]);
    r.wait_for("step      3 |");
    r.signal(sig);
    let (status, out, err) = r.finish();
    println!("{sig}: {out}\n{err}");
    assert_eq!(status.code(), Some(0), "exit status after {sig}");
    assert!(err.contains("interrupt: finishing this step"), "{err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("interrupted after "))
        .expect("an 'interrupted after N steps' line");
    let steps: usize = summary.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(steps >= 3);
    let where_line = out.lines().find(|l| l.starts_with("checkpoint: ")).unwrap();
    let ckpt = PathBuf::from(where_line.trim_start_matches("checkpoint: "));
    assert_eq!(ckpt, run.join(format!("step-{steps:08}")));
    assert!(out.contains(&format!(
        "resume with: tinylm train --resume {}",
        run.display()
    )));
    assert!(
        !run.join(checkpoint::LOCK_FILE).exists(),
        "lock left behind"
    );
    let loaded = checkpoint::load(&run, false, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.state.step, steps);
    (dir, run, steps)
}

#[test]
fn ctrl_c_finishes_the_step_checkpoints_and_resume_continues() {
    let (_dir, run, steps) = stop_with_signal("-INT");
    let ckpt = run.join(format!("step-{steps:08}"));
    let total = (steps + 3).to_string();
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", &total],
        ),
        &[],
    );
    assert!(out.contains(&format!("resuming {} at step {steps}", ckpt.display())));
    assert!(out.contains(&format!("done after {total} steps")), "{out}");
    assert_eq!(checkpoint::list(&run).last().unwrap().0, steps + 3);
}

#[test]
fn sigterm_and_sighup_stop_as_cleanly_as_ctrl_c() {
    for sig in ["-TERM", "-HUP"] {
        stop_with_signal(sig);
    }
}

#[test]
fn kill_9_at_random_moments_never_loses_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Every step checkpoints, and each file of a save pauses 15 ms after it is created,
    // so a good share of the kills land in the middle of a save.
    let env = [(tinylm::train::faults::ENV, "checkpoint-write-delay:ms=15")];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut with_ckpt, mut mid_write, mut takeovers) = (0, 0, 0);
    let mut last_step = 0;
    let kills = 22;
    for i in 0..kills {
        let resume = !checkpoint::list(&run).is_empty();
        let mut extra = vec!["--max-steps", "100000", "--checkpoint-interval", "1"];
        let run_s = run.to_str().unwrap();
        if resume {
            extra.extend(["--resume", run_s]);
        }
        let mut r = Running::spawn(&train_args(&run, &extra), &env);
        // Startup (corpus, matmul benchmark) takes 0.3 s or far more on a busy machine:
        // the random delay counts from the first step, after which a step + save
        // takes ~0.1 s.
        r.wait_for("step ");
        let delay = rng.gen_range(0..400u64);
        std::thread::sleep(Duration::from_millis(delay));
        r.child.kill().unwrap(); // SIGKILL
        let (_, out, _) = r.finish();
        takeovers += out.contains("taking over the stale lock") as usize;
        let left = leftovers(&run);
        mid_write += left.iter().any(|n| n.contains(".tmp-")) as usize;
        let ckpts = checkpoint::list(&run);
        match ckpts.last() {
            None => println!("kill {i} after {delay} ms: no checkpoint yet"),
            Some((step, _)) => {
                with_ckpt += 1;
                // The latest checkpoint loads, and the binary samples from it.
                let loaded = checkpoint::load(&run, false, &candle_core::Device::Cpu)
                    .unwrap_or_else(|e| panic!("kill {i}: latest checkpoint unloadable: {e}"));
                assert_eq!(loaded.state.step, *step);
                assert!(*step >= last_step, "progress lost: {step} < {last_step}");
                last_step = *step;
                sample_works(&run);
                println!("kill {i} after {delay} ms: latest step {step}, leftovers {left:?}");
            }
        }
    }
    println!(
        "{kills} kills: {with_ckpt} with a checkpoint, {mid_write} mid-write, \
         {takeovers} stale locks taken over"
    );
    assert!(with_ckpt >= kills / 2, "too few kills after a checkpoint");
    assert!(mid_write >= 2, "too few kills landed in a checkpoint write");
    assert_eq!(takeovers, kills - 1, "stale locks were not taken over");
    // A final resume runs to its end and tidies up.
    let end = (last_step + 2).to_string();
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", &end],
        ),
        &[],
    );
    assert!(out.contains(&format!("done after {end} steps")), "{out}");
    assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
    assert!(!run.join(checkpoint::LOCK_FILE).exists());
}

#[test]
fn failed_checkpoint_write_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(
        &train_args(&run, &["--max-steps", "4", "--checkpoint-interval", "2"]),
        &[],
    );
    let before = snapshot(&run.join("step-00000004"));
    let model = before["model.safetensors"].len();
    let optim = before["optim.safetensors"].len();
    // Fail at the first byte, inside the weights, inside the moments, inside the state.
    for after in [0, model / 2, model + optim / 2, model + optim + 10] {
        let spec = format!("checkpoint-write-fail:after-bytes={after}");
        let e = run_fails(
            &train_args(
                &run,
                &["--resume", run.to_str().unwrap(), "--max-steps", "6"],
            ),
            &[(tinylm::train::faults::ENV, &spec)],
        );
        assert!(e.contains("cannot write checkpoint"), "{e}");
        assert!(e.contains("No space left on device"), "{e}");
        assert_eq!(
            snapshot(&run.join("step-00000004")),
            before,
            "previous changed"
        );
        assert_eq!(checkpoint::list(&run).last().unwrap().0, 4);
        assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
        assert!(
            !run.join(checkpoint::LOCK_FILE).exists(),
            "lock left behind"
        );
    }
    // The fault gone, the run continues from the intact checkpoint.
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "6"],
        ),
        &[],
    );
    assert!(out.contains("at step 4") && out.contains("done after 6 steps"));
}

/// A tmpfs mounted for the test (needs root and mount rights; unmounted on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
    /// Remounts read-only or read-write; retried, since a remount to read-only fails
    /// (EBUSY) while a file is open for writing.
    fn remount(&self, mode: &str) {
        for _ in 0..200 {
            let ok = Command::new("mount")
                .args(["-o", &format!("remount,{mode}")])
                .arg(&self.0)
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("cannot remount {} {mode}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn real_full_disk_and_read_only_directory() {
    let dir = tempfile::tempdir().unwrap();
    // One checkpoint of this model is ~424 KB: the second does not fit in 700 KB.
    let Some(fs) = Tmpfs::mount(&dir.path().join("mnt"), "700k") else {
        println!("SKIPPED: cannot mount a tmpfs here (needs root with mount rights)");
        return;
    };
    let run = fs.0.join("run");
    let e = run_fails(
        &train_args(&run, &["--max-steps", "4", "--checkpoint-interval", "2"]),
        &[],
    );
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(checkpoint::list(&run).len(), 1, "the first checkpoint fits");
    assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
    sample_works(&run);
    let before = snapshot(&run.join("step-00000002"));
    // Read-only: refused up front (the lock cannot be taken), checkpoint intact.
    fs.remount("ro");
    let e = run_fails(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "4"],
        ),
        &[],
    );
    assert!(e.contains("Read-only file system"), "{e}");
    assert_eq!(snapshot(&run.join("step-00000002")), before);
    sample_works(&run);

    // Read-only while a run is going: its next checkpoint write fails cleanly.
    let Some(fs) = Tmpfs::mount(&dir.path().join("mnt2"), "8m") else {
        panic!("a second tmpfs could not be mounted");
    };
    let run = fs.0.join("run");
    let args = train_args(
        &run,
        &[
            "--max-steps",
            "100000",
            "--checkpoint-interval",
            "2",
            "--log-interval",
            "100000",
        ],
    );
    let r = Running::spawn(&args, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint::list(&run).is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    fs.remount("ro");
    let (status, _, err) = r.finish();
    println!("{err}");
    assert_eq!(status.code(), Some(1));
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("cannot write checkpoint"), "{err}");
    assert!(lines[0].contains("Read-only file system"), "{err}");
    let (step, ckpt) = checkpoint::list(&run).pop().unwrap();
    checkpoint::load(&ckpt, false, &candle_core::Device::Cpu).unwrap();
    sample_works(&run);
    // Writable again: the resume takes over the lock the failed run could not delete.
    fs.remount("rw");
    let end = (step + 2).to_string();
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", &end],
        ),
        &[],
    );
    assert!(out.contains(&format!("done after {end} steps")), "{out}");
}

#[test]
fn nan_steps_are_skipped_reported_and_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let env = tinylm::train::faults::ENV;
    // Two bad steps out of three allowed: skipped, reported, and the run goes on.
    let run = dir.path().join("recovers");
    let out = run_ok(
        &train_args(&run, &["--max-steps", "6", "--max-bad-steps", "3"]),
        &[(env, "nan-loss:from-step=3,to-step=4")],
    );
    for n in [3, 4] {
        let k = n - 2;
        assert!(
            out.contains(&format!("step {n}: non-finite loss NaN")),
            "{out}"
        );
        assert!(out.contains(&format!("update skipped ({k}/3)")), "{out}");
    }
    assert!(out.contains("done after 6 steps"));

    // Bad from step 5 on: the run stops after 3, naming its last good checkpoint,
    // whose weights are those of the last applied update (step 4).
    let run = dir.path().join("stops");
    let e = run_fails(
        &train_args(
            &run,
            &[
                "--max-steps",
                "50",
                "--max-bad-steps",
                "3",
                "--checkpoint-interval",
                "2",
            ],
        ),
        &[(env, "nan-loss:from-step=5")],
    );
    assert!(
        e.contains("3 consecutive steps with a non-finite loss"),
        "{e}"
    );
    let named = run.join("step-00000006");
    assert!(e.ends_with(&format!("last good checkpoint: {}", named.display())));
    let dev = candle_core::Device::Cpu;
    let at4 = checkpoint::load(&run.join("step-00000004"), false, &dev).unwrap();
    let at6 = checkpoint::load(&named, false, &dev).unwrap();
    for (name, t) in &at6.model {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = at4.model[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(a.iter().all(|x| x.is_finite()), "{name} not finite");
        assert_eq!(a, b, "{name}: a skipped update changed the weights");
    }
    assert!(checkpoint::list(&run).iter().all(|(s, _)| *s <= 6));
    assert!(!run.join(checkpoint::LOCK_FILE).exists());
    // Without the fault, the run resumes from it.
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "8"],
        ),
        &[],
    );
    assert!(out.contains("done after 8 steps"));

    // lr 1e6 is outside the documented range: refused before any work.
    let e = run_fails(
        &train_args(&dir.path().join("refused"), &["--lr", "1e6"]),
        &[],
    );
    assert!(e.contains("lr (--lr) must be in (0, 1]"), "{e}");
    // A real divergence (no hook) at the largest rate allowed: whatever the kernels do
    // with it, the run ends, or stops with one of the messages, never panics and never
    // calls a diverged model "done".
    let run = dir.path().join("diverges");
    let args = train_args(
        &run,
        &[
            "--max-steps",
            "30",
            "--lr",
            "1",
            "--weight-decay",
            "0",
            "--warmup",
            "1",
            "--max-bad-steps",
            "2",
        ],
    );
    let o = cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    if !o.status.success() {
        let e = one_line_error(&args, &o);
        assert!(
            e.contains("consecutive steps with a non-finite loss")
                || e.contains("the run diverged")
                || e.contains("made weights NaN or infinite"),
            "{e}"
        );
    }
}

#[test]
fn second_run_on_a_directory_refuses_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut first = Running::spawn(
        &train_args(
            &run,
            &["--max-steps", "100000", "--checkpoint-interval", "2"],
        ),
        &[],
    );
    first.wait_for("step      2 |");
    let pid = first.child.id();
    // A new run is refused: the directory is a run (or, before the first run's first
    // checkpoint, a run in use).
    let e = run_fails(&train_args(&run, &["--max-steps", "5"]), &[]);
    assert!(
        e.contains("is already a run") || e.contains(&format!("is in use by process {pid}")),
        "{e}"
    );
    // --resume too: two writers would interleave their checkpoints.
    let e = run_fails(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "1000000"],
        ),
        &[],
    );
    assert!(e.contains(&format!("is in use by process {pid}")), "{e}");
    first.signal("-INT");
    let (status, _, _) = first.finish();
    assert!(status.success());
    // Stopped: a new run still refuses the directory, --resume continues it.
    let e = run_fails(&train_args(&run, &["--max-steps", "5"]), &[]);
    assert!(
        e.contains("is already a run") && e.contains("--resume"),
        "{e}"
    );
    let last = checkpoint::list(&run).last().unwrap().0;
    let end = (last + 1).to_string();
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", &end],
        ),
        &[],
    );
    assert!(out.contains(&format!("done after {end} steps")));
}

#[test]
fn configs_too_large_for_memory_are_refused_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let t = Instant::now();
    let e = run_fails(
        &train_args(
            &run,
            &["--width", "65536", "--heads", "1", "--layers", "64"],
        ),
        &[],
    );
    assert!(e.contains("needs about") && e.contains("parameters"), "{e}");
    assert!(e.contains("of memory is available"), "{e}");
    assert!(checkpoint::list(&run).is_empty());
    println!("refused in {:.2} s", t.elapsed().as_secs_f64());
    // A config file asking for the same.
    let cfg = dir.path().join("huge.toml");
    std::fs::write(&cfg, "[model]\nn_layer = 1000\nn_embd = 4096\n").unwrap();
    let e = run_fails(
        &train_args(
            &run,
            &["--config", cfg.to_str().unwrap(), "--width", "4096"],
        ),
        &[],
    );
    assert!(e.contains("needs about"), "{e}");
    // Beyond the documented range, the range names the field first.
    std::fs::write(&cfg, "[model]\nn_layer = 10000000\n").unwrap();
    let e = run_fails(&train_args(&run, &["--config", cfg.to_str().unwrap()]), &[]);
    assert!(
        e.contains("model.n_layer (--layers) must be in [1, 1024]"),
        "{e}"
    );
}

/// A short run whose latest checkpoint the hostile-file tests copy and damage.
fn good_checkpoint(dir: &Path) -> PathBuf {
    let run = dir.join("good");
    run_ok(&train_args(&run, &["--max-steps", "2"]), &[]);
    checkpoint::list(&run).pop().unwrap().1
}

fn copy_ckpt(src: &Path, dst: &Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst.to_path_buf()
}

fn edit_state(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A safetensors file with the model's names and shapes, in F16.
fn as_f16(model: &[u8]) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(model).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let half: Vec<u8> = v
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            (n, v.shape().to_vec(), half)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn hostile_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_checkpoint(dir.path());
    let case = |name: &str| copy_ckpt(&good, &dir.path().join(name));
    let model = std::fs::read(good.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(model[..8].try_into().unwrap()) as usize;

    // Truncated: refused by size before it is read.
    let d = case("truncated");
    std::fs::write(d.join("model.safetensors"), &model[..model.len() - 100]).unwrap();
    assert!(sample_fails(&d).contains("truncated"));

    // One bit flipped in the data, in the header, in the optimizer moments: checksums.
    for (name, file, at) in [
        ("flip-data", "model.safetensors", model.len() - 777),
        ("flip-header", "model.safetensors", 8 + header_len / 2),
        ("flip-optim", "optim.safetensors", 5000),
    ] {
        let d = case(name);
        let mut b = std::fs::read(d.join(file)).unwrap();
        b[at] ^= 0x10;
        std::fs::write(d.join(file), b).unwrap();
        let e = sample_fails(&d);
        assert!(e.contains("checksum") && e.contains(file), "{e}");
    }

    // A checkpoint without its manifest is damaged, not unchecked: removing the
    // `files` key must not turn the size and checksum checks off.
    for (name, edit) in [
        ("no-files", None),
        ("no-model-sum", Some("model.safetensors")),
        ("no-optim-sum", Some("optim.safetensors")),
    ] {
        let d = case(name);
        edit_state(&d, |v| match edit {
            None => {
                v.as_object_mut().unwrap().remove("files");
            }
            Some(f) => {
                v["files"].as_object_mut().unwrap().remove(f);
            }
        });
        // A flipped bit in the file whose checksum is gone.
        let file = edit.unwrap_or("model.safetensors");
        let mut b = std::fs::read(d.join(file)).unwrap();
        b[5000] ^= 0x10;
        std::fs::write(d.join(file), b).unwrap();
        let e = sample_fails(&d);
        assert!(e.contains("records no size and checksum"), "{name}: {e}");
    }

    // With checksums that match (an altered file), the parser itself must refuse:
    // a header length of 2^63, of 1 TB, longer than the file.
    for (i, len) in [1u64 << 63, 1 << 40, model.len() as u64]
        .into_iter()
        .enumerate()
    {
        let d = case(&format!("header-{i}"));
        let mut b = model.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        std::fs::write(d.join("model.safetensors"), &b).unwrap();
        edit_state(&d, |v| {
            v["files"]["model.safetensors"] = serde_json::json!({
                "bytes": b.len(),
                "xxh64": format!("{:016x}", checkpoint::xxh64(&b)),
            });
        });
        assert!(sample_fails(&d).contains("corrupt or truncated"));
    }

    // Wrong dtype (a well-formed file, with matching checksums).
    let d = case("f16");
    let f16 = as_f16(&model);
    std::fs::write(d.join("model.safetensors"), &f16).unwrap();
    edit_state(&d, |v| {
        v["files"]["model.safetensors"] = serde_json::json!({
            "bytes": f16.len(),
            "xxh64": format!("{:016x}", checkpoint::xxh64(&f16)),
        });
    });
    assert!(sample_fails(&d).contains("dtype F16, expected F32"));

    // Malformed and hostile state.json.
    let state_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"{not json".to_vec(), "malformed"),
        ("empty", Vec::new(), "malformed"),
        ("not-utf8", vec![0xff, 0xfe, b'{'], "malformed"),
        (
            "deep",
            [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
            "malformed",
        ),
        ("huge", vec![b' '; 2 << 20], "too large"),
    ];
    for (name, bytes, want) in state_cases {
        let d = case(name);
        std::fs::write(d.join("state.json"), bytes).unwrap();
        let e = sample_fails(&d);
        assert!(e.contains(want), "{name}: {e}");
    }
    type Edit = fn(&mut serde_json::Value);
    let edits: Vec<(&str, Edit, &str)> = vec![
        ("unknown-field", |v| v["extra"] = 1.into(), "unknown field"),
        ("negative-step", |v| v["step"] = (-1).into(), "malformed"),
        (
            "big-step",
            |v| v["step"] = u64::MAX.into(),
            "implausibly large",
        ),
        ("nan-time", |v| v["elapsed_s"] = "NaN".into(), "malformed"),
        // Would size a parameter list of 10^18 entries if it were believed.
        (
            "layers",
            |v| v["config"]["model"]["n_layer"] = 1_000_000_000_000_000_000u64.into(),
            "invalid config: model.n_layer",
        ),
        (
            "width",
            |v| v["config"]["model"]["n_embd"] = (1u64 << 40).into(),
            "invalid config: model.n_embd",
        ),
        (
            "zero-heads",
            |v| v["config"]["model"]["n_head"] = 0.into(),
            "invalid config",
        ),
        (
            "tokenizer",
            |v| v["tokenizer"] = "bpe:4000000000".into(),
            "no tokenizer.json",
        ),
        ("files", |v| v["files"] = "garbage".into(), "malformed"),
    ];
    for (name, edit, want) in edits {
        let d = case(name);
        edit_state(&d, edit);
        let e = sample_fails(&d);
        assert!(e.contains(want), "{name}: {e}");
    }
    // A tokenizer file of garbage beside a BPE checkpoint.
    let d = case("garbage-tokenizer");
    edit_state(&d, |v| v["tokenizer"] = "bpe:300:0123456789abcdef".into());
    std::fs::write(d.join("tokenizer.json"), b"\x00\xffnot a tokenizer{{{").unwrap();
    let e = sample_fails(&d);
    assert!(e.contains("tokenizer"), "garbage tokenizer: {e}");
    // Resuming from a damaged checkpoint fails the same way, nothing written.
    let d = case("flip-resume");
    let mut b = std::fs::read(d.join("model.safetensors")).unwrap();
    b[100] ^= 1;
    std::fs::write(d.join("model.safetensors"), b).unwrap();
    let e = run_fails(
        &train_args(&d, &["--resume", d.to_str().unwrap(), "--max-steps", "4"]),
        &[],
    );
    assert!(e.contains("checksum"), "{e}");
    // A state whose config would overflow or exhaust memory is refused on resume.
    type Resume = (&'static str, fn(&mut serde_json::Value), &'static str);
    let resumes: [Resume; 2] = [
        (
            "keep-last",
            |v| v["config"]["keep_last"] = u64::MAX.into(),
            "keep_last must be in [1, 1000000], got 18446744073709551615",
        ),
        (
            "batch",
            |v| v["config"]["batch_size"] = (1u64 << 40).into(),
            "batch_size (--batch-size) must be in [1, 65536]",
        ),
    ];
    for (name, edit, want) in resumes {
        let d = case(name);
        edit_state(&d, edit);
        let e = run_fails(
            &train_args(&d, &["--resume", d.to_str().unwrap(), "--max-steps", "4"]),
            &[],
        );
        assert!(e.contains(want), "{name}: {e}");
    }

    // Malformed config files.
    let cfgs: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "syntax.toml",
            b"lr = \n".to_vec(),
            "malformed TOML at line 1",
        ),
        ("type.toml", b"lr = \"fast\"\n".to_vec(), "invalid config"),
        (
            "unknown.toml",
            b"[model]\nlayers = 3\n".to_vec(),
            "unknown field `model.layers`",
        ),
        ("binary.toml", vec![0xff, 0x00, 0x80], "UTF-8"),
        (
            "zero.toml",
            b"[model]\nn_head = 0\n".to_vec(),
            "model.n_head",
        ),
    ];
    for (name, bytes, want) in cfgs {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = run_fails(
            &train_args(
                &dir.path().join("cfg-run"),
                &["--config", p.to_str().unwrap()],
            ),
            &[],
        );
        assert!(e.contains(want), "{name}: {e}");
    }

    // A corpus that is not UTF-8 trains with the byte tokenizer (any bytes are text
    // to it), and the evaluation's bits per character stay finite.
    let corpus = dir.path().join("binary.txt");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let bytes: Vec<u8> = (0..20_000)
        .map(|i| if i % 300 < 2 { b'\n' } else { rng.gen() })
        .collect();
    std::fs::write(&corpus, bytes).unwrap();
    let args = train_args(
        &dir.path().join("bin-run"),
        &["--max-steps", "2", "--data", corpus.to_str().unwrap()],
    );
    let out = run_ok(&args, &[]);
    assert!(
        out.contains("done after 2 steps") && !out.contains("NaN"),
        "{out}"
    );
}

// ---- Property tests: the loaders, fuzzed in the normal test run. ----

/// A valid state.json and model file to mutate (built once, in-process).
fn seeds() -> &'static (Vec<u8>, Vec<u8>) {
    static SEEDS: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = good_checkpoint(dir.path());
        (
            std::fs::read(d.join("state.json")).unwrap(),
            std::fs::read(d.join("model.safetensors")).unwrap(),
        )
    })
}

/// Mutations of a valid file: bit flips, overwritten bytes, a cut, an insertion.
fn mutate(seed: &[u8], edits: &[(usize, u8, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(at, kind, val) in edits {
        if b.is_empty() {
            break;
        }
        let i = at % b.len();
        match kind % 4 {
            0 => b[i] ^= 1 << (val % 8),
            1 => b[i] = val,
            2 => b.insert(i, val),
            _ => {
                b.remove(i);
            }
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (seed.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn state_loader_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
        raw in proptest::collection::vec(any::<u8>(), 0..64),
        use_raw in any::<bool>(),
    ) {
        let bytes = if use_raw { raw } else { mutate(&seeds().0, &edits, cut) };
        if let Ok((state, _)) = checkpoint::parse_state(&bytes) {
            // What the binary does next with a state it accepted.
            if state.config.validate().is_ok() {
                for step in [StepKind::Native, StepKind::Graph] {
                    let _ = tinylm::train::memory::check(&state.config, 1000, step, Some(16e9));
                }
            }
        }
    }

    #[test]
    fn tensor_loader_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
        header_edits in proptest::collection::vec((0usize..600, any::<u8>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let model = &seeds().1;
        // Most mutations target the JSON header, where the parser's decisions are.
        let mut b = mutate(model, &header_edits, None);
        b = mutate(&b, &edits, cut);
        let _ = checkpoint::parse_tensors(&b, &candle_core::Device::Cpu);
    }

    #[test]
    fn config_loader_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let base = tinylm::train::config::TrainConfig::preset("tiny").unwrap();
        let seed = toml::to_string_pretty(&base).unwrap();
        let bytes = mutate(seed.as_bytes(), &edits, cut);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(c) = tinylm::train::config_file::config_from_toml(&base, text) {
                if c.validate().is_ok() {
                    for step in [StepKind::Native, StepKind::Graph] {
                        let _ = tinylm::train::memory::check(&c, 1000, step, Some(16e9));
                    }
                }
            }
        }
    }

    /// Text with valid characters of every length mixed with stray and cut bytes, fed
    /// in random pieces: the stream decoder prints what a one-shot lossy decode would.
    #[test]
    fn utf8_stream_decoder_matches_lossy_decoding(
        parts in proptest::collection::vec(
            prop_oneof![any::<char>().prop_map(|c| c.to_string().into_bytes()),
                        proptest::collection::vec(any::<u8>(), 0..4)], 0..120),
        cuts in proptest::collection::vec(0usize..7, 0..80),
    ) {
        let bytes: Vec<u8> = parts.concat();
        let mut dec = tinylm::tokenizer::utf8::StreamDecoder::new();
        let (mut out, mut start) = (String::new(), 0);
        for c in cuts {
            let end = (start + c).min(bytes.len());
            out.push_str(&dec.push(&bytes[start..end]));
            start = end;
        }
        out.push_str(&dec.push(&bytes[start..]));
        out.push_str(&dec.finish());
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
    }
}
