//! Who may call a route. Every route declares its [`Access`] beside its path
//! (`Route::new`), and the router checks it before the handler runs
//! ([`Gate::check`]), so no handler can forget to. The toolkit names no
//! feature: a scope is a string the feature chooses (`Access::service("…")`).
//!
//! Credentials, all as `Authorization: Bearer …`:
//! - a service key `<name>.<secret>`, listed in the keys file by its name,
//!   its scopes and the SHA-256 of the whole credential (never the plain
//!   credential). The credential carries its name so that lookup is by name;
//!   the comparison is constant-time and does the same work whether the
//!   name exists or not (an unknown name is compared against a dummy);
//! - a player token: a JWT (HS256 with the secret shared with the operator's
//!   backend, or EdDSA with its public key) whose `sub` is the player and
//!   `exp` its expiry, checked against the engine's clock;
//! - the admin token (`auth::AdminGuard`).
//!
//! Open mode (no keys file, no player-token secret) serves every route but
//! the admin ones to anyone, only when every listen address is loopback or
//! `STAMPEDE_AUTH=off` says so; otherwise the engine refuses to start.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::RequestError;
use super::auth::AdminGuard;
use super::route::Params;
use crate::clock::SharedClock;
use crate::config::{AccessConfig, ConfigError, Secret};

/// The scope of a service key that reads any player's data.
pub const READ_SCOPE: &str = "read";
/// The scope `/metrics` asks for when `STAMPEDE_METRICS_REQUIRE_KEY` is on.
pub const METRICS_SCOPE: &str = "metrics";
/// The query parameter a route declared with `Route::token_in_query` also
/// reads its bearer credential from (RFC 6750 §2.3): a browser's
/// `EventSource` cannot set headers.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";
/// Most lines a keys file may hold: keys are few (one per calling service),
/// and each name is a metric label.
const KEYS_MAX: usize = 1000;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a credential.
    Public,
    /// A service key with this scope.
    Service(&'static str),
    /// A service key with the `read` scope, or a player token. With `param`,
    /// the router checks the token's player is the one the path parameter
    /// names; without, it checks only that the token is valid and the
    /// handler compares the player with what it reads (`Caller::player`).
    Player { param: Option<&'static str> },
    /// The admin token.
    Admin,
}

impl Access {
    pub const fn service(scope: &'static str) -> Self {
        Self::Service(scope)
    }

    /// A player's own data, the player named by the path parameter `param`.
    pub const fn player(param: &'static str) -> Self {
        Self::Player { param: Some(param) }
    }

    /// A player's own data, which the handler compares with the token's
    /// player once it has read it (an order's buyer).
    pub const fn player_checked_by_handler() -> Self {
        Self::Player { param: None }
    }

    /// The declared access, as `GET /` shows it and tests read it.
    pub fn info(&self) -> AccessInfo {
        match *self {
            Access::Public => AccessInfo {
                kind: "public",
                scope: None,
                player_param: None,
            },
            Access::Service(scope) => AccessInfo {
                kind: "service",
                scope: Some(scope),
                player_param: None,
            },
            Access::Player { param } => AccessInfo {
                kind: "player",
                scope: Some(READ_SCOPE),
                player_param: param,
            },
            Access::Admin => AccessInfo {
                kind: "admin",
                scope: None,
                player_param: None,
            },
        }
    }
}

/// A route's access as data.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessInfo {
    /// `public`, `service` (a key with `scope`), `player` (a key with the
    /// `read` scope, or a token of the player) or `admin`.
    pub kind: &'static str,
    /// The scope a service key needs.
    pub scope: Option<&'static str>,
    /// For `player`: the path parameter naming the player, when the router
    /// compares it with the token's; null when the handler compares.
    pub player_param: Option<&'static str>,
}

/// Who called, as the router found it; in the request's extensions for the
/// handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A public route, or open mode.
    Anyone,
    /// A service key, by name.
    Key(&'static str),
    /// A player token, by player id.
    Player(String),
    Admin,
}

impl Caller {
    /// The player of a player token: the only one whose data it may read.
    pub fn player(&self) -> Option<&str> {
        match self {
            Caller::Player(id) => Some(id),
            _ => None,
        }
    }

    /// The metric label of the caller: a key's name (keys are few), never
    /// a secret nor a player id.
    pub fn label(&self) -> &'static str {
        match self {
            Caller::Anyone => "none",
            Caller::Key(name) => name,
            Caller::Player(_) => "player",
            Caller::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Line { path: String, line: usize, reason: String },
    #[error("{path}: more than {KEYS_MAX} keys")]
    TooMany { path: String },
}

/// One line of the keys file.
struct KeyLine {
    name: String,
    scopes: Vec<String>,
    hash: [u8; 32],
}

/// One key in force.
struct Key {
    name: &'static str,
    scopes: Vec<String>,
    hash: [u8; 32],
}

/// A key name: what a metric label and a log line may carry.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_scope(scope: &str) -> bool {
    (1..=32).contains(&scope.len()) && scope.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A new key: the credential to give the service (shown once) and the line
/// of the keys file, which holds only its hash.
pub struct NewKey {
    pub secret: String,
    pub line: String,
}

pub fn new_key(name: &str, scopes: &[String]) -> Result<NewKey, String> {
    if !valid_name(name) {
        return Err(format!(
            "key name {name:?}: 1 to 32 characters among a-z, 0-9, '-' and '_'"
        ));
    }
    if scopes.is_empty() || !scopes.iter().all(|s| valid_scope(s)) {
        return Err(format!(
            "scopes {scopes:?}: one or more of a-z and '_', separated by commas"
        ));
    }
    let random: [u8; 32] = rand::random();
    let secret = format!("{name}.{}", hex::encode(random));
    let line = format!("{name} {} {}", scopes.join(","), hex::encode(sha256(&secret)));
    Ok(NewKey { secret, line })
}

fn parse_keys(path: &str, text: &str) -> Result<Vec<KeyLine>, KeyFileError> {
    let mut keys: Vec<KeyLine> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| KeyFileError::Line {
            path: path.to_owned(),
            line: index + 1,
            reason: reason.to_owned(),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, hash] = fields[..] else {
            return Err(bad("expected `name scope,scope sha256-hex`"));
        };
        if !valid_name(name) {
            return Err(bad("the name takes 1 to 32 characters among a-z, 0-9, '-' and '_'"));
        }
        if keys.iter().any(|k| k.name == name) {
            return Err(bad("this name is listed twice"));
        }
        let scopes: Vec<String> = scopes.split(',').map(str::to_owned).collect();
        if !scopes.iter().all(|s| valid_scope(s)) {
            return Err(bad("scopes are a-z and '_', separated by commas"));
        }
        let mut digest = [0_u8; 32];
        hex::decode_to_slice(hash, &mut digest)
            .map_err(|_| bad("the hash is the SHA-256 of the secret in hex (64 characters), never the secret"))?;
        if keys.len() == KEYS_MAX {
            return Err(KeyFileError::TooMany { path: path.to_owned() });
        }
        keys.push(KeyLine {
            name: name.to_owned(),
            scopes,
            hash: digest,
        });
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// How player tokens are verified.
struct PlayerTokens {
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

/// What happened to a presented credential.
enum Checked {
    Key { name: &'static str, in_scope: bool },
    Player(String),
    Invalid,
}

/// Why [`Gate::reload_keys`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no keys file is configured (STAMPEDE_API_KEYS_FILE): nothing to reload")]
    NoKeysFile,
    #[error("{0}; the keys in force stay")]
    Invalid(#[from] ConfigError),
}

/// The keys in force. A panic elsewhere while the lock was held leaves the
/// map whole (it is only ever replaced), so a poisoned lock is read as is.
fn read(keys: &RwLock<Keys>) -> std::sync::RwLockReadGuard<'_, Keys> {
    keys.read().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the keys file: its keys, each with a scope some route asks for (a
/// typo would lock its service out). A name `previous` already holds keeps
/// its label, so reloading does not allocate a new one per key.
fn read_keys_file(path: &Path, scopes: &BTreeSet<&'static str>, previous: Option<&Keys>) -> Result<Keys, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| invalid("STAMPEDE_API_KEYS_FILE", &shown, e.to_string()))?;
    let lines = parse_keys(&shown, &text).map_err(|e| invalid("STAMPEDE_API_KEYS_FILE", &shown, e.to_string()))?;
    for key in &lines {
        if let Some(scope) = key
            .scopes
            .iter()
            .find(|s| !scopes.contains(s.as_str()) && *s != READ_SCOPE && *s != METRICS_SCOPE)
        {
            return Err(invalid(
                "STAMPEDE_API_KEYS_FILE",
                &shown,
                format!(
                    "key {}: no route asks for the scope {scope:?} (scopes: {}, {READ_SCOPE}, {METRICS_SCOPE})",
                    key.name,
                    scopes.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let mut keys = HashMap::new();
    for key in lines {
        // Names label metrics for the engine's whole life: each is made
        // 'static once (only from a file that is taken), and a reload
        // reuses the ones it already has.
        let name: &'static str = match previous.and_then(|p| p.get_key_value(key.name.as_str())) {
            Some((name, _)) => name,
            None => Box::leak(key.name.into_boxed_str()),
        };
        keys.insert(
            name,
            Key {
                name,
                scopes: key.scopes,
                hash: key.hash,
            },
        );
    }
    Ok(keys)
}

/// The service keys in force, by name.
type Keys = HashMap<&'static str, Key>;

/// The access check of every request.
pub struct Gate {
    /// `None`: open mode. Replaced whole by [`Gate::reload_keys`]; a request
    /// holds the read lock only while it compares its credential.
    keys: Option<RwLock<Keys>>,
    /// Where the keys are read from, and the scopes the routes ask for (a
    /// key with another scope is refused), for [`Gate::reload_keys`].
    keys_file: Option<PathBuf>,
    scopes: BTreeSet<&'static str>,
    dummy: Key,
    players: Option<PlayerTokens>,
    admin: AdminGuard,
    clock: SharedClock,
    metrics_require_key: bool,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("open", &self.is_open())
            .field("keys", &self.keys.as_ref().map(|keys| read(keys).len()))
            .field("player_tokens", &self.players.is_some())
            .finish()
    }
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl Gate {
    /// The gate of `config`. Refuses open mode unless every listen address
    /// is loopback or `STAMPEDE_AUTH=off`; refuses a key whose scope no
    /// route asks for (a typo would lock its service out).
    pub fn new(
        config: &AccessConfig,
        admin_token: Option<&Secret>,
        listen: &[SocketAddr],
        scopes: &BTreeSet<&'static str>,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        let dummy = Key {
            name: "",
            scopes: Vec::new(),
            hash: sha256("no key has this name"),
        };
        let admin = AdminGuard::new(admin_token);
        let configured = config.keys_file.is_some()
            || config.player_token_secret.is_some()
            || config.player_token_public_key.is_some();
        if config.off || !configured {
            if !config.off && !listen.iter().all(|a| a.ip().is_loopback()) {
                return Err(ConfigError::Missing {
                    var: "STAMPEDE_API_KEYS_FILE",
                    hint: "the engine listens beyond loopback and no service key nor player-token secret is \
                           configured: make keys with `stampede keys new --name <name> --scopes <scope,…>` and \
                           list them in STAMPEDE_API_KEYS_FILE (and set STAMPEDE_PLAYER_TOKEN_SECRET for player \
                           tokens), or listen on 127.0.0.1, or set STAMPEDE_AUTH=off to serve every route openly",
                });
            }
            return Ok(Self {
                keys: None,
                keys_file: None,
                scopes: scopes.clone(),
                dummy,
                players: None,
                admin,
                clock,
                metrics_require_key: false,
            });
        }
        let keys = match &config.keys_file {
            Some(path) => read_keys_file(path, scopes, None)?,
            None => HashMap::new(),
        };
        let mut player_keys = Vec::new();
        if let Some(secret) = &config.player_token_secret {
            let key = DecodingKey::from_secret(secret.expose().as_bytes())
                .map_err(|e| invalid("STAMPEDE_PLAYER_TOKEN_SECRET", "(hidden)", e.to_string()))?;
            player_keys.push((Algorithm::HS256, key));
        }
        if let Some(pem) = &config.player_token_public_key {
            let text = if pem.trim_start().starts_with("-----BEGIN") {
                pem.clone()
            } else {
                std::fs::read_to_string(pem.trim())
                    .map_err(|e| invalid("STAMPEDE_PLAYER_TOKEN_PUBLIC_KEY", pem, e.to_string()))?
            };
            let key = DecodingKey::from_ed_pem(text.as_bytes())
                .map_err(|e| invalid("STAMPEDE_PLAYER_TOKEN_PUBLIC_KEY", pem, e.to_string()))?;
            player_keys.push((Algorithm::EdDSA, key));
        }
        let players = (!player_keys.is_empty()).then(|| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.algorithms = player_keys.iter().map(|(alg, _)| *alg).collect();
            // Expiry is checked against the engine's clock (`check_token`).
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "sub"]);
            PlayerTokens {
                keys: player_keys,
                validation,
            }
        });
        Ok(Self {
            keys: Some(RwLock::new(keys)),
            keys_file: config.keys_file.clone(),
            scopes: scopes.clone(),
            dummy,
            players,
            admin,
            clock,
            metrics_require_key: config.metrics_require_key,
        })
    }

    /// Reads the keys file again and puts its keys in force at once, for
    /// every request that follows: a key is rotated without a restart. A
    /// file that does not read or parse, or names a scope no route asks
    /// for, changes nothing. Returns how many keys are in force.
    pub fn reload_keys(&self) -> Result<usize, ReloadError> {
        let (Some(keys), Some(path)) = (&self.keys, &self.keys_file) else {
            return Err(ReloadError::NoKeysFile);
        };
        let fresh = read_keys_file(path, &self.scopes, Some(&read(keys)))?;
        let count = fresh.len();
        *keys.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(count)
    }

    /// Open mode: no credential is asked for but the admin token.
    pub fn is_open(&self) -> bool {
        self.keys.is_none()
    }

    /// Whether `/metrics` takes a key with the `metrics` scope.
    pub fn metrics_require_key(&self) -> bool {
        self.metrics_require_key
    }

    /// Who may call a route of `access`, given the request: the caller, or
    /// the error the router answers instead of running the handler.
    pub fn check(
        &self,
        access: Access,
        parts: &Parts,
        params: &Params,
        token_in_query: bool,
    ) -> Result<Caller, RequestError> {
        match access {
            Access::Public => return Ok(Caller::Anyone),
            Access::Admin => return self.admin.check(parts).map(|()| Caller::Admin),
            Access::Service(_) | Access::Player { .. } => {}
        }
        if self.is_open() {
            return Ok(Caller::Anyone);
        }
        let presented = bearer(parts).or_else(|| token_in_query.then(|| query_token(parts)).flatten());
        let Some(presented) = presented else {
            return Err(RequestError::CredentialMissing);
        };
        match (access, self.verify(&presented, required_scope(access))) {
            (_, Checked::Invalid) => Err(RequestError::CredentialInvalid),
            (_, Checked::Key { name, in_scope: true }) => Ok(Caller::Key(name)),
            (Access::Player { param }, Checked::Player(player)) => {
                let allowed = match param {
                    None => true,
                    Some(param) => params.get(param).is_some_and(|raw| {
                        percent_encoding::percent_decode_str(raw)
                            .decode_utf8()
                            .is_ok_and(|p| p == player)
                    }),
                };
                if allowed {
                    Ok(Caller::Player(player))
                } else {
                    Err(RequestError::Forbidden)
                }
            }
            _ => Err(RequestError::Forbidden),
        }
    }

    /// What `presented` is; for a key, whether it has `scope`.
    fn verify(&self, presented: &str, scope: &str) -> Checked {
        // A JWT has three dot-separated parts; a key `<name>.<secret>` two.
        if presented.bytes().filter(|b| *b == b'.').count() == 2 {
            return self.check_token(presented);
        }
        let name = presented.split_once('.').map_or("", |(name, _)| name);
        let hash = sha256(presented);
        let Some(keys) = &self.keys else {
            return Checked::Invalid;
        };
        let keys = read(keys);
        let (key, known) = match keys.get(name) {
            Some(key) => (key, true),
            None => (&self.dummy, false),
        };
        if bool::from(hash.ct_eq(&key.hash)) && known {
            Checked::Key {
                name: key.name,
                in_scope: key.scopes.iter().any(|s| s == scope),
            }
        } else {
            Checked::Invalid
        }
    }

    fn check_token(&self, token: &str) -> Checked {
        let Some(players) = &self.players else {
            return Checked::Invalid;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Checked::Invalid;
        };
        let Some((_, key)) = players.keys.iter().find(|(alg, _)| *alg == header.alg) else {
            return Checked::Invalid;
        };
        let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, &players.validation) else {
            return Checked::Invalid;
        };
        let now_secs = self.clock.now_ms() / 1000;
        if data.claims.exp <= now_secs || data.claims.sub.is_empty() {
            return Checked::Invalid;
        }
        Checked::Player(data.claims.sub)
    }
}

/// The scope a key needs for `access`.
fn required_scope(access: Access) -> &'static str {
    match access {
        Access::Service(scope) => scope,
        Access::Player { .. } => READ_SCOPE,
        Access::Public | Access::Admin => "",
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn query_token(parts: &Parts) -> Option<String> {
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == ACCESS_TOKEN_PARAM)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// A player token signed with `secret` (HS256), for the operator's backend
/// in tests and tools.
pub fn player_token(secret: &str, player: &str, exp_secs: i64) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(Serialize)]
    struct Out<'a> {
        sub: &'a str,
        exp: i64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &Out {
            sub: player,
            exp: exp_secs,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?,
    )
}

/// The scopes a set of routes asks for.
pub fn scopes<'a>(accesses: impl IntoIterator<Item = &'a Access>) -> BTreeSet<&'static str> {
    accesses
        .into_iter()
        .filter_map(|a| match a {
            Access::Service(scope) => Some(*scope),
            _ => None,
        })
        .collect()
}

/// Shared so the router and its tests hold the same gate.
pub type SharedGate = Arc<Gate>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_found_by_its_line() {
        let key = new_key("shop", &["alpha".into(), "beta".into()]).expect("key");
        assert!(key.secret.starts_with("shop."));
        let keys = parse_keys("f", &format!("# comment\n\n{}\n", key.line)).expect("parses");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, "shop");
        assert_eq!(keys[0].scopes, ["alpha", "beta"]);
        assert_eq!(keys[0].hash, sha256(&key.secret));
        assert!(!key.line.contains(&key.secret[5..]), "the line never holds the secret");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for bad in [
            "shop alpha",
            "Shop alpha 00",
            "shop alpha nothex",
            "shop Alpha 0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let err = parse_keys("f", &format!("# c\n{bad}\n")).err().expect("refused");
            assert!(err.to_string().starts_with("f:2:"), "{err}");
        }
        let line = format!("a alpha {}", "0".repeat(64));
        assert!(parse_keys("f", &format!("{line}\n{line}\n")).is_err(), "a name twice");
        assert!(new_key("Bad Name", &["alpha".into()]).is_err());
        assert!(new_key("ok", &[]).is_err());
    }
}
