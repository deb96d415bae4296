//! `switchyard auth storage …`: where secrets are kept, and testing, moving, backing up, restoring and
//! rotating them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use zeroize::Zeroizing;

use super::args::StorageCommand;
use super::{format_ms, open_data};
use crate::accounts::{PlainAccount, Registry};
use crate::config::Config;
use crate::secrets::{
    BACKUP_FORMAT, Backend, Cipher, ExposeSecret, KdfCost, SecretString, StoreChoice, loose_permissions,
    open_with_passphrase, private_dir, seal_with_passphrase, write_private_atomic,
};

pub async fn run(config: &Config, command: StorageCommand) -> anyhow::Result<()> {
    match command {
        StorageCommand::Status { json } => status(config, json).await,
        StorageCommand::Test => test(config).await,
        StorageCommand::Migrate { to } => migrate(config, &to).await,
        StorageCommand::Backup { output } => backup(config, output).await,
        StorageCommand::Restore { file } => restore(config, &file).await,
        StorageCommand::RotateKey => rotate_key(config).await,
    }
}

async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let Some(opened) = super::open_existing(config).await? else {
        if json {
            println!(
                "{}",
                serde_json::json!({ "backend": null, "database": config.database_description(), "secrets": 0 })
            );
        }
        return Ok(());
    };
    let secrets = opened.registry.store().count_secrets().await?;
    let loose = loose_permissions(&config.home)?;
    let backend = opened.keystore.backend();
    // What is on disk, not what the environment promises.
    let protected = opened.keystore.file_wrapped();
    if json {
        let out = serde_json::json!({
            "backend": backend.kind(),
            "key_source": backend.to_string(),
            "key_version": opened.keys.current,
            "key_versions": opened.keys.versions(),
            "passphrase_protected": protected,
            "secrets": secrets,
            "database": config.database_description(),
            "permissions_ok": loose.is_empty(),
            "permission_problems": loose.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("backend:      {}", backend.kind());
    println!("key source:   {backend}");
    println!("key version:  {} (held: {:?})", opened.keys.current, opened.keys.versions());
    if let Some(protected) = protected {
        println!(
            "passphrase:   {}",
            if protected {
                "yes (Argon2id)"
            } else {
                "no: the key file is not protected by a passphrase; set SWITCHYARD_PASSPHRASE to wrap it"
            }
        );
    }
    println!("secrets:      {secrets} encrypted value(s) in {}", config.database_description());
    if loose.is_empty() {
        println!("permissions:  ok (directory 0700, files 0600)");
    } else {
        for l in &loose {
            println!("permissions:  {l}");
        }
    }
    Ok(())
}

async fn test(config: &Config) -> anyhow::Result<()> {
    let opened = open_data(config).await?;
    let keystore = opened.keystore;
    let report = tokio::task::spawn_blocking(move || keystore.round_trip()).await??;
    // The envelope too: what is sealed opens, bound to where it belongs.
    let cipher = Cipher::with_keys(opened.keys);
    let sealed = cipher.seal("storage-test", "storage/test")?;
    anyhow::ensure!(
        cipher.open(&sealed, "storage/test")?.expose_secret() == "storage-test",
        "envelope round trip failed"
    );
    println!("ok: {report}; envelope round trip succeeded");
    Ok(())
}

async fn migrate(config: &Config, to: &str) -> anyhow::Result<()> {
    let to: StoreChoice = to.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let opened = open_data(config).await?;
    let from = opened.keystore.backend().clone();
    let mut keystore = opened.keystore;
    let keys = opened.keys;
    let keystore = tokio::task::spawn_blocking(move || keystore.migrate(&keys, to).map(|()| keystore)).await??;
    super::audit_cli(opened.registry.store().as_ref(), "storage.migrate", keystore.backend().kind(), "").await;
    if *keystore.backend() == from {
        println!("the key is already in the {from}");
    } else {
        println!("moved the encryption key from the {from} to the {}; the old copy is deleted", keystore.backend());
    }
    Ok(())
}

/// The passphrase for backups: `SWITCHYARD_BACKUP_PASSPHRASE`, else `SWITCHYARD_PASSPHRASE`, else typed (a
/// hidden prompt, asked twice for a new backup) or one line from a pipe.
fn backup_passphrase(config: &Config, new: bool) -> anyhow::Result<SecretString> {
    let given = match std::env::var("SWITCHYARD_BACKUP_PASSPHRASE").ok().filter(|p| !p.is_empty()) {
        Some(p) => Some(("SWITCHYARD_BACKUP_PASSPHRASE", SecretString::from(p))),
        None => config.passphrase.clone().map(|p| ("SWITCHYARD_PASSPHRASE", p)),
    };
    match given {
        // A backup travels: a short passphrase would make it the weakest copy of every token.
        Some((name, p)) if new && p.expose_secret().chars().count() < MIN_BACKUP_PASSPHRASE => {
            anyhow::bail!("{name} is too short for a backup: use at least {MIN_BACKUP_PASSPHRASE} characters")
        }
        Some((_, p)) => Ok(p),
        None if new => super::prompt::new_secret("backup passphrase", MIN_BACKUP_PASSPHRASE),
        None => super::prompt::passphrase("backup passphrase"),
    }
}

/// Characters a new backup's passphrase has at least.
const MIN_BACKUP_PASSPHRASE: usize = 12;

/// The largest backup `restore` reads.
const MAX_BACKUP_BYTES: u64 = 256 * 1024 * 1024;

async fn backup(config: &Config, output: Option<PathBuf>) -> anyhow::Result<()> {
    let opened = open_data(config).await?;
    let passphrase = backup_passphrase(config, true)?;
    let accounts = opened.registry.export().await?;
    let plain = Zeroizing::new(serde_json::to_vec(&serde_json::json!({ "accounts": accounts }))?);
    let sealed = seal_with_passphrase(&plain, &passphrase, BACKUP_FORMAT, KdfCost::Backup)?;
    let path = match output {
        Some(p) => p,
        None => {
            let dir = config.home.join("backups");
            private_dir(&dir)?;
            dir.join(format!("switchyard-{}.backup", crate::now_ms()))
        }
    };
    write_private_atomic(&path, sealed.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    super::audit_cli(opened.registry.store().as_ref(), "storage.backup", &path.display().to_string(), "").await;
    println!("wrote {} account(s) to {} (encrypted with your passphrase, mode 0600)", accounts.len(), path.display());
    Ok(())
}

async fn restore(config: &Config, file: &Path) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Archive {
        accounts: Vec<PlainAccount>,
    }
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    anyhow::ensure!(size <= MAX_BACKUP_BYTES, "{} is too large to be a backup ({size} bytes)", file.display());
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let opened = open_data(config).await?;
    let passphrase = backup_passphrase(config, false)?;
    let plain = open_with_passphrase(&text, &passphrase, BACKUP_FORMAT)
        .map_err(|e| anyhow::anyhow!("cannot open the backup: {e}"))?;
    let archive: Archive = serde_json::from_slice(&plain).context("the backup's content is malformed")?;
    let n = opened.registry.import(&archive.accounts).await?;
    let detail = format!("{n} account(s)");
    super::audit_cli(opened.registry.store().as_ref(), "storage.restore", &file.display().to_string(), &detail).await;
    println!("restored {n} account(s) from {}", file.display());
    eprintln!(
        "note: OAuth refresh tokens are single-use; an account refreshed since the backup was taken needs \
         `switchyard auth login` again"
    );
    Ok(())
}

/// Add a new key, re-seal everything under it in one transaction, then retire the old key. A crash at any
/// point leaves a key that opens every stored value.
async fn rotate_key(config: &Config) -> anyhow::Result<()> {
    if config.keys_in_database() {
        return rotate_shared_key(config).await;
    }
    // Other instances would keep sealing with the old key while this one retires it.
    anyhow::ensure!(
        config.database.is_none(),
        "rotate-key on a shared PostgreSQL database needs the key kept in the database: set \
         SWITCHYARD_PASSPHRASE (and not SWITCHYARD_ENCRYPTION_KEY) on every instance"
    );
    let _lock = super::serve::exclusive_lock(config)
        .context("stop `switchyard serve` on this data directory before rotating the key")?;
    let opened = open_data(config).await?;
    anyhow::ensure!(*opened.keystore.backend() != Backend::Environment, "{}", crate::secrets::KeyError::EnvKeyInUse);
    let mut keys = opened.keys.clone();
    let old_v = keys.current;
    let new_version = keys.rotate();
    let keystore = opened.keystore;
    // 1. Both keys stored: old values still open, new ones will.
    let keys_for_save = keys.clone();
    let keystore = tokio::task::spawn_blocking(move || keystore.save(&keys_for_save).map(|()| keystore)).await??;
    // 2. Every sealed value (account tokens, the TOTP secret, kept payloads) re-sealed under the new key,
    //    all in one transaction.
    let old = opened.registry.cipher().clone();
    let count = reseal_everything(&opened.registry, &old, &Cipher::with_keys(keys.clone())).await?;
    opened.registry.store().clear_pending_logins().await?;
    // 3a. Nothing may still need the old key: check with the new key alone before retiring the old one.
    anyhow::ensure!(
        opens_with_new_key_alone(&opened.registry, &keys).await?,
        "a sealed value still needs key version {old_version}; the old key is kept (both keys are stored)",
        old_version = old_v
    );
    let detail = format!("key version {new_version}");
    super::audit_cli(opened.registry.store().as_ref(), "storage.rotate-key", "data key", &detail).await;
    // 3. The old key retired.
    keys.retire_old();
    tokio::task::spawn_blocking(move || keystore.save(&keys)).await??;
    println!(
        "re-encrypted {count} secret(s) under key version {new_version} (was {old_v}) at {}",
        format_ms(crate::now_ms())
    );
    Ok(())
}

/// Re-seal every sealed value from `old` to `new` in one transaction: account tokens and keys, the TOTP
/// secret, kept payloads, and the key check (which then proves the new key; it is not counted). Returns
/// how many secrets were re-sealed.
async fn reseal_everything(registry: &Registry, old: &Cipher, new: &Cipher) -> anyhow::Result<usize> {
    let store = registry.store();
    let (accounts, mut count) = registry.resealed_accounts(old, new).await?;
    let mut settings: Vec<(String, String)> =
        crate::access::admin::resealed_totp(store.as_ref(), old, new).await?.into_iter().collect();
    count += settings.len();
    settings.extend(registry.resealed_key_check(old, new).await?);
    let (payloads, bodies) = crate::ledger::reseal_payloads(store.list_payloads().await?, old, new)?;
    count += bodies;
    store.replace_sealed(&crate::store::Resealed { accounts, settings, payloads }).await?;
    Ok(count)
}

/// Whether every sealed value opens with `keys` once their old versions are retired.
async fn opens_with_new_key_alone(registry: &Registry, keys: &crate::secrets::KeySet) -> anyhow::Result<bool> {
    let mut only_new = keys.clone();
    only_new.retire_old();
    let only_new = Cipher::with_keys(only_new);
    let store = registry.store();
    let accounts_ok = registry.resealed_accounts(&only_new, &only_new).await.is_ok();
    let totp_ok = crate::access::admin::totp_opens(store.as_ref(), &only_new).await?;
    let payloads_ok = crate::ledger::reseal_payloads(store.list_payloads().await?, &only_new, &only_new).is_ok();
    Ok(accounts_ok && totp_ok && payloads_ok)
}

/// How long a rotation waits for every live instance to take up the new key before giving up (leaving
/// both keys in place, which is safe: every value opens).
const TAKE_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Rotate the key set kept in a shared database while instances serve from it:
/// 1. publish the key set with the new key added (the current one); every instance takes it up, seals
///    with the new key from then on and says so in its heartbeat;
/// 2. once every live instance has (after one heartbeat period at least, so that one started just before
///    is seen), re-seal every value, each account row only over the token version it was read at (a pair
///    an instance refreshed meanwhile is already under the new key);
/// 3. check that everything opens with the new key alone, then publish the key set without the old key.
///
/// Interrupted anywhere, the stored key set opens every value; run again, it carries on from where it is.
async fn rotate_shared_key(config: &Config) -> anyhow::Result<()> {
    use crate::accounts::shared_keys;
    let passphrase = config.passphrase.clone().context("SWITCHYARD_PASSPHRASE is not set")?;
    let opened = open_data(config).await?;
    let store = opened.registry.store().clone();
    let text = shared_keys::read(store.as_ref()).await?.context("no data key is kept in the database")?;
    let mut keys = shared_keys::unwrap(text.clone(), &passphrase).await?;
    let old_v = keys.versions().into_iter().find(|v| *v != keys.current).unwrap_or(keys.current);
    let new_version = if keys.versions().len() > 1 {
        eprintln!("carrying on with the rotation to key version {} left unfinished", keys.current);
        keys.current
    } else {
        keys.rotate()
    };
    let both = match shared_keys::publish(store.as_ref(), &keys, &passphrase, Some(&text)).await? {
        Some(both) => both,
        None => anyhow::bail!("the data key changed while this rotation started (another rotation?); try again"),
    };
    let published_at = crate::now_ms();
    // Nobody seals with the old key any more once every live instance reports the new version.
    let deadline = std::time::Instant::now() + TAKE_UP_TIMEOUT;
    loop {
        let now = crate::now_ms();
        let lagging: Vec<String> = store
            .list_instances()
            .await?
            .into_iter()
            .filter(|i| now - i.last_seen_ms < crate::server::LIVE_MS)
            .filter(|i| i.key_version != new_version || i.last_seen_ms < published_at)
            .map(|i| i.id)
            .collect();
        if lagging.is_empty() && now - published_at > 6_000 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "instance(s) {} did not take up key version {new_version} within {} s (do they keep their key \
             elsewhere?); both keys stay stored, so everything still opens: run rotate-key again",
            lagging.join(", "),
            TAKE_UP_TIMEOUT.as_secs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Both keys open everything, the new one seals.
    let cipher = Cipher::with_keys(keys.clone());
    let count = reseal_everything(&opened.registry, &cipher, &cipher).await?;
    anyhow::ensure!(
        opens_with_new_key_alone(&opened.registry, &keys).await?,
        "a sealed value still needs key version {old_v}; both keys stay stored: run rotate-key again"
    );
    let mut only_new = keys.clone();
    only_new.retire_old();
    // A login begun under the old key could not be finished once it is gone.
    store.clear_pending_logins().await?;
    anyhow::ensure!(
        shared_keys::publish(store.as_ref(), &only_new, &passphrase, Some(&both)).await?.is_some(),
        "the data key changed during the rotation (another rotation?); both keys stay stored"
    );
    let detail = format!("key version {new_version}, kept in the database");
    super::audit_cli(store.as_ref(), "storage.rotate-key", "data key", &detail).await;
    println!(
        "re-encrypted {count} secret(s) under key version {new_version} (was {old_v}) at {}; every instance \
         took it up",
        format_ms(crate::now_ms())
    );
    Ok(())
}

/// What `store copy` moved.
#[derive(Debug, Default)]
struct Copied {
    accounts: usize,
    keys: usize,
    settings: usize,
    states: usize,
    audit: usize,
    requests: usize,
}

/// `switchyard store copy`: from this data directory's SQLite to PostgreSQL (`--to`), or back (`--from`).
/// Sealed values are copied as they are, so both sides use this data key; every account's tokens are
/// opened on the destination before the summary. Idempotent: rows are matched by id, the audit log by
/// what the destination already holds.
pub async fn copy(
    config: &Config,
    to: Option<String>,
    from: Option<String>,
    with_requests: bool,
) -> anyhow::Result<()> {
    use crate::store::{PgSettings, PgStore, Store};
    use std::sync::Arc;
    let pg = |url: String| PgSettings { url, max_connections: 4 };
    // The SQLite side must not be served while copying (its refresh tokens could rotate under us).
    let _lock = super::serve::exclusive_lock(config)
        .context("stop `switchyard serve` on this data directory before copying its store")?;
    let opened = open_data(&Config { database: None, ..config.clone() }).await?;
    let sqlite: Arc<dyn Store> = opened.registry.store().clone();
    let (source, dest, dest_name): (Arc<dyn Store>, Arc<dyn Store>, String) = match (to, from) {
        (Some(url), None) => {
            let name = crate::store::redacted_url(&url);
            (sqlite, Arc::new(PgStore::open(&pg(url)).await?), name)
        }
        (None, Some(url)) => {
            (Arc::new(PgStore::open(&pg(url)).await?), sqlite, config.database_path().display().to_string())
        }
        _ => anyhow::bail!("give --to URL (SQLite to PostgreSQL) or --from URL (PostgreSQL to SQLite)"),
    };
    let cipher = opened.registry.cipher().clone();
    // The same data key on both sides, or nothing would open afterwards.
    let check = crate::accounts::Registry::new(source.clone(), cipher.clone());
    check.verify_data_key(false).await.context("the source store was written with another data key")?;
    let target = crate::accounts::Registry::new(dest.clone(), cipher.clone());
    target.verify_data_key(false).await.context("the destination store was written with another data key")?;

    let mut copied = Copied::default();
    for account in source.list_accounts().await? {
        if let Some(there) = dest.find_account(&account.name).await? {
            anyhow::ensure!(
                there.id == account.id,
                "the destination already has a different account named {:?}; rename or remove one first",
                account.name
            );
        }
        dest.save_account(&account).await?;
        dest.set_routing(&account.id, Some(account.priority), Some(account.weight), account.updated_at_ms).await?;
        if account.status != crate::store::AccountStatus::Active {
            dest.set_status(&account.id, account.status, account.updated_at_ms).await?;
        }
        if let Some(plan) = &account.plan {
            dest.set_plan(&account.id, plan).await?;
        }
        copied.accounts += 1;
    }
    let present: Vec<crate::store::ClientKeyRecord> = dest.list_client_keys().await?;
    for key in source.list_client_keys().await? {
        match present.iter().find(|k| k.name == key.name) {
            Some(k) if k.id == key.id => {}
            Some(_) => anyhow::bail!("the destination already has a different client key named {:?}", key.name),
            None => dest.insert_client_key(&key).await?,
        }
        copied.keys += 1;
    }
    for (name, value) in source.list_settings().await? {
        dest.put_setting(&name, Some(&value), crate::now_ms()).await?;
        copied.settings += 1;
    }
    let mut by_instance: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for row in source.load_states().await? {
        by_instance.entry(row.instance).or_default().push((row.account_id, row.state));
    }
    for (instance, rows) in by_instance {
        copied.states += rows.len();
        dest.save_states(&instance, &rows, crate::now_ms()).await?;
    }
    // The audit log has no ids to match: entries after the destination's newest are the new ones.
    let newest = dest.list_audit(0).await?.first().map_or(i64::MIN, |e| e.at_ms);
    let mut entries = source.list_audit(0).await?;
    entries.retain(|e| e.at_ms > newest);
    entries.reverse();
    for entry in &entries {
        dest.append_audit(entry).await?;
    }
    copied.audit = entries.len();
    if with_requests {
        let mut filter = crate::store::RequestFilter { since_ms: i64::MIN, limit: 1000, ..Default::default() };
        loop {
            let mut page = source.find_requests(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.before = Some((last.at_ms, last.id.clone()));
            for row in &mut page {
                if let Some((request, response)) = source.get_payload(&row.id).await? {
                    row.payload_request = request;
                    row.payload_response = response;
                }
            }
            dest.insert_requests(&page).await?;
            copied.requests += page.len();
        }
    }
    // Proof on the destination: every account's tokens open with this data key, and the counts match.
    let views = target.views().await?;
    let unreadable: Vec<&str> = views.iter().filter(|v| v.problem.is_some()).map(|v| v.name.as_str()).collect();
    anyhow::ensure!(unreadable.is_empty(), "copied, but these accounts do not open there: {}", unreadable.join(", "));
    anyhow::ensure!(
        dest.list_accounts().await?.len() >= copied.accounts && dest.list_client_keys().await?.len() >= copied.keys,
        "the destination holds fewer accounts or keys than were copied"
    );
    target.verify_data_key(true).await?;
    super::audit_cli(dest.as_ref(), "store.copy", &dest_name, &format!("{} account(s)", copied.accounts)).await;
    println!(
        "copied {} account(s), {} client key(s), {} setting(s), {} routing state(s), {} audit entr(ies){} to {dest_name}; \
         every account's tokens open with the data key. Nothing was removed from the source.",
        copied.accounts,
        copied.keys,
        copied.settings,
        copied.states,
        copied.audit,
        if with_requests { format!(", {} request(s)", copied.requests) } else { String::new() },
    );
    Ok(())
}
