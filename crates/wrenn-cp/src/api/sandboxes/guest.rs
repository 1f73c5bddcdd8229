//! Checks on what callers send into a sandbox (commands, paths, guest users, process tags and
//! selectors) before anything is relayed to the host agent, so a bad request is a 400 that
//! never reaches the guest.

use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::ids::random_bytes;

/// Longest guest path, in characters (the document's `maxLength` counts characters). Linux's
/// `PATH_MAX` is 4096 bytes: a longer path of multi-byte characters, like a name longer than
/// the guest's filesystem allows, is the guest's refusal ([`refused`]).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest command, argument, env name or value, in characters (as the document's
/// `maxLength`); the guest kernel's own limit (128 KiB per string) is its refusal.
pub const MAX_ARG_LEN: usize = 128 * 1024;
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV_VARS: usize = 1024;
/// Longest process or PTY tag.
pub const MAX_TAG_LEN: usize = 64;
/// Guest user of file operations when the request names none (the image's default user).
pub const DEFAULT_FILE_USER: &str = "user";

/// An absolute guest path: starts with `/`, at most [`MAX_PATH_LEN`] characters, no NUL
/// (the document's `pattern` and `maxLength`).
pub fn path(field: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid_request(format!("{field} is required")));
    }
    if !value.starts_with('/') {
        return Err(ApiError::invalid_request(format!(
            "{field} must be an absolute path"
        )));
    }
    if value.chars().count() > MAX_PATH_LEN {
        return Err(ApiError::invalid_request(format!(
            "{field} must be at most {MAX_PATH_LEN} characters"
        )));
    }
    if value.contains('\0') {
        return Err(ApiError::invalid_request(format!(
            "{field} must not contain NUL"
        )));
    }
    Ok(value.to_owned())
}

/// What [`tag`] accepts (with at most [`MAX_TAG_LEN`] characters): not only digits.
pub const TAG_PATTERN: &str = "^[A-Za-z0-9._-]*[A-Za-z._-][A-Za-z0-9._-]*$";

/// The guest's refusal of a request the control plane found well formed, as the API answers
/// it. Every rule of a request's form is checked here first (a 400 before anything reaches
/// the guest), so the guest's `invalid_argument` is about the sandbox's current state: a
/// directory where a file is expected, a `cwd` that does not exist, a name longer than the
/// guest's filesystem allows. That is a 409 with the guest's message.
pub fn refused(e: crate::agents::AgentError) -> ApiError {
    let state = e.code() == Some(connectrpc::ErrorCode::InvalidArgument);
    let api = ApiError::from(e);
    if state {
        ApiError::invalid_state(api.message().to_owned())
    } else {
        api
    }
}

/// A guest account name as `useradd` accepts it by default: `[a-z_][a-z0-9_-]{0,31}`
/// (a trailing `$` for machine accounts is not needed in a sandbox).
pub fn user(value: &str) -> Result<String, ApiError> {
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid_request(
            "user must be a guest account name ([a-z_][a-z0-9_-]{0,31})",
        ))
    }
}

/// The guest user of a request: validated when given, `default` otherwise.
pub fn user_or(value: Option<&str>, default: &str) -> Result<String, ApiError> {
    match value {
        Some(u) => user(u),
        None => Ok(default.to_owned()),
    }
}

/// A process or PTY tag: 1–64 of `[A-Za-z0-9._-]`, not all digits (a numeric selector is a
/// pid).
pub fn tag(value: &str) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TAG_LEN
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !value.bytes().all(|c| c.is_ascii_digit());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid_request(format!(
            "tag must be 1 to {MAX_TAG_LEN} of [A-Za-z0-9._-] and not only digits"
        )))
    }
}

/// `<prefix>-` + 8 random hex digits (`proc-…` for background processes, `pty-…` for PTYs).
pub fn new_tag(prefix: &str) -> Result<String, ApiError> {
    let mut b = [0u8; 4];
    random_bytes(&mut b).map_err(ApiError::internal)?;
    Ok(format!("{prefix}-{}", hex::encode(b)))
}

/// Which process a route names: a number is a pid, anything else a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

// The document states exactly what `parse` accepts: a pid (1 to 2^32 - 1) or a tag.
impl utoipa::PartialSchema for Selector {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some("A pid, or a process tag (not only digits)"))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1u32))
                    .maximum(Some(u32::MAX)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_TAG_LEN))
                    .pattern(Some(TAG_PATTERN)),
            )
            .into()
    }
}

impl utoipa::ToSchema for Selector {}

impl Selector {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
            return match value.parse::<u32>() {
                Ok(pid) if pid > 0 => Ok(Selector::Pid(pid)),
                _ => Err(ApiError::invalid_request(
                    "pid must be a positive 32-bit number",
                )),
            };
        }
        tag(value).map(Selector::Tag)
    }

    pub fn to_proto(&self) -> wrenn_proto::hostagent::v1::ProcessSelector {
        use wrenn_proto::hostagent::v1::process_selector::Selector as S;
        wrenn_proto::hostagent::v1::ProcessSelector {
            selector: Some(match self {
                Selector::Pid(p) => S::Pid(*p),
                Selector::Tag(t) => S::Tag(t.clone()),
            }),
            ..Default::default()
        }
    }
}

/// A string [`Command::new`] accepts as `cmd`, an argument or an env value: no NUL, at most
/// [`MAX_ARG_LEN`] characters.
fn arg_schema(min_length: usize) -> utoipa::openapi::schema::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length((min_length > 0).then_some(min_length))
        .max_length(Some(MAX_ARG_LEN))
        .pattern(Some("^[^\\x00]*$"))
        .build()
}

/// The document's `cmd`: what [`Command::new`] accepts.
pub fn cmd_schema() -> utoipa::openapi::schema::Object {
    arg_schema(1)
}

/// The document's `args` (optional, nullable): what [`Command::new`] accepts.
pub fn args_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(arg_schema(0))
        .max_items(Some(MAX_ARGS))
        .build()
}

/// The document's `env` (optional, nullable): names non-empty without `=`, what
/// [`Command::new`] accepts.
pub fn env_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_ARG_LEN))
                .pattern(Some("^[^=\\x00]+$")),
        ))
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::RefOr(
            arg_schema(0).into(),
        )))
        .max_properties(Some(MAX_ENV_VARS))
        .build()
}

/// A command to run: `cmd` plus optional args, env, cwd and user, checked as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Empty = envd's default (the user's home).
    pub cwd: String,
    /// Empty = the sandbox's default user.
    pub user: String,
}

fn arg(field: &str, v: &str) -> Result<(), ApiError> {
    if v.chars().count() > MAX_ARG_LEN {
        return Err(ApiError::invalid_request(format!(
            "{field} must be at most {MAX_ARG_LEN} characters"
        )));
    }
    if v.contains('\0') {
        return Err(ApiError::invalid_request(format!(
            "{field} must not contain NUL"
        )));
    }
    Ok(())
}

impl Command {
    pub fn new(
        cmd: &str,
        args: Option<Vec<String>>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<&str>,
        user: Option<&str>,
    ) -> Result<Self, ApiError> {
        if cmd.is_empty() {
            return Err(ApiError::invalid_request("cmd is required"));
        }
        arg("cmd", cmd)?;
        let args = args.unwrap_or_default();
        if args.len() > MAX_ARGS {
            return Err(ApiError::invalid_request(format!(
                "at most {MAX_ARGS} args"
            )));
        }
        for a in &args {
            arg("each arg", a)?;
        }
        let env = env.unwrap_or_default();
        if env.len() > MAX_ENV_VARS {
            return Err(ApiError::invalid_request(format!(
                "at most {MAX_ENV_VARS} env variables"
            )));
        }
        for (k, v) in &env {
            if k.is_empty() || k.contains('=') {
                return Err(ApiError::invalid_request(
                    "env names must be non-empty and contain no '='",
                ));
            }
            arg("env names and values", k)?;
            arg("env names and values", v)?;
        }
        let cwd = match cwd {
            Some(c) => path("cwd", c)?,
            None => String::new(),
        };
        let user = match user {
            Some(u) => self::user(u)?,
            None => String::new(),
        };
        Ok(Command {
            cmd: cmd.to_owned(),
            args,
            env,
            cwd,
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path("path", "/home/user/a b").unwrap(), "/home/user/a b");
        for bad in ["", "relative", "./x", "/a\0b"] {
            assert_eq!(path("path", bad).unwrap_err().status(), 400, "{bad:?}");
        }
        assert!(path("path", &format!("/{}", "a".repeat(MAX_PATH_LEN - 1))).is_ok());
        assert!(path("path", &format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
        // Characters, as the document's maxLength counts them.
        assert!(path("path", &format!("/{}", "é".repeat(MAX_PATH_LEN - 1))).is_ok());
        assert!(path("path", &format!("/{}", "é".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn users() {
        for ok in ["user", "root", "_svc", "a-b_1"] {
            assert!(user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "User", "1abc", "a b", "a/b", "../root", &"a".repeat(33)] {
            assert!(user(bad).is_err(), "{bad:?}");
        }
        assert_eq!(user_or(None, "user").unwrap(), "user");
        assert!(user_or(Some("x;y"), "user").is_err());
    }

    #[test]
    fn tags_and_selectors() {
        assert_eq!(Selector::parse("42").unwrap(), Selector::Pid(42));
        assert_eq!(
            Selector::parse("proc-1a2b").unwrap(),
            Selector::Tag("proc-1a2b".into())
        );
        for bad in ["0", "99999999999", "", "a/b", "a b", &"t".repeat(65)] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
        // A tag of digits only could never be selected: refuse it when it is set.
        assert!(tag("123").is_err());
        let t = new_tag("pty").unwrap();
        assert!(t.starts_with("pty-") && t.len() == 12, "{t}");
        assert!(tag(&t).is_ok());
        assert_ne!(t, new_tag("pty").unwrap());
    }

    #[test]
    fn commands() {
        let c = Command::new("echo", Some(vec!["hi".into()]), None, None, None).unwrap();
        assert_eq!(
            (c.cmd.as_str(), c.args.len(), c.user.as_str()),
            ("echo", 1, "")
        );
        assert!(Command::new("", None, None, None, None).is_err());
        assert!(Command::new("a\0", None, None, None, None).is_err());
        assert!(Command::new("x", Some(vec!["\0".into()]), None, None, None).is_err());
        let env = |k: &str| Some(BTreeMap::from([(k.to_owned(), "v".to_owned())]));
        assert!(Command::new("x", None, env("A"), None, None).is_ok());
        assert!(Command::new("x", None, env("A=B"), None, None).is_err());
        assert!(Command::new("x", None, env(""), None, None).is_err());
        assert!(Command::new("x", None, None, Some("rel"), None).is_err());
        assert!(Command::new("x", None, None, None, Some("Root")).is_err());
    }
}
