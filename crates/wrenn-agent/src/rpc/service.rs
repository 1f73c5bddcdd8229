//! The `HostAgentService` handlers: validation, then the backend (lifecycle) or the
//! sandbox's envd (I/O).

use std::sync::Arc;
use std::time::Duration;

use connectrpc::{
    ConnectError, InboundStream, RequestContext, Response, ServiceRequest, ServiceResult,
    ServiceStream,
};
use futures::StreamExt;
use tracing::Instrument;
use wrenn_proto::hostagent::v1::*;

use super::errors::envd_error;
use super::{SandboxBackend, files, process};
use crate::envd_client::EnvdClient;
use crate::sandbox::metrics::{Sample, in_range};
use crate::sandbox::now_ms;

/// The service; cheap to share.
pub struct AgentService {
    backend: Arc<dyn SandboxBackend>,
}

fn span(method: &'static str, sandbox_id: &str) -> tracing::Span {
    tracing::info_span!("rpc", method, sandbox_id = %sandbox_id)
}

fn required<'a>(name: &str, v: &'a str) -> Result<&'a str, ConnectError> {
    if v.is_empty() {
        Err(ConnectError::invalid_argument(format!(
            "{name} is required"
        )))
    } else {
        Ok(v)
    }
}

fn user(u: &str) -> Option<&str> {
    (!u.is_empty()).then_some(u)
}

impl AgentService {
    pub fn new(backend: Arc<dyn SandboxBackend>) -> Self {
        AgentService { backend }
    }

    /// The envd client of a running sandbox.
    async fn envd(&self, sandbox_id: &str) -> Result<EnvdClient, ConnectError> {
        required("sandbox_id", sandbox_id)?;
        Ok(self.backend.envd(sandbox_id).await?)
    }
}

/// Runs a lifecycle operation on a task of its own, to its end even if the caller hangs up
/// (a control plane that crashed or timed out). Dropped between two steps, a create or
/// destroy would leave a VM, network slot and directory that no map tracks (its rollback
/// only runs on the error path) until the agent restarts.
async fn detached<T, F>(op: F) -> Result<T, ConnectError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, crate::rpc::BackendError>> + Send + 'static,
{
    match tokio::spawn(op.in_current_span()).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ConnectError::internal(format!(
            "operation task failed: {e}"
        ))),
    }
}

#[allow(refining_impl_trait)]
impl HostAgentService for AgentService {
    async fn ping(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, PingRequest>,
    ) -> ServiceResult<PingResponse> {
        Response::ok(self.backend.host_facts())
    }

    async fn create_sandbox(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CreateSandboxRequest>,
    ) -> ServiceResult<CreateSandboxResponse> {
        let req = request.to_owned_message();
        let span = span("CreateSandbox", &req.sandbox_id);
        async move {
            required("sandbox_id", &req.sandbox_id)?;
            let backend = self.backend.clone();
            let (info, token) = detached(async move { backend.create(req).await }).await?;
            tracing::info!("sandbox created");
            Response::ok(CreateSandboxResponse {
                sandbox: info.into(),
                envd_access_token: token,
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn destroy_sandbox(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, DestroySandboxRequest>,
    ) -> ServiceResult<DestroySandboxResponse> {
        let id = request.sandbox_id.to_string();
        async {
            required("sandbox_id", &id)?;
            let (backend, id) = (self.backend.clone(), id.clone());
            detached(async move { backend.destroy(&id).await }).await?;
            tracing::info!("sandbox destroyed");
            Response::ok(DestroySandboxResponse::default())
        }
        .instrument(span("DestroySandbox", &id))
        .await
    }

    async fn list_sandboxes(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ListSandboxesRequest>,
    ) -> ServiceResult<ListSandboxesResponse> {
        Response::ok(self.backend.list().await?)
    }

    async fn get_sandbox(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetSandboxRequest>,
    ) -> ServiceResult<GetSandboxResponse> {
        let id = required("sandbox_id", request.sandbox_id)?;
        let info = self.backend.get(id).await?;
        Response::ok(GetSandboxResponse {
            sandbox: info.into(),
            ..Default::default()
        })
    }

    async fn pause_sandbox(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PauseSandboxRequest>,
    ) -> ServiceResult<PauseSandboxResponse> {
        let id = request.sandbox_id.to_string();
        async {
            required("sandbox_id", &id)?;
            let (backend, id) = (self.backend.clone(), id.clone());
            let info = detached(async move { backend.pause(&id).await }).await?;
            Response::ok(PauseSandboxResponse {
                sandbox: info.into(),
                ..Default::default()
            })
        }
        .instrument(span("PauseSandbox", &id))
        .await
    }

    async fn resume_sandbox(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ResumeSandboxRequest>,
    ) -> ServiceResult<ResumeSandboxResponse> {
        let id = request.sandbox_id.to_string();
        async {
            required("sandbox_id", &id)?;
            let (backend, id) = (self.backend.clone(), id.clone());
            let info = detached(async move { backend.resume(&id).await }).await?;
            Response::ok(ResumeSandboxResponse {
                sandbox: info.into(),
                ..Default::default()
            })
        }
        .instrument(span("ResumeSandbox", &id))
        .await
    }

    async fn create_snapshot(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CreateSnapshotRequest>,
    ) -> ServiceResult<CreateSnapshotResponse> {
        let req = request.to_owned_message();
        async {
            let snapshot = self
                .backend
                .snapshot(
                    required("sandbox_id", &req.sandbox_id)?,
                    required("name", &req.name)?,
                    required("team_id", &req.team_id)?,
                )
                .await?;
            Response::ok(CreateSnapshotResponse {
                snapshot: snapshot.into(),
                ..Default::default()
            })
        }
        .instrument(span("CreateSnapshot", &req.sandbox_id))
        .await
    }

    async fn delete_snapshot(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, DeleteSnapshotRequest>,
    ) -> ServiceResult<DeleteSnapshotResponse> {
        let req = request.to_owned_message();
        self.backend
            .delete_snapshot(
                required("name", &req.name)?,
                required("team_id", &req.team_id)?,
            )
            .await?;
        Response::ok(DeleteSnapshotResponse::default())
    }

    async fn ping_sandbox(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PingSandboxRequest>,
    ) -> ServiceResult<PingSandboxResponse> {
        let id = request.sandbox_id.to_string();
        async {
            let envd = self.envd(&id).await?;
            envd.health().await.map_err(|e| envd_error(&id, e))?;
            Response::ok(PingSandboxResponse::default())
        }
        .instrument(span("PingSandbox", &id))
        .await
    }

    async fn set_timeout(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SetTimeoutRequest>,
    ) -> ServiceResult<SetTimeoutResponse> {
        let id = request.sandbox_id.to_string();
        let end_at_ms = request.end_at_ms;
        async {
            if end_at_ms < 0 {
                return Err(ConnectError::invalid_argument(
                    "end_at_ms must not be negative",
                ));
            }
            let info = self
                .backend
                .set_timeout(required("sandbox_id", &id)?, end_at_ms)
                .await?;
            Response::ok(SetTimeoutResponse {
                sandbox: info.into(),
                ..Default::default()
            })
        }
        .instrument(span("SetTimeout", &id))
        .await
    }

    async fn get_metrics(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetMetricsRequest>,
    ) -> ServiceResult<GetMetricsResponse> {
        let id = request.sandbox_id.to_string();
        let (start_ms, end_ms) = (request.start_ms, request.end_ms);
        async {
            if start_ms < 0 || end_ms < 0 {
                return Err(ConnectError::invalid_argument(
                    "start_ms and end_ms must not be negative",
                ));
            }
            let envd = match self.envd(&id).await {
                Ok(envd) => envd,
                // Paused: nothing to ask, but what was sampled before the pause is kept.
                Err(e) if e.code == connectrpc::ErrorCode::FailedPrecondition => {
                    let info = self.backend.get(&id).await?;
                    if info.status.as_known() != Some(SandboxStatus::SANDBOX_STATUS_PAUSED) {
                        return Err(e);
                    }
                    return Response::ok(GetMetricsResponse {
                        samples: self.backend.metric_samples(&id, start_ms, end_ms).await,
                        ..Default::default()
                    });
                }
                Err(e) => return Err(e),
            };
            let (m, allocated) = tokio::join!(envd.metrics(), self.backend.disk_allocated(&id));
            let m = m.map_err(|e| envd_error(&id, e))?;
            let now = Sample::new(&m, allocated?, now_ms());
            let mut samples = self.backend.metric_samples(&id, start_ms, end_ms).await;
            // Nothing recorded in the range yet (e.g. a sandbox younger than one sampling
            // interval): the current sample stands for the series.
            if samples.is_empty() && in_range(now.timestamp_ms, start_ms, end_ms) {
                samples.push(now.to_pb());
            }
            Response::ok(GetMetricsResponse {
                cpu_count: now.cpu_count,
                cpu_used_pct: now.cpu_used_pct,
                mem_total_bytes: now.mem_total,
                mem_used_bytes: now.mem_used,
                disk_used_bytes: now.disk_used,
                disk_total_bytes: now.disk_total,
                disk_allocated_bytes: now.disk_allocated,
                timestamp_ms: now.timestamp_ms,
                samples,
                ..Default::default()
            })
        }
        .instrument(span("GetMetrics", &id))
        .await
    }

    async fn exec(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ExecRequest>,
    ) -> ServiceResult<ExecResponse> {
        let req = request.to_owned_message();
        let span = span("Exec", &req.sandbox_id);
        async {
            let spec = process::exec_spec(&req.cmd, &req.args, &req.envs, &req.cwd, &req.user)?;
            let envd = self.envd(&req.sandbox_id).await?;
            let timeout =
                (req.timeout_sec > 0).then(|| Duration::from_secs(req.timeout_sec.into()));
            let out = envd
                .exec(&spec, timeout)
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(process::exec_response(out))
        }
        .instrument(span)
        .await
    }

    async fn exec_stream(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ExecRequest>,
    ) -> ServiceResult<ServiceStream<ExecEvent>> {
        let req = request.to_owned_message();
        let span = span("ExecStream", &req.sandbox_id);
        async {
            let spec = process::exec_spec(&req.cmd, &req.args, &req.envs, &req.cwd, &req.user)?;
            let envd = self.envd(&req.sandbox_id).await?;
            let timeout =
                (req.timeout_sec > 0).then(|| Duration::from_secs(req.timeout_sec.into()));
            let events = envd
                .start(&spec, None, None, timeout)
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::stream_ok(process::exec_events(req.sandbox_id.clone(), envd, events))
        }
        .instrument(span)
        .await
    }

    async fn start_background(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, StartBackgroundRequest>,
    ) -> ServiceResult<StartBackgroundResponse> {
        let req = request.to_owned_message();
        let span = span("StartBackground", &req.sandbox_id);
        async {
            let spec = process::exec_spec(&req.cmd, &req.args, &req.envs, &req.cwd, &req.user)?;
            let envd = self.envd(&req.sandbox_id).await?;
            let tag = user(&req.tag);
            let pid = envd
                .start_background(&spec, tag)
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(StartBackgroundResponse {
                pid,
                tag: req.tag.clone(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn list_processes(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ListProcessesRequest>,
    ) -> ServiceResult<ListProcessesResponse> {
        let id = request.sandbox_id.to_string();
        async {
            let envd = self.envd(&id).await?;
            let list = envd
                .list_processes()
                .await
                .map_err(|e| envd_error(&id, e))?;
            Response::ok(ListProcessesResponse {
                processes: list.into_iter().map(process::process_info).collect(),
                ..Default::default()
            })
        }
        .instrument(span("ListProcesses", &id))
        .await
    }

    async fn signal_process(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SignalProcessRequest>,
    ) -> ServiceResult<SignalProcessResponse> {
        let req = request.to_owned_message();
        let span = span("SignalProcess", &req.sandbox_id);
        async {
            let sel = process::selector(req.process.as_option())?;
            let sig = process::signal(req.signal)?;
            let envd = self.envd(&req.sandbox_id).await?;
            envd.signal(sel, sig)
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(SignalProcessResponse::default())
        }
        .instrument(span)
        .await
    }

    async fn attach_process(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, AttachProcessRequest>,
    ) -> ServiceResult<ServiceStream<ExecEvent>> {
        let req = request.to_owned_message();
        let span = span("AttachProcess", &req.sandbox_id);
        async {
            let sel = process::selector(req.process.as_option())?;
            let envd = self.envd(&req.sandbox_id).await?;
            let events = envd
                .attach(sel)
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::stream_ok(process::exec_events(req.sandbox_id.clone(), envd, events))
        }
        .instrument(span)
        .await
    }

    async fn pty_attach(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PtyAttachRequest>,
    ) -> ServiceResult<ServiceStream<PtyEvent>> {
        let req = request.to_owned_message();
        let span = span("PtyAttach", &req.sandbox_id);
        async {
            let tag = required("tag", &req.tag)?.to_string();
            let spec = if req.cmd.is_empty() {
                None
            } else {
                Some(process::exec_spec(
                    &req.cmd, &req.args, &req.envs, &req.cwd, &req.user,
                )?)
            };
            let envd = self.envd(&req.sandbox_id).await?;
            let events = envd
                .pty(&tag, spec.as_ref(), process::pty_size(req.cols, req.rows))
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::stream_ok(process::pty_events(
                req.sandbox_id.clone(),
                envd,
                tag,
                events,
            ))
        }
        .instrument(span)
        .await
    }

    async fn pty_input(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PtyInputRequest>,
    ) -> ServiceResult<PtyInputResponse> {
        let req = request.to_owned_message();
        let span = span("PtyInput", &req.sandbox_id);
        async {
            let tag = required("tag", &req.tag)?;
            let envd = self.envd(&req.sandbox_id).await?;
            envd.pty_input(tag, req.data.clone())
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(PtyInputResponse::default())
        }
        .instrument(span)
        .await
    }

    async fn pty_resize(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PtyResizeRequest>,
    ) -> ServiceResult<PtyResizeResponse> {
        let req = request.to_owned_message();
        let span = span("PtyResize", &req.sandbox_id);
        async {
            let tag = required("tag", &req.tag)?;
            if req.cols == 0 || req.rows == 0 {
                return Err(ConnectError::invalid_argument(
                    "cols and rows must be positive",
                ));
            }
            let envd = self.envd(&req.sandbox_id).await?;
            envd.pty_resize(tag, process::pty_size(req.cols, req.rows))
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(PtyResizeResponse::default())
        }
        .instrument(span)
        .await
    }

    async fn pty_kill(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PtyKillRequest>,
    ) -> ServiceResult<PtyKillResponse> {
        let req = request.to_owned_message();
        let span = span("PtyKill", &req.sandbox_id);
        async {
            let tag = required("tag", &req.tag)?;
            let envd = self.envd(&req.sandbox_id).await?;
            envd.pty_kill(tag)
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(PtyKillResponse::default())
        }
        .instrument(span)
        .await
    }

    async fn write_file(
        &self,
        _ctx: RequestContext,
        mut requests: InboundStream<WriteFileRequest>,
    ) -> ServiceResult<WriteFileResponse> {
        let meta = files::first_meta(&mut requests).await?;
        async {
            let path = required("path", &meta.path)?;
            let envd = self.envd(&meta.sandbox_id).await?;
            let fault = files::StreamFault::default();
            let written = envd
                .write_file(
                    path,
                    user(&meta.user),
                    files::chunks(requests, fault.clone()),
                )
                .await
                .map_err(|e| {
                    let client_fault = fault.lock().unwrap_or_else(|p| p.into_inner()).take();
                    client_fault.unwrap_or_else(|| envd_error(&meta.sandbox_id, e))
                })?;
            tracing::debug!(path = %written.path, size = written.size, "file written");
            Response::ok(WriteFileResponse {
                path: written.path,
                size: written.size,
                ..Default::default()
            })
        }
        .instrument(span("WriteFile", &meta.sandbox_id))
        .await
    }

    async fn read_file(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ReadFileRequest>,
    ) -> ServiceResult<ServiceStream<ReadFileResponse>> {
        let req = request.to_owned_message();
        let span = span("ReadFile", &req.sandbox_id);
        async {
            let path = required("path", &req.path)?;
            let envd = self.envd(&req.sandbox_id).await?;
            let content = envd
                .read_file(path, user(&req.user))
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            let id = req.sandbox_id.clone();
            let stream = content.map(move |r| {
                r.map(|chunk| ReadFileResponse {
                    chunk: chunk.to_vec(),
                    ..Default::default()
                })
                .map_err(|e| envd_error(&id, e))
            });
            Response::stream_ok(stream)
        }
        .instrument(span)
        .await
    }

    async fn list_dir(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let req = request.to_owned_message();
        let span = span("ListDir", &req.sandbox_id);
        async {
            let path = required("path", &req.path)?;
            let envd = self.envd(&req.sandbox_id).await?;
            let entries = envd
                .list_dir(path, req.depth, user(&req.user))
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(ListDirResponse {
                entries: entries.into_iter().map(files::file_entry).collect(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn make_dir(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let req = request.to_owned_message();
        let span = span("MakeDir", &req.sandbox_id);
        async {
            let path = required("path", &req.path)?;
            let envd = self.envd(&req.sandbox_id).await?;
            let entry = envd
                .make_dir(path, user(&req.user))
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(MakeDirResponse {
                entry: files::file_entry(entry).into(),
                ..Default::default()
            })
        }
        .instrument(span)
        .await
    }

    async fn remove_path(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, RemovePathRequest>,
    ) -> ServiceResult<RemovePathResponse> {
        let req = request.to_owned_message();
        let span = span("RemovePath", &req.sandbox_id);
        async {
            let path = required("path", &req.path)?;
            let envd = self.envd(&req.sandbox_id).await?;
            envd.remove(path, user(&req.user))
                .await
                .map_err(|e| envd_error(&req.sandbox_id, e))?;
            Response::ok(RemovePathResponse::default())
        }
        .instrument(span)
        .await
    }
}
