//! How likely a pack is to be lost (protocol.md §5.5, shown by `peer status`).
//!
//! A pack stored on `n` holders of which any `n − f` suffice (N copies: f = N − 1; erasure
//! K+M: n = K+M, f = M) is lost when more than `f` of its holders vanish before repair
//! replaces them. With holders vanishing independently with probability `p` over that
//! window (the network's churn), the loss probability is the binomial tail
//!
//! ```text
//! P(loss) = Σ_{i=f+1}^{n} C(n, i) · p^i · (1 − p)^(n−i)
//! ```
//!
//! (Storj's durability model uses the Poisson approximation `1 − e^−λ Σ_{i≤f} λ^i / i!`
//! with `λ = n·p`; the exact sum is as cheap here.) `peer status` prints it for a month
//! at [`MONTHLY_CHURN`], the pessimistic case where repair does not run all month.

/// Fraction of holders assumed to vanish in a month, for the figure in `peer status`.
pub const MONTHLY_CHURN: f64 = 0.05;

/// Probability that more than `f` of `n` holders, each lost with probability `p`, are lost.
pub fn loss_probability(n: u32, f: u32, p: f64) -> f64 {
    let mut total = 0.0;
    let mut binom = 1.0; // C(n, i), built up as i grows
    for i in 0..=n {
        if i > 0 {
            binom = binom * f64::from(n - i + 1) / f64::from(i);
        }
        if i > f {
            total += binom * p.powi(i as i32) * (1.0 - p).powi((n - i) as i32);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_erasure() {
        // three copies: all three must go
        assert!((loss_probability(3, 2, 0.05) - 0.05f64.powi(3)).abs() < 1e-15);
        // one copy: the holder itself
        assert!((loss_probability(1, 0, 0.05) - 0.05).abs() < 1e-15);
        // 4+2 at 5%: Σ_{i=3}^{6} C(6,i) p^i (1−p)^(6−i)
        let p: f64 = 0.05;
        let want = 20.0 * p.powi(3) * (1.0 - p).powi(3)
            + 15.0 * p.powi(4) * (1.0 - p).powi(2)
            + 6.0 * p.powi(5) * (1.0 - p)
            + p.powi(6);
        assert!((loss_probability(6, 2, p) - want).abs() < 1e-15);
        // 4+2 stores 1.5× and is safer than 2 copies (2×), less safe than 3 copies (3×)
        assert!(loss_probability(6, 2, p) < loss_probability(2, 1, p));
        assert!(loss_probability(6, 2, p) > loss_probability(3, 2, p));
        assert_eq!(loss_probability(4, 4, p), 0.0);
    }
}
