//! Grants in the JSON shape of CARTO's Auth API.

use serde_json::{Value, json};

use crate::{Api, Error, Grants, Privilege, Result, TableGrants, TableName};

impl Grants {
    /// Grants from CARTO's Auth API JSON: an array of `{"type": "apis", "apis": [...]}` and
    /// `{"type": "database", "tables": [{"schema", "name", "permissions"}]}` items. A table
    /// without `schema` is in `public`. What CARTO's clients send empty by default is accepted
    /// when empty (`dataservices` services, `database` schemas, `table_metadata`); asked for,
    /// it is refused, since no key here grants it.
    ///
    /// ```
    /// use geoauth::{Api, Grants, Privilege};
    ///
    /// let grants = Grants::from_carto_json(&serde_json::json!([
    ///     {"type": "apis", "apis": ["sql"]},
    ///     {"type": "database", "tables": [
    ///         {"schema": "public", "name": "places", "permissions": ["select", "insert"]}
    ///     ]},
    ///     {"type": "dataservices", "services": []}
    /// ]))
    /// .unwrap();
    /// assert!(grants.allows_api(Api::Sql) && !grants.allows_api(Api::Maps));
    /// assert!(grants.allows_table(&"places".parse().unwrap(), Privilege::Insert));
    /// assert_eq!(Grants::from_carto_json(&grants.to_carto_json()).unwrap(), grants);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming what is wrong: not an array, an unknown grant type, API or
    /// permission, a table without a name, a grant that cannot be given.
    pub fn from_carto_json(value: &Value) -> Result<Self> {
        let invalid = |reason: String| Error::invalid("grants", reason);
        let items = value
            .as_array()
            .ok_or_else(|| invalid("expected an array of grants".into()))?;
        let mut grants = Grants::new();
        for item in items {
            let kind = item.get("type").and_then(Value::as_str);
            match kind {
                Some("apis") => {
                    for api in strings(item, "apis")? {
                        grants = grants.api(api.parse::<Api>().map_err(|_| {
                            invalid(format!("unknown api {api:?}: expected sql or maps"))
                        })?);
                    }
                }
                Some("database") => {
                    for table in list(item, "tables")? {
                        let name = table
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("a table grant has no \"name\"".into()))?;
                        let schema = match table.get("schema") {
                            None | Some(Value::Null) => "public",
                            Some(s) => s.as_str().ok_or_else(|| {
                                invalid(format!("table {name}: \"schema\" is not a string"))
                            })?,
                        };
                        let table_name: TableName =
                            format!("{schema}.{name}").parse().map_err(|_| {
                                invalid(format!(
                                    "table {schema}.{name}: expected plain identifiers"
                                ))
                            })?;
                        let privileges = strings(table, "permissions")?
                            .into_iter()
                            .map(|p| {
                                p.parse::<Privilege>().map_err(|_| {
                                    invalid(format!(
                                        "table {table_name}: unknown permission {p:?}: expected \
                                         select, insert, update or delete"
                                    ))
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        if privileges.is_empty() {
                            return Err(invalid(format!("table {table_name}: no permissions")));
                        }
                        grants = grants.table(table_name, privileges);
                    }
                    for field in ["schemas", "table_metadata"] {
                        if !list(item, field)?.is_empty() {
                            return Err(invalid(format!(
                                "\"{field}\" grants are not offered: list tables instead"
                            )));
                        }
                    }
                }
                Some("dataservices") => {
                    if !list(item, "services")?.is_empty() {
                        return Err(invalid("data services are not offered".into()));
                    }
                }
                Some(other) => return Err(invalid(format!("unknown grant type {other:?}"))),
                None => return Err(invalid("a grant has no \"type\"".into())),
            }
        }
        Ok(grants)
    }

    /// The grants in CARTO's Auth API JSON: the APIs, then the tables (none listed when they
    /// are left to the database role).
    pub fn to_carto_json(&self) -> Value {
        let tables: Vec<Value> = match self.tables() {
            TableGrants::Listed(tables) => tables
                .iter()
                .map(|(t, ps)| {
                    json!({
                        "schema": t.schema(),
                        "name": t.table(),
                        "permissions": ps.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    })
                })
                .collect(),
            TableGrants::ByDatabaseRole => Vec::new(),
        };
        json!([
            {"type": "apis", "apis": self.apis().map(Api::as_str).collect::<Vec<_>>()},
            {"type": "database", "tables": tables, "schemas": []},
        ])
    }
}

/// `item[field]` as an array; absent or null is empty.
fn list<'a>(item: &'a Value, field: &str) -> Result<&'a [Value]> {
    match item.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(values)) => Ok(values),
        Some(_) => Err(Error::invalid(
            "grants",
            format!("\"{field}\" is not an array"),
        )),
    }
}

/// `item[field]` as an array of strings.
fn strings<'a>(item: &'a Value, field: &str) -> Result<Vec<&'a str>> {
    list(item, field)?
        .iter()
        .map(|v| {
            v.as_str().ok_or_else(|| {
                Error::invalid(
                    "grants",
                    format!("\"{field}\" holds a value that is not a string"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_carto_python_sends_is_read() {
        // carto-python's APIKeyManager.create with tables as dicts.
        let grants = Grants::from_carto_json(&json!([
            {"type": "apis", "apis": ["sql", "maps"]},
            {"type": "database", "tables": [{"schema": "public", "name": "t", "permissions": ["select"]}]},
        ]))
        .unwrap();
        assert!(grants.allows_api(Api::Maps));
        assert!(grants.allows_table(&"public.t".parse().unwrap(), Privilege::Select));
        assert!(!grants.allows_table(&"public.t".parse().unwrap(), Privilege::Delete));
        // Its Grants resource sends every section, empty ones included.
        let empty = Grants::from_carto_json(&json!([
            {"type": "apis", "apis": []},
            {"type": "database", "tables": []},
            {"type": "dataservices", "services": []},
        ]))
        .unwrap();
        assert_eq!(empty, Grants::new());
    }

    #[test]
    fn what_cannot_be_granted_is_named() {
        for (value, needle) in [
            (json!({"type": "apis"}), "array"),
            (json!([{"apis": ["sql"]}]), "no \"type\""),
            (
                json!([{"type": "apis", "apis": ["import"]}]),
                "unknown api \"import\"",
            ),
            (
                json!([{"type": "database", "tables": [{"permissions": ["select"]}]}]),
                "no \"name\"",
            ),
            (
                json!([{"type": "database", "tables": [{"name": "t", "permissions": ["drop"]}]}]),
                "unknown permission \"drop\"",
            ),
            (
                json!([{"type": "database", "tables": [{"name": "t"}]}]),
                "no permissions",
            ),
            (
                json!([{"type": "database", "tables": [{"name": "t; drop", "permissions": ["select"]}]}]),
                "plain identifiers",
            ),
            (
                json!([{"type": "database", "schemas": [{"name": "public", "permissions": ["create"]}]}]),
                "\"schemas\" grants are not offered",
            ),
            (
                json!([{"type": "dataservices", "services": ["geocoding"]}]),
                "data services",
            ),
            (json!([{"type": "user"}]), "unknown grant type \"user\""),
        ] {
            let e = Grants::from_carto_json(&value).unwrap_err().to_string();
            assert!(e.contains(needle), "{value}: {e}");
        }
    }
}
