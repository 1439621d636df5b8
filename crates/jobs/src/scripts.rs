//! The queue's Lua code: one Redis function library (Redis 7's `FUNCTION LOAD`), with the
//! names of the queue's keys and the shared helpers of `common.lua`, and one function per file
//! of `lua/`. A call runs its file's body; when it returns, the jobs it changed are written and
//! the events it wrote go out as one stream entry.
//!
//! Every key a function touches is declared: each call passes all of the queue's keys
//! ([`KEY_NAMES`], under the queue's prefix) as its keys, and the code names no other key.
//! Per-job data are fields of the queue's fixed keys (a job is the field `<id>` of the `jobs`
//! hash, its fields packed with MessagePack), so that a proxy or a managed cluster that checks
//! a call's keys against its declared ones lets every call through.
//!
//! A library, unlike a script sent with `EVALSHA`, runs its shared code once, when it is
//! loaded, not on every call. Its name carries a digest of its code, so that versions side by
//! side (a rolling upgrade) each call their own; a server that does not have it (new, flushed,
//! restarted without persistence) gets it on the first call that finds it missing.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};

/// The queue's keys in the order every function receives them: `keys[i]` is
/// `<prefix><KEY_NAMES[i - 1]>`, which the code calls `K_<name>` (with `_` for `:`).
pub(crate) const KEY_NAMES: [&str; 24] = [
    "meta",
    "jobs",
    "wait",
    "twait",
    "tenants",
    "tenants:set",
    "active",
    "delayed",
    "completed",
    "dead",
    "cancelled",
    "events",
    "signal",
    "seq",
    "rate",
    "workers",
    "workers:info",
    "unique",
    "logs",
    "metrics:completed",
    "metrics:dead",
    "repeats",
    "repeats:parked",
    "repeat",
];

/// The queue's keys under `prefix`, in [`KEY_NAMES`]' order.
pub(crate) fn queue_keys(prefix: &str) -> Vec<String> {
    KEY_NAMES.iter().map(|n| format!("{prefix}{n}")).collect()
}

/// The functions: each name and the body it runs.
const BODIES: [(&str, &str); 23] = [
    ("enqueue", include_str!("lua/enqueue.lua")),
    ("finish", include_str!("lua/finish.lua")),
    ("extend", include_str!("lua/extend.lua")),
    ("sweep", include_str!("lua/sweep.lua")),
    ("redrive", include_str!("lua/redrive.lua")),
    ("cancel", include_str!("lua/cancel.lua")),
    ("update", include_str!("lua/update.lua")),
    ("heartbeat", include_str!("lua/heartbeat.lua")),
    ("unregister", include_str!("lua/unregister.lua")),
    ("progress", include_str!("lua/progress.lua")),
    ("repeat_set", include_str!("lua/repeat_set.lua")),
    ("repeat_remove", include_str!("lua/repeat_remove.lua")),
    ("repeat_fire", include_str!("lua/repeat_fire.lua")),
    ("repeat_park", include_str!("lua/repeat_park.lua")),
    ("remove", include_str!("lua/remove.lua")),
    ("retry", include_str!("lua/retry.lua")),
    ("promote", include_str!("lua/promote.lua")),
    ("drain", include_str!("lua/drain.lua")),
    ("clean", include_str!("lua/clean.lua")),
    ("obliterate", include_str!("lua/obliterate.lua")),
    ("log", include_str!("lua/log.lua")),
    ("pause", include_str!("lua/pause.lua")),
    ("records", include_str!("lua/records.lua")),
];

/// The library: its name (`geostack_jobs_<digest>`) and its code.
struct Library {
    name: String,
    code: String,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let code = library_code("{name}");
    let digest = redis::Script::new(&code).get_hash().to_owned();
    let name = format!("geostack_jobs_{}", &digest[..16]);
    Library {
        code: library_code(&name),
        name,
    }
});

/// The library's code under the name `name`.
fn library_code(name: &str) -> String {
    let locals: Vec<String> = KEY_NAMES
        .iter()
        .map(|n| format!("K_{}", n.replace(':', "_")))
        .collect();
    let bound: Vec<String> = (1..=KEY_NAMES.len())
        .map(|i| format!("keys[{i}]"))
        .collect();
    let mut code = format!(
        "#!lua name={name}\nlocal KEYS, ARGV\nlocal {locals}\n{common}\n\
         -- Runs `body` for a call: binds its keys and arguments, starts from nothing written.\n\
         local function run(body)\n  return function(keys, args)\n    KEYS, ARGV = keys, args\n    \
         {locals} = {bound}\n    jobs, dirty, is_dirty, pending = {{}}, {{}}, {{}}, {{}}\n    \
         local out = body()\n    save_jobs()\n    flush_events()\n    return out\n  end\nend\n",
        locals = locals.join(", "),
        bound = bound.join(", "),
        common = include_str!("lua/common.lua"),
    );
    for (function, body) in BODIES {
        code.push_str(&format!(
            "redis.register_function('{name}_{function}', run(function()\n{body}\nend))\n"
        ));
    }
    code
}

/// One of the library's functions.
pub(crate) struct Function(&'static str);

pub(crate) static ENQUEUE: Function = Function("enqueue");
pub(crate) static FINISH: Function = Function("finish");
pub(crate) static EXTEND: Function = Function("extend");
pub(crate) static SWEEP: Function = Function("sweep");
pub(crate) static REDRIVE: Function = Function("redrive");
pub(crate) static CANCEL: Function = Function("cancel");
pub(crate) static UPDATE: Function = Function("update");
pub(crate) static HEARTBEAT: Function = Function("heartbeat");
pub(crate) static UNREGISTER: Function = Function("unregister");
pub(crate) static PROGRESS: Function = Function("progress");
pub(crate) static REPEAT_SET: Function = Function("repeat_set");
pub(crate) static REPEAT_REMOVE: Function = Function("repeat_remove");
pub(crate) static REPEAT_FIRE: Function = Function("repeat_fire");
pub(crate) static REPEAT_PARK: Function = Function("repeat_park");
pub(crate) static REMOVE: Function = Function("remove");
pub(crate) static RETRY: Function = Function("retry");
pub(crate) static PROMOTE: Function = Function("promote");
pub(crate) static DRAIN: Function = Function("drain");
pub(crate) static CLEAN: Function = Function("clean");
pub(crate) static OBLITERATE: Function = Function("obliterate");
pub(crate) static LOG: Function = Function("log");
pub(crate) static PAUSE: Function = Function("pause");
pub(crate) static RECORDS: Function = Function("records");

/// A call of one of the library's functions, its arguments added with [`Call::arg`].
pub(crate) struct Call(Cmd);

impl Call {
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.0.arg(arg);
        self
    }

    /// The `FCALL` command, for a pipeline (after [`load`]).
    pub(crate) fn into_command(self) -> Cmd {
        self.0
    }

    /// Runs the call; loads the library first when the server does not have it.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.0.query_async(conn).await {
            Err(e) if missing(&e) => {
                load(conn).await?;
                self.0.query_async(conn).await
            }
            other => other,
        }
    }
}

/// Whether `e` says the server lacks the library's function.
fn missing(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// Loads the library (on every primary of a cluster); one that is there already is fine.
pub(crate) async fn load(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let loaded: RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&LIBRARY.code)
        .query_async(conn)
        .await;
    match loaded {
        Err(e) if !e.to_string().contains("already exists") => Err(e),
        _ => Ok(()),
    }
}

/// A call of `function` with the queue's `keys` ([`queue_keys`]) and its `prefix` as the first
/// argument.
pub(crate) fn invocation(function: &Function, keys: &[String], prefix: &str) -> Call {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(format!("{}_{}", LIBRARY.name, function.0))
        .arg(keys.len())
        .arg(keys)
        .arg(prefix);
    Call(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_name_becomes_a_lua_name_bound_to_its_slot() {
        let code = &LIBRARY.code;
        assert!(code.starts_with(&format!("#!lua name={}\n", LIBRARY.name)));
        assert!(
            code.contains("\nlocal K_meta, K_jobs, K_wait, K_twait, K_tenants, K_tenants_set,")
        );
        assert!(code.contains("K_repeats_parked, K_repeat = keys[1], keys[2], keys[3],"));
        assert!(code.contains(", keys[23], keys[24]\n"));
        assert_eq!(
            code.matches("redis.register_function(").count(),
            BODIES.len()
        );
        assert_eq!(queue_keys("q:{a}:")[16], "q:{a}:workers:info");
    }

    #[test]
    fn the_library_s_name_follows_its_code() {
        assert!(LIBRARY.name.starts_with("geostack_jobs_"));
        assert_eq!(LIBRARY.name.len(), "geostack_jobs_".len() + 16);
        assert_ne!(library_code("a"), library_code("b"));
    }
}
