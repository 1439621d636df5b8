//! The native layout's key record: an [`ApiKey`] as the fields of one Redis hash.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{ApiKey, DbRole, Grants, KeyId, KeyKind, Secret, UserName};

/// The fields of a key record, in storage order.
pub(crate) fn encode(key: &ApiKey) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", key.id.as_str().to_owned()),
        ("user", key.user.as_str().to_owned()),
        ("kind", key.kind.as_str().to_owned()),
        ("name", key.name.clone()),
        ("apis", key.grants.apis_field()),
        ("tables", key.grants.tables_field()),
        ("db_role", key.db_role.name().to_owned()),
        ("db_password", key.db_role.password().expose().to_owned()),
        ("created", millis(key.created).to_string()),
        (
            "metadata",
            serde_json::Value::Object(key.metadata.clone()).to_string(),
        ),
    ];
    if let Some(expires) = key.expires {
        fields.push(("expires", millis(expires).to_string()));
    }
    if let Some(last_used) = key.last_used {
        fields.push(("last_used", millis(last_used).to_string()));
    }
    fields
}

/// Reads a record back; the error says which field is wrong (never its value).
pub(crate) fn decode(fields: &HashMap<String, String>) -> Result<ApiKey, String> {
    let get = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| format!("missing field {name}"))
    };
    let time = |name: &str| -> Result<Option<SystemTime>, String> {
        fields
            .get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map(from_millis)
                    .map_err(|_| format!("field {name} is not a time"))
            })
            .transpose()
    };
    let metadata = match serde_json::from_str(get("metadata")?) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err("field metadata is not a JSON object".into()),
    };
    Ok(ApiKey {
        id: get("id")?.parse().map_err(|_| "field id is invalid")?,
        user: UserName::new(get("user")?.as_str()).map_err(|_| "field user is invalid")?,
        kind: KeyKind::parse(get("kind")?).ok_or("field kind is unknown")?,
        name: get("name")?.clone(),
        grants: Grants::from_fields(get("apis")?, get("tables")?)?,
        db_role: DbRole::new(
            get("db_role")?.as_str(),
            Secret::new(get("db_password")?.as_str()),
        ),
        created: time("created")?.ok_or("missing field created")?,
        expires: time("expires")?,
        last_used: time("last_used")?,
        metadata,
        database: None,
        database_host: None,
    })
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A key with an id of its own: used for keys read from stores without ids.
pub(crate) fn external_id(id: &str) -> KeyId {
    KeyId::external(id)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::{Api, Privilege};

    /// A complete key for unit tests.
    pub(crate) fn sample_key() -> ApiKey {
        let mut metadata = serde_json::Map::new();
        metadata.insert("team".into(), "maps".into());
        ApiKey {
            id: "key_abc".parse().unwrap(),
            user: UserName::new("alice").unwrap(),
            kind: KeyKind::Regular,
            name: "dashboard".into(),
            grants: Grants::new()
                .api(Api::Sql)
                .table("public.t".parse().unwrap(), [Privilege::Select]),
            db_role: DbRole::new("alice_dashboard", Secret::new("pw")),
            created: from_millis(1_700_000_000_000),
            expires: Some(from_millis(1_800_000_000_000)),
            last_used: None,
            metadata,
            database: None,
            database_host: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample_key as sample;
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let key = sample();
        let fields: HashMap<String, String> = encode(&key)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(fields["expires"], "1800000000000");
        assert!(!fields.contains_key("last_used"));
        assert_eq!(decode(&fields).unwrap(), key);
    }

    #[test]
    fn a_damaged_record_names_the_field_not_the_value() {
        let mut fields: HashMap<String, String> = encode(&sample())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        fields.insert("created".into(), "yesterday".into());
        assert_eq!(decode(&fields).unwrap_err(), "field created is not a time");
        fields.remove("db_role");
        assert_eq!(decode(&fields).unwrap_err(), "missing field db_role");
    }
}
