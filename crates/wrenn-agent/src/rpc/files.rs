//! Conversions for the file calls: envd entries as `FileEntry`, and the `WriteFile` client
//! stream as the byte stream of an upload.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use connectrpc::{ConnectError, InboundStream};
use futures::{Stream, StreamExt};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::write_file_request::{Meta, Msg};

use crate::envd_client::{EntryInfo, FileType};

pub fn file_entry(e: EntryInfo) -> pb::FileEntry {
    let kind = match e.r#type.as_known() {
        Some(FileType::FILE_TYPE_DIRECTORY) => "dir",
        Some(FileType::FILE_TYPE_SYMLINK) => "symlink",
        _ if e.is_symlink => "symlink",
        _ => "file",
    };
    let modified_ms = e
        .modified_time
        .as_option()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    pb::FileEntry {
        name: e.name,
        path: e.path,
        r#type: kind.to_string(),
        size: e.size,
        mode: e.mode,
        permissions: e.permissions,
        owner: e.owner,
        group: e.group,
        modified_ms,
        symlink_target: e.symlink_target.unwrap_or_default(),
        ..Default::default()
    }
}

/// Reads the `meta` that must open a `WriteFile` stream.
pub async fn first_meta(
    requests: &mut InboundStream<pb::WriteFileRequest>,
) -> Result<Meta, ConnectError> {
    let first = requests
        .next()
        .await
        .ok_or_else(|| ConnectError::invalid_argument("empty WriteFile stream: expected meta"))??
        .to_owned_message();
    match first.msg {
        Some(Msg::Meta(meta)) => Ok(*meta),
        _ => Err(ConnectError::invalid_argument(
            "the first WriteFile message must be meta",
        )),
    }
}

/// Where [`chunks`] leaves the error that broke the client stream, so the call fails with
/// the client's own error rather than a generic upload failure.
pub type StreamFault = Arc<Mutex<Option<ConnectError>>>;

/// The `chunk`s after `meta`, as upload bytes. A second `meta` or a broken client stream
/// fails the upload, which makes envd discard the partial file.
pub fn chunks(
    requests: InboundStream<pb::WriteFileRequest>,
    fault: StreamFault,
) -> impl Stream<Item = Result<Bytes, ConnectError>> + Send + 'static {
    requests.map(move |r| {
        let chunk = r.and_then(|m| match m.to_owned_message().msg {
            Some(Msg::Chunk(b)) => Ok(Bytes::from(b)),
            Some(Msg::Meta(_)) => Err(ConnectError::invalid_argument(
                "meta may only be the first WriteFile message",
            )),
            None => Ok(Bytes::new()),
        });
        if let Err(e) = &chunk {
            let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.clone());
        }
        chunk
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_kinds_and_times() {
        let e = EntryInfo {
            name: "d".into(),
            r#type: FileType::FILE_TYPE_DIRECTORY.into(),
            modified_time: buffa_types::google::protobuf::Timestamp {
                seconds: 2,
                nanos: 500_000_000,
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let f = file_entry(e);
        assert_eq!(f.r#type, "dir");
        assert_eq!(f.modified_ms, 2500);
    }
}
