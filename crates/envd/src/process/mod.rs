//! `process.Process`: starting, following, feeding and signalling processes.

use std::sync::Arc;

use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use wrenn_proto::process::*;

use crate::reaper::Reaper;
use crate::state::EnvdState;

/// Registry of the processes envd started.
pub struct ProcessManager {
    #[allow(dead_code)]
    reaper: Reaper,
}

impl ProcessManager {
    pub fn new(reaper: Reaper) -> Self {
        ProcessManager { reaper }
    }
}

pub struct ProcessService {
    #[allow(dead_code)]
    state: Arc<EnvdState>,
}

impl ProcessService {
    pub fn new(state: Arc<EnvdState>) -> Self {
        ProcessService { state }
    }
}

fn todo<T>() -> Result<T, ConnectError> {
    Err(ConnectError::unimplemented("not implemented yet"))
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        todo()
    }
    async fn connect(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        todo()
    }
    async fn start(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        todo()
    }
    async fn update(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        todo()
    }
    async fn stream_input(
        &self,
        _ctx: RequestContext,
        _r: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        todo()
    }
    async fn send_input(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        todo()
    }
    async fn send_signal(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        todo()
    }
    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let _ = Response::ok(CloseStdinResponse::default());
        todo()
    }
}
