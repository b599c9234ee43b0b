//! A tiny seeded pseudo-random generator (SplitMix64), so that the phase offsets of scrape and
//! control loops and the noise of the diurnal scenario are reproducible from a seed alone.

/// SplitMix64: a 64-bit state advanced by a fixed odd constant and mixed; good enough for
/// phases and noise, and with no dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform multiple of `step` in `[0, period)` (`period` a multiple of `step`), used to
    /// place a loop's phase on the simulation's time grid.
    pub fn phase_ms(&mut self, period_ms: i64, step_ms: i64) -> i64 {
        let slots = (period_ms / step_ms).max(1);
        (self.next_u64() % slots as u64) as i64 * step_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_sequence_and_floats_stay_in_unit_interval() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    #[test]
    fn phases_are_on_the_grid_and_inside_the_period() {
        let mut r = SplitMix64::new(3);
        for _ in 0..1000 {
            let p = r.phase_ms(15_000, 100);
            assert!((0..15_000).contains(&p));
            assert_eq!(p % 100, 0);
        }
    }
}
