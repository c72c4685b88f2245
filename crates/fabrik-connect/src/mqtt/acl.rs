//! Topic access control: deny by default, allow rules with `{device_id}`, `{username}`,
//! `{client_id}`, `{sparkplug_group}` and `{sparkplug_node}` variables. A variable whose value
//! is empty or holds `/`, `+` or `#` makes its rule not apply, so no client id or username can
//! widen a pattern.

use serde::{Deserialize, Serialize};

use super::topic;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// Publish to matching topic names.
    Publish,
    /// Subscribe with filters the pattern covers.
    Subscribe,
    /// Both.
    All,
}

/// One rule: it allows, or (winning over every allow) denies, what its pattern covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// What it applies to.
    pub action: AclAction,
    /// A topic filter, possibly with variables.
    pub topic: String,
    /// Deny instead of allow.
    pub deny: bool,
}

impl AclRule {
    /// An allow rule.
    pub fn new(action: AclAction, topic: &str) -> Self {
        Self {
            action,
            topic: topic.to_owned(),
            deny: false,
        }
    }

    /// A deny rule.
    pub fn deny(action: AclAction, topic: &str) -> Self {
        Self {
            deny: true,
            ..Self::new(action, topic)
        }
    }

    /// From the configuration (`fabrik config check` has validated the words).
    pub fn from_config(rule: &fabrik_runtime::config::AclRuleConfig) -> Result<Self, String> {
        let action = match rule.action.as_str() {
            "publish" => AclAction::Publish,
            "subscribe" => AclAction::Subscribe,
            "all" => AclAction::All,
            other => return Err(format!("`{other}` is not publish, subscribe or all")),
        };
        let deny = match rule.effect.as_str() {
            "allow" => false,
            "deny" => true,
            other => return Err(format!("`{other}` is not allow or deny")),
        };
        let rule = Self {
            action,
            topic: rule.topic.clone(),
            deny,
        };
        check_rule(&rule)?;
        Ok(rule)
    }
}

/// The rules a fresh install uses: a device publishes under its own namespace and the
/// Sparkplug topics of the edge node it owns, and reads only its own command topics.
pub fn default_rules() -> Vec<AclRule> {
    vec![
        AclRule::new(AclAction::Publish, "devices/{device_id}/#"),
        AclRule::new(AclAction::Subscribe, "devices/{device_id}/cmd/#"),
        AclRule::new(
            AclAction::Publish,
            "spBv1.0/{sparkplug_group}/+/{sparkplug_node}",
        ),
        AclRule::new(
            AclAction::Publish,
            "spBv1.0/{sparkplug_group}/+/{sparkplug_node}/#",
        ),
        AclRule::new(
            AclAction::Subscribe,
            "spBv1.0/{sparkplug_group}/NCMD/{sparkplug_node}",
        ),
        AclRule::new(
            AclAction::Subscribe,
            "spBv1.0/{sparkplug_group}/DCMD/{sparkplug_node}/#",
        ),
        AclRule::new(AclAction::Subscribe, "spBv1.0/STATE/#"),
    ]
}

/// Who a connected client is, as far as the ACLs care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The MQTT client id.
    pub client_id: String,
    /// The user name it authenticated with (empty if none).
    pub username: String,
    /// The registered device, if the client is one.
    pub device_id: Option<String>,
    /// The Sparkplug edge node the device owns: (group id, edge node id).
    pub sparkplug: Option<(String, String)>,
    /// Operators (admin token) and the open test mode may use every topic.
    pub unrestricted: bool,
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<AclRule>,
}

/// The variables a rule may use.
pub const VARIABLES: [&str; 5] = [
    "device_id",
    "username",
    "client_id",
    "sparkplug_group",
    "sparkplug_node",
];

/// Checks a rule's pattern; the error says what is wrong with it.
pub fn check_rule(rule: &AclRule) -> Result<(), String> {
    // Substitute a harmless literal for each variable and check the result is a filter.
    let probe = substitute(&rule.topic, &|name| {
        VARIABLES.contains(&name).then_some("x")
    })
    .ok_or_else(|| {
        format!(
            "`{}`: unknown or unclosed variable (known: {})",
            rule.topic,
            VARIABLES.map(|v| format!("{{{v}}}")).join(", ")
        )
    })?;
    topic::validate_filter(&probe).map_err(|e| format!("`{}`: {e}", rule.topic))
}

/// Replaces `{name}` variables; `None` if a variable is unknown or has no usable value.
fn substitute<'a>(pattern: &str, value: &dyn Fn(&str) -> Option<&'a str>) -> Option<String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        let v = value(name)?;
        if v.is_empty() || v.contains(['/', '+', '#']) {
            return None;
        }
        out.push_str(v);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

impl Acl {
    /// A rule set (checked with [`check_rule`] when the config is validated).
    pub fn new(rules: Vec<AclRule>) -> Self {
        Self { rules }
    }

    fn patterns<'a>(
        &'a self,
        who: &'a ClientIdentity,
        action: AclAction,
        deny: bool,
    ) -> impl Iterator<Item = String> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.deny == deny)
            .filter(move |r| r.action == action || r.action == AclAction::All)
            .filter_map(move |r| {
                substitute(&r.topic, &|name| match name {
                    "device_id" => who.device_id.as_deref(),
                    "username" => Some(who.username.as_str()),
                    "client_id" => Some(who.client_id.as_str()),
                    "sparkplug_group" => who.sparkplug.as_ref().map(|s| s.0.as_str()),
                    "sparkplug_node" => who.sparkplug.as_ref().map(|s| s.1.as_str()),
                    _ => None,
                })
            })
    }

    /// May `who` publish to the topic name `topic`? Deny rules win over allow rules.
    pub fn may_publish(&self, who: &ClientIdentity, topic_name: &str) -> bool {
        if self
            .patterns(who, AclAction::Publish, true)
            .any(|p| topic::matches(&p, topic_name))
        {
            return false;
        }
        who.unrestricted
            || self
                .patterns(who, AclAction::Publish, false)
                .any(|p| topic::matches(&p, topic_name))
    }

    /// May `who` subscribe with `filter`? Only if one allow pattern covers everything it
    /// matches and no deny pattern covers it. A filter that only overlaps a deny pattern (`#`
    /// against a denied `secret/x`) is accepted: the messages the deny pattern matches are held
    /// back at delivery instead (see [`Acl::read_denies`]).
    pub fn may_subscribe(&self, who: &ClientIdentity, filter: &str) -> bool {
        if self
            .patterns(who, AclAction::Subscribe, true)
            .any(|p| topic::covers(&p, filter))
        {
            return false;
        }
        who.unrestricted
            || self
                .patterns(who, AclAction::Subscribe, false)
                .any(|p| topic::covers(&p, filter))
    }

    /// The subscribe-deny patterns of `who`, variables substituted: the broker delivers no
    /// message whose topic one of them matches, whatever filter matched it.
    pub fn read_denies(&self, who: &ClientIdentity) -> Vec<String> {
        self.patterns(who, AclAction::Subscribe, true).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> ClientIdentity {
        ClientIdentity {
            client_id: id.into(),
            username: id.into(),
            device_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_device_stays_in_its_own_namespace() {
        let acl = Acl::new(default_rules());
        let a = device("pump-a");
        assert!(acl.may_publish(&a, "devices/pump-a/telemetry"));
        assert!(acl.may_publish(&a, "devices/pump-a"));
        assert!(!acl.may_publish(&a, "devices/pump-b/telemetry"));
        assert!(!acl.may_publish(&a, "other"));
        assert!(acl.may_subscribe(&a, "devices/pump-a/cmd/#"));
        assert!(acl.may_subscribe(&a, "devices/pump-a/cmd/reboot"));
        assert!(!acl.may_subscribe(&a, "devices/pump-a/#"));
        assert!(!acl.may_subscribe(&a, "devices/pump-b/cmd/#"));
        assert!(!acl.may_subscribe(&a, "devices/+/cmd/#"));
        assert!(!acl.may_subscribe(&a, "#"));
    }

    #[test]
    fn wildcards_in_identities_never_widen() {
        let acl = Acl::new(vec![
            AclRule::new(AclAction::All, "users/{username}/#"),
            AclRule::new(AclAction::All, "clients/{client_id}/#"),
            AclRule::new(AclAction::All, "devices/{device_id}/#"),
        ]);
        for evil in ["+", "#", "a/b", "", "x+", "#/"] {
            let who = ClientIdentity {
                client_id: evil.into(),
                username: evil.into(),
                device_id: Some(evil.into()),
                ..Default::default()
            };
            for topic in ["users/bob/x", "clients/c1/x", "devices/d1/x"] {
                assert!(!acl.may_publish(&who, topic), "{evil:?} → {topic}");
            }
            for filter in ["users/#", "users/+/#", "clients/#", "devices/+/x", "#"] {
                assert!(!acl.may_subscribe(&who, filter), "{evil:?} → {filter}");
            }
        }
    }

    #[test]
    fn sparkplug_topics_follow_the_owned_edge_node() {
        let acl = Acl::new(default_rules());
        let mut who = device("gw-1");
        assert!(!acl.may_publish(&who, "spBv1.0/plant/NBIRTH/gw-1"));
        who.sparkplug = Some(("plant".into(), "gw-1".into()));
        assert!(acl.may_publish(&who, "spBv1.0/plant/NBIRTH/gw-1"));
        assert!(acl.may_publish(&who, "spBv1.0/plant/DDATA/gw-1/pump-3"));
        assert!(!acl.may_publish(&who, "spBv1.0/plant/NBIRTH/gw-2"));
        assert!(!acl.may_publish(&who, "spBv1.0/other/NBIRTH/gw-1"));
        assert!(acl.may_subscribe(&who, "spBv1.0/plant/NCMD/gw-1"));
        assert!(acl.may_subscribe(&who, "spBv1.0/plant/DCMD/gw-1/#"));
        assert!(!acl.may_subscribe(&who, "spBv1.0/plant/NCMD/+"));
    }

    #[test]
    fn deny_rules_win_even_for_unrestricted_clients() {
        let acl = Acl::new(vec![
            AclRule::new(AclAction::All, "#"),
            AclRule::deny(AclAction::Subscribe, "nosubscribe"),
            AclRule::deny(AclAction::Publish, "$SYS/#"),
        ]);
        let open = ClientIdentity {
            unrestricted: true,
            ..Default::default()
        };
        assert!(!acl.may_subscribe(&open, "nosubscribe"));
        assert!(
            acl.may_subscribe(&open, "+"),
            "`+` is accepted; `nosubscribe` is filtered at delivery"
        );
        assert_eq!(acl.read_denies(&open), vec!["nosubscribe".to_owned()]);
        assert!(acl.may_subscribe(&open, "a/+"));
        assert!(!acl.may_publish(&open, "$SYS/x"));
        assert!(acl.may_publish(&open, "a/b"));
    }

    #[test]
    fn rules_are_checked() {
        assert!(check_rule(&AclRule::new(AclAction::All, "a/{device_id}/#")).is_ok());
        assert!(check_rule(&AclRule::new(AclAction::All, "a/{nope}/#")).is_err());
        assert!(check_rule(&AclRule::new(AclAction::All, "a/#/b")).is_err());
        assert!(check_rule(&AclRule::new(AclAction::All, "a/{device_id")).is_err());
    }
}
