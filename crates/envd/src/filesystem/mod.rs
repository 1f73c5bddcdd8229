//! `filesystem.Filesystem`: stat, list, mkdir, move, remove and directory watches.

use std::sync::Arc;

use connectrpc::{ConnectError, RequestContext, ServiceRequest, ServiceResult, ServiceStream};
use wrenn_proto::filesystem::*;

use crate::state::EnvdState;

/// Registry of polled watchers (CreateWatcher / GetWatcherEvents / RemoveWatcher).
#[derive(Default)]
pub struct Watchers {}

pub struct FilesystemService {
    #[allow(dead_code)]
    state: Arc<EnvdState>,
}

impl FilesystemService {
    pub fn new(state: Arc<EnvdState>) -> Self {
        FilesystemService { state }
    }
}

fn todo<T>() -> Result<T, ConnectError> {
    Err(ConnectError::unimplemented("not implemented yet"))
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        todo()
    }
    async fn make_dir(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        todo()
    }
    async fn r#move(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        todo()
    }
    async fn list_dir(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        todo()
    }
    async fn remove(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        todo()
    }
    async fn watch_dir(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        todo()
    }
    async fn create_watcher(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        todo()
    }
    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        todo()
    }
    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        todo()
    }
}
