//! Configuration: `pgrealm.toml`, overridden by the environment (`PGREALM_<SECTION>_<KEY>`)
//! and then by the command line (`--set section.key=value`).
//!
//! Every key is known here, with its kind; an unknown key or an invalid value is an error naming
//! the key and what is allowed. Secrets (the PostgreSQL password) never appear in `Debug` output
//! or logs: use [`PostgresConfig::redacted_url`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::template::PathTemplate;

/// The file looked for in the working directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "pgrealm.toml";

/// The kind of a configuration value, to parse environment and command-line overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    StrList,
}

/// Every key of the file, by section. `custom_postgres_types` is a free-form table.
const KEYS: &[(&str, &str, Kind)] = &[
    ("postgres", "url", Kind::Str),
    ("postgres", "slot", Kind::Str),
    ("postgres", "publication", Kind::Str),
    ("realm", "data_dir", Kind::Str),
    ("realm", "listen", Kind::Str),
    ("realm", "url", Kind::Str),
    ("realm", "admin_token_file", Kind::Str),
    ("realm", "readable", Kind::StrList),
    ("realm", "log_retention", Kind::Int),
    ("sync", "reset_postgres_replication_slot", Kind::Bool),
    ("sync", "create_postgres_db", Kind::Bool),
    ("sync", "initialize_realm_from_postgres", Kind::Bool),
    ("sync", "apply_realm_schema_changes_to_postgres", Kind::Bool),
    ("sync", "realm_regex", Kind::Str),
    ("sync", "realm_path", Kind::Str),
];

/// The realm types a custom PostgreSQL type may convert as.
pub const CUSTOM_TYPE_TARGETS: &[&str] = &["string", "int", "float", "double", "bool", "date"];

/// Why the configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{message}", source_prefix(.origin), key_prefix(.key))]
pub struct ConfigError {
    /// Where the bad value came from: a file path, `environment`, or `command line`.
    pub origin: Option<String>,
    /// The key, as `section.key`.
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn source_prefix(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|s| format!("{s}: "))
        .unwrap_or_default()
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

impl ConfigError {
    fn new(source: Option<&str>, key: Option<&str>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: source.map(str::to_owned),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// `[postgres]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL (`postgres://user:password@host:port/db?sslmode=require`).
    pub url: Option<String>,
    /// Logical replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            slot: "pgrealm".into(),
            publication: "pgrealm".into(),
        }
    }
}

impl PostgresConfig {
    /// The URL with any password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> Option<String> {
        self.url.as_deref().map(redact_url)
    }
}

/// Replace the password of a `postgres://user:password@host/db` URL (and a `password=` query
/// parameter) with `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let after = scheme_end + 3;
        if let Some(at) = out[after..].find('@').map(|i| i + after) {
            if let Some(colon) = out[after..at].find(':').map(|i| i + after) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    if let Some(p) = out.find("password=") {
        let start = p + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |i| i + start);
        out.replace_range(start..end, "***");
    }
    out
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

/// `[realm]`: the object server, embedded (default) or remote.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealmConfig {
    /// Data directory of the embedded object server.
    pub data_dir: PathBuf,
    /// Address the object server listens on.
    pub listen: String,
    /// URL of a remote object server (instead of the embedded one).
    pub url: Option<String>,
    /// File holding the remote server's admin token.
    pub admin_token_file: Option<PathBuf>,
    /// Regexes of realm paths every signed-in user may read.
    pub readable: Vec<String>,
    /// How many versions of each realm's change log are kept.
    pub log_retention: u64,
}

impl Default for RealmConfig {
    fn default() -> Self {
        RealmConfig {
            data_dir: PathBuf::from("./pgrealm-data"),
            listen: "127.0.0.1:9080".into(),
            url: None,
            admin_token_file: None,
            readable: Vec::new(),
            log_retention: 100_000,
        }
    }
}

/// `[sync]`: the options of the original adapter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Drop and recreate the slot and the engine's checkpoint at start.
    pub reset_postgres_replication_slot: bool,
    /// Create the database and its tables when missing.
    pub create_postgres_db: bool,
    /// Load the realms from PostgreSQL's current contents at first start.
    pub initialize_realm_from_postgres: bool,
    /// Extend PostgreSQL's schema when a realm's schema grows.
    pub apply_realm_schema_changes_to_postgres: bool,
    /// Which realms sync to PostgreSQL.
    pub realm_regex: String,
    /// Which realm a row belongs to (`/{user_id}/myRealm` reads column `user_id`).
    pub realm_path: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            reset_postgres_replication_slot: false,
            create_postgres_db: true,
            initialize_realm_from_postgres: false,
            apply_realm_schema_changes_to_postgres: true,
            realm_regex: "^/myRealm$".into(),
            realm_path: "/myRealm".into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[postgres]`.
    pub postgres: PostgresConfig,
    /// `[realm]`.
    pub realm: RealmConfig,
    /// `[sync]`.
    pub sync: SyncConfig,
    /// `[custom_postgres_types]`: PostgreSQL type name → realm type (`mood = "string"`).
    pub custom_postgres_types: BTreeMap<String, String>,
}

impl Config {
    /// Load the configuration: the file at `path`, or `pgrealm.toml` in the working directory if
    /// present, or the defaults; then environment variables (read through `env`, so tests need
    /// not touch the process environment); then `overrides` (`section.key=value`).
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let (text, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new(
                        Some(&p.display().to_string()),
                        None,
                        format!("cannot read the configuration file: {e}"),
                    )
                })?;
                (text, Some(p.display().to_string()))
            }
            None if Path::new(DEFAULT_FILE).exists() => {
                let text = std::fs::read_to_string(DEFAULT_FILE).map_err(|e| {
                    ConfigError::new(Some(DEFAULT_FILE), None, format!("cannot read: {e}"))
                })?;
                (text, Some(DEFAULT_FILE.to_owned()))
            }
            None => (String::new(), None),
        };
        Config::from_parts(&text, source.as_deref(), env, overrides)
    }

    /// Parse `text` (a TOML document) and apply environment and command-line overrides.
    pub fn from_parts(
        text: &str,
        source: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let file_label = source.unwrap_or("configuration");
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            ConfigError::new(
                Some(file_label),
                None,
                e.message().to_owned() + &location(text, &e),
            )
        })?;
        check_known_keys(&table, file_label)?;

        for &(section, key, kind) in KEYS {
            let var = format!("PGREALM_{}_{}", section.to_uppercase(), key.to_uppercase());
            if let Some(raw) = env(&var) {
                let value = parse_override(kind, &raw).map_err(|m| {
                    ConfigError::new(
                        Some(&format!("environment {var}")),
                        Some(&format!("{section}.{key}")),
                        m,
                    )
                })?;
                set(&mut table, section, key, value);
            }
        }
        for o in overrides {
            let (path, raw) = o.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    Some("command line"),
                    None,
                    format!("`--set {o}` needs the form section.key=value"),
                )
            })?;
            let (section, key) = path.trim().split_once('.').ok_or_else(|| {
                ConfigError::new(
                    Some("command line"),
                    Some(path),
                    "name the key as section.key (for example sync.realm_regex)",
                )
            })?;
            let value = if section == "custom_postgres_types" {
                toml::Value::String(raw.to_owned())
            } else {
                let kind = KEYS
                    .iter()
                    .find(|(s, k, _)| *s == section && *k == key)
                    .map(|(_, _, kind)| *kind)
                    .ok_or_else(|| {
                        ConfigError::new(Some("command line"), Some(path), unknown_key_message())
                    })?;
                parse_override(kind, raw)
                    .map_err(|m| ConfigError::new(Some("command line"), Some(path), m))?
            };
            set(&mut table, section, key, value);
        }

        let config: Config = table.try_into().map_err(|e: toml::de::Error| {
            ConfigError::new(Some(file_label), None, e.message().to_owned())
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::new(Some(file_label), Some(&key), message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if let Some(url) = &self.postgres.url {
            tokio_postgres::Config::from_str(url).map_err(|e| {
                (
                    "postgres.url".into(),
                    format!(
                        "{:?} is not a PostgreSQL URL ({e}); write postgres://user:password@host:5432/database",
                        redact_url(url)
                    ),
                )
            })?;
        }
        for (key, name) in [
            ("postgres.slot", &self.postgres.slot),
            ("postgres.publication", &self.postgres.publication),
        ] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err((
                    key.into(),
                    format!(
                        "{name:?} is not allowed: use 1 to 63 lowercase letters, digits and `_`"
                    ),
                ));
            }
        }
        SocketAddr::from_str(&self.realm.listen).map_err(|_| {
            (
                "realm.listen".into(),
                format!(
                    "{:?} is not an address: write host:port, for example 127.0.0.1:9080",
                    self.realm.listen
                ),
            )
        })?;
        if self.realm.log_retention == 0 {
            return Err((
                "realm.log_retention".into(),
                "must be at least 1 version".into(),
            ));
        }
        for r in &self.realm.readable {
            regex::Regex::new(r)
                .map_err(|e| ("realm.readable".into(), format!("invalid regex {r:?}: {e}")))?;
        }
        regex::Regex::new(&self.sync.realm_regex).map_err(|e| {
            (
                "sync.realm_regex".into(),
                format!("invalid regex {:?}: {e}", self.sync.realm_regex),
            )
        })?;
        PathTemplate::parse(&self.sync.realm_path)
            .map_err(|e| ("sync.realm_path".into(), e.to_string()))?;
        for (pg_type, realm_type) in &self.custom_postgres_types {
            if !CUSTOM_TYPE_TARGETS.contains(&realm_type.as_str()) {
                return Err((
                    format!("custom_postgres_types.{pg_type}"),
                    format!(
                        "{realm_type:?} is not a realm type; allowed: {}",
                        CUSTOM_TYPE_TARGETS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The realm path template of `sync.realm_path` (validated at load).
    pub fn realm_path_template(&self) -> PathTemplate {
        PathTemplate::parse(&self.sync.realm_path).expect("validated when the configuration loaded")
    }
}

fn unknown_key_message() -> String {
    let mut allowed: Vec<String> = KEYS.iter().map(|(s, k, _)| format!("{s}.{k}")).collect();
    allowed.push("custom_postgres_types.<type>".into());
    format!("unknown key; allowed keys are: {}", allowed.join(", "))
}

fn check_known_keys(table: &toml::Table, source: &str) -> Result<(), ConfigError> {
    for (section, value) in table {
        if section == "custom_postgres_types" {
            let Some(t) = value.as_table() else {
                return Err(ConfigError::new(
                    Some(source),
                    Some(section),
                    "must be a table such as [custom_postgres_types] mood = \"string\"",
                ));
            };
            for (k, v) in t {
                if !v.is_str() {
                    return Err(ConfigError::new(
                        Some(source),
                        Some(&format!("{section}.{k}")),
                        format!(
                            "must be a string naming a realm type: {}",
                            CUSTOM_TYPE_TARGETS.join(", ")
                        ),
                    ));
                }
            }
            continue;
        }
        if !KEYS.iter().any(|(s, _, _)| s == section) {
            return Err(ConfigError::new(
                Some(source),
                Some(section),
                "unknown section; allowed sections are [postgres], [realm], [sync], [custom_postgres_types]",
            ));
        }
        let Some(t) = value.as_table() else {
            return Err(ConfigError::new(
                Some(source),
                Some(section),
                "must be a [section] table",
            ));
        };
        for (k, v) in t {
            let path = format!("{section}.{k}");
            let Some((_, _, kind)) = KEYS.iter().find(|(s, key, _)| s == section && key == k)
            else {
                return Err(ConfigError::new(
                    Some(source),
                    Some(&path),
                    unknown_key_message(),
                ));
            };
            let ok = match kind {
                Kind::Str => v.is_str(),
                Kind::Bool => v.is_bool(),
                Kind::Int => v.as_integer().is_some_and(|i| i >= 0),
                Kind::StrList => v
                    .as_array()
                    .is_some_and(|a| a.iter().all(toml::Value::is_str)),
            };
            if !ok {
                return Err(ConfigError::new(
                    Some(source),
                    Some(&path),
                    kind_message(*kind, v),
                ));
            }
        }
    }
    Ok(())
}

fn kind_message(kind: Kind, got: &toml::Value) -> String {
    let want = match kind {
        Kind::Str => "a string",
        Kind::Bool => "true or false",
        Kind::Int => "a non-negative integer",
        Kind::StrList => "a list of strings",
    };
    format!("expected {want}, found {}", got.type_str())
}

fn parse_override(kind: Kind, raw: &str) -> Result<toml::Value, String> {
    match kind {
        Kind::Str => Ok(toml::Value::String(raw.to_owned())),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not a boolean: use true or false")),
        },
        Kind::Int => raw
            .trim()
            .parse::<u32>()
            .map(|i| toml::Value::Integer(i.into()))
            .map_err(|_| format!("{raw:?} is not a non-negative integer")),
        Kind::StrList => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        )),
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(t) = entry.as_table_mut() {
        t.insert(key.to_owned(), value);
    }
}

fn location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_documented_file_loads() {
        let text = r#"
[postgres]
url = "postgres://user:secret@127.0.0.1:5432/transit"
slot = "pgrealm"
publication = "pgrealm"
[realm]
data_dir = "./pgrealm-data"
listen = "127.0.0.1:9080"
[sync]
reset_postgres_replication_slot = false
create_postgres_db = true
initialize_realm_from_postgres = false
apply_realm_schema_changes_to_postgres = true
realm_regex = "^/myRealm$"
realm_path = "/myRealm"
[custom_postgres_types]
mood = "string"
"#;
        let c = Config::from_parts(text, Some("pgrealm.toml"), no_env, &[]).unwrap();
        assert_eq!(c.custom_postgres_types["mood"], "string");
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret"), "the password leaked: {debug}");
        assert!(debug.contains("***"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = Config::from_parts(
            "[sync]\nrealm_regexp = \"x\"\n",
            Some("pgrealm.toml"),
            no_env,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pgrealm.toml: sync.realm_regexp: unknown key"),
            "{err}"
        );
        assert!(err.contains("sync.realm_regex"), "{err}");

        let err = Config::from_parts("[sync]\ncreate_postgres_db = \"yes\"\n", None, no_env, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sync.create_postgres_db: expected true or false, found string"),
            "{err}"
        );

        let err = Config::from_parts("[sync]\nrealm_regex = \"(\"\n", None, no_env, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sync.realm_regex: invalid regex"), "{err}");

        let err = Config::from_parts(
            "[custom_postgres_types]\nmood = \"emotion\"\n",
            None,
            no_env,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("custom_postgres_types.mood"), "{err}");

        let err = Config::from_parts("[sync\n", Some("x.toml"), no_env, &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.toml: "), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn environment_then_command_line_override_the_file() {
        let env = |k: &str| match k {
            "PGREALM_POSTGRES_URL" => Some("postgres://a@127.0.0.1/db".to_owned()),
            "PGREALM_SYNC_CREATE_POSTGRES_DB" => Some("false".to_owned()),
            "PGREALM_SYNC_REALM_PATH" => Some("/{user_id}/myRealm".to_owned()),
            _ => None,
        };
        let c = Config::from_parts(
            "[sync]\ncreate_postgres_db = true\n",
            None,
            env,
            &["sync.realm_path=/{owner}/r".to_owned()],
        )
        .unwrap();
        assert_eq!(c.postgres.url.as_deref(), Some("postgres://a@127.0.0.1/db"));
        assert!(!c.sync.create_postgres_db);
        assert_eq!(c.sync.realm_path, "/{owner}/r");
        assert_eq!(c.realm_path_template().captures(), ["owner"]);

        let bad = |k: &str| (k == "PGREALM_SYNC_CREATE_POSTGRES_DB").then(|| "maybe".to_owned());
        let err = Config::from_parts("", None, bad, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment PGREALM_SYNC_CREATE_POSTGRES_DB"),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:1/d"),
            "postgres://u:***@h:1/d"
        );
        assert_eq!(
            redact_url("postgres://u@h/d?password=pw&x=1"),
            "postgres://u@h/d?password=***&x=1"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
    }
}
