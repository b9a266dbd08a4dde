//! `stampede gen-purchases`: realistic NDJSON purchase files for tests, demos
//! and load runs.
//!
//! - 70% of lines reuse a player seen before, so loyalty has something to add.
//! - 5% re-send a recent line verbatim, as platforms do when a delivery is
//!   retried: same `transaction_id`, same content.
//! - Platforms, item types, currencies and prices follow plausible weights;
//!   a fifth of lines carry extra fields (region, client), kept as extras.
//!
//! The same seed gives the same file; different seeds give disjoint
//! transaction ids, so files generated for one database never collide.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::record::{ItemType, Platform};

/// Share of lines whose player bought before.
const RETURNING_PLAYER_SHARE: f64 = 0.70;
/// Share of lines that re-send an earlier line verbatim.
const REDELIVERY_SHARE: f64 = 0.05;
/// Redeliveries repeat one of the last lines written: retries come soon, and
/// the generator must not hold a million lines to pick from.
const REDELIVERY_WINDOW: usize = 4_096;
/// Distinct items in the generated catalogue.
const CATALOGUE_ITEMS: usize = 400;
/// Purchases span this many days before the anchor date.
const SPAN_DAYS: i64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("writing {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("encoding a line: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What a run wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub lines: u64,
    pub redeliveries: u64,
    pub players: u64,
    pub bytes: u64,
}

struct CatalogueItem {
    id: String,
    name: String,
    item_type: ItemType,
    /// Reference price in US cents.
    usd_cents: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    transaction_id: &'a str,
    player_id: &'a str,
    platform: &'static str,
    item_id: &'a str,
    item_name: &'a str,
    item_type: &'static str,
    /// Written as a JSON number with the currency's exact decimals.
    price: &'a RawValue,
    currency: &'static str,
    purchased_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'static str>,
}

/// (code, decimals, units of the currency per US dollar, weight)
const CURRENCIES: &[(&str, u32, f64, u32)] = &[
    ("USD", 2, 1.0, 45),
    ("EUR", 2, 0.92, 20),
    ("GBP", 2, 0.79, 8),
    ("JPY", 0, 150.0, 7),
    ("BRL", 2, 5.0, 5),
    ("CAD", 2, 1.36, 4),
    ("KRW", 0, 1350.0, 3),
    ("AUD", 2, 1.52, 3),
    ("PLN", 2, 4.0, 2),
    ("SEK", 2, 10.5, 2),
    ("MXN", 2, 17.0, 1),
];

const PLATFORM_WEIGHTS: &[(Platform, u32)] = &[
    (Platform::Steam, 35),
    (Platform::PlayStation, 15),
    (Platform::Xbox, 15),
    (Platform::Epic, 10),
    (Platform::Nintendo, 8),
    (Platform::AppStore, 6),
    (Platform::GooglePlay, 6),
    (Platform::Gog, 2),
    (Platform::BattleNet, 2),
    (Platform::Ea, 1),
    (Platform::Ubisoft, 1),
    (Platform::Itch, 1),
];

/// (type, weight, cheapest and dearest reference price in US cents)
const ITEM_TYPES: &[(ItemType, u32, u64, u64)] = &[
    (ItemType::Game, 20, 999, 6999),
    (ItemType::Dlc, 15, 499, 2999),
    (ItemType::SeasonPass, 5, 1999, 3999),
    (ItemType::Currency, 20, 99, 9999),
    (ItemType::Cosmetic, 20, 49, 1999),
    (ItemType::Bundle, 8, 1499, 8999),
    (ItemType::Subscription, 7, 499, 1499),
    (ItemType::Consumable, 5, 29, 499),
];

const REGIONS: &[&str] = &["NA", "EU", "LATAM", "APAC", "MEA"];
const CLIENTS: &[&str] = &["desktop", "console", "mobile", "web"];
const ADJECTIVES: &[&str] = &[
    "Ancient", "Crimson", "Eternal", "Frozen", "Golden", "Hidden", "Iron", "Lunar", "Mystic", "Neon", "Shadow",
    "Solar", "Stellar", "Thunder", "Wild",
];
const NOUNS: &[&str] = &[
    "Blade", "Citadel", "Dragon", "Empire", "Frontier", "Galaxy", "Horizon", "Legion", "Odyssey", "Phoenix", "Quest",
    "Raiders", "Realm", "Titan", "Voyage",
];

/// Writes `count` lines to `output`, with a progress bar on a terminal.
pub fn generate(count: u64, output: &Path, seed: u64) -> Result<Generated, GenerateError> {
    let write_error = |source| GenerateError::Write {
        path: output.display().to_string(),
        source,
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let file = File::create(output).map_err(write_error)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    // Hidden when stderr is not a terminal (CI, pipes).
    let progress = ProgressBar::new(count).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} lines  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let generated = write_lines(count, seed, &mut out, |written| progress.set_position(written))?;
    out.flush().map_err(write_error)?;
    progress.finish_and_clear();
    Ok(generated)
}

/// The generator proper, over any writer (tests write to memory).
pub fn write_lines(
    count: u64,
    seed: u64,
    out: &mut impl Write,
    mut on_progress: impl FnMut(u64),
) -> Result<Generated, GenerateError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let catalogue = catalogue(&mut rng);
    // Purchases end at a fixed instant, so a seed always gives the same file.
    let anchor = OffsetDateTime::from_unix_timestamp(1_793_577_600).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut players: u64 = 0;
    let mut recent: VecDeque<Vec<u8>> = VecDeque::with_capacity(REDELIVERY_WINDOW);
    let mut generated = Generated {
        lines: 0,
        redeliveries: 0,
        players: 0,
        bytes: 0,
    };
    let mut line = Vec::with_capacity(512);
    for n in 0..count {
        line.clear();
        if !recent.is_empty() && rng.random_bool(REDELIVERY_SHARE) {
            let pick = rng.random_range(0..recent.len());
            line.extend_from_slice(&recent[pick]);
            generated.redeliveries += 1;
        } else {
            let player = if players > 0 && rng.random_bool(RETURNING_PLAYER_SHARE) {
                // Squaring skews towards early players: a few buy a lot.
                let u: f64 = rng.random();
                ((u * u) * players as f64) as u64
            } else {
                players += 1;
                players - 1
            };
            let platform = weighted(&mut rng, PLATFORM_WEIGHTS, |(_, w)| *w).0;
            let item = &catalogue[rng.random_range(0..catalogue.len())];
            let &(currency, decimals, per_usd, _) = weighted(&mut rng, CURRENCIES, |c| c.3);
            let price = RawValue::from_string(local_price(item.usd_cents, decimals, per_usd))?;
            let at = anchor - Duration::seconds(rng.random_range(0..SPAN_DAYS * 86_400));
            let at = at.format(&Rfc3339).unwrap_or_default();
            let extras = rng.random_bool(0.2);
            serde_json::to_writer(
                &mut line,
                &Line {
                    transaction_id: &format!("{}-{seed:x}-{n:08}", platform.as_str()),
                    player_id: &format!("player-{seed:x}-{player:07}"),
                    platform: platform.as_str(),
                    item_id: &item.id,
                    item_name: &item.name,
                    item_type: item.item_type.as_str(),
                    price: &price,
                    currency,
                    purchased_at: &at,
                    region: extras.then(|| REGIONS[rng.random_range(0..REGIONS.len())]),
                    client: extras.then(|| CLIENTS[rng.random_range(0..CLIENTS.len())]),
                },
            )?;
            if recent.len() == REDELIVERY_WINDOW {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        line.push(b'\n');
        out.write_all(&line).map_err(|source| GenerateError::Write {
            path: "output".into(),
            source,
        })?;
        generated.lines += 1;
        generated.bytes += line.len() as u64;
        if generated.lines.is_multiple_of(10_000) {
            on_progress(generated.lines);
        }
    }
    on_progress(generated.lines);
    generated.players = players;
    Ok(generated)
}

fn catalogue(rng: &mut StdRng) -> Vec<CatalogueItem> {
    (0..CATALOGUE_ITEMS)
        .map(|i| {
            let &(item_type, _, cheapest, dearest) = weighted(rng, ITEM_TYPES, |t| t.1);
            let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
            let noun = NOUNS[rng.random_range(0..NOUNS.len())];
            // Prices end in 9, as stores price them.
            let usd_cents = rng.random_range(cheapest / 10..=dearest / 10) * 10 + 9;
            CatalogueItem {
                id: format!("{}-{i:04}", item_type.as_str().replace('_', "-")),
                name: format!("{adjective} {noun} ({})", item_type.as_str().replace('_', " ")),
                item_type,
                usd_cents,
            }
        })
        .collect()
}

/// The reference price in a currency, rounded to whole minor units and
/// written with exactly the currency's decimals: `19.99`, `3000`.
fn local_price(usd_cents: u64, decimals: u32, per_usd: f64) -> String {
    let major = usd_cents as f64 / 100.0 * per_usd;
    if decimals == 0 {
        // Whole-unit currencies price in round tens.
        return ((major / 10.0).round() as u64 * 10).max(10).to_string();
    }
    let minor = (major * 100.0).round() as u64;
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn weighted<'a, T>(rng: &mut StdRng, choices: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = choices.iter().map(&weight).sum();
    let mut pick = rng.random_range(0..total.max(1));
    for choice in choices {
        let w = weight(choice);
        if pick < w {
            return choice;
        }
        pick -= w;
    }
    &choices[choices.len() - 1]
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::ingest::record::parse_line;

    fn generate_in_memory(count: u64, seed: u64) -> (Vec<u8>, Generated) {
        let mut out = Vec::new();
        let generated = write_lines(count, seed, &mut out, |_| {}).unwrap();
        (out, generated)
    }

    #[test]
    fn every_generated_line_is_valid_and_the_shares_hold() {
        let (out, generated) = generate_in_memory(20_000, 7);
        let mut ids: HashMap<String, Vec<u8>> = HashMap::new();
        let mut repeats = 0;
        let mut returning = 0;
        let mut players_seen = HashSet::new();
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record = parse_line(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
            if let Some(earlier) = ids.insert(record.transaction_id.clone(), line.to_vec()) {
                assert_eq!(earlier, line, "a repeated id repeats its content");
                repeats += 1;
            } else if !players_seen.insert(record.player_id.clone()) {
                returning += 1;
            }
        }
        assert_eq!(generated.lines, 20_000);
        assert_eq!(generated.redeliveries, repeats);
        let share = |n: u64, of: u64| n as f64 / of as f64;
        assert!((0.04..0.06).contains(&share(repeats, 20_000)), "{repeats} repeats");
        let fresh = 20_000 - repeats;
        assert!((0.66..0.74).contains(&share(returning, fresh)), "{returning} returning");
        assert_eq!(generated.players as usize, players_seen.len());
    }

    #[test]
    fn same_seed_same_file_other_seed_other_ids() {
        let (a, _) = generate_in_memory(500, 1);
        let (b, _) = generate_in_memory(500, 1);
        let (c, _) = generate_in_memory(500, 2);
        assert_eq!(a, b);
        let ids = |out: &[u8]| -> HashSet<String> {
            out.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| parse_line(l).unwrap().transaction_id)
                .collect()
        };
        assert!(ids(&a).is_disjoint(&ids(&c)));
    }

    #[test]
    fn local_prices_have_the_currency_decimals() {
        assert_eq!(local_price(1999, 2, 1.0), "19.99");
        assert_eq!(local_price(1999, 0, 150.0), "3000");
        assert_eq!(local_price(49, 0, 150.0), "70");
        assert_eq!(local_price(999, 2, 0.92), "9.19");
    }
}
