//! The event catalog: the six event types, their descriptions and sample events, compiled in from `data/catalog.json`.

use serde::Deserialize;
use std::sync::OnceLock;

/// One catalog entry.
#[derive(Debug, Clone, Deserialize)]
pub struct EventType {
    #[serde(rename = "type")]
    pub name: String,
    pub description: String,
    pub partner_action: String,
    /// A sample event (`id`, `type`, `created_at`, `data`), sent by `POST /v1/endpoints/{id}/test`.
    pub sample: serde_json::Value,
}

#[derive(Deserialize)]
struct CatalogFile {
    event_types: Vec<EventType>,
}

/// The catalog, parsed once.
pub fn event_types() -> &'static [EventType] {
    static CATALOG: OnceLock<Vec<EventType>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let file: CatalogFile = serde_json::from_str(include_str!("../data/catalog.json"))
            .expect("data/catalog.json is valid; a unit test checks it");
        file.event_types
    })
}

pub fn find(name: &str) -> Option<&'static EventType> {
    event_types().iter().find(|t| t.name == name)
}

pub fn is_known(name: &str) -> bool {
    find(name).is_some()
}

/// The valid type names joined for error messages.
pub fn names() -> String {
    event_types()
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_the_six_types_with_matching_samples() {
        let names: Vec<&str> = event_types().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bill.created",
                "bill.document_ready",
                "audit.started",
                "audit.completed",
                "letter.ready",
                "dispute.status_changed"
            ]
        );
        for t in event_types() {
            assert_eq!(t.sample["type"], t.name.as_str(), "sample of {}", t.name);
            assert!(t.sample["data"].is_object(), "sample data of {}", t.name);
            assert!(crate::model::parse_time(t.sample["created_at"].as_str().unwrap()).is_some());
        }
        assert!(is_known("letter.ready"));
        assert!(!is_known("letter.sent"));
    }
}
