//! The MFU `tinylm train` prints, on every preset: its numerator claims exactly the
//! matrix FLOPs the step's products execute (counted at the gemm), and a real step's
//! model FLOP rate, attention term included, stays under the measured ceiling (with a
//! margin for timing noise: a step cannot outrun its own products by half). The
//! `Ceiling`'s policy, which keeps the printed MFU at most 100%, is unit-tested in
//! `device`.
//!
//! One test function on purpose: the gemm FLOP counter is process-wide, and tests of one
//! binary run in parallel threads.

use candle_core::Device;
use tinylm::bench::train::{preset_as_trained, synthetic_tokens};
use tinylm::device::Ceiling;
use tinylm::loss::CrossEntropyOptions;
use tinylm::model::native::{gemm_flops_done, loss_and_grad_into, zero_grads};
use tinylm::train::config::{UpdateRule, PRESETS};
use tinylm::train::Trainer;

#[test]
fn mfu_counts_what_the_products_execute_and_stays_under_the_ceiling_on_every_preset() {
    tinylm::device::set_threads(2).unwrap();
    let dev = Device::Cpu;
    for &preset in PRESETS {
        let mut config = preset_as_trained(preset).unwrap();
        // The preset's model at two windows of at most 128 positions: every product
        // scales with B·T (so a count that did not would show), and the 92M-parameter
        // bench-gpt2s costs the suite a few seconds.
        config.model.block_size = config.model.block_size.min(128);
        config.batch_size = 2;
        config.grad_accum = 1;
        let (b, t) = (2, config.model.block_size);
        let ids = synthetic_tokens(config.model.vocab_size).unwrap();
        let mut trainer = Trainer::new(&config, &dev).unwrap();

        // The numerator: a forward + backward runs exactly 6 FLOPs per matmul weight
        // and token in its gemm calls (attention runs in its own kernel). Under AdamW
        // that is all of a step's products, checked on the step itself below; Muon's
        // Newton–Schulz adds its own, so there the forward + backward is counted alone.
        let claimed = config.model.matmul_flops_per_token() * (b * t) as f64;
        if config.optimizer == UpdateRule::Muon {
            let mut grads = zero_grads(&trainer.model);
            let before = gemm_flops_done();
            let opts = CrossEntropyOptions::default();
            let (x, y) = (&ids[..b * t], &ids[1..=b * t]);
            loss_and_grad_into(&trainer.model, x, y, (b, t), &opts, &mut grads).unwrap();
            let counted = (gemm_flops_done() - before) as f64;
            assert_eq!(counted, claimed, "{preset}: forward + backward products");
        }

        // A whole step (the optimizer included), timed and turned into MFU by the
        // training loop's `Ceiling` (the first step, as the log's first line).
        let mut ceiling = Ceiling::measure(&dev, &config.model, b * t, trainer.products()).unwrap();
        let before = gemm_flops_done();
        let start = std::time::Instant::now();
        trainer.step(&ids, config.lr).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let step_flops = (gemm_flops_done() - before) as f64;
        println!(
            "{preset}: {:.3} GFLOP in the step's gemm calls, {:.3} GFLOP claimed for the \
             products, {:.1} MFLOP a token with attention",
            step_flops / 1e9,
            claimed / 1e9,
            config.model.flops_per_token() / 1e6
        );
        match config.optimizer {
            UpdateRule::AdamW => assert_eq!(step_flops, claimed, "{preset}: a step's products"),
            UpdateRule::Muon => assert!(step_flops > claimed, "{preset}: Muon's products run"),
        }
        let tokens_per_s = (b * t) as f64 / secs;
        let measured = ceiling.measured();
        let achieved = tokens_per_s * config.model.flops_per_token();
        let mfu = ceiling.mfu(tokens_per_s);
        println!(
            "{preset}: step {:.0} ms, {tokens_per_s:.0} tokens/s, {:.1} GFLOP/s of model \
             FLOPs against a measured {:.0}, MFU {:.1}%",
            secs * 1e3,
            achieved / 1e9,
            measured / 1e9,
            100.0 * mfu
        );
        assert!(
            achieved <= 1.5 * measured,
            "{preset}: the step beat its products"
        );
        assert!(mfu > 0.0 && mfu <= 1.0, "{preset}: MFU {mfu}");
    }
}
