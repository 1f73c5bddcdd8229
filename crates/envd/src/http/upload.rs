//! `POST /files`: multipart or raw (`application/octet-stream`) uploads, optionally
//! gzip-encoded, streamed to a temporary file beside each target and renamed over it only
//! once the whole request has been received, so a failed upload leaves no target behind.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_compression::tokio::bufread::GzipDecoder;
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use futures::TryStreamExt;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};

use super::encoding::{self, Coding};
use super::error::ApiError;
use super::files::{CHUNK, FilesQuery};
use crate::paths;
use crate::state::EnvdState;
use crate::users::User;

/// Prefix of request headers carrying file metadata (`X-Metadata-<key>: <value>`).
const METADATA_HEADER_PREFIX: &str = "x-metadata-";
/// Extended-attribute namespace under which metadata is stored (`user.e2b.<key>`).
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// One uploaded file in the response (E2B's `EntryInfo` of the upload API).
#[derive(Debug, Serialize)]
pub struct UploadedFile {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

type BodyReader = Pin<Box<dyn AsyncRead + Send>>;

pub async fn upload(
    State(state): State<Arc<EnvdState>>,
    req: Request,
) -> Result<Json<Vec<UploadedFile>>, ApiError> {
    let (parts, body) = req.into_parts();
    let query = FilesQuery::parse(&parts.uri);
    let user = query.user(&state, &parts.headers)?;
    let metadata = metadata_headers(&parts.headers)?;
    let coding = encoding::request_coding(&parts.headers)
        .map_err(|m| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m))?;
    let reader = body_reader(body, coding);

    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("invalid"))
        .unwrap_or("application/octet-stream");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let pending = match essence.as_str() {
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(content_type)
                .map_err(|e| ApiError::bad_request(format!("invalid multipart request: {e}")))?;
            receive_multipart(reader, boundary, query.path.as_deref(), &user).await?
        }
        "application/octet-stream" => {
            let raw = query.path.as_deref().ok_or_else(|| {
                ApiError::bad_request("'path' query parameter is required for raw uploads")
            })?;
            vec![receive_raw(reader, raw, &user).await?]
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type '{other}': use multipart/form-data or application/octet-stream"
                ),
            ));
        }
    };

    let mut done = Vec::with_capacity(pending.len());
    for p in pending {
        done.push(p.commit(&user, &metadata).await?);
    }
    Ok(Json(done))
}

/// The request body as a byte stream, gzip-decoded when the client encoded it.
fn body_reader(body: Body, coding: Coding) -> BodyReader {
    let reader = StreamReader::new(body.into_data_stream().map_err(io::Error::other));
    match coding {
        Coding::Identity => Box::pin(reader),
        Coding::Gzip => {
            let mut gz = GzipDecoder::new(reader);
            // Like Go's gzip reader, accept concatenated members.
            gz.multiple_members(true);
            Box::pin(gz)
        }
    }
}

/// `X-Metadata-<key>` headers as a key → value map (keys lower-case, as HTTP/1.1 header
/// names are case-insensitive).
fn metadata_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() {
            return Err(ApiError::bad_request(
                "empty metadata key in X-Metadata- header",
            ));
        }
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| ApiError::bad_request(format!("metadata '{key}' is not valid UTF-8")))?;
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

async fn receive_raw(
    mut reader: BodyReader,
    raw_path: &str,
    user: &User,
) -> Result<PendingFile, ApiError> {
    let dest = paths::resolve(raw_path, user, None)?;
    let mut pending = PendingFile::create(dest, user).await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        if n == 0 {
            break;
        }
        pending.write(&buf[..n]).await?;
    }
    Ok(pending)
}

async fn receive_multipart(
    reader: BodyReader,
    boundary: String,
    path_param: Option<&str>,
    user: &User,
) -> Result<Vec<PendingFile>, ApiError> {
    let bad = |e: multer::Error| ApiError::bad_request(format!("invalid multipart body: {e}"));
    let mut form = multer::Multipart::new(ReaderStream::with_capacity(reader, CHUNK), boundary);
    let mut pending: Vec<PendingFile> = Vec::new();
    let mut targets = HashSet::new();
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        if field.name() != Some("file") {
            while field.chunk().await.map_err(bad)?.is_some() {}
            continue;
        }
        let raw = match path_param {
            Some(_) if !pending.is_empty() => {
                return Err(ApiError::bad_request(
                    "'path' names a single destination but the form has several file parts",
                ));
            }
            Some(p) => p.to_string(),
            None => field
                .file_name()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request("file part has no filename and no 'path' was given")
                })?
                .to_string(),
        };
        let dest = paths::resolve(&raw, user, None)?;
        if !targets.insert(dest.clone()) {
            return Err(ApiError::bad_request(format!(
                "several file parts target {}",
                dest.display()
            )));
        }
        let mut file = PendingFile::create(dest, user).await?;
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            file.write(&chunk).await?;
        }
        pending.push(file);
    }
    if pending.is_empty() {
        return Err(ApiError::bad_request(
            "multipart body has no part named 'file'",
        ));
    }
    Ok(pending)
}

/// An upload being received: a temporary file in the target's directory, deleted on drop
/// unless committed.
struct PendingFile {
    /// The resolved request path, reported back to the client.
    requested: PathBuf,
    /// Where the data lands: `requested` with a final symlink followed, so uploading to a
    /// symlink writes its target as writing through `open(O_TRUNC)` would.
    target: PathBuf,
    mode: u32,
    file: tokio::fs::File,
    tmp: tempfile::TempPath,
}

impl PendingFile {
    async fn create(requested: PathBuf, user: &User) -> Result<Self, ApiError> {
        let user = user.clone();
        tokio::task::spawn_blocking(move || Self::create_blocking(requested, &user))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    }

    fn create_blocking(requested: PathBuf, user: &User) -> Result<Self, ApiError> {
        let target = match std::fs::symlink_metadata(&requested) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::canonicalize(&requested).unwrap_or_else(|_| requested.clone())
            }
            _ => requested.clone(),
        };
        let (mode, dir) = match std::fs::metadata(&target) {
            Ok(m) if m.is_dir() => {
                return Err(ApiError::bad_request(format!(
                    "{} is a directory",
                    requested.display()
                )));
            }
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                (
                    m.permissions().mode() & 0o7777,
                    parent(&target)?.to_path_buf(),
                )
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = parent(&target)?.to_path_buf();
                create_parents(&dir, user)?;
                (0o644, dir)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(ApiError::bad_request(format!(
                    "a parent of {} is not a directory",
                    requested.display()
                )));
            }
            Err(e) => return Err(ApiError::io(requested.display(), &e)),
        };
        let (file, tmp) = tempfile::Builder::new()
            .prefix(".wrenn-upload-")
            .tempfile_in(&dir)
            .map_err(|e| ApiError::io(format!("create temporary file in {}", dir.display()), &e))?
            .into_parts();
        Ok(PendingFile {
            requested,
            target,
            mode,
            file: tokio::fs::File::from_std(file),
            tmp,
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ApiError::io(format!("write {}", self.requested.display()), &e))
    }

    /// Finishes the file: ownership, mode and metadata on the temporary file, then an
    /// atomic rename over the target.
    async fn commit(
        mut self,
        user: &User,
        metadata: &BTreeMap<String, String>,
    ) -> Result<UploadedFile, ApiError> {
        let requested = self.requested.clone();
        let io_err = move |what: &str, e: &io::Error| {
            ApiError::io(format!("{what} {}", requested.display()), e)
        };
        // tokio's File completes writes in the background; flush surfaces their errors.
        self.file.flush().await.map_err(|e| io_err("write", &e))?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        let metadata = metadata.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            let PendingFile {
                requested,
                target,
                mode,
                file,
                tmp,
            } = self;
            drop(file);
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                .map_err(|e| io_err("chown", &e))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_err("chmod", &e))?;
            for (k, v) in &metadata {
                xattr::set(&tmp, format!("{METADATA_XATTR_PREFIX}{k}"), v.as_bytes())
                    .map_err(|e| io_err(&format!("store metadata '{k}' on"), &e))?;
            }
            tmp.persist(&target).map_err(|e| {
                if e.error.raw_os_error() == Some(libc::EISDIR) {
                    ApiError::bad_request(format!("{} is a directory", requested.display()))
                } else {
                    io_err("rename onto", &e.error)
                }
            })?;
            Ok(UploadedFile {
                name: requested
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                kind: "file",
                path: requested.to_string_lossy().into_owned(),
                metadata: (!metadata.is_empty()).then_some(metadata),
            })
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    }
}

fn parent(path: &Path) -> Result<&Path, ApiError> {
    path.parent()
        .ok_or_else(|| ApiError::bad_request(format!("{} has no parent", path.display())))
}

/// Creates `dir` and its missing ancestors, each owned by `user`.
fn create_parents(dir: &Path, user: &User) -> Result<(), ApiError> {
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(ApiError::bad_request(format!(
                    "{} is not a directory",
                    cur.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                cur = parent(cur)?;
            }
            Err(e) => return Err(ApiError::io(cur.display(), &e)),
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {
                std::os::unix::fs::chown(d, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(|e| ApiError::io(format!("chown {}", d.display()), &e))?;
            }
            // Created concurrently by another request: fine if it is a directory.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(ApiError::io(format!("create {}", d.display()), &e)),
        }
    }
    Ok(())
}
