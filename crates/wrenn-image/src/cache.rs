//! Content hashes of build inputs and the rebuild decision.
//!
//! Two keys: the build key covers everything that ends up in a template (so an unchanged
//! build is skipped), the rootfs key only what debootstrap consumes (so a changed envd or
//! init script reuses the cached debootstrap tree and re-runs only the cheap steps).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::apt::PackageRef;
use crate::inputs::Inputs;
use crate::manifest::{Loaded, Manifest};

/// Bumped whenever the build steps change what they produce from the same inputs.
pub const BUILD_FORMAT: u32 = 1;

/// Everything a template build consumes.
#[derive(Debug, Clone)]
pub struct BuildKey<'a> {
    pub template: &'a str,
    pub inputs: &'a Inputs,
    pub debootstrap: &'a DebootstrapKey<'a>,
    pub kernel: &'a PackageRef,
    pub busybox: &'a PackageRef,
    pub envd_sha256: &'a str,
    pub image_size: u64,
    pub default_user: &'a str,
}

/// What the debootstrap tree depends on.
#[derive(Debug, Clone)]
pub struct DebootstrapKey<'a> {
    pub suite: &'a str,
    pub variant: &'a str,
    pub mirror: &'a str,
    /// Normalised (sorted, deduplicated).
    pub packages: &'a [String],
}

/// Unambiguous field-by-field hashing: every field is tagged and length-prefixed, so no
/// two different inputs serialise to the same byte stream.
struct KeyHasher(Sha256);

impl KeyHasher {
    fn new(domain: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.field("domain", domain.as_bytes());
        h
    }

    fn field(&mut self, tag: &str, value: &[u8]) -> &mut Self {
        for part in [tag.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

impl DebootstrapKey<'_> {
    pub fn hash(&self) -> String {
        let mut h = KeyHasher::new("wrenn-debootstrap");
        h.field("suite", self.suite.as_bytes())
            .field("variant", self.variant.as_bytes())
            .field("mirror", self.mirror.as_bytes());
        for p in self.packages {
            h.field("package", p.as_bytes());
        }
        h.finish()
    }
}

impl BuildKey<'_> {
    pub fn hash(&self) -> String {
        let mut h = KeyHasher::new("wrenn-image");
        h.field("format", &BUILD_FORMAT.to_le_bytes())
            .field("template", self.template.as_bytes())
            .field("debootstrap", self.debootstrap.hash().as_bytes())
            .field("kernel", self.kernel.to_string().as_bytes())
            .field("busybox", self.busybox.to_string().as_bytes())
            .field("envd", self.envd_sha256.as_bytes())
            .field("size", &self.image_size.to_le_bytes())
            .field("user", self.default_user.as_bytes());
        for (path, file) in &self.inputs.files {
            h.field("file", path.as_bytes())
                .field("exec", &[u8::from(file.executable)])
                .field("bytes", &file.bytes);
        }
        h.finish()
    }
}

/// What the kernel directory (vmlinuz + initramfs) depends on: when only envd or the root
/// filesystem's inputs change, the installed kernel files are reused as they are.
pub fn kernel_key(kernel: &PackageRef, busybox: &PackageRef, inputs: &Inputs) -> String {
    let mut h = KeyHasher::new("wrenn-kernel");
    h.field("format", &BUILD_FORMAT.to_le_bytes())
        .field("kernel", kernel.to_string().as_bytes())
        .field("busybox", busybox.to_string().as_bytes());
    for (path, file) in inputs
        .files
        .iter()
        .filter(|(p, _)| p.starts_with("initramfs/"))
    {
        h.field("file", path.as_bytes())
            .field("exec", &[u8::from(file.executable)])
            .field("bytes", &file.bytes);
    }
    h.finish()
}

/// SHA-256 of a file's content, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hex::encode(h.finalize())),
            n => h.update(&buf[..n]),
        }
    }
}

/// Whether a build can be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    UpToDate,
    Rebuild(Reason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Forced,
    NoManifest,
    UnreadableManifest(String),
    InputsChanged,
    OutputMissing(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Forced => f.write_str("rebuild forced"),
            Reason::NoManifest => f.write_str("not built yet"),
            Reason::UnreadableManifest(e) => write!(f, "manifest unreadable ({e})"),
            Reason::InputsChanged => f.write_str("inputs changed"),
            Reason::OutputMissing(p) => write!(f, "{p} is missing or damaged"),
        }
    }
}

/// Up to date when the manifest records `want` as its inputs hash and every file it
/// describes is still there with the recorded size.
pub fn decide(root: &Path, loaded: &Loaded, want: &str, force: bool) -> Decision {
    if force {
        return Decision::Rebuild(Reason::Forced);
    }
    let manifest: &Manifest = match loaded {
        Loaded::Missing => return Decision::Rebuild(Reason::NoManifest),
        Loaded::Unreadable(e) => return Decision::Rebuild(Reason::UnreadableManifest(e.clone())),
        Loaded::Present(m) => m,
    };
    if manifest.inputs_hash != want {
        return Decision::Rebuild(Reason::InputsChanged);
    }
    let outputs = [(&manifest.rootfs.path, manifest.rootfs.size_bytes)];
    if let Some(missing) =
        missing_kernel_file(root, &manifest.kernel).or_else(|| missing_file(root, &outputs))
    {
        return Decision::Rebuild(Reason::OutputMissing(missing));
    }
    Decision::UpToDate
}

/// The first of the kernel's files that is missing or has the wrong size.
pub fn missing_kernel_file(root: &Path, kernel: &crate::manifest::KernelInfo) -> Option<String> {
    missing_file(
        root,
        &[
            (&kernel.vmlinuz, kernel.vmlinuz_bytes),
            (&kernel.initrd, kernel.initrd_bytes),
        ],
    )
}

fn missing_file(root: &Path, files: &[(&std::path::PathBuf, u64)]) -> Option<String> {
    files.iter().find_map(|(rel, size)| {
        let ok = std::fs::metadata(root.join(rel)).is_ok_and(|m| m.is_file() && m.len() == *size);
        (!ok).then(|| rel.display().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::InputFile;
    use crate::manifest::{EnvdInfo, KernelInfo, RootfsInfo};

    fn pkg(name: &str, version: &str) -> PackageRef {
        PackageRef {
            name: name.into(),
            version: version.into(),
        }
    }

    struct Fixture {
        inputs: Inputs,
        packages: Vec<String>,
        kernel: PackageRef,
        busybox: PackageRef,
        envd: String,
        size: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let inputs = Inputs::embedded_base();
            Self {
                packages: inputs.packages().unwrap(),
                inputs,
                kernel: pkg("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3"),
                busybox: pkg("busybox-static", "1:1.35.0-4"),
                envd: "ab".repeat(32),
                size: 5 << 30,
            }
        }

        fn debootstrap(&self) -> DebootstrapKey<'_> {
            DebootstrapKey {
                suite: "bookworm",
                variant: "minbase",
                mirror: "http://deb.debian.org/debian",
                packages: &self.packages,
            }
        }

        fn hash(&self) -> String {
            let d = self.debootstrap();
            BuildKey {
                template: "base",
                inputs: &self.inputs,
                debootstrap: &d,
                kernel: &self.kernel,
                busybox: &self.busybox,
                envd_sha256: &self.envd,
                image_size: self.size,
                default_user: "user",
            }
            .hash()
        }
    }

    #[test]
    fn hash_is_stable_and_hex() {
        let f = Fixture::new();
        assert_eq!(f.hash(), f.hash());
        assert_eq!(f.hash().len(), 64);
        assert!(f.hash().chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn every_input_changes_the_build_hash() {
        let base = Fixture::new().hash();
        type Change = Box<dyn Fn(&mut Fixture)>;
        let changes: Vec<(&str, Change)> = vec![
            ("envd", Box::new(|f| f.envd = "cd".repeat(32))),
            ("size", Box::new(|f| f.size += 1 << 20)),
            (
                "kernel",
                Box::new(|f| f.kernel.version = "6.1.193-1".into()),
            ),
            ("busybox", Box::new(|f| f.busybox.version = "1:1.36".into())),
            ("packages", Box::new(|f| f.packages.push("vim".into()))),
            (
                "init script",
                Box::new(|f| {
                    let init = f
                        .inputs
                        .files
                        .get_mut("rootfs/usr/local/sbin/wrenn-init")
                        .unwrap();
                    init.bytes.extend_from_slice(b"# changed\n");
                }),
            ),
            (
                "exec bit",
                Box::new(|f| {
                    f.inputs
                        .files
                        .get_mut("rootfs/etc/hosts")
                        .unwrap()
                        .executable = true
                }),
            ),
            (
                "new file",
                Box::new(|f| {
                    f.inputs.files.insert(
                        "rootfs/etc/motd".into(),
                        InputFile {
                            bytes: vec![],
                            executable: false,
                        },
                    );
                }),
            ),
        ];
        for (what, change) in changes {
            let mut f = Fixture::new();
            change(&mut f);
            assert_ne!(f.hash(), base, "changing the {what} must change the hash");
        }
    }

    #[test]
    fn kernel_key_covers_only_the_kernel_and_initramfs() {
        let f = Fixture::new();
        let key = |f: &Fixture| kernel_key(&f.kernel, &f.busybox, &f.inputs);
        let base = key(&f);

        let mut g = Fixture::new();
        g.envd = "cd".repeat(32);
        g.packages.push("vim".into());
        g.inputs
            .files
            .get_mut("rootfs/usr/local/sbin/wrenn-init")
            .unwrap()
            .bytes
            .push(b'\n');
        assert_eq!(
            key(&g),
            base,
            "envd, packages and rootfs files don't touch the kernel"
        );

        let mut g = Fixture::new();
        g.inputs
            .files
            .get_mut("initramfs/modules")
            .unwrap()
            .bytes
            .extend_from_slice(b"x\n");
        assert_ne!(key(&g), base);
        let mut g = Fixture::new();
        g.busybox.version = "2".into();
        assert_ne!(key(&g), base);
        let mut g = Fixture::new();
        g.kernel.version = "2".into();
        assert_ne!(key(&g), base);
    }

    #[test]
    fn debootstrap_key_ignores_everything_but_its_own_inputs() {
        let a = Fixture::new();
        let mut b = Fixture::new();
        b.envd = "cd".repeat(32);
        b.size *= 2;
        b.inputs
            .files
            .get_mut("rootfs/usr/local/sbin/wrenn-init")
            .unwrap()
            .bytes
            .push(b'\n');
        assert_eq!(a.debootstrap().hash(), b.debootstrap().hash());
        assert_ne!(a.hash(), b.hash());

        b.packages.push("vim".into());
        assert_ne!(a.debootstrap().hash(), b.debootstrap().hash());
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let p1 = vec!["ab".to_string(), "c".to_string()];
        let p2 = vec!["a".to_string(), "bc".to_string()];
        let k = |p: &[String]| {
            DebootstrapKey {
                suite: "s",
                variant: "v",
                mirror: "m",
                packages: p,
            }
            .hash()
        };
        assert_ne!(k(&p1), k(&p2));
    }

    fn manifest(root: &Path, hash: &str) -> Manifest {
        let write = |rel: &str, len: usize| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![0u8; len]).unwrap();
            rel.into()
        };
        Manifest {
            format: crate::manifest::MANIFEST_FORMAT,
            template: "base".into(),
            inputs_hash: hash.into(),
            built_at: "2026-01-01T00:00:00Z".into(),
            default_user: "user".into(),
            kernel: KernelInfo {
                key: "k".into(),
                release: "6.1.0-57-cloud-amd64".into(),
                package: pkg("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3"),
                vmlinuz: write("kernels/k/vmlinuz", 10),
                initrd: write("kernels/k/initrd.img", 5),
                vmlinuz_bytes: 10,
                initrd_bytes: 5,
                initrd_modules: vec![],
                cmdline: String::new(),
            },
            envd: EnvdInfo {
                version: "envd 0.6.4".into(),
                sha256: "00".into(),
                port: 49983,
            },
            rootfs: RootfsInfo {
                path: write("images/base/rootfs.ext4", 7),
                format: "ext4".into(),
                size_bytes: 7,
                allocated_bytes: 0,
                suite: "bookworm".into(),
                variant: "minbase".into(),
                packages: vec![],
            },
        }
    }

    #[test]
    fn decision() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let m = manifest(root, "h1");
        let present = Loaded::Present(Box::new(m.clone()));

        assert_eq!(decide(root, &present, "h1", false), Decision::UpToDate);
        assert_eq!(
            decide(root, &present, "h1", true),
            Decision::Rebuild(Reason::Forced)
        );
        assert_eq!(
            decide(root, &present, "h2", false),
            Decision::Rebuild(Reason::InputsChanged)
        );
        assert_eq!(
            decide(root, &Loaded::Missing, "h1", false),
            Decision::Rebuild(Reason::NoManifest)
        );
        assert!(matches!(
            decide(root, &Loaded::Unreadable("bad".into()), "h1", false),
            Decision::Rebuild(Reason::UnreadableManifest(_))
        ));

        // A truncated image is not up to date.
        std::fs::write(root.join("images/base/rootfs.ext4"), b"x").unwrap();
        assert_eq!(
            decide(root, &present, "h1", false),
            Decision::Rebuild(Reason::OutputMissing("images/base/rootfs.ext4".into()))
        );
        std::fs::write(root.join("images/base/rootfs.ext4"), [0u8; 7]).unwrap();
        std::fs::remove_file(root.join("kernels/k/initrd.img")).unwrap();
        assert_eq!(
            decide(root, &present, "h1", false),
            Decision::Rebuild(Reason::OutputMissing("kernels/k/initrd.img".into()))
        );
    }

    #[test]
    fn manifest_round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(dir.path(), "h1");
        let path = dir.path().join("images/base/manifest.json");
        m.store(&path).unwrap();
        match Manifest::load(&path) {
            Loaded::Present(loaded) => assert_eq!(*loaded, m),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(Manifest::load(&path), Loaded::Unreadable(_)));
    }

    #[test]
    fn file_hash_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            file_sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
