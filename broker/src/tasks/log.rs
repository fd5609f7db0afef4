//! The issuance log's timers: the refusal window's record and the
//! checkpoint of new records.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Broker;

/// Writes the refusal window's record, every `window`. A window whose
/// record cannot be written is carried into the next.
pub async fn refusal_writer(broker: Arc<Broker>, window: Duration) {
    let mut tick = tokio::time::interval(window);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(taken) = broker.refusals.take(broker.clock.now_ms()) else {
            continue;
        };
        let entry = crate::log::LogEntry {
            time_ms: broker.clock.now_ms(),
            kind: crate::log::RecordKind::Decision,
            request_id: crate::ids::random_id("req"),
            identity: None,
            grant: None,
            node: None,
            outcome: Some("deny".into()),
            body: taken.body(),
        };
        if let Err(e) = broker.record(entry).await {
            tracing::error!(
                code = e.code,
                "the refusal window could not be logged; carried over"
            );
            broker.refusals.restore(taken);
        }
    }
}

/// Checkpoints the head every `interval` (records since the last checkpoint only).
pub async fn checkpoint_timer(broker: Arc<Broker>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if let Ok((seq, hash)) = broker.store.head().await
            && seq > 0
        {
            broker.checkpoint_if_due(seq, &hash, true).await;
        }
    }
}
