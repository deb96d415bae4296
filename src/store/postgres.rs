//! PostgreSQL implementation of [`Store`], for several instances sharing one database: a bounded pool,
//! TLS by the URL's `sslmode`, migrations from `migrations/postgres/` applied once under an advisory lock.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use super::{
    AccountKind, AccountRecord, AccountStatus, AuditEntry, Budgets, ClientKeyRecord, GroupStats, PendingLogin,
    RequestFilter, RequestRow, Resealed, SealedPayload, SealedTokens, SeriesPoint, StateRow, StatsBy, StoreError,
};
use super::{
    AccountStore, AuditStore, ClientKeyStore, InstanceRecord, InstanceStore, LoginStore, RequestStore, RoutingStore,
    SealedStore, SettingStore,
};

/// Rows removed per retention statement.
const PRUNE_BATCH: u64 = 5_000;

/// Schema steps, one file each under `migrations/postgres/`; `schema_version` holds how many are applied.
/// Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_schema.sql"),
    include_str!("../../migrations/postgres/0002_refresh_lease.sql"),
    include_str!("../../migrations/postgres/0003_state_per_instance.sql"),
    include_str!("../../migrations/postgres/0004_instances.sql"),
    include_str!("../../migrations/postgres/0005_change_feed.sql"),
    include_str!("../../migrations/postgres/0006_instance_key_version.sql"),
    include_str!("../../migrations/postgres/0007_request_dialect.sql"),
];

/// The channel `migrations/postgres/0005_change_feed.sql` announces committed changes on.
const CHANGES: &str = "switchyard_changes";

/// The advisory lock instances take to migrate one at a time (any constant; "switchyard" in ASCII).
const MIGRATION_LOCK: i64 = 0x7377_6974_6368_7964;

/// 1 for a request that failed (answered 400 or more, or broken off with an `error_type`), else 0.
macro_rules! failed {
    () => {
        "CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END"
    };
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

/// Settings of the PostgreSQL backend.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/db?sslmode=…`; the password never leaves this struct.
    pub url: String,
    /// Connections held at most.
    pub max_connections: u32,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redacted_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The URL with any password replaced, for messages.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(an unreadable database URL)".to_owned(),
    }
}

/// Where the URL points, for "cannot reach" messages: `host:port`.
pub fn url_host_port(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}:{}", u.host_str().unwrap_or("localhost"), u.port().unwrap_or(5432)),
        Err(_) => "(an unreadable database URL)".to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect (failing at once, naming host and port, when the server cannot be reached) and bring the
    /// schema up to date.
    pub async fn open(settings: &PgSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|_| StoreError::Config(format!("{} is not a valid database URL", redacted_url(&settings.url))))?
            .application_name("switchyard");
        // One attempt first, so that a server that is not there is said at once (the pool would retry
        // until its timeout).
        let probe = tokio::time::timeout(
            Duration::from_secs(10),
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
        )
        .await
        .map_err(|_| StoreError::Unreachable { place: url_host_port(&settings.url), cause: "timed out".into() })?
        .map_err(|e| unreachable(&settings.url, e))?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| unreachable(&settings.url, e))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, for tests and tools that need SQL of their own.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Instances starting together queue here; the second finds the work done.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(db)?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_version").fetch_optional(&mut *tx).await.map_err(db)?;
        let version = found.unwrap_or(0);
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        for sql in MIGRATIONS.iter().skip(usize::try_from(version).unwrap_or(0)) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut *tx).await.map_err(db)?;
        }
        if found.is_none() {
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(known).execute(&mut *tx).await
        } else {
            sqlx::query("UPDATE schema_version SET version = $1").bind(known).execute(&mut *tx).await
        }
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn prune(&self, table: &'static str, before_ms: i64, dry_run: bool) -> Result<u64, StoreError> {
        if dry_run {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE at_ms < $1");
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(before_ms).fetch_one(&self.pool).await.map_err(db)?;
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        // `table` is one of two fixed names, never user text. Batches keep each transaction (and the locks
        // and WAL it holds while instances keep logging) small, however much has expired.
        let sql = format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE at_ms < $1 LIMIT {PRUNE_BATCH}))"
        );
        let mut total = 0;
        loop {
            let done =
                sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(before_ms).execute(&self.pool).await.map_err(db)?;
            total += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// A connection failure at start, as one line naming where (never the password).
fn unreachable(url: &str, e: sqlx::Error) -> StoreError {
    let cause = match &e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        other => other.to_string(),
    };
    StoreError::Unreachable { place: url_host_port(url), cause: cause.replace(url, &redacted_url(url)) }
}

super::rows::row_readers!(PgRow);

#[async_trait]
impl AccountStore for PgStore {
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY created_at_ms, name COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(account_from_row).collect()
    }

    async fn find_account(&self, name: &str) -> Result<Option<AccountRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn save_account(&self, r: &AccountRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, name, kind, status, access_token, refresh_token, api_key, expires_at_ms,
                 email, account_uuid, org_uuid, org_name, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, kind = excluded.kind, status = excluded.status,
                 access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                 api_key = excluded.api_key, expires_at_ms = excluded.expires_at_ms, email = excluded.email,
                 account_uuid = excluded.account_uuid, org_uuid = excluded.org_uuid, org_name = excluded.org_name,
                 updated_at_ms = excluded.updated_at_ms, token_version = accounts.token_version + 1,
                 refresh_holder = NULL, refresh_lease_until_ms = NULL",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(r.kind.as_str())
        .bind(r.status.as_str())
        .bind(&r.access_token)
        .bind(&r.refresh_token)
        .bind(&r.api_key)
        .bind(r.expires_at_ms)
        .bind(&r.email)
        .bind(&r.account_uuid)
        .bind(&r.org_uuid)
        .bind(&r.org_name)
        .bind(r.created_at_ms)
        .bind(r.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match db(e) {
            StoreError::Duplicate { .. } => StoreError::Duplicate { what: "an account", name: r.name.clone() },
            other => other,
        })?;
        Ok(())
    }

    async fn update_tokens(
        &self,
        id: &str,
        t: &SealedTokens,
        expected: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE accounts SET access_token = $1, refresh_token = $2, expires_at_ms = $3, status = 'active',
                 updated_at_ms = $4, token_version = token_version + 1, refresh_holder = NULL,
                 refresh_lease_until_ms = NULL
             WHERE id = $5 AND ($6::BIGINT IS NULL OR token_version = $6) RETURNING token_version",
        )
        .bind(&t.access_token)
        .bind(&t.refresh_token)
        .bind(t.expires_at_ms)
        .bind(now_ms)
        .bind(id)
        .bind(expected)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(version)
    }

    async fn take_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<AccountRecord>, StoreError> {
        // One statement: the row lock it takes makes two instances' attempts serial, and the second sees
        // the first's lease.
        let row = sqlx::query(
            "UPDATE accounts SET refresh_holder = $1, refresh_lease_until_ms = $2
             WHERE id = $3 AND (refresh_holder IS NULL OR refresh_holder = $1 OR refresh_lease_until_ms < $4)
             RETURNING *",
        )
        .bind(holder)
        .bind(until_ms)
        .bind(id)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn release_stale_leases(&self, prefix: &str, current: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET refresh_holder = NULL, refresh_lease_until_ms = NULL
             WHERE substr(refresh_holder, 1, length($1)) = $1 AND refresh_holder <> $2",
        )
        .bind(prefix)
        .bind(current)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn release_refresh_lease(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE accounts SET refresh_holder = NULL, refresh_lease_until_ms = NULL
             WHERE id = $1 AND refresh_holder = $2",
        )
        .bind(id)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn set_status(&self, id: &str, status: AccountStatus, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET status = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_account(&self, name: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM accounts WHERE name = $1").bind(name).execute(&self.pool).await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_routing(
        &self,
        id: &str,
        priority: Option<i64>,
        weight: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET priority = COALESCE($1, priority), weight = COALESCE($2, weight),
                 updated_at_ms = $3 WHERE id = $4",
        )
        .bind(priority)
        .bind(weight)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_plan(&self, id: &str, plan: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE accounts SET plan = $1 WHERE id = $2")
            .bind(plan)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl RoutingStore for PgStore {
    async fn load_states(&self) -> Result<Vec<StateRow>, StoreError> {
        let rows = sqlx::query("SELECT account_id, instance, state, updated_at_ms FROM account_state")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(state_from_row).collect()
    }

    async fn save_states(&self, instance: &str, states: &[(String, String)], now_ms: i64) -> Result<(), StoreError> {
        let (ids, values): (Vec<&str>, Vec<&str>) = states.iter().map(|(i, s)| (i.as_str(), s.as_str())).unzip();
        // One statement; states of accounts removed meanwhile are left out by the join.
        sqlx::query(
            "INSERT INTO account_state (account_id, instance, state, updated_at_ms)
             SELECT s.id, $3, s.state, $4 FROM UNNEST($1::text[], $2::text[]) AS s(id, state)
             JOIN accounts a ON a.id = s.id
             ON CONFLICT(account_id, instance) DO UPDATE SET state = excluded.state,
                 updated_at_ms = excluded.updated_at_ms",
        )
        .bind(ids)
        .bind(values)
        .bind(instance)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl ClientKeyStore for PgStore {
    async fn find_client_key_by_hash(&self, hash: &str) -> Result<Option<ClientKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM client_keys WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM client_keys ORDER BY created_at_ms, name COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn insert_client_key(&self, k: &ClientKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO client_keys (id, name, hash, role, rpm, tpm, concurrency, accounts, created_at_ms,
                 expires_at_ms, revoked_at_ms, updated_at_ms, budget_usd_day, budget_usd_month, budget_tokens_day)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.hash)
        .bind(&k.role)
        .bind(k.rpm)
        .bind(k.tpm)
        .bind(k.concurrency)
        .bind(&k.accounts)
        .bind(k.created_at_ms)
        .bind(k.expires_at_ms)
        .bind(k.revoked_at_ms)
        .bind(k.updated_at_ms)
        .bind(k.budget_usd_day)
        .bind(k.budget_usd_month)
        .bind(k.budget_tokens_day)
        .execute(&self.pool)
        .await
        .map_err(|e| match db(e) {
            StoreError::Duplicate { .. } => StoreError::Duplicate { what: "a client key", name: k.name.clone() },
            other => other,
        })?;
        Ok(())
    }

    async fn revoke_client_key(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE client_keys SET revoked_at_ms = $1, updated_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn rehash_client_key(&self, name: &str, hash: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE client_keys SET hash = $1, revoked_at_ms = NULL, updated_at_ms = $2 WHERE name = $3")
                .bind(hash)
                .bind(now_ms)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_client_key_budgets(&self, name: &str, budgets: &Budgets, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE client_keys SET budget_usd_day = COALESCE($1, budget_usd_day),
                 budget_usd_month = COALESCE($2, budget_usd_month),
                 budget_tokens_day = COALESCE($3, budget_tokens_day), updated_at_ms = $4 WHERE name = $5",
        )
        .bind(budgets.usd_day)
        .bind(budgets.usd_month)
        .bind(budgets.tokens_day)
        .bind(now_ms)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn spend_since(&self, since_ms: i64) -> Result<Vec<(String, f64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_key, SUM(cost_usd)::DOUBLE PRECISION,
                 SUM(input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens)::BIGINT
             FROM requests WHERE at_ms >= $1 AND client_key IS NOT NULL GROUP BY client_key",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?, r.try_get(2).map_err(db)?)))
            .collect()
    }
}

#[async_trait]
impl SettingStore for PgStore {
    async fn claim_setting(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = match expected {
            None => sqlx::query(
                "INSERT INTO settings (key, value, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT(key) DO NOTHING",
            )
            .bind(key)
            .bind(new)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?,
            Some(expected) => {
                sqlx::query("UPDATE settings SET value = $2, updated_at_ms = $3 WHERE key = $1 AND value = $4")
                    .bind(key)
                    .bind(new)
                    .bind(now_ms)
                    .bind(expected)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    async fn list_settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT key, value FROM settings ORDER BY key").fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(|r| Ok((r.try_get("key").map_err(db)?, r.try_get("value").map_err(db)?))).collect()
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn put_setting(&self, key: &str, value: Option<&str>, now_ms: i64) -> Result<(), StoreError> {
        match value {
            Some(value) => sqlx::query(
                "INSERT INTO settings (key, value, updated_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(key)
            .bind(value)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?,
            None => {
                sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(&self.pool).await.map_err(db)?
            }
        };
        Ok(())
    }

    async fn take_setting(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM settings WHERE key = $1 AND value = $2")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at_ms, actor, source, action, target, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.at_ms)
        .bind(&e.actor)
        .bind(&e.source)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.outcome)
        .bind(&e.detail)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_audit(&self, since_ms: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE at_ms >= $1 ORDER BY at_ms DESC, id DESC")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(audit_from_row).collect()
    }
}

#[async_trait]
impl RequestStore for PgStore {
    async fn insert_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        // One statement for the whole batch: each column goes as one array (UNNEST), so a batch of any size
        // is one round trip and one prepared statement.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let col = |f: fn(&RequestRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
        let num = |f: fn(&RequestRow) -> i64| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO requests (id, at_ms, client_key, account, accounts_tried, attempts, method, path, model,
                 stream, status, error_type, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,
                 ttfb_ms, duration_ms, ratelimit_status, cost_usd, dialect)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                 $7::text[], $8::text[], $9::text[], $10::boolean[], $11::bigint[], $12::text[], $13::bigint[],
                 $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::text[],
                 $20::double precision[], $21::text[])
             ON CONFLICT (at_ms, id) DO UPDATE SET client_key = excluded.client_key, account = excluded.account,
                 accounts_tried = excluded.accounts_tried, attempts = excluded.attempts, method = excluded.method,
                 path = excluded.path, model = excluded.model, stream = excluded.stream, status = excluded.status,
                 error_type = excluded.error_type, input_tokens = excluded.input_tokens,
                 output_tokens = excluded.output_tokens, cache_read_tokens = excluded.cache_read_tokens,
                 cache_creation_tokens = excluded.cache_creation_tokens, ttfb_ms = excluded.ttfb_ms,
                 duration_ms = excluded.duration_ms, ratelimit_status = excluded.ratelimit_status,
                 cost_usd = excluded.cost_usd, dialect = excluded.dialect",
        )
        .bind(rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
        .bind(num(|r| r.at_ms))
        .bind(col(|r| r.client_key.clone()))
        .bind(col(|r| r.account.clone()))
        .bind(rows.iter().map(|r| r.accounts_tried.clone()).collect::<Vec<_>>())
        .bind(num(|r| r.attempts))
        .bind(rows.iter().map(|r| r.method.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.path.clone()).collect::<Vec<_>>())
        .bind(col(|r| r.model.clone()))
        .bind(rows.iter().map(|r| r.stream).collect::<Vec<_>>())
        .bind(num(|r| r.status))
        .bind(col(|r| r.error_type.clone()))
        .bind(num(|r| r.input_tokens))
        .bind(num(|r| r.output_tokens))
        .bind(num(|r| r.cache_read_tokens))
        .bind(num(|r| r.cache_creation_tokens))
        .bind(rows.iter().map(|r| r.ttfb_ms).collect::<Vec<_>>())
        .bind(num(|r| r.duration_ms))
        .bind(col(|r| r.ratelimit_status.clone()))
        .bind(rows.iter().map(|r| r.cost_usd).collect::<Vec<_>>())
        .bind(col(|r| r.dialect.clone()))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let kept: Vec<&RequestRow> =
            rows.iter().filter(|r| r.payload_request.is_some() || r.payload_response.is_some()).collect();
        if !kept.is_empty() {
            sqlx::query(
                "INSERT INTO payloads (request_id, at_ms, request, response)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[])
                 ON CONFLICT (request_id) DO UPDATE SET at_ms = excluded.at_ms, request = excluded.request,
                     response = excluded.response",
            )
            .bind(kept.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
            .bind(kept.iter().map(|r| r.at_ms).collect::<Vec<_>>())
            .bind(kept.iter().map(|r| r.payload_request.clone()).collect::<Vec<_>>())
            .bind(kept.iter().map(|r| r.payload_response.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn find_requests(&self, filter: &RequestFilter) -> Result<Vec<RequestRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT * FROM requests WHERE at_ms >= ");
        q.push_bind(filter.since_ms);
        if let Some(until) = filter.until_ms {
            q.push(" AND at_ms < ").push_bind(until);
        }
        if let Some((at_ms, id)) = &filter.before {
            q.push(" AND (at_ms < ").push_bind(*at_ms);
            q.push(" OR (at_ms = ").push_bind(*at_ms).push(" AND id < ").push_bind(id.clone()).push("))");
        }
        if let Some(account) = &filter.account {
            q.push(" AND account = ").push_bind(account.clone());
        }
        if let Some(model) = &filter.model {
            q.push(" AND model = ").push_bind(model.clone());
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status);
        }
        if let Some(key) = &filter.client_key {
            q.push(" AND client_key = ").push_bind(key.clone());
        }
        // Byte order for ids, as SQLite compares them.
        q.push(" ORDER BY at_ms DESC, id COLLATE \"C\" DESC LIMIT ").push_bind(filter.limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(request_from_row).collect()
    }

    async fn request_stats(&self, since_ms: i64, by: StatsBy) -> Result<Vec<GroupStats>, StoreError> {
        let group = match by {
            StatsBy::Account => "COALESCE(account, '-')",
            StatsBy::Model => "COALESCE(model, '-')",
            StatsBy::Key => "COALESCE(client_key, '-')",
            StatsBy::Dialect => "COALESCE(dialect, 'anthropic')",
            StatsBy::All => "'all'",
        };
        // Percentiles by nearest rank, ceil(p * n), in integers, as on SQLite.
        let sql = format!(
            concat!(
                "SELECT grp, COUNT(*), SUM(err)::BIGINT, SUM(input_tokens)::BIGINT, SUM(output_tokens)::BIGINT, \
                    SUM(cache_read_tokens)::BIGINT, SUM(cache_creation_tokens)::BIGINT, \
                    SUM(cost_usd)::DOUBLE PRECISION, \
                    MAX(CASE WHEN rn = GREATEST(1, (50 * n + 99) / 100) THEN duration_ms END), \
                    MAX(CASE WHEN rn = GREATEST(1, (95 * n + 99) / 100) THEN duration_ms END) \
             FROM (SELECT {group} AS grp, duration_ms, input_tokens, output_tokens, cache_read_tokens, \
                          cache_creation_tokens, cost_usd, \
                          ",
                failed!(),
                " AS err, \
                          ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY duration_ms) AS rn, \
                          COUNT(*) OVER (PARTITION BY {group}) AS n \
                   FROM requests WHERE at_ms >= $1) AS ranked \
             GROUP BY grp ORDER BY grp COLLATE \"C\""
            ),
            group = group
        );
        // `group` is one of the four fixed expressions above, never user text.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since_ms).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(stats_from_row).collect()
    }

    async fn request_series(&self, since_ms: i64, bucket_ms: i64) -> Result<Vec<SeriesPoint>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        let rows = sqlx::query(concat!(
            "SELECT (at_ms / $1) * $1 AS bucket, COUNT(*), SUM(",
            failed!(),
            ")::BIGINT, SUM(input_tokens + cache_read_tokens + cache_creation_tokens)::BIGINT, \
             SUM(output_tokens)::BIGINT, SUM(cost_usd)::DOUBLE PRECISION \
             FROM requests WHERE at_ms >= $2 GROUP BY bucket ORDER BY bucket",
        ))
        .bind(bucket_ms)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(series_from_row).collect()
    }

    async fn delete_requests_before(&self, before_ms: i64, dry_run: bool) -> Result<u64, StoreError> {
        self.prune("requests", before_ms, dry_run).await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        // An id opens with its request's start time: look around it in the time-ordered key.
        let (from, to) = crate::ledger::request_id_time(id).map_or((i64::MIN, i64::MAX), |t| (t - 60_000, t + 60_000));
        let row = sqlx::query("SELECT * FROM requests WHERE at_ms BETWEEN $1 AND $2 AND id = $3")
            .bind(from)
            .bind(to)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn get_payload(&self, id: &str) -> Result<Option<(Option<String>, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT request, response FROM payloads WHERE request_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| Ok((r.try_get("request").map_err(db)?, r.try_get("response").map_err(db)?))).transpose()
    }

    async fn delete_payloads_before(&self, before_ms: i64, dry_run: bool) -> Result<u64, StoreError> {
        self.prune("payloads", before_ms, dry_run).await
    }

    async fn list_payloads(&self) -> Result<Vec<SealedPayload>, StoreError> {
        let rows = sqlx::query("SELECT request_id, request, response FROM payloads")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(payload_from_row).collect()
    }
}

#[async_trait]
impl LoginStore for PgStore {
    async fn put_pending_login(&self, p: &PendingLogin) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pending_logins (state, verifier, redirect_uri, console, account, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (state) DO UPDATE SET verifier = excluded.verifier, redirect_uri = excluded.redirect_uri,
                 console = excluded.console, account = excluded.account, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(&p.state)
        .bind(&p.verifier)
        .bind(&p.redirect_uri)
        .bind(p.console)
        .bind(&p.account)
        .bind(p.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn take_pending_login(&self, state: &str, now_ms: i64) -> Result<Option<PendingLogin>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM pending_logins WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let row = sqlx::query("DELETE FROM pending_logins WHERE state = $1 RETURNING *")
            .bind(state)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        row.as_ref().map(pending_from_row).transpose()
    }

    async fn clear_pending_logins(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM pending_logins").execute(&self.pool).await.map_err(db)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SealedStore for PgStore {
    async fn replace_sealed(&self, sealed: &Resealed) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (key, value) in &sealed.settings {
            sqlx::query("UPDATE settings SET value = $1 WHERE key = $2")
                .bind(value)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for p in &sealed.payloads {
            sqlx::query("UPDATE payloads SET request = $1, response = $2 WHERE request_id = $3")
                .bind(&p.request)
                .bind(&p.response)
                .bind(&p.request_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for row in &sealed.accounts {
            sqlx::query(
                "UPDATE accounts SET access_token = $1, refresh_token = $2, api_key = $3
                 WHERE id = $4 AND token_version = $5",
            )
            .bind(&row.access_token)
            .bind(&row.refresh_token)
            .bind(&row.api_key)
            .bind(&row.id)
            .bind(row.token_version)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn count_secrets(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(access_token) + COUNT(refresh_token) + COUNT(api_key) FROM accounts)
                  + (SELECT COUNT(*) FROM pending_logins)
                  + (SELECT COUNT(request) + COUNT(response) FROM payloads)
                  + (SELECT COUNT(*) FROM settings WHERE key = 'admin.totp')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn vacuum(&self) -> Result<(), StoreError> {
        sqlx::query("VACUUM").execute(&self.pool).await.map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl InstanceStore for PgStore {
    async fn heartbeat(&self, i: &InstanceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, host, version, address, started_at_ms, last_seen_ms, key_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT(id) DO UPDATE SET host = excluded.host, version = excluded.version,
                 address = excluded.address, started_at_ms = excluded.started_at_ms,
                 last_seen_ms = excluded.last_seen_ms, key_version = excluded.key_version",
        )
        .bind(&i.id)
        .bind(&i.host)
        .bind(&i.version)
        .bind(&i.address)
        .bind(i.started_at_ms)
        .bind(i.last_seen_ms)
        .bind(i64::from(i.key_version))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM instances ORDER BY last_seen_ms DESC, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn forget_instances(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM instances WHERE last_seen_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn change_feed(&self) -> Result<Option<Arc<tokio::sync::Notify>>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await.map_err(db)?;
        listener.listen(CHANGES).await.map_err(db)?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let feed = Arc::downgrade(&wake);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let got = listener.try_recv().await;
                // Nobody listens any more: give the connection back.
                let Some(wake) = feed.upgrade() else { return };
                match got {
                    Ok(Some(_)) => {
                        backoff = Duration::from_millis(250);
                        wake.notify_one();
                    }
                    // Reconnected: what was announced meanwhile is lost, so look at everything once.
                    Ok(None) => wake.notify_one(),
                    Err(e) => {
                        tracing::debug!(error = %e, "change feed unavailable; periodic checks continue");
                        drop(wake);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(Some(wake))
    }
}
