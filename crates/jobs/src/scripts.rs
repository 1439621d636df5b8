//! The Lua scripts, each with the shared helpers of `common.lua` in front and its body run as
//! a function, after which the events it wrote go out as one stream entry.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/common.lua"),
                "\nlocal function body()\n",
                include_str!($file),
                "\nend\nlocal out = body()\nflush_events()\nreturn out\n"
            ))
        });
    };
}

script!(ENQUEUE, "lua/enqueue.lua");
script!(FINISH, "lua/finish.lua");
script!(EXTEND, "lua/extend.lua");
script!(SWEEP, "lua/sweep.lua");
script!(REDRIVE, "lua/redrive.lua");
script!(CANCEL, "lua/cancel.lua");
script!(UPDATE, "lua/update.lua");
script!(HEARTBEAT, "lua/heartbeat.lua");
script!(UNREGISTER, "lua/unregister.lua");
script!(PROGRESS, "lua/progress.lua");
script!(REPEAT_SET, "lua/repeat_set.lua");
script!(REPEAT_REMOVE, "lua/repeat_remove.lua");
script!(REPEAT_FIRE, "lua/repeat_fire.lua");
script!(REPEAT_PARK, "lua/repeat_park.lua");
script!(REMOVE, "lua/remove.lua");
script!(RETRY, "lua/retry.lua");
script!(PROMOTE, "lua/promote.lua");
script!(DRAIN, "lua/drain.lua");
script!(CLEAN, "lua/clean.lua");
script!(OBLITERATE, "lua/obliterate.lua");
script!(LOG, "lua/log.lua");
script!(PAUSE, "lua/pause.lua");
