use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("lua/", $file))));
    };
}

script!(PUSH, "push.lua");
script!(PROMOTE, "promote.lua");
script!(ACK, "ack.lua");
script!(RECLAIM, "reclaim.lua");
script!(STATS, "stats.lua");
script!(REPLAY, "replay.lua");
script!(FIND, "find.lua");
