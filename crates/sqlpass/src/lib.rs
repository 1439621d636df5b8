#![doc = include_str!("../README.md")]

mod body;
mod changes;
mod copy;
mod error;
mod format;
mod geom;
#[cfg(feature = "axum")]
mod http;
mod options;
mod own;
mod plans;
mod provision;
mod registry;
mod run;
mod session;
mod statement;
mod tables;
mod value;
mod write;

pub use body::{Body, Outcome};
pub use changes::{CHANGES_CHANNEL, TableChange, TableChanges};
pub use copy::{CopyDirection, CopyStatement, copy_from, copy_to};
pub use error::{Error, Result};
pub use options::{
    Access, CsvGeometry, DEFAULT_BYTE_LIMIT, DEFAULT_ROW_LIMIT, DEFAULT_VALUE_LIMIT, Format,
    Options,
};
pub use plans::Plans;
pub use provision::{CallerRole, PublicRole, cartodbfy, install};
pub use registry::{PoolRegistry, RegistryConfig};
pub use run::{Meta, Response, run};
pub use session::Session;
pub use statement::{Script, Statement, in_string_literal};
