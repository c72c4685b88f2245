//! The subscription index: a trie over topic levels, so routing a publish walks the levels of
//! its topic instead of every filter in the broker, and the shared-subscription groups
//! (`$share/{group}/{filter}`), each message of which goes to one member in turn.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::topic;

/// How a client subscribed with one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Granted maximum QoS.
    pub qos: u8,
    /// MQTT 5: do not send the client its own publishes.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag of forwarded messages.
    pub retain_as_published: bool,
    /// MQTT 5: the subscription identifier to send along.
    pub id: Option<NonZeroU32>,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscribers of `…/#` at this node.
    hash: HashMap<Arc<str>, SubOptions>,
    /// Subscribers whose filter ends exactly here.
    exact: HashMap<Arc<str>, SubOptions>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

/// The members of one shared subscription (`$share/{group}/{filter}`).
#[derive(Default)]
struct SharedGroup {
    members: Vec<(Arc<str>, SubOptions)>,
    /// Where the round-robin continues.
    next: usize,
}

/// How a member of a shared group can take a message, as the broker sees its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Availability {
    /// No session (or it may not read the topic): skip it.
    Unavailable,
    /// A session without a connection: it can queue the message.
    Offline,
    /// A connected session.
    Connected,
}

/// Filter → subscribers.
#[derive(Default)]
pub struct SubscriptionIndex {
    root: Node,
    count: usize,
    /// Shared subscriptions by their filter proper; the trie's "clients" are the full
    /// `$share/...` filters, keys of `groups`.
    shared_root: Node,
    groups: HashMap<Arc<str>, SharedGroup>,
}

impl SubscriptionIndex {
    /// Number of (client, filter) subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nobody subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces `client`'s subscription with `filter` (a valid filter, possibly a
    /// shared one).
    pub fn insert(&mut self, filter: &str, client: &Arc<str>, options: SubOptions) {
        if let Ok(Some((_, inner))) = topic::split_shared(filter) {
            let key: Arc<str> = Arc::from(filter);
            let group = self.groups.entry(key.clone()).or_default();
            if group.members.is_empty() {
                insert_at(&mut self.shared_root, inner, &key, options);
            }
            match group.members.iter_mut().find(|(c, _)| c == client) {
                Some(member) => member.1 = options,
                None => {
                    group.members.push((client.clone(), options));
                    self.count += 1;
                }
            }
            return;
        }
        if insert_at(&mut self.root, filter, client, options) {
            self.count += 1;
        }
    }

    /// Removes `client`'s subscription with `filter`; true if there was one.
    pub fn remove(&mut self, filter: &str, client: &str) -> bool {
        if let Ok(Some((_, inner))) = topic::split_shared(filter) {
            let Some(group) = self.groups.get_mut(filter) else {
                return false;
            };
            let before = group.members.len();
            group.members.retain(|(c, _)| &**c != client);
            let removed = group.members.len() < before;
            if group.members.is_empty() {
                self.groups.remove(filter);
                let levels: Vec<&str> = inner.split('/').collect();
                remove_at(&mut self.shared_root, &levels, filter);
            }
            if removed {
                self.count -= 1;
            }
            return removed;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Calls `found` for every ordinary subscription matching the topic name `topic`.
    pub fn for_each_match(&self, topic: &str, mut found: impl FnMut(&Arc<str>, &SubOptions)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, &mut found);
    }

    /// For every shared subscription matching `topic`, picks the member that gets the message
    /// and calls `chosen` with it: the next connected member in round-robin order, else the
    /// next one with a session that can queue it (MQTT 5 §4.8.2 leaves the choice to the
    /// server; this spreads load and never drops a message while a member can take it).
    pub fn pick_shared(
        &mut self,
        topic: &str,
        mut availability: impl FnMut(&Arc<str>) -> Availability,
        mut chosen: impl FnMut(&Arc<str>, &SubOptions),
    ) {
        if self.groups.is_empty() {
            return;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut matched: Vec<Arc<str>> = Vec::new();
        walk(&self.shared_root, &levels, 0, dollar, &mut |key, _| {
            matched.push(key.clone())
        });
        for key in matched {
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            let n = group.members.len();
            let mut best: Option<(usize, Availability)> = None;
            for step in 0..n {
                let i = (group.next + step) % n;
                let found = availability(&group.members[i].0);
                if found > best.map_or(Availability::Unavailable, |b| b.1) {
                    best = Some((i, found));
                    if found == Availability::Connected {
                        break;
                    }
                }
            }
            if let Some((i, _)) = best {
                group.next = (i + 1) % n;
                let (client, options) = &group.members[i];
                chosen(client, options);
            }
        }
    }
}

/// Inserts into the trie under `root`; true if `client` had no subscription with `filter`.
fn insert_at(root: &mut Node, filter: &str, client: &Arc<str>, options: SubOptions) -> bool {
    let mut node = root;
    let mut slot = None;
    for level in filter.split('/') {
        match level {
            "#" => {
                slot = Some(&mut node.hash);
                break;
            }
            "+" => node = node.plus.get_or_insert_with(Box::default),
            literal => node = node.children.entry(literal.into()).or_default(),
        }
    }
    let slot = match slot {
        Some(s) => s,
        None => &mut node.exact,
    };
    slot.insert(client.clone(), options).is_none()
}

fn remove_at(node: &mut Node, levels: &[&str], client: &str) -> bool {
    let Some((&level, rest)) = levels.split_first() else {
        return node.exact.remove(client).is_some();
    };
    match level {
        "#" => node.hash.remove(client).is_some(),
        "+" => {
            let Some(child) = node.plus.as_deref_mut() else {
                return false;
            };
            let removed = remove_at(child, rest, client);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        }
        literal => {
            let Some(child) = node.children.get_mut(literal) else {
                return false;
            };
            let removed = remove_at(child, rest, client);
            if child.is_empty() {
                node.children.remove(literal);
            }
            removed
        }
    }
}

fn walk(
    node: &Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    found: &mut impl FnMut(&Arc<str>, &SubOptions),
) {
    // Wildcards at the first level never match `$` topics.
    let wildcards = !(dollar && depth == 0);
    if wildcards {
        // `a/#` matches `a` and everything below it.
        for (client, options) in &node.hash {
            found(client, options);
        }
    }
    let Some((&level, rest)) = levels.split_first() else {
        for (client, options) in &node.exact {
            found(client, options);
        }
        return;
    };
    if let Some(child) = node.children.get(level) {
        walk(child, rest, depth + 1, dollar, found);
    }
    if wildcards && let Some(plus) = node.plus.as_deref() {
        walk(plus, rest, depth + 1, dollar, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    fn matched(index: &SubscriptionIndex, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        index.for_each_match(topic, |c, o| out.push(format!("{c}:{}", o.qos)));
        out.sort();
        out
    }

    #[test]
    fn the_trie_agrees_with_filter_matching() {
        let filters = [
            "#", "+", "a/#", "a/+", "a/b", "+/b", "a/+/c", "+/+/+", "a/b/#", "$s/#", "$s/+", "/#",
            "+/#", "a//b",
        ];
        let topics = [
            "a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "x/y/z", "$s/a", "$s", "/a", "/", "a//b",
        ];
        let mut index = SubscriptionIndex::default();
        for (i, f) in filters.iter().enumerate() {
            index.insert(f, &Arc::from(format!("c{i}")), opts(1));
        }
        assert_eq!(index.len(), filters.len());
        for t in topics {
            let mut want: Vec<String> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, t))
                .map(|(i, _)| format!("c{i}:1"))
                .collect();
            want.sort();
            assert_eq!(matched(&index, t), want, "topic {t}");
        }
    }

    #[test]
    fn remove_prunes_and_replace_does_not_double_count() {
        let mut index = SubscriptionIndex::default();
        let a: Arc<str> = Arc::from("a");
        index.insert("x/+/y", &a, opts(0));
        index.insert("x/+/y", &a, opts(2));
        assert_eq!(index.len(), 1);
        assert_eq!(matched(&index, "x/1/y"), vec!["a:2"]);
        assert!(index.remove("x/+/y", "a"));
        assert!(!index.remove("x/+/y", "a"));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn a_shared_group_hands_each_message_to_one_member_in_turn() {
        let mut index = SubscriptionIndex::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        index.insert("$share/g/x/+", &a, opts(1));
        index.insert("$share/g/x/+", &b, opts(2));
        index.insert("$share/g/x/+", &b, opts(0)); // replaces, does not add
        index.insert("$share/h/x/#", &c, opts(1));
        index.insert("x/+", &c, opts(0));
        assert_eq!(index.len(), 4);
        // Ordinary matching never sees shared subscriptions.
        assert_eq!(matched(&index, "x/1"), vec!["c:0"]);
        let mut picks = Vec::new();
        for _ in 0..4 {
            let mut one = Vec::new();
            index.pick_shared(
                "x/1",
                |_| Availability::Connected,
                |client, o| one.push(format!("{client}:{}", o.qos)),
            );
            one.sort();
            picks.push(one.join(" "));
        }
        // Group g alternates a and b; group h (one member) gets every message.
        assert_eq!(picks, ["a:1 c:1", "b:0 c:1", "a:1 c:1", "b:0 c:1"]);
        // A connected member is preferred over one that would only queue the message, and an
        // unavailable one is skipped.
        let mut picks = Vec::new();
        for _ in 0..3 {
            index.pick_shared(
                "x/1",
                |client| match &**client {
                    "a" => Availability::Offline,
                    "b" => Availability::Connected,
                    _ => Availability::Unavailable,
                },
                |client, _| picks.push(client.to_string()),
            );
        }
        assert_eq!(picks, ["b", "b", "b"]);
        assert!(index.remove("$share/g/x/+", "a"));
        assert!(index.remove("$share/g/x/+", "b"));
        assert!(!index.remove("$share/g/x/+", "b"));
        assert!(index.remove("$share/h/x/#", "c"));
        assert!(index.remove("x/+", "c"));
        assert!(index.is_empty());
        assert!(index.groups.is_empty() && index.shared_root.is_empty());
    }
}
