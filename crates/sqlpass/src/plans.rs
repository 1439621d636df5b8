//! Statement descriptions kept between runs: a reader's statement is described once per
//! database, login role and text, and again only after a DDL command changed the database.

use std::sync::Arc;

use moka::sync::Cache;
use sqlx::postgres::PgTypeInfo;

/// A bounded cache of what describing a reader's statement found — its result columns and,
/// when asked for, the tables it reads — so that a statement run again costs one planning and
/// one round trip less.
///
/// An entry is kept per database, login role and statement text, stamped with the database's
/// DDL generation: a counter that an event trigger installed by [`install`](crate::install)
/// bumps in every transaction that runs a DDL command (`CREATE`, `ALTER`, `DROP`, `GRANT`,
/// `COMMENT`…), visible when that transaction commits. [`Session::begin`](crate::Session::begin)
/// reads the generation in its own round trip; an entry of another generation is described
/// anew. A run that used an entry checks the types of its first row against it, and an entry
/// whose run failed is dropped, so that a DDL committed between the two is caught.
///
/// The cache is weighed in bytes (texts, names and a fixed cost per entry); entries seldom
/// used leave first (moka's TinyLFU). Clones share the cache.
///
/// It needs [`install`](crate::install) in the database: a run with a cache on a database
/// without it fails with [`Error::Internal`](crate::Error::Internal) saying so.
///
/// ```
/// let plans = sqlpass::Plans::new(16 << 20);
/// let options = sqlpass::Options::default().plans(plans.clone());
/// assert_eq!(plans.len(), 0);
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct Plans {
    cache: Cache<Key, Entry>,
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plans")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl Default for Plans {
    /// A cache of [`Plans::DEFAULT_BYTES`].
    fn default() -> Self {
        Self::new(Self::DEFAULT_BYTES)
    }
}

/// The key: which database, as which login role, which text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    database: String,
    role: String,
    statement: String,
}

impl Key {
    pub(crate) fn new(database: &str, role: &str, statement: &str) -> Self {
        Self {
            database: database.to_owned(),
            role: role.to_owned(),
            statement: statement.to_owned(),
        }
    }
}

/// What describing a reader's statement found, in one DDL generation.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) generation: i64,
    pub(crate) described: Arc<Described>,
}

/// A reader's statement's result columns and, when they were asked for, its tables.
#[derive(Debug)]
pub(crate) struct Described {
    pub(crate) columns: Vec<(String, PgTypeInfo)>,
    pub(crate) tables: Option<Vec<String>>,
}

/// An entry's weight: its texts and names, and a fixed cost per entry, column and table.
fn weight(key: &Key, entry: &Entry) -> u32 {
    let d = &entry.described;
    let texts = key.database.len() + key.role.len() + key.statement.len();
    let columns: usize = d.columns.iter().map(|(name, _)| name.len() + 48).sum();
    let tables: usize = d.tables.iter().flatten().map(|t| t.len() + 24).sum();
    u32::try_from(texts + columns + tables + 128).unwrap_or(u32::MAX)
}

impl Plans {
    /// The size of [`Plans::default`]: 16 MiB.
    pub const DEFAULT_BYTES: u64 = 16 << 20;

    /// A cache holding at most `bytes` of descriptions (keys included).
    pub fn new(bytes: u64) -> Self {
        Self {
            cache: Cache::builder().max_capacity(bytes).weigher(weight).build(),
        }
    }

    /// How many statements are described in the cache (after its pending evictions).
    pub fn len(&self) -> usize {
        self.cache.run_pending_tasks();
        usize::try_from(self.cache.entry_count()).unwrap_or(usize::MAX)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The description of `key` in `generation`, when it has one; `with_tables`: only when it
    /// also found the statement's tables.
    pub(crate) fn get(
        &self,
        key: &Key,
        generation: i64,
        with_tables: bool,
    ) -> Option<Arc<Described>> {
        let entry = self.cache.get(key)?;
        (entry.generation == generation && (!with_tables || entry.described.tables.is_some()))
            .then_some(entry.described)
    }

    pub(crate) fn insert(&self, key: Key, generation: i64, described: Arc<Described>) {
        self.cache.insert(
            key,
            Entry {
                generation,
                described,
            },
        );
    }

    pub(crate) fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
    }
}
