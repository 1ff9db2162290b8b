//! Unit tests: the CPU kernels against the plain candle path (the reference): element-wise math, matrix products, the
//! mask decoder and the image encoder on random weights and inputs with small dimensions.

use crate::kernels::{self, math, Mat, MatMut, Par};
use crate::{DecoderCache, Prompts, Sam, SamConfig};
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

/// A tensor of uniform values in [−scale, scale].
fn rand_tensor(rng: &mut StdRng, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(rng, n, scale), shape, &Device::Cpu).unwrap()
}

/// Every element moved by ±2 ulp (random signs): how much the reference moves under such a change bounds
/// what rounding differences can do.
fn perturb(t: &Tensor, rng: &mut StdRng) -> Tensor {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let v: Vec<f32> = v
        .iter()
        .map(|x| x * (1.0 + if rng.gen::<bool>() { 2.4e-7 } else { -2.4e-7 }))
        .collect();
    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
    let d = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d.is_finite(), "non-finite values");
    d / m
}

#[test]
fn exp_matches_f64() {
    let mut worst = 0f64;
    let mut xs: Vec<f32> = (0..200_001).map(|i| -87.0 + i as f32 * 0.000_87).collect();
    xs.extend((0..10_000).map(|i| -0.01 + i as f32 * 2e-6));
    let mut v = xs.clone();
    math::exp_inplace(&mut v);
    for (x, y) in xs.iter().zip(&v) {
        let want = (*x as f64).exp();
        worst = worst.max(((*y as f64) - want).abs() / want);
    }
    assert!(worst < 3e-7, "exp relative error {worst}");
    // Scalar version, and very negative inputs underflow to 0.
    for &x in &xs[..1000] {
        let want = (x as f64).exp();
        assert!(((math::exp_scalar(x) as f64) - want).abs() / want < 3e-7);
    }
    let mut v = vec![-200.0f32, -100.0, f32::NEG_INFINITY];
    math::exp_inplace(&mut v);
    assert!(v.iter().all(|&x| x == 0.0));
}

/// Every vector width of the width-generic kernels (the machine's widest and every narrower one) gives the bits of
/// the 8-lane build, sums included: exp, exp with a running sum, GELU.
#[test]
fn exp_and_gelu_kernels_agree_across_vector_widths() {
    use crate::kernels::cpu::{isa, Isa};
    use crate::kernels::math::at_level;
    println!("widest vector level on this CPU: {:?}", isa());
    let mut rng = StdRng::seed_from_u64(12);
    for n in [1usize, 7, 8, 15, 16, 17, 24, 31, 32, 33, 47, 200, 4099] {
        let xs = rand_vec(&mut rng, n, if n % 2 == 0 { 2.0 } else { 30.0 });
        let m = xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let (mut a, mut b) = (xs.clone(), xs.clone());
        let sa = math::exp_sub_sum(&mut a, m);
        let sb = at_level::exp_sub_sum(Isa::Avx2, &mut b, m);
        assert_eq!(sa.to_bits(), sb.to_bits(), "sum n={n}");
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "exp n={n}"
        );
        let mut c = xs.iter().map(|v| v - m).collect::<Vec<f32>>();
        math::exp_inplace(&mut c);
        assert!(
            c.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "exp_inplace n={n}"
        );
        for level in [Isa::Avx2, Isa::Avx512] {
            let mut e = xs.iter().map(|v| v - m).collect::<Vec<f32>>();
            at_level::exp_inplace(level, &mut e);
            assert!(
                e.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "exp_inplace {level:?} n={n}"
            );
        }
        let mut g = xs.clone();
        math::gelu_inplace(&mut g);
        let mut g8 = xs.clone();
        at_level::gelu_inplace(Isa::Avx2, &mut g8);
        assert!(
            g.iter().zip(&g8).all(|(x, y)| x.to_bits() == y.to_bits()),
            "gelu n={n}"
        );
        // The scalar build has the same formulas (without fused multiply-adds): close, not bit-identical.
        let mut gs = xs.clone();
        at_level::gelu_inplace(Isa::Scalar, &mut gs);
        for (x, y) in gs.iter().zip(&g) {
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                "scalar gelu {x} vs {y}"
            );
        }
    }
}

fn erf64(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.28-free: a series/continued fraction good to 1e-15 for our range.
    let t = x.abs();
    let r = if t < 3.0 {
        // Taylor series.
        let mut sum = t;
        let mut term = t;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -t * t / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Continued fraction for erfc.
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (t + f);
        }
        1.0 - (-t * t).exp() / std::f64::consts::PI.sqrt() / (t + f)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

#[test]
fn gelu_matches_exact_gelu() {
    let xs: Vec<f32> = (0..40_001).map(|i| -10.0 + i as f32 * 0.0005).collect();
    let mut v = xs.clone();
    math::gelu_inplace(&mut v);
    let mut b = xs.clone();
    math::bias_gelu_rows(&mut b[..40_000], &[0.0; 8]);
    for (i, (x, y)) in xs.iter().zip(&v).enumerate() {
        let x64 = *x as f64;
        let want = 0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
        // PyTorch's vectorised erf has |error| ≤ 1.5e-7.
        let tol = 4e-7 * x64.abs().max(1.0);
        assert!(
            ((*y as f64) - want).abs() <= tol,
            "gelu({x}) = {y}, want {want}"
        );
        assert!(((math::gelu_scalar(*x) as f64) - want).abs() <= tol);
        if i < 40_000 {
            assert_eq!(b[i], *y);
        }
    }
}

#[test]
fn softmax_and_layer_norm_match_f64() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in [1usize, 3, 7, 8, 9, 31, 196, 4096] {
        let x = rand_vec(&mut rng, n, 10.0);
        let mut y = x.clone();
        math::softmax_row(&mut y);
        let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        for (a, b) in x.iter().zip(&y) {
            let want = (*a as f64 - m).exp() / s;
            assert!(
                ((*b as f64) - want).abs() <= 1e-6 * want.max(1e-3),
                "softmax n={n}"
            );
        }
        let w = rand_vec(&mut rng, n, 1.0);
        let bias = rand_vec(&mut rng, n, 1.0);
        let mut out = vec![0f32; n];
        math::layer_norm_row(&x, &mut out, &w, &bias, 1e-6);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        for i in 0..n {
            let want = (x[i] as f64 - mean) / (var + 1e-6).sqrt() * w[i] as f64 + bias[i] as f64;
            assert!(((out[i] as f64) - want).abs() <= 2e-5, "layer norm n={n}");
        }
    }
}

/// The fused residual + LayerNorm + positional add over rows (8-row blocks and a remainder) against f64.
#[test]
fn residual_norm_rows_match_f64() {
    let mut rng = StdRng::seed_from_u64(11);
    for &(n, c) in &[(1usize, 256usize), (13, 256), (16, 24), (9, 7), (8, 8)] {
        let x = rand_vec(&mut rng, n * c, 3.0);
        let y0 = rand_vec(&mut rng, n * c, 2.0);
        let pe = rand_vec(&mut rng, n * c, 1.0);
        let bias = rand_vec(&mut rng, c, 1.0);
        // An offset mean, so that the centring matters.
        let bias: Vec<f32> = bias.iter().map(|b| b + 5.0).collect();
        let w = rand_vec(&mut rng, c, 1.0);
        let b = rand_vec(&mut rng, c, 1.0);
        let mut y = y0.clone();
        let (mut out, mut xpe) = (vec![f32::NAN; n * c], vec![f32::NAN; n * c]);
        let mut stats = vec![(f32::NAN, f32::NAN); n];
        math::residual_norm_rows(
            &mut y, &x, &bias, &w, &b, 1e-6, &mut out, &pe, &mut xpe, &mut stats,
        );
        for i in 0..n {
            let r: Vec<f64> = (0..c)
                .map(|j| x[i * c + j] as f64 + (y0[i * c + j] as f64 + bias[j] as f64))
                .collect();
            let mean = r.iter().sum::<f64>() / c as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + 1e-6).sqrt();
            assert!(
                (stats[i].0 as f64 - mean).abs() <= 1e-5 * (1.0 + mean.abs()),
                "mean n={n} c={c}"
            );
            assert!(
                (stats[i].1 as f64 - rstd).abs() <= 1e-5 * rstd,
                "rstd n={n} c={c}"
            );
            for j in 0..c {
                assert!(
                    (y[i * c + j] as f64 - r[j]).abs() <= 1e-5 * (1.0 + r[j].abs()),
                    "residual"
                );
                let want = (r[j] - mean) * rstd * w[j] as f64 + b[j] as f64;
                assert!(
                    (out[i * c + j] as f64 - want).abs() <= 2e-5,
                    "norm n={n} c={c}"
                );
                let want_pe = want + pe[i * c + j] as f64;
                assert!(
                    (xpe[i * c + j] as f64 - want_pe).abs() <= 3e-5,
                    "xpe n={n} c={c}"
                );
            }
        }
    }
}

#[test]
fn gemm_matches_naive_with_strides() {
    let mut rng = StdRng::seed_from_u64(2);
    for &(m, n, k) in &[
        (1, 1, 1),
        (7, 56, 256),
        (33, 17, 5),
        (130, 70, 64),
        (4, 3, 0),
    ] {
        let a = rand_vec(&mut rng, m * k * 2, 1.0);
        let b = rand_vec(&mut rng, k * n * 3, 1.0);
        for accumulate in [false, true] {
            for par in [Par::Seq, Par::Auto] {
                // a with row stride 2k; b transposed view with column stride 3k... (b stored n × 3k).
                let c0 = rand_vec(&mut rng, m * (n + 1), 1.0);
                let mut c = c0.clone();
                kernels::gemm(
                    m,
                    n,
                    k,
                    MatMut::rows(&mut c, n + 1),
                    Mat::rows(&a, 2 * k),
                    Mat::rows(&b, 3 * k).t(),
                    accumulate,
                    par,
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut s = if accumulate {
                            c0[i * (n + 1) + j] as f64
                        } else {
                            0.0
                        };
                        for l in 0..k {
                            s += a[i * 2 * k + l] as f64 * b[j * 3 * k + l] as f64;
                        }
                        let got = c[i * (n + 1) + j] as f64;
                        assert!(
                            (got - s).abs() <= 1e-4 * (1.0 + s.abs()),
                            "gemm {m}×{n}×{k}"
                        );
                    }
                    // The padding column is untouched.
                    assert_eq!(c[i * (n + 1) + n], c0[i * (n + 1) + n]);
                }
            }
        }
    }
}

/// A small model: tiny encoder, decoder with `dim`/`heads` (vit dims: 256/8), grid `input/16`.
fn small_config(dim: usize, heads: usize, input: usize) -> SamConfig {
    let mut cfg = SamConfig::vit_b();
    cfg.name = "test".into();
    cfg.url = None;
    cfg.sha256 = None;
    cfg.file_size = None;
    cfg.input_size = [input, input];
    cfg.embed_dim = dim;
    cfg.encoder_embed_dim = 64;
    cfg.encoder_nb_blocks = 2;
    cfg.encoder_nb_heads = 4;
    cfg.encoder_global_attn_indices = vec![1];
    cfg.encoder_window_size = 6;
    cfg.prompt_mask_hidden_dim = 16;
    cfg.decoder_nb_heads = heads;
    cfg.decoder_mlp_channels = 4 * dim;
    cfg.decoder_iou_hidden_dim = dim;
    cfg
}

fn points(b: usize, n: usize, input: usize, rng: &mut StdRng) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let p: Vec<f32> = (0..b * n * 2)
        .map(|_| rng.gen_range(0.0..input as f32))
        .collect();
    let l: Vec<f32> = (0..b * n)
        .map(|i| [1.0f32, 0.0, 1.0, -1.0][i % 4])
        .collect();
    (
        Tensor::from_vec(p, (b, n, 2), &dev).unwrap(),
        Tensor::from_vec(l, (b, n), &dev).unwrap(),
    )
}

fn check_decoder(cfg: &SamConfig, seed: u64) {
    let dev = Device::Cpu;
    let sam = Sam::random(cfg, seed, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let [gh, gw] = sam.grid_size();
    let [mh, mw] = sam.mask_size();
    let input = cfg.input_size[0];
    let d = cfg.embed_dim;
    // Random weights with N(0, 1) embeddings give a chaotic model (a relative input perturbation of 1e-7
    // moves the logits by ~1e-3); embeddings of scale 0.1 keep it well-conditioned (~3e-6).
    let emb1 = rand_tensor(&mut rng, &[1, d, gh, gw], 0.2);
    let emb3 = rand_tensor(&mut rng, &[3, d, gh, gw], 0.2);
    let (p1, l1) = points(1, 1, input, &mut rng);
    let (p3, l3) = points(3, 2, input, &mut rng);
    let boxes3 = Tensor::from_vec(
        (0..3 * 4)
            .map(|_| rng.gen_range(0.0..input as f32))
            .collect::<Vec<f32>>(),
        (3, 1, 4),
        &dev,
    )
    .unwrap();
    let masks2 = rand_tensor(&mut rng, &[2, 1, mh, mw], 2.0);
    let (p2, l2) = points(2, 3, input, &mut rng);
    let cases: Vec<(&str, &Tensor, Prompts)> = vec![
        (
            "one point",
            &emb1,
            Prompts {
                points: Some(p1.clone()),
                labels: Some(l1.clone()),
                ..Default::default()
            },
        ),
        ("no prompt", &emb1, Prompts::default()),
        (
            "3 sets of 2 points",
            &emb1,
            Prompts {
                points: Some(p3.clone()),
                labels: Some(l3.clone()),
                ..Default::default()
            },
        ),
        (
            "3 sets, points + box, own embeddings",
            &emb3,
            Prompts {
                points: Some(p3.clone()),
                labels: Some(l3.clone()),
                boxes: Some(boxes3.clone()),
                masks: None,
            },
        ),
        (
            "boxes",
            &emb1,
            Prompts {
                boxes: Some(boxes3.clone()),
                ..Default::default()
            },
        ),
        (
            "2 sets with mask prompts",
            &emb1,
            Prompts {
                points: Some(p2.clone()),
                labels: Some(l2.clone()),
                masks: Some(masks2.clone()),
                boxes: None,
            },
        ),
    ];
    for (name, emb, prompts) in cases {
        let (sparse, dense) = sam
            .prompt_encoder()
            .forward(&prompts, (input, input), (gh, gw), &dev)
            .unwrap();
        let pe = sam.prompt_encoder().dense_pe(gh, gw, &dev).unwrap();
        let dec = sam.mask_decoder();
        let dense_c = dense.contiguous().unwrap();
        // Kernel outputs, reference outputs, and the reference with its inputs moved by ~2 ulp: random models
        // can amplify rounding differences, and the kernels round differently (summation order), so the
        // tolerance is the larger of 1e-5 and 4× the reference's own sensitivity.
        type Run<'a> = Box<dyn Fn(&Tensor, &Tensor, bool) -> (Tensor, Tensor) + 'a>;
        let variants: Vec<(String, Run, Run)> = vec![
            (
                "multimask".into(),
                Box::new(|e, dn, fast| {
                    if fast {
                        dec.forward(e, &pe, &sparse, dn, true, None).unwrap()
                    } else {
                        dec.forward_generic(e, &pe, &sparse, dn, true).unwrap()
                    }
                }),
                Box::new(|_, _, _| unreachable!()),
            ),
            (
                "single mask".into(),
                Box::new(|e, dn, fast| {
                    if fast {
                        dec.forward(e, &pe, &sparse, dn, false, None).unwrap()
                    } else {
                        dec.forward_generic(e, &pe, &sparse, dn, false).unwrap()
                    }
                }),
                Box::new(|_, _, _| unreachable!()),
            ),
            (
                "all tokens".into(),
                Box::new(|e, dn, fast| {
                    if fast {
                        dec.predict_masks(e, &pe, &sparse, dn).unwrap()
                    } else {
                        dec.predict_masks_generic(e, &pe, &sparse, dn).unwrap()
                    }
                }),
                Box::new(|_, _, _| unreachable!()),
            ),
        ];
        for (what, run, _) in &variants {
            let (m, i) = run(emb, &dense, true);
            let (mr, ir) = run(emb, &dense_c, false);
            let (mut sm, mut si) = (0f32, 0f32);
            for k in 0..3u64 {
                let mut prng = StdRng::seed_from_u64(100 + k);
                let (mp, ip) = run(
                    &perturb(emb, &mut prng),
                    &perturb(&dense_c, &mut prng),
                    false,
                );
                sm = sm.max(rel_err(&mp, &mr));
                si = si.max(rel_err(&ip, &ir));
            }
            let em = rel_err(&m, &mr);
            let ei = rel_err(&i, &ir);
            println!(
                "decoder {name} ({what}): masks {em:.2e}, iou {ei:.2e} \
                 (reference under 2-ulp input changes: {sm:.2e}, {si:.2e})"
            );
            assert!(
                em <= 1e-5f32.max(4.0 * sm),
                "{name} ({what}): masks relative error {em}"
            );
            assert!(
                ei <= 1e-5f32.max(4.0 * si),
                "{name} ({what}): iou relative error {ei}"
            );
        }
    }
    // Through the model, as the predictor calls it.
    let prompts = Prompts {
        points: Some(p1),
        labels: Some(l1),
        ..Default::default()
    };
    let (m, _) = sam.decode(&emb1, &prompts, true, None).unwrap();
    assert_eq!(m.dims(), [1, cfg.nb_multimask_outputs, mh, mw]);
    assert_eq!(m.dtype(), DType::F32);
}

/// The first layer's image side, prepared once per embedding ([`Sam::prepare_decoder`]) and passed to decodes by
/// its owner: it changes no output, is never applied to another embedding, is empty for variables, and prompts
/// with a mask do not use it. The model itself keeps nothing per embedding.
#[test]
fn decoder_layer0_cache_matches_generic_path() {
    let cfg = small_config(256, 8, 320);
    let dev = Device::Cpu;
    let sam = Sam::random(&cfg, 11, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let [gh, gw] = sam.grid_size();
    let input = cfg.input_size[0];
    let d = cfg.embed_dim;
    let dec = sam.mask_decoder();
    let pe = sam.prompt_encoder().dense_pe(gh, gw, &dev).unwrap();
    let check = |emb: &Tensor, prompts: &Prompts, cache: Option<&DecoderCache>, what: &str| {
        let (sparse, dense) = sam
            .prompt_encoder()
            .forward(prompts, (input, input), (gh, gw), &dev)
            .unwrap();
        let (m, i) = sam.decode(emb, prompts, true, cache).unwrap();
        let (mr, ir) = dec
            .forward_generic(emb, &pe, &sparse, &dense.contiguous().unwrap(), true)
            .unwrap();
        let (em, ei) = (rel_err(&m, &mr), rel_err(&i, &ir));
        println!("layer-0 cache, {what}: masks {em:.2e}, iou {ei:.2e}");
        assert!(em <= 2e-5 && ei <= 2e-5, "{what}: masks {em}, iou {ei}");
        (m, i)
    };
    let emb_a = rand_tensor(&mut rng, &[1, d, gh, gw], 0.2);
    let emb_b = rand_tensor(&mut rng, &[1, d, gh, gw], 0.2);
    let (p1, l1) = points(1, 2, input, &mut rng);
    let (p4, l4) = points(4, 1, input, &mut rng);
    let one = Prompts {
        points: Some(p1),
        labels: Some(l1),
        ..Default::default()
    };
    let four = Prompts {
        points: Some(p4),
        labels: Some(l4),
        ..Default::default()
    };
    check(&emb_a, &one, None, "no cache");
    let cache_a = sam.prepare_decoder(&emb_a).unwrap();
    assert!(!cache_a.is_empty());
    // The image side of the first layer: (gh·gw) × D keys and values at least.
    assert!(
        cache_a.bytes() >= 2 * gh * gw * d * 4,
        "{}",
        cache_a.bytes()
    );
    check(&emb_a, &one, Some(&cache_a), "1 prompt set from the cache");
    check(
        &emb_a,
        &four,
        Some(&cache_a),
        "4 prompt sets from the cache",
    );
    // Another embedding given A's cache: the cache is ignored, the result is B's own, bit for bit.
    let (mb, ib) = check(&emb_b, &one, None, "embedding B");
    let (mx, ix) = check(&emb_b, &one, Some(&cache_a), "embedding B with A's cache");
    assert_eq!(rel_err(&mx, &mb), 0.0, "A's cache used for B");
    assert_eq!(rel_err(&ix, &ib), 0.0, "A's cache used for B");
    // A copy with the same values is another tensor: not served from A's cache either.
    let copy = emb_a.copy().unwrap();
    let (mc, ic) = check(&copy, &one, None, "copy of A");
    let (mcx, icx) = check(&copy, &one, Some(&cache_a), "copy of A with A's cache");
    assert_eq!(rel_err(&mcx, &mc), 0.0, "A's cache used for its copy");
    assert_eq!(rel_err(&icx, &ic), 0.0, "A's cache used for its copy");
    let cache_b = sam.prepare_decoder(&emb_b).unwrap();
    check(&emb_b, &four, Some(&cache_b), "B prepared");
    // Clones share the prepared data.
    let clone = cache_b.clone();
    assert_eq!(clone.bytes(), cache_b.bytes());
    check(&emb_b, &one, Some(&clone), "clone of B's cache");
    // (Random models amplify rounding with mask prompts, so that case is compared bit for bit with the uncached
    // decode.)
    let masked = Prompts {
        masks: Some(rand_tensor(&mut rng, &[1, 1, 4 * gh, 4 * gw], 2.0)),
        ..one.clone()
    };
    let (m, i) = sam.decode(&emb_a, &masked, true, Some(&cache_a)).unwrap();
    let (mf, iff) = sam.decode(&emb_a, &masked, true, None).unwrap();
    assert_eq!(rel_err(&m, &mf), 0.0, "mask prompt");
    assert_eq!(rel_err(&i, &iff), 0.0, "mask prompt");
    // Variables can change in place: nothing is prepared for them.
    let var = candle_core::Var::from_tensor(&emb_b).unwrap();
    let cache_var = sam.prepare_decoder(var.as_tensor()).unwrap();
    assert!(cache_var.is_empty());
    assert_eq!(cache_var.bytes(), 0);
    check(var.as_tensor(), &one, Some(&cache_var), "variable");
    var.set(&emb_a).unwrap();
    check(
        var.as_tensor(),
        &one,
        Some(&cache_var),
        "variable after set",
    );
    // A cache made by one model is ignored by another with other weights (keyed on its own tensors).
    let other = Sam::random(&cfg, 12, &dev).unwrap();
    let (mo, io) = other.decode(&emb_a, &one, true, None).unwrap();
    let (mox, iox) = other.decode(&emb_a, &one, true, Some(&cache_a)).unwrap();
    assert_eq!(rel_err(&mox, &mo), 0.0, "another model used A's cache");
    assert_eq!(rel_err(&iox, &io), 0.0, "another model used A's cache");
}

#[test]
fn decoder_kernels_match_generic_path_small() {
    check_decoder(&small_config(64, 4, 256), 3);
}

#[test]
fn decoder_kernels_match_generic_path_vit_dims() {
    // The official decoder dimensions (256 channels, 8 heads) on a 20×12 grid (not a multiple of the chunking).
    let mut cfg = small_config(256, 8, 320);
    cfg.fixed_input_size = false;
    check_decoder(&cfg, 4);
    let mut cfg = small_config(256, 8, 320);
    cfg.input_size = [320, 192];
    check_decoder(&cfg, 5);
}

fn check_encoder(cfg: &SamConfig, batch: usize, input: (usize, usize), seed: u64) {
    let dev = Device::Cpu;
    let sam = Sam::random(cfg, seed, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let x = rand_tensor(&mut rng, &[batch, cfg.in_channels, input.0, input.1], 2.0);
    let enc = sam.image_encoder();
    let fast = enc.forward(&x).unwrap();
    let reference = enc.forward_generic(&x).unwrap();
    let sens = rel_err(
        &enc.forward_generic(&perturb(&x, &mut rng)).unwrap(),
        &reference,
    );
    let e = rel_err(&fast, &reference);
    println!(
        "encoder {}×{} (batch {batch}, window {}, global {:?}): {e:.2e} (reference under 2-ulp input changes: {sens:.2e})",
        input.0, input.1, cfg.encoder_window_size, cfg.encoder_global_attn_indices
    );
    assert!(e <= 1e-5f32.max(4.0 * sens), "encoder relative error {e}");
}

#[test]
fn encoder_kernels_match_generic_path() {
    // Windows that do not divide the grid (padding), a global block, head_dim 16.
    let mut cfg = small_config(64, 4, 256);
    cfg.encoder_nb_blocks = 3;
    cfg.encoder_global_attn_indices = vec![1];
    check_encoder(&cfg, 2, (256, 256), 6);
    // Flexible input size: rectangular grid, interpolated relative positions, absolute positions resized.
    cfg.fixed_input_size = false;
    check_encoder(&cfg, 1, (224, 160), 7);
    // Global attention over more keys than one key block (25 × 22 = 550 tokens: three blocks, the last
    // partial, block edges inside grid rows) and several query blocks: the online softmax's rescaling.
    cfg.encoder_nb_blocks = 2;
    check_encoder(&cfg, 1, (400, 352), 9);
    // Wider model: head_dim 48 (not a power of two scale), window 7, one input channel.
    let mut cfg = small_config(64, 4, 128);
    cfg.encoder_embed_dim = 96;
    cfg.encoder_nb_heads = 2;
    cfg.encoder_window_size = 7;
    cfg.in_channels = 1;
    cfg.mean = vec![127.0];
    cfg.std = vec![60.0];
    check_encoder(&cfg, 1, (128, 128), 8);
}

fn naive_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for l in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + l] as f64 * b[l * n + j] as f64;
            }
        }
    }
    c
}

#[test]
fn direct_and_packed_products_match_naive() {
    use crate::kernels::direct::{
        gemm_direct, gemm_packed, gemm_packed_bias, gemm_packed_cols, gemm_packed_rows, PackedB,
    };
    let mut rng = StdRng::seed_from_u64(9);
    for &(m, n, k) in &[
        (1, 1, 1),
        (6, 16, 8),
        (7, 56, 256),
        (13, 33, 17),
        (48, 196, 64),
        (5, 8, 3),
        (20, 100, 0),
    ] {
        let a = rand_vec(&mut rng, m * k, 1.0);
        let b = rand_vec(&mut rng, k * n, 1.0);
        let bias = rand_vec(&mut rng, n, 1.0);
        let want = naive_matmul(&a, &b, m, n, k);
        let close = |got: &[f32], ld: usize, add_bias: bool, acc: Option<&[f32]>| {
            for i in 0..m {
                for j in 0..n {
                    let mut w = want[i * n + j];
                    if add_bias {
                        w += bias[j] as f64;
                    }
                    if let Some(c0) = acc {
                        w += c0[i * ld + j] as f64;
                    }
                    let g = got[i * ld + j] as f64;
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}×{n}×{k} ({i}, {j}): {g} vs {w}"
                    );
                }
            }
        };
        // Unpacked B, C with a wider row stride.
        let ldc = n + 3;
        let c0 = rand_vec(&mut rng, m * ldc, 1.0);
        for accumulate in [false, true] {
            let mut c = c0.clone();
            gemm_direct(m, n, k, &a, k, 1, &b, n, &mut c, ldc, accumulate);
            close(&c, ldc, false, accumulate.then_some(&c0[..]));
        }
        // Column-major A.
        let mut at = vec![0f32; m * k];
        for i in 0..m {
            for l in 0..k {
                at[l * m + i] = a[i * k + l];
            }
        }
        let mut c = c0.clone();
        gemm_direct(m, n, k, &at, 1, m.max(1), &b, n, &mut c, ldc, false);
        close(&c, ldc, false, None);
        // Packed B (from rows, and from its transpose), with and without bias.
        let mut bt = vec![0f32; n * k];
        for l in 0..k {
            for j in 0..n {
                bt[j * k + l] = b[l * n + j];
            }
        }
        for pb in [
            PackedB::new(&b, k, n, n, 1),
            PackedB::new(&bt, k, n, 1, k.max(1)),
            PackedB::from_fn(k, n, |l, j| b[l * n + j]),
        ] {
            let mut c = c0.clone();
            gemm_packed(m, &a, k, 1, &pb, &mut c, ldc, false);
            close(&c, ldc, false, None);
            let mut c = c0.clone();
            gemm_packed(m, &a, k, 1, &pb, &mut c, ldc, true);
            close(&c, ldc, false, Some(&c0));
            let mut c = c0.clone();
            gemm_packed_bias(m, &a, k, 1, &pb, Some(&bias), &mut c, ldc, false);
            close(&c, ldc, true, None);
            if k > 2 {
                // Rows 1..k − 1 of B (A's columns 1..k − 1), written and accumulated.
                let kc = k - 2;
                let mut want_rows = vec![0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        for l in 1..k - 1 {
                            want_rows[i * n + j] += a[i * k + l] as f64 * b[l * n + j] as f64;
                        }
                    }
                }
                for accumulate in [false, true] {
                    let mut c = c0.clone();
                    gemm_packed_rows(m, &a[1..], k, 1, &pb, 1, kc, &mut c, ldc, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let e = want_rows[i * n + j]
                                + if accumulate {
                                    c0[i * ldc + j] as f64
                                } else {
                                    0.0
                                };
                            let g = c[i * ldc + j] as f64;
                            assert!(
                                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                                "rows {m}×{n}×{k}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
            if n > 16 {
                // Columns 16.. of the product, alone.
                let w = n - 16;
                let mut c = vec![0f32; m * w];
                gemm_packed_cols(m, &a, k, 1, &pb, 16, w, Some(&bias), &mut c, w);
                for i in 0..m {
                    for j in 0..w {
                        let e = want[i * n + 16 + j] + bias[16 + j] as f64;
                        assert!((c[i * w + j] as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()));
                    }
                }
            }
        }
    }
}

#[test]
fn transposes_row_dots_and_row_kernels_match_plain_versions() {
    let mut rng = StdRng::seed_from_u64(10);
    for &(r, c) in &[(1, 1), (8, 8), (13, 29), (64, 256), (256, 7)] {
        let src = rand_vec(&mut rng, r * (c + 2), 1.0);
        let add = rand_vec(&mut rng, c * (r + 1), 1.0);
        let mut dst = vec![0f32; c * (r + 1)];
        math::transpose_add(&src, c + 2, &mut dst, r + 1, r, c, Some((&add, r + 1)));
        let mut dst0 = vec![0f32; c * (r + 1)];
        math::transpose(&src, c + 2, &mut dst0, r + 1, r, c);
        let row = rand_vec(&mut rng, r, 1.0);
        let mut dst1 = vec![0f32; c * r];
        math::transpose_add(&src, c + 2, &mut dst1, r, r, c, Some((&row, 0)));
        for i in 0..r {
            for j in 0..c {
                let v = src[i * (c + 2) + j];
                assert_eq!(dst0[j * (r + 1) + i], v);
                assert_eq!(dst[j * (r + 1) + i], v + add[j * (r + 1) + i]);
                assert_eq!(dst1[j * r + i], v + row[i]);
            }
        }
    }
    // Dot products of rows with a few vectors.
    for &(n, c, kn) in &[(8, 32, 3), (19, 32, 1), (16, 24, 4), (5, 7, 2)] {
        let rows = rand_vec(&mut rng, n * c, 1.0);
        let h = rand_vec(&mut rng, kn * c, 1.0);
        let mut out = vec![0f32; n * kn];
        math::row_dots(&rows, c, &h, kn, &mut out);
        for i in 0..n {
            for k in 0..kn {
                let w: f64 = (0..c)
                    .map(|j| rows[i * c + j] as f64 * h[k * c + j] as f64)
                    .sum();
                assert!((out[i * kn + k] as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()));
            }
        }
    }
    // Scores of 8 heads against up to 8 tokens (interleaved output) against f64 dot products.
    for &(r, dh, t) in &[(5, 16, 7), (3, 3, 8), (17, 16, 1), (2, 1, 4)] {
        let q = rand_vec(&mut rng, r * 8 * dh, 1.0);
        let mut k = rand_vec(&mut rng, 8 * dh * 8, 1.0);
        for (i, v) in k.iter_mut().enumerate() {
            if i % 8 >= t {
                *v = 0.0;
            }
        }
        let mut out = vec![f32::NAN; r * t * 8];
        math::head_scores8(&q, r, dh, &k, t, &mut out);
        for i in 0..r {
            for ti in 0..t {
                for h in 0..8 {
                    let w: f64 = (0..dh)
                        .map(|d| {
                            q[i * 8 * dh + h * dh + d] as f64 * k[(h * dh + d) * 8 + ti] as f64
                        })
                        .sum();
                    let v = out[i * 8 * t + ti * 8 + h] as f64;
                    assert!((v - w).abs() <= 1e-5 * (1.0 + w.abs()), "{r} {dh} {t}");
                }
            }
        }
    }
    // LayerNorm of many rows (8 at a time when the width allows) equals the one-row version.
    for &(n, c) in &[(21, 64), (3, 256), (9, 20)] {
        let x = rand_vec(&mut rng, n * c, 3.0);
        let w = rand_vec(&mut rng, c, 1.0);
        let b = rand_vec(&mut rng, c, 1.0);
        let mut y = x.clone();
        math::layer_norm_rows_inplace(&mut y, &w, &b, 1e-6);
        for i in 0..n {
            let mut one = vec![0f32; c];
            math::layer_norm_row(&x[i * c..(i + 1) * c], &mut one, &w, &b, 1e-6);
            for j in 0..c {
                assert!((one[j] - y[i * c + j]).abs() <= 2e-6 * (1.0 + one[j].abs()));
            }
        }
    }
    // Softmax variants against the one-row softmax.
    for &(t, h) in &[(7, 8), (5, 16), (6, 3)] {
        let x = rand_vec(&mut rng, t * h, 5.0);
        let mut y = x.clone();
        math::softmax_interleaved(&mut y, t, h);
        for j in 0..h {
            let mut g: Vec<f32> = (0..t).map(|i| x[i * h + j]).collect();
            math::softmax_row(&mut g);
            for i in 0..t {
                assert!((g[i] - y[i * h + j]).abs() <= 1e-6);
            }
        }
    }
    let x = rand_vec(&mut rng, 4099, 8.0);
    let mut p = x.clone();
    math::softmax_row(&mut p);
    let mut u = x.clone();
    let s = math::softmax_unnormalized(&mut u);
    for (a, b) in p.iter().zip(&u) {
        assert!((a - b / s).abs() <= 1e-7 + 1e-6 * a);
    }
}
