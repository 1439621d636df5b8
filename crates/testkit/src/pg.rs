//! A PostgreSQL database of the test's own, cloned from the PostGIS template.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::Unavailable;
use crate::names::unique;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_TEMPLATE: &str = "geostack_template";

/// A database cloned from the PostGIS template for one test, dropped (with its connections)
/// when this value is dropped.
///
/// ```no_run
/// # async fn demo() {
/// let db = geostack_testkit::TestDb::new().await;
/// let (name,): (String,) = sqlx::query_as("select current_database()")
///     .fetch_one(db.pool())
///     .await
///     .unwrap();
/// assert_eq!(name, db.name());
/// # }
/// ```
pub struct TestDb {
    name: String,
    admin: PgConnectOptions,
    /// The admin URL this database was made through.
    url: String,
    pool: PgPool,
}

impl TestDb {
    /// Creates the database from `DATABASE_URL` and `GEOSTACK_PG_TEMPLATE`.
    ///
    /// # Panics
    ///
    /// When PostgreSQL is unreachable or the template is missing, with a message that names
    /// the command that provisions them.
    pub async fn new() -> Self {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let template =
            std::env::var("GEOSTACK_PG_TEMPLATE").unwrap_or_else(|_| DEFAULT_TEMPLATE.to_owned());
        match Self::create(&url, &template).await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        }
    }

    /// Creates a database from `template` through the admin connection `url`.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when PostgreSQL cannot be reached or the clone fails.
    pub async fn create(url: &str, template: &str) -> Result<Self, Unavailable> {
        let unavailable = |e: sqlx::Error| Unavailable::new("PostgreSQL with PostGIS", e);
        let admin = PgConnectOptions::from_str(url).map_err(unavailable)?;
        let mut conn = connect(&admin).await.map_err(unavailable)?;
        let name = unique("gs_test");
        let create = format!(
            "create database {} template {}",
            ident(&name),
            ident(template)
        );
        // A clone fails while another session is connected to the template: retry briefly.
        let mut attempt = 0;
        loop {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(create.as_str()))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(e) if attempt < 20 && is_template_busy(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin.clone().database(&name))
            .await
            .map_err(unavailable)?;
        Ok(Self {
            name,
            admin,
            url: url.to_owned(),
            pool,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool connected to this database as the admin user.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A URL of this database, as the admin user (for a program the test starts): the admin
    /// URL with this database's name as its path.
    pub fn url(&self) -> String {
        let authority = self.url.find("://").map_or(0, |i| i + 3);
        let path = self.url[authority..]
            .find('/')
            .map_or(self.url.len(), |i| authority + i);
        let query = self.url[path..]
            .find('?')
            .map_or("", |i| &self.url[path + i..]);
        format!("{}/{}{query}", &self.url[..path], self.name)
    }

    /// Options to open more connections to this database, as the admin user.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    /// A new login role with a password and no privilege at all, dropped (with what it owns
    /// and was granted in this database) when the value is dropped.
    ///
    /// # Panics
    ///
    /// When the role cannot be created.
    pub async fn create_role(&self) -> TestRole {
        let name = unique("gs_test_role");
        let password = unique("pw");
        let create = format!("create role {} login password '{password}'", ident(&name));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&self.pool)
            .await
        {
            panic!("testkit: cannot create role {name}: {e}");
        }
        TestRole {
            name,
            password,
            db: self.connect_options(),
            admin: self.admin.clone(),
        }
    }
}

/// A login role made by [`TestDb::create_role`].
pub struct TestRole {
    name: String,
    password: String,
    db: PgConnectOptions,
    admin: PgConnectOptions,
}

impl TestRole {
    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Options that log in to the test database as this role.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.db
            .clone()
            .username(&self.name)
            .password(&self.password)
    }

    /// A pool of `max` connections logged in as this role.
    ///
    /// # Panics
    ///
    /// When it cannot connect.
    pub async fn pool(&self, max: u32) -> PgPool {
        match PgPoolOptions::new()
            .max_connections(max)
            .connect_with(self.connect_options())
            .await
        {
            Ok(pool) => pool,
            Err(e) => panic!("testkit: cannot log in as {}: {e}", self.name),
        }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (db, admin, role) = (self.db.clone(), self.admin.clone(), ident(&self.name));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                // Its grants in the test database (which may already be gone), then the role.
                if let Ok(mut conn) = connect(&db).await {
                    let drop_owned = format!("drop owned by {role}");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop_owned))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
                let mut conn = connect(&admin).await.map_err(|e| e.to_string())?;
                let drop = format!("drop role if exists {role}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let drop = format!("drop database if exists {} with (force)", ident(&self.name));
        // Drop runs in sync code, perhaps inside the test's runtime: do the async work on a
        // thread of its own with a runtime of its own, and wait for it.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = connect(&admin).await.map_err(|e| e.to_string())?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            // Not a test failure: scripts/test sweeps leftover gs_test_* databases.
            eprintln!("testkit: could not drop database {}: {e}", self.name);
        }
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(options))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

fn is_template_busy(e: &sqlx::Error) -> bool {
    // 55006: object_in_use ("source database is being accessed by other users").
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "55006")
}

/// A double-quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::ident;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(ident("gs_test_1"), "\"gs_test_1\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
