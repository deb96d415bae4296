//! The store contract: the same cases against every backend (SQLite in a temp file, PostgreSQL in a
//! fresh database of the test server `scripts/test` starts). A backend is done when all of them pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use switchyard::store::{
    AccountKind, AccountRecord, AccountStatus, AuditEntry, Budgets, ClientKeyRecord, PendingLogin, PgSettings, PgStore,
    RequestFilter, RequestRow, Resealed, SealedPayload, SealedRow, SealedTokens, SqliteStore, StatsBy, Store,
    StoreError,
};

/// A store to run one case on, and what keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("contract.db")).await.unwrap();
        Backend { store: Arc::new(store), _dir: Some(dir) }
    }

    async fn postgres() -> Backend {
        let url = support::fresh_database().await;
        let store = PgStore::open(&PgSettings { url, max_connections: 8 }).await.unwrap();
        Backend { store: Arc::new(store), _dir: None }
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                let backend = super::Backend::sqlite().await;
                super::$case(backend.store.clone()).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                let backend = super::Backend::postgres().await;
                super::$case(backend.store.clone()).await;
            })*
        }
    };
}

contract!(
    accounts_are_unique_by_name_and_change_in_place,
    routing_states_follow_their_accounts,
    client_keys_revoke_rehash_and_budget,
    settings_are_taken_once,
    audit_lists_newest_first,
    pending_logins_are_taken_once_and_expire,
    token_writes_compare_versions_and_leases_exclude,
    request_queries_page_filter_bucket_and_rank,
    payloads_and_retention,
    sealed_values_are_replaced_together,
);

fn record(id: &str, name: &str, created: i64) -> AccountRecord {
    AccountRecord {
        id: id.into(),
        name: name.into(),
        kind: AccountKind::OAuth,
        status: AccountStatus::Active,
        access_token: Some("v3.1.a".into()),
        refresh_token: Some("v3.1.r".into()),
        api_key: None,
        expires_at_ms: Some(5),
        email: Some("x@example.com".into()),
        account_uuid: None,
        org_uuid: None,
        org_name: None,
        created_at_ms: created,
        updated_at_ms: created,
        priority: 0,
        weight: 1,
        plan: None,
        token_version: 0,
    }
}

async fn accounts_are_unique_by_name_and_change_in_place(s: Arc<dyn Store>) {
    s.save_account(&record("1", "b", 1)).await.unwrap();
    s.save_account(&record("2", "a", 1)).await.unwrap();
    s.save_account(&record("3", "c", 0)).await.unwrap();
    let duplicate = s.save_account(&record("4", "a", 2)).await.unwrap_err();
    assert!(matches!(&duplicate, StoreError::Duplicate { name, .. } if name == "a"), "{duplicate}");
    assert!(!duplicate.retryable());
    let names: Vec<String> = s.list_accounts().await.unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["c", "a", "b"], "oldest first, then by name");

    let t = SealedTokens { access_token: "v3.1.a2".into(), refresh_token: "v3.1.r2".into(), expires_at_ms: 9 };
    assert!(s.set_status("1", AccountStatus::NeedsLogin, 5).await.unwrap());
    assert_eq!(s.update_tokens("1", &t, Some(0), 6).await.unwrap(), Some(1));
    assert_eq!(s.update_tokens("nope", &t, None, 6).await.unwrap(), None);
    assert!(s.set_routing("1", Some(3), None, 7).await.unwrap());
    assert!(s.set_routing("1", None, Some(9), 8).await.unwrap());
    s.set_plan("1", "max").await.unwrap();
    let b = s.find_account("b").await.unwrap().unwrap();
    assert_eq!(
        (b.refresh_token.as_deref(), b.expires_at_ms, b.status, b.priority, b.weight, b.plan.as_deref()),
        (Some("v3.1.r2"), Some(9), AccountStatus::Active, 3, 9, Some("max")),
        "new tokens make the account active again"
    );
    assert_eq!(b.updated_at_ms, 8);
    assert_eq!(b.email.as_deref(), Some("x@example.com"));
    // Saving a record again replaces it but keeps the operator's routing.
    let mut again = record("1", "b", 1);
    again.api_key = Some("v3.1.k".into());
    again.updated_at_ms = 10;
    s.save_account(&again).await.unwrap();
    let b = s.find_account("b").await.unwrap().unwrap();
    assert_eq!((b.api_key.as_deref(), b.priority, b.weight), (Some("v3.1.k"), 3, 9));

    assert!(s.remove_account("b").await.unwrap());
    assert!(!s.remove_account("b").await.unwrap());
    assert!(s.find_account("b").await.unwrap().is_none());
    assert!(!s.set_status("1", AccountStatus::Paused, 11).await.unwrap());
}

async fn routing_states_follow_their_accounts(s: Arc<dyn Store>) {
    s.save_account(&record("1", "a", 1)).await.unwrap();
    s.save_account(&record("2", "b", 1)).await.unwrap();
    let states = vec![("1".to_owned(), "{\"n\":1}".to_owned()), ("2".to_owned(), "{\"n\":2}".to_owned())];
    s.save_states("x", &states, 5).await.unwrap();
    s.save_states("y", &states[..1], 5).await.unwrap();
    s.remove_account("b").await.unwrap();
    // A state for an account removed meanwhile is dropped, not an error; the others are written, and only
    // this instance's rows change.
    let states = vec![("1".to_owned(), "{\"n\":3}".to_owned()), ("2".to_owned(), "{\"n\":4}".to_owned())];
    s.save_states("x", &states, 6).await.unwrap();
    let mut rows: Vec<(String, String, String, i64)> = s
        .load_states()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.account_id, r.instance, r.state, r.updated_at_ms))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("1".to_owned(), "x".to_owned(), "{\"n\":3}".to_owned(), 6),
            ("1".to_owned(), "y".to_owned(), "{\"n\":1}".to_owned(), 5)
        ]
    );
    s.save_states("x", &[], 7).await.unwrap();
}

fn key(id: &str, name: &str, hash: &str) -> ClientKeyRecord {
    ClientKeyRecord {
        id: id.into(),
        name: name.into(),
        hash: hash.into(),
        role: "user".into(),
        rpm: Some(10),
        tpm: None,
        concurrency: Some(2),
        accounts: Some("a,b".into()),
        created_at_ms: 1,
        expires_at_ms: None,
        revoked_at_ms: None,
        updated_at_ms: 1,
        budget_usd_day: None,
        budget_usd_month: Some(5.0),
        budget_tokens_day: None,
    }
}

async fn client_keys_revoke_rehash_and_budget(s: Arc<dyn Store>) {
    s.insert_client_key(&key("k1", "app", "h1")).await.unwrap();
    let duplicate = s.insert_client_key(&key("k2", "app", "h2")).await.unwrap_err();
    assert!(matches!(&duplicate, StoreError::Duplicate { name, .. } if name == "app"), "{duplicate}");
    assert!(s.revoke_client_key("app", 5).await.unwrap());
    assert!(!s.revoke_client_key("app", 6).await.unwrap(), "already revoked");
    assert!(s.rehash_client_key("app", "h3", 7).await.unwrap());
    let budgets = Budgets { usd_day: Some(1.5), usd_month: None, tokens_day: Some(1000) };
    assert!(s.set_client_key_budgets("app", &budgets, 8).await.unwrap());
    assert!(!s.set_client_key_budgets("nobody", &budgets, 8).await.unwrap());
    let keys = s.list_client_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!((k.hash.as_str(), k.revoked_at_ms, k.updated_at_ms), ("h3", None, 8));
    assert_eq!((k.budget_usd_day, k.budget_usd_month, k.budget_tokens_day), (Some(1.5), Some(5.0), Some(1000)));
    assert_eq!((k.rpm, k.concurrency, k.accounts.as_deref()), (Some(10), Some(2), Some("a,b")));
    assert_eq!(s.find_client_key_by_hash("h3").await.unwrap().map(|k| k.name).as_deref(), Some("app"));
    assert!(s.find_client_key_by_hash("h1").await.unwrap().is_none(), "the old hash is gone");

    let spent = |key: &str, at_ms: i64, cost: f64| RequestRow {
        id: format!("sy_{key}_{at_ms}"),
        at_ms,
        client_key: Some(key.into()),
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: cost,
        status: 200,
        method: "POST".into(),
        path: "/v1/messages".into(),
        ..RequestRow::default()
    };
    s.insert_requests(&[spent("app", 100, 0.25), spent("app", 200, 0.5), spent("other", 50, 1.0)]).await.unwrap();
    let mut spend = s.spend_since(60).await.unwrap();
    spend.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(spend.len(), 1);
    assert_eq!((spend[0].0.as_str(), spend[0].2), ("app", 30));
    assert!((spend[0].1 - 0.75).abs() < 1e-9);
}

async fn settings_are_taken_once(s: Arc<dyn Store>) {
    assert_eq!(s.get_setting("x").await.unwrap(), None);
    s.put_setting("x", Some("1"), 1).await.unwrap();
    s.put_setting("x", Some("2"), 2).await.unwrap();
    assert_eq!(s.get_setting("x").await.unwrap().as_deref(), Some("2"));
    s.put_setting("w", Some("0"), 3).await.unwrap();
    assert_eq!(s.list_settings().await.unwrap(), [("w".to_owned(), "0".to_owned()), ("x".to_owned(), "2".to_owned())]);
    s.put_setting("x", None, 3).await.unwrap();
    assert_eq!(s.get_setting("x").await.unwrap(), None);
    // Of many callers racing for a single-use value, exactly one wins.
    s.put_setting("link", Some("token"), 4).await.unwrap();
    let takers = (0..16).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.take_setting("link", "token").await.unwrap() })
    });
    let won = futures_util::future::join_all(takers).await.into_iter().filter(|t| *t.as_ref().unwrap()).count();
    assert_eq!(won, 1);
    // Claims: set only over what the caller saw; of racing claimers one wins, absent or present.
    let claimers = (0..8).map(|n| {
        let s = s.clone();
        tokio::spawn(async move { s.claim_setting("alert", None, &n.to_string(), 6).await.unwrap() })
    });
    let won = futures_util::future::join_all(claimers).await.into_iter().filter(|t| *t.as_ref().unwrap()).count();
    assert_eq!(won, 1);
    let now = s.get_setting("alert").await.unwrap().unwrap();
    assert!(!s.claim_setting("alert", Some("stale"), "x", 7).await.unwrap());
    assert!(s.claim_setting("alert", Some(&now), "later", 7).await.unwrap());
    assert_eq!(s.get_setting("alert").await.unwrap().as_deref(), Some("later"));
    s.put_setting("link", Some("new"), 5).await.unwrap();
    assert!(!s.take_setting("link", "token").await.unwrap(), "a replaced value is not taken");
    assert_eq!(s.get_setting("link").await.unwrap().as_deref(), Some("new"));
}

async fn audit_lists_newest_first(s: Arc<dyn Store>) {
    for (at, action) in [(10, "a"), (20, "b"), (20, "c"), (5, "old")] {
        let entry = AuditEntry {
            at_ms: at,
            actor: "cli:me".into(),
            source: "cli".into(),
            action: action.into(),
            target: "t".into(),
            outcome: "ok".into(),
            detail: String::new(),
        };
        s.append_audit(&entry).await.unwrap();
    }
    let actions: Vec<String> = s.list_audit(10).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["c", "b", "a"], "newest first, later writes first on a tie, older ones left out");
}

async fn pending_logins_are_taken_once_and_expire(s: Arc<dyn Store>) {
    let p = PendingLogin {
        state: "st".into(),
        verifier: "v3.1.x".into(),
        redirect_uri: "https://cb".into(),
        console: true,
        account: Some("a".into()),
        expires_at_ms: 100,
    };
    s.put_pending_login(&p).await.unwrap();
    let taken = s.take_pending_login("st", 50).await.unwrap().unwrap();
    assert_eq!((taken.verifier.as_str(), taken.console, taken.account.as_deref()), ("v3.1.x", true, Some("a")));
    assert!(s.take_pending_login("st", 50).await.unwrap().is_none());
    s.put_pending_login(&p).await.unwrap();
    s.put_pending_login(&PendingLogin { verifier: "v3.1.y".into(), ..p.clone() }).await.unwrap();
    assert!(s.take_pending_login("st", 100).await.unwrap().is_none(), "expired");
    s.put_pending_login(&p).await.unwrap();
    assert_eq!(s.clear_pending_logins().await.unwrap(), 1);
}

async fn request_queries_page_filter_bucket_and_rank(s: Arc<dyn Store>) {
    let mut rows = Vec::new();
    // a: 20 requests at 1..=20 ms, one a minute; b: five at 100..=500 ms, the last a 429; one unassigned.
    for i in 1..=20i64 {
        rows.push(RequestRow {
            id: format!("sy_a{i:02}"),
            at_ms: i * 60_000,
            account: Some("a".to_owned()),
            duration_ms: i,
            status: 200,
            output_tokens: 1,
            method: "POST".into(),
            path: "/v1/messages".into(),
            ..RequestRow::default()
        });
    }
    for i in 1..=5i64 {
        rows.push(RequestRow {
            id: format!("sy_b{i}"),
            at_ms: 60_000,
            account: Some("b".into()),
            model: Some("m".into()),
            client_key: Some("k".into()),
            duration_ms: i * 100,
            status: if i == 5 { 429 } else { 200 },
            cost_usd: 0.5,
            stream: i % 2 == 0,
            ..RequestRow::default()
        });
    }
    rows.push(RequestRow {
        id: "sy_none".into(),
        at_ms: 30_000,
        status: 503,
        error_type: Some("overloaded_error".into()),
        ..RequestRow::default()
    });
    s.insert_requests(&rows).await.unwrap();
    // Written twice (a retried batch): still one row each.
    s.insert_requests(&rows[..3]).await.unwrap();

    let stats = s.request_stats(0, StatsBy::Account).await.unwrap();
    let names: Vec<&str> = stats.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["-", "a", "b"]);
    assert_eq!(
        (stats[1].requests, stats[1].errors, stats[1].p50_ms, stats[1].p95_ms, stats[1].output_tokens),
        (20, 0, 10, 19, 20)
    );
    assert_eq!((stats[2].requests, stats[2].errors, stats[2].p50_ms, stats[2].p95_ms), (5, 1, 300, 500));
    assert!((stats[2].cost_usd - 2.5).abs() < 1e-9);
    assert_eq!((stats[0].requests, stats[0].errors), (1, 1));
    let all = s.request_stats(0, StatsBy::All).await.unwrap();
    assert_eq!((all.len(), all[0].group.as_str(), all[0].requests), (1, "all", 26));
    assert!(s.request_stats(10_000_000, StatsBy::Key).await.unwrap().is_empty());

    // Pages of 4, newest first, never overlapping; ties on time broken by id.
    let mut seen = Vec::new();
    let mut filter = RequestFilter { limit: 4, ..RequestFilter::default() };
    loop {
        let page = s.find_requests(&filter).await.unwrap();
        let Some(last) = page.last() else { break };
        filter.before = Some((last.at_ms, last.id.clone()));
        seen.extend(page.into_iter().map(|r| (r.at_ms, r.id)));
    }
    assert_eq!(seen.len(), 26);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "strictly newest first: {seen:?}");
    let only = |f: RequestFilter| {
        let s = s.clone();
        async move { s.find_requests(&RequestFilter { limit: 100, ..f }).await.unwrap().len() }
    };
    assert_eq!(only(RequestFilter { account: Some("b".into()), ..RequestFilter::default() }).await, 5);
    assert_eq!(only(RequestFilter { status: Some(429), ..RequestFilter::default() }).await, 1);
    let both = RequestFilter { model: Some("m".into()), client_key: Some("k".into()), ..RequestFilter::default() };
    assert_eq!(only(both).await, 5);
    assert_eq!(only(RequestFilter { since_ms: 10 * 60_000, ..RequestFilter::default() }).await, 11);
    let window = RequestFilter { since_ms: 60_000, until_ms: Some(120_000), ..RequestFilter::default() };
    assert_eq!(only(window).await, 6);

    // Ten-minute buckets: [0, 10 min) holds a's first nine, all of b and the unassigned one.
    let series = s.request_series(0, 600_000).await.unwrap();
    let counts: Vec<(i64, i64, i64)> = series.iter().map(|p| (p.at_ms, p.requests, p.errors)).collect();
    assert_eq!(counts, [(0, 15, 2), (600_000, 10, 0), (1_200_000, 1, 0)]);

    let one = s.get_request("sy_b2").await.unwrap().unwrap();
    assert_eq!((one.account.as_deref(), one.duration_ms, one.stream, one.cost_usd), (Some("b"), 200, true, 0.5));
    assert!(s.get_request("sy_missing").await.unwrap().is_none());

    // A batch larger than any one statement's rows.
    let many: Vec<RequestRow> = (0..700)
        .map(|i| RequestRow { id: format!("sy_m{i:04}"), at_ms: 5_000_000 + i, status: 200, ..RequestRow::default() })
        .collect();
    s.insert_requests(&many).await.unwrap();
    let filter = RequestFilter { since_ms: 5_000_000, limit: 1000, ..RequestFilter::default() };
    assert_eq!(s.find_requests(&filter).await.unwrap().len(), 700);
}

async fn payloads_and_retention(s: Arc<dyn Store>) {
    let rows: Vec<RequestRow> = (1..=4i64)
        .map(|i| RequestRow {
            id: format!("sy_p{i}"),
            at_ms: i * 1000,
            status: 200,
            payload_request: (i % 2 == 0).then(|| format!("v3.1.req{i}")),
            payload_response: (i % 2 == 0).then(|| format!("v3.1.resp{i}")),
            ..RequestRow::default()
        })
        .collect();
    s.insert_requests(&rows).await.unwrap();
    assert_eq!(
        s.get_payload("sy_p2").await.unwrap(),
        Some((Some("v3.1.req2".to_owned()), Some("v3.1.resp2".to_owned())))
    );
    assert_eq!(s.get_payload("sy_p1").await.unwrap(), None);
    let mut listed: Vec<String> = s.list_payloads().await.unwrap().into_iter().map(|p| p.request_id).collect();
    listed.sort();
    assert_eq!(listed, ["sy_p2", "sy_p4"]);
    assert_eq!(s.delete_payloads_before(3000, true).await.unwrap(), 1);
    assert_eq!(s.delete_payloads_before(3000, false).await.unwrap(), 1);
    assert_eq!(s.delete_requests_before(3000, true).await.unwrap(), 2);
    assert_eq!(s.delete_requests_before(3000, false).await.unwrap(), 2);
    assert_eq!(s.delete_requests_before(3000, false).await.unwrap(), 0);
    assert_eq!(s.find_requests(&RequestFilter { limit: 10, ..RequestFilter::default() }).await.unwrap().len(), 2);
    // Retention removes everything expired, however many batches that takes, and nothing newer.
    let old: Vec<RequestRow> = (0..12_345)
        .map(|i| RequestRow {
            id: format!("sy_old{i:05}"),
            at_ms: 10_000 + i,
            status: 200,
            payload_request: (i % 3 == 0).then(|| "v3.1.r".to_owned()),
            ..RequestRow::default()
        })
        .collect();
    s.insert_requests(&old).await.unwrap();
    assert_eq!(s.delete_payloads_before(22_000, false).await.unwrap(), 4_001, "4,000 old ones and sy_p4");
    assert_eq!(s.delete_requests_before(22_000, false).await.unwrap(), 12_002, "12,000 old ones and two");
    assert_eq!(s.find_requests(&RequestFilter { limit: 1000, ..RequestFilter::default() }).await.unwrap().len(), 345);
    s.vacuum().await.unwrap();
}

async fn sealed_values_are_replaced_together(s: Arc<dyn Store>) {
    s.save_account(&record("1", "a", 1)).await.unwrap();
    s.put_setting("admin.totp", Some("v3.1.totp"), 1).await.unwrap();
    let payload =
        RequestRow { id: "sy_q".into(), at_ms: 1, payload_request: Some("v3.1.q".into()), ..RequestRow::default() };
    s.insert_requests(&[payload]).await.unwrap();
    s.put_pending_login(&PendingLogin {
        state: "s".into(),
        verifier: "v3.1.v".into(),
        redirect_uri: "r".into(),
        console: false,
        account: None,
        expires_at_ms: i64::MAX,
    })
    .await
    .unwrap();
    // Access and refresh token, the TOTP secret, one payload body, one verifier.
    assert_eq!(s.count_secrets().await.unwrap(), 5);
    let version = s.find_account("a").await.unwrap().unwrap().token_version;
    // A re-sealed pair read at an older token version is not written over a newer one.
    let stale = Resealed {
        accounts: vec![SealedRow {
            id: "1".into(),
            access_token: Some("v3.2.stale".into()),
            refresh_token: Some("v3.2.stale".into()),
            api_key: None,
            token_version: version - 1,
        }],
        settings: Vec::new(),
        payloads: Vec::new(),
    };
    s.replace_sealed(&stale).await.unwrap();
    assert_eq!(s.find_account("a").await.unwrap().unwrap().access_token, record("1", "a", 1).access_token);
    let resealed = Resealed {
        accounts: vec![SealedRow {
            id: "1".into(),
            access_token: Some("v3.2.a".into()),
            refresh_token: Some("v3.2.r".into()),
            api_key: None,
            token_version: version,
        }],
        settings: vec![("admin.totp".into(), "v3.2.totp".into())],
        payloads: vec![SealedPayload { request_id: "sy_q".into(), request: Some("v3.2.q".into()), response: None }],
    };
    s.replace_sealed(&resealed).await.unwrap();
    let a = s.find_account("a").await.unwrap().unwrap();
    assert_eq!((a.access_token.as_deref(), a.refresh_token.as_deref()), (Some("v3.2.a"), Some("v3.2.r")));
    assert_eq!(s.get_setting("admin.totp").await.unwrap().as_deref(), Some("v3.2.totp"));
    assert_eq!(s.get_payload("sy_q").await.unwrap(), Some((Some("v3.2.q".to_owned()), None)));
}

async fn token_writes_compare_versions_and_leases_exclude(s: Arc<dyn Store>) {
    s.save_account(&record("1", "a", 1)).await.unwrap();
    let pair = |n: u8| SealedTokens {
        access_token: format!("v3.1.a{n}"),
        refresh_token: format!("v3.1.r{n}"),
        expires_at_ms: i64::from(n),
    };
    // Instance A leases, sees version 0, refreshes; B cannot lease meanwhile.
    let seen = s.take_refresh_lease("1", "A", 1_000, 10).await.unwrap().expect("A leases");
    assert_eq!(seen.token_version, 0);
    assert!(s.take_refresh_lease("1", "B", 1_000, 11).await.unwrap().is_none(), "B waits for A");
    assert!(s.take_refresh_lease("1", "A", 1_000, 12).await.unwrap().is_some(), "A may renew its own");
    assert_eq!(s.update_tokens("1", &pair(1), Some(0), 20).await.unwrap(), Some(1));
    // The write ended A's lease: B leases and sees the new pair.
    let after = s.take_refresh_lease("1", "B", 1_000, 21).await.unwrap().expect("B leases after A's write");
    assert_eq!((after.token_version, after.refresh_token.as_deref()), (1, Some("v3.1.r1")));
    // A stale writer (it still holds version 0) never overwrites the newer pair.
    assert_eq!(s.update_tokens("1", &pair(9), Some(0), 22).await.unwrap(), None);
    assert_eq!(s.find_account("a").await.unwrap().unwrap().refresh_token.as_deref(), Some("v3.1.r1"));
    // Released by another holder: nothing happens; by its own: free at once.
    s.release_refresh_lease("1", "A").await.unwrap();
    assert!(s.take_refresh_lease("1", "C", 1_000, 23).await.unwrap().is_none());
    s.release_refresh_lease("1", "B").await.unwrap();
    assert!(s.take_refresh_lease("1", "C", 1_000, 24).await.unwrap().is_some());
    // A holder that died frees the lease when it expires.
    assert!(s.take_refresh_lease("1", "D", 5_000, 999).await.unwrap().is_none());
    assert!(s.take_refresh_lease("1", "D", 5_000, 1_001).await.unwrap().is_some());
    // A new login replaces the pair and moves the version on, so a writer from before it loses too.
    let mut relogin = record("1", "a", 1);
    relogin.refresh_token = Some("v3.1.login".into());
    s.save_account(&relogin).await.unwrap();
    let now = s.find_account("a").await.unwrap().unwrap();
    assert_eq!(now.token_version, 2);
    assert_eq!(s.update_tokens("1", &pair(3), Some(1), 30).await.unwrap(), None);
    assert!(s.take_refresh_lease("1", "E", 1_000, 31).await.unwrap().is_some(), "the login ended D's lease");
    // A restarted instance ends the leases of its earlier run, and only those.
    s.release_refresh_lease("1", "E").await.unwrap();
    assert!(s.take_refresh_lease("1", "host-1:old", 9_000_000, 40).await.unwrap().is_some());
    assert_eq!(s.release_stale_leases("host-2:", "host-2:new").await.unwrap(), 0);
    assert_eq!(s.release_stale_leases("host-1:", "host-1:new").await.unwrap(), 1);
    assert!(s.take_refresh_lease("1", "host-2:x", 1_000, 41).await.unwrap().is_some());
    // Racing writers over one version: exactly one wins.
    let writers = (0..8u8).map(|n| {
        let s = s.clone();
        tokio::spawn(async move { s.update_tokens("1", &pair(n), Some(2), 40).await.unwrap() })
    });
    let won =
        futures_util::future::join_all(writers).await.into_iter().filter(|w| w.as_ref().unwrap().is_some()).count();
    assert_eq!(won, 1);
}
