//! Operator notifications (contract section 10): the operator endpoint kept in step with `[notifications]`, and the round that decides the time-based notifications.
//!
//! The notifications themselves are made by the store (`store/sled/notices.rs`), in the transactions
//! that decide them; they are delivered by the scheduler like any delivery, to an endpoint of the
//! reserved partner [`OPERATOR_PARTNER`], which the API neither lists nor lets anyone change.

use crate::config::{Config, NotificationSecret};
use crate::model::{Endpoint, EndpointSecret, Environment};
use crate::store::{NoticeRound, Store, StoreError, OPERATOR_PARTNER};
use std::time::Duration;

/// Attempts in flight to the notification URL at most: a slow one holds no more slots than this.
pub const OPERATOR_MAX_IN_FLIGHT: u32 = 4;
/// `endpoint.failing` after this long without a success.
pub const FAILING_AFTER: Duration = Duration::from_secs(3600);
/// At most one `delivery.dead_lettered` per this window.
pub const DEAD_LETTER_WINDOW: Duration = Duration::from_secs(60);

/// Is this the operator endpoint (hidden from the API and `/status`)?
pub fn is_operator(ep: &Endpoint) -> bool {
    ep.partner_id == OPERATOR_PARTNER
}

/// Creates, updates or (when `notifications.url` is empty) deletes the operator endpoint.
pub async fn setup(
    store: &Store,
    config: &Config,
    secret: Option<&NotificationSecret>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let existing = store.endpoints().into_iter().find(|ep| is_operator(ep));
    let (Some(url), Some(secret)) = (config.notifications.url.clone(), secret) else {
        if let Some(ep) = existing {
            // Pending notifications are cancelled with it: nobody is there to receive them.
            store.delete_endpoint(ep.num).await?;
            tracing::info!("operator notifications are off (notifications.url is empty)");
        }
        return Ok(());
    };
    let secrets = vec![EndpointSecret {
        secret: secret.secret.clone(),
        expires_at_ms: None,
    }];
    match existing {
        Some(ep) => {
            store
                .update_endpoint(ep.num, move |ep| {
                    ep.url = url.clone();
                    ep.secrets = secrets.clone();
                    ep.enabled = true;
                    ep.disabled_reason = None;
                    ep.max_in_flight = OPERATOR_MAX_IN_FLIGHT;
                })
                .await?;
        }
        None => {
            store
                .create_endpoint(Endpoint {
                    num: 0,
                    partner_id: OPERATOR_PARTNER.to_string(),
                    environment: Environment::Production,
                    url,
                    event_types: vec!["*".to_string()],
                    description: "operator notifications".to_string(),
                    headers: Vec::new(),
                    ordered: false,
                    max_in_flight: OPERATOR_MAX_IN_FLIGHT,
                    rate_limit_per_second: None,
                    enabled: true,
                    disabled_reason: None,
                    created_at_ms: now_ms,
                    secrets,
                })
                .await?;
        }
    }
    tracing::info!(path = %secret.source.display(), "operator notifications are on");
    Ok(())
}

/// One round of the time-based notifications; housekeeping calls it about once a second, after
/// refreshing the oldest pending delivery.
pub async fn round(store: &Store, config: &Config, now_ms: u64) -> Result<(), StoreError> {
    if config.notifications.url.is_none() {
        return Ok(());
    }
    let hooks = &config.test_hooks;
    let ms = |d: Duration| d.as_millis() as u64;
    store
        .notice_round(NoticeRound {
            now_ms,
            failing_after_ms: ms(hooks.failing_after.unwrap_or(FAILING_AFTER)),
            dead_letter_window_ms: ms(hooks.dead_letter_window.unwrap_or(DEAD_LETTER_WINDOW)),
            stalled_after_ms: ms(config.notifications.stalled_after),
        })
        .await
}
