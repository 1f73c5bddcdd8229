//! Templates on this host: what `images/<name>/manifest.json` (written by `wrenn image build`)
//! says about the kernel, initramfs, root image and default user.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub default_user: String,
    pub kernel_release: String,
    pub envd_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown template '{0}'")]
    Unknown(String),
    #[error("template name '{0}' is invalid")]
    InvalidName(String),
    #[error("template '{name}' is unusable: {reason}")]
    Broken { name: String, reason: String },
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Loads template `name` from the files root.
pub fn load(root: &Path, name: &str) -> Result<Template, TemplateError> {
    if !valid_name(name) {
        return Err(TemplateError::InvalidName(name.to_string()));
    }
    let path = wrenn_image::Layout::new(root).manifest(name);
    let manifest = match wrenn_image::Manifest::load(&path) {
        wrenn_image::manifest::Loaded::Present(m) => m,
        wrenn_image::manifest::Loaded::Missing => {
            return Err(TemplateError::Unknown(name.to_string()));
        }
        wrenn_image::manifest::Loaded::Unreadable(reason) => {
            return Err(TemplateError::Broken {
                name: name.to_string(),
                reason,
            });
        }
    };
    let t = Template {
        name: name.to_string(),
        kernel: root.join(&manifest.kernel.vmlinuz),
        initrd: root.join(&manifest.kernel.initrd),
        rootfs: root.join(&manifest.rootfs.path),
        default_user: manifest.default_user.clone(),
        kernel_release: manifest.kernel.release.clone(),
        envd_version: manifest.envd.version.clone(),
    };
    for p in [&t.kernel, &t.initrd, &t.rootfs] {
        if !p.exists() {
            return Err(TemplateError::Broken {
                name: name.to_string(),
                reason: format!("{} is missing", p.display()),
            });
        }
    }
    Ok(t)
}
