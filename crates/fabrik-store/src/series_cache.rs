//! The write path's cache of parsed series keys, with a guess at which series comes next.
//!
//! Most lines of a body belong to series written before, so their tags are parsed and hashed
//! once, not on every line. Collectors also write their series in the same order every
//! interval (Telegraf's gather order, a gateway's poll list, TSBS' trucks), so each entry
//! remembers the series that followed it last time: when the guess holds, a line is matched
//! by comparing its key with one entry's, without hashing it or probing the table — in a
//! profile of a 1M-line load, that lookup was 9 % of the server's CPU.

use std::collections::HashMap;

use crate::batch::SeriesKey;

/// Entries kept at most: the cache is emptied when it would grow past this many keys.
const MAX_ENTRIES: usize = 100_000;

/// No successor recorded yet.
const NO_SUCCESSOR: u32 = u32::MAX;

#[derive(Debug)]
struct Entry {
    series: SeriesKey,
    /// The slot of the series that followed this one on the latest line that did.
    successor: u32,
}

/// Series keys by the text they were written as, in slots that stay put until the cache is
/// emptied.
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    entries: Vec<Entry>,
    slots: HashMap<Box<str>, u32, ahash::RandomState>,
}

impl SeriesCache {
    /// The slot of the series written as `key`, if cached. `previous` is the slot of the
    /// series on the line before, whose successor is tried first and updated to the answer.
    #[inline]
    pub(crate) fn find(&mut self, previous: Option<u32>, key: &str) -> Option<u32> {
        let Some(previous_entry) = previous.and_then(|slot| self.entries.get(slot as usize)) else {
            return self.slots.get(key).copied();
        };
        let guess = previous_entry.successor;
        if self
            .entries
            .get(guess as usize)
            .is_some_and(|entry| entry.series.written() == key)
        {
            return Some(guess);
        }
        let slot = self.slots.get(key).copied()?;
        self.set_successor(previous, slot);
        Some(slot)
    }

    /// The series in `slot` (from [`SeriesCache::find`] or [`SeriesCache::insert`]).
    #[inline]
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut SeriesKey> {
        self.entries
            .get_mut(slot as usize)
            .map(|entry| &mut entry.series)
    }

    /// Caches `series` (which follows the series in slot `previous`) and returns its slot;
    /// empties the cache first when it is full, which invalidates every earlier slot.
    pub(crate) fn insert(&mut self, previous: Option<u32>, series: SeriesKey) -> u32 {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
            self.slots.clear();
        }
        // Below MAX_ENTRIES, so the slot fits in a u32 and is never NO_SUCCESSOR.
        let slot = self.entries.len() as u32;
        self.slots.insert(series.written().into(), slot);
        self.entries.push(Entry {
            series,
            successor: NO_SUCCESSOR,
        });
        self.set_successor(previous, slot);
        slot
    }

    fn set_successor(&mut self, previous: Option<u32>, slot: u32) {
        if let Some(entry) = previous.and_then(|p| self.entries.get_mut(p as usize)) {
            entry.successor = slot;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_core::line_protocol::{Line, parse_line};

    fn series(text: &str) -> SeriesKey {
        let mut line = Line::default();
        parse_line(text, 1, &mut line).expect("parse");
        let key_len = text.find(' ').expect("a space");
        SeriesKey::of_line(&line, &text[..key_len]).expect("key")
    }

    /// Slots found by the successor guess and by the table must agree, whatever order the
    /// series come in: a wrong guess must never hand out another series' slot.
    #[test]
    fn guessed_and_looked_up_slots_agree_in_any_order() {
        let keys: Vec<String> = (0..50).map(|i| format!("m,host=h{i}")).collect();
        let mut cache = SeriesCache::default();
        let mut slots = HashMap::new();
        let mut previous = None;
        for key in &keys {
            let slot = cache.insert(previous, series(&format!("{key} v=1")));
            slots.insert(key.clone(), slot);
            previous = Some(slot);
        }
        // The same order (every guess holds), then a shuffled one (most guesses fail).
        let mut next = crate::test_noise(0x9e37_79b9);
        let mut order: Vec<usize> = (0..keys.len()).collect();
        for round in 0..4 {
            if round >= 2 {
                for i in (1..order.len()).rev() {
                    order.swap(i, next(i as u64 + 1) as usize);
                }
            }
            for &i in &order {
                let slot = cache.find(previous, &keys[i]).expect("cached");
                assert_eq!(slot, slots[&keys[i]], "{}", keys[i]);
                let found = cache.get_mut(slot).expect("slot");
                assert_eq!(found.written(), keys[i]);
                previous = Some(slot);
            }
        }
        assert_eq!(cache.find(previous, "m,host=unknown"), None);
        assert_eq!(cache.find(None, "m,host=h7"), Some(slots["m,host=h7"]));
    }

    #[test]
    fn a_full_cache_starts_over_and_stays_consistent() {
        let mut cache = SeriesCache::default();
        let mut previous = None;
        for i in 0..MAX_ENTRIES + 3 {
            let key = format!("m,i={i}");
            let slot = cache.insert(previous, series(&format!("{key} v=1")));
            assert_eq!(
                cache.get_mut(slot).map(|s| s.written().to_owned()),
                Some(key)
            );
            previous = Some(slot);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.find(None, "m,i=0"), None);
        let last = format!("m,i={}", MAX_ENTRIES + 2);
        assert_eq!(cache.find(None, &last), previous);
    }
}
