//! Files in a sandbox, streamed both ways: no route holds a whole file in memory.
//!
//! Upload: the request body is cut into chunks of at most [`UPLOAD_CHUNK`] and fed to the
//! agent's `WriteFile` client stream as the agent takes them, so a slow guest slows the
//! client down instead of filling our memory. Download: `ReadFile` chunks become the response
//! body as they arrive. Operations run as the guest user `user` unless `?user=` says
//! otherwise.

use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use connectrpc::ConnectError;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::Instrument;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::write_file_request::{Meta, Msg};

use super::exec::span;
use super::guest::{self, DEFAULT_FILE_USER};
use super::running;
use super::ws::agent_stream;
use crate::api::State;
use crate::auth::extract::TeamAuth;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ids::SandboxId;

/// Largest `WriteFile` chunk (the agent's message limit is 4 MiB).
pub const UPLOAD_CHUNK: usize = 1024 * 1024;
/// Upload chunks are sent once this much arrived (fewer, larger messages than the client's
/// TCP reads), or when the body ends.
pub const UPLOAD_FLUSH: usize = 256 * 1024;
pub const DEFAULT_DEPTH: u32 = 1;
pub const MAX_DEPTH: u32 = 16;

/// `?path=&user=` of the file routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// Absolute guest path (at most 4096 characters, no NUL).
    #[param(pattern = "^/[^\\x00]*$", max_length = 4096)]
    pub path: String,
    /// Guest user; default `user`.
    #[param(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
}

impl FileQuery {
    fn checked(&self) -> Result<(String, String), ApiError> {
        Ok((
            guest::path("path", &self.path)?,
            guest::user_or(self.user.as_deref(), DEFAULT_FILE_USER)?,
        ))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Absolute guest path (at most 4096 characters, no NUL).
    #[param(pattern = "^/[^\\x00]*$", max_length = 4096)]
    pub path: String,
    /// Levels below `path` (1–16, default 1).
    #[param(minimum = 1, maximum = 16)]
    pub depth: Option<u32>,
    #[param(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirBody {
    /// Absolute guest path (at most 4096 characters, no NUL).
    #[schema(pattern = "^/[^\\x00]*$", max_length = 4096)]
    pub path: String,
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    /// `file`, `directory` or `symlink`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: i64,
    pub mode: u32,
    /// `ls -l` style, e.g. `-rw-r--r--`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    /// Unix milliseconds.
    pub modified_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<pb::FileEntry> for FileEntry {
    fn from(e: pb::FileEntry) -> Self {
        FileEntry {
            kind: match e.r#type.as_str() {
                "dir" => "directory",
                "symlink" => "symlink",
                _ => "file",
            },
            name: e.name,
            path: e.path,
            size: e.size,
            mode: e.mode,
            permissions: e.permissions,
            owner: e.owner,
            group: e.group,
            modified_at: e.modified_ms,
            symlink_target: (!e.symlink_target.is_empty()).then_some(e.symlink_target),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryList {
    pub entries: Vec<FileEntry>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryResponse {
    pub entry: FileEntry,
}

/// Cuts a byte stream into chunks of at most `max` bytes, merging pieces until `flush` bytes
/// are buffered. On a source error the error goes to `fault` and the stream then never ends:
/// ending it would make the agent commit a truncated file, so the caller drops the call.
pub fn chunked<S, E>(
    source: S,
    flush: usize,
    max: usize,
    fault: oneshot::Sender<E>,
) -> impl Stream<Item = Bytes> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    struct St<S, E> {
        source: Pin<Box<S>>,
        buf: BytesMut,
        fault: Option<oneshot::Sender<E>>,
        done: bool,
    }
    let st = St {
        source: Box::pin(source),
        buf: BytesMut::new(),
        fault: Some(fault),
        done: false,
    };
    futures::stream::unfold(st, move |mut st| async move {
        loop {
            if st.buf.len() >= flush || (st.done && !st.buf.is_empty()) {
                let n = st.buf.len().min(max);
                let out = st.buf.split_to(n).freeze();
                return Some((out, st));
            }
            if st.done {
                return None;
            }
            match st.source.next().await {
                Some(Ok(b)) => st.buf.extend_from_slice(&b),
                None => st.done = true,
                Some(Err(e)) => {
                    if let Some(f) = st.fault.take() {
                        let _ = f.send(e);
                    }
                    std::future::pending::<()>().await;
                }
            }
        }
    })
}

/// Writes the request body to a file (replacing it once the whole body arrived).
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files",
    tag = "sandboxes",
    operation_id = "upload_file",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "Bad path or user, or the body broke off", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the guest refused the request in the sandbox's current state (e.g. the path is a directory)", body = ErrorBody),
    )
)]
pub async fn upload(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<FileQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (path, user) = q.checked()?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let meta = pb::WriteFileRequest {
            msg: Some(Msg::Meta(Box::new(Meta {
                sandbox_id: id.as_str().to_owned(),
                path: path.clone(),
                user,
                ..Default::default()
            }))),
            ..Default::default()
        };
        let (fault_tx, mut fault_rx) = oneshot::channel();
        let chunks = chunked(
            body.into_data_stream(),
            UPLOAD_FLUSH,
            UPLOAD_CHUNK,
            fault_tx,
        )
        .map(|b| pb::WriteFileRequest {
            msg: Some(Msg::Chunk(b.into())),
            ..Default::default()
        });
        let requests = futures::stream::once(async { meta }).chain(chunks);
        // No deadline: a large upload takes as long as the client takes to send it.
        let call = agent
            .rpc()
            .write_file_with_options(requests, agent.opts_stream());
        let written = tokio::select! {
            r = call => r.map_err(|e| guest::refused(agent.err(e)))?.into_owned(),
            Ok(e) = &mut fault_rx => {
                // Dropping the call cancels it; the agent discards the partial file.
                tracing::info!(error = %e, "upload body broke off");
                return Err(ApiError::invalid_request("the request body broke off"));
            }
        };
        tracing::info!(path = %written.path, size = written.size, "file written");
        Ok(StatusCode::NO_CONTENT)
    }
    .instrument(span("file_upload", &id, &agent))
    .await
}

/// The file's bytes, streamed.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files",
    tag = "sandboxes",
    operation_id = "download_file",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"), FileQuery),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad path or user", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the guest refused the request in the sandbox's current state (e.g. the path is a directory)", body = ErrorBody),
    )
)]
pub async fn download(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    let (path, user) = q.checked()?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    let span = span("file_download", &id, &agent);
    async {
        let req = pb::ReadFileRequest {
            sandbox_id: id.as_str().to_owned(),
            path,
            user,
            ..Default::default()
        };
        let stream = agent
            .rpc()
            .read_file_with_options(req, agent.opts_stream())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?;
        let mut chunks = Box::pin(agent_stream!(stream));
        // The agent reports a missing file in the stream: wait for the first chunk so that
        // becomes a 4xx, not a 200 with a broken body.
        let first = match chunks.next().await {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => return Err(guest::refused(agent.err(e))),
            None => None,
        };
        let agent2 = agent.clone();
        let body = futures::stream::iter(first.map(Ok)).chain(chunks).map(
            move |r: Result<pb::ReadFileResponse, ConnectError>| {
                r.map(|m| Bytes::from(m.chunk)).map_err(|e| {
                    tracing::warn!(error = %e, "download broke off");
                    agent2.err(e)
                })
            },
        );
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from_stream(body))
            .map_err(ApiError::internal)
    }
    .instrument(span.clone())
    .await
}

/// Removes a file or a directory tree.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}/files",
    tag = "sandboxes",
    operation_id = "remove_path",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"), FileQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Bad path or user", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the guest refused the request in the sandbox's current state", body = ErrorBody),
    )
)]
pub async fn remove(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<StatusCode, ApiError> {
    let (path, user) = q.checked()?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let req = pb::RemovePathRequest {
            sandbox_id: id.as_str().to_owned(),
            path,
            user,
            ..Default::default()
        };
        agent
            .rpc()
            .remove_path_with_options(req, agent.opts())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?;
        Ok(StatusCode::NO_CONTENT)
    }
    .instrument(span("file_remove", &id, &agent))
    .await
}

/// Lists a directory.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/list",
    tag = "sandboxes",
    operation_id = "list_files",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"), ListQuery),
    responses(
        (status = 200, body = EntryList),
        (status = 400, description = "Bad path, depth or user", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox or directory", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the guest refused the request in the sandbox's current state (e.g. the path is not a directory)", body = ErrorBody),
    )
)]
pub async fn list(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<EntryList>, ApiError> {
    let path = guest::path("path", &q.path)?;
    let user = guest::user_or(q.user.as_deref(), DEFAULT_FILE_USER)?;
    let depth = match q.depth.unwrap_or(DEFAULT_DEPTH) {
        d @ 1..=MAX_DEPTH => d,
        _ => {
            return Err(ApiError::invalid_request(format!(
                "depth must be 1 to {MAX_DEPTH}"
            )));
        }
    };
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let req = pb::ListDirRequest {
            sandbox_id: id.as_str().to_owned(),
            path,
            depth,
            user,
            ..Default::default()
        };
        let r = agent
            .rpc()
            .list_dir_with_options(req, agent.opts())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?
            .into_owned();
        Ok(ApiJson(EntryList {
            entries: r.entries.into_iter().map(FileEntry::from).collect(),
        }))
    }
    .instrument(span("file_list", &id, &agent))
    .await
}

/// Creates a directory (and its parents).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/files/mkdir",
    tag = "sandboxes",
    operation_id = "make_dir",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    request_body = MkdirBody,
    responses(
        (status = 201, body = EntryResponse),
        (status = 400, description = "Bad path or user", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, the path exists, or the guest refused the request in the sandbox's current state", body = ErrorBody),
    )
)]
pub async fn mkdir(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<MkdirBody>,
) -> Result<(StatusCode, ApiJson<EntryResponse>), ApiError> {
    let path = guest::path("path", &body.path)?;
    let user = guest::user_or(body.user.as_deref(), DEFAULT_FILE_USER)?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let req = pb::MakeDirRequest {
            sandbox_id: id.as_str().to_owned(),
            path,
            user,
            ..Default::default()
        };
        let r = agent
            .rpc()
            .make_dir_with_options(req, agent.opts())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?
            .into_owned();
        let entry = r
            .entry
            .into_option()
            .ok_or_else(|| ApiError::internal("MakeDir answered without an entry"))?;
        Ok((
            StatusCode::CREATED,
            ApiJson(EntryResponse {
                entry: entry.into(),
            }),
        ))
    }
    .instrument(span("file_mkdir", &id, &agent))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(
        parts: Vec<Result<&'static [u8], &'static str>>,
    ) -> impl Stream<Item = Result<Bytes, &'static str>> + Send + 'static {
        futures::stream::iter(parts.into_iter().map(|r| r.map(Bytes::from_static)))
    }

    #[tokio::test]
    async fn chunks_are_bounded_and_complete() {
        let big: &'static [u8] = Box::leak(vec![7u8; 25].into_boxed_slice());
        let (tx, rx) = oneshot::channel();
        let out: Vec<Bytes> = chunked(source(vec![Ok(b"ab"), Ok(big), Ok(b"c")]), 8, 10, tx)
            .collect()
            .await;
        let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert!(lens.iter().all(|&n| n <= 10), "{lens:?}");
        assert_eq!(lens.iter().sum::<usize>(), 28);
        let joined: Vec<u8> = out.concat();
        assert_eq!(&joined[..2], b"ab");
        assert_eq!(joined[27], b'c');
        assert!(rx.await.is_err(), "no fault on a clean end");
    }

    #[tokio::test]
    async fn a_broken_source_never_ends_the_stream() {
        let (tx, rx) = oneshot::channel();
        let mut s = Box::pin(chunked(source(vec![Ok(b"abc"), Err("reset")]), 2, 10, tx));
        assert_eq!(s.next().await.unwrap(), Bytes::from_static(b"abc"));
        let next = tokio::time::timeout(std::time::Duration::from_millis(100), s.next()).await;
        assert!(next.is_err(), "the stream must not end after an error");
        assert_eq!(rx.await.unwrap(), "reset");
    }

    #[test]
    fn entry_kinds() {
        let e = |t: &str| {
            FileEntry::from(pb::FileEntry {
                r#type: t.into(),
                ..Default::default()
            })
            .kind
        };
        assert_eq!(
            (e("dir"), e("file"), e("symlink"), e("")),
            ("directory", "file", "symlink", "file")
        );
    }
}
