//! The outbox shards' layout: how many shards there are and each one's hash
//! tag, decided at the first start and recorded in Redis under
//! `<prefix>:layout` (one `SET NX`), then read back by every later start.
//!
//! - On Redis Cluster, shard i's tag is picked so that its hash slot is
//!   served by primary `i mod P` (primaries in slot order), so consecutive
//!   shards, and with them consecutive sales, products and outboxes, land on
//!   different primaries. The tags are kept when the cluster is resharded
//!   later: the data stays under its tags, and Redis moves slots, not tags.
//! - On a standalone Redis the tags are `0`..`S-1`, the keys engines wrote
//!   before the layout was recorded. A Redis holding those engines' outbox
//!   streams (`<prefix>:{0..7}:outbox`) but no record is adopted as the 8
//!   shards they used.
//! - The count is `STAMPEDE_OUTBOX_SHARDS` when set. Unset, a later start
//!   takes the record's, and a first start the topology's default: 8 on a
//!   cluster, where the shards spread over the primaries, and 2 on a
//!   standalone Redis, where they spread nothing and fewer shards put more
//!   requests in each call (`limits::OUTBOX_SHARDS_STANDALONE_DEFAULT`).
//! - A start with another count than the record refuses, saying what to do:
//!   the count decides where every entity's keys live, so changing it would
//!   lose them.

use std::collections::{BTreeMap, HashSet};

use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::Server;
use fred::types::{Expiration, SetOptions, Value};
use serde::{Deserialize, Serialize};

use crate::limits::{
    LAYOUT_TAG_SEARCH_MAX, OUTBOX_SHARDS_DEFAULT, OUTBOX_SHARDS_MAX, OUTBOX_SHARDS_STANDALONE_DEFAULT,
};
use crate::redis::keyspace::Keyspace;

/// Redis Cluster's hash slots.
const CLUSTER_SLOTS: u16 = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(
        "STAMPEDE_OUTBOX_SHARDS is {configured}, but this Redis's data under STAMPEDE_KEY_PREFIX {prefix:?} was laid \
         out over {recorded} outbox shards (recorded in {key}). The count decides which keys hold every entity's \
         state, so it cannot change while that data exists. Start with STAMPEDE_OUTBOX_SHARDS={recorded}; or, to \
         use {configured} shards, stop every engine (each drains its outbox to Postgres as it stops) and start on a \
         new STAMPEDE_KEY_PREFIX (the old prefix's Redis state is not carried over). See docs/operations.md, \
         \"Redis Cluster\"."
    )]
    CountChanged {
        prefix: String,
        key: String,
        recorded: u64,
        configured: u64,
    },
    #[error("the shard layout record {key} is malformed ({detail}); it is written once at first start, never by hand")]
    Malformed { key: String, detail: String },
    #[error("the cluster's slot map (CLUSTER SLOTS) cannot be used: {0}")]
    Slots(String),
}

/// What `<prefix>:layout` holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    shards: u64,
    tags: Vec<String>,
}

/// The primaries of a cluster, in slot order, each with its slot ranges
/// (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub server: Server,
    pub ranges: Vec<(u16, u16)>,
}

/// Reads (or records, at first start) the layout and returns the key space
/// built on it. `configured` is `STAMPEDE_OUTBOX_SHARDS`, if set.
pub async fn establish(redis: &Pool, prefix: &str, configured: Option<u64>) -> Result<Keyspace, LayoutError> {
    let key = format!("{prefix}:layout");
    let record = match read(redis, &key).await? {
        Some(record) => record,
        None => {
            let proposed = propose(redis, prefix, configured).await?;
            let json = serde_json::to_string(&proposed).map_err(|e| LayoutError::Malformed {
                key: key.clone(),
                detail: e.to_string(),
            })?;
            let set: Option<String> = redis
                .set(&key, json, None::<Expiration>, Some(SetOptions::NX), false)
                .await?;
            match set {
                Some(_) => {
                    tracing::info!(shards = proposed.shards, tags = ?proposed.tags, %key, "shard layout recorded");
                    proposed
                }
                // Another engine recorded one first: that one holds.
                None => read(redis, &key).await?.ok_or_else(|| LayoutError::Malformed {
                    key: key.clone(),
                    detail: "SET NX lost to a record that is now gone".into(),
                })?,
            }
        }
    };
    if let Some(configured) = configured
        && record.shards != configured
    {
        return Err(LayoutError::CountChanged {
            prefix: prefix.to_owned(),
            key,
            recorded: record.shards,
            configured,
        });
    }
    Ok(Keyspace::new(prefix, record.tags))
}

async fn read(redis: &Pool, key: &str) -> Result<Option<Record>, LayoutError> {
    let raw: Option<String> = redis.get(key).await?;
    let Some(raw) = raw else { return Ok(None) };
    let malformed = |detail: String| LayoutError::Malformed {
        key: key.to_owned(),
        detail,
    };
    let record: Record = serde_json::from_str(&raw).map_err(|e| malformed(e.to_string()))?;
    validate(&record).map_err(malformed)?;
    Ok(Some(record))
}

fn validate(record: &Record) -> Result<(), String> {
    if record.shards == 0 || record.shards > OUTBOX_SHARDS_MAX {
        return Err(format!("{} shards, not 1 to {OUTBOX_SHARDS_MAX}", record.shards));
    }
    if record.tags.len() as u64 != record.shards {
        return Err(format!("{} tags for {} shards", record.tags.len(), record.shards));
    }
    let mut seen = HashSet::new();
    for tag in &record.tags {
        if tag.is_empty() || tag.len() > 16 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("tag {tag:?} is not 1 to 16 letters or digits"));
        }
        if !seen.insert(tag) {
            return Err(format!("tag {tag:?} is used twice"));
        }
    }
    Ok(())
}

/// The layout a first start records: `configured` shards, or the
/// topology's default.
async fn propose(redis: &Pool, prefix: &str, configured: Option<u64>) -> Result<Record, LayoutError> {
    // Engines that predate the record used 8 shards tagged 0..7; their
    // outbox streams exist from their first start (the flusher creates them).
    for shard in 0..OUTBOX_SHARDS_DEFAULT {
        let exists: u64 = redis.exists(format!("{prefix}:{{{shard}}}:outbox")).await?;
        if exists > 0 {
            tracing::info!(%prefix, "keys of an engine without a layout record found: adopted as 8 shards tagged 0..7");
            return Ok(numbered(OUTBOX_SHARDS_DEFAULT));
        }
    }
    if !redis.next().is_clustered() {
        return Ok(numbered(configured.unwrap_or(OUTBOX_SHARDS_STANDALONE_DEFAULT)));
    }
    let shards = configured.unwrap_or(OUTBOX_SHARDS_DEFAULT);
    let primaries = primaries(redis).await?;
    let ranges: Vec<Vec<(u16, u16)>> = primaries.into_iter().map(|p| p.ranges).collect();
    let tags = spread_tags(shards, &ranges)?;
    Ok(Record { shards, tags })
}

fn numbered(shards: u64) -> Record {
    Record {
        shards,
        tags: (0..shards).map(|i| i.to_string()).collect(),
    }
}

/// Tags for `shards` shards such that shard i's hash slot lies in
/// `primaries[i % P]`'s ranges: for each shard, the smallest unused decimal
/// number whose slot does (the shard's own number when it already fits).
pub fn spread_tags(shards: u64, primaries: &[Vec<(u16, u16)>]) -> Result<Vec<String>, LayoutError> {
    if primaries.is_empty() {
        return Err(LayoutError::Slots("no primary serves any slot".into()));
    }
    let serves = |primary: &[(u16, u16)], tag: &str| {
        let slot = fred::util::redis_keyslot(tag.as_bytes());
        primary.iter().any(|&(start, end)| (start..=end).contains(&slot))
    };
    let mut used = HashSet::new();
    let mut tags = Vec::with_capacity(shards as usize);
    for shard in 0..shards {
        let primary = &primaries[(shard % primaries.len() as u64) as usize];
        let own = shard.to_string();
        let tag = match !used.contains(&own) && serves(primary, &own) {
            true => Some(own),
            false => (0..LAYOUT_TAG_SEARCH_MAX)
                .map(|n| n.to_string())
                .find(|candidate| !used.contains(candidate) && serves(primary, candidate)),
        };
        let tag = tag.ok_or_else(|| {
            LayoutError::Slots(format!(
                "no tag among the first {LAYOUT_TAG_SEARCH_MAX} numbers hashes to primary {}'s slots {primary:?}",
                shard % primaries.len() as u64
            ))
        })?;
        used.insert(tag.clone());
        tags.push(tag);
    }
    Ok(tags)
}

/// The cluster's primaries in slot order (by the first slot each serves),
/// read with `CLUSTER SLOTS`.
pub async fn primaries(redis: &Pool) -> Result<Vec<Primary>, LayoutError> {
    let reply: Value = redis.next().custom(fred::cmd!("CLUSTER"), vec!["SLOTS"]).await?;
    let bad = |what: &str| LayoutError::Slots(format!("unexpected reply ({what}): {reply:?}"));
    let Value::Array(entries) = &reply else {
        return Err(bad("not an array"));
    };
    let mut by_server: BTreeMap<(String, u16), Vec<(u16, u16)>> = BTreeMap::new();
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(bad("an entry is not an array"));
        };
        let slot = |i: usize| {
            fields
                .get(i)
                .and_then(Value::as_i64)
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| *s < CLUSTER_SLOTS)
        };
        let (Some(start), Some(end)) = (slot(0), slot(1)) else {
            return Err(bad("a slot range is not two slots"));
        };
        let Some(Value::Array(node)) = fields.get(2) else {
            return Err(bad("a range has no primary"));
        };
        let host = node.first().and_then(Value::as_string).unwrap_or_default();
        let port = node.get(1).and_then(Value::as_i64).and_then(|p| u16::try_from(p).ok());
        let Some(port) = port.filter(|_| !host.is_empty()) else {
            return Err(bad("a primary has no host and port"));
        };
        by_server.entry((host, port)).or_default().push((start, end));
    }
    let mut primaries: Vec<Primary> = by_server
        .into_iter()
        .map(|((host, port), mut ranges)| {
            ranges.sort_unstable();
            Primary {
                server: Server::new(host, port),
                ranges,
            }
        })
        .collect();
    primaries.sort_by_key(|p| p.ranges.first().map(|r| r.0));
    if primaries.is_empty() {
        return Err(LayoutError::Slots("no primary serves any slot".into()));
    }
    Ok(primaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tag: &str) -> u16 {
        fred::util::redis_keyslot(tag.as_bytes())
    }

    fn primary_of(ranges: &[Vec<(u16, u16)>], tag: &str) -> usize {
        let slot = slot(tag);
        ranges
            .iter()
            .position(|r| r.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("every slot is served")
    }

    /// The slot split `redis-cli --cluster create` makes for 3 primaries.
    fn three() -> Vec<Vec<(u16, u16)>> {
        vec![vec![(0, 5460)], vec![(5461, 10922)], vec![(10923, 16383)]]
    }

    #[test]
    fn shard_i_lands_on_primary_i_mod_p() {
        for (shards, ranges) in [(12, three()), (8, three()), (1, three()), (7, vec![vec![(0, 16383)]])] {
            let tags = spread_tags(shards, &ranges).expect("tags");
            assert_eq!(tags.len() as u64, shards);
            for (i, tag) in tags.iter().enumerate() {
                assert_eq!(primary_of(&ranges, tag), i % ranges.len(), "shard {i} tag {tag}");
            }
            let unique: HashSet<_> = tags.iter().collect();
            assert_eq!(unique.len(), tags.len(), "{tags:?}");
            validate(&Record { shards, tags }).expect("a valid record");
        }
    }

    #[test]
    fn tags_are_short_and_stable() {
        let tags = spread_tags(OUTBOX_SHARDS_MAX, &three()).expect("tags");
        assert!(tags.iter().all(|t| t.len() <= 5), "{tags:?}");
        assert_eq!(tags, spread_tags(OUTBOX_SHARDS_MAX, &three()).expect("again"));
        // On one node every shard keeps its own number.
        let one = spread_tags(8, &[vec![(0, 16383)]]).expect("tags");
        assert_eq!(one, numbered(8).tags);
    }

    #[test]
    fn split_and_uneven_slot_ranges_are_honoured() {
        // A primary with two ranges, and one holding a single slot.
        let ranges = vec![
            vec![(0, 100), (9000, 15494), (15496, 16383)],
            vec![(101, 8999)],
            vec![(15495, 15495)],
        ];
        let tags = spread_tags(6, &ranges).expect("tags");
        for (i, tag) in tags.iter().enumerate() {
            assert_eq!(primary_of(&ranges, tag), i % 3, "shard {i} tag {tag}");
        }
        assert!(matches!(spread_tags(1, &[]), Err(LayoutError::Slots(_))));
    }

    #[test]
    fn malformed_records_are_refused() {
        for (shards, tags) in [
            (0, vec![]),
            (2, vec!["0".to_owned()]),
            (2, vec!["0".to_owned(), "0".to_owned()]),
            (1, vec!["{x}".to_owned()]),
            (1, vec![String::new()]),
        ] {
            assert!(validate(&Record { shards, tags }).is_err());
        }
    }
}
