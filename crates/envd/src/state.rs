//! Shared envd state: the access token, the defaults set by `/init`, and the registries of
//! processes and watchers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use http::HeaderMap;

use crate::auth::{self, AuthError};
use crate::config::Config;
use crate::filesystem::Watchers;
use crate::process::ProcessManager;
use crate::reaper::Reaper;
use crate::users::User;

/// Defaults applied to every request that does not override them; `/init` changes them.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub user: String,
    pub workdir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

pub struct EnvdState {
    token: RwLock<Option<String>>,
    defaults: RwLock<Defaults>,
    /// `timestamp` of the last applied `/init`; older ones are ignored.
    last_init: RwLock<Option<time::OffsetDateTime>>,
    pub reaper: Reaper,
    pub processes: ProcessManager,
    pub watchers: Watchers,
    /// Keepalive interval used when the client sends no `Keepalive-Ping-Interval`.
    pub keepalive: Duration,
    /// Running as a VM guest's PID 1 (`Config::guest`).
    pub guest: bool,
}

impl EnvdState {
    pub fn new(config: &Config, reaper: Reaper) -> anyhow::Result<Self> {
        Ok(EnvdState {
            token: RwLock::new(None),
            defaults: RwLock::new(Defaults {
                user: config.default_user.clone(),
                workdir: config.default_workdir.clone(),
                env: BTreeMap::new(),
            }),
            last_init: RwLock::new(None),
            processes: ProcessManager::new(reaper.clone()),
            watchers: Watchers::default(),
            reaper,
            keepalive: Duration::from_secs(config.keepalive_secs.max(1)),
            guest: config.guest,
        })
    }

    pub fn access_token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_access_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    pub fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update_defaults(&self, f: impl FnOnce(&mut Defaults)) {
        f(&mut self.defaults.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records an `/init` timestamp; false when it is older than one already applied.
    pub fn accept_init_timestamp(&self, ts: Option<time::OffsetDateTime>) -> bool {
        let Some(ts) = ts else { return true };
        let mut last = self.last_init.write().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| ts < l) {
            return false;
        }
        *last = Some(ts);
        true
    }

    /// The user a request acts as: `Authorization: Basic base64(user:)`, else the default.
    pub fn request_user(&self, headers: &HeaderMap) -> Result<User, AuthError> {
        let name = auth::basic_user(headers)?;
        self.named_user(name.as_deref())
    }

    /// The named user, or the default user when `name` is `None` or empty.
    pub fn named_user(&self, name: Option<&str>) -> Result<User, AuthError> {
        let name = match name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => self.defaults().user,
        };
        User::lookup(&name).map_err(AuthError::User)
    }
}
