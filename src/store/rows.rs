//! Reading rows into records, written once for every backend: the column names are the same on each,
//! only the row type differs (`row_readers!(SqliteRow)` in a backend module defines the readers there).

macro_rules! row_readers {
    ($row:ty) => {
        fn account_from_row(row: &$row) -> Result<AccountRecord, StoreError> {
            let get_str = |col: &str| row.try_get::<String, _>(col).map_err(db);
            let get_opt = |col: &str| row.try_get::<Option<String>, _>(col).map_err(db);
            Ok(AccountRecord {
                id: get_str("id")?,
                name: get_str("name")?,
                kind: AccountKind::parse(&get_str("kind")?)?,
                status: AccountStatus::parse(&get_str("status")?)?,
                access_token: get_opt("access_token")?,
                refresh_token: get_opt("refresh_token")?,
                api_key: get_opt("api_key")?,
                expires_at_ms: row.try_get("expires_at_ms").map_err(db)?,
                email: get_opt("email")?,
                account_uuid: get_opt("account_uuid")?,
                org_uuid: get_opt("org_uuid")?,
                org_name: get_opt("org_name")?,
                created_at_ms: row.try_get("created_at_ms").map_err(db)?,
                updated_at_ms: row.try_get("updated_at_ms").map_err(db)?,
                priority: row.try_get("priority").map_err(db)?,
                weight: row.try_get("weight").map_err(db)?,
                plan: get_opt("plan")?,
                token_version: row.try_get("token_version").map_err(db)?,
            })
        }

        fn key_from_row(r: &$row) -> Result<ClientKeyRecord, StoreError> {
            Ok(ClientKeyRecord {
                id: r.try_get("id").map_err(db)?,
                name: r.try_get("name").map_err(db)?,
                hash: r.try_get("hash").map_err(db)?,
                role: r.try_get("role").map_err(db)?,
                rpm: r.try_get("rpm").map_err(db)?,
                tpm: r.try_get("tpm").map_err(db)?,
                concurrency: r.try_get("concurrency").map_err(db)?,
                accounts: r.try_get("accounts").map_err(db)?,
                created_at_ms: r.try_get("created_at_ms").map_err(db)?,
                expires_at_ms: r.try_get("expires_at_ms").map_err(db)?,
                revoked_at_ms: r.try_get("revoked_at_ms").map_err(db)?,
                updated_at_ms: r.try_get("updated_at_ms").map_err(db)?,
                budget_usd_day: r.try_get("budget_usd_day").map_err(db)?,
                budget_usd_month: r.try_get("budget_usd_month").map_err(db)?,
                budget_tokens_day: r.try_get("budget_tokens_day").map_err(db)?,
            })
        }

        fn request_from_row(r: &$row) -> Result<RequestRow, StoreError> {
            Ok(RequestRow {
                id: r.try_get("id").map_err(db)?,
                at_ms: r.try_get("at_ms").map_err(db)?,
                client_key: r.try_get("client_key").map_err(db)?,
                account: r.try_get("account").map_err(db)?,
                accounts_tried: r.try_get("accounts_tried").map_err(db)?,
                attempts: r.try_get("attempts").map_err(db)?,
                method: r.try_get("method").map_err(db)?,
                path: r.try_get("path").map_err(db)?,
                model: r.try_get("model").map_err(db)?,
                stream: r.try_get("stream").map_err(db)?,
                status: r.try_get("status").map_err(db)?,
                error_type: r.try_get("error_type").map_err(db)?,
                input_tokens: r.try_get("input_tokens").map_err(db)?,
                output_tokens: r.try_get("output_tokens").map_err(db)?,
                cache_read_tokens: r.try_get("cache_read_tokens").map_err(db)?,
                cache_creation_tokens: r.try_get("cache_creation_tokens").map_err(db)?,
                ttfb_ms: r.try_get("ttfb_ms").map_err(db)?,
                duration_ms: r.try_get("duration_ms").map_err(db)?,
                ratelimit_status: r.try_get("ratelimit_status").map_err(db)?,
                dialect: r.try_get("dialect").map_err(db)?,
                cost_usd: r.try_get("cost_usd").map_err(db)?,
                payload_request: None,
                payload_response: None,
            })
        }

        fn stats_from_row(r: &$row) -> Result<GroupStats, StoreError> {
            Ok(GroupStats {
                group: r.try_get(0).map_err(db)?,
                requests: r.try_get(1).map_err(db)?,
                errors: r.try_get(2).map_err(db)?,
                input_tokens: r.try_get(3).map_err(db)?,
                output_tokens: r.try_get(4).map_err(db)?,
                cache_read_tokens: r.try_get(5).map_err(db)?,
                cache_creation_tokens: r.try_get(6).map_err(db)?,
                cost_usd: r.try_get(7).map_err(db)?,
                p50_ms: r.try_get(8).map_err(db)?,
                p95_ms: r.try_get(9).map_err(db)?,
            })
        }

        fn series_from_row(r: &$row) -> Result<SeriesPoint, StoreError> {
            Ok(SeriesPoint {
                at_ms: r.try_get(0).map_err(db)?,
                requests: r.try_get(1).map_err(db)?,
                errors: r.try_get(2).map_err(db)?,
                input_tokens: r.try_get(3).map_err(db)?,
                output_tokens: r.try_get(4).map_err(db)?,
                cost_usd: r.try_get(5).map_err(db)?,
            })
        }

        fn audit_from_row(r: &$row) -> Result<AuditEntry, StoreError> {
            Ok(AuditEntry {
                at_ms: r.try_get("at_ms").map_err(db)?,
                actor: r.try_get("actor").map_err(db)?,
                source: r.try_get("source").map_err(db)?,
                action: r.try_get("action").map_err(db)?,
                target: r.try_get("target").map_err(db)?,
                outcome: r.try_get("outcome").map_err(db)?,
                detail: r.try_get("detail").map_err(db)?,
            })
        }

        fn instance_from_row(r: &$row) -> Result<InstanceRecord, StoreError> {
            Ok(InstanceRecord {
                id: r.try_get("id").map_err(db)?,
                host: r.try_get("host").map_err(db)?,
                version: r.try_get("version").map_err(db)?,
                address: r.try_get("address").map_err(db)?,
                started_at_ms: r.try_get("started_at_ms").map_err(db)?,
                last_seen_ms: r.try_get("last_seen_ms").map_err(db)?,
                key_version: u32::try_from(r.try_get::<i64, _>("key_version").map_err(db)?).unwrap_or(0),
            })
        }

        fn state_from_row(r: &$row) -> Result<StateRow, StoreError> {
            Ok(StateRow {
                account_id: r.try_get("account_id").map_err(db)?,
                instance: r.try_get("instance").map_err(db)?,
                state: r.try_get("state").map_err(db)?,
                updated_at_ms: r.try_get("updated_at_ms").map_err(db)?,
            })
        }

        fn payload_from_row(r: &$row) -> Result<SealedPayload, StoreError> {
            Ok(SealedPayload {
                request_id: r.try_get("request_id").map_err(db)?,
                request: r.try_get("request").map_err(db)?,
                response: r.try_get("response").map_err(db)?,
            })
        }

        fn pending_from_row(row: &$row) -> Result<PendingLogin, StoreError> {
            Ok(PendingLogin {
                state: row.try_get("state").map_err(db)?,
                verifier: row.try_get("verifier").map_err(db)?,
                redirect_uri: row.try_get("redirect_uri").map_err(db)?,
                console: row.try_get("console").map_err(db)?,
                account: row.try_get("account").map_err(db)?,
                expires_at_ms: row.try_get("expires_at_ms").map_err(db)?,
            })
        }
    };
}

pub(super) use row_readers;
