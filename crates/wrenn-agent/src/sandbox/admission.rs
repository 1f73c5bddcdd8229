//! Admission: a sandbox starts (create or resume) only while the host's running sandboxes and
//! those starting stay within the configured overcommit of its CPUs and memory, and the files
//! root keeps its minimum free space. Without it a tenant's creates could take a host's memory
//! from every other tenant's VMs (the kernel's OOM killer then picks among them).

use std::collections::HashMap;

use super::BackendError;

/// What a host admits in total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub min_free_disk_mib: u64,
}

impl Limits {
    /// `cpus` × `cpu_overcommit` vCPUs, `memory_mib` × `memory_overcommit` of guest memory.
    pub fn new(
        cpus: u32,
        memory_mib: u64,
        cpu_overcommit: f64,
        memory_overcommit: f64,
        min_free_disk_mib: u64,
    ) -> Limits {
        // Saturating float → int casts; the flags' parsers keep the factors positive.
        Limits {
            vcpus: (f64::from(cpus) * cpu_overcommit).floor() as u64,
            memory_mib: (memory_mib as f64 * memory_overcommit).floor() as u64,
            min_free_disk_mib,
        }
    }
}

/// A sandbox's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size {
    pub vcpus: u64,
    pub memory_mib: u64,
}

impl std::ops::Add for Size {
    type Output = Size;
    fn add(self, o: Size) -> Size {
        Size {
            vcpus: self.vcpus.saturating_add(o.vcpus),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
        }
    }
}

/// The sizes of the sandboxes being started, by ID. Held under the manager's admission lock,
/// which the start of each sandbox and the end of its start both take, so a sandbox is always
/// counted — as starting, as running or (briefly) both — never neither.
#[derive(Debug, Default)]
pub struct Starting(HashMap<String, Size>);

impl Starting {
    /// Admits `size` for `id` next to `running` (the live sandboxes' total) with
    /// `free_disk_mib` on the files root, or says which limit it would pass.
    pub fn admit(
        &mut self,
        limits: &Limits,
        id: &str,
        size: Size,
        running: Size,
        free_disk_mib: u64,
    ) -> Result<(), BackendError> {
        let starting = self.0.values().fold(Size::default(), |a, s| a + *s);
        let after = running + starting + size;
        let full = |what: String| {
            BackendError::ResourceExhausted(format!(
                "this host has no room for the sandbox: {what}"
            ))
        };
        if after.vcpus > limits.vcpus {
            return Err(full(format!(
                "{} vCPUs would be allocated, the limit is {}",
                after.vcpus, limits.vcpus
            )));
        }
        if after.memory_mib > limits.memory_mib {
            return Err(full(format!(
                "{} MiB of guest memory would be allocated, the limit is {}",
                after.memory_mib, limits.memory_mib
            )));
        }
        if free_disk_mib < limits.min_free_disk_mib {
            return Err(full(format!(
                "{free_disk_mib} MiB free on the files root, below the {} MiB kept free",
                limits.min_free_disk_mib
            )));
        }
        self.0.insert(id.to_owned(), size);
        Ok(())
    }

    /// The start of `id` ended (it runs and is counted as live now, or it failed).
    pub fn done(&mut self, id: &str) {
        self.0.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        vcpus: 4,
        memory_mib: 2048,
        min_free_disk_mib: 100,
    };

    fn size(vcpus: u64, memory_mib: u64) -> Size {
        Size { vcpus, memory_mib }
    }

    #[test]
    fn starting_and_running_sandboxes_share_the_limits() {
        let mut s = Starting::default();
        s.admit(&LIMITS, "a", size(2, 512), size(1, 512), 1000)
            .unwrap();
        // 1 running + 2 starting + 2 > 4 vCPUs.
        let e = s.admit(&LIMITS, "b", size(2, 256), size(1, 512), 1000);
        assert!(matches!(e, Err(BackendError::ResourceExhausted(m)) if m.contains("vCPUs")));
        s.admit(&LIMITS, "b", size(1, 256), size(1, 512), 1000)
            .unwrap();
        // Memory: 512 running + 768 starting + 1024 > 2048.
        s.done("b");
        let e = s.admit(&LIMITS, "c", size(1, 1100), size(1, 512), 1000);
        assert!(
            matches!(e, Err(BackendError::ResourceExhausted(m)) if m.contains("MiB of guest memory"))
        );
        // Disk below the floor refuses whatever the size.
        let e = s.admit(&LIMITS, "d", size(1, 1), Size::default(), 99);
        assert!(matches!(e, Err(BackendError::ResourceExhausted(m)) if m.contains("free")));
        // A finished start frees its share.
        s.done("a");
        s.admit(&LIMITS, "e", size(3, 1024), size(1, 512), 1000)
            .unwrap();
    }

    #[test]
    fn limits_scale_with_overcommit() {
        let l = Limits::new(2, 1000, 8.0, 1.5, 10);
        assert_eq!((l.vcpus, l.memory_mib, l.min_free_disk_mib), (16, 1500, 10));
    }
}
