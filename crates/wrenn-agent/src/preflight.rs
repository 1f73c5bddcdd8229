//! What the agent checks before it registers or serves anything: it runs as root, every host
//! program it drives is there and runs (each named with the Debian package that brings it),
//! and the kernel can make a sandbox's network. A host that fails any of these would accept
//! sandboxes and then fail every create, so the agent refuses to start instead.
//!
//! The programs are resolved once to absolute paths (`$PATH` plus the sbin directories a
//! non-login root shell may lack) and every later call uses those paths ([`path`]).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::Command;

use crate::network::Network;

/// A host program the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The VMM: `qemu-system-x86_64` (its `microvm` machine).
    Qemu,
    /// Disk overlays: `qemu-img`.
    QemuImg,
    /// Firewall and NAT rules: `nft`.
    Nft,
}

impl Tool {
    pub const ALL: [Tool; 3] = [Tool::Qemu, Tool::QemuImg, Tool::Nft];

    pub fn command(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-x86_64",
            Tool::QemuImg => "qemu-img",
            Tool::Nft => "nft",
        }
    }

    /// The Debian package that installs it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-x86",
            Tool::QemuImg => "qemu-utils",
            Tool::Nft => "nftables",
        }
    }

    /// An environment variable naming the program's path, for hosts that keep it elsewhere.
    fn env_override(self) -> &'static str {
        match self {
            Tool::Qemu => "WRENN_QEMU",
            Tool::QemuImg => "WRENN_QEMU_IMG",
            Tool::Nft => "WRENN_NFT",
        }
    }

    /// Arguments of a quick run that proves the program works, and what its output must say.
    fn smoke(self) -> (&'static [&'static str], Option<&'static str>) {
        match self {
            // The machine the agent boots must be compiled in.
            Tool::Qemu => (&["-machine", "help"], Some("microvm")),
            Tool::QemuImg => (&["--version"], None),
            Tool::Nft => (&["--version"], None),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static RESOLVED: OnceLock<[PathBuf; 3]> = OnceLock::new();

/// The program to run for `tool`: the path [`check`] resolved, else the environment override,
/// else the bare name (library use and tests without a preflight).
pub fn path(tool: Tool) -> PathBuf {
    if let Some(paths) = RESOLVED.get() {
        return paths[tool.index()].clone();
    }
    std::env::var_os(tool.env_override())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(tool.command()))
}

/// Directories searched after `$PATH`: `nft` lives in /usr/sbin, which `su` without `-` and
/// some service managers leave out.
const SBIN_DIRS: &str = "/usr/local/sbin:/usr/sbin:/sbin";

fn search_path() -> OsString {
    let mut p = std::env::var_os("PATH").unwrap_or_default();
    if !p.is_empty() {
        p.push(":");
    }
    p.push(SBIN_DIRS);
    p
}

/// Finds `tool` (its override as given, else on the search path).
fn resolve(tool: Tool, search: &OsString) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(tool.env_override()) {
        return which::which_in(&p, Some(search), Path::new("/")).ok();
    }
    which::which_in(tool.command(), Some(search), Path::new("/")).ok()
}

/// One thing that keeps this host from running sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotRoot,
    Missing {
        command: &'static str,
        package: &'static str,
    },
    Broken {
        path: PathBuf,
        package: &'static str,
        detail: String,
    },
    Kernel {
        feature: &'static str,
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotRoot => write!(
                f,
                "not running as root: the agent creates network namespaces, TAP devices and \
                 nftables rules (run it as root, e.g. with sudo)"
            ),
            Problem::Missing { command, package } => write!(
                f,
                "{command} not found (Debian package {package}: `apt-get install {package}`)"
            ),
            Problem::Broken {
                path,
                package,
                detail,
            } => write!(
                f,
                "{} does not work: {detail} (reinstall Debian package {package})",
                path.display()
            ),
            Problem::Kernel { feature, detail } => write!(
                f,
                "the kernel cannot make {feature}: {detail} (the agent needs network \
                 namespaces, veth, TUN/TAP and nf_tables with NAT)"
            ),
        }
    }
}

/// Every problem found, each on a line.
#[derive(Debug, thiserror::Error)]
pub struct PreflightError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "this host cannot run sandboxes:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        let mut packages: Vec<&str> = Vec::new();
        for p in &self.problems {
            if let Problem::Missing { package, .. } = p
                && !packages.contains(package)
            {
                packages.push(package);
            }
        }
        if !packages.is_empty() {
            write!(f, "\ninstall with: apt-get install {}", packages.join(" "))?;
        }
        Ok(())
    }
}

/// How long one program's smoke run may take.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks the host (see the module docs). On success the resolved program paths are what
/// [`path`] answers from then on. `net` is the agent's network, tried in a throwaway namespace.
pub async fn check(net: &Network) -> Result<(), PreflightError> {
    let mut problems = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    if !root {
        problems.push(Problem::NotRoot);
    }
    let search = search_path();
    let mut paths: Vec<PathBuf> = Vec::new();
    for tool in Tool::ALL {
        match resolve(tool, &search) {
            Some(p) => {
                if let Err(detail) = smoke(tool, &p).await {
                    problems.push(Problem::Broken {
                        path: p.clone(),
                        package: tool.package(),
                        detail,
                    });
                }
                paths.push(p);
            }
            None => {
                problems.push(Problem::Missing {
                    command: tool.command(),
                    package: tool.package(),
                });
                paths.push(PathBuf::from(tool.command()));
            }
        }
    }
    let tools_ok = problems.iter().all(|p| p == &Problem::NotRoot);
    if let Ok(paths) = <[PathBuf; 3]>::try_from(paths)
        && tools_ok
    {
        // Set before the network selftest, which runs `nft`. A second check in the same
        // process (tests) keeps the first answer; the paths do not change under a running agent.
        let _ = RESOLVED.set(paths);
    }
    // The network selftest needs root and `nft`; without them it would only repeat the above.
    if root
        && tools_ok
        && let Err(e) = net.selftest().await
    {
        problems.push(Problem::Kernel {
            feature: e.feature,
            detail: e.source.to_string(),
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PreflightError { problems })
    }
}

/// Runs the program's smoke command; the reason when it fails.
async fn smoke(tool: Tool, path: &Path) -> Result<(), String> {
    let (args, needle) = tool.smoke();
    let run = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(SMOKE_TIMEOUT, run).await {
        Err(_) => return Err(format!("`{}` took over {SMOKE_TIMEOUT:?}", args.join(" "))),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            stderr.trim().chars().take(300).collect::<String>()
        ));
    }
    if let Some(n) = needle
        && !String::from_utf8_lossy(&out.stdout).contains(n)
    {
        return Err(format!("`{}` does not list `{n}`", args.join(" ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_program_and_its_package() {
        let e = PreflightError {
            problems: vec![
                Problem::Missing {
                    command: "qemu-img",
                    package: "qemu-utils",
                },
                Problem::Missing {
                    command: "nft",
                    package: "nftables",
                },
                Problem::Kernel {
                    feature: "TUN/TAP devices",
                    detail: "open /dev/net/tun: No such device".into(),
                },
            ],
        };
        let s = e.to_string();
        assert!(s.starts_with("this host cannot run sandboxes:\n  - qemu-img not found"));
        assert!(s.contains("Debian package qemu-utils"), "{s}");
        assert!(s.contains("the kernel cannot make TUN/TAP devices"), "{s}");
        assert!(
            s.ends_with("install with: apt-get install qemu-utils nftables"),
            "{s}"
        );
    }

    #[test]
    fn every_tool_has_a_package_and_a_distinct_slot() {
        let mut seen = std::collections::HashSet::new();
        for t in Tool::ALL {
            assert!(!t.package().is_empty());
            assert!(seen.insert(t.index()));
            assert!(t.index() < 3);
        }
    }
}
