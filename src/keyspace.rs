//! Redis key naming. Every key a script touches carries the hash tag of one
//! outbox shard, `{N}`, so each script runs within one hash slot and works
//! unchanged on Redis Cluster (invariant 3).

use crate::limits::OUTBOX_SHARDS;

/// Which outbox shard (and hash slot) holds the keys of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard(u64);

impl Shard {
    pub fn of_sale(sale_id: u64) -> Self {
        Self(sale_id % OUTBOX_SHARDS)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_sale_share_its_hash_tag() {
        let keys = Keyspace::new("p");
        let shard = Shard::of_sale(493_013);
        assert_eq!(keys.outbox(shard), "p:{5}:outbox");
        assert_eq!(keys.key(shard, format_args!("sale:{}", 493_013)), "p:{5}:sale:493013");
    }
}
