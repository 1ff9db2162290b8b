fn erf64(x: f64) -> f64 {
    let t = x.abs();
    let r = if t < 3.0 {
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
fn eigen_erf(a: f32) -> f32 {
    let x = a.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.72614225801306e-10, 2.77068142495902e-08);
    for c in [
        -2.10102402082508e-06f32,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    ] {
        p = x2.mul_add(p, c);
    }
    p *= x;
    let mut q = x2.mul_add(-1.45660718464996e-05, -2.13374055278905e-04);
    for c in [
        -1.68282697438203e-03f32,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    ] {
        q = x2.mul_add(q, c);
    }
    p / q
}
fn pt_erf(v: f32) -> f32 {
    let a = v.abs();
    let t = 1.0 / (0.3275911f32 * a + 1.0);
    let r = (((1.061405429f32 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592;
    let e = (-(v * v)).exp();
    let r = 1.0 - e * t * r;
    if v < 0.0 {
        -r
    } else {
        r
    }
}
fn main() {
    let (mut we, mut wp, mut wge, mut wgp) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..2_000_001 {
        let x = -10.0 + i as f64 * 1e-5;
        let xf = x as f32;
        let want = erf64(x);
        we = we.max((eigen_erf(xf) as f64 - want).abs());
        wp = wp.max((pt_erf(xf) as f64 - want).abs());
        // gelu
        let v = xf * std::f32::consts::FRAC_1_SQRT_2;
        let gw = 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
        let ge = xf * 0.5 * (1.0 + eigen_erf(v));
        let gp = xf * 0.5 * (1.0 + pt_erf(v));
        wge = wge.max((ge as f64 - gw).abs() / x.abs().max(1.0));
        wgp = wgp.max((gp as f64 - gw).abs() / x.abs().max(1.0));
    }
    println!("erf max abs err: eigen {we:.2e}, pytorch-formula {wp:.2e}; gelu rel-ish err: eigen {wge:.2e}, pytorch {wgp:.2e}");
}
