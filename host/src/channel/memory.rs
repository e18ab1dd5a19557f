//! `inmem` (alias `memory`): a broadcast inside one process. Enough for a
//! single gateway instance; several instances need a real broker.

use super::{Channel, Subscription};
use crate::model::{Event, Result, Topic};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events buffered for a subscriber that is behind; past this it is cut off
/// (its stream ends with an error) and the hub catches it up from storage.
const CAPACITY: usize = 16 * 1024;

/// `{"name":"inmem"}` takes no options.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

pub struct MemoryChannel {
    tx: broadcast::Sender<Arc<Event>>,
}

impl MemoryChannel {
    pub fn new() -> Self {
        MemoryChannel {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Default for MemoryChannel {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Channel for MemoryChannel {
    fn name(&self) -> &str {
        "inmem"
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        // No receiver is not an error: nobody is listening for this event,
        // and then it is not worth copying.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(event.clone()));
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        Ok(super::broadcast_subscription(self.tx.subscribe(), topic.clone()))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
