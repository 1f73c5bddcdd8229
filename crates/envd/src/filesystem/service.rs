//! The `filesystem.Filesystem` Connect service: resolves the acting user and paths, runs
//! the blocking work off the async runtime, and streams watch events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::Stream;
use notify::RecommendedWatcher;
use tokio::sync::mpsc;
use wrenn_proto::filesystem::watch_dir_response::{KeepAlive, StartEvent};
use wrenn_proto::filesystem::*;

use super::error::FsError;
use super::ops::{self, Owner};
use super::watch::{self, WatchSpec};
use crate::paths;
use crate::state::EnvdState;
use crate::users::User;

/// Watch events queued for a slow `WatchDir` client before the watcher thread waits.
const WATCH_QUEUE: usize = 1024;

pub struct FilesystemService {
    state: Arc<EnvdState>,
}

impl FilesystemService {
    pub fn new(state: Arc<EnvdState>) -> Self {
        FilesystemService { state }
    }

    fn user(&self, ctx: &RequestContext) -> Result<User, ConnectError> {
        Ok(self.state.request_user(ctx.headers())?)
    }
}

/// `raw` resolved for `user`: relative paths and `~` are under the user's home.
fn resolve(user: &User, raw: &str) -> Result<PathBuf, ConnectError> {
    paths::resolve(raw, user, None).map_err(|e| FsError::from(e).into())
}

fn owner(user: &User) -> Owner {
    Owner {
        uid: user.uid,
        gid: user.gid,
    }
}

/// Runs blocking filesystem work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, ConnectError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ConnectError::from),
        Err(e) => Err(FsError::Task(e).into()),
    }
}

fn watch_spec(
    user: &User,
    path: &str,
    recursive: bool,
    include_entry: bool,
    allow_network_mounts: bool,
) -> Result<WatchSpec, ConnectError> {
    Ok(WatchSpec {
        root: resolve(user, path)?,
        recursive,
        include_entry,
        allow_network_mounts,
    })
}

enum Step {
    Event(Option<Box<Result<FilesystemEvent, FsError>>>),
    Keepalive,
    Deadline,
}

/// The `WatchDir` response stream: `start`, then events and keepalives until the client
/// goes away (the stream, and with it the watcher, is dropped) or the deadline passes.
fn watch_stream(
    watcher: RecommendedWatcher,
    mut events: mpsc::Receiver<Result<FilesystemEvent, FsError>>,
    keepalive: Duration,
    deadline: Option<Instant>,
) -> impl Stream<Item = Result<WatchDirResponse, ConnectError>> + Send + 'static {
    let message = |event: Option<watch_dir_response::Event>| WatchDirResponse {
        event,
        ..Default::default()
    };
    async_stream::stream! {
        let _watcher = watcher;
        yield Ok(message(StartEvent::default().into()));
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            let step = tokio::select! {
                item = events.recv() => Step::Event(item.map(Box::new)),
                _ = ticker.tick() => Step::Keepalive,
                () = &mut deadline => Step::Deadline,
            };
            match step {
                Step::Event(Some(item)) => match *item {
                    Ok(event) => {
                        ticker.reset();
                        yield Ok(message(event.into()));
                    }
                    Err(e) => {
                        yield Err(e.into());
                        break;
                    }
                },
                Step::Event(None) => break,
                Step::Keepalive => yield Ok(message(KeepAlive::default().into())),
                Step::Deadline => {
                    yield Err(ConnectError::deadline_exceeded("watch deadline reached"));
                    break;
                }
            }
        }
    }
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let user = self.user(&ctx)?;
        let path = resolve(&user, r.path)?;
        let entry = blocking(move || ops::stat(&path)).await?;
        Response::ok(StatResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let user = self.user(&ctx)?;
        let path = resolve(&user, r.path)?;
        let owner = owner(&user);
        let entry = blocking(move || ops::make_dir(&path, owner)).await?;
        Response::ok(MakeDirResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let user = self.user(&ctx)?;
        let source = resolve(&user, r.source)?;
        let destination = resolve(&user, r.destination)?;
        let owner = owner(&user);
        let entry = blocking(move || ops::rename(&source, &destination, owner)).await?;
        Response::ok(MoveResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let user = self.user(&ctx)?;
        let path = resolve(&user, r.path)?;
        let depth = r.depth;
        let entries = blocking(move || ops::list_dir(&path, depth)).await?;
        Response::ok(ListDirResponse {
            entries,
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let user = self.user(&ctx)?;
        let path = resolve(&user, r.path)?;
        blocking(move || ops::remove(&path)).await?;
        Response::ok(RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let user = self.user(&ctx)?;
        let spec = watch_spec(
            &user,
            r.path,
            r.recursive,
            r.include_entry,
            r.allow_network_mounts,
        )?;
        let keepalive = watch::keepalive_interval(ctx.headers(), self.state.keepalive);
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let watcher = blocking(move || {
            watch::start(&spec, move |item| {
                // Fails only once the stream is gone; its watcher is being dropped then.
                let _ = tx.blocking_send(item);
            })
        })
        .await?;
        Response::stream_ok(watch_stream(watcher, rx, keepalive, ctx.deadline()))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        let user = self.user(&ctx)?;
        let spec = watch_spec(
            &user,
            r.path,
            r.recursive,
            r.include_entry,
            r.allow_network_mounts,
        )?;
        let state = self.state.clone();
        let watcher_id = blocking(move || state.watchers.create(&spec)).await?;
        Response::ok(CreateWatcherResponse {
            watcher_id,
            ..Default::default()
        })
    }

    async fn get_watcher_events(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        self.user(&ctx)?;
        let events = self.state.watchers.take_events(r.watcher_id)?;
        Response::ok(GetWatcherEventsResponse {
            events,
            ..Default::default()
        })
    }

    async fn remove_watcher(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        self.user(&ctx)?;
        self.state.watchers.remove(r.watcher_id)?;
        Response::ok(RemoveWatcherResponse::default())
    }
}
