//! Guests built against `stategate:gateway@0.1.0` and `@0.2.0` (the frozen
//! fixtures in guest-providers/testing/v0.1.0, …/v0.2.0 and
//! guest-policies/testing/v0.1.0, …/v0.2.0, built against wit/v0.1.0 and
//! wit/v0.2.0) keep loading on the 0.3.0 host and keep passing the same
//! suites (for storage, reads at a seq by replay: they have no `get-at`);
//! the host says which version it linked each guest as.

use crate::wasm_support::{channel_spec, guest, runtime, spec, storage_spec};
use serde_json::json;
use stategate::auth::PolicyInput;
use stategate::auth::hooks::PolicyHooks;
use stategate::wasm::{ChannelPre, Guest, GuestConfig, PolicyPre, StoragePre, World};

storage_conformance!(wasm_fs_storage_built_against_0_1_0, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(storage_spec(&spec(&guest("fs_storage_0_1_0"), &dir)).open(&dir, &runtime()).await.expect("the 0.1.0 guest opens"))
});

channel_conformance!(wasm_dir_channel_built_against_0_1_0, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(channel_spec(&spec(&guest("dir_channel_0_1_0"), &dir)).open(&runtime()).await.expect("the 0.1.0 guest opens"))
});

storage_conformance!(wasm_fs_storage_built_against_0_2_0, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(storage_spec(&spec(&guest("fs_storage_0_2_0"), &dir)).open(&dir, &runtime()).await.expect("the 0.2.0 guest opens"))
});

channel_conformance!(wasm_dir_channel_built_against_0_2_0, async {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(channel_spec(&spec(&guest("dir_channel_0_2_0"), &dir)).open(&runtime()).await.expect("the 0.2.0 guest opens"))
});

/// The version each guest is linked as.
fn linked<P: World>(name: &str) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let mut c = GuestConfig::at(guest(name), name);
    c.grants.dir = Some(dir.path().to_owned());
    let runtime = runtime();
    let g = Guest::<P>::load(&runtime, c.spec(runtime.settings())).unwrap_or_else(|e| panic!("{name} loads: {e}"));
    g.current().pre.version()
}

#[test]
fn each_guest_is_linked_as_the_version_it_was_built_against() {
    assert_eq!(linked::<StoragePre>("fs_storage"), "0.3.0");
    assert_eq!(linked::<StoragePre>("fs_storage_0_2_0"), "0.2.0");
    assert_eq!(linked::<StoragePre>("fs_storage_0_1_0"), "0.1.0");
    assert_eq!(linked::<ChannelPre>("dir_channel"), "0.3.0");
    assert_eq!(linked::<ChannelPre>("dir_channel_0_2_0"), "0.2.0");
    assert_eq!(linked::<ChannelPre>("dir_channel_0_1_0"), "0.1.0");
    assert_eq!(linked::<PolicyPre>("redact"), "0.3.0");
    assert_eq!(linked::<PolicyPre>("redact_0_2_0"), "0.2.0");
    assert_eq!(linked::<PolicyPre>("redact_0_1_0"), "0.1.0");
}

/// A component of another world is refused naming every version.
#[test]
fn a_component_of_no_version_is_refused_naming_each() {
    let runtime = runtime();
    let c = GuestConfig::at(guest("redact_0_1_0"), "wrong");
    let err = match Guest::<StoragePre>::load(&runtime, c.spec(runtime.settings())) {
        Ok(_) => panic!("a policy hook is not a storage provider"),
        Err(e) => e.to_string(),
    };
    for part in [
        "does not implement world storage-provider",
        "stategate:gateway@0.3.0",
        "stategate:gateway@0.2.0",
        "stategate:gateway@0.1.0",
    ] {
        assert!(err.contains(part), "{err:?} should say {part:?}");
    }
}

/// Data written by the 0.1.0 guest is read by the 0.3.0 one (the same log
/// format), and the other way round: upgrading a guest keeps its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_storage_upgrade_keeps_the_data() {
    use crate::storage_conformance::put;
    use stategate::model::{Filter, RecordRef, StateQuery};
    let dir = tempfile::tempdir().unwrap();
    let r = |k: &str| RecordRef::parse("d", "t", k).unwrap();
    {
        let old = storage_spec(&spec(&guest("fs_storage_0_1_0"), dir.path())).open(dir.path(), &runtime()).await.unwrap();
        for (k, n) in [("a", 1), ("b", 2), ("c", 3)] {
            old.append(put(&r(k), json!({"n": n}))).await.unwrap();
        }
    }
    let new = storage_spec(&spec(&guest("fs_storage"), dir.path())).open(dir.path(), &runtime()).await.unwrap();
    new.append(put(&r("d"), json!({"n": 4}))).await.unwrap();
    let q = StateQuery {
        domain: "d".into(),
        ty: "t".into(),
        filter: Filter::parse("q", r#"{"n": {"$gte": 2}}"#).unwrap(),
        sort: None,
        limit: 10,
        offset: 0,
    };
    let keys = |states: Vec<stategate::model::State>| states.into_iter().map(|s| s.record.key).collect::<Vec<_>>();
    assert_eq!(keys(new.search_states(&q).await.unwrap()), ["b", "c", "d"]);
    drop(new);
    let old = storage_spec(&spec(&guest("fs_storage_0_1_0"), dir.path())).open(dir.path(), &runtime()).await.unwrap();
    assert_eq!(keys(old.search_states(&q).await.unwrap()), ["b", "c", "d"]);
    assert_eq!(old.head().await.unwrap(), 4);
}

/// 0.1.0 and 0.2.0 policy hooks decide as they did, next to a 0.3.0 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_policy_hooks_decide_as_before() {
    let hooks = json!({
        "old": {"path": guest("redact_0_1_0"), "config": {"fields": "secret"}},
        "mid": {"path": guest("redact_0_2_0"), "config": {"fields": "secret"}},
        "new": {"path": guest("redact"), "config": {"fields": "secret"}},
    });
    let hooks = PolicyHooks::from_config(&hooks.to_string(), &runtime()).await.unwrap().unwrap();
    for domain in ["old", "mid", "new"] {
        let response = json!({"domain": domain, "values": {"a": 1, "secret": "s"}});
        let input = PolicyInput {
            claims: Default::default(),
            method: "/stategate.StateService/Get".into(),
            metadata: Default::default(),
            body: json!({"domain": domain}).into(),
            client_stream: false,
            server_stream: false,
            response: Some(response.into()),
            domain: Some(domain.into()),
        };
        hooks.authorize_request(&input).await.unwrap();
        let redacted = hooks.authorize_response(&input).await.unwrap().expect("redacted");
        assert_eq!(redacted, json!({"domain": domain, "values": {"a": 1}}), "{domain}");
    }
}
