//! Redis key naming. Every key a script touches carries the hash tag of one
//! outbox shard, `{tag}`, so each script runs within one hash slot and works
//! unchanged on Redis Cluster (invariant 3).
//!
//! How many shards there are and which tag each one has is the layout
//! (`layout`), fixed at the first start and read back on every later one:
//! a shard's keys stay under its tag for good.

use std::sync::Arc;

use crate::config::ConfigError;

/// A stable hash of a text id (FNV-1a 64): the same in every process and
/// version, unlike std's randomly keyed hasher, so an id maps to the same
/// shard or part for good.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which outbox shard (and hash slot) holds the keys of an entity: an index
/// below the layout's shard count. Only a [`Keyspace`] makes one, so an
/// index always has a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard(u64);

impl Shard {
    pub fn index(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
    /// Shard i's hash tag; never empty (the layout checks it).
    tags: Arc<[String]>,
    /// Shard i's key start, `<prefix>:{<tag>}:`, made once: every request
    /// builds its keys from it, and formatting prefix and tag again for
    /// each key was a few per cent of the engine's CPU under load.
    starts: Arc<[String]>,
}

impl Keyspace {
    /// `prefix` must not contain braces (checked by the config), nor may a
    /// tag: a brace would change which part of the key is the hash tag.
    /// `tags` holds one tag per shard, at least one (the layout checks both).
    pub fn new(prefix: impl Into<String>, tags: Vec<String>) -> Self {
        let tags: Arc<[String]> = match tags.is_empty() {
            true => Arc::from(vec!["0".to_owned()]),
            false => tags.into(),
        };
        let prefix = prefix.into();
        let starts = tags.iter().map(|tag| format!("{prefix}:{{{tag}}}:")).collect();
        Self { prefix, tags, starts }
    }

    /// The standalone layout of `shards` shards: tags `0`..`shards-1`.
    pub fn numbered(prefix: impl Into<String>, shards: u64) -> Self {
        Self::new(prefix, (0..shards).map(|i| i.to_string()).collect())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many outbox shards there are.
    pub fn shard_count(&self) -> u64 {
        self.tags.len() as u64
    }

    /// Every shard, in index order.
    pub fn shards(&self) -> impl Iterator<Item = Shard> + use<> {
        (0..self.shard_count()).map(Shard)
    }

    /// The shard of an entity with a numeric id: consecutive ids take
    /// consecutive shards, which the layout puts on different primaries of
    /// a cluster.
    pub fn shard_of_number(&self, id: u64) -> Shard {
        Shard(id % self.shard_count())
    }

    /// The shard of an entity with a text id.
    pub fn shard_of_text(&self, id: &str) -> Shard {
        self.shard_of_number(stable_hash(id))
    }

    /// The shard of part `part` of an entity spread over several parts
    /// (each on its own slot): part p of the entity with number n is on
    /// shard `n + p` (mod the shard count). Consecutive shards land on
    /// different primaries of a cluster, so the parts of one entity do too,
    /// when the shard count is a multiple of the primaries': otherwise the
    /// parts of an entity whose shards wrap past the last may share one.
    /// The only place that maps a part to a shard.
    pub fn shard_of_part(&self, id: u64, part: u32) -> Shard {
        self.shard_of_number(id.wrapping_add(u64::from(part)))
    }

    /// Checks a setting that spreads one entity over `parts` parts: each part
    /// needs a shard of its own (two parts on one shard would share their
    /// keys), so there may not be more parts than shards.
    pub fn check_parts(&self, var: &'static str, parts: u32) -> Result<(), ConfigError> {
        if u64::from(parts) <= self.shard_count() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            var,
            value: parts.to_string(),
            reason: format!(
                "must not exceed the outbox shards ({}, STAMPEDE_OUTBOX_SHARDS): each part has a shard of its own",
                self.shard_count()
            ),
        })
    }

    /// `shard`'s hash tag (without braces).
    pub fn tag(&self, shard: Shard) -> &str {
        &self.tags[(shard.0 % self.shard_count()) as usize]
    }

    /// The start of every key in `shard`'s hash slot: `<prefix>:{<tag>}:`.
    pub fn key_start(&self, shard: Shard) -> &str {
        &self.starts[(shard.0 % self.shard_count()) as usize]
    }

    /// A key in `shard`'s hash slot: `<prefix>:{<tag>}:<rest>`.
    pub fn key(&self, shard: Shard, rest: std::fmt::Arguments<'_>) -> String {
        let start = self.key_start(shard);
        let mut key = String::with_capacity(start.len() + 40);
        key.push_str(start);
        match rest.as_str() {
            Some(text) => key.push_str(text),
            // Writing to a String cannot fail.
            None => {
                let _ = std::fmt::Write::write_fmt(&mut key, rest);
            }
        }
        key
    }

    pub fn outbox(&self, shard: Shard) -> String {
        self.key(shard, format_args!("outbox"))
    }

    /// The start of the marks of `shard`'s batch calls: a call's mark is
    /// this and the call's id (16 hex digits). The call sets it when it runs,
    /// so the same call sent again finds it and does not run a second time.
    pub fn batch_mark_prefix(&self, shard: Shard) -> String {
        self.key(shard, format_args!("call:"))
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
        let keys = Keyspace::numbered("p", 8);
        let shard = keys.shard_of_number(493_013);
        assert_eq!(keys.outbox(shard), "p:{5}:outbox");
        assert_eq!(keys.key(shard, format_args!("item:{}", 493_013)), "p:{5}:item:493013");
        assert_eq!(keys.outbox_events(shard), "p:{5}:outbox:events");
        let spread = Keyspace::new("p", vec!["a".into(), "bc".into(), "d".into()]);
        assert_eq!(spread.outbox(spread.shard_of_number(4)), "p:{bc}:outbox");
    }

    /// The published FNV-1a 64 test vectors: an id placed by the hash (on a
    /// shard, in a part) stays where it is across versions.
    #[test]
    fn the_stable_hash_is_fnv_1a_64() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn text_ids_spread_and_stay_put() {
        let keys = Keyspace::numbered("p", 8);
        assert_eq!(keys.shard_of_text("player-1"), keys.shard_of_text("player-1"));
        let used: std::collections::HashSet<u64> =
            (0..200).map(|i| keys.shard_of_text(&format!("p{i}")).index()).collect();
        assert_eq!(used.len() as u64, keys.shard_count());
    }

    #[test]
    fn the_parts_of_an_entity_take_consecutive_shards() {
        let keys = Keyspace::numbered("p", 8);
        let shards: Vec<u64> = (0..4).map(|part| keys.shard_of_part(6, part).index()).collect();
        assert_eq!(shards, [6, 7, 0, 1]);
        assert_eq!(keys.shard_of_part(6, 0), keys.shard_of_number(6));
        assert!(keys.check_parts("STAMPEDE_X", 8).is_ok());
        let refused = keys.check_parts("STAMPEDE_X", 9).expect_err("more parts than shards");
        assert!(refused.to_string().starts_with("STAMPEDE_X"), "{refused}");
    }
}
