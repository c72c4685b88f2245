//! Fabrik's metadata store, starting with the device registry: devices (id, name, type, site,
//! labels, Sparkplug edge node), their credentials (tokens stored as argon2id hashes), their
//! connection state, last-seen time and message/error counts, and an event history of
//! connection changes and administrative actions.
//!
//! It runs on sqlx with an embedded SQLite file by default, or on a PostgreSQL database
//! (`database` owns the difference, decision 0055). It knows nothing about protocols:
//! connectors report connections and counts, the API and CLI manage devices.

pub mod attestation;
pub mod audit;
pub mod copy;
pub mod database;
mod error;
mod schema;
#[cfg(test)]
mod test_database;
mod tokens;
pub mod tpm;
pub mod usecases;
pub mod users;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabrik_core::{DeviceId, Timestamp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

pub use audit::{AuditBreak, AuditEntry, AuditEvent, AuditVerification, ERASED, PersonErasure};
pub use database::{Dialect, Location};
pub use error::RegistryError;
pub use users::{Role, User};

/// A registered device, as the API shows it (never with its token or hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    /// Stable id, e.g. `pump-7`: the MQTT user name and the `device` tag of its data.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Kind of equipment (`pump`, `motor`, ...); also the default table of its telemetry.
    pub device_type: String,
    /// Site or line.
    pub site: String,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
    /// The Sparkplug B edge node the device owns, as `group/edge_node`.
    pub sparkplug_node: Option<String>,
    /// `online`, `offline` or `never` (never connected).
    pub state: String,
    /// Last message or connection change (ns since the epoch).
    pub last_seen: Option<i64>,
    /// Messages received.
    pub messages: i64,
    /// Messages that could not be stored (dead-lettered).
    pub errors: i64,
    /// Disabled devices cannot connect.
    pub disabled: bool,
    /// Registration time (ns).
    pub created_at: i64,
}

/// A device to register.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Stable id: ASCII letters, digits, `-`, `_`, `.`, `:`.
    pub id: String,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Kind of equipment.
    #[serde(default, rename = "type")]
    pub device_type: Option<String>,
    /// Site or line.
    #[serde(default)]
    pub site: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Sparkplug edge node owned, `group/edge_node`.
    #[serde(default)]
    pub sparkplug_node: Option<String>,
}

/// Changes to a device; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// New display name.
    #[serde(default)]
    pub name: Option<String>,
    /// New type.
    #[serde(default, rename = "type")]
    pub device_type: Option<String>,
    /// New site.
    #[serde(default)]
    pub site: Option<String>,
    /// Labels to replace the current ones.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// New Sparkplug edge node (empty string: none).
    #[serde(default)]
    pub sparkplug_node: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Filters for listing devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceFilter {
    /// Only this site.
    pub site: Option<String>,
    /// Only this type.
    #[serde(rename = "type")]
    pub device_type: Option<String>,
    /// Only this state (`online`, `offline`, `never`).
    pub state: Option<String>,
    /// Only devices with this label, `key=value`.
    pub label: Option<String>,
}

impl DeviceFilter {
    /// Whether a device of this site, type and labels passes the site, type and label
    /// selectors (the state is not looked at).
    pub fn matches(
        &self,
        site: &str,
        device_type: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let label = self.label.as_deref().map(|l| match l.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (l, None),
        });
        self.site.as_deref().is_none_or(|s| site == s)
            && self.device_type.as_deref().is_none_or(|t| device_type == t)
            && label.is_none_or(|(k, v)| match (labels.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
    }
}

/// A device another node registers, as that edge mirrored it to this hub (decision 0036).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDevice {
    /// The node that registers it.
    pub node: String,
    /// Its id.
    pub id: String,
    /// Its site there.
    pub site: String,
    /// Its type there.
    pub device_type: String,
    /// Its labels there.
    pub labels: BTreeMap<String, String>,
}

/// One entry of a device's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceEvent {
    /// When (ns).
    pub time: i64,
    /// `registered`, `connected`, `disconnected`, `token_rotated`, `updated`, `birth`, `death`.
    pub kind: String,
    /// Details (peer address, disconnect reason, ...).
    pub detail: String,
}

/// Activity counted in memory and written in batches by [`Registry::flush_activity`].
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    messages: i64,
    errors: i64,
    last_seen: i64,
}

/// The registry.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: AnyPool,
    /// The SQL of the few statements that differ between SQLite and PostgreSQL.
    dialect: Dialect,
    /// Recently verified tokens (SHA-256), so a reconnect storm does not cost one argon2 hash
    /// per connection; entries live `VERIFIED_TTL` and are dropped on rotation.
    verified: Arc<Mutex<HashMap<String, VerifiedToken>>>,
    activity: Arc<Mutex<HashMap<String, Activity>>>,
    attempts: Arc<Mutex<users::Attempts>>,
    /// Bumped by every change to the set of devices or their site, type or labels, so a
    /// reader that selects devices (a heartbeat rule's `expect`) re-reads only after one.
    changes: Arc<std::sync::atomic::AtomicU64>,
    /// The audit log's key and append lock.
    audit: Arc<audit::AuditChain>,
    /// Open attestation challenges (in memory: a restart voids them, and they last minutes).
    challenges: Arc<Mutex<attestation::Challenges>>,
    /// Woken by every attestation verdict, key and policy change, so the MQTT endpoint
    /// re-checks its connected devices at once.
    attestation_changed: Arc<tokio::sync::Notify>,
    /// Devices with an enrolled attestation key, so a CONNECT of any other device costs no
    /// query for its attestation.
    enrolled: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Passing verdicts judged again after their type's policy changed, by device, so the
    /// gate reads a kept event log once per verdict and policy version, not at every check.
    rejudged: Arc<Mutex<HashMap<String, attestation::RejudgedVerdict>>>,
    /// The same for runtime policies (decision 0067): passes judged again from the IMA
    /// entries kept with their quote after their type's runtime policy changed.
    runtime_rejudged: Arc<Mutex<HashMap<String, attestation::RejudgedVerdict>>>,
    /// Credentials issued to devices' endorsement keys and not yet activated.
    activations: Arc<Mutex<attestation::activation::Activations>>,
    /// The TPM vendors' CA certificates (DER) EK certificates are checked against; empty: EK
    /// certificates are not checked.
    endorsement_authorities: Arc<parking_lot::RwLock<Arc<Vec<Vec<u8>>>>>,
    /// Held while an activation checks the device's binding and stores its key.
    activation_lock: Arc<tokio::sync::Mutex<()>>,
}

/// SHA-256 of a token that passed the argon2 check, and when.
type VerifiedToken = ([u8; 32], Instant);

const VERIFIED_TTL: Duration = Duration::from_secs(600);

pub(crate) fn now_ns() -> i64 {
    Timestamp::now().nanos()
}

fn check_sparkplug(node: &str) -> Result<(), RegistryError> {
    let parts: Vec<&str> = node.split('/').collect();
    let valid = parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && !p.contains(['+', '#']) && p.trim() == *p);
    if valid {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "sparkplug_node `{node}`: expected `group/edge_node` without wildcards"
        )))
    }
}

fn device_from_row(row: &AnyRow) -> Result<Device, RegistryError> {
    let labels: String = row.try_get("labels")?;
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        device_type: row.try_get("device_type")?,
        site: row.try_get("site")?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        sparkplug_node: row.try_get("sparkplug_node")?,
        state: row.try_get("state")?,
        last_seen: row.try_get("last_seen")?,
        messages: row.try_get("messages")?,
        errors: row.try_get("errors")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

/// The columns of a device row, as a macro so queries stay literal (`&'static str`) strings.
macro_rules! device_columns {
    () => {
        "id, name, device_type, site, labels, sparkplug_node, state, last_seen, messages, errors, disabled, created_at"
    };
}

impl Registry {
    /// Opens (creating if needed) the registry's SQLite file at `path` and brings its schema
    /// up to date.
    pub async fn open(path: &Path) -> Result<Self, RegistryError> {
        #[cfg(test)]
        let location = test_database::location(path).await;
        #[cfg(not(test))]
        let location = Location::File(path.to_owned());
        Self::open_at(&location).await
    }

    /// Opens the registry at `location` (an SQLite file is created if needed; a PostgreSQL
    /// database must exist) and brings its schema up to date.
    pub async fn open_at(location: &Location) -> Result<Self, RegistryError> {
        let (pool, dialect) = database::connect(location).await?;
        schema::migrate(&pool, dialect).await?;
        // The audit chain's key lives in a file of its own (0600), beside an SQLite database.
        let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
            .fetch_one(&pool)
            .await?;
        let audit = audit::AuditChain::open(&location.audit_key(), entries)?;
        // Connections of a previous run are over.
        sqlx::query("UPDATE devices SET state = 'offline' WHERE state = 'online'")
            .execute(&pool)
            .await?;
        let enrolled: Vec<String> = sqlx::query_scalar("SELECT device_id FROM attestation_keys")
            .fetch_all(&pool)
            .await?;
        Ok(Self {
            pool,
            dialect,
            verified: Arc::default(),
            activity: Arc::default(),
            attempts: Arc::default(),
            changes: Arc::default(),
            audit: Arc::new(audit),
            challenges: Arc::default(),
            attestation_changed: Arc::default(),
            enrolled: Arc::new(Mutex::new(enrolled.into_iter().collect())),
            rejudged: Arc::default(),
            runtime_rejudged: Arc::default(),
            activations: Arc::default(),
            endorsement_authorities: Arc::default(),
            activation_lock: Arc::default(),
        })
    }

    /// A number that changes whenever a device is added, changed or removed (in this
    /// process).
    pub fn generation(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Registers a device; returns it with its new token, shown only this once.
    pub async fn add(&self, new: NewDevice) -> Result<(Device, String), RegistryError> {
        let id =
            DeviceId::new(new.id.clone()).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        if let Some(node) = &new.sparkplug_node {
            check_sparkplug(node)?;
        }
        let token = tokens::generate()?;
        let hash = tokens::hash(&token)?;
        let now = now_ns();
        let labels = serde_json::to_string(&new.labels).unwrap_or_else(|_| "{}".into());
        let result = sqlx::query(
            "INSERT INTO devices (id, name, device_type, site, labels, sparkplug_node, token_hash, state, messages, errors, disabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'never', 0, 0, 0, $8, $9)",
        )
        .bind(id.as_str())
        .bind(new.name.clone().unwrap_or_else(|| id.to_string()))
        .bind(new.device_type.clone().unwrap_or_default())
        .bind(new.site.clone().unwrap_or_default())
        .bind(labels)
        .bind(new.sparkplug_node.clone())
        .bind(hash)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(RegistryError::Exists(id.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        self.changed();
        self.event(id.as_str(), "registered", "").await?;
        let device = self.get(id.as_str()).await?;
        Ok((device, token))
    }

    /// One device.
    pub async fn get(&self, id: &str) -> Result<Device, RegistryError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_columns!(),
            " FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        let mut device = device_from_row(&row)?;
        self.overlay_activity(&mut device);
        Ok(device)
    }

    fn overlay_activity(&self, device: &mut Device) {
        if let Some(a) = self.activity.lock().get(&device.id) {
            device.messages += a.messages;
            device.errors += a.errors;
            if a.last_seen > device.last_seen.unwrap_or(0) {
                device.last_seen = Some(a.last_seen);
            }
        }
    }

    /// Devices matching `filter`, by id.
    pub async fn list(&self, filter: &DeviceFilter) -> Result<Vec<Device>, RegistryError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_columns!(),
            " FROM devices ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let mut d = device_from_row(row)?;
            let keep = filter.matches(&d.site, &d.device_type, &d.labels)
                && filter.state.as_ref().is_none_or(|s| &d.state == s);
            if keep {
                self.overlay_activity(&mut d);
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Applies a patch; returns the updated device.
    pub async fn patch(&self, id: &str, patch: DevicePatch) -> Result<Device, RegistryError> {
        let mut device = self.get(id).await?;
        if let Some(v) = patch.name {
            device.name = v;
        }
        if let Some(v) = patch.device_type {
            device.device_type = v;
        }
        if let Some(v) = patch.site {
            device.site = v;
        }
        if let Some(v) = patch.labels {
            device.labels = v;
        }
        if let Some(v) = patch.sparkplug_node {
            if v.is_empty() {
                device.sparkplug_node = None;
            } else {
                check_sparkplug(&v)?;
                device.sparkplug_node = Some(v);
            }
        }
        if let Some(v) = patch.disabled {
            device.disabled = v;
            self.verified.lock().remove(id);
        }
        sqlx::query(
            "UPDATE devices SET name = $1, device_type = $2, site = $3, labels = $4, sparkplug_node = $5, disabled = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(&device.name)
        .bind(&device.device_type)
        .bind(&device.site)
        .bind(serde_json::to_string(&device.labels).unwrap_or_else(|_| "{}".into()))
        .bind(&device.sparkplug_node)
        .bind(i64::from(device.disabled))
        .bind(now_ns())
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.changed();
        // Its type names the reference values its attestation is held to.
        self.attestation_changed.notify_one();
        self.event(id, "updated", "").await?;
        Ok(device)
    }

    /// Removes a device and its history. Its stored data stays (it is history).
    pub async fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let done = sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        self.changed();
        sqlx::query("DELETE FROM device_events WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.verified.lock().remove(id);
        self.activity.lock().remove(id);
        self.forget_attestation(id).await
    }

    /// Issues a new token (the old one stops working at once); returns it, shown only once.
    pub async fn rotate_token(&self, id: &str) -> Result<String, RegistryError> {
        let token = tokens::generate()?;
        let hash = tokens::hash(&token)?;
        let done = sqlx::query("UPDATE devices SET token_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now_ns())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        self.verified.lock().remove(id);
        self.event(id, "token_rotated", "").await?;
        Ok(token)
    }

    /// Checks a device's token; returns the device if it matches and the device is enabled.
    /// Unknown devices and wrong tokens give the same error, so ids cannot be probed.
    pub async fn authenticate(&self, id: &str, token: &str) -> Result<Device, RegistryError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_columns!(),
            ", token_hash FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Spend the time a hash check would, so a miss looks like a wrong token.
            let token = token.to_owned();
            let _ =
                tokio::task::spawn_blocking(move || tokens::verify(&token, tokens::dummy_hash()))
                    .await;
            return Err(RegistryError::BadCredentials);
        };
        let device = device_from_row(&row)?;
        if device.disabled {
            return Err(RegistryError::BadCredentials);
        }
        let digest = tokens::digest(token);
        let cached = {
            let verified = self.verified.lock();
            verified
                .get(id)
                .is_some_and(|(d, at)| *d == digest && at.elapsed() < VERIFIED_TTL)
        };
        if !cached {
            let hash: String = row.try_get("token_hash")?;
            let token = token.to_owned();
            let ok = tokio::task::spawn_blocking(move || tokens::verify(&token, &hash))
                .await
                .unwrap_or(false);
            if !ok {
                return Err(RegistryError::BadCredentials);
            }
            self.verified
                .lock()
                .insert(id.to_owned(), (digest, Instant::now()));
        }
        Ok(device)
    }

    /// Records a connection change as the device's state and as an event.
    pub async fn set_connected(
        &self,
        id: &str,
        connected: bool,
        detail: &str,
    ) -> Result<(), RegistryError> {
        let now = now_ns();
        sqlx::query("UPDATE devices SET state = $1, last_seen = $2 WHERE id = $3")
            .bind(if connected { "online" } else { "offline" })
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.event(
            id,
            if connected {
                "connected"
            } else {
                "disconnected"
            },
            detail,
        )
        .await
    }

    /// Counts a message (and whether it failed) for a device; written by
    /// [`Registry::flush_activity`].
    pub fn count_message(&self, id: &str, failed: bool) {
        let mut activity = self.activity.lock();
        let a = activity.entry(id.to_owned()).or_default();
        a.messages += 1;
        if failed {
            a.errors += 1;
        }
        a.last_seen = now_ns();
    }

    /// Writes the counted activity to the database.
    pub async fn flush_activity(&self) -> Result<usize, RegistryError> {
        let pending: Vec<(String, Activity)> = self.activity.lock().drain().collect();
        let mut tx = self.pool.begin().await?;
        for (id, a) in &pending {
            sqlx::query(
                "UPDATE devices SET messages = messages + $1, errors = errors + $2, last_seen = CASE WHEN COALESCE(last_seen, 0) > $3 THEN last_seen ELSE $3 END WHERE id = $4",
            )
            .bind(a.messages)
            .bind(a.errors)
            .bind(a.last_seen)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(pending.len())
    }

    /// Appends an event to a device's history.
    pub async fn event(&self, id: &str, kind: &str, detail: &str) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO device_events (device_id, time, kind, detail) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(now_ns())
        .bind(kind)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` events of a device, newest first.
    pub async fn events(&self, id: &str, limit: u32) -> Result<Vec<DeviceEvent>, RegistryError> {
        let rows = sqlx::query(
            "SELECT time, kind, detail FROM device_events WHERE device_id = $1 ORDER BY time DESC, id DESC LIMIT $2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceEvent {
                    time: r.try_get("time")?,
                    kind: r.try_get("kind")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Closes the pool (after a final activity flush).
    pub async fn close(&self) {
        self.flush_audit_refusals(true).await;
        if let Err(e) = self.flush_activity().await {
            tracing::warn!(error = %e, "Could not write device activity at shutdown.");
        }
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests;
