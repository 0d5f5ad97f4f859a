//! Statistics of the benchmarks: the ratio of two daemons' samples with a 95 % interval.
//!
//! A sample set is grouped by boot: `[[boot 1's repetitions], [boot 2's], ...]`. Repetitions
//! inside one boot share that boot's conditions (placement, page cache, the load of the
//! moment), so they are not independent; the interval comes from a **hierarchical bootstrap**
//! that resamples boots with replacement and then repetitions inside each chosen boot. With
//! one value per boot it is the ordinary bootstrap.
//!
//! The ratio is the Hodges-Lehmann estimate on the log scale: the median of `a_i / b_j` over
//! every pair of samples. It is robust like a median (one slow boot does not move it) but
//! uses every pair, so it needs fewer samples than a ratio of medians to tell a given
//! difference. The interval is the bootstrap's 2.5 and 97.5 percentiles of the same estimate,
//! drawn from a fixed-seed generator so a report is reproducible from its samples.
//!
//! This module only computes; it knows nothing about jobs, daemons or units.

/// The fewest samples a side (runs, or pairs) a verdict is given from, besides two boots: a
/// percentile bootstrap of two or three values is far too narrow (of 2 boots x 1 run at a true
/// ratio of 1.0, about a third of the intervals exclude 1.0; see the tests).
pub const MIN_VERDICT_SAMPLES: usize = 6;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 4000;
/// Seed of the bootstrap's generator unless a caller chooses another.
pub const DEFAULT_SEED: u64 = 0x5EED_0FB0_0757;

/// SplitMix64: a small, fast, fixed-seed generator (the bootstrap needs reproducibility,
/// not cryptographic quality).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is below 2^-50 for the n used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller), for tests and simulations.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The median of `v` (`None` when empty; NaNs sort last).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(median_sorted(&s))
}

fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of sorted `s`, linear between order statistics.
fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// A ratio `a / b` with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioInterval {
    /// Hodges-Lehmann estimate of `a / b`.
    pub ratio: f64,
    /// 2.5th percentile of the bootstrap.
    pub low: f64,
    /// 97.5th percentile of the bootstrap.
    pub high: f64,
    /// Samples (all repetitions of all boots) of `a` and of `b`.
    pub n_a: usize,
    pub n_b: usize,
    /// Boots the samples of `a` and of `b` came from.
    pub boots_a: usize,
    pub boots_b: usize,
}

/// What an interval says about "ours against the reference".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is on our better side of 1.0.
    Won,
    /// The whole interval is on our worse side of 1.0.
    Lost,
    /// The interval contains 1.0: no established difference.
    Level,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Won => "won",
            Verdict::Lost => "lost",
            Verdict::Level => "level",
        }
    }
}

impl RatioInterval {
    /// The verdict for a ratio where `above_one_is_better` says which side of 1.0 is ours.
    /// Always [`Verdict::Level`] unless both sides come from at least two boots (the
    /// repetitions inside one boot cannot show how much boots differ) and have at least
    /// [`MIN_VERDICT_SAMPLES`] samples.
    pub fn verdict(&self, above_one_is_better: bool) -> Verdict {
        if !self.enough_for_a_verdict() {
            return Verdict::Level;
        }
        let (better, worse) = if above_one_is_better {
            (self.low > 1.0, self.high < 1.0)
        } else {
            (self.high < 1.0, self.low > 1.0)
        };
        if better {
            Verdict::Won
        } else if worse {
            Verdict::Lost
        } else {
            Verdict::Level
        }
    }

    /// Whether the samples behind the interval are enough for [`Self::verdict`] to call it.
    pub fn enough_for_a_verdict(&self) -> bool {
        self.boots_a >= 2
            && self.boots_b >= 2
            && self.n_a >= MIN_VERDICT_SAMPLES
            && self.n_b >= MIN_VERDICT_SAMPLES
    }

    /// The inverse ratio `b / a` (its interval bounds swap).
    pub fn inverse(&self) -> RatioInterval {
        RatioInterval {
            ratio: 1.0 / self.ratio,
            low: 1.0 / self.high,
            high: 1.0 / self.low,
            n_a: self.n_b,
            n_b: self.n_a,
            boots_a: self.boots_b,
            boots_b: self.boots_a,
        }
    }

    /// Half the interval's width on the log scale, as a fraction: the smallest difference
    /// the samples can tell (0.10 = an interval of about ±10 %).
    pub fn resolution(&self) -> f64 {
        ((self.high / self.low).ln() / 2.0).exp() - 1.0
    }
}

/// Only finite, positive values (a ratio of logs needs them); empty boots dropped.
fn clean(groups: &[Vec<f64>]) -> Vec<Vec<f64>> {
    groups
        .iter()
        .map(|g| {
            g.iter()
                .copied()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(f64::ln)
                .collect::<Vec<f64>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// Hodges-Lehmann shift of log samples: median of `a_i - b_j`. `scratch` is reused.
fn hl_shift(a: &[f64], b: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    for x in a {
        for y in b {
            scratch.push(x - y);
        }
    }
    scratch.sort_by(|p, q| p.total_cmp(q));
    median_sorted(scratch)
}

/// One hierarchical resample: `groups.len()` boots drawn with replacement, each boot's
/// repetitions drawn with replacement inside it.
fn resample(groups: &[Vec<f64>], rng: &mut SplitMix64, out: &mut Vec<f64>) {
    out.clear();
    for _ in 0..groups.len() {
        let g = &groups[rng.below(groups.len())];
        for _ in 0..g.len() {
            out.push(g[rng.below(g.len())]);
        }
    }
}

/// The ratio `exp(point)` with the 2.5th and 97.5th percentiles of the bootstrap's log
/// estimates `draws` as its interval; `samples` and `boots` of each side.
fn percentile_interval(
    point: f64,
    mut draws: Vec<f64>,
    samples: [usize; 2],
    boots: [usize; 2],
) -> RatioInterval {
    draws.sort_by(|p, q| p.total_cmp(q));
    RatioInterval {
        ratio: point.exp(),
        low: quantile_sorted(&draws, 0.025).exp(),
        high: quantile_sorted(&draws, 0.975).exp(),
        n_a: samples[0],
        n_b: samples[1],
        boots_a: boots[0],
        boots_b: boots[1],
    }
}

/// The ratio `a / b` of two grouped sample sets with its 95 % interval (see the module doc);
/// `None` when either side has no positive sample.
pub fn ratio_interval(a: &[Vec<f64>], b: &[Vec<f64>], seed: u64) -> Option<RatioInterval> {
    let (a, b) = (clean(a), clean(b));
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let flat = |g: &[Vec<f64>]| g.iter().flatten().copied().collect::<Vec<f64>>();
    let (fa, fb) = (flat(&a), flat(&b));
    let mut scratch = Vec::with_capacity(fa.len() * fb.len());
    let point = hl_shift(&fa, &fb, &mut scratch);
    let mut rng = SplitMix64::new(seed);
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    let mut shifts = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        resample(&a, &mut rng, &mut ra);
        resample(&b, &mut rng, &mut rb);
        shifts.push(hl_shift(&ra, &rb, &mut scratch));
    }
    Some(percentile_interval(
        point,
        shifts,
        [fa.len(), fb.len()],
        [a.len(), b.len()],
    ))
}

/// One-sample Hodges-Lehmann estimate of log differences: the median of the Walsh averages
/// `(d_i + d_j) / 2`, `i <= j`. `scratch` is reused.
fn hl_center(d: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    for (i, x) in d.iter().enumerate() {
        for y in &d[i..] {
            scratch.push((x + y) / 2.0);
        }
    }
    scratch.sort_by(|p, q| p.total_cmp(q));
    median_sorted(scratch)
}

/// The ratio `a / b` of **paired** samples with its 95 % interval: each pair `(a, b)` was
/// measured back to back inside one boot (both daemons serving the same guest, one job after
/// the other), so whatever the boot and the moment did to both cancels in `a / b`. The
/// estimate is the one-sample Hodges-Lehmann center of the pairs' log ratios; the interval a
/// hierarchical bootstrap over boots, then pairs inside each chosen boot (pairs of one boot
/// are not independent either). `None` when no pair has two positive values.
pub fn paired_ratio_interval(pairs: &[Vec<(f64, f64)>], seed: u64) -> Option<RatioInterval> {
    let groups: Vec<Vec<f64>> = pairs
        .iter()
        .map(|g| {
            g.iter()
                .filter(|(a, b)| a.is_finite() && b.is_finite() && *a > 0.0 && *b > 0.0)
                .map(|(a, b)| a.ln() - b.ln())
                .collect::<Vec<f64>>()
        })
        .filter(|g| !g.is_empty())
        .collect();
    if groups.is_empty() {
        return None;
    }
    let all: Vec<f64> = groups.iter().flatten().copied().collect();
    let mut scratch = Vec::with_capacity(all.len() * (all.len() + 1) / 2);
    let point = hl_center(&all, &mut scratch);
    let mut rng = SplitMix64::new(seed);
    let mut drawn = Vec::with_capacity(all.len());
    let mut centers = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        resample(&groups, &mut rng, &mut drawn);
        centers.push(hl_center(&drawn, &mut scratch));
    }
    Some(percentile_interval(
        point,
        centers,
        [all.len(); 2],
        [groups.len(); 2],
    ))
}

/// Each value as its own boot (no repetitions).
pub fn ungrouped(v: &[f64]) -> Vec<Vec<f64>> {
    v.iter().map(|x| vec![*x]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` boots of `reps` samples around `center`: log-normal boot effect (sd `boot_cv`)
    /// and repetition noise (sd `rep_cv`).
    fn draw(
        rng: &mut SplitMix64,
        center: f64,
        n: usize,
        reps: usize,
        boot_cv: f64,
        rep_cv: f64,
    ) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                let boot = center * (boot_cv * rng.normal()).exp();
                (0..reps)
                    .map(|_| boot * (rep_cv * rng.normal()).exp())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 5.0);
        assert_eq!(quantile_sorted(&s, 0.5), 3.0);
        assert!((quantile_sorted(&s, 0.125) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn generator_is_deterministic_and_uniform_enough() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut counts = [0u32; 10];
        let mut r = SplitMix64::new(1);
        for _ in 0..100_000 {
            counts[r.below(10)] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_500..10_500).contains(c)),
            "{counts:?}"
        );
        let mean: f64 = (0..100_000).map(|_| r.normal()).sum::<f64>() / 100_000.0;
        assert!(mean.abs() < 0.02, "{mean}");
    }

    #[test]
    fn equal_samples_give_one_and_a_level_verdict() {
        let s = ungrouped(&[10.0, 11.0, 9.0, 10.5, 9.5]);
        let r = ratio_interval(&s, &s, DEFAULT_SEED).unwrap();
        assert!((r.ratio - 1.0).abs() < 1e-12, "{r:?}");
        assert!(r.low < 1.0 && r.high > 1.0, "{r:?}");
        assert_eq!(r.verdict(true), Verdict::Level);
        assert_eq!(r.verdict(false), Verdict::Level);
        assert_eq!((r.n_a, r.n_b), (5, 5));
    }

    #[test]
    fn separated_samples_are_won_or_lost_by_orientation() {
        let fast = ungrouped(&[20.0, 21.0, 19.5, 20.5, 19.0, 20.2]);
        let slow = ungrouped(&[10.0, 10.4, 9.7, 10.1, 9.9, 10.3]);
        let r = ratio_interval(&fast, &slow, DEFAULT_SEED).unwrap();
        assert!(r.ratio > 1.9 && r.ratio < 2.1, "{r:?}");
        assert!(r.low > 1.0, "{r:?}");
        assert_eq!(r.verdict(true), Verdict::Won);
        // The same ratio of seconds (lower is better) is a loss.
        assert_eq!(r.verdict(false), Verdict::Lost);
        let inv = r.inverse();
        assert!((inv.ratio * r.ratio - 1.0).abs() < 1e-12);
        assert!((inv.low - 1.0 / r.high).abs() < 1e-12);
        assert_eq!(inv.verdict(true), Verdict::Lost);
    }

    #[test]
    fn one_boot_per_side_gives_no_verdict_however_far_apart() {
        let a = vec![vec![20.0, 20.5, 19.5]];
        let b = vec![vec![10.0, 10.2, 9.8]];
        let r = ratio_interval(&a, &b, DEFAULT_SEED).unwrap();
        assert!(r.low > 1.5, "{r:?}");
        assert_eq!((r.boots_a, r.boots_b), (1, 1));
        assert_eq!(r.verdict(true), Verdict::Level);
        let two = vec![vec![20.0, 20.5, 20.1], vec![19.5, 20.2, 19.9]];
        let r = ratio_interval(&two, &[b[0].clone(), b[0].clone()], DEFAULT_SEED).unwrap();
        assert_eq!(r.verdict(true), Verdict::Won);
    }

    #[test]
    fn the_same_samples_give_the_same_interval() {
        let mut rng = SplitMix64::new(3);
        let a = draw(&mut rng, 100.0, 3, 3, 0.05, 0.05);
        let b = draw(&mut rng, 100.0, 3, 3, 0.05, 0.05);
        assert_eq!(
            ratio_interval(&a, &b, DEFAULT_SEED),
            ratio_interval(&a, &b, DEFAULT_SEED)
        );
    }

    #[test]
    fn no_positive_samples_no_ratio() {
        assert_eq!(ratio_interval(&[], &ungrouped(&[1.0]), 1), None);
        assert_eq!(
            ratio_interval(&ungrouped(&[0.0, -1.0, f64::NAN]), &ungrouped(&[1.0]), 1),
            None
        );
        // Bad values are dropped, good ones kept.
        let r = ratio_interval(&ungrouped(&[2.0, 0.0]), &ungrouped(&[1.0]), 1).unwrap();
        assert_eq!((r.ratio, r.n_a), (2.0, 1));
    }

    #[test]
    fn repetitions_of_one_boot_do_not_count_as_independent_boots() {
        // The boots differ (±20 %), the repetitions inside a boot do not: nine repetitions
        // of three boots know hardly more than three boots.
        let a = vec![vec![1.0; 3], vec![1.2; 3], vec![0.8; 3]];
        let b = vec![vec![1.05; 3], vec![1.25; 3], vec![0.85; 3]];
        let grouped = ratio_interval(&a, &b, DEFAULT_SEED).unwrap();
        let flat = |g: &[Vec<f64>]| ungrouped(&g.concat());
        let naive = ratio_interval(&flat(&a), &flat(&b), DEFAULT_SEED).unwrap();
        assert!(
            grouped.high / grouped.low > naive.high / naive.low,
            "grouped {grouped:?} naive {naive:?}"
        );
    }

    #[test]
    fn intervals_cover_the_true_ratio_about_95_percent_of_the_time() {
        // 200 simulated quick benches (3 boots x 3 repetitions per daemon, 6 % boot and 6 %
        // repetition noise), true ratio 1.0. A percentile bootstrap on few samples covers a
        // little less than its nominal 95 %; below 85 % the intervals would mislead.
        let mut rng = SplitMix64::new(11);
        let mut covered = 0;
        let trials = 200;
        for t in 0..trials {
            let a = draw(&mut rng, 100.0, 3, 3, 0.06, 0.06);
            let b = draw(&mut rng, 100.0, 3, 3, 0.06, 0.06);
            let r = ratio_interval(&a, &b, t).unwrap();
            if r.low <= 1.0 && r.high >= 1.0 {
                covered += 1;
            }
        }
        assert!(
            covered >= trials * 85 / 100,
            "covered {covered} of {trials}"
        );
    }

    #[test]
    fn a_quick_bench_tells_a_ten_percent_difference_at_the_noise_seen_on_an_idle_machine() {
        // Independent boots (as 9 boots, or 3 x 3 with little boot effect), 5 % noise per
        // sample, true ratio 1.10: most intervals exclude 1.0 and none calls it lost.
        let mut rng = SplitMix64::new(5);
        let (mut won, mut lost) = (0, 0);
        let trials = 200;
        for t in 0..trials {
            let a = draw(&mut rng, 110.0, 3, 3, 0.02, 0.05);
            let b = draw(&mut rng, 100.0, 3, 3, 0.02, 0.05);
            match ratio_interval(&a, &b, t).unwrap().verdict(true) {
                Verdict::Won => won += 1,
                Verdict::Lost => lost += 1,
                Verdict::Level => {}
            }
        }
        assert!(won >= trials * 80 / 100, "won {won} of {trials}");
        assert_eq!(lost, 0);
    }

    /// `n` boots of `reps` pairs whose true ratio is `ratio`: a boot effect and a per-pair
    /// effect (the moment) shared by both members of a pair, and noise of each sample.
    fn draw_pairs(
        rng: &mut SplitMix64,
        ratio: f64,
        n: usize,
        reps: usize,
        shared_cv: f64,
        own_cv: f64,
    ) -> Vec<Vec<(f64, f64)>> {
        (0..n)
            .map(|_| {
                let boot = 100.0 * (shared_cv * rng.normal()).exp();
                (0..reps)
                    .map(|_| {
                        let moment = boot * (shared_cv * rng.normal()).exp();
                        let a = ratio * moment * (own_cv * rng.normal()).exp();
                        let b = moment * (own_cv * rng.normal()).exp();
                        (a, b)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn pairing_cancels_what_both_members_of_a_pair_share() {
        // 20 % boot-to-boot and moment-to-moment swings, 3 % noise of each sample: the
        // paired interval is narrow and calls a true 1.10 won; the same numbers taken as
        // separate boots cannot tell it.
        let mut rng = SplitMix64::new(21);
        let pairs = draw_pairs(&mut rng, 1.10, 3, 3, 0.20, 0.03);
        let paired = paired_ratio_interval(&pairs, DEFAULT_SEED).unwrap();
        assert_eq!(paired.verdict(true), Verdict::Won, "{paired:?}");
        assert!(paired.resolution() < 0.06, "{paired:?}");
        let side = |pick: fn(&(f64, f64)) -> f64| -> Vec<Vec<f64>> {
            pairs.iter().map(|g| g.iter().map(pick).collect()).collect()
        };
        let separate = ratio_interval(&side(|p| p.0), &side(|p| p.1), DEFAULT_SEED).unwrap();
        assert_eq!(separate.verdict(true), Verdict::Level, "{separate:?}");
        assert!(separate.resolution() > 2.0 * paired.resolution());
    }

    #[test]
    fn paired_intervals_cover_the_true_ratio_and_tell_ten_percent() {
        // 200 simulated paired quick benches (3 boots x 3 pairs, 10 % shared swings, 5 %
        // noise of each sample). At a true 1.0 the intervals cover it at least 85 % of the
        // time; at a true 1.10 at least 80 % of them exclude 1.0 and none calls it lost.
        let mut rng = SplitMix64::new(33);
        let trials = 200;
        let (mut covered, mut won, mut lost) = (0, 0, 0);
        for t in 0..trials {
            let same =
                paired_ratio_interval(&draw_pairs(&mut rng, 1.0, 3, 3, 0.1, 0.05), t).unwrap();
            if same.low <= 1.0 && same.high >= 1.0 {
                covered += 1;
            }
            let r = paired_ratio_interval(&draw_pairs(&mut rng, 1.1, 3, 3, 0.1, 0.05), t).unwrap();
            match r.verdict(true) {
                Verdict::Won => won += 1,
                Verdict::Lost => lost += 1,
                Verdict::Level => {}
            }
        }
        assert!(
            covered >= trials * 85 / 100,
            "covered {covered} of {trials}"
        );
        assert!(won >= trials * 80 / 100, "won {won} of {trials}");
        assert_eq!(lost, 0);
    }

    #[test]
    fn paired_samples_need_two_boots_for_a_verdict_and_a_positive_pair_for_a_ratio() {
        let one_boot = vec![vec![(2.0, 1.0), (2.1, 1.0), (1.9, 1.0)]];
        let r = paired_ratio_interval(&one_boot, 1).unwrap();
        assert!((r.ratio - 2.0).abs() < 0.1);
        assert_eq!(r.verdict(true), Verdict::Level);
        assert!(paired_ratio_interval(&[vec![(0.0, 1.0), (1.0, f64::NAN)]], 1).is_none());
        let two = vec![vec![(2.0, 1.0), (0.0, 1.0)], vec![(2.2, 1.1)]];
        let r = paired_ratio_interval(&two, 1).unwrap();
        assert_eq!((r.n_a, r.boots_a), (2, 2));
        assert_eq!(r.verdict(true), Verdict::Level, "two pairs are too few");
        let six = vec![
            vec![(2.0, 1.0), (0.0, 1.0), (2.1, 1.0), (1.9, 1.0)],
            vec![(2.2, 1.1), (2.0, 1.05), (2.1, 1.0)],
        ];
        let r = paired_ratio_interval(&six, 1).unwrap();
        assert_eq!((r.n_a, r.boots_a), (6, 2));
        assert_eq!(r.verdict(true), Verdict::Won);
    }

    #[test]
    fn resolution_is_half_the_log_width() {
        let r = RatioInterval {
            ratio: 1.0,
            low: 1.0 / 1.1,
            high: 1.1,
            n_a: 1,
            n_b: 1,
            boots_a: 1,
            boots_b: 1,
        };
        assert!((r.resolution() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn two_boots_of_one_run_give_intervals_too_narrow_for_a_verdict() {
        // 2 boots x 1 run a side at a true ratio of 1.0 (5 % noise a sample): the percentile
        // bootstrap of two values excludes 1.0 far more often than 5 % of the time, so such
        // samples must give no verdict; from 3 boots x 2 runs (the least allowed) the
        // intervals cover 1.0 in at least 85 % of simulated benches again.
        let mut rng = SplitMix64::new(23);
        let trials = 200;
        let (mut excluded, mut called) = (0, 0);
        for t in 0..trials {
            let a = draw(&mut rng, 100.0, 2, 1, 0.0, 0.05);
            let b = draw(&mut rng, 100.0, 2, 1, 0.0, 0.05);
            let r = ratio_interval(&a, &b, t).unwrap();
            if r.low > 1.0 || r.high < 1.0 {
                excluded += 1;
            }
            if r.verdict(true) != Verdict::Level {
                called += 1;
            }
        }
        assert!(
            excluded > trials * 20 / 100,
            "only {excluded} of {trials} too-narrow intervals"
        );
        assert_eq!(called, 0, "a verdict from 2 samples a side");
        let mut covered = 0;
        for t in 0..trials {
            let a = draw(&mut rng, 100.0, 3, 2, 0.0, 0.05);
            let b = draw(&mut rng, 100.0, 3, 2, 0.0, 0.05);
            let r = ratio_interval(&a, &b, t).unwrap();
            assert!(r.enough_for_a_verdict());
            if r.low <= 1.0 && r.high >= 1.0 {
                covered += 1;
            }
        }
        assert!(
            covered >= trials * 85 / 100,
            "covered {covered} of {trials}"
        );
    }
}
