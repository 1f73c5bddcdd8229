//! Files through envd: streamed `/files` transfers (never buffered whole) and the
//! `filesystem.Filesystem` calls for directories.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use serde::Deserialize;
use wrenn_proto::filesystem as fs;

pub use wrenn_proto::filesystem::{EntryInfo, FileType};

use super::{EnvdClient, EnvdError, UNARY_TIMEOUT, http_error};

/// Largest chunk `read_file` yields.
pub const READ_CHUNK: usize = 64 * 1024;

/// A file written by `write_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Absolute path envd resolved and wrote.
    pub path: String,
    /// Bytes sent.
    pub size: u64,
}

/// A file's content as a stream of chunks of at most [`READ_CHUNK`] bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, EnvdError>> + Send>>;

impl EnvdClient {
    fn files_url(&self, path: &str) -> Result<reqwest::Url, EnvdError> {
        let mut url = reqwest::Url::parse(&self.url("/files"))
            .map_err(|e| EnvdError::Protocol(format!("files URL: {e}")))?;
        url.query_pairs_mut().append_pair("path", path);
        Ok(url)
    }

    /// Writes `body` to `path` (as `user`), streaming it as a raw `POST /files`. envd
    /// replaces the target only once the whole body arrived.
    pub async fn write_file<S, E>(
        &self,
        path: &str,
        user: Option<&str>,
        body: S,
    ) -> Result<WrittenFile, EnvdError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let body = body.inspect_ok(move |b| {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        });
        let r = self
            .inner
            .http
            .post(self.files_url(path)?)
            .headers(self.auth_headers(user)?)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| {
                // A failing source surfaces as a send error; say so rather than blaming envd.
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    if let Some(inner) = s.downcast_ref::<E>() {
                        return EnvdError::Source(inner.to_string());
                    }
                    src = s.source();
                }
                EnvdError::from(e)
            })?;
        if !r.status().is_success() {
            return Err(http_error(r).await);
        }
        #[derive(Deserialize)]
        struct Uploaded {
            path: String,
        }
        let body = super::read_capped(r, super::SMALL_BODY_LIMIT, "/files upload").await?;
        let written: Vec<Uploaded> = serde_json::from_slice(&body)
            .map_err(|e| EnvdError::Protocol(format!("/files answer: {e}")))?;
        let path = written
            .into_iter()
            .next()
            .map(|u| u.path)
            .ok_or_else(|| EnvdError::Protocol("/files answered no file".into()))?;
        Ok(WrittenFile {
            path,
            size: sent.load(Ordering::Relaxed),
        })
    }

    /// Reads `path` (as `user`) as a stream of chunks (`GET /files`).
    pub async fn read_file(&self, path: &str, user: Option<&str>) -> Result<ByteStream, EnvdError> {
        let r = self
            .inner
            .http
            .get(self.files_url(path)?)
            .headers(self.auth_headers(user)?)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(http_error(r).await);
        }
        let stream = r
            .bytes_stream()
            .map_err(EnvdError::from)
            .map_ok(|b| futures::stream::iter(rechunk(b).into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(stream))
    }

    /// Lists `path` (as `user`) down to `depth` levels (0 = envd's default of 1).
    pub async fn list_dir(
        &self,
        path: &str,
        depth: u32,
        user: Option<&str>,
    ) -> Result<Vec<EntryInfo>, EnvdError> {
        let req = fs::ListDirRequest {
            path: path.to_string(),
            depth,
            ..Default::default()
        };
        let r = self
            .inner
            .fs
            .list_dir_with_options(req, self.call_options(user, Some(UNARY_TIMEOUT))?)
            .await?
            .into_owned();
        Ok(r.entries)
    }

    /// Creates a directory and its parents.
    pub async fn make_dir(&self, path: &str, user: Option<&str>) -> Result<EntryInfo, EnvdError> {
        let req = fs::MakeDirRequest {
            path: path.to_string(),
            ..Default::default()
        };
        let r = self
            .inner
            .fs
            .make_dir_with_options(req, self.call_options(user, Some(UNARY_TIMEOUT))?)
            .await?
            .into_owned();
        r.entry
            .into_option()
            .ok_or_else(|| EnvdError::Protocol("MakeDir answered no entry".into()))
    }

    /// Removes a file or a directory tree.
    pub async fn remove(&self, path: &str, user: Option<&str>) -> Result<(), EnvdError> {
        let req = fs::RemoveRequest {
            path: path.to_string(),
            ..Default::default()
        };
        self.inner
            .fs
            .remove_with_options(req, self.call_options(user, Some(UNARY_TIMEOUT))?)
            .await?;
        Ok(())
    }
}

/// Splits `b` into pieces of at most [`READ_CHUNK`] bytes (no copies).
fn rechunk(mut b: Bytes) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(b.len() / READ_CHUNK + 1);
    while b.len() > READ_CHUNK {
        out.push(b.split_to(READ_CHUNK));
    }
    if !b.is_empty() {
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rechunk_bounds_pieces() {
        let b = Bytes::from(vec![1u8; READ_CHUNK * 2 + 5]);
        let parts = rechunk(b);
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![READ_CHUNK, READ_CHUNK, 5]
        );
        assert!(rechunk(Bytes::new()).is_empty());
    }
}
