//! Decoding helpers for the `Any` driver.

use sqlx::any::{Any, AnyTypeInfo, AnyTypeInfoKind, AnyValueRef};
use sqlx::error::BoxDynError;
use sqlx::{Decode, Type, ValueRef as _};

/// A boolean column: PostgreSQL hands out BOOLEAN, SQLite an INTEGER 0/1, and `Any` decodes
/// `bool` only from the former. Models read it with `#[sqlx(try_from = "Flag")]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

impl Type<Any> for Flag {
    fn type_info() -> AnyTypeInfo {
        <bool as Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        ty.kind() == AnyTypeInfoKind::Bool || ty.kind().is_integer()
    }
}

impl<'r> Decode<'r, Any> for Flag {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        let is_bool = value.type_info().kind() == AnyTypeInfoKind::Bool;
        if is_bool {
            Ok(Flag(<bool as Decode<Any>>::decode(value)?))
        } else {
            Ok(Flag(<i64 as Decode<Any>>::decode(value)? != 0))
        }
    }
}

/// A JSON column stored as TEXT (the `Any` driver has no JSON type). Models read it with
/// `#[sqlx(try_from = "JsonText")]`.
#[derive(Debug, Clone)]
pub(super) struct JsonText(pub serde_json::Value);

impl From<JsonText> for serde_json::Value {
    fn from(j: JsonText) -> Self {
        j.0
    }
}

impl Type<Any> for JsonText {
    fn type_info() -> AnyTypeInfo {
        <String as Type<Any>>::type_info()
    }
}

impl<'r> Decode<'r, Any> for JsonText {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <String as Decode<Any>>::decode(value)?;
        Ok(JsonText(serde_json::from_str(&s)?))
    }
}

/// Builds SQL with `$n` placeholders whose count is only known at run time (IN lists,
/// metadata filters); the values are bound in the same order by the caller.
#[derive(Default)]
pub(super) struct Placeholders(usize);

impl Placeholders {
    pub fn starting_after(n: usize) -> Self {
        Self(n)
    }
    pub fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
    pub fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.next()).collect::<Vec<_>>().join(", ")
    }
}
