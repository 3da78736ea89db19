//! Smoke test of `tinylm bench loss`: the quick cases run and give sane records (no
//! timing assertions: the machine is shared).

use tinylm::bench::{loss, BenchArgs};

#[test]
fn quick_bench_records_are_sane() {
    let args = BenchArgs {
        json: true,
        filter: Some("512x256".into()),
        quick: true,
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
