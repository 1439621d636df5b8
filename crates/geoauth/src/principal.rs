//! Who is calling, once verified.

use std::sync::Arc;

use crate::{
    Api, ApiKey, DbRole, Error, Grants, KeyId, KeyKind, Privilege, Result, TableName, UserName,
};

/// A verified caller: the key that authenticated the request. Cheap to clone.
///
/// ```
/// # fn demo(principal: geoauth::Principal) -> geoauth::Result<()> {
/// use geoauth::{Api, Privilege};
///
/// principal.authorize(Api::Sql)?;
/// principal.authorize_table(&"public.places".parse()?, Privilege::Select)?;
/// let role = principal.db_role(); // hand to sqlpass: its SQL runs as this login role
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Principal {
    key: Arc<ApiKey>,
    anonymous: bool,
}

impl Principal {
    pub(crate) fn new(key: Arc<ApiKey>, anonymous: bool) -> Self {
        Self { key, anonymous }
    }

    /// The user whose data the request reaches.
    pub fn user(&self) -> &UserName {
        &self.key.user
    }

    /// The key's id (safe to log).
    pub fn key_id(&self) -> &KeyId {
        &self.key.id
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.key.kind
    }

    /// What the key grants.
    pub fn grants(&self) -> &Grants {
        &self.key.grants
    }

    /// The whole key record.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// Whether the request carried no credentials (and so uses the `default_public` key).
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// The PostgreSQL login role the caller's SQL must run as, with its password.
    pub fn db_role(&self) -> &DbRole {
        &self.key.db_role
    }

    /// Whether the key may write: a master key, a key granted insert, update or delete on some
    /// table, or a non-public key whose tables are left to its database role (CARTO's regular
    /// keys). Such callers' SQL may run outside a read-only transaction; the role's own grants
    /// still bound it.
    pub fn may_write(&self) -> bool {
        match self.key.kind {
            KeyKind::Master => true,
            _ => match self.key.grants.tables() {
                crate::TableGrants::Listed(tables) => tables
                    .values()
                    .any(|ps| ps.iter().any(|p| *p != Privilege::Select)),
                crate::TableGrants::ByDatabaseRole => self.key.kind != KeyKind::DefaultPublic,
            },
        }
    }

    /// Allows the request through to `api`, or says why not.
    ///
    /// # Errors
    ///
    /// [`Error::ApiNotGranted`] (403) when the key does not grant it.
    pub fn authorize(&self, api: Api) -> Result<()> {
        if self.key.kind == KeyKind::Master || self.key.grants.allows_api(api) {
            Ok(())
        } else {
            Err(Error::ApiNotGranted { api })
        }
    }

    /// Allows `privilege` on `table`, or says why not. Master keys and keys whose tables are
    /// left to the database role pass here; PostgreSQL has the last word.
    ///
    /// # Errors
    ///
    /// [`Error::TableNotGranted`] (403) when the key does not grant it.
    pub fn authorize_table(&self, table: &TableName, privilege: Privilege) -> Result<()> {
        if self.key.kind == KeyKind::Master || self.key.grants.allows_table(table, privilege) {
            Ok(())
        } else {
            Err(Error::TableNotGranted {
                table: table.to_string(),
                privilege,
            })
        }
    }
}
