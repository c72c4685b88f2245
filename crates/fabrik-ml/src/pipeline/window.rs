//! Per-device windows over a pipeline's signals: tumbling or sliding, by time or by count.
//!
//! Owns the samples a device's open windows still need. Time windows are aligned to the epoch
//! (a window starts at a multiple of its hop), so a window's id is the same on every node and
//! after a restart; a window is emitted once the caller's horizon (the time up to which all
//! data is in) passes its end.

use std::collections::VecDeque;

/// How samples are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Windows of `size_ns` starting every `hop_ns` (tumbling when equal).
    Time {
        /// Length, ns.
        size_ns: i64,
        /// Distance between window starts, ns.
        hop_ns: i64,
    },
    /// Windows of `size` samples starting every `hop` samples.
    Count {
        /// Samples per window.
        size: usize,
        /// Samples between window starts.
        hop: usize,
    },
}

/// One sample of every signal of a pipeline (`None` where a signal had no value).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Nanoseconds since the epoch.
    pub time_ns: i64,
    /// One entry per pipeline signal.
    pub values: Vec<Option<f64>>,
    /// The store's arrival id of the row (`_raw_id`), 0 where there is none: the largest of
    /// a window's tells which rows it read (see [`crate::pipeline::Inference::last_arrival`]).
    pub arrival: i64,
}

/// A closed window of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Inclusive start, ns (for count windows: the first sample's time).
    pub start_ns: i64,
    /// Exclusive end, ns (for count windows: the last sample's time + 1).
    pub end_ns: i64,
    /// The samples, in time order.
    pub rows: Vec<Row>,
}

/// The open windows of one device.
#[derive(Debug, Clone)]
pub struct DeviceWindows {
    spec: WindowSpec,
    samples: VecDeque<Row>,
    /// Start of the next time window to emit.
    next_start: Option<i64>,
    late: u64,
}

fn align_down(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

impl DeviceWindows {
    /// No samples yet.
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            samples: VecDeque::new(),
            next_start: None,
            late: 0,
        }
    }

    /// Samples dropped because every window they belonged to had been emitted.
    pub fn late_samples(&self) -> u64 {
        self.late
    }

    /// Adds a sample. Samples must come in time order per device; one older than an
    /// emitted window is counted as late and dropped.
    pub fn push(&mut self, row: Row) {
        if let WindowSpec::Time { hop_ns, .. } = self.spec {
            let first_useful = align_down(row.time_ns, hop_ns);
            match self.next_start {
                Some(next) if row.time_ns < next => {
                    self.late += 1;
                    return;
                }
                // After a gap with nothing buffered, skip the empty windows in between.
                Some(next) if self.samples.is_empty() && first_useful > next => {
                    self.next_start = Some(first_useful);
                }
                None => self.next_start = Some(first_useful),
                _ => {}
            }
        }
        let position = self
            .samples
            .iter()
            .rposition(|s| s.time_ns <= row.time_ns)
            .map_or(0, |i| i + 1);
        self.samples.insert(position, row);
    }

    /// Emits every window that is complete once all data up to `horizon_ns` is in.
    pub fn close(&mut self, horizon_ns: i64) -> Vec<Window> {
        match self.spec {
            WindowSpec::Time { size_ns, hop_ns } => self.close_time(horizon_ns, size_ns, hop_ns),
            WindowSpec::Count { size, hop } => self.close_count(size, hop),
        }
    }

    fn close_time(&mut self, horizon_ns: i64, size_ns: i64, hop_ns: i64) -> Vec<Window> {
        let mut out = Vec::new();
        while let Some(start) = self.next_start {
            let end = start.saturating_add(size_ns);
            if end > horizon_ns {
                break;
            }
            let rows: Vec<Row> = self
                .samples
                .iter()
                .take_while(|s| s.time_ns < end)
                .filter(|s| s.time_ns >= start)
                .cloned()
                .collect();
            if !rows.is_empty() {
                out.push(Window {
                    start_ns: start,
                    end_ns: end,
                    rows,
                });
            }
            let next = start.saturating_add(hop_ns);
            while self.samples.front().is_some_and(|s| s.time_ns < next) {
                self.samples.pop_front();
            }
            // Jump over empty windows to the first one holding the oldest sample, rather
            // than walking a long gap window by window.
            self.next_start = Some(match self.samples.front() {
                Some(s) => next.max(align_down(s.time_ns - size_ns, hop_ns) + hop_ns),
                None => next,
            });
        }
        out
    }

    fn close_count(&mut self, size: usize, hop: usize) -> Vec<Window> {
        let mut out = Vec::new();
        while self.samples.len() >= size {
            let rows: Vec<Row> = self.samples.iter().take(size).cloned().collect();
            let start_ns = rows.first().map_or(0, |r| r.time_ns);
            let end_ns = rows.last().map_or(0, |r| r.time_ns.saturating_add(1));
            out.push(Window {
                start_ns,
                end_ns,
                rows,
            });
            for _ in 0..hop.min(self.samples.len()) {
                self.samples.pop_front();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn row(t: i64, v: f64) -> Row {
        Row {
            time_ns: t,
            values: vec![Some(v)],
            arrival: 0,
        }
    }

    fn times(w: &Window) -> Vec<i64> {
        w.rows.iter().map(|r| r.time_ns / S).collect()
    }

    #[test]
    fn tumbling_time_windows_are_epoch_aligned_and_wait_for_the_horizon() {
        let mut w = DeviceWindows::new(WindowSpec::Time {
            size_ns: 10 * S,
            hop_ns: 10 * S,
        });
        for t in 3..27 {
            w.push(row(t * S, t as f64));
        }
        assert!(w.close(9 * S).is_empty());
        let out = w.close(20 * S);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].start_ns, out[0].end_ns), (0, 10 * S));
        assert_eq!(times(&out[0]), (3..10).collect::<Vec<_>>());
        assert_eq!(times(&out[1]), (10..20).collect::<Vec<_>>());
        // Nothing is emitted twice; the open window keeps its samples.
        assert!(w.close(20 * S).is_empty());
        let out = w.close(30 * S);
        assert_eq!(times(&out[0]), (20..27).collect::<Vec<_>>());
    }

    #[test]
    fn sliding_time_windows_overlap() {
        let mut w = DeviceWindows::new(WindowSpec::Time {
            size_ns: 4 * S,
            hop_ns: 2 * S,
        });
        for t in 0..8 {
            w.push(row(t * S, 0.0));
        }
        let out = w.close(8 * S);
        let spans: Vec<(i64, i64)> = out.iter().map(|w| (w.start_ns / S, w.end_ns / S)).collect();
        assert_eq!(spans, vec![(0, 4), (2, 6), (4, 8)]);
        assert_eq!(times(&out[1]), vec![2, 3, 4, 5]);
    }

    #[test]
    fn late_samples_are_counted_not_misfiled_and_gaps_are_skipped() {
        let mut w = DeviceWindows::new(WindowSpec::Time {
            size_ns: 10 * S,
            hop_ns: 10 * S,
        });
        w.push(row(5 * S, 1.0));
        assert_eq!(w.close(10 * S).len(), 1);
        w.push(row(7 * S, 1.0));
        assert_eq!(w.late_samples(), 1);
        // A day later: one window, not eight thousand empty ones.
        w.push(row(86_400 * S + 1, 2.0));
        let out = w.close(86_410 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start_ns, 86_400 * S);
    }

    #[test]
    fn out_of_order_samples_within_an_open_window_are_sorted() {
        let mut w = DeviceWindows::new(WindowSpec::Time {
            size_ns: 10 * S,
            hop_ns: 10 * S,
        });
        w.push(row(5 * S, 1.0));
        w.push(row(2 * S, 1.0));
        w.push(row(2 * S, 1.0));
        let out = w.close(10 * S);
        assert_eq!(times(&out[0]), vec![2, 2, 5]);
    }

    #[test]
    fn count_windows_slide_by_their_hop() {
        let mut w = DeviceWindows::new(WindowSpec::Count { size: 3, hop: 2 });
        for t in 0..7 {
            w.push(row(t * S, 0.0));
        }
        let out = w.close(0);
        let firsts: Vec<Vec<i64>> = out.iter().map(times).collect();
        assert_eq!(firsts, vec![vec![0, 1, 2], vec![2, 3, 4], vec![4, 5, 6]]);
    }
}
