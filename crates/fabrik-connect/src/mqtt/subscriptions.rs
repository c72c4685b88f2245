//! The subscription index: a trie over topic levels, so routing a publish walks the levels of
//! its topic instead of every filter in the broker.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

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

/// Filter → subscribers.
#[derive(Default)]
pub struct SubscriptionIndex {
    root: Node,
    count: usize,
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

    /// Adds or replaces `client`'s subscription with `filter` (a valid filter).
    pub fn insert(&mut self, filter: &str, client: &Arc<str>, options: SubOptions) {
        let mut node = &mut self.root;
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
        if slot.insert(client.clone(), options).is_none() {
            self.count += 1;
        }
    }

    /// Removes `client`'s subscription with `filter`; true if there was one.
    pub fn remove(&mut self, filter: &str, client: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Calls `found` for every subscription matching the topic name `topic`.
    pub fn for_each_match(&self, topic: &str, mut found: impl FnMut(&Arc<str>, &SubOptions)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, &mut found);
    }
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
    use crate::mqtt::topic;

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
}
