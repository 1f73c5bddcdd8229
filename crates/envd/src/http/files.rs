//! `GET /files`: streams a file from disk, optionally gzip-compressed. The request's
//! `path`/`username` query and user resolution are shared with the upload.

use std::sync::Arc;

use async_compression::tokio::bufread::GzipEncoder;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncReadExt, BufReader};
use tokio_util::io::ReaderStream;

use super::encoding::{self, Coding};
use super::error::ApiError;
use crate::paths;
use crate::state::EnvdState;
use crate::users::User;

/// Read size of file streams: large enough for throughput, small enough that memory per
/// transfer stays bounded.
pub const CHUNK: usize = 64 * 1024;

/// The `path` and `username` query parameters of `/files`.
#[derive(Debug, Default)]
pub struct FilesQuery {
    pub path: Option<String>,
    pub username: Option<String>,
}

impl FilesQuery {
    pub fn parse(uri: &Uri) -> Self {
        let mut q = FilesQuery::default();
        for (k, v) in crate::auth::form_urlencoded_pairs(uri.query().unwrap_or("")) {
            match k.as_str() {
                "path" => q.path = Some(v),
                "username" => q.username = Some(v),
                _ => {}
            }
        }
        q
    }

    /// The user the request acts as: `username`, else `Authorization: Basic`, else the
    /// default user.
    pub fn user(&self, state: &EnvdState, headers: &HeaderMap) -> Result<User, ApiError> {
        match self.username.as_deref().filter(|u| !u.is_empty()) {
            Some(name) => Ok(state.named_user(Some(name))?),
            None => Ok(state.request_user(headers)?),
        }
    }
}

pub async fn download(
    State(state): State<Arc<EnvdState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = FilesQuery::parse(&uri);
    let user = query.user(&state, &headers)?;
    let raw = query
        .path
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("missing 'path' query parameter"))?;
    let path = paths::resolve(raw, &user, None)?;
    let coding = encoding::negotiate(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "no acceptable content encoding: envd serves gzip and identity",
        )
    })?;

    // O_NONBLOCK so that opening a FIFO cannot hang the request; it has no effect on
    // reads of regular files, the only kind served.
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
        .map_err(|e| ApiError::io(path.display(), &e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::io(path.display(), &e))?;
    if meta.is_dir() {
        return Err(ApiError::bad_request(format!(
            "{} is a directory",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(ApiError::bad_request(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Serve exactly the length seen at open, so Content-Length holds if the file grows.
    let len = meta.len();
    let file = file.take(len);

    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(VARY, "accept-encoding")
        .header(CACHE_CONTROL, "no-store");
    if let Ok(v) = HeaderValue::from_str(&encoding::attachment(&name)) {
        response = response.header(CONTENT_DISPOSITION, v);
    }
    let body = match coding {
        Coding::Identity => {
            response = response.header(CONTENT_LENGTH, len);
            Body::from_stream(ReaderStream::with_capacity(file, CHUNK))
        }
        Coding::Gzip => {
            response = response.header(CONTENT_ENCODING, "gzip");
            let gz = GzipEncoder::new(BufReader::with_capacity(CHUNK, file));
            Body::from_stream(ReaderStream::with_capacity(gz, CHUNK))
        }
    };
    response
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
