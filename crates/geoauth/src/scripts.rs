//! The Lua scripts, loaded once (`EVALSHA`, falling back to `EVAL` after a restart).

use std::sync::LazyLock;

use redis::Script;

pub(crate) static CREATE_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/create_key.lua")));
pub(crate) static REVOKE_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/revoke_key.lua")));
pub(crate) static EXPIRE_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/expire_key.lua")));
pub(crate) static REGENERATE_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/regenerate_key.lua")));
pub(crate) static TOUCH_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/touch_key.lua")));
pub(crate) static GCRA: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));
pub(crate) static SESSION_CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/session_create.lua")));
pub(crate) static SESSION_LOAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/session_load.lua")));
pub(crate) static SESSION_ROTATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/session_rotate.lua")));
pub(crate) static SESSION_REVOKE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/session_revoke.lua")));
pub(crate) static SESSION_REVOKE_ALL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/session_revoke_all.lua")));
