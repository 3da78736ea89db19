//! In-place AdamW (src/train/optimizer.rs) against a hand-written f64 AdamW and against
//! candle-nn's AdamW, and the bit-exactness of a save/restore of its state.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinylm::train::config::UpdateRule as Rule;
use tinylm::train::optimizer::{AdamWConfig, Optimizer, ParamGroup};

fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn var(rng: &mut ChaCha8Rng, shape: &[usize]) -> Var {
    let n = shape.iter().product();
    Var::from_slice(&uniform(rng, n), shape, &Device::Cpu).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

/// A GradStore holding `grads[i]` for `vars[i]` (GradStore has no public
/// constructor, so take one from a backward and overwrite its entries).
fn grad_store(vars: &[&Var], grads: &[Vec<f32>]) -> GradStore {
    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
    for v in vars {
        loss = (loss + (v.as_tensor() * 0.0).unwrap().sum_all().unwrap()).unwrap();
    }
    let mut store = loss.backward().unwrap();
    for (v, g) in vars.iter().zip(grads) {
        store.insert(
            v.as_tensor(),
            Tensor::from_slice(g, v.shape(), &Device::Cpu).unwrap(),
        );
    }
    store
}

/// PyTorch's AdamW step in f64 (torch/optim/adamw.py, single-tensor path):
///   p.mul_(1 - lr*wd); m.lerp_(g, 1-b1); v.mul_(b2).addcmul_(g, g, value=1-b2)
///   denom = (v.sqrt() / sqrt(1 - b2**t)).add_(eps); p.addcdiv_(m, denom, value=-lr/(1 - b1**t))
struct Ref64 {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    wd: f64,
}

impl Ref64 {
    fn step(&mut self, g: &[f32], c: AdamWConfig, t: i32) {
        for i in 0..self.p.len() {
            let g = g[i] as f64;
            self.p[i] *= 1.0 - c.lr * self.wd;
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
            let denom = self.v[i].sqrt() / (1.0 - c.beta2.powi(t)).sqrt() + c.eps;
            self.p[i] -= c.lr / (1.0 - c.beta1.powi(t)) * self.m[i] / denom;
        }
    }
}

/// Two groups (decayed matrix, undecayed bias of odd length), lr changing every
/// step, 6 steps: the error against the f64 reference is no worse than 2x that of
/// candle-nn's f32 AdamW (one candle-nn optimizer per group) on the same run.
#[test]
fn adamw_matches_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let w = var(&mut rng, &[40, 1030]); // > one 16K chunk: exercises the parallel split
    let b = var(&mut rng, &[37]);
    let cfg = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
    };
    let mut opt = Optimizer::new(
        vec![
            ParamGroup {
                vars: vec![w.clone()],
                weight_decay: 0.1,
                rule: Rule::AdamW,
            },
            ParamGroup {
                vars: vec![b.clone()],
                weight_decay: 0.0,
                rule: Rule::AdamW,
            },
        ],
        cfg,
    )
    .unwrap();
    let mut refs: Vec<Ref64> = [(&w, 0.1), (&b, 0.0)]
        .iter()
        .map(|(v, wd)| {
            let p: Vec<f64> = values(v).iter().map(|&x| x as f64).collect();
            let n = p.len();
            Ref64 {
                p,
                m: vec![0.0; n],
                v: vec![0.0; n],
                wd: *wd,
            }
        })
        .collect();
    let copy = |v: &Var| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap();
    let (w_nn, b_nn) = (copy(&w), copy(&b));
    let nn_opt = |v: &Var, weight_decay| {
        let p = candle_nn::ParamsAdamW {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay,
        };
        candle_nn::AdamW::new(vec![v.clone()], p).unwrap()
    };
    let mut nn = [nn_opt(&w_nn, 0.1), nn_opt(&b_nn, 0.0)];
    for t in 1..=6 {
        let lr = 1e-2 * (1.0 - 0.1 * t as f64);
        opt.set_lr(lr);
        nn.iter_mut().for_each(|o| o.set_learning_rate(lr));
        let grads: Vec<Vec<f32>> = [&w, &b]
            .iter()
            .map(|v| {
                uniform(&mut rng, v.elem_count())
                    .iter()
                    .map(|g| g * 0.1)
                    .collect()
            })
            .collect();
        opt.step(&grad_store(&[&w, &b], &grads)).unwrap();
        nn[0].step(&grad_store(&[&w_nn], &grads[..1])).unwrap();
        nn[1].step(&grad_store(&[&b_nn], &grads[1..])).unwrap();
        for (r, g) in refs.iter_mut().zip(&grads) {
            r.step(g, AdamWConfig { lr, ..cfg }, t);
        }
    }
    let err = |v: &Var, r: &Ref64| {
        values(v)
            .iter()
            .zip(&r.p)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max)
    };
    for (name, v, v_nn, r) in [("w", &w, &w_nn, &refs[0]), ("b", &b, &b_nn, &refs[1])] {
        let (ours, theirs) = (err(v, r), err(v_nn, r));
        // The floor: one f32 ulp of |p| <= ~1.2 is 1.2e-7.
        let ok = ours <= 2.0 * theirs.max(1.2e-7);
        println!(
            "adamw {name}: max |p - p_f64| after 6 steps: ours {ours:.2e}, candle-nn {theirs:.2e} -> {}",
            if ok { "PASS" } else { "FAIL" }
        );
        assert!(ok);
    }
    assert_eq!(opt.step_count(), 6);
}

/// Same trajectory as candle-nn's AdamW (single group, its own f32 tensor ops).
#[test]
fn adamw_matches_candle_nn() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let ours = var(&mut rng, &[17, 33]);
    let theirs = Var::from_tensor(&ours.as_tensor().copy().unwrap()).unwrap();
    let params = candle_nn::ParamsAdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut nn = candle_nn::AdamW::new(vec![theirs.clone()], params.clone()).unwrap();
    let cfg = AdamWConfig {
        lr: params.lr,
        beta1: params.beta1,
        beta2: params.beta2,
        eps: params.eps,
    };
    let mut opt = Optimizer::new(
        vec![ParamGroup {
            vars: vec![ours.clone()],
            weight_decay: 0.05,
            rule: Rule::AdamW,
        }],
        cfg,
    )
    .unwrap();
    for _ in 0..5 {
        let g = uniform(&mut rng, ours.elem_count());
        opt.step(&grad_store(&[&ours], std::slice::from_ref(&g)))
            .unwrap();
        nn.step(&grad_store(&[&theirs], &[g])).unwrap();
    }
    let err = values(&ours)
        .iter()
        .zip(values(&theirs))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("adamw vs candle-nn AdamW after 5 steps: max diff {err:.2e}");
    assert!(err < 1e-6);
}

/// Saving (moments, t) and restoring them into a fresh optimizer over copies of the
/// parameters continues bit-for-bit; a parameter without a gradient is untouched.
#[test]
fn adamw_state_round_trip_is_bit_exact() {
    state_round_trip_is_bit_exact(Rule::AdamW);
}

/// The same with the matrix under Muon (a momentum buffer and no second moment).
#[test]
fn muon_state_round_trip_is_bit_exact() {
    state_round_trip_is_bit_exact(Rule::Muon);
}

fn state_round_trip_is_bit_exact(matrix_rule: Rule) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let a = var(&mut rng, &[20, 30]);
    let b = var(&mut rng, &[7]);
    let frozen = var(&mut rng, &[5]);
    let groups = |a: &Var, b: &Var, f: &Var| {
        vec![
            ParamGroup {
                vars: vec![a.clone()],
                weight_decay: 0.1,
                rule: matrix_rule,
            },
            ParamGroup {
                vars: vec![b.clone(), f.clone()],
                weight_decay: 0.0,
                rule: Rule::AdamW,
            },
        ]
    };
    let cfg = AdamWConfig {
        lr: 1e-2,
        ..AdamWConfig::default()
    };
    let mut opt = Optimizer::new(groups(&a, &b, &frozen), cfg).unwrap();
    let frozen_before = values(&frozen);
    let grads = |rng: &mut ChaCha8Rng| vec![uniform(rng, 600), uniform(rng, 7)];
    for _ in 0..3 {
        let g = grads(&mut rng);
        opt.step(&grad_store(&[&a, &b], &g)).unwrap();
    }
    let (t, moments) = (opt.step_count(), opt.moments().unwrap());
    let copy = |v: &Var| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap();
    let (a2, b2, f2) = (copy(&a), copy(&b), copy(&frozen));
    let mut resumed = Optimizer::new(groups(&a2, &b2, &f2), cfg).unwrap();
    resumed.set_state(t, &moments).unwrap();
    for _ in 0..2 {
        let g = grads(&mut rng);
        opt.step(&grad_store(&[&a, &b], &g)).unwrap();
        resumed.step(&grad_store(&[&a2, &b2], &g)).unwrap();
    }
    let bits = |v: &Var| values(v).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let same = bits(&a) == bits(&a2) && bits(&b) == bits(&b2);
    let m_same = opt
        .moments()
        .unwrap()
        .iter()
        .zip(resumed.moments().unwrap())
        .all(|((m1, v1), (m2, v2))| {
            let f = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            f(m1) == f(&m2) && v1.as_ref().map(f) == v2.as_ref().map(f)
        });
    println!(
        "resumed run bit-identical: params {same}, moments {m_same}; frozen untouched: {}",
        values(&frozen) == frozen_before
    );
    assert!(same && m_same);
    assert_eq!(values(&frozen), frozen_before);
    assert_eq!(resumed.step_count(), 5);
}

/// One step over a Muon matrix, a Muon matrix without a gradient and an AdamW vector,
/// at clipping factor 0.5: the matrix moves exactly as `muon::direction` and
/// `muon::apply` say (its own decay, the clipped gradient, the scaled rate), the
/// matrix without a gradient and its momentum stay as they were.
#[test]
fn muon_step_is_direction_then_apply() {
    use tinylm::train::muon;
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (a, idle, b) = (
        var(&mut rng, &[6, 10]),
        var(&mut rng, &[4, 4]),
        var(&mut rng, &[9]),
    );
    let (a0, idle0) = (values(&a), values(&idle));
    let cfg = AdamWConfig {
        lr: 2e-2,
        ..AdamWConfig::default()
    };
    let mut opt = Optimizer::new(
        vec![
            ParamGroup {
                vars: vec![a.clone(), idle.clone()],
                weight_decay: 0.1,
                rule: Rule::Muon,
            },
            ParamGroup {
                vars: vec![b.clone()],
                weight_decay: 0.0,
                rule: Rule::AdamW,
            },
        ],
        cfg,
    )
    .unwrap();
    let ga = uniform(&mut rng, 60);
    let gb = uniform(&mut rng, 9);
    let grads = vec![
        Some(Tensor::from_slice(&ga, (6, 10), &Device::Cpu).unwrap()),
        None,
        Some(Tensor::from_slice(&gb, 9, &Device::Cpu).unwrap()),
    ];
    opt.step_scaled(&grads, 0.5).unwrap();

    let mut m = vec![0f32; 60];
    let o = muon::direction(&ga, &mut m, (6, 10), 0.5);
    let mut want = a0.clone();
    let step = (2e-2 * muon::update_scale(6, 10)) as f32;
    muon::apply(&mut want, &o, (1.0 - 2e-2 * 0.1) as f32, step);
    assert_eq!(values(&a), want, "the Muon matrix");
    assert_ne!(values(&a), a0);
    assert_eq!(
        values(&idle),
        idle0,
        "a matrix without gradient is untouched"
    );
    let moments = opt.moments().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&moments[0].0), m, "the momentum buffer");
    assert!(moments[0].1.is_none() && moments[1].1.is_none() && moments[2].1.is_some());
    assert!(flat(&moments[1].0).iter().all(|&x| x == 0.0));
}

/// Muon takes matrices only; a state whose second moments do not match the rules is
/// refused, in both directions.
#[test]
fn muon_refuses_vectors_and_mismatched_state() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let v = var(&mut rng, &[7]);
    let group = |rule| ParamGroup {
        vars: vec![v.clone()],
        weight_decay: 0.0,
        rule,
    };
    let e = Optimizer::new(vec![group(Rule::Muon)], AdamWConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("matrices"), "{e}");

    let w = var(&mut rng, &[3, 5]);
    let make = |rule| {
        Optimizer::new(
            vec![ParamGroup {
                vars: vec![w.clone()],
                weight_decay: 0.0,
                rule,
            }],
            AdamWConfig::default(),
        )
        .unwrap()
    };
    let (adam, mut muon) = (make(Rule::AdamW), make(Rule::Muon));
    let e = muon.set_state(1, &adam.moments().unwrap()).unwrap_err();
    assert!(e.to_string().contains("given"), "{e}");
    let mut adam = adam;
    let e = adam.set_state(1, &muon.moments().unwrap()).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}
