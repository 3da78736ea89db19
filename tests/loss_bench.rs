//! Smoke test of `tinylm bench loss`: the quick cases run and give sane records (no
//! timing assertions: the machine is shared).

use tinylm::bench::{loss, BenchArgs};

#[test]
fn quick_bench_records_are_sane() {
    let args = BenchArgs {
        json: true,
        filter: Some("512x256".into()),
        quick: true,
        dtype: Default::default(),
    };
    let recs = loss::collect(&args).unwrap();
    let names: Vec<_> = recs
        .iter()
        .map(|r| format!("{}/{}", r.case, r.imp))
        .collect();
    println!("{names:?}");
    for want in [
        "ce_fwd_512x256/fused",
        "ce_fwd_512x256/reference",
        "ce_fwdbwd_512x256/fused",
        "ce_fwdbwd_512x256/fused_reuse",
        "ce_fwdbwd_512x256/fused_autograd",
        "ce_fwdbwd_512x256/reference",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want}");
    }
    for r in &recs {
        assert!(
            r.median_ms > 0.0
                && r.median_ms.is_finite()
                && r.tokens_per_s > 0.0
                && r.gb_per_s > 0.0
        );
    }
    let json = serde_json::to_value(&recs).unwrap();
    for k in [
        "case",
        "impl",
        "median_ms",
        "tokens_per_s",
        "gb_per_s",
        "peak_extra_bytes",
    ] {
        assert!(json[0].get(k).is_some(), "record lacks {k}");
    }
    println!("quick bench -> PASS");
}

/// The 16-bit cases time the kernel on bf16/f16 logits next to the f32 kernel on the
/// same shape, and give the f32 twin's median over theirs.
#[test]
fn quick_half_cases_carry_their_f32_twin_and_ratio() {
    let args = BenchArgs {
        json: true,
        filter: Some("16_64x8192".into()),
        quick: true,
        dtype: Default::default(),
    };
    let recs = loss::collect(&args).unwrap();
    for dt in ["bf16", "f16"] {
        let case = format!("ce_fwdbwd_{dt}_64x8192");
        for imp in ["fused", "fused_reuse", "f32_fused", "f32_fused_reuse"] {
            let r = recs
                .iter()
                .find(|r| r.case == case && r.imp == imp)
                .unwrap_or_else(|| panic!("missing {case}/{imp}"));
            let ratio = r.speedup_vs_f32;
            if imp.starts_with("f32_") {
                assert!(ratio.is_none(), "{case}/{imp} is the f32 twin");
            } else {
                let want = recs
                    .iter()
                    .find(|f| f.case == case && f.imp == format!("f32_{imp}"))
                    .unwrap()
                    .median_ms
                    / r.median_ms;
                assert_eq!(ratio, Some(want), "{case}/{imp}");
            }
            // The 16-bit floor: 4 bytes per element.
            let gb = 4.0 * 64.0 * 8192.0 / (r.median_ms / 1e3) / 1e9;
            assert!((r.gb_per_s - gb).abs() <= 1e-9 * gb, "{case}/{imp}");
        }
    }
    println!("quick 16-bit bench cases -> PASS");
}
