//! Sandbox states and the one transition table.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    Pending,
    Running,
    Paused,
    Stopped,
    Error,
    /// The host stopped answering; reversible when it comes back.
    Missing,
}

use SandboxStatus::*;

impl SandboxStatus {
    pub const ALL: [SandboxStatus; 6] = [Pending, Running, Paused, Stopped, Error, Missing];
    /// Sandboxes that are not over: what lists show unless asked otherwise. In [`Self::ALL`]
    /// order; the partial index `sandboxes_team_live` holds exactly these rows.
    pub const LIVE: [SandboxStatus; 4] = [Pending, Running, Paused, Missing];

    pub fn as_str(self) -> &'static str {
        match self {
            Pending => "pending",
            Running => "running",
            Paused => "paused",
            Stopped => "stopped",
            Error => "error",
            Missing => "missing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The transition table: the states a sandbox may move to `self` from. Every status
    /// change in the control plane is checked against this and nothing else.
    ///
    /// `stopped` is the only terminal state: a user may delete a sandbox in any other state
    /// (a paused one, one in `error` whose VM may still need removing, one whose host is
    /// `missing`, and a `pending` one whose create is still running: the create then finds
    /// the row stopped and destroys the VM it made).
    pub fn allowed_from(self) -> &'static [SandboxStatus] {
        match self {
            Pending => &[],
            Running => &[Pending, Paused, Missing],
            Paused => &[Running, Missing],
            Stopped => &[Pending, Running, Paused, Error, Missing],
            Error => &[Pending, Running, Paused, Missing],
            Missing => &[Running, Paused],
        }
    }

    pub fn can_transition(from: SandboxStatus, to: SandboxStatus) -> bool {
        to.allowed_from().contains(&from)
    }

    /// No transition leaves these.
    pub fn is_terminal(self) -> bool {
        Self::ALL
            .into_iter()
            .all(|to| !Self::can_transition(self, to))
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for SandboxStatus {
    type Error = super::DbError;
    fn try_from(s: String) -> Result<Self, super::DbError> {
        Self::parse(&s).ok_or_else(|| super::DbError::Corrupt(format!("sandbox status {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let allowed: Vec<(SandboxStatus, SandboxStatus)> = SandboxStatus::ALL
            .into_iter()
            .flat_map(|f| SandboxStatus::ALL.into_iter().map(move |t| (f, t)))
            .filter(|(f, t)| SandboxStatus::can_transition(*f, *t))
            .collect();
        let expected = [
            (Pending, Running),
            (Pending, Error),
            (Pending, Stopped),
            (Running, Paused),
            (Running, Stopped),
            (Running, Error),
            (Running, Missing),
            (Paused, Running),
            (Paused, Error),
            (Paused, Missing),
            (Paused, Stopped),
            (Error, Stopped),
            (Missing, Running),
            (Missing, Paused),
            (Missing, Error),
            (Missing, Stopped),
        ];
        let mut expected = expected.to_vec();
        let mut got = allowed.clone();
        got.sort_by_key(|(f, t)| (f.as_str(), t.as_str()));
        expected.sort_by_key(|(f, t)| (f.as_str(), t.as_str()));
        assert_eq!(got, expected);
        assert!(Stopped.is_terminal());
        for s in [Pending, Running, Paused, Error, Missing] {
            assert!(!s.is_terminal(), "{s} can still be deleted");
            assert!(SandboxStatus::can_transition(s, Stopped), "{s} -> stopped");
        }
        for s in SandboxStatus::ALL {
            assert_eq!(SandboxStatus::parse(s.as_str()), Some(s));
            assert!(
                !SandboxStatus::can_transition(s, s),
                "{s} -> {s} is not a transition"
            );
        }
    }
}
