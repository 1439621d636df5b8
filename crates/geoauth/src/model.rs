//! What a key is and what it grants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::{Error, Result, Secret, UserName};

/// The kind of an API key, as in CARTO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyKind {
    /// The owner's key: every API, every table, the owner's database role.
    Master,
    /// The key used when a request carries none: what the public may do.
    DefaultPublic,
    /// A key with explicit grants and a database role of its own.
    Regular,
}

impl KeyKind {
    /// `master`, `default_public` or `regular`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::DefaultPublic => "default_public",
            Self::Regular => "regular",
        }
    }

    /// Parses this crate's names and CARTO's (`default` for the public key).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "master" => Some(Self::Master),
            "default_public" | "default" => Some(Self::DefaultPublic),
            "regular" => Some(Self::Regular),
            _ => None,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API a key may be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Api {
    /// The SQL API.
    Sql,
    /// The Maps API (tiles).
    Maps,
}

impl Api {
    /// `sql` or `maps`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sql => "sql",
            Self::Maps => "maps",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Api {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sql" => Ok(Self::Sql),
            "maps" => Ok(Self::Maps),
            _ => Err(Error::invalid("api", "expected sql or maps")),
        }
    }
}

/// A privilege on a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Privilege {
    /// Read rows.
    Select,
    /// Add rows.
    Insert,
    /// Change rows.
    Update,
    /// Remove rows.
    Delete,
}

impl Privilege {
    /// Every privilege.
    pub const ALL: [Privilege; 4] = [Self::Select, Self::Insert, Self::Update, Self::Delete];

    /// `select`, `insert`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Privilege {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Error::invalid("privilege", "expected select, insert, update or delete"))
    }
}

/// A table, `schema.table`; a bare name means schema `public`. Both parts are plain
/// identifiers (letters, digits, `_`, `$`, not starting with a digit, at most 63 bytes) and are
/// compared exactly.
///
/// ```
/// use geoauth::TableName;
///
/// let t: TableName = "places".parse().unwrap();
/// assert_eq!(t.to_string(), "public.places");
/// assert!("a.b.c".parse::<TableName>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    schema: String,
    table: String,
}

impl TableName {
    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl FromStr for TableName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (schema, table) = match s.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", s),
        };
        if is_identifier(schema) && is_identifier(table) {
            Ok(Self {
                schema: schema.to_owned(),
                table: table.to_owned(),
            })
        } else {
            Err(Error::invalid(
                "table name",
                "expected schema.table of plain identifiers",
            ))
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// What a key grants: APIs and table privileges.
///
/// ```
/// use geoauth::{Api, Grants, Privilege};
///
/// let grants = Grants::new()
///     .api(Api::Sql)
///     .table("public.places".parse().unwrap(), [Privilege::Select]);
/// assert!(grants.allows_api(Api::Sql));
/// assert!(!grants.allows_api(Api::Maps));
/// assert!(grants.allows_table(&"places".parse().unwrap(), Privilege::Select));
/// assert!(!grants.allows_table(&"places".parse().unwrap(), Privilege::Delete));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    apis: BTreeSet<Api>,
    tables: TableGrants,
}

/// Table privileges: listed per table, or left to the database role (CARTO's keys, whose
/// table privileges live only in PostgreSQL grants).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableGrants {
    /// Exactly these privileges on exactly these tables.
    Listed(BTreeMap<TableName, BTreeSet<Privilege>>),
    /// Not tracked here: the key's database role's own grants decide, in PostgreSQL.
    ByDatabaseRole,
}

impl Default for TableGrants {
    fn default() -> Self {
        Self::Listed(BTreeMap::new())
    }
}

impl Grants {
    /// No API and no table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants an API.
    pub fn api(mut self, api: Api) -> Self {
        self.apis.insert(api);
        self
    }

    /// Grants privileges on a table (added to those it has).
    pub fn table(
        mut self,
        table: TableName,
        privileges: impl IntoIterator<Item = Privilege>,
    ) -> Self {
        if let TableGrants::Listed(tables) = &mut self.tables {
            tables.entry(table).or_default().extend(privileges);
        }
        self
    }

    /// Leaves table privileges to the database role.
    pub fn tables_by_database_role(mut self) -> Self {
        self.tables = TableGrants::ByDatabaseRole;
        self
    }

    /// The granted APIs.
    pub fn apis(&self) -> impl Iterator<Item = Api> + '_ {
        self.apis.iter().copied()
    }

    /// The table privileges.
    pub fn tables(&self) -> &TableGrants {
        &self.tables
    }

    /// Whether `api` is granted.
    pub fn allows_api(&self, api: Api) -> bool {
        self.apis.contains(&api)
    }

    /// Whether `privilege` on `table` is granted; with [`TableGrants::ByDatabaseRole`], true:
    /// the database enforces it.
    pub fn allows_table(&self, table: &TableName, privilege: Privilege) -> bool {
        match &self.tables {
            TableGrants::Listed(tables) => {
                tables.get(table).is_some_and(|p| p.contains(&privilege))
            }
            TableGrants::ByDatabaseRole => true,
        }
    }

    /// `sql,maps` (sorted), for storage.
    pub(crate) fn apis_field(&self) -> String {
        self.apis
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// JSON `{"schema.table": ["select", …]}` or `"database_role"`, for storage.
    pub(crate) fn tables_field(&self) -> String {
        let value = match &self.tables {
            TableGrants::Listed(tables) => serde_json::Value::Object(
                tables
                    .iter()
                    .map(|(t, ps)| {
                        let ps = ps.iter().map(|p| p.as_str().into()).collect();
                        (t.to_string(), serde_json::Value::Array(ps))
                    })
                    .collect(),
            ),
            TableGrants::ByDatabaseRole => "database_role".into(),
        };
        value.to_string()
    }

    pub(crate) fn from_fields(apis: &str, tables: &str) -> Result<Self, String> {
        let mut grants = Self::new();
        for api in apis.split(',').filter(|a| !a.is_empty()) {
            grants = grants.api(api.parse().map_err(|_| format!("unknown api {api:?}"))?);
        }
        let value: serde_json::Value =
            serde_json::from_str(tables).map_err(|e| format!("tables: {e}"))?;
        match value {
            serde_json::Value::String(s) if s == "database_role" => {
                Ok(grants.tables_by_database_role())
            }
            serde_json::Value::Object(map) => {
                for (table, privileges) in map {
                    let table: TableName = table.parse().map_err(|_| format!("table {table:?}"))?;
                    let privileges = privileges
                        .as_array()
                        .ok_or("privileges are not a list")?
                        .iter()
                        .map(|p| p.as_str().and_then(|p| p.parse().ok()))
                        .collect::<Option<Vec<Privilege>>>()
                        .ok_or("unknown privilege")?;
                    grants = grants.table(table, privileges);
                }
                Ok(grants)
            }
            _ => Err("tables is neither an object nor \"database_role\"".into()),
        }
    }
}

/// The PostgreSQL login role a key's SQL runs as, with its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbRole {
    name: String,
    password: Secret,
}

impl DbRole {
    /// A login role and its password.
    pub fn new(name: impl Into<String>, password: Secret) -> Self {
        Self {
            name: name.into(),
            password,
        }
    }

    /// The role name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role's password (redacted when printed).
    pub fn password(&self) -> &Secret {
        &self.password
    }
}

/// A key's public identifier (`key_` and 16 base62 characters): safe to show and log, it names
/// a key in management calls but does not authenticate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub(crate) fn generate() -> Result<Self> {
        Ok(Self(format!("key_{}", crate::token::random_base62(16)?)))
    }

    /// The id of a key read from a store that has no ids of its own (CARTO's).
    pub(crate) fn external(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let ok = s.len() <= 64
            && !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::invalid(
                "key id",
                "expected key_ and base62 characters",
            ))
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An API key as stored: everything but its token, which only its owner holds.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ApiKey {
    /// Its public id.
    pub id: KeyId,
    /// The owner.
    pub user: UserName,
    /// The kind.
    pub kind: KeyKind,
    /// A name for people.
    pub name: String,
    /// What it grants.
    pub grants: Grants,
    /// The database role its SQL runs as.
    pub db_role: DbRole,
    /// When it was made.
    pub created: SystemTime,
    /// When it stops working, if ever.
    pub expires: Option<SystemTime>,
    /// When it was last used (written at most once per throttle interval).
    pub last_used: Option<SystemTime>,
    /// Free-form metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The database the key's SQL runs in, where the store knows it (CARTO's user record);
    /// `None` leaves it to the service.
    pub database: Option<String>,
    /// The host of that database, where the store knows it.
    pub database_host: Option<String>,
}

impl ApiKey {
    /// Whether it has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_round_trip_through_their_stored_fields() {
        let grants = Grants::new()
            .api(Api::Maps)
            .api(Api::Sql)
            .table(
                "s.t".parse().unwrap(),
                [Privilege::Select, Privilege::Insert],
            )
            .table("u".parse().unwrap(), [Privilege::Delete]);
        assert_eq!(grants.apis_field(), "sql,maps");
        assert_eq!(
            grants.tables_field(),
            r#"{"public.u":["delete"],"s.t":["select","insert"]}"#
        );
        let back = Grants::from_fields(&grants.apis_field(), &grants.tables_field()).unwrap();
        assert_eq!(back, grants);

        let by_role = Grants::new().api(Api::Sql).tables_by_database_role();
        let back = Grants::from_fields(&by_role.apis_field(), &by_role.tables_field()).unwrap();
        assert_eq!(back, by_role);
        assert!(back.allows_table(&"any.table".parse().unwrap(), Privilege::Delete));
    }

    #[test]
    fn damaged_grant_fields_are_reported() {
        assert!(Grants::from_fields("sql,teleport", "{}").is_err());
        assert!(Grants::from_fields("sql", "{\"t\":[\"drop\"]}").is_err());
        assert!(Grants::from_fields("sql", "[1]").is_err());
        assert!(Grants::from_fields("sql", "not json").is_err());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!("a.b".parse::<TableName>().unwrap().schema(), "a");
        for bad in ["", ".", "a.", "1a", "a-b", "a.b.c", "\"x\"", "a;drop"] {
            assert!(bad.parse::<TableName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_read_carto_names() {
        assert_eq!(KeyKind::parse("default"), Some(KeyKind::DefaultPublic));
        assert_eq!(
            KeyKind::parse("default_public"),
            Some(KeyKind::DefaultPublic)
        );
        assert_eq!(KeyKind::parse("master"), Some(KeyKind::Master));
        assert_eq!(KeyKind::parse("admin"), None);
    }
}
