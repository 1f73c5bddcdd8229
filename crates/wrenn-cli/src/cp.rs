//! `wrenn cp`: one file to or from a sandbox, streamed both ways (never held in memory).
//! Downloads go to a temp file beside the destination and are renamed into place, so an
//! interrupted copy never leaves a truncated file under the real name.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use reqwest::{Body, Method, Url};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::Global;
use crate::client::{Client, Need};
use crate::keys::seg;

#[derive(Debug, Args)]
pub struct CpArgs {
    #[command(flatten)]
    pub global: Global,
    /// LOCAL (`-` = stdin) or ID:/path.
    pub src: String,
    /// ID:/path or LOCAL (`-` = stdout).
    pub dst: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    Stdio,
    Local(PathBuf),
    Remote { id: String, path: String },
}

/// `ID:/abs/path` is remote (ID of `[a-z0-9_-]`, absolute path); `-` is stdin/stdout;
/// anything else is a local path (`./a:/b` stays local).
pub fn parse_loc(s: &str) -> Loc {
    if s == "-" {
        return Loc::Stdio;
    }
    if let Some((id, path)) = s.split_once(':')
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && path.starts_with('/')
    {
        return Loc::Remote {
            id: id.to_owned(),
            path: path.to_owned(),
        };
    }
    Loc::Local(PathBuf::from(s))
}

fn base_name(p: &str) -> Option<&str> {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
}

pub async fn run(args: CpArgs) -> anyhow::Result<()> {
    match (parse_loc(&args.src), parse_loc(&args.dst)) {
        (Loc::Remote { .. }, Loc::Remote { .. }) => {
            bail!("copy between sandboxes is not supported: download, then upload")
        }
        (src @ (Loc::Local(_) | Loc::Stdio), Loc::Remote { id, path }) => {
            let client = Client::new(&args.global, Need::Team)?;
            upload(&client, src, &id, &path).await
        }
        (Loc::Remote { id, path }, dst @ (Loc::Local(_) | Loc::Stdio)) => {
            let client = Client::new(&args.global, Need::Team)?;
            download(&client, &id, &path, dst).await
        }
        _ => {
            bail!("one side must be a sandbox path: ID:/path (e.g. wrenn cp ./a.txt ID:/tmp/a.txt)")
        }
    }
}

fn files_url(client: &Client, id: &str, path: &str) -> anyhow::Result<Url> {
    let mut url = client.url(&format!("v1/sandboxes/{}/files", seg(id)))?;
    url.query_pairs_mut().append_pair("path", path);
    Ok(url)
}

async fn upload(client: &Client, src: Loc, id: &str, path: &str) -> anyhow::Result<()> {
    let (body, name) = match &src {
        Loc::Local(p) => {
            let file = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("open {}", p.display()))?;
            if file.metadata().await?.is_dir() {
                bail!("{}: is a directory (only files can be copied)", p.display());
            }
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (Body::wrap_stream(ReaderStream::new(file)), name)
        }
        _ => (
            Body::wrap_stream(ReaderStream::new(tokio::io::stdin())),
            None,
        ),
    };
    // `ID:/dir/` means "into that directory, under the local name".
    let path = match (path.ends_with('/'), name) {
        (true, Some(n)) => format!("{path}{n}"),
        (true, None) => bail!("{path}: a file name is needed when copying from stdin"),
        (false, _) => path.to_owned(),
    };
    let rb = client
        .request(Method::PUT, files_url(client, id, &path)?)
        .header("content-type", "application/octet-stream")
        .body(body);
    client.send(rb).await?;
    Ok(())
}

async fn download(client: &Client, id: &str, path: &str, dst: Loc) -> anyhow::Result<()> {
    let resp = client
        .send(client.request(Method::GET, files_url(client, id, path)?))
        .await?;
    let mut stream = resp.bytes_stream();
    let Loc::Local(dst) = dst else {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.context("download")?).await?;
        }
        out.flush().await?;
        return Ok(());
    };
    let dst = if dst.is_dir() {
        match base_name(path) {
            Some(n) => dst.join(n),
            None => bail!("{path}: no file name to save under {}", dst.display()),
        }
    } else {
        dst
    };
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".wrenn-cp.")
        .tempfile_in(&dir)
        .with_context(|| format!("create a temp file in {}", dir.display()))?;
    let mut file = tokio::fs::File::from_std(tmp.as_file().try_clone()?);
    while let Some(chunk) = stream.next().await {
        // On error `tmp` is dropped, which deletes the partial file.
        file.write_all(&chunk.context("download")?).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    // Temp files are 0600; an overwritten file keeps its mode, a new one gets 0644.
    let mode = existing_mode(&dst).unwrap_or(0o644);
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.persist(&dst)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", dst.display()))?;
    Ok(())
}

fn existing_mode(p: &Path) -> Option<u32> {
    std::fs::metadata(p)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(parse_loc("-"), Loc::Stdio);
        assert_eq!(
            parse_loc("abc123:/tmp/x"),
            Loc::Remote {
                id: "abc123".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(parse_loc("./a:/b"), Loc::Local("./a:/b".into()));
        assert_eq!(parse_loc("abc:rel"), Loc::Local("abc:rel".into()));
        assert_eq!(parse_loc("/abs/file"), Loc::Local("/abs/file".into()));
        assert_eq!(parse_loc("Abc:/x"), Loc::Local("Abc:/x".into()));
        assert_eq!(base_name("/tmp/x.txt"), Some("x.txt"));
        assert_eq!(base_name("/tmp/dir/"), Some("dir"));
        assert_eq!(base_name("/"), None);
    }
}
