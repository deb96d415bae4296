//! SQLite implementation of [`Store`]: WAL, `synchronous=FULL`, 0600 files, schema versioned by
//! `PRAGMA user_version`.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::{
    AccountKind, AccountRecord, AccountStatus, AuditEntry, Budgets, ClientKeyRecord, GroupStats, PendingLogin,
    RequestFilter, RequestRow, Resealed, SealedPayload, SealedTokens, SeriesPoint, StateRow, StatsBy, StoreError,
};
use super::{
    AccountStore, AuditStore, ClientKeyStore, InstanceRecord, InstanceStore, LoginStore, RequestStore, RoutingStore,
    SealedStore, SettingStore,
};

/// 1 for a request that failed (answered 400 or more, or broken off with an `error_type`), else 0: one
/// definition for every query that counts errors.
macro_rules! failed {
    () => {
        "CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END"
    };
}

/// Rows removed per retention statement.
const PRUNE_BATCH: i64 = 5_000;

/// Schema steps, one file each under `migrations/sqlite/`; step N brings `user_version` from N to N+1.
/// Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_accounts.sql"),
    include_str!("../../migrations/sqlite/0002_account_routing.sql"),
    include_str!("../../migrations/sqlite/0003_client_keys.sql"),
    include_str!("../../migrations/sqlite/0004_settings_and_audit.sql"),
    include_str!("../../migrations/sqlite/0005_requests.sql"),
    include_str!("../../migrations/sqlite/0006_key_budgets.sql"),
    include_str!("../../migrations/sqlite/0007_payloads.sql"),
    include_str!("../../migrations/sqlite/0008_requests_by_time.sql"),
    include_str!("../../migrations/sqlite/0009_refresh_lease.sql"),
    include_str!("../../migrations/sqlite/0010_state_per_instance.sql"),
    include_str!("../../migrations/sqlite/0011_instances.sql"),
    include_str!("../../migrations/sqlite/0012_instance_key_version.sql"),
    include_str!("../../migrations/sqlite/0013_request_dialect.sql"),
];

/// The request-log inserts for 256, 16 and 1 rows, written once (the text of a 256-row statement takes
/// longer to format than the rows take to bind).
static INSERT_REQUESTS: std::sync::LazyLock<[String; 3]> = std::sync::LazyLock::new(|| {
    [256, 16, 1].map(|rows| {
        let row = format!("({})", ["?"; 21].join(", "));
        format!(
            "INSERT OR REPLACE INTO requests (id, at_ms, client_key, account, accounts_tried, attempts, method, path, \
             model, stream, status, error_type, input_tokens, output_tokens, cache_read_tokens, \
             cache_creation_tokens, ttfb_ms, duration_ms, ratelimit_status, cost_usd, dialect) VALUES {}",
            vec![row; rows].join(", ")
        )
    })
});

fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for the request log, with `synchronous=NORMAL`: in WAL mode a crash may lose the
    /// last moments of log rows (never tokens, which go through `pool`), and the proxy's hot
    /// stretches do not pay an fsync per batch.
    log_pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            // Created here first so SQLite's WAL and journal files inherit the 0600 mode.
            crate::secrets::private_file(path)?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Rotated refresh tokens are single-use: a commit must survive power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let log_options = options.clone().synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(db)?;
        let log_pool = SqlitePoolOptions::new().max_connections(1).connect_lazy_with(log_options);
        let store = Self { pool, log_pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Count (`dry_run`) or delete the rows older than `before_ms`, with the two given statements.
    async fn prune(
        &self,
        count: &'static str,
        delete: &'static str,
        before_ms: i64,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        if dry_run {
            let row = sqlx::query(count).bind(before_ms).fetch_one(&self.pool).await.map_err(db)?;
            let n: i64 = row.try_get(0).map_err(db)?;
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        // In batches, so that the write lock the request-log writer also needs is held briefly each time.
        let mut total = 0;
        loop {
            let done = sqlx::query(delete).bind(before_ms).bind(PRUNE_BATCH).execute(&self.pool).await.map_err(db)?;
            total += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(db)?;
        let result = async {
            let version: i64 = sqlx::query("PRAGMA user_version").fetch_one(&mut *conn).await.map_err(db)?.get(0);
            let version = usize::try_from(version).unwrap_or(0);
            if version > MIGRATIONS.len() {
                let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
                return Err(StoreError::TooNew { found: i64::try_from(version).unwrap_or(i64::MAX), known });
            }
            for (step, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut *conn).await.map_err(db)?;
                let bump = format!("PRAGMA user_version = {}", step + 1);
                sqlx::raw_sql(sqlx::AssertSqlSafe(bump)).execute(&mut *conn).await.map_err(db)?;
            }
            Ok(())
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await.map_err(db)?;
        result
    }
}

super::rows::row_readers!(SqliteRow);

#[async_trait]
impl AccountStore for SqliteStore {
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY created_at_ms, name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(account_from_row).collect()
    }

    async fn find_account(&self, name: &str) -> Result<Option<AccountRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
            "UPDATE accounts SET access_token = ?1, refresh_token = ?2, expires_at_ms = ?3, status = 'active',
                 updated_at_ms = ?4, token_version = token_version + 1, refresh_holder = NULL,
                 refresh_lease_until_ms = NULL
             WHERE id = ?5 AND (?6 IS NULL OR token_version = ?6) RETURNING token_version",
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
        let row = sqlx::query(
            "UPDATE accounts SET refresh_holder = ?1, refresh_lease_until_ms = ?2
             WHERE id = ?3 AND (refresh_holder IS NULL OR refresh_holder = ?1 OR refresh_lease_until_ms < ?4)
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
             WHERE substr(refresh_holder, 1, length(?1)) = ?1 AND refresh_holder <> ?2",
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
             WHERE id = ? AND refresh_holder = ?",
        )
        .bind(id)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn set_status(&self, id: &str, status: AccountStatus, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET status = ?, updated_at_ms = ? WHERE id = ?")
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
            sqlx::query("DELETE FROM accounts WHERE name = ?").bind(name).execute(&self.pool).await.map_err(db)?;
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
            "UPDATE accounts SET priority = COALESCE(?, priority), weight = COALESCE(?, weight),
                 updated_at_ms = ? WHERE id = ?",
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
        sqlx::query("UPDATE accounts SET plan = ? WHERE id = ?")
            .bind(plan)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl RoutingStore for SqliteStore {
    async fn load_states(&self) -> Result<Vec<StateRow>, StoreError> {
        let rows = sqlx::query("SELECT account_id, instance, state, updated_at_ms FROM account_state")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(state_from_row).collect()
    }

    async fn save_states(&self, instance: &str, states: &[(String, String)], now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (id, state) in states {
            // An account removed meanwhile has no row to attach to: skip it rather than fail the batch.
            sqlx::query(
                "INSERT INTO account_state (account_id, instance, state, updated_at_ms)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1)
                 ON CONFLICT(account_id, instance) DO UPDATE SET state = excluded.state,
                     updated_at_ms = excluded.updated_at_ms",
            )
            .bind(id)
            .bind(instance)
            .bind(state)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl ClientKeyStore for SqliteStore {
    async fn find_client_key_by_hash(&self, hash: &str) -> Result<Option<ClientKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM client_keys WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM client_keys ORDER BY created_at_ms, name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn insert_client_key(&self, k: &ClientKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO client_keys (id, name, hash, role, rpm, tpm, concurrency, accounts, created_at_ms,
                 expires_at_ms, revoked_at_ms, updated_at_ms, budget_usd_day, budget_usd_month, budget_tokens_day)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "UPDATE client_keys SET revoked_at_ms = ?, updated_at_ms = ? WHERE name = ? AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(now_ms)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn rehash_client_key(&self, name: &str, hash: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE client_keys SET hash = ?, revoked_at_ms = NULL, updated_at_ms = ? WHERE name = ?")
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
            "UPDATE client_keys SET budget_usd_day = COALESCE(?, budget_usd_day),
                 budget_usd_month = COALESCE(?, budget_usd_month),
                 budget_tokens_day = COALESCE(?, budget_tokens_day), updated_at_ms = ? WHERE name = ?",
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
            "SELECT client_key, SUM(cost_usd), SUM(input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens)
             FROM requests WHERE at_ms >= ? AND client_key IS NOT NULL GROUP BY client_key",
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
impl SettingStore for SqliteStore {
    async fn claim_setting(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = match expected {
            None => sqlx::query(
                "INSERT INTO settings (key, value, updated_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO NOTHING",
            )
            .bind(key)
            .bind(new)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?,
            Some(expected) => {
                sqlx::query("UPDATE settings SET value = ?2, updated_at_ms = ?3 WHERE key = ?1 AND value = ?4")
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
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get("value").map_err(db)).transpose()
    }

    async fn put_setting(&self, key: &str, value: Option<&str>, now_ms: i64) -> Result<(), StoreError> {
        match value {
            Some(value) => sqlx::query(
                "INSERT INTO settings (key, value, updated_at_ms) VALUES (?, ?, ?)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(key)
            .bind(value)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?,
            None => {
                sqlx::query("DELETE FROM settings WHERE key = ?").bind(key).execute(&self.pool).await.map_err(db)?
            }
        };
        Ok(())
    }

    async fn take_setting(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM settings WHERE key = ? AND value = ?")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at_ms, actor, source, action, target, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        let rows = sqlx::query("SELECT * FROM audit_log WHERE at_ms >= ? ORDER BY at_ms DESC, id DESC")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(audit_from_row).collect()
    }
}

#[async_trait]
impl RequestStore for SqliteStore {
    async fn insert_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        let mut tx = self.log_pool.begin().await.map_err(db)?;
        // Many rows per statement: the writer keeps up with the proxy at a fraction of the CPU of one
        // statement per row. Three fixed sizes keep the statements few enough to stay prepared (the cache
        // is keyed by SQL text); 256 rows × 20 columns stays under SQLite's 32766 bound parameters.
        let mut rest = rows;
        for (size, sql) in [256, 16, 1].into_iter().zip(INSERT_REQUESTS.iter()) {
            while rest.len() >= size {
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                for r in chunk {
                    insert = insert
                        .bind(&r.id)
                        .bind(r.at_ms)
                        .bind(&r.client_key)
                        .bind(&r.account)
                        .bind(&r.accounts_tried)
                        .bind(r.attempts)
                        .bind(&r.method)
                        .bind(&r.path)
                        .bind(&r.model)
                        .bind(r.stream)
                        .bind(r.status)
                        .bind(&r.error_type)
                        .bind(r.input_tokens)
                        .bind(r.output_tokens)
                        .bind(r.cache_read_tokens)
                        .bind(r.cache_creation_tokens)
                        .bind(r.ttfb_ms)
                        .bind(r.duration_ms)
                        .bind(&r.ratelimit_status)
                        .bind(r.cost_usd)
                        .bind(&r.dialect);
                }
                insert.execute(&mut *tx).await.map_err(db)?;
            }
        }
        for r in rows.iter().filter(|r| r.payload_request.is_some() || r.payload_response.is_some()) {
            sqlx::query("INSERT OR REPLACE INTO payloads (request_id, at_ms, request, response) VALUES (?, ?, ?, ?)")
                .bind(&r.id)
                .bind(r.at_ms)
                .bind(&r.payload_request)
                .bind(&r.payload_response)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn find_requests(&self, filter: &RequestFilter) -> Result<Vec<RequestRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT * FROM requests WHERE at_ms >= ");
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
        q.push(" ORDER BY at_ms DESC, id DESC LIMIT ").push_bind(filter.limit);
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
        // Percentiles by nearest rank, ceil(p * n), in integers: the rows never leave SQLite.
        let sql = format!(
            concat!(
                "SELECT grp, COUNT(*), SUM(err), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), \
                    SUM(cache_creation_tokens), SUM(cost_usd), \
                    MAX(CASE WHEN rn = max(1, (50 * n + 99) / 100) THEN duration_ms END), \
                    MAX(CASE WHEN rn = max(1, (95 * n + 99) / 100) THEN duration_ms END) \
             FROM (SELECT {group} AS grp, duration_ms, input_tokens, output_tokens, cache_read_tokens, \
                          cache_creation_tokens, cost_usd, \
                          ",
                failed!(),
                " AS err, \
                          ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY duration_ms) AS rn, \
                          COUNT(*) OVER (PARTITION BY {group}) AS n \
                   FROM requests WHERE at_ms >= ?1) \
             GROUP BY grp ORDER BY grp"
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
            "SELECT (at_ms / ?1) * ?1 AS bucket, COUNT(*), SUM(",
            failed!(),
            "), SUM(input_tokens + cache_read_tokens + cache_creation_tokens), SUM(output_tokens), SUM(cost_usd) \
             FROM requests WHERE at_ms >= ?2 GROUP BY bucket ORDER BY bucket",
        ))
        .bind(bucket_ms)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(series_from_row).collect()
    }

    async fn delete_requests_before(&self, before_ms: i64, dry_run: bool) -> Result<u64, StoreError> {
        self.prune(
            "SELECT COUNT(*) FROM requests WHERE at_ms < ?",
            "DELETE FROM requests WHERE (at_ms, id) IN (SELECT at_ms, id FROM requests WHERE at_ms < ?1 LIMIT ?2)",
            before_ms,
            dry_run,
        )
        .await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        // An id opens with its request's start time: look around it in the time-ordered key rather than
        // scan the log. The minute either side is far more than the gap between the two clock reads.
        let (from, to) = crate::ledger::request_id_time(id).map_or((i64::MIN, i64::MAX), |t| (t - 60_000, t + 60_000));
        let row = sqlx::query("SELECT * FROM requests WHERE at_ms BETWEEN ? AND ? AND id = ?")
            .bind(from)
            .bind(to)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn get_payload(&self, id: &str) -> Result<Option<(Option<String>, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT request, response FROM payloads WHERE request_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| Ok((r.try_get("request").map_err(db)?, r.try_get("response").map_err(db)?))).transpose()
    }

    async fn delete_payloads_before(&self, before_ms: i64, dry_run: bool) -> Result<u64, StoreError> {
        self.prune(
            "SELECT COUNT(*) FROM payloads WHERE at_ms < ?",
            "DELETE FROM payloads WHERE request_id IN (SELECT request_id FROM payloads WHERE at_ms < ?1 LIMIT ?2)",
            before_ms,
            dry_run,
        )
        .await
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
impl LoginStore for SqliteStore {
    async fn put_pending_login(&self, p: &PendingLogin) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO pending_logins (state, verifier, redirect_uri, console, account, expires_at_ms)
             VALUES (?, ?, ?, ?, ?, ?)",
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
        sqlx::query("DELETE FROM pending_logins WHERE expires_at_ms <= ?")
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let row = sqlx::query("DELETE FROM pending_logins WHERE state = ? RETURNING *")
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
impl SealedStore for SqliteStore {
    async fn replace_sealed(&self, sealed: &Resealed) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (key, value) in &sealed.settings {
            sqlx::query("UPDATE settings SET value = ? WHERE key = ?")
                .bind(value)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for p in &sealed.payloads {
            sqlx::query("UPDATE payloads SET request = ?, response = ? WHERE request_id = ?")
                .bind(&p.request)
                .bind(&p.response)
                .bind(&p.request_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for row in &sealed.accounts {
            sqlx::query(
                "UPDATE accounts SET access_token = ?, refresh_token = ?, api_key = ? WHERE id = ? AND token_version = ?",
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
        let row = sqlx::query(
            "SELECT (SELECT COUNT(access_token) + COUNT(refresh_token) + COUNT(api_key) FROM accounts)
                  + (SELECT COUNT(*) FROM pending_logins)
                  + (SELECT COUNT(request) + COUNT(response) FROM payloads)
                  + (SELECT COUNT(*) FROM settings WHERE key = 'admin.totp')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let n: i64 = row.try_get(0).map_err(db)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn vacuum(&self) -> Result<(), StoreError> {
        sqlx::query("VACUUM").execute(&self.pool).await.map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl InstanceStore for SqliteStore {
    async fn heartbeat(&self, i: &InstanceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, host, version, address, started_at_ms, last_seen_ms, key_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
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
        let done = sqlx::query("DELETE FROM instances WHERE last_seen_ms < ?1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    /// One file, one server: the CLI's changes are picked up by the periodic check.
    async fn change_feed(&self) -> Result<Option<Arc<tokio::sync::Notify>>, StoreError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(id: &str, name: &str) -> AccountRecord {
        AccountRecord {
            id: id.into(),
            name: name.into(),
            kind: AccountKind::OAuth,
            status: AccountStatus::Active,
            access_token: Some("v1.a".into()),
            refresh_token: Some("v1.r".into()),
            api_key: None,
            expires_at_ms: Some(5),
            email: None,
            account_uuid: None,
            org_uuid: None,
            org_name: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            priority: 0,
            weight: 1,
            plan: None,
            token_version: 0,
        }
    }

    #[tokio::test]
    async fn request_log_rows_survive_the_move_to_the_time_keyed_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // A database as the release before the time-keyed table left it, with one logged request.
            use sqlx::ConnectOptions;
            let options = SqliteConnectOptions::from_str("sqlite://").unwrap().filename(&path).create_if_missing(true);
            let mut conn = options.connect().await.unwrap();
            let before = MIGRATIONS.len() - 1;
            for sql in &MIGRATIONS[..before] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut conn).await.unwrap();
            }
            let version = format!("PRAGMA user_version = {before}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(version)).execute(&mut conn).await.unwrap();
            sqlx::raw_sql(
                "INSERT INTO requests (id, at_ms, account, method, path, status, duration_ms, input_tokens, cost_usd)
                 VALUES ('sy_00000000000a000000000001', 10, 'acct', 'POST', '/v1/messages', 200, 5, 7, 0.5)",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let row = store.get_request("sy_00000000000a000000000001").await.unwrap().unwrap();
        assert_eq!((row.at_ms, row.account.as_deref(), row.input_tokens, row.status), (10, Some("acct"), 7, 200));
        assert_eq!(
            store.find_requests(&RequestFilter { limit: 10, ..RequestFilter::default() }).await.unwrap().len(),
            1
        );
        assert_eq!(store.delete_requests_before(11, false).await.unwrap(), 1);
        assert!(store.get_request("sy_00000000000a000000000001").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_schema_newer_than_this_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).await.unwrap();
        sqlx::query("PRAGMA user_version = 99").execute(&s.pool).await.unwrap();
        drop(s);
        let error = SqliteStore::open(&path).await.unwrap_err();
        assert!(matches!(error, StoreError::TooNew { found: 99, .. }), "{error}");
        assert!(error.to_string().contains("upgrade this instance"), "{error}");
        assert!(!error.retryable());
    }

    #[tokio::test]
    async fn accounts_survive_reopen_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let s = SqliteStore::open(&path).await.unwrap();
            s.save_account(&record("1", "a")).await.unwrap();
            assert!(
                matches!(s.save_account(&record("2", "a")).await, Err(StoreError::Duplicate { name, .. }) if name == "a")
            );
            let t = SealedTokens { access_token: "v1.a2".into(), refresh_token: "v1.r2".into(), expires_at_ms: 9 };
            assert_eq!(s.update_tokens("1", &t, None, 2).await.unwrap(), Some(1));
        }
        let s = SqliteStore::open(&path).await.unwrap();
        let all = s.list_accounts().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].refresh_token.as_deref(), Some("v1.r2"));
        assert!(s.remove_account("a").await.unwrap());
        assert!(!s.remove_account("a").await.unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
