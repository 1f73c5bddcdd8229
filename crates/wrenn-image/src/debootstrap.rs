//! The Debian root tree, made by debootstrap and cached by what it depends on (suite,
//! variant, mirror, package list) under `<cache>/debootstrap/<key>/`, so only a changed
//! package list pays for it again.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cache::DebootstrapKey;
use crate::cmd;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{self, ScratchDir};
use crate::progress::Step;

/// Characters of the key used in directory names (64 bits: plenty for a local cache).
const KEY_CHARS: usize = 16;

/// A debootstrapped tree ready to copy.
#[derive(Debug)]
pub struct Tree {
    pub path: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
    pub log: PathBuf,
}

/// Where the tree for `key` lives (whether or not it exists yet).
pub fn tree_path(cache: &Path, key: &DebootstrapKey) -> PathBuf {
    let hash = key.hash();
    cache.join("debootstrap").join(&hash[..KEY_CHARS])
}

/// Returns the cached tree for `key`, running debootstrap first when there is none.
pub fn ensure(cache: &Path, key: &DebootstrapKey, step: &Step) -> Result<Tree> {
    let path = tree_path(cache, key);
    let log = path.with_extension("log");
    if path.is_dir() {
        return Ok(Tree {
            path,
            cached: true,
            log,
        });
    }
    let parent = path.parent().unwrap_or(cache);
    let scratch = ScratchDir::new_in(parent, ".tmp-")?;
    let target = scratch.path().join("root");
    let debs = cache.join("debs").join("debootstrap");
    fs::create_dir_all(&debs).ctx(|| format!("create {}", debs.display()))?;

    let mut command = Command::new("debootstrap");
    command
        .arg(format!("--variant={}", key.variant))
        .arg(format!("--include={}", key.packages.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(key.suite)
        .arg(&target)
        .arg(key.mirror)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    run_logged(&mut command, &log, step)?;

    // debootstrap unmounts what it mounted in the target; make sure before the tree is
    // copied around and eventually deleted.
    fsutil::unmount_under(&target)?;
    trim(&target)?;
    // A failed rename with the tree in place means another build finished it first.
    if let Err(e) = fs::rename(&target, &path)
        && !path.is_dir()
    {
        return Err(e).ctx(|| format!("rename {} to {}", target.display(), path.display()));
    }
    fsutil::fsync_dir(parent)?;
    scratch.remove()?;
    Ok(Tree {
        path,
        cached: false,
        log,
    })
}

/// Runs debootstrap with its whole output in `log`, showing its `I:` lines as the step's
/// status; on failure the error quotes the end of the log.
fn run_logged(command: &mut Command, log: &Path, step: &Step) -> Result<()> {
    let line = cmd::describe(command);
    let mut file = File::create(log).ctx(|| format!("create {}", log.display()))?;
    let _ = writeln!(file, "$ {line}");
    let (reader, writer) = std::io::pipe().ctx(|| "create a pipe".into())?;
    let writer2 = writer.try_clone().ctx(|| "clone a pipe".into())?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let mut child = command.spawn().ctx(|| format!("start `{line}`"))?;
    // The Command holds the pipe's write ends: without dropping them, reads never end.
    drop(std::mem::replace(command, Command::new("true")));

    let mut tail: Vec<String> = Vec::new();
    let mut retrieved = 0usize;
    for text in BufReader::new(reader).lines() {
        let Ok(text) = text else { break };
        let _ = writeln!(file, "{text}");
        if let Some(info) = text.strip_prefix("I: ") {
            if info.starts_with("Retrieving ") && !info.starts_with("Retrieving Release") {
                retrieved += 1;
            }
            step.status(&format!("{info} ({retrieved} packages fetched)"));
        }
        tail.push(text);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait().ctx(|| format!("wait for `{line}`"))?;
    let _ = file.sync_all();
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Debootstrap {
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: tail.join("\n"),
        })
    }
}

/// Drops what a template does not need: downloaded packages and apt's lists (`apt-get
/// update` inside a sandbox fetches fresh ones).
fn trim(root: &Path) -> Result<()> {
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = root.join(dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_file())
                && p.file_name().is_some_and(|n| n != "lock")
            {
                fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
            }
        }
    }
    Ok(())
}
