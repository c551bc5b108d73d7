//! What the dashboard's live view shows of a tenant's topics, without IO:
//! per topic the channels joined to it and the sockets they use on this
//! instance, and its presence (held here and on the other instances) with
//! the tracked keys and some of their states, every part capped so that a
//! tenant with many topics or large states gives a small answer.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// Caps of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverviewLimits {
    /// Topics listed (the busiest first).
    pub topics: usize,
    /// Presence keys listed per topic.
    pub keys: usize,
    /// States listed per presence key.
    pub states: usize,
    /// Bytes of one state's JSON; a larger one is replaced by
    /// `{"truncated_bytes": n}`.
    pub state_bytes: usize,
}

impl Default for OverviewLimits {
    fn default() -> OverviewLimits {
        OverviewLimits {
            topics: 50,
            keys: 20,
            states: 3,
            state_bytes: 512,
        }
    }
}

/// One topic as the hub holds it.
#[derive(Debug, Default)]
pub(crate) struct TopicUse {
    /// Channels joined to it on this instance.
    pub(crate) clients: usize,
    /// Distinct sockets those channels use.
    pub(crate) connections: usize,
    /// Presences tracked on it (every key, every instance).
    pub(crate) present: usize,
    /// Its presence keys.
    pub(crate) keys: usize,
    /// Some of those keys (the hub copies at most
    /// [`OverviewLimits::keys`] of them).
    pub(crate) presence: Vec<PresenceUse>,
}

/// One presence key of a topic.
#[derive(Debug)]
pub(crate) struct PresenceUse {
    pub(crate) key: String,
    /// Presences tracked with this key (one per channel, all instances).
    pub(crate) count: usize,
    /// The states of the first of them (at most [`OverviewLimits::states`]).
    pub(crate) states: Vec<Map<String, Value>>,
}

/// The topic (and whether it is private) of a hub's topic key
/// (`public:realtime:room`), as clients name it (`room`).
fn name_of(topic_key: &str) -> (&str, bool) {
    let (topic, private) = match topic_key.split_once(':') {
        Some(("private", topic)) => (topic, true),
        Some((_, topic)) => (topic, false),
        None => (topic_key, false),
    };
    (topic.strip_prefix("realtime:").unwrap_or(topic), private)
}

fn capped(state: Map<String, Value>, max: usize) -> Value {
    let bytes = serde_json::to_string(&state).map_or(usize::MAX, |text| text.len());
    if bytes <= max {
        Value::Object(state)
    } else {
        json!({ "truncated_bytes": bytes })
    }
}

/// The overview of `topics` (by topic key) within `limits`: `{"topics":
/// [{"topic", "private", "clients", "connections", "presence": {"count",
/// "keys": [{"key", "count", "states"}], "more_keys"}}], "total",
/// "truncated"}`, the busiest topics (clients plus presences) first.
pub(crate) fn render(topics: HashMap<String, TopicUse>, limits: &OverviewLimits) -> Value {
    let total = topics.len();
    let mut listed: Vec<(String, TopicUse)> = topics.into_iter().collect();
    listed.sort_by(|a, b| {
        (b.1.clients + b.1.present)
            .cmp(&(a.1.clients + a.1.present))
            .then(a.0.cmp(&b.0))
    });
    listed.truncate(limits.topics);
    let topics: Vec<Value> = listed
        .into_iter()
        .map(|(key, mut topic)| {
            let (name, private) = name_of(&key);
            topic.presence.sort_by(|a, b| a.key.cmp(&b.key));
            topic.presence.truncate(limits.keys);
            let more_keys = topic.keys.saturating_sub(topic.presence.len());
            let keys: Vec<Value> = topic
                .presence
                .into_iter()
                .map(|p| {
                    let states: Vec<Value> = p
                        .states
                        .into_iter()
                        .take(limits.states)
                        .map(|s| capped(s, limits.state_bytes))
                        .collect();
                    json!({"key": p.key, "count": p.count, "states": states})
                })
                .collect();
            json!({
                "topic": name,
                "private": private,
                "clients": topic.clients,
                "connections": topic.connections,
                "presence": {"count": topic.present, "keys": keys, "more_keys": more_keys},
            })
        })
        .collect();
    json!({"truncated": topics.len() < total, "total": total, "topics": topics})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn topic(clients: usize, connections: usize, presence: Vec<PresenceUse>) -> TopicUse {
        TopicUse {
            clients,
            connections,
            present: presence.iter().map(|p| p.count).sum(),
            keys: presence.len(),
            presence,
        }
    }

    fn presence(key: &str, count: usize, states: Vec<Value>) -> PresenceUse {
        PresenceUse {
            key: key.to_owned(),
            count,
            states: states.into_iter().map(state).collect(),
        }
    }

    #[test]
    fn topics_show_clients_connections_and_presence_busiest_first() {
        let mut topics = HashMap::new();
        topics.insert("public:realtime:quiet".to_owned(), topic(1, 1, vec![]));
        topics.insert(
            "private:realtime:room".to_owned(),
            topic(
                2,
                1,
                vec![
                    presence("zoe", 1, vec![json!({"status": "away"})]),
                    presence("ann", 2, vec![json!({"n": 1}), json!({"n": 2})]),
                ],
            ),
        );
        // Presence held by another instance only: no channel here.
        topics.insert(
            "public:remote".to_owned(),
            topic(0, 0, vec![presence("bob", 1, vec![json!({})])]),
        );
        let view = render(topics, &OverviewLimits::default());
        assert_eq!(view["total"], 3);
        assert_eq!(view["truncated"], false);
        let topics = view["topics"].as_array().unwrap();
        assert_eq!(
            topics[0],
            json!({"topic": "room", "private": true, "clients": 2, "connections": 1,
                   "presence": {"count": 3, "more_keys": 0, "keys": [
                       {"key": "ann", "count": 2, "states": [{"n": 1}, {"n": 2}]},
                       {"key": "zoe", "count": 1, "states": [{"status": "away"}]}]}})
        );
        // Ties by name.
        assert_eq!(topics[1]["topic"], "quiet");
        assert_eq!(topics[1]["presence"]["count"], 0);
        assert_eq!(topics[2]["topic"], "remote");
        assert_eq!(topics[2]["clients"], 0);
    }

    #[test]
    fn every_part_is_capped() {
        let limits = OverviewLimits {
            topics: 2,
            keys: 1,
            states: 1,
            state_bytes: 20,
        };
        let mut topics = HashMap::new();
        for i in 0..5 {
            topics.insert(
                format!("public:realtime:t{i}"),
                topic(
                    i,
                    i,
                    vec![
                        presence(
                            "a",
                            2,
                            vec![json!({"big": "x".repeat(100)}), json!({"small": 1})],
                        ),
                        presence("b", 1, vec![json!({"small": 1})]),
                    ],
                ),
            );
        }
        let view = render(topics, &limits);
        assert_eq!(view["total"], 5);
        assert_eq!(view["truncated"], true);
        let topics = view["topics"].as_array().unwrap();
        assert_eq!(topics.len(), 2);
        assert_eq!(topics[0]["topic"], "t4");
        assert_eq!(topics[1]["topic"], "t3");
        let presence = &topics[0]["presence"];
        assert_eq!(presence["count"], 3);
        assert_eq!(presence["more_keys"], 1);
        assert_eq!(presence["keys"].as_array().unwrap().len(), 1);
        assert_eq!(
            presence["keys"][0]["states"],
            json!([{"truncated_bytes": 110}])
        );
        assert_eq!(name_of("public:plain"), ("plain", false));
        assert_eq!(name_of("odd"), ("odd", false));
    }
}
