//! Registry of the processes envd started, by pid and by tag. A process is listed from
//! its spawn until its `end` is delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use wrenn_proto::process::ProcessConfig;
use wrenn_proto::process::process_selector::Selector;

use super::handle::{Event, ProcessHandle};
use super::spawn::{self, SpawnError, SpawnSpec};
use crate::reaper::Reaper;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a running process already has tag '{0}'")]
    TagInUse(String),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

impl From<StartError> for connectrpc::ConnectError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::TagInUse(_) => connectrpc::ConnectError::already_exists(e.to_string()),
            StartError::Spawn(e) => e.into(),
        }
    }
}

#[derive(Default)]
struct Registry {
    by_pid: HashMap<u32, Arc<ProcessHandle>>,
    by_tag: HashMap<String, Arc<ProcessHandle>>,
}

impl Registry {
    fn remove(&mut self, handle: &Arc<ProcessHandle>) {
        // Compare identities: the pid may already belong to a newer process.
        if self
            .by_pid
            .get(&handle.pid)
            .is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            self.by_pid.remove(&handle.pid);
        }
        if let Some(tag) = &handle.tag
            && self.by_tag.get(tag).is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            self.by_tag.remove(tag);
        }
    }
}

/// Registry of the processes envd started.
pub struct ProcessManager {
    reaper: Reaper,
    registry: Arc<Mutex<Registry>>,
}

impl ProcessManager {
    pub fn new(reaper: Reaper) -> Self {
        ProcessManager {
            reaper,
            registry: Arc::default(),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns a process, registers it and starts delivering its output. Returns the
    /// handle and the starting client's event stream (attached before any output).
    pub fn start(
        &self,
        spec: &SpawnSpec<'_>,
        tag: Option<String>,
        config: ProcessConfig,
    ) -> Result<(Arc<ProcessHandle>, mpsc::Receiver<Event>), StartError> {
        // The lock spans the spawn so two starts cannot both claim one tag.
        let mut reg = self.registry();
        if let Some(t) = &tag
            && reg.by_tag.contains_key(t)
        {
            return Err(StartError::TagInUse(t.clone()));
        }
        let spawned = spawn::spawn(&self.reaper, spec)?;
        let (handle, rx, readers) = ProcessHandle::new(spawned, tag, config);
        let handle = Arc::new(handle);
        reg.by_pid.insert(handle.pid, handle.clone());
        if let Some(t) = &handle.tag {
            reg.by_tag.insert(t.clone(), handle.clone());
        }
        drop(reg);

        let registry = self.registry.clone();
        let h = handle.clone();
        tokio::spawn(async move {
            let unregister = {
                let h = h.clone();
                move || {
                    registry
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&h)
                }
            };
            h.run(readers, unregister).await;
        });
        Ok((handle, rx))
    }

    /// The running process a selector names.
    pub fn get(&self, selector: &Selector) -> Option<Arc<ProcessHandle>> {
        let reg = self.registry();
        match selector {
            Selector::Pid(pid) => reg.by_pid.get(pid).cloned(),
            Selector::Tag(tag) => reg.by_tag.get(tag).cloned(),
        }
    }

    /// Every running process, by pid.
    pub fn list(&self) -> Vec<Arc<ProcessHandle>> {
        let mut all: Vec<_> = self.registry().by_pid.values().cloned().collect();
        all.sort_by_key(|h| h.pid);
        all
    }
}
