//! Statistics for paired A/B runs: the mean of the per-pair differences with its Student-t
//! 95 % interval, an exact sign test against a threshold, and on which side of a target an
//! interval lies.
//!
//! Each pair runs both sides close together (ABBA order), so a pair's difference cancels
//! whatever drifts slower than a pair (other work on the machine, thermal state). The runs
//! of one side are never averaged on their own: two separate means would carry the whole
//! drift into the comparison.

use serde::Serialize;

/// A sample's mean with its 95 % confidence interval (Student t, two-sided), and its spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Interval {
    /// Values.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for one value.
    pub sd: f64,
    /// t(0.975, n − 1) × sd ÷ √n; `None` with fewer than two values.
    pub half_width: Option<f64>,
    /// mean − half_width.
    pub low: Option<f64>,
    /// mean + half_width.
    pub high: Option<f64>,
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// The interval of the mean of `values`; `None` when there are none.
pub(crate) fn interval(values: &[f64]) -> Option<Interval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let half_width = (n > 1).then(|| t_975(n - 1) * sd / (n as f64).sqrt());
    Some(Interval {
        n,
        mean,
        sd,
        half_width,
        low: half_width.map(|h| mean - h),
        high: half_width.map(|h| mean + h),
        median: median(values),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// The median (the mean of the middle two for an even count); 0 for no values.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (two-sided 95 %).
pub(crate) fn t_975(df: usize) -> f64 {
    /// df 1..=30, from the standard tables.
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => {
            // Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun
            // 26.7.5): better than 1e-4 from df 30 on.
            let z: f64 = 1.959_963_984_540_054;
            let d = df as f64;
            let g1 = (z.powi(3) + z) / 4.0;
            let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
            let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
            let g4 = (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5)
                - 1920.0 * z.powi(3)
                - 945.0 * z)
                / 92160.0;
            z + g1 / d + g2 / d.powi(2) + g3 / d.powi(3) + g4 / d.powi(4)
        }
    }
}

/// How many values lie below and above a threshold, and the exact two-sided sign-test p-value
/// for "the median is the threshold" (ties left out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SignTest {
    /// The threshold compared against.
    pub threshold: f64,
    /// Values below it.
    pub below: usize,
    /// Values above it.
    pub above: usize,
    /// Values equal to it (left out of the test).
    pub ties: usize,
    /// P(a split at least this lopsided | each side equally likely).
    pub p_value: f64,
}

pub(crate) fn sign_test(values: &[f64], threshold: f64) -> SignTest {
    let below = values.iter().filter(|&&v| v < threshold).count();
    let above = values.iter().filter(|&&v| v > threshold).count();
    let n = below + above;
    let k = below.min(above);
    // P(X ≤ k) for X ~ Binomial(n, ½), term by term: C(n, i) / 2^n.
    let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
    let mut tail = 0.0;
    for i in 0..=k {
        tail += term;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    SignTest {
        threshold,
        below,
        above,
        ties: values.len() - n,
        p_value: (2.0 * tail).min(1.0),
    }
}

/// Where an interval lies against a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Side {
    /// Entirely below: the target is met, conclusively.
    Below,
    /// Entirely above: missed, conclusively.
    Above,
    /// The target lies inside the interval (or there is no interval): not conclusive.
    Straddles,
}

pub(crate) fn side(interval: &Interval, target: f64) -> Side {
    match (interval.low, interval.high) {
        (_, Some(high)) if high < target => Side::Below,
        (Some(low), _) if low > target => Side::Above,
        _ => Side::Straddles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn interval_of_a_known_sample() {
        // Mean 3, Σ(x − 3)² = 10, sd = √(10 / 4).
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        let i = interval(&v).unwrap();
        assert_eq!(i.n, 5);
        assert!(close(i.mean, 3.0, 1e-12));
        assert!(close(i.sd, 2.5f64.sqrt(), 1e-12));
        // t(0.975, 4) = 2.776: 2.776 × 1.5811 / 2.2361 = 1.9629.
        let h = i.half_width.unwrap();
        assert!(close(h, 2.776 * 2.5f64.sqrt() / 5f64.sqrt(), 1e-9), "{h}");
        assert!(close(i.low.unwrap(), 3.0 - h, 1e-12));
        assert!(close(i.high.unwrap(), 3.0 + h, 1e-12));
        assert_eq!((i.median, i.min, i.max), (3.0, 1.0, 5.0));
    }

    #[test]
    fn one_value_has_no_interval_and_none_has_no_mean() {
        let i = interval(&[0.4]).unwrap();
        assert_eq!((i.mean, i.sd, i.half_width), (0.4, 0.0, None));
        assert_eq!(side(&i, 1.0), Side::Straddles);
        assert!(interval(&[]).is_none());
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(10), 2.228);
        assert_eq!(t_975(30), 2.042);
        // Tables: df 40 → 2.0211, 60 → 2.0003, 120 → 1.9799; large df → 1.96.
        for (df, t) in [(40, 2.0211), (60, 2.0003), (120, 1.9799), (100_000, 1.96)] {
            assert!(close(t_975(df), t, 2e-4), "df {df}: {}", t_975(df));
        }
        // It falls with df, and the expansion joins the table without a step.
        assert!(t_975(31) < t_975(30) && t_975(31) > 2.03);
        assert!(t_975(0).is_infinite());
    }

    #[test]
    fn the_side_of_the_target() {
        let at = |values: &[f64]| side(&interval(values).unwrap(), 1.0);
        assert_eq!(at(&[0.1, 0.2, 0.15, 0.12]), Side::Below);
        assert_eq!(at(&[3.0, 3.2, 2.9, 3.1]), Side::Above);
        assert_eq!(at(&[-5.0, 6.0, 1.0, -2.0]), Side::Straddles);
    }

    #[test]
    fn sign_test_is_the_exact_binomial() {
        // 10 of 10 below: p = 2 / 1024.
        let s = sign_test(&[0.5; 10], 1.0);
        assert_eq!((s.below, s.above, s.ties), (10, 0, 0));
        assert!(close(s.p_value, 2.0 / 1024.0, 1e-15));
        // 8 below, 2 above: P(X ≤ 2) = (1 + 10 + 45) / 1024, two-sided × 2.
        let mut v = vec![0.0; 8];
        v.extend([2.0, 3.0]);
        let s = sign_test(&v, 1.0);
        assert!(
            close(s.p_value, 2.0 * 56.0 / 1024.0, 1e-15),
            "{}",
            s.p_value
        );
        // Balanced: p = 1; ties are left out.
        let s = sign_test(&[0.0, 2.0, 1.0], 1.0);
        assert_eq!((s.below, s.above, s.ties, s.p_value), (1, 1, 1, 1.0));
        assert_eq!(sign_test(&[], 1.0).p_value, 1.0);
    }
}
