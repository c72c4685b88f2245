//! RART's third evidence stream (SPEC2.md §4.3–4.4): an ensemble of dual-vigilance fuzzy ART
//! novelty detectors over windows of downsampled values, with adaptive vigilance and masking
//! after detections, as designed by ARTime (published constants, written here from the spec).
//!
//! Owns the shared downsampler and the six members; returns the members' mean confidence.
//! Knows nothing about the other evidence streams or the output score.

use crate::numeric::{numpy_sum, py_max, py_min, round_to_decimals};

/// Value-range margins: a member normalises with the probation range widened by margin × range
/// on each side, because later values may leave the probation range.
const MARGINS: [f64; 3] = [0.5, 0.75, 1.0];
/// Quantisation levels of the normalised value; the members are all (margin, levels) pairs.
const LEVELS: [u32; 2] = [80, 120];
/// A normalised value this close to the running median is replaced by the median, so noise
/// around the usual level does not create categories.
const CHOMP: f64 = 0.075;
/// Downsampled samples per feature window.
pub(crate) const WINDOW: usize = 8;
/// Feature length: 8 Haar coefficients of the window shape plus the 8 window values.
const FEATURES: usize = 2 * WINDOW;
/// Input length after complement coding `[f, 1 − f]`.
const CODED: usize = 2 * FEATURES;
/// Index of the newest window value in the coded input, and of its complement.
const NEWEST: usize = FEATURES - 1;
const NEWEST_COMPLEMENT: usize = CODED - 1;
/// Feature windows per probation period; sets the downsampling step.
const WINDOWS_PER_PROBATION: usize = 13;
/// A downsampled value keeps the window's extreme only if it is ≥ 10 % of the mean away.
const SPIKE_FRACTION: f64 = 0.1;
/// Vigilance of the throw-away ART that derives the initial vigilance.
const INITIAL_VIGILANCE: f64 = 0.8;
/// Categories per member; when full, the least recently used is replaced, bounding memory and
/// the cost per sample.
const CATEGORY_CAP: usize = 128;
/// Masking horizon after an anomaly, in downsampled samples (1.5 windows).
const MASK: i64 = 12;
/// 1/√2 as the reference computes it (`1.0 / sqrt(2.0)`), one ulp below `FRAC_1_SQRT_2`.
const HAAR_GAIN: f64 = 0.707_106_781_186_547_5;

// ARTime's vigilance-adaptation and confidence constants, unchanged.
/// Lower vigilance moves this fraction of the way up to the window's lowest match.
const RAISE_LOWER_VIGILANCE: f64 = 0.19;
/// Largest per-sample shortfall counted when lowering the vigilance.
const MAX_SHORTFALL: f64 = 0.37;
/// Shortfalls below this are ignored when lowering the vigilance.
const MIN_SHORTFALL: f64 = 0.05;
/// Smallest step when lowering the vigilance.
const MIN_LOWER_STEP: f64 = 0.01;
/// Upper vigilance never exceeds this.
const MAX_UPPER_VIGILANCE: f64 = 0.97;
/// A new anomaly inside the masking horizon must match worse than this fraction of the last.
const BELOW_LAST_IN_MASK: f64 = 0.90;
/// Outside the horizon but while a new category masks, the fraction is this.
const BELOW_LAST_AFTER_CATEGORY: f64 = 0.70;
/// Weights of the upper and lower vigilance margins and of the newest-value mismatch in the
/// confidence of an anomaly.
const UPPER_WEIGHT: f64 = 0.35;
const LOWER_WEIGHT: f64 = 0.65;
const ENERGY_WEIGHT: f64 = 1.5;
/// Matches are capped below 1 so the confidence's division stays finite.
const MAX_MATCH_IN_CONFIDENCE: f64 = 0.999;
/// The confidence is rounded to 6 decimals, as ARTime reports it.
const CONFIDENCE_DECIMALS: usize = 6;

/// Marks the end of a group's chain in [`FuzzyArt::next_twin`].
const NO_TWIN: u32 = u32::MAX;
/// Marks either end of the use order in [`FuzzyArt::lru_next`] and `lru_previous`.
const NO_LINK: u32 = u32::MAX;

/// What one fuzzy ART step found.
#[derive(Debug, Clone, Copy)]
struct TrainOutcome {
    /// The category label that resonated; `None` when a new cluster had to be created, or when
    /// not learning.
    label: Option<u32>,
    /// Best match value over the categories.
    best_match: f64,
    /// Newest-value similarity of the best-matching category.
    best_energy: f64,
}

/// A dual-vigilance fuzzy ART (fast learning, β = 1) with an activation that also rewards
/// agreement on the newest value, and least-recently-used replacement at the category cap.
#[derive(Debug, Clone)]
struct FuzzyArt {
    weights: Vec<[f64; CODED]>,
    /// Cached numpy-order sums of each weight vector; recomputed whenever a weight changes.
    weight_sums: Vec<f64>,
    /// Each category's weights on the newest value and on its complement, kept apart so the
    /// similarity bound of every category is computed in one vectorised pass. A copy in a
    /// group (see `group`) has NaN as its newest weight, which fails that bound: only
    /// representatives become candidates, at no cost per category.
    newest_weights: Vec<f64>,
    newest_complement_weights: Vec<f64>,
    /// Per category, where its box lies along the sums of the two feature blocks (see
    /// [`BlockSums`]), for a bound on the overlap that needs no pass over the weights.
    block_sums: Vec<BlockSums>,
    /// The best category of the previous presentation: consecutive windows overlap, so its
    /// activation is a good first threshold for pruning the next one.
    previous_best: usize,
    /// The category the previous presentation stored its input in, if it did (else
    /// `usize::MAX`): that input overlaps this one as much as the previous best did, so it is
    /// a second first threshold, often the higher one on a noisy stream.
    previous_stored: usize,
    /// The indices of the kept categories, ascending, in the first `candidate_count` slots;
    /// kept between calls only to reuse the allocation.
    candidates: Vec<u32>,
    candidate_count: usize,
    /// Categories with bit-identical weights form a group; per category, the lowest index in
    /// its group (its representative, itself if alone). Copies of one input that resonate
    /// together learn the same minima for ever, so on a steady stream most resonating
    /// categories are copies (counted on NAB's `exchange-2_cpc`: 35.3 resonating, 9.9
    /// distinct): a group is activated and learns once, through its representative.
    group: Vec<u32>,
    /// Per category, the next higher index in its group, or [`NO_TWIN`].
    next_twin: Vec<u32>,
    /// Per category, whether its weights changed since it was last compared with the other
    /// resonating groups for identity.
    uncompared: Vec<bool>,
    /// Cluster label per category; `None` mirrors the reference's `-1` ("no cluster").
    labels: Vec<Option<u32>>,
    last_use: Vec<i64>,
    /// The categories in order of (last use, index), as a doubly linked list: its head is
    /// the one to replace at the cap, which a scan over all categories found before, on
    /// every presentation that stores a category.
    lru_previous: Vec<u32>,
    lru_next: Vec<u32>,
    lru_head: u32,
    lru_tail: u32,
    cap: usize,
    clusters: u32,
    started: bool,
    lower_vigilance: f64,
    upper_vigilance: f64,
    /// Categories at or above the upper vigilance in the current presentation, with their
    /// activations; kept between calls only to reuse the allocation.
    resonating: Vec<(usize, f64)>,
    /// What a repeat of the last learning presentation's input can reuse.
    repeat: Repeat,
}

/// The last learning presentation's input, the upper vigilance it met, and the groups (by
/// representative) that contain the input after it: those that resonated and learned it, or
/// the new copy of it. Steady streams present the same window again and again (on NAB's
/// `machine_temperature_system_failure` 36 % of presentations repeat the previous input).
#[derive(Debug, Clone)]
struct Repeat {
    /// False until a learning presentation has filled the rest.
    valid: bool,
    input: [f64; CODED],
    upper_vigilance: f64,
    containing: Vec<usize>,
}

impl FuzzyArt {
    fn new(cap: usize) -> Self {
        Self {
            weights: Vec::with_capacity(cap),
            weight_sums: Vec::with_capacity(cap),
            newest_weights: Vec::with_capacity(cap),
            newest_complement_weights: Vec::with_capacity(cap),
            block_sums: Vec::with_capacity(cap),
            previous_best: 0,
            previous_stored: usize::MAX,
            candidates: Vec::with_capacity(cap),
            candidate_count: 0,
            group: Vec::with_capacity(cap),
            next_twin: Vec::with_capacity(cap),
            uncompared: Vec::with_capacity(cap),
            labels: Vec::with_capacity(cap),
            last_use: Vec::with_capacity(cap),
            lru_previous: Vec::with_capacity(cap),
            lru_next: Vec::with_capacity(cap),
            lru_head: NO_LINK,
            lru_tail: NO_LINK,
            cap,
            clusters: 0,
            started: false,
            lower_vigilance: 0.0,
            upper_vigilance: 0.0,
            resonating: Vec::new(),
            repeat: Repeat {
                valid: false,
                input: [0.0; CODED],
                upper_vigilance: 0.0,
                containing: Vec::new(),
            },
        }
    }

    /// The slot for a new category: the next free one, or the least recently used.
    fn slot(&mut self) -> usize {
        if self.weights.len() < self.cap {
            self.weights.push([0.0; CODED]);
            self.weight_sums.push(0.0);
            self.newest_weights.push(0.0);
            self.newest_complement_weights.push(0.0);
            self.block_sums.push(BlockSums::default());
            self.group.push(self.weights.len() as u32 - 1);
            self.next_twin.push(NO_TWIN);
            self.uncompared.push(true);
            self.labels.push(None);
            self.last_use.push(0);
            self.lru_previous.push(NO_LINK);
            self.lru_next.push(NO_LINK);
            // Linked when it is stored.
            return self.weights.len() - 1;
        }
        // The first least recently used.
        self.lru_head as usize
    }

    fn store(&mut self, slot: usize, weights: [f64; CODED], label: Option<u32>, tick: i64) {
        self.leave_group(slot);
        self.set_weights(slot, weights);
        self.labels[slot] = label;
        self.touch(slot, tick);
    }

    /// Records a use of `category` at `tick` and moves it to its place in the use order:
    /// after every category used earlier, and after those used at `tick` with a lower index.
    /// Ticks only grow, so that is at or next to the tail.
    fn touch(&mut self, category: usize, tick: i64) {
        self.last_use[category] = tick;
        self.unlink(category);
        let mut after = self.lru_tail;
        while after != NO_LINK {
            let used = self.last_use[after as usize];
            if used < tick || (used == tick && (after as usize) < category) {
                break;
            }
            after = self.lru_previous[after as usize];
        }
        let before = if after == NO_LINK {
            std::mem::replace(&mut self.lru_head, category as u32)
        } else {
            std::mem::replace(&mut self.lru_next[after as usize], category as u32)
        };
        if before == NO_LINK {
            self.lru_tail = category as u32;
        } else {
            self.lru_previous[before as usize] = category as u32;
        }
        self.lru_previous[category] = after;
        self.lru_next[category] = before;
    }

    /// Takes `category` out of the use order, if it is in it.
    fn unlink(&mut self, category: usize) {
        let (previous, next) = (self.lru_previous[category], self.lru_next[category]);
        if previous != NO_LINK {
            self.lru_next[previous as usize] = next;
        } else if self.lru_head as usize == category {
            self.lru_head = next;
        } else {
            return;
        }
        if next != NO_LINK {
            self.lru_previous[next as usize] = previous;
        } else {
            self.lru_tail = previous;
        }
        self.lru_previous[category] = NO_LINK;
        self.lru_next[category] = NO_LINK;
    }

    /// Fast learning `w ← min(x, w)` in place for a group, through its representative. A
    /// group that already contains `x` (often most of those resonating with a steady stream)
    /// keeps its cached sums; otherwise every copy takes the representative's new weights.
    fn learn(&mut self, representative: usize, x: &[f64; CODED]) {
        let weights = &mut self.weights[representative];
        let mut changed = false;
        for (weight, &value) in weights.iter_mut().zip(x) {
            let learned = lesser(value, *weight);
            // `!=` is also true for NaN, which then refreshes the caches as before.
            changed |= learned != *weight;
            *weight = learned;
        }
        if !changed {
            return;
        }
        self.refresh_cache(representative);
        let mut twin = self.next_twin[representative];
        while twin != NO_TWIN {
            let copy = twin as usize;
            self.weights[copy] = self.weights[representative];
            self.weight_sums[copy] = self.weight_sums[representative];
            self.newest_complement_weights[copy] = self.newest_complement_weights[representative];
            self.block_sums[copy] = self.block_sums[representative];
            twin = self.next_twin[copy];
        }
    }

    /// The highest index in the group of `representative`.
    fn last_twin(&self, representative: usize) -> usize {
        let mut last = representative;
        while self.next_twin[last] != NO_TWIN {
            last = self.next_twin[last] as usize;
        }
        last
    }

    /// Takes `category` out of its group (its weights are about to be replaced); the next
    /// index in the group represents the rest.
    fn leave_group(&mut self, category: usize) {
        let representative = self.group[category] as usize;
        let next = self.next_twin[category];
        if representative == category {
            if next != NO_TWIN {
                self.newest_weights[next as usize] = self.weights[next as usize][NEWEST];
                let mut member = next;
                while member != NO_TWIN {
                    self.group[member as usize] = next;
                    member = self.next_twin[member as usize];
                }
            }
        } else {
            let mut previous = representative;
            while self.next_twin[previous] as usize != category {
                previous = self.next_twin[previous] as usize;
            }
            self.next_twin[previous] = next;
        }
        self.group[category] = category as u32;
        self.next_twin[category] = NO_TWIN;
    }

    /// Joins the groups of representatives `a` and `b`, whose weights are bit-identical: the
    /// chains merge in index order and the lower index represents both.
    fn join_groups(&mut self, a: usize, b: usize) {
        let (low, high) = (a.min(b), a.max(b));
        let (mut left, mut right) = (self.next_twin[low], high as u32);
        let mut tail = low;
        while left != NO_TWIN || right != NO_TWIN {
            let take = if right == NO_TWIN || (left != NO_TWIN && left < right) {
                let taken = left;
                left = self.next_twin[taken as usize];
                taken
            } else {
                let taken = right;
                right = self.next_twin[taken as usize];
                taken
            };
            self.next_twin[tail] = take;
            self.group[take as usize] = low as u32;
            self.newest_weights[take as usize] = f64::NAN;
            tail = take as usize;
        }
        self.next_twin[tail] = NO_TWIN;
    }

    /// Joins the groups among `representatives` whose weights became bit-identical.
    /// Only groups whose weights changed since they were last compared are compared: identical
    /// weights resonate together, so two groups that have not changed since were compared at
    /// the first resonance after the later change, and found different.
    fn join_identical(&mut self, representatives: &[(usize, f64)]) {
        for &(a, _) in representatives {
            if !std::mem::take(&mut self.uncompared[a]) {
                continue;
            }
            for &(b, _) in representatives {
                if self.group[a] as usize != a {
                    break;
                }
                if b != a
                    && self.group[b] as usize == b
                    && self.weight_sums[a].to_bits() == self.weight_sums[b].to_bits()
                    && bit_identical(&self.weights[a], &self.weights[b])
                {
                    self.join_groups(a, b);
                }
            }
        }
    }

    /// Replaces a category's weights and everything cached from them.
    fn set_weights(&mut self, category: usize, weights: [f64; CODED]) {
        self.weights[category] = weights;
        self.refresh_cache(category);
    }

    /// Recomputes what is cached from a category's weights.
    fn refresh_cache(&mut self, category: usize) {
        let weights = &self.weights[category];
        self.weight_sums[category] = numpy_sum(weights);
        self.newest_weights[category] = weights[NEWEST];
        self.newest_complement_weights[category] = weights[NEWEST_COMPLEMENT];
        self.block_sums[category] = BlockSums::of(weights);
        self.uncompared[category] = true;
    }

    /// One presentation of the coded input `x`.
    ///
    /// The reference sorts all activations and visits them in descending order until one
    /// fails; only the categories at or above the upper vigilance and the best one below it can
    /// be visited, so those are all that is ordered here. The outcome is the same.
    fn train(&mut self, x: &[f64; CODED], learning: bool, tick: i64) -> TrainOutcome {
        if !self.started {
            // The first presentation only seeds an all-ones category.
            self.started = true;
            let slot = self.slot();
            self.clusters = 1;
            self.store(slot, [1.0; CODED], Some(1), 0);
            return TrainOutcome {
                label: Some(1),
                best_match: 0.0,
                best_energy: 0.0,
            };
        }
        if learning && let Some(outcome) = self.train_repeat(x, tick) {
            return outcome;
        }
        // Filled in place: the input is 256 bytes, and moving it about cost a copy each time.
        let repeat = &mut self.repeat;
        repeat.valid = false;
        repeat.input = *x;
        repeat.upper_vigilance = self.upper_vigilance;
        repeat.containing.clear();
        let activation = self.activate(x);
        self.previous_stored = usize::MAX;
        let (best_match, best_energy) = activation
            .best
            .map_or((0.0, 0.0), |best| (best.activation, best.energy));
        if !learning {
            return TrainOutcome {
                label: None,
                best_match,
                best_energy,
            };
        }
        if let Some(best) = activation.best {
            self.touch(best.index, tick);
        }
        if self.resonating.is_empty() {
            // Only the best category below the upper vigilance is visited; if it clears the
            // lower vigilance a copy of the input joins its cluster, otherwise a new cluster.
            if let Some(first) = activation.best_below_upper
                && first.activation >= self.lower_vigilance
            {
                let joined = if first.activation >= best_match {
                    self.labels[first.index]
                } else {
                    None
                };
                let slot = self.slot();
                self.store(slot, *x, joined, tick);
                self.previous_stored = slot;
                self.repeat.containing.push(slot);
                self.repeat.valid = true;
                return TrainOutcome {
                    label: joined,
                    best_match,
                    best_energy,
                };
            }
            self.clusters += 1;
            let slot = self.slot();
            let cluster = self.clusters;
            self.store(slot, *x, Some(cluster), tick);
            self.previous_stored = slot;
            self.repeat.containing.push(slot);
            self.repeat.valid = true;
            return TrainOutcome {
                label: None,
                best_match,
                best_energy,
            };
        }
        // Every category at or above the upper vigilance learns (fast learning: w ← min(x, w));
        // the label is that of the last one, in visiting order, that ties the best match.
        let resonating = std::mem::take(&mut self.resonating);
        // The reference visits them in descending activation, ties in index order (a stable
        // argsort). Only ties with the best match pass the label test, as no activation
        // exceeds it, so the last to pass is the highest index among them, and each category
        // learns from `x` alone: index order gives the same outcome without the sort. A
        // group's copies tie with its representative, and its last copy has its highest index.
        let mut last_tie = None;
        for &(representative, group_activation) in &resonating {
            if group_activation >= best_match {
                last_tie = last_tie.max(Some(self.last_twin(representative)));
            }
            self.learn(representative, x);
        }
        self.join_identical(&resonating);
        self.repeat
            .containing
            .extend(resonating.iter().map(|&(representative, _)| representative));
        self.repeat.valid = true;
        self.resonating = resonating;
        TrainOutcome {
            label: last_tie.and_then(|category| self.labels[category]),
            best_match,
            best_energy,
        }
    }

    /// A learning presentation of the same input as the last one, at the same upper
    /// vigilance, decided without activating every category; `None` when that cannot be done.
    ///
    /// The groups that contain `x` (`w ≤ x`, bit for bit after `w ← min(x, w)`) have
    /// `min(x, w) = w`, summed in the same order as `|w|`, so their activation is exactly 1
    /// unless `|w|` or their newest-value weight is 0. Every other category is unchanged since
    /// the last presentation, where it stayed below the upper vigilance, as it does now, so
    /// below 1. The containing groups therefore resonate, tie at 1 (the lowest index is the
    /// best, the highest gives the label) and learn nothing.
    fn train_repeat(&mut self, x: &[f64; CODED], tick: i64) -> Option<TrainOutcome> {
        let repeat = &self.repeat;
        if !repeat.valid
            || repeat.upper_vigilance.to_bits() != self.upper_vigilance.to_bits()
            || self.upper_vigilance > 1.0
            || !bit_identical(&repeat.input, x)
        {
            return None;
        }
        let (mut best, mut last_tie) = (usize::MAX, 0);
        for &representative in &repeat.containing {
            // A group joined into another after learning is represented there too.
            if self.group[representative] as usize != representative {
                continue;
            }
            let newest_total = self.newest_weights[representative]
                + self.newest_complement_weights[representative];
            if self.weight_sums[representative] == 0.0 || newest_total == 0.0 {
                return None;
            }
            best = best.min(representative);
            last_tie = last_tie.max(self.last_twin(representative));
        }
        if best == usize::MAX {
            return None;
        }
        self.touch(best, tick);
        self.previous_best = best;
        Some(TrainOutcome {
            label: self.labels[last_tie],
            best_match: 1.0,
            best_energy: 1.0,
        })
    }

    /// The newest-value overlap `|min(x, w)|` of category `index` and its weight `|w|`, over
    /// the newest value and its complement.
    #[inline(always)]
    fn newest_overlap(&self, x: &[f64; CODED], index: usize) -> (f64, f64) {
        let (newest, complement) = (
            self.newest_weights[index],
            self.newest_complement_weights[index],
        );
        (
            lesser(x[NEWEST], newest) + lesser(x[NEWEST_COMPLEMENT], complement),
            newest + complement,
        )
    }

    /// The activation's denominator `|w|` of category `index` (0.001 for an all-zero category).
    #[inline(always)]
    fn norm(&self, index: usize) -> f64 {
        let weight_sum = self.weight_sums[index];
        if weight_sum == 0.0 { 0.001 } else { weight_sum }
    }

    /// Activation of category `index` from its overlap `|min(x, w)|` and its newest-value
    /// similarity `energy`.
    #[inline(always)]
    fn activation(&self, index: usize, overlap: f64, energy: f64) -> f64 {
        let fuzzy = overlap / self.norm(index);
        fuzzy * fuzzy * fuzzy * (energy * energy)
    }

    /// Fills `candidates` with the categories whose squared similarity may reach
    /// `threshold`, in index order. The test has no division or branch, so its pass over all
    /// categories vectorises, and it sets one bit of a mask per kept category (an AND with
    /// that category's bit and an OR, also vectorised); only the set bits are then visited.
    /// A few dozen of 128 categories pass on a short-period stream, and the branch-free
    /// gather over all of them that this replaced was 12 % of RART's time there. The
    /// comparison is made with a relative slack of 1e-9, a million times any rounding error
    /// here, so it only ever keeps too many.
    fn keep_candidates(&mut self, x: &[f64; CODED], threshold: f64) {
        const CHUNK: usize = 64;
        const BIT: [u64; CHUNK] = {
            let mut bits = [0; CHUNK];
            let mut index = 0;
            while index < CHUNK {
                bits[index] = 1 << index;
                index += 1;
            }
            bits
        };
        let (newest, complement) = (x[NEWEST], x[NEWEST_COMPLEMENT]);
        let limit = threshold * (1.0 - 1e-9);
        let categories = self.newest_weights.len();
        if self.candidates.len() < categories {
            self.candidates.resize(categories, 0);
        }
        let mut count = 0;
        let chunks = self
            .newest_weights
            .chunks(CHUNK)
            .zip(self.newest_complement_weights.chunks(CHUNK));
        for (chunk, (newest_weights, complement_weights)) in chunks.enumerate() {
            let mut kept = newest_weights
                .iter()
                .zip(complement_weights)
                .zip(&BIT)
                .fold(0, |kept, ((&w_newest, &w_complement), &bit)| {
                    // A copy's NaN makes `overlap` NaN (`lesser` returns its second argument
                    // when the comparison fails), and the test false.
                    let overlap = lesser(newest, w_newest) + lesser(complement, w_complement);
                    let total = w_newest + w_complement;
                    let reaches = -i64::from(overlap * overlap >= limit * total * total);
                    kept | (reaches as u64 & bit)
                });
            while kept != 0 {
                self.candidates[count] = (chunk * CHUNK) as u32 + kept.trailing_zeros();
                count += 1;
                kept &= kept - 1;
            }
        }
        self.candidate_count = count;
    }

    /// Keeps, of the `candidates`, those whose activation bound from the block sums may reach
    /// `threshold`: the overlap `|min(x, w)|` falls short of `|w|` by at least the distance
    /// of the input's block sums from the category's (see [`BlockSums`]). On the benchmark's
    /// short-period stream this ruled out three of every four candidates the newest-value
    /// bound left (counted: 12.9 of 17.3), without reading their weights and without a
    /// data-dependent branch per candidate. An absolute slack of 1e-9 and the relative 1e-9
    /// cover all rounding, so it only ever keeps too many.
    fn screen_candidates(&mut self, x: &[f64; CODED], threshold: f64) {
        if threshold <= 0.0 {
            return;
        }
        let limit = threshold * (1.0 - 1e-9);
        let shape: f64 = x[..WINDOW].iter().sum();
        let window: f64 = x[WINDOW..FEATURES].iter().sum();
        let mut candidates = std::mem::take(&mut self.candidates);
        let mut count = 0;
        for position in 0..self.candidate_count {
            let index = candidates[position] as usize;
            let shortfall = self.block_sums[index].distance(shape, window);
            let weight_sum = self.weight_sums[index];
            let most = (weight_sum - shortfall).max(0.0) + 1e-9;
            let norm = self.norm(index);
            let (newest_overlap, newest_total) = self.newest_overlap(x, index);
            let reaches = most * most * most * (newest_overlap * newest_overlap)
                >= limit * (norm * norm * norm) * (newest_total * newest_total);
            // `count <= position`: a kept index moves down over a dropped one.
            candidates[count] = index as u32;
            count += usize::from(reaches);
        }
        self.candidate_count = count;
        self.candidates = candidates;
    }

    /// Activation of every category: (|min(x, w)| / |w|)³ · (newest-value similarity)².
    /// Collects the groups at or above the upper vigilance in `resonating` (by representative,
    /// in index order) and returns the best category and the best one below the upper
    /// vigilance. Only representatives are activated: a copy ties with its representative
    /// and comes after it, so it is never the first of a tie.
    ///
    /// The reference sorts all activations and visits them in descending order until one
    /// fails; only those categories can ever be visited, so they are all that is kept.
    ///
    /// A category whose activation is below both the upper vigilance and some category's
    /// activation can be none of the three, so it is skipped, in stages of rising cost. The
    /// first threshold is the activation of the previous presentation's best category
    /// (consecutive windows overlap, so it is usually close to this one's best): the squared
    /// similarity bounds the activation (the fuzzy part is at most 1 and rounding is
    /// monotone), checked for all categories at once, then the block-sum bound for the
    /// candidates left. The scan then checks the similarity bound against the running best,
    /// compares by products instead of quotients (with the same 1e-9 slack), and only the few
    /// that pass pay for the two divisions of the exact activation. A NaN similarity (a
    /// degenerate category) is skipped too, as the reference never visits NaN activations.
    fn activate(&mut self, x: &[f64; CODED]) -> Activation {
        self.resonating.clear();
        let upper = self.upper_vigilance;
        let seed = self
            .group
            .get(self.previous_best)
            .map_or(self.previous_best, |&group| group as usize);
        let exact = |index: usize| {
            let (newest_overlap, newest_total) = self.newest_overlap(x, index);
            let overlap = overlap_sum(x, &self.weights[index]);
            self.activation(index, overlap, newest_overlap / newest_total)
        };
        let seed_activation = (seed < self.weights.len()).then(|| exact(seed));
        let stored = self
            .group
            .get(self.previous_stored)
            .map(|&group| group as usize)
            .filter(|&stored| stored != seed);
        let stored_activation = stored.map(exact);
        // `>` is false for NaN: then nothing is pruned up front (nor is a NaN-similarity seed,
        // whose activation is NaN too).
        let known = [seed_activation, stored_activation]
            .into_iter()
            .flatten()
            .filter(|&activation| activation > 0.0)
            .fold(0.0, f64::max);
        let threshold = if known > 0.0 {
            py_min(upper, known)
        } else {
            0.0
        };
        self.keep_candidates(x, threshold);
        self.screen_candidates(x, threshold);
        let mut best: Option<Candidate> = None;
        let mut best_below_upper: Option<Candidate> = None;
        for position in 0..self.candidate_count {
            let index = self.candidates[position] as usize;
            let best_so_far = best.map_or(0.0, |b| b.activation);
            let floor = py_min(upper, best_so_far);
            let (newest_overlap, newest_total) = self.newest_overlap(x, index);
            let limit = floor * (1.0 - 1e-9);
            if newest_overlap * newest_overlap < limit * newest_total * newest_total {
                continue;
            }
            let seeded = if index == seed {
                seed_activation
            } else if Some(index) == stored {
                stored_activation
            } else {
                None
            };
            let overlap = match seeded {
                Some(_) => 0.0,
                None => {
                    let overlap = overlap_sum(x, &self.weights[index]);
                    let norm = self.norm(index);
                    let scaled = overlap * overlap * overlap * (newest_overlap * newest_overlap);
                    let needed = limit * (norm * norm * norm) * (newest_total * newest_total);
                    if scaled < needed {
                        continue;
                    }
                    overlap
                }
            };
            let energy = newest_overlap / newest_total;
            let bound = energy * energy;
            if bound.is_nan() || bound < floor {
                continue;
            }
            let activation = seeded.unwrap_or_else(|| self.activation(index, overlap, energy));
            let candidate = Candidate {
                index,
                activation,
                energy,
            };
            // Strictly greater: among equal activations the lowest index comes first.
            if activation > best_so_far {
                best = Some(candidate);
            }
            if activation >= upper {
                self.resonating.push((index, activation));
            } else if best_below_upper.is_none_or(|b| activation > b.activation) {
                best_below_upper = Some(candidate);
            }
        }
        if let Some(best) = best {
            self.previous_best = best.index;
        }
        Activation {
            best,
            best_below_upper,
        }
    }
}

/// A category's weights summed over each feature block (the shape coefficients, the window
/// values) and over their complements: along the block's sum, its box spans
/// `[low, BLOCK − complement]`.
///
/// For a block `B`, `Σ_B max(0, w − x) ≥ max(0, Σ_B w − Σ_B x)` and, with the complements,
/// `Σ_B max(0, w' − x') ≥ max(0, Σ_B x − (|B| − Σ_B w'))` (as `x' = 1 − x`), so the overlap
/// `|min(x, w)| = |w| − Σ max(0, w − x)` is at most `|w|` less the distance of the input's
/// block sums from these intervals.
#[derive(Debug, Clone, Copy, Default)]
struct BlockSums {
    shape_low: f64,
    shape_high: f64,
    window_low: f64,
    window_high: f64,
}

impl BlockSums {
    fn of(weights: &[f64; CODED]) -> Self {
        let sum = |range: std::ops::Range<usize>| weights[range].iter().sum::<f64>();
        let block = WINDOW as f64;
        Self {
            shape_low: sum(0..WINDOW),
            shape_high: block - sum(FEATURES..FEATURES + WINDOW),
            window_low: sum(WINDOW..FEATURES),
            window_high: block - sum(FEATURES + WINDOW..CODED),
        }
    }

    /// A lower bound of `Σ max(0, w − x)` over all 32 values, from the input's block sums.
    #[inline(always)]
    fn distance(&self, shape: f64, window: f64) -> f64 {
        let positive = |v: f64| if v > 0.0 { v } else { 0.0 };
        (positive(self.shape_low - shape) + positive(shape - self.shape_high))
            + (positive(self.window_low - window) + positive(window - self.window_high))
    }
}

/// A category's activation and newest-value similarity.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: usize,
    activation: f64,
    energy: f64,
}

/// What a presentation activated.
#[derive(Debug, Clone, Copy)]
struct Activation {
    /// The first category in the reference's visiting order, if any activation is above 0.
    best: Option<Candidate>,
    /// The first category below the upper vigilance in visiting order.
    best_below_upper: Option<Candidate>,
}

/// Whether two weight vectors are equal bit for bit (so also in the sign of a zero).
fn bit_identical(a: &[f64; CODED], b: &[f64; CODED]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// `min(a, b)` as numpy's `minimum` for non-NaN input, written so it compiles to `minpd`.
#[inline(always)]
fn lesser(a: f64, b: f64) -> f64 {
    if a < b { a } else { b }
}

/// numpy's sum of `min(x, w)` over 32 values: 8 lanes over 4 blocks, then a pairwise fold
/// (the same order as [`numpy_sum`], unrolled so the compiler vectorises it).
#[inline(always)]
fn overlap_sum(x: &[f64; CODED], w: &[f64; CODED]) -> f64 {
    let mut lanes: [f64; 8] = std::array::from_fn(|l| lesser(x[l], w[l]));
    for block in 1..CODED / 8 {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += lesser(x[block * 8 + l], w[block * 8 + l]);
        }
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// A fixed-length window of the most recent values, oldest first when iterated.
#[derive(Debug, Clone)]
struct Recent {
    values: Vec<f64>,
    next: usize,
}

impl Recent {
    fn filled(length: usize, value: f64) -> Self {
        Self {
            values: vec![value; length],
            next: 0,
        }
    }

    fn push(&mut self, value: f64) {
        if self.values.is_empty() {
            return;
        }
        self.values[self.next] = value;
        // A compare, not `%`: an integer division per push was measurable at one push per row.
        self.next += 1;
        if self.next == self.values.len() {
            self.next = 0;
        }
    }

    fn oldest_first(&self) -> impl Iterator<Item = f64> + '_ {
        self.values[self.next..]
            .iter()
            .chain(&self.values[..self.next])
            .copied()
    }
}

/// Approximate running median of quantised levels (a histogram and a pointer that moves one
/// occupied level at a time), as ARTime keeps it.
#[derive(Debug, Clone)]
struct RunningMedian {
    counts: Vec<u64>,
    level: usize,
    below: i64,
    above: i64,
}

impl RunningMedian {
    fn new(levels: u32) -> Self {
        Self {
            counts: vec![0; levels as usize + 1],
            level: 0,
            below: 0,
            above: 0,
        }
    }

    /// Adds sample number `sample` (1-based) at `level` and returns the median level.
    fn push(&mut self, level: usize, sample: i64) -> usize {
        self.counts[level] += 1;
        let position = sample / 2;
        if sample == 1 {
            self.level = level;
        }
        if self.level > level {
            self.below += 1;
        } else if self.level < level {
            self.above += 1;
        }
        let count = |counts: &[u64], level: usize| counts.get(level).map_or(0, |&c| c as i64);
        if position < self.above {
            self.below += count(&self.counts, self.level);
            self.level += 1;
            // The loop ends inside the histogram: more samples lie above than the median
            // position, so some higher level is occupied.
            while self.level + 1 < self.counts.len() && self.counts[self.level] == 0 {
                self.level += 1;
            }
            self.above -= count(&self.counts, self.level);
        } else if position < self.below {
            self.above += count(&self.counts, self.level);
            self.level = self.level.saturating_sub(1);
            while self.level > 0 && self.counts[self.level] == 0 {
                self.level -= 1;
            }
            self.below -= count(&self.counts, self.level);
        }
        self.level
    }
}

/// Full 3-level orthonormal Haar transform of 8 values: `[s3, d3, d2(2), d1(4)]`.
fn haar8(v: &[f64; WINDOW]) -> [f64; WINDOW] {
    let c = HAAR_GAIN;
    let a = [
        (v[0] + v[1]) * c,
        (v[2] + v[3]) * c,
        (v[4] + v[5]) * c,
        (v[6] + v[7]) * c,
    ];
    let b0 = (a[0] + a[1]) * c;
    let b1 = (a[2] + a[3]) * c;
    [
        (b0 + b1) * c,
        (b0 - b1) * c,
        (a[0] - a[1]) * c,
        (a[2] - a[3]) * c,
        (v[0] - v[1]) * c,
        (v[2] - v[3]) * c,
        (v[4] - v[5]) * c,
        (v[6] - v[7]) * c,
    ]
}

/// Shifts values to start at 0 and scales them to end at 1 (unless they are all equal).
///
/// The values are quantised levels in [0, 1] or their Haar coefficients, never NaN, so plain
/// compares find the same extremes as `f64::min`/`max`, whose NaN handling cost 4 % of the
/// time at a short probationary period.
fn rescale_to_unit<const N: usize>(values: &[f64; N]) -> [f64; N] {
    debug_assert!(values.iter().all(|v| !v.is_nan()), "{values:?}");
    let min = values.iter().copied().fold(f64::INFINITY, lesser);
    let mut shifted = values.map(|v| v - min);
    let max = shifted
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, |a, b| if a > b { a } else { b });
    if max != 0.0 {
        for value in &mut shifted {
            *value /= max;
        }
    }
    shifted
}

/// The dot product in the summation order of the reference's BLAS (OpenBLAS' SkylakeX `ddot`
/// kernel for 16 values): four lanes over the four quarter-vectors, then a pairwise fold.
/// Any order is mathematically equal; this one keeps ties between similarity sums identical
/// to the reference, which decide the order of the vigilance derivation.
fn dot16(x: &[f64; FEATURES], y: &[f64; FEATURES]) -> f64 {
    let p: [f64; FEATURES] = std::array::from_fn(|i| x[i] * y[i]);
    let lane = |l: usize| ((p[l] + p[4 + l]) + p[8 + l]) + p[12 + l];
    (lane(0) + lane(2)) + (lane(1) + lane(3))
}

fn complement_coded(features: &[f64; FEATURES]) -> [f64; CODED] {
    let mut coded = [0.0; CODED];
    coded[..FEATURES].copy_from_slice(features);
    for (complement, &feature) in coded[FEATURES..].iter_mut().zip(features) {
        *complement = 1.0 - feature;
    }
    coded
}

/// The initial vigilance of a member: a throw-away ART at vigilance 0.8 learns the probation
/// windows, least typical first (ascending total cosine similarity), and the mean best match
/// over its second half is how similar this stream's windows usually are.
fn initial_vigilance(features: &[[f64; FEATURES]], trend_window: usize) -> f64 {
    let count = features.len();
    if count == 0 {
        return INITIAL_VIGILANCE;
    }
    let norms: Vec<f64> = features
        .iter()
        .map(|f| numpy_sum(&f.map(|v| v * v)).sqrt())
        .collect();
    let mut similarity = vec![1.0; count * count];
    for a in 0..count {
        for b in 0..a {
            let cosine = if norms[a] == 0.0 {
                1.0 - norms[b]
            } else if norms[b] == 0.0 {
                1.0 - norms[a]
            } else {
                dot16(&features[a], &features[b]) / (norms[a] * norms[b])
            };
            similarity[a * count + b] = cosine;
            similarity[b * count + a] = cosine;
        }
    }
    // Column sums accumulate row by row, as numpy reduces axis 0.
    let mut column_sums = vec![0.0; count];
    for row in similarity.chunks_exact(count) {
        for (sum, &value) in column_sums.iter_mut().zip(row) {
            *sum += value;
        }
    }
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by(|&a, &b| column_sums[a].total_cmp(&column_sums[b]));

    let mut probe = FuzzyArt::new(count + 2);
    probe.lower_vigilance = INITIAL_VIGILANCE;
    probe.upper_vigilance = INITIAL_VIGILANCE;
    let (mut total, mut counted) = (0.0, 0_usize);
    for (position, &index) in order.iter().enumerate() {
        let outcome = probe.train(&complement_coded(&features[index]), true, position as i64);
        if position + 1 >= trend_window / 2 {
            total += outcome.best_match;
            counted += 1;
        }
    }
    total / counted.max(1) as f64
}

/// One ensemble member: a (margin, levels) normalisation, its feature window and its ART.
#[derive(Debug, Clone)]
struct ArtMember {
    value_min: f64,
    value_span: f64,
    levels: u32,
    trend_window: usize,
    median: RunningMedian,
    feature_window: [f64; WINDOW],
    probation_features: Option<Vec<[f64; FEATURES]>>,
    art: FuzzyArt,
    last_anomaly_sample: i64,
    last_anomaly_match: f64,
    last_vigilance_update: i64,
    mask_after_category: bool,
    samples_without_new_category: i64,
    anomaly_match_sum: f64,
    anomaly_count: u64,
    last_anomaly_lowest_match: f64,
    match_sum: f64,
    match_count: u64,
    recent_matches: Recent,
    recent_shortfalls: Recent,
}

impl ArtMember {
    fn new(low: f64, high: f64, margin: f64, levels: u32, trend_window: usize) -> Self {
        let range = high - low;
        let value_min = low - margin * range;
        let value_max = high + margin * range;
        Self {
            value_min,
            value_span: value_max - value_min,
            levels,
            trend_window,
            median: RunningMedian::new(levels),
            feature_window: [0.0; WINDOW],
            probation_features: Some(Vec::with_capacity(trend_window)),
            art: FuzzyArt::new(CATEGORY_CAP),
            last_anomaly_sample: 0,
            last_anomaly_match: 0.0,
            last_vigilance_update: 0,
            mask_after_category: false,
            samples_without_new_category: 0,
            anomaly_match_sum: 0.0,
            anomaly_count: 0,
            last_anomaly_lowest_match: 0.0,
            match_sum: 0.0,
            match_count: 0,
            recent_matches: Recent::filled(trend_window / 2 + 1, 1.0),
            recent_shortfalls: Recent::filled(trend_window + 1, 0.0),
        }
    }

    /// Normalises, quantises and median-snaps downsampled sample number `sample` (1-based),
    /// and returns the feature vector of the window it completes (zeros until 8 samples).
    fn features(&mut self, downsampled: f64, sample: i64) -> [f64; FEATURES] {
        let mut value = downsampled - self.value_min;
        if self.value_span != 0.0 {
            value /= self.value_span;
        }
        value = py_min(1.0, py_max(0.0, value));
        let level = (value * f64::from(self.levels)).round_ties_even() as usize;
        value = level as f64 / f64::from(self.levels);
        let median_level = self.median.push(level, sample);
        let median = median_level as f64 / f64::from(self.levels);
        if (value - median).abs() < CHOMP {
            value = median;
        }
        self.feature_window.copy_within(1.., 0);
        self.feature_window[WINDOW - 1] = value;
        let mut features = [0.0; FEATURES];
        if sample >= WINDOW as i64 {
            let shape = haar8(&rescale_to_unit(&self.feature_window));
            features[..WINDOW].copy_from_slice(&rescale_to_unit(&shape));
            features[WINDOW..].copy_from_slice(&self.feature_window);
        }
        features
    }

    /// Processes downsampled sample `sample`; returns the member's anomaly confidence (0 when
    /// there is no anomaly, and always 0 during the probation windows).
    fn process(&mut self, downsampled: f64, sample: i64) -> f64 {
        let features = self.features(downsampled, sample);
        if sample <= self.trend_window as i64 {
            let Some(mut collected) = self.probation_features.take() else {
                return 0.0;
            };
            collected.push(features);
            if sample == self.trend_window as i64 {
                let skip = (WINDOW - 1).min(collected.len());
                let vigilance = initial_vigilance(&collected[skip..], self.trend_window);
                self.art.lower_vigilance = vigilance;
                self.art.upper_vigilance = vigilance;
                for (index, replayed) in collected.iter().enumerate() {
                    self.detect(replayed, index as i64 + 1);
                }
            } else {
                self.probation_features = Some(collected);
            }
            return 0.0;
        }
        self.detect(&features, sample)
    }

    fn detect(&mut self, features: &[f64; FEATURES], sample: i64) -> f64 {
        let trend_window = self.trend_window as i64;
        let since_anomaly = sample - self.last_anomaly_sample;
        let update_after_anomaly = since_anomaly == MASK;
        let update_trend = sample - self.last_vigilance_update >= trend_window / 2;
        let mask_after_anomaly = since_anomaly <= MASK;
        if sample > trend_window + MASK
            && self.mask_after_category
            && self.samples_without_new_category >= MASK
        {
            self.mask_after_category = false;
        }
        let coded = complement_coded(features);
        let (label, outcome) = if sample < WINDOW as i64 {
            (None, self.art.train(&coded, false, sample))
        } else {
            let outcome = self.art.train(&coded, true, sample);
            (outcome.label, outcome)
        };
        let best_match = outcome.best_match;
        self.samples_without_new_category = match label {
            None => 0,
            Some(_) => self.samples_without_new_category + 1,
        };
        self.match_sum += best_match;
        self.match_count += 1;
        self.recent_matches.push(best_match);
        self.recent_shortfalls
            .push(self.art.upper_vigilance - best_match);
        if since_anomaly < MASK
            && self.anomaly_count > 0
            && best_match < self.last_anomaly_lowest_match
        {
            // Keep the lowest match of the anomaly in progress.
            self.anomaly_match_sum += best_match - self.last_anomaly_lowest_match;
            self.last_anomaly_lowest_match = best_match;
        }
        let masking = self.mask_after_category || mask_after_anomaly;
        let below_last = best_match
            < self.last_anomaly_match
                * if mask_after_anomaly {
                    BELOW_LAST_IN_MASK
                } else {
                    BELOW_LAST_AFTER_CATEGORY
                };
        let mut confidence = 0.0;
        if sample > trend_window && label.is_none() && (!masking || below_last) {
            let capped = py_min(MAX_MATCH_IN_CONFIDENCE, best_match);
            let upper_margin = ((1.0 - capped) - (1.0 - self.art.upper_vigilance)) / (1.0 - capped);
            let lower_margin = ((1.0 - capped) - (1.0 - self.art.lower_vigilance)) / (1.0 - capped);
            confidence = round_to_decimals(
                py_min(
                    1.0,
                    (upper_margin * UPPER_WEIGHT + lower_margin * LOWER_WEIGHT)
                        + (1.0 - outcome.best_energy) * ENERGY_WEIGHT,
                ),
                CONFIDENCE_DECIMALS,
            );
            self.anomaly_match_sum += best_match;
            self.anomaly_count += 1;
            self.last_anomaly_lowest_match = best_match;
            self.last_anomaly_match = best_match;
            self.last_anomaly_sample = sample;
        }
        self.mask_after_category = label.is_none() || self.mask_after_category;
        if sample > trend_window && (update_after_anomaly || update_trend) {
            self.adapt_vigilance(sample);
        }
        confidence
    }

    /// Upper vigilance follows the mean match; lower vigilance rises towards the recent lowest
    /// match, or falls by the recent shortfall but not below the anomalies' mean match.
    fn adapt_vigilance(&mut self, sample: i64) {
        let lowest_recent = self
            .recent_matches
            .oldest_first()
            .fold(f64::INFINITY, py_min);
        let new_upper = py_min(
            MAX_UPPER_VIGILANCE,
            self.match_sum / self.match_count as f64,
        );
        let previous_lower = self.art.lower_vigilance;
        let new_lower = if previous_lower <= lowest_recent {
            previous_lower + (lowest_recent - previous_lower) * RAISE_LOWER_VIGILANCE
        } else {
            let mut decrease = 0.0;
            if sample > 2 * self.trend_window as i64 {
                let (mut sum, mut count) = (0.0, 0_usize);
                for shortfall in self.recent_shortfalls.oldest_first() {
                    if shortfall > MIN_SHORTFALL {
                        sum += py_min(MAX_SHORTFALL, shortfall);
                        count += 1;
                    }
                }
                if count > 0 {
                    decrease = sum / count as f64;
                }
            }
            let lowered = previous_lower - py_max(MIN_LOWER_STEP, decrease) / 2.0;
            if self.anomaly_count > 0 {
                py_max(self.anomaly_match_sum / self.anomaly_count as f64, lowered)
            } else {
                lowered
            }
        };
        self.art.lower_vigilance = py_min(new_upper, new_lower);
        self.art.upper_vigilance = new_upper;
        self.last_vigilance_update = sample;
        self.mask_after_category = true;
    }
}

/// The shared downsampler and the six ART members of one stream.
#[derive(Debug, Clone)]
pub(crate) struct ArtEnsemble {
    step: usize,
    window: Recent,
    rows: u64,
    sample: i64,
    moving_average: f64,
    members: Vec<ArtMember>,
}

impl ArtEnsemble {
    /// The downsampling step and the probation length in downsampled samples for a probation
    /// period of `probation_rows` rows: 13 feature windows of 8 samples fit in the probation.
    pub(crate) fn geometry(probation_rows: usize) -> (usize, usize) {
        let even = probation_rows - probation_rows % 2;
        let step = (even / (WINDOW * WINDOWS_PER_PROBATION)).max(1);
        (step, even / step)
    }

    /// Members for the probation range `[low, high]`, in the reference's order.
    pub(crate) fn new(low: f64, high: f64, probation_rows: usize) -> Self {
        let (step, trend_window) = Self::geometry(probation_rows);
        let members = MARGINS
            .iter()
            .flat_map(|&margin| {
                LEVELS
                    .iter()
                    .map(move |&levels| ArtMember::new(low, high, margin, levels, trend_window))
            })
            .collect();
        Self {
            step,
            window: Recent::filled(step, 0.0),
            rows: 0,
            sample: 1,
            moving_average: 0.0,
            members,
        }
    }

    /// Feeds one raw value; on every `step`-th row returns the members' mean confidence.
    pub(crate) fn push(&mut self, value: f64) -> f64 {
        self.rows += 1;
        self.window.push(value);
        if !self.rows.is_multiple_of(self.step as u64) {
            return 0.0;
        }
        let first = self.window.oldest_first().next().unwrap_or(value);
        let (sum, max, min) = self
            .window
            .oldest_first()
            .fold((0.0, first, first), |(sum, max, min), v| {
                (sum + v, py_max(max, v), py_min(min, v))
            });
        let mean = sum / self.step as f64;
        if self.sample == 1 {
            self.moving_average = mean;
        }
        self.moving_average = (self.moving_average + mean) / 2.0;
        // Keep the extreme on the far side of the moving average, so spikes survive.
        let mut downsampled = max;
        if (max - self.moving_average).abs() < (min - self.moving_average).abs() {
            downsampled = min;
        }
        if (downsampled - mean).abs() < SPIKE_FRACTION * mean {
            downsampled = mean;
        }
        let sample = self.sample;
        let total = self
            .members
            .iter_mut()
            .fold(0.0, |acc, member| acc + member.process(downsampled, sample));
        self.sample += 1;
        total / self.members.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haar_gain_is_one_over_sqrt_two_as_computed() {
        assert_eq!(HAAR_GAIN, 1.0 / 2.0_f64.sqrt());
    }

    #[test]
    fn haar_of_a_constant_has_only_the_average() {
        let h = haar8(&[1.0; WINDOW]);
        assert!((h[0] - 8.0_f64.sqrt()).abs() < 1e-12);
        assert!(h[1..].iter().all(|&d| d.abs() < 1e-12));
    }

    #[test]
    fn geometry_matches_the_spec() {
        assert_eq!(ArtEnsemble::geometry(750), (7, 107));
        assert_eq!(ArtEnsemble::geometry(604), (5, 120));
        assert_eq!(ArtEnsemble::geometry(200), (1, 200));
        assert_eq!(ArtEnsemble::geometry(1), (1, 0));
    }

    #[test]
    fn running_median_follows_the_middle() {
        let mut median = RunningMedian::new(10);
        let mut last = 0;
        for (sample, level) in [5, 5, 6, 7, 8, 9, 9, 9, 9].into_iter().enumerate() {
            last = median.push(level, sample as i64 + 1);
        }
        assert!((7..=9).contains(&last), "median level {last}");
    }

    #[test]
    fn fuzzy_art_creates_a_category_for_a_new_pattern_only() {
        let mut art = FuzzyArt::new(8);
        art.lower_vigilance = 0.8;
        art.upper_vigilance = 0.9;
        let pattern = complement_coded(&[0.5; FEATURES]);
        art.train(&pattern, true, 0);
        let first = art.train(&pattern, true, 1);
        assert_eq!(first.label, None, "an all-ones category does not resonate");
        let again = art.train(&pattern, true, 2);
        assert!(again.label.is_some());
        assert!((again.best_match - 1.0).abs() < 1e-12);
        let mut other = [0.0; FEATURES];
        other[0] = 1.0;
        let novel = art.train(&complement_coded(&other), true, 3);
        assert_eq!(novel.label, None);
        assert!(novel.best_match < 0.8);
    }

    /// The reference's presentation step written literally (SPEC2.md §4.4): every activation,
    /// a stable descending sort with NaN last, and the visiting loop.
    struct LiteralArt {
        weights: Vec<[f64; CODED]>,
        labels: Vec<Option<u32>>,
        last_use: Vec<i64>,
        cap: usize,
        clusters: u32,
        started: bool,
        lower: f64,
        upper: f64,
    }

    impl LiteralArt {
        fn slot(&mut self) -> usize {
            if self.weights.len() < self.cap {
                self.weights.push([0.0; CODED]);
                self.labels.push(None);
                self.last_use.push(0);
                return self.weights.len() - 1;
            }
            let mut oldest = 0;
            for (i, &used) in self.last_use.iter().enumerate() {
                if used < self.last_use[oldest] {
                    oldest = i;
                }
            }
            oldest
        }

        fn train(
            &mut self,
            x: &[f64; CODED],
            learning: bool,
            tick: i64,
        ) -> (Option<u32>, f64, f64) {
            if !self.started {
                self.started = true;
                let j = self.slot();
                self.weights[j] = [1.0; CODED];
                self.labels[j] = Some(1);
                self.clusters = 1;
                return (Some(1), 0.0, 0.0);
            }
            let mut m = Vec::new();
            let mut e = Vec::new();
            let mut wx = Vec::new();
            for w in &self.weights {
                let overlap: [f64; CODED] = std::array::from_fn(|i| x[i].min(w[i]));
                let sum_w = numpy_sum(w);
                let fs = numpy_sum(&overlap) / if sum_w == 0.0 { 0.001 } else { sum_w };
                let es = (overlap[NEWEST] + overlap[NEWEST_COMPLEMENT])
                    / (w[NEWEST] + w[NEWEST_COMPLEMENT]);
                m.push(fs * fs * fs * (es * es));
                e.push(es);
                wx.push(overlap);
            }
            let mut order: Vec<usize> = (0..m.len()).collect();
            order.sort_by(|&a, &b| match (m[a].is_nan(), m[b].is_nan()) {
                (false, false) => m[b].total_cmp(&m[a]),
                (nan_a, nan_b) => nan_a.cmp(&nan_b),
            });
            let (mut max_m, mut max_e, mut mismatch, mut label) = (0.0, 0.0, true, None);
            for b in order {
                if m[b] > max_m {
                    max_m = m[b];
                    max_e = e[b];
                    if learning {
                        self.last_use[b] = tick;
                    }
                }
                if !learning {
                    continue;
                }
                if m[b] >= self.upper {
                    self.weights[b] = wx[b];
                    if m[b] >= max_m {
                        label = self.labels[b];
                    }
                    mismatch = false;
                } else if m[b] >= self.lower && mismatch {
                    if m[b] >= max_m {
                        label = self.labels[b];
                    }
                    let j = self.slot();
                    self.labels[j] = label;
                    self.last_use[j] = tick;
                    self.weights[j] = *x;
                    mismatch = false;
                    break;
                } else {
                    break;
                }
            }
            if mismatch && learning {
                label = None;
                let j = self.slot();
                self.labels[j] = Some(self.clusters + 1);
                self.last_use[j] = tick;
                self.weights[j] = *x;
                self.clusters += 1;
            }
            (label, max_m, max_e)
        }
    }

    /// Checks that every group's members are bit-identical to its representative, its lowest
    /// index, and chained in index order; returns how many categories are copies.
    fn check_groups(art: &FuzzyArt) -> usize {
        let mut copies = 0;
        for category in 0..art.weights.len() {
            let group = art.group[category] as usize;
            assert!(group <= category, "{category} in the group of {group}");
            assert_eq!(art.newest_weights[category].is_nan(), group != category);
            assert!(bit_identical(&art.weights[category], &art.weights[group]));
            assert_eq!(
                art.weight_sums[category].to_bits(),
                art.weight_sums[group].to_bits()
            );
            let mut member = group;
            while member != category {
                let next = art.next_twin[member];
                assert!(next != NO_TWIN, "{category} not chained from {group}");
                assert!(next as usize > member);
                assert_eq!(art.group[next as usize] as usize, group);
                member = next as usize;
            }
            copies += usize::from(group != category);
        }
        copies
    }

    /// xorshift64 in [0, 1): deterministic test inputs without a dependency.
    fn unit_noise(mut state: u64) -> impl FnMut() -> f64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1_u64 << 53) as f64
        }
    }

    #[test]
    fn pruned_presentation_equals_the_literal_reference() {
        let mut next = unit_noise(0x2545_f491_4f6c_dd1d_u64);
        let prototypes: Vec<[f64; FEATURES]> = (0..5)
            .map(|_| std::array::from_fn(|_| (next() * 8.0).round() / 8.0))
            .collect();
        let (mut copies, mut repeats, mut most_categories) = (0, 0, 0);
        // A small cap replaces categories all the time; the members' cap spans two 64-bit
        // words of the candidate mask.
        let settings = [16, CATEGORY_CAP].into_iter().flat_map(|cap| {
            [(0.5, 0.8), (0.85, 0.9), (0.2, 0.97), (0.0, 0.0)]
                .map(|(lower, upper)| (cap, lower, upper))
        });
        for (cap, lower, upper) in settings {
            let mut fast = FuzzyArt::new(cap);
            fast.lower_vigilance = lower;
            fast.upper_vigilance = upper;
            let mut literal = LiteralArt {
                weights: Vec::new(),
                labels: Vec::new(),
                last_use: Vec::new(),
                cap,
                clusters: 0,
                started: false,
                lower,
                upper,
            };
            let mut features = [0.0; FEATURES];
            for tick in 0..3000_i64 {
                let prototype = prototypes[(next() * 5.0) as usize % 5];
                // Quantised noise makes exact ties between activations common, and a steady
                // stream repeats its input.
                if next() < 0.6 {
                    features = std::array::from_fn(|i| {
                        (prototype[i] + (next() - 0.5) * 0.25).clamp(0.0, 1.0) * 16.0
                    })
                    .map(|v: f64| v.round() / 16.0);
                } else {
                    repeats += 1;
                }
                // The vigilance moves now and then, as it adapts in a member; a lower one
                // lets categories resonate that did not with the same input before.
                if tick % 25 == 24 {
                    let step = if tick % 50 == 24 { -0.1 } else { 0.1 };
                    fast.upper_vigilance = (fast.upper_vigilance + step).clamp(0.0, 1.0);
                    literal.upper = fast.upper_vigilance;
                }
                let learning = tick % 7 != 3;
                let coded = complement_coded(&features);
                let got = fast.train(&coded, learning, tick);
                let want = literal.train(&coded, learning, tick);
                let got_label = if learning { got.label } else { want.0 };
                assert_eq!(
                    (
                        got_label,
                        got.best_match.to_bits(),
                        got.best_energy.to_bits()
                    ),
                    (want.0, want.1.to_bits(), want.2.to_bits()),
                    "tick {tick}, cap {cap}, vigilance ({lower}, {upper})"
                );
                assert_eq!(fast.weights, literal.weights, "tick {tick}");
                assert_eq!(fast.labels, literal.labels, "tick {tick}");
                assert_eq!(fast.last_use, literal.last_use, "tick {tick}");
                copies += check_groups(&fast);
            }
            most_categories = most_categories.max(fast.weights.len());
        }
        // Identical categories must have been grouped, or the groups went untested.
        assert!(copies > 1000, "{copies} copies seen");
        assert!(most_categories > 64, "at most {most_categories} categories");
        assert!(repeats > 1000, "{repeats} repeated inputs");
    }

    /// Categories with equal weights and different clusters tie; the reference visits ties in
    /// index order and keeps the label of the last one, which the fast path, visiting in index
    /// order without a sort, must reproduce.
    #[test]
    fn a_tie_among_resonating_categories_takes_the_last_label() {
        let x = complement_coded(&[0.5; FEATURES]);
        let mut fast = FuzzyArt::new(8);
        fast.lower_vigilance = 0.5;
        fast.upper_vigilance = 0.9;
        let mut literal = LiteralArt {
            weights: Vec::new(),
            labels: Vec::new(),
            last_use: Vec::new(),
            cap: 8,
            clusters: 0,
            started: false,
            lower: 0.5,
            upper: 0.9,
        };
        // The first presentation seeds the all-ones category of cluster 1.
        fast.train(&x, true, 0);
        literal.train(&x, true, 0);
        for (label, tick) in [(7, 1), (3, 2)] {
            let slot = fast.slot();
            fast.store(slot, x, Some(label), tick);
            let slot = literal.slot();
            literal.weights[slot] = x;
            literal.labels[slot] = Some(label);
            literal.last_use[slot] = tick;
        }
        (fast.clusters, literal.clusters) = (7, 7);
        let want = literal.train(&x, true, 3);
        let got = fast.train(&x, true, 3);
        assert_eq!(want.0, Some(3), "the reference keeps the last tie's label");
        assert_eq!(got.label, want.0);
        assert_eq!(got.best_match.to_bits(), want.1.to_bits());
        assert_eq!(fast.weights, literal.weights);
        assert_eq!(fast.last_use, literal.last_use);
        // The two copies of `x` are now one group, which must keep the last label.
        assert_eq!(check_groups(&fast), 1);
        let again = fast.train(&x, true, 4);
        assert_eq!(again.label, literal.train(&x, true, 4).0);
        assert_eq!(again.label, Some(3));
    }

    /// The block-sum screen may only ever keep too many: its shortfall must never exceed the
    /// true one, for categories learned from several inputs (boxes) and from one (points).
    #[test]
    fn block_sums_never_overstate_the_shortfall() {
        let mut next = unit_noise(0x9e37_79b9_7f4a_7c15_u64);
        let mut coded = || complement_coded(&std::array::from_fn(|_| next()));
        let mut tight = 0;
        for round in 0..20_000 {
            let mut weights = coded();
            for _ in 0..round % 4 {
                let other = coded();
                weights = std::array::from_fn(|i| lesser(weights[i], other[i]));
            }
            let x = coded();
            let shape: f64 = x[..WINDOW].iter().sum();
            let window: f64 = x[WINDOW..FEATURES].iter().sum();
            let bound = BlockSums::of(&weights).distance(shape, window);
            let shortfall: f64 = (0..CODED).map(|i| (weights[i] - x[i]).max(0.0)).sum();
            assert!(
                bound <= shortfall + 1e-12,
                "round {round}: {bound} > {shortfall}"
            );
            let most = numpy_sum(&weights) - bound + 1e-9;
            assert!(overlap_sum(&x, &weights) <= most, "round {round}");
            if bound > 0.5 * shortfall {
                tight += 1;
            }
        }
        // A bound that is always 0 would pass the checks above and prune nothing.
        assert!(
            tight > 500,
            "the bound was within half of the shortfall {tight} times"
        );
    }

    #[test]
    fn least_recently_used_category_is_replaced_at_the_cap() {
        let mut art = FuzzyArt::new(3);
        for _ in 0..3 {
            let slot = art.slot();
            art.store(slot, [1.0; CODED], Some(1), 4);
        }
        assert_eq!(art.slot(), 0, "the first of equally old categories");
        art.touch(0, 7);
        assert_eq!(art.slot(), 1);
        art.touch(2, 7);
        art.touch(1, 7);
        assert_eq!(
            art.slot(),
            0,
            "used at 7 like the others, with the lowest index"
        );
        assert_eq!(art.last_use, vec![7, 7, 7]);
        art.touch(0, 9);
        assert_eq!(art.slot(), 1);
    }
}
