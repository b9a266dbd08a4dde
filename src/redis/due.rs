//! The read every periodic pass starts with: what a sorted set, scored by
//! the time each member falls due, holds due by now.

use fred::clients::Pool;
use fred::interfaces::ClientLike;

/// The members of the sorted set `key` scored at most `up_to` (due by
/// then), lowest score first, at most `limit` of them: one ZRANGEBYSCORE, a
/// read, so a pass decides nothing here; each member is then handled by a
/// script that checks again.
pub async fn due_members(
    redis: &Pool,
    key: String,
    up_to: i64,
    limit: usize,
) -> Result<Vec<String>, fred::error::Error> {
    redis
        .custom(
            fred::cmd!("ZRANGEBYSCORE"),
            vec![
                key,
                "-inf".into(),
                up_to.to_string(),
                "LIMIT".into(),
                "0".into(),
                limit.to_string(),
            ],
        )
        .await
}
