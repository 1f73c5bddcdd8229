//! `wrenn image build`: the steps in order, skipped as a whole when the inputs hash
//! matches the installed manifest.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apt::{self, PackageRef};
use crate::cache::{self, BuildKey, DebootstrapKey, Decision, Reason};
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{self, ScratchDir};
use crate::initramfs::{self, ModuleIndex};
use crate::inputs::{self, Inputs};
use crate::kernel;
use crate::layout::{self, Layout};
use crate::manifest::{self, EnvdInfo, KernelInfo, MANIFEST_FORMAT, Manifest, RootfsInfo};
use crate::memo::{self, Memo};
use crate::prereq;
use crate::progress::{ProgressMode, Steps};
use crate::rootfs::{self, User};

pub const DEFAULT_SUITE: &str = "bookworm";
pub const DEFAULT_VARIANT: &str = "minbase";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_IMAGE_SIZE: u64 = 5 << 30;
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
pub const ENVD_PORT: u16 = 49983;

/// The E2B default user, as Wrenn's templates provide it.
pub const DEFAULT_USER: User<'static> = User {
    name: "user",
    uid: 1000,
    home: "/home/user",
    shell: "/bin/bash",
};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Files root (`AGENT_FILES_ROOTDIR`).
    pub root: PathBuf,
    /// Cache for debootstrap trees, packages and logs (`WRENN_CACHE`).
    pub cache: PathBuf,
    pub template: String,
    pub inputs: Inputs,
    /// The envd binary to inject.
    pub envd: PathBuf,
    /// Size of the (sparse) root image in bytes.
    pub image_size: u64,
    pub suite: String,
    pub variant: String,
    pub mirror: String,
    /// Rebuild even when up to date.
    pub force: bool,
    pub progress: ProgressMode,
}

impl BuildOptions {
    /// The `base` template from the compiled-in inputs, with every default.
    pub fn base(envd: impl Into<PathBuf>) -> Self {
        Self {
            root: layout::DEFAULT_ROOT.into(),
            cache: layout::DEFAULT_CACHE.into(),
            template: "base".into(),
            inputs: Inputs::embedded_base(),
            envd: envd.into(),
            image_size: DEFAULT_IMAGE_SIZE,
            suite: DEFAULT_SUITE.into(),
            variant: DEFAULT_VARIANT.into(),
            mirror: DEFAULT_MIRROR.into(),
            force: false,
            progress: ProgressMode::Auto,
        }
    }
}

#[derive(Debug)]
pub struct BuildOutcome {
    pub manifest: Manifest,
    pub layout: Layout,
    /// Why it was rebuilt; `None` when it was already up to date.
    pub rebuilt: Option<Reason>,
    /// Whether debootstrap ran (false: its tree came from the cache).
    pub debootstrapped: bool,
    pub elapsed: Duration,
}

/// Builds (or confirms up to date) the template described by `opts`.
pub fn build(opts: &BuildOptions) -> Result<BuildOutcome> {
    let started = std::time::Instant::now();
    prereq::check(prereq::BUILD)?;
    prereq::check_root()?;
    check_template_name(&opts.template)?;
    opts.inputs.validate()?;
    let steps = Steps::new(opts.progress);
    let layout = Layout::new(&opts.root);
    fs::create_dir_all(&opts.root).ctx(|| format!("create {}", opts.root.display()))?;
    let _lock = lock(&opts.root)?;

    let step = steps.start("Resolve inputs");
    let mut memo = Memo::load(&opts.cache);
    let (kernel_pkg, busybox_pkg) = resolve_packages(&mut memo)?;
    let envd_sha256 = hash_envd(&mut memo, &opts.envd)?;
    let packages = opts.inputs.packages()?;
    let dkey = DebootstrapKey {
        suite: &opts.suite,
        variant: &opts.variant,
        mirror: &opts.mirror,
        packages: &packages,
    };
    let inputs_hash = BuildKey {
        template: &opts.template,
        inputs: &opts.inputs,
        debootstrap: &dkey,
        kernel: &kernel_pkg,
        busybox: &busybox_pkg,
        envd_sha256: &envd_sha256,
        image_size: opts.image_size,
        default_user: DEFAULT_USER.name,
    }
    .hash();
    let manifest_path = layout.manifest(&opts.template);
    let loaded = Manifest::load(&manifest_path);
    let decision = cache::decide(&opts.root, &loaded, &inputs_hash, opts.force);
    step.done(&format!("{kernel_pkg}, inputs {}", &inputs_hash[..12]));

    let reason = match decision {
        Decision::UpToDate => {
            if let manifest::Loaded::Present(manifest) = loaded {
                steps.note(&format!(
                    "image {} is up to date ({})",
                    opts.template,
                    manifest_path.display()
                ));
                return Ok(BuildOutcome {
                    manifest: *manifest,
                    layout,
                    rebuilt: None,
                    debootstrapped: false,
                    elapsed: started.elapsed(),
                });
            }
            Reason::NoManifest
        }
        Decision::Rebuild(reason) => reason,
    };
    steps.note(&format!("building image {}: {reason}", opts.template));
    let work = ScratchDir::new_in(&opts.root, ".build-")?;

    let kernel_key = cache::kernel_key(&kernel_pkg, &busybox_pkg, &opts.inputs);
    let kernel = match reusable_kernel(&opts.root, &loaded, &kernel_key) {
        Some(info) => {
            steps.note(&format!("kernel {} unchanged: reusing it", info.release));
            KernelOutput::Reused(info)
        }
        None => build_kernel(
            &steps,
            opts,
            work.path(),
            &kernel_pkg,
            &busybox_pkg,
            kernel_key,
        )?,
    };

    let step = steps.start(&format!("Debootstrap {} ({})", opts.suite, opts.variant));
    let tree = crate::debootstrap::ensure(&opts.cache, &dkey, &step)?;
    step.done(&if tree.cached {
        format!("cached tree {}", tree.path.display())
    } else {
        format!("{} packages; log {}", packages.len(), tree.log.display())
    });

    let step = steps.start("Root filesystem");
    let staging = work.path().join("rootfs");
    step.status("copying the debootstrap tree");
    rootfs::copy_tree(&tree.path, &staging)?;
    step.status("adding the user, init and envd");
    let envd_version = rootfs::customise(&staging, &opts.inputs, &DEFAULT_USER, &opts.envd)?;
    step.status("mkfs.ext4");
    let image = work.path().join(layout::ROOTFS);
    rootfs::make_ext4(&staging, &image, opts.image_size)?;
    let allocated = fsutil::allocated_bytes(&image)?;
    step.done(&format!(
        "{} sparse, {} allocated; {envd_version}",
        bytesize::ByteSize::b(opts.image_size).display().iec(),
        bytesize::ByteSize::b(allocated).display().iec()
    ));

    let step = steps.start("Install");
    let template_dir = Layout::template_dir(&opts.template);
    for dir in [&Layout::kernel_dir(&kernel.info().release), &template_dir] {
        let abs = layout.abs(dir);
        fs::create_dir_all(&abs).ctx(|| format!("create {}", abs.display()))?;
    }
    // Each build's root image gets its own name: sandboxes' overlays name their backing file
    // by path, so an image in use must never be replaced in place.
    let rootfs_rel = template_dir.join(layout::rootfs_name(&inputs_hash));
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        template: opts.template.clone(),
        inputs_hash,
        built_at: now_rfc3339(),
        default_user: DEFAULT_USER.name.into(),
        kernel: kernel.info().clone(),
        envd: EnvdInfo {
            version: envd_version.trim_start_matches("envd ").to_string(),
            sha256: envd_sha256,
            port: ENVD_PORT,
        },
        rootfs: RootfsInfo {
            path: rootfs_rel,
            format: "ext4".into(),
            size_bytes: opts.image_size,
            allocated_bytes: allocated,
            suite: opts.suite.clone(),
            variant: opts.variant.clone(),
            packages,
        },
    };
    // The manifest goes first and comes back last: a build interrupted in between leaves
    // no manifest, so the next build redoes it instead of trusting half-replaced files.
    Manifest::remove(&manifest_path)?;
    if let KernelOutput::Fresh {
        vmlinuz, initrd, ..
    } = &kernel
    {
        fsutil::rename_durable(vmlinuz, &layout.abs(&manifest.kernel.vmlinuz))?;
        fsutil::rename_durable(initrd, &layout.abs(&manifest.kernel.initrd))?;
    }
    fsutil::rename_durable(&image, &layout.abs(&manifest.rootfs.path))?;
    manifest.store(&manifest_path)?;
    work.remove()?;
    step.done(&manifest_path.display().to_string());

    Ok(BuildOutcome {
        manifest,
        layout,
        rebuilt: Some(reason),
        debootstrapped: !tree.cached,
        elapsed: started.elapsed(),
    })
}

/// The kernel directory of a build: made anew in the scratch directory, or the installed
/// one when nothing it depends on changed.
enum KernelOutput {
    Reused(KernelInfo),
    Fresh {
        info: KernelInfo,
        vmlinuz: PathBuf,
        initrd: PathBuf,
    },
}

impl KernelOutput {
    fn info(&self) -> &KernelInfo {
        match self {
            KernelOutput::Reused(info) | KernelOutput::Fresh { info, .. } => info,
        }
    }
}

/// The installed template's kernel, when it was made from the same inputs and its files
/// are intact.
fn reusable_kernel(root: &Path, loaded: &manifest::Loaded, key: &str) -> Option<KernelInfo> {
    match loaded {
        manifest::Loaded::Present(m)
            if m.kernel.key == key && cache::missing_kernel_file(root, &m.kernel).is_none() =>
        {
            Some(m.kernel.clone())
        }
        _ => None,
    }
}

/// Fetches and unpacks the kernel and busybox packages and generates the initramfs.
fn build_kernel(
    steps: &Steps,
    opts: &BuildOptions,
    work: &Path,
    kernel_pkg: &PackageRef,
    busybox_pkg: &PackageRef,
    key: String,
) -> Result<KernelOutput> {
    let debs = opts.cache.join("debs");
    let step = steps.start("Kernel");
    step.status(&format!("fetching {kernel_pkg}"));
    let kernel_deb = apt::fetch(&debs, kernel_pkg)?;
    step.status(&format!("fetching {busybox_pkg}"));
    let busybox_deb = apt::fetch(&debs, busybox_pkg)?;
    step.status("unpacking");
    let kernel = kernel::unpack(&kernel_deb, &work.join("kernel"))?;
    let busybox_dir = work.join("busybox");
    apt::extract(&busybox_deb, &busybox_dir)?;
    step.done(&kernel.release);

    let step = steps.start("Initramfs");
    let index = ModuleIndex::load(&kernel.release, &kernel.modules)?;
    let specs = initramfs::parse_modules(opts.inputs.text(inputs::INITRAMFS_MODULES)?);
    let modules = index.resolve(&specs)?;
    let initrd = work.join(layout::INITRD);
    initramfs::build(
        &work.join("initramfs"),
        &find_busybox(&busybox_dir)?,
        opts.inputs.text(inputs::INITRAMFS_INIT)?.as_bytes(),
        &modules,
        &initrd,
    )?;
    let module_names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    step.done(&format!(
        "{} modules: {}",
        module_names.len(),
        module_names.join(" ")
    ));

    let dir = Layout::kernel_dir(&kernel.release);
    Ok(KernelOutput::Fresh {
        info: KernelInfo {
            key,
            release: kernel.release.clone(),
            package: kernel_pkg.clone(),
            vmlinuz: dir.join(layout::VMLINUZ),
            initrd: dir.join(layout::INITRD),
            vmlinuz_bytes: file_len(&kernel.vmlinuz)?,
            initrd_bytes: file_len(&initrd)?,
            initrd_modules: module_names,
            cmdline: kernel::CMDLINE.into(),
        },
        vmlinuz: kernel.vmlinuz,
        initrd,
    })
}

/// The kernel and busybox packages apt would fetch now (remembered until the apt lists
/// change).
fn resolve_packages(memo: &mut Memo) -> Result<(PackageRef, PackageRef)> {
    let key = format!(
        "{} {} {BUSYBOX_PACKAGE}",
        memo::apt_lists_signature(),
        kernel::KERNEL_META
    );
    let json = memo.get_or(key, || -> Result<String> {
        Ok(serde_json::to_string(&ask_apt()?).unwrap_or_default())
    })?;
    match serde_json::from_str(&json) {
        Ok(pair) => Ok(pair),
        Err(_) => ask_apt(),
    }
}

fn ask_apt() -> Result<(PackageRef, PackageRef)> {
    let stanzas = apt::candidates(&[kernel::KERNEL_META, BUSYBOX_PACKAGE])?;
    let version = |i: usize| stanzas.get(i).and_then(|s| s.get("Version")).cloned();
    let kernel = match stanzas.first() {
        Some(meta) => kernel::resolve(meta)?,
        None => {
            return Err(ImageError::NoCandidate {
                package: kernel::KERNEL_META.into(),
            });
        }
    };
    let busybox = PackageRef {
        name: BUSYBOX_PACKAGE.into(),
        version: version(1).ok_or_else(|| ImageError::NoCandidate {
            package: BUSYBOX_PACKAGE.into(),
        })?,
    };
    Ok((kernel, busybox))
}

/// SHA-256 of the envd binary (remembered while its size, mtime and inode stay the same).
fn hash_envd(memo: &mut Memo, envd: &Path) -> Result<String> {
    let what = || format!("read envd binary {}", envd.display());
    let key = memo::file_signature(envd).ctx(what)?;
    memo.get_or(key, || cache::file_sha256(envd).ctx(what))
}

/// Template names become directory names and, later, API identifiers.
fn check_template_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadInputs(format!(
            "template name `{name}`: use 1-64 of a-z, 0-9, `-`, `_`"
        )))
    }
}

/// One build per files root at a time.
fn lock(root: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let path = root.join(".build.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        ImageError::Io {
            what: format!("lock {}", path.display()),
            source: errno.into(),
        }
    })
}

fn find_busybox(dir: &Path) -> Result<PathBuf> {
    ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::AptMetadata {
            package: BUSYBOX_PACKAGE.into(),
            detail: "package has no bin/busybox".into(),
        })
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .ctx(|| format!("stat {}", path.display()))?
        .len())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names() {
        for ok in ["base", "py-3", "a_b", "0x"] {
            assert!(check_template_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Base", "../x", "a/b", "-x", &"a".repeat(65)] {
            assert!(check_template_name(bad).is_err(), "{bad}");
        }
    }
}
