//! Keys with a login role each: creating a key provisions its role with exactly the key's table
//! grants, revoking it drops the role, as CARTO does for every API key.

use std::sync::Arc;

use geoauth::KeySource as _;
use geoauth::{
    ApiKey, DbRole, Grants, KeyId, KeyStore, NewKey, Privilege, Secret, TableGrants, Token,
    UserName,
};
use sqlpass::CallerRole;

use super::gate::Gate;
use super::{Error, KeyLayout, RedisConnection, Result, Sandbox, ServerConfig};

/// What kind of key [`AuthApi::create_key`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRequest {
    /// A regular key with this name.
    Regular(String),
    /// The user's `default_public` key (one per user: creating it again replaces it).
    DefaultPublic,
    /// The user's master key: both APIs, and a role holding every table privilege on every
    /// table of schema `public` that exists when it is made (extensions' tables excepted) and
    /// `CREATE` on it: the tables it makes are its own. Its SQL may hold several statements
    /// and DDL, as CARTO's master key's. It may call the Auth API. The grants given are not
    /// used.
    Master,
}

/// Keys and their roles: CARTO's Auth API (`/api/v3/api_keys`: keys listed, made, shown,
/// deleted, given a new token; the master key manages them all; also under `/user/{user}`),
/// and the same operations for a program ([`AuthApi::create_key`], [`AuthApi::revoke_key`],
/// [`AuthApi::key_store`]). Keys live in a native [`KeyStore`]; with CARTO's layout
/// ([`KeyLayout::Carto`]) CARTO manages them and every operation is refused.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, sandbox: geostack::server::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
/// use geoauth::KeyStore;
/// use geostack::server::{AuthApi, ServerConfig};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let auth = AuthApi::new(gate, sandbox, KeyStore::new(conn), &ServerConfig::default());
/// let app = axum::Router::new().merge(auth.router());
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct AuthApi<C = redis::aio::ConnectionManager> {
    pub(super) inner: Arc<Inner<C>>,
}

pub(super) struct Inner<C> {
    pub(super) gate: Gate<C>,
    sandbox: Sandbox,
    keys: KeyStore<C>,
    role_prefix: String,
    layout: KeyLayout,
}

impl<C: RedisConnection> AuthApi<C> {
    /// The keys of `keys`, for callers passing `gate`, their roles made and dropped through
    /// `sandbox`'s administrative pool and named with `config`'s role prefix.
    pub fn new(gate: Gate<C>, sandbox: Sandbox, keys: KeyStore<C>, config: &ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                gate,
                sandbox,
                keys,
                role_prefix: config.role_prefix.clone(),
                layout: config.key_layout,
            }),
        }
    }

    /// Creates a key for `user` granting `grants`, with a login role of its own that holds
    /// exactly the key's table privileges (and nothing else: no table it does not list, no
    /// signalling or activity functions). The role is named from the configured role prefix
    /// and a random suffix; its password is random and kept only in the key.
    ///
    /// ```no_run
    /// # async fn demo(auth: geostack::server::AuthApi) -> geostack::server::Result<()> {
    /// use geostack::auth::{Api, Grants, Privilege, UserName};
    /// use geostack::server::KeyRequest;
    ///
    /// let grants = Grants::new()
    ///     .api(Api::Sql)
    ///     .table("public.counties".parse()?, [Privilege::Select]);
    /// let alice = UserName::new("alice")?;
    /// let (key, token) = auth
    ///     .create_key(&alice, KeyRequest::Regular("dashboard".into()), grants)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when keys are read from CARTO's layout ([`KeyLayout::Carto`]),
    /// [`Error::BadRequest`] when the grants leave tables to the database role (a key made
    /// here has its own role), [`Error::Sql`] when PostgreSQL refuses the role (a missing
    /// table), [`Error::Auth`] when the key cannot be stored (the role is dropped again).
    pub async fn create_key(
        &self,
        user: &UserName,
        request: KeyRequest,
        grants: Grants,
    ) -> Result<(ApiKey, Token)> {
        self.native_keys()?;
        let name = format!("{}{}", self.inner.role_prefix, random_hex(8)?);
        let password = random_hex(16)?;
        let mut role = CallerRole::new(name.clone(), password.clone());
        if request == KeyRequest::Master {
            role = role
                .grant_schema("public", Privilege::ALL.map(Privilege::as_str))
                .create_in("public");
        } else {
            let TableGrants::Listed(tables) = grants.tables() else {
                return Err(Error::BadRequest(
                    "a key made here lists its tables: its role holds exactly those grants".into(),
                ));
            };
            for (table, privileges) in tables {
                role = role.grant(
                    table.schema(),
                    table.table(),
                    privileges.iter().map(|p| p.as_str()),
                );
            }
        }
        // The public key a new one replaces, whose role goes once the new key is stored.
        let replaced = match request {
            KeyRequest::DefaultPublic => {
                self.inner
                    .keys
                    .lookup(user, &Token::default_public())
                    .await?
            }
            _ => None,
        };
        let admin = self.inner.sandbox.admin();
        role.provision(admin, &[]).await?;
        let db_role = DbRole::new(name.clone(), Secret::new(password));
        let new = match request {
            KeyRequest::Regular(key_name) => NewKey::regular(key_name, db_role).grants(grants),
            KeyRequest::DefaultPublic => NewKey::default_public(db_role).grants(grants),
            KeyRequest::Master => NewKey::master(db_role),
        };
        match self.inner.keys.create(user, new).await {
            Ok(made) => {
                self.forget(user);
                if let Some(old) = replaced {
                    self.drop_key_role(old.db_role.name()).await?;
                }
                Ok(made)
            }
            Err(e) => {
                let _ = CallerRole::drop_role(admin, &name).await;
                Err(e.into())
            }
        }
    }

    /// The store of the server's keys (list and show them there; create, regenerate and revoke
    /// them through [`AuthApi::create_key`], [`AuthApi::regenerate_key`] and
    /// [`AuthApi::revoke_key`], which also manage their roles and this process's cache).
    pub fn key_store(&self) -> &KeyStore<C> {
        &self.inner.keys
    }

    /// Revokes key `id` of `user` (refused by every verifier from now on) and drops its role,
    /// ending the role's sessions. Returns whether there was such a key. A role the server did
    /// not make (its name lacks the role prefix) is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] with CARTO's layout, [`Error::Auth`] when Redis cannot be asked,
    /// [`Error::Sql`] when the role cannot be dropped (the key is revoked all the same).
    pub async fn revoke_key(&self, user: &UserName, id: &KeyId) -> Result<bool> {
        self.native_keys()?;
        let Some(key) = self.inner.keys.get(user, id).await? else {
            return Ok(false);
        };
        let revoked = self.inner.keys.revoke(user, id).await?;
        self.forget(user);
        self.drop_key_role(key.db_role.name()).await?;
        Ok(revoked)
    }

    /// Gives key `id` of `user` a new token, the old one refused at once by this process and,
    /// as soon as the change is announced, by every other verifier. Returns `None` when there
    /// is no such key; the key keeps its role.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] with CARTO's layout, [`Error::Auth`] when Redis cannot be asked.
    pub async fn regenerate_key(&self, user: &UserName, id: &KeyId) -> Result<Option<Token>> {
        self.native_keys()?;
        let token = self
            .inner
            .keys
            .regenerate(user, id, std::time::SystemTime::now())
            .await?;
        self.forget(user);
        Ok(token)
    }

    /// Forgets `user`'s cached keys in this process at once: other processes learn of the
    /// change through the store's announcement, which may reach this one after its next
    /// request.
    fn forget(&self, user: &UserName) {
        self.inner.gate.verifier().forget_user(user);
    }

    /// Refuses to manage keys when they are CARTO's ([`KeyLayout::Carto`]).
    pub(crate) fn native_keys(&self) -> Result<()> {
        match self.inner.layout {
            KeyLayout::Native => Ok(()),
            _ => Err(Error::NotFound(
                "keys are read from CARTO's layout here: CARTO manages them".into(),
            )),
        }
    }

    /// Drops `role` and forgets its pool, when the server made it (its name has the role
    /// prefix); a role the server did not make is left alone.
    async fn drop_key_role(&self, role: &str) -> Result<()> {
        if role.starts_with(self.inner.role_prefix.as_str()) {
            self.inner.sandbox.registry().forget(role);
            CallerRole::drop_role(self.inner.sandbox.admin(), role).await?;
        }
        Ok(())
    }
}

/// `bytes` random bytes from the operating system, as hex.
fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|_| Error::Internal("no randomness for a new key's role".into()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
