//! Runs the conformance suites against every native provider.

use std::sync::Arc;
use stategate::channel::memory::MemoryChannel;
use stategate::storage::{memory::MemoryStorage, sqlite::SqliteStorage};

storage_conformance!(memory_storage, async {
    Some(Arc::new(MemoryStorage::new()) as stategate::storage::DynStorage)
});

storage_conformance!(sqlite_storage, async {
    // The directory lives as long as the test process; each check gets its own.
    let dir = tempfile::tempdir().unwrap().keep();
    Some(Arc::new(SqliteStorage::open(dir.join("conformance.db")).unwrap()) as stategate::storage::DynStorage)
});

channel_conformance!(memory_channel, async {
    Some(Arc::new(MemoryChannel::new()) as stategate::channel::DynChannel)
});
