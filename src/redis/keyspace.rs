//! Redis key naming. Every key a script touches carries the hash tag of one
//! outbox shard, `{N}`, so each script runs within one hash slot and works
//! unchanged on Redis Cluster (invariant 3).

use crate::limits::OUTBOX_SHARDS;

/// Which outbox shard (and hash slot) holds the keys of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard(u64);

impl Shard {
    /// The shard of an entity with a numeric id.
    pub fn of_number(id: u64) -> Self {
        Self(id % OUTBOX_SHARDS)
    }

    /// The shard of an entity with a text id (FNV-1a: stable across
    /// processes and versions, unlike std's randomly keyed hasher).
    pub fn of_text(id: &str) -> Self {
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(hash % OUTBOX_SHARDS)
    }

    pub fn all() -> impl Iterator<Item = Shard> {
        (0..OUTBOX_SHARDS).map(Shard)
    }

    pub fn index(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// `prefix` must not contain braces (checked by the config): a brace in
    /// it would change which part of the key is the hash tag.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// A key in `shard`'s hash slot: `<prefix>:{<shard>}:<rest>`.
    pub fn key(&self, shard: Shard, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{{{}}}:{}", self.prefix, shard.0, rest)
    }

    pub fn outbox(&self, shard: Shard) -> String {
        self.key(shard, format_args!("outbox"))
    }

    /// Events in `shard`'s outbox not yet in Postgres. Kept by the scripts
    /// that append and the one that acknowledges, so it bounds the backlog
    /// in events whatever the entries hold.
    pub fn outbox_events(&self, shard: Shard) -> String {
        self.key(shard, format_args!("outbox:events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_an_entity_share_its_hash_tag() {
        let keys = Keyspace::new("p");
        let shard = Shard::of_number(493_013);
        assert_eq!(keys.outbox(shard), "p:{5}:outbox");
        assert_eq!(keys.key(shard, format_args!("item:{}", 493_013)), "p:{5}:item:493013");
        assert_eq!(keys.outbox_events(shard), "p:{5}:outbox:events");
    }

    #[test]
    fn text_ids_spread_and_stay_put() {
        assert_eq!(Shard::of_text("player-1"), Shard::of_text("player-1"));
        let used: std::collections::HashSet<u64> = (0..200).map(|i| Shard::of_text(&format!("p{i}")).index()).collect();
        assert_eq!(used.len() as u64, OUTBOX_SHARDS);
    }
}
