//! The changes of tracked tables, as the database announces them ([`install`](crate::install)
//! tracks every table as a superuser; `CDB_CartodbfyTable` tracks the table it touches).

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::{Error, Result};

/// The channel the tracking triggers notify.
pub const CHANGES_CHANNEL: &str = "sqlpass_table_change";

/// What [`TableChanges::next`] heard.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableChange {
    /// A committed transaction changed this table (`schema.table`).
    Changed(String),
    /// The connection was lost and made again: changes made meanwhile went unheard, so any
    /// table may have changed.
    Missed,
}

/// A connection of its own that listens for committed changes of tracked tables, whoever made
/// them: the APIs, batch jobs, `COPY`, or any client writing straight into PostgreSQL. It
/// needs a session of its own: through pgbouncer in transaction mode, give it the database's
/// own address.
///
/// ```no_run
/// # async fn demo() -> sqlpass::Result<()> {
/// use sqlpass::{TableChange, TableChanges};
///
/// let pg: sqlx::postgres::PgConnectOptions = "postgres://127.0.0.1/test".parse().unwrap();
/// let mut changes = TableChanges::listen(&pg).await?;
/// loop {
///     match changes.next().await? {
///         TableChange::Changed(table) => println!("{table} changed"),
///         TableChange::Missed => println!("anything may have changed"),
///         _ => {}
///     }
/// }
/// # }
/// ```
pub struct TableChanges {
    listener: PgListener,
}

impl std::fmt::Debug for TableChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableChanges").finish_non_exhaustive()
    }
}

impl TableChanges {
    /// Connects with `pg` and listens.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when PostgreSQL cannot be reached.
    pub async fn listen(pg: &PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(pg.clone());
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(Error::Unavailable)?;
        listener
            .listen(CHANGES_CHANNEL)
            .await
            .map_err(Error::Unavailable)?;
        Ok(Self { listener })
    }

    /// The next change heard (waiting for it), or [`TableChange::Missed`] after the connection
    /// was lost (it is made again).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the connection cannot be made again.
    pub async fn next(&mut self) -> Result<TableChange> {
        match self.listener.try_recv().await {
            Ok(Some(n)) => Ok(TableChange::Changed(n.payload().to_owned())),
            Ok(None) => Ok(TableChange::Missed),
            Err(e) => Err(Error::Unavailable(e)),
        }
    }
}
