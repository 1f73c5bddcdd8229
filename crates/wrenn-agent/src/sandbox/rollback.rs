//! Undo steps for a multi-step operation: each completed step registers how to undo itself;
//! on failure they run in reverse order, on success the stack is disarmed.

use futures::future::BoxFuture;

type Undo = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

#[derive(Default)]
pub struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl Rollback {
    pub fn push<F>(&mut self, name: &'static str, undo: F)
    where
        F: FnOnce() -> BoxFuture<'static, ()> + Send + 'static,
    {
        self.steps.push((name, Box::new(undo)));
    }

    /// Runs every undo step, newest first.
    pub async fn run(mut self) {
        while let Some((name, undo)) = self.steps.pop() {
            tracing::debug!(step = name, "rolling back");
            undo().await;
        }
    }

    /// The operation succeeded: forget the undo steps.
    pub fn disarm(mut self) {
        self.steps.clear();
    }
}
