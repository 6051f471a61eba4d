//! `exp` and `ln` in f32 written so that LLVM vectorises them: `f32::exp` and `f32::ln` are
//! libm calls, one lane at a time. Branch-free (selects, integer bit tricks, no `floor` and
//! no float-to-int casts, which need SSE4.1 or a saturation fix-up), Cephes polynomials, about
//! 1 ulp on their domain.

/// `a * b + c`, fused where the caller is compiled with FMA (`f32::mul_add` is a libm call
/// without it; Rust never fuses `a * b + c` by itself).
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// 1.5 * 2^23: adding it rounds an f32 of magnitude below 2^22 to an integer, which then sits
/// in the low mantissa bits.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `e^x` for `x` in [-87.3, 88.7] (clamped there, so results stay normal and finite; NaN
/// comes back finite: callers check their inputs).
#[inline(always)]
pub fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // x = n ln2 + r with n integer and |r| <= ln2 / 2.
    let shifted = madd::<FMA>(x, std::f32::consts::LOG2_E, ROUNDING_MAGIC);
    let n = shifted - ROUNDING_MAGIC;
    let n_int = shifted.to_bits() as i32 - ROUNDING_MAGIC.to_bits() as i32;
    let r = madd::<FMA>(n, 2.121_944_4e-4, madd::<FMA>(n, -0.693_359_4, x));
    let mut p = 1.987_569_1e-4;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let poly = madd::<FMA>(p, r * r, r + 1.0);
    poly * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// `ln x` for normal positive `x` (callers keep zero, subnormals, infinities and NaN away).
#[inline(always)]
pub fn ln_f32<const FMA: bool>(x: f32) -> f32 {
    let bits = x.to_bits() as i32;
    // x = m 2^e with m in [0.5, 1).
    let mut e = ((bits >> 23) - 126) as f32;
    let m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f00_0000) as u32);
    // m in [sqrt(1/2), sqrt(2)) after folding: m - 1 stays small.
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= if small { 1.0 } else { 0.0 };
    let t = if small { m + m - 1.0 } else { m - 1.0 };
    let z = t * t;
    let mut y = 7.037_683_6e-2;
    y = madd::<FMA>(y, t, -1.151_461e-1);
    y = madd::<FMA>(y, t, 1.167_699_9e-1);
    y = madd::<FMA>(y, t, -1.242_014_1e-1);
    y = madd::<FMA>(y, t, 1.424_932_3e-1);
    y = madd::<FMA>(y, t, -1.666_805_8e-1);
    y = madd::<FMA>(y, t, 2.000_071_4e-1);
    y = madd::<FMA>(y, t, -2.499_999_4e-1);
    y = madd::<FMA>(y, t, 3.333_333e-1);
    y *= t * z;
    y = madd::<FMA>(-2.121_944_4e-4, e, y);
    y = madd::<FMA>(-0.5, z, y);
    madd::<FMA>(0.693_359_4, e, t + y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 over the range the sweeps use, relative error within 4 f32 ulps (the
    /// Cephes polynomials are within about 1; rounding of the reduction adds a little).
    #[test]
    fn exp_and_ln_match_f64() {
        let mut worst_exp = 0.0f64;
        let mut worst_ln = 0.0f64;
        for i in 0..200_001 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let truth = (x as f64).exp();
            for got in [exp_f32::<false>(x), exp_f32::<true>(x)] {
                worst_exp = worst_exp.max(((got as f64 - truth) / truth).abs());
            }
            let y = 10f32.powf(-30.0 + 60.0 * i as f32 / 200_000.0);
            let truth = (y as f64).ln();
            for got in [ln_f32::<false>(y), ln_f32::<true>(y)] {
                worst_ln = worst_ln.max((got as f64 - truth).abs() / truth.abs().max(1.0));
            }
        }
        assert!(worst_exp < 4.0 * f32::EPSILON as f64, "exp: {worst_exp:e}");
        assert!(worst_ln < 4.0 * f32::EPSILON as f64, "ln: {worst_ln:e}");
        // Exact points.
        assert_eq!(exp_f32::<false>(0.0), 1.0);
        assert_eq!(ln_f32::<false>(1.0), 0.0);
    }
}
