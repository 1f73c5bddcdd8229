//! Cursor pagination.
//!
//! Lists are ordered newest first by `(created_at, id)` (descending), which is stable: `id`
//! breaks ties between rows created in the same millisecond, and new rows land before the first
//! page instead of shifting later ones. The cursor is `<created_at>.<id>` of the last row
//! returned, in the clear (clients pass it back unchanged): its shape is then a pattern the
//! API document can state ([`CURSOR_PATTERN`]), and every string of that shape is accepted —
//! one that names no row just gives the rows after that point. Limits: default 100; anything outside
//! `1..=1000` is refused with [`DbError::InvalidLimit`] (the API answers 400) rather than
//! silently clamped, so a client never believes it received everything it asked for.

use serde::Serialize;

use super::error::DbError;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// What [`PageRequest::new`] accepts as a cursor: Unix milliseconds (at most 18 digits, so
/// any fits an i64) and an ID (every ID is `[a-z0-9-]`).
pub const CURSOR_PATTERN: &str = "^[0-9]{1,18}\\.[a-z0-9-]{1,64}$";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    /// `(created_at, id)` of the last row of the previous page.
    pub after: Option<(i64, String)>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl PageRequest {
    /// From the API's query parameters (`limit`, `cursor`), validating both.
    pub fn new(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, DbError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(DbError::InvalidLimit(limit));
        }
        let after = match cursor.filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_cursor(c)?),
            None => None,
        };
        Ok(Self { limit, after })
    }

    pub fn first(limit: u32) -> Result<Self, DbError> {
        Self::new(Some(limit), None)
    }

    /// Rows to fetch: one more than the limit tells whether another page exists.
    pub(super) fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// `LIMIT <fetch_limit>` as a literal (a number this type validated, never text). SQLite
    /// plans with the value of a bound LIMIT and so marks the statement to be prepared again
    /// whenever that parameter is bound, i.e. on every execution: a cached statement with
    /// `LIMIT $n` is parsed and planned anew each time.
    pub(super) fn limit_sql(&self) -> String {
        format!("LIMIT {}", self.fetch_limit())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A row that can be paged: its position in the `(created_at, id)` order.
pub(super) trait Keyed {
    fn key(&self) -> (i64, &str);
}

/// One page of a whole table, newest first: `SELECT {cols} FROM {table}` in `(created_at, id)`
/// order, from the request's cursor on.
pub(super) async fn whole_table<T>(
    pool: &sqlx::AnyPool,
    cols: &str,
    table: &str,
    req: &PageRequest,
) -> Result<Page<T>, DbError>
where
    T: Keyed + for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let (cursor_sql, after) = match &req.after {
        Some((at, id)) => (
            "WHERE (created_at, id) < ($2, $3)",
            Some((*at, id.as_str())),
        ),
        None => ("", None),
    };
    let sql = format!(
        "SELECT {cols} FROM {table} {cursor_sql} ORDER BY created_at DESC, id DESC LIMIT $1"
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(req.fetch_limit());
    if let Some((at, id)) = after {
        q = q.bind(at).bind(id);
    }
    Ok(finish(q.fetch_all(pool).await?, req))
}

pub(super) fn finish<T: Keyed>(mut rows: Vec<T>, req: &PageRequest) -> Page<T> {
    let limit = req.limit as usize;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| {
            let (at, id) = r.key();
            encode_cursor(at, id)
        })
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

pub fn encode_cursor(created_at: i64, id: &str) -> String {
    format!("{created_at}.{id}")
}

/// The inverse of [`encode_cursor`], exactly [`CURSOR_PATTERN`].
fn decode_cursor(c: &str) -> Result<(i64, String), DbError> {
    let (at, id) = c.split_once('.').ok_or(DbError::InvalidCursor)?;
    let at_ok = (1..=18).contains(&at.len()) && at.bytes().all(|b| b.is_ascii_digit());
    let id_ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(at_ok && id_ok) {
        return Err(DbError::InvalidCursor);
    }
    let at = at.parse::<i64>().map_err(|_| DbError::InvalidCursor)?;
    Ok((at, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(PageRequest::new(None, None).unwrap().limit, 100);
        assert_eq!(PageRequest::new(Some(1000), None).unwrap().limit, 1000);
        assert!(matches!(
            PageRequest::new(Some(0), None),
            Err(DbError::InvalidLimit(0))
        ));
        assert!(matches!(
            PageRequest::new(Some(1001), None),
            Err(DbError::InvalidLimit(1001))
        ));
        assert_eq!(PageRequest::first(100).unwrap().limit_sql(), "LIMIT 101");
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = encode_cursor(1_700_000_000_123, "key-0a1b");
        let r = PageRequest::new(None, Some(&c)).unwrap();
        assert_eq!(r.after, Some((1_700_000_000_123, "key-0a1b".to_owned())));
        for bad in [
            "***",
            "bm9kb3Q",
            "x.id",
            "1.",
            ".id",
            "1.ID",
            "1.a.b",
            "-1.id",
            "1234567890123456789.id",
            &format!("1.{}", "a".repeat(65)),
        ] {
            assert!(
                matches!(
                    PageRequest::new(None, Some(bad)),
                    Err(DbError::InvalidCursor)
                ),
                "{bad}"
            );
        }
        assert_eq!(PageRequest::new(None, Some("")).unwrap().after, None);
    }
}
