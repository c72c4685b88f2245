//! People who sign in to the dashboard and API: a name, a role (admin, operator, viewer) and an
//! argon2id password hash. Failed sign-ins are counted per name and lock it for a while after
//! too many (IEC 62443-3-3 SR 1.11), and an unknown name costs as much time as a known one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::{Registry, RegistryError, now_ns, tokens};

/// Failed sign-ins in a row that lock a name.
pub const MAX_FAILED_SIGN_INS: u32 = 5;
/// How long a name stays locked.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Names whose failed sign-ins are tracked at most (see [`Registry::verify_user`]).
const MAX_TRACKED_NAMES: usize = 10_000;
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read data, devices, pipelines and alerts.
    Viewer,
    /// A viewer who also acknowledges and silences alerts.
    Operator,
    /// Everything: devices and their credentials, users, writes, administration.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(RegistryError::Invalid(format!(
                "role `{other}`: expected admin, operator or viewer"
            ))),
        }
    }
}

/// A user as listed (never with the hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Sign-in name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// When it was created, ns since the epoch.
    pub created_at: i64,
    /// Last successful sign-in, ns since the epoch.
    pub last_sign_in: Option<i64>,
}

/// Failed attempts per name, kept in memory: a restart forgives, as a lockout should not
/// outlive an operator's patience more than the attacker's.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    by_name: HashMap<String, (u32, Option<Instant>)>,
}

/// Names that stand for something else in the records: the admin token's, the name refused
/// sign-ins are recorded under, and a placeholder clients use.
const RESERVED_NAMES: [&str; 3] = ["admin-token", "anonymous", "unknown"];

fn check_name(name: &str) -> Result<(), RegistryError> {
    if RESERVED_NAMES.contains(&name) {
        return Err(RegistryError::Invalid(format!(
            "user name `{name}` is reserved: it stands for something else in the records"
        )));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "user name `{name}`: 1 to 64 of a-z, 0-9, `.`, `_` and `-`"
        )))
    }
}

fn check_password(name: &str, password: &str) -> Result<(), RegistryError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_LEN {
        return Err(RegistryError::Invalid(format!(
            "the password has {length} characters; use at least {MIN_PASSWORD_LEN}"
        )));
    }
    if password.len() > 1024 {
        return Err(RegistryError::Invalid(
            "the password is longer than 1024 bytes".into(),
        ));
    }
    if password.eq_ignore_ascii_case(name) {
        return Err(RegistryError::Invalid(
            "the password must not be the user name".into(),
        ));
    }
    Ok(())
}

/// A random password of four groups of five characters from an alphabet without look-alikes
/// (about 99 bits).
fn generate_password() -> Result<String, RegistryError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| RegistryError::Token(e.to_string()))?;
    let mut out = String::with_capacity(23);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    Ok(out)
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User, RegistryError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        name: row.try_get("name")?,
        role: role.parse()?,
        created_at: row.try_get("created_at")?,
        last_sign_in: row.try_get("last_sign_in")?,
    })
}

async fn hash_blocking(password: String) -> Result<String, RegistryError> {
    tokio::task::spawn_blocking(move || tokens::hash(&password))
        .await
        .map_err(|e| RegistryError::Token(e.to_string()))?
}

impl Registry {
    /// Adds a user; without a password one is generated and returned (shown once).
    pub async fn add_user(
        &self,
        name: &str,
        role: Role,
        password: Option<String>,
    ) -> Result<(User, Option<String>), RegistryError> {
        check_name(name)?;
        let (password, generated) = match password {
            Some(p) => {
                check_password(name, &p)?;
                (p, false)
            }
            None => (generate_password()?, true),
        };
        let hash = hash_blocking(password.clone()).await?;
        let now = now_ns();
        let inserted = sqlx::query(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(RegistryError::UserExists(name.to_owned()));
        }
        tracing::info!(user = name, role = role.as_str(), "User added.");
        let user = User {
            name: name.to_owned(),
            role,
            created_at: now,
            last_sign_in: None,
        };
        Ok((user, generated.then_some(password)))
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>, RegistryError> {
        sqlx::query("SELECT name, role, created_at, last_sign_in FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    /// Whether a user of this name exists.
    pub async fn has_user(&self, name: &str) -> Result<bool, RegistryError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Removes a user.
    pub async fn remove_user(&self, name: &str) -> Result<(), RegistryError> {
        let gone = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if gone.rows_affected() == 0 {
            return Err(RegistryError::UserNotFound(name.to_owned()));
        }
        tracing::info!(user = name, "User removed.");
        Ok(())
    }

    /// Sets a user's password (and lifts a lockout).
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), RegistryError> {
        check_password(name, password)?;
        let hash = hash_blocking(password.to_owned()).await?;
        let changed = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(hash)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if changed.rows_affected() == 0 {
            return Err(RegistryError::UserNotFound(name.to_owned()));
        }
        self.attempts.lock().by_name.remove(name);
        tracing::info!(user = name, "Password changed.");
        Ok(())
    }

    /// Checks a sign-in. Unknown names and wrong passwords are not told apart; a name with
    /// [`MAX_FAILED_SIGN_INS`] failures in a row is refused for [`LOCKOUT`] whatever the
    /// password.
    pub async fn verify_user(&self, name: &str, password: &str) -> Result<User, RegistryError> {
        if let Some((_, Some(until))) = self.attempts.lock().by_name.get(name).copied() {
            let now = Instant::now();
            if now < until {
                return Err(RegistryError::Locked {
                    retry_after: until - now,
                });
            }
        }
        let row = sqlx::query(
            "SELECT name, role, created_at, last_sign_in, password_hash FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let hash = match &row {
            Some(r) => r.try_get::<String, _>("password_hash")?,
            None => tokens::dummy_hash().to_owned(),
        };
        let candidate = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || tokens::verify(&candidate, &hash))
            .await
            .unwrap_or(false);
        let Some(row) = row.filter(|_| matches) else {
            let mut attempts = self.attempts.lock();
            // Names sprayed by a guesser must not grow this without bound: past a limit, forget
            // every name that is not locked right now.
            if attempts.by_name.len() >= MAX_TRACKED_NAMES {
                let now = Instant::now();
                attempts
                    .by_name
                    .retain(|_, (_, until)| until.is_some_and(|u| u > now));
            }
            let entry = attempts.by_name.entry(name.to_owned()).or_default();
            entry.0 += 1;
            if entry.0 >= MAX_FAILED_SIGN_INS {
                entry.0 = 0;
                entry.1 = Some(Instant::now() + LOCKOUT);
                tracing::warn!(
                    user = name,
                    "Too many failed sign-ins; the name is locked for {} s.",
                    LOCKOUT.as_secs()
                );
            }
            return Err(RegistryError::BadCredentials);
        };
        self.attempts.lock().by_name.remove(name);
        let mut user = user_from_row(&row)?;
        let now = now_ns();
        sqlx::query("UPDATE users SET last_sign_in = $1 WHERE name = $2")
            .bind(now)
            .bind(name)
            .execute(&self.pool)
            .await?;
        user.last_sign_in = Some(now);
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_sign_in_by_password_and_are_locked_after_repeated_failures() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        let (ana, generated) = registry
            .add_user("ana", Role::Operator, None)
            .await
            .unwrap();
        let password = generated.unwrap();
        assert_eq!(password.len(), 23);
        assert_eq!(ana.role, Role::Operator);
        assert!(matches!(
            registry.add_user("ana", Role::Admin, None).await,
            Err(RegistryError::UserExists(_))
        ));
        assert!(matches!(
            registry.add_user("Bad Name", Role::Viewer, None).await,
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            registry
                .add_user("bo", Role::Viewer, Some("short".into()))
                .await,
            Err(RegistryError::Invalid(_))
        ));

        let signed_in = registry.verify_user("ana", &password).await.unwrap();
        assert!(signed_in.last_sign_in.is_some());
        assert!(matches!(
            registry.verify_user("nobody", &password).await,
            Err(RegistryError::BadCredentials)
        ));
        for _ in 0..MAX_FAILED_SIGN_INS {
            assert!(matches!(
                registry.verify_user("ana", "wrong password!").await,
                Err(RegistryError::BadCredentials)
            ));
        }
        // Locked: even the right password is refused, without checking it.
        assert!(matches!(
            registry.verify_user("ana", &password).await,
            Err(RegistryError::Locked { .. })
        ));
        // An administrator's reset lifts the lock.
        registry
            .set_password("ana", "a new long password")
            .await
            .unwrap();
        registry
            .verify_user("ana", "a new long password")
            .await
            .unwrap();
        assert_eq!(registry.users().await.unwrap().len(), 1);
        registry.remove_user("ana").await.unwrap();
        assert!(matches!(
            registry.remove_user("ana").await,
            Err(RegistryError::UserNotFound(_))
        ));
    }
}
