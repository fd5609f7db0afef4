//! `bind_to_process`: the agent watches each bound workload process (its pid
//! pinned by start time) and revokes the lease at the broker once the
//! process is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::attest::{Peer, stat};
use crate::node::NodeIdentity;

/// Most bound leases watched at once.
pub const MAX_WATCHES: usize = 65_536;

/// Leases bound to processes.
#[derive(Default)]
pub struct Watches {
    bound: Mutex<HashMap<String, Peer>>,
}

impl Watches {
    /// Watches `peer` for `lease_id` (refused silently beyond [`MAX_WATCHES`],
    /// with a warning: the lease then lives to its expiry).
    pub fn add(&self, peer: Peer, lease_id: String) {
        if let Ok(mut b) = self.bound.lock() {
            if b.len() >= MAX_WATCHES {
                tracing::warn!(%lease_id, "too many bound leases; this one lives to its expiry");
                return;
            }
            b.insert(lease_id, peer);
        }
    }

    /// Stops watching (the workload released the lease itself).
    pub fn forget(&self, lease_id: &str) {
        if let Ok(mut b) = self.bound.lock() {
            b.remove(lease_id);
        }
    }

    /// How many leases are watched.
    pub fn len(&self) -> usize {
        self.bound.lock().map_or(0, |b| b.len())
    }

    /// Whether no lease is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every `interval`; revokes the leases of exited processes
    /// (a failed revocation is retried at the next check).
    pub async fn run(self: Arc<Self>, node: Arc<NodeIdentity>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let exited: Vec<(String, Peer)> = match self.bound.lock() {
                Ok(b) => b
                    .iter()
                    // Exited: gone, its pid reused, or a zombie its parent
                    // has not reaped (which would otherwise keep the lease).
                    .filter(|(_, p)| {
                        stat(p.pid).map_or(true, |s| s.exited || s.start_time != p.start_time)
                    })
                    .map(|(l, p)| (l.clone(), p.clone()))
                    .collect(),
                Err(_) => continue,
            };
            for (lease_id, peer) in exited {
                match node
                    .broker
                    .send("DELETE", &format!("/v1/leases/{lease_id}"), None)
                    .await
                {
                    Ok(reply) if reply.status == 204 || reply.status == 404 => {
                        self.forget(&lease_id);
                        tracing::info!(%lease_id, pid = peer.pid, "process exited; lease revoked");
                    }
                    Ok(reply) => {
                        tracing::warn!(%lease_id, status = reply.status, "revoking a bound lease failed; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(%lease_id, %e, "revoking a bound lease failed; retrying");
                    }
                }
            }
        }
    }
}
