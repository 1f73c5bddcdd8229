// The control plane's REST API, same origin. Errors carry the API's `{error: {code, message}}`.
import { session } from './session.svelte';

export class ApiError extends Error {
	constructor(
		public status: number,
		public code: string,
		message: string,
		public body: unknown
	) {
		super(message);
	}
}

type Opts = { method?: string; body?: unknown; raw?: BodyInit; signal?: AbortSignal; headers?: Record<string, string> };

async function request(path: string, opts: Opts = {}): Promise<Response> {
	const headers: Record<string, string> = { ...(opts.headers ?? {}) };
	if (session.token) headers['Authorization'] = `Bearer ${session.token}`;
	let body: BodyInit | undefined = opts.raw;
	if (opts.body !== undefined) {
		headers['Content-Type'] = 'application/json';
		body = JSON.stringify(opts.body);
	}
	const resp = await fetch(path, { method: opts.method ?? 'GET', headers, body, signal: opts.signal });
	if (!resp.ok) {
		let parsed: unknown = null;
		try {
			parsed = await resp.json();
		} catch {
			/* not JSON: keep the status line */
		}
		const err = (parsed as { error?: { code?: string; message?: string } } | null)?.error;
		if (resp.status === 401 && session.token && !path.startsWith('/v1/auth/')) session.expire();
		throw new ApiError(resp.status, err?.code ?? 'http_' + resp.status, err?.message ?? resp.statusText, parsed);
	}
	return resp;
}

export async function api<T = unknown>(path: string, opts: Opts = {}): Promise<T> {
	const resp = await request(path, opts);
	if (resp.status === 204) return undefined as T;
	const text = await resp.text();
	return (text ? JSON.parse(text) : undefined) as T;
}

export async function apiBlob(path: string): Promise<Blob> {
	return (await request(path)).blob();
}

export function errorText(e: unknown): string {
	if (e instanceof ApiError) return e.message;
	if (e instanceof Error) return e.message;
	return String(e);
}

/** Upload with progress (fetch has no upload progress). */
export function upload(path: string, file: Blob, onProgress: (fraction: number) => void): Promise<void> {
	return new Promise((resolve, reject) => {
		const xhr = new XMLHttpRequest();
		xhr.open('PUT', path);
		if (session.token) xhr.setRequestHeader('Authorization', `Bearer ${session.token}`);
		xhr.setRequestHeader('Content-Type', 'application/octet-stream');
		xhr.upload.onprogress = (e) => {
			if (e.lengthComputable) onProgress(e.loaded / e.total);
		};
		xhr.onload = () => {
			if (xhr.status >= 200 && xhr.status < 300) {
				onProgress(1);
				resolve();
			} else {
				let msg = xhr.statusText;
				try {
					msg = JSON.parse(xhr.responseText).error.message;
				} catch {
					/* keep the status text */
				}
				reject(new ApiError(xhr.status, 'upload_failed', msg, null));
			}
		};
		xhr.onerror = () => reject(new ApiError(0, 'network', 'upload failed: network error', null));
		xhr.send(file);
	});
}

export type Role = 'owner' | 'admin' | 'member';
export type Team = { id: string; name: string; slug: string; is_byoc: boolean; created_at: number };
export type Membership = Team & { role: Role };
export type User = { id: string; email: string; name: string; is_admin: boolean; created_at: number };
export type AuthResponse = { token: string; expires_at: number; user: User; team: Team; role: Role };
export type Me = { user: User; team_id: string; role: Role; teams: Membership[] };

export type Sandbox = {
	id: string;
	status: string;
	template: string;
	vcpus: number;
	memory_mb: number;
	disk_size_mb: number;
	timeout_sec: number;
	end_at: number | null;
	on_timeout: string;
	host_id: string | null;
	host_ip: string | null;
	error: string | null;
	metadata: Record<string, string>;
	created_at: number;
	started_at: number | null;
	last_active_at: number;
};
export type Template = { name: string; type: 'base' | 'snapshot'; platform: boolean; vcpus: number; memory_mb: number; disk_size_mb: number; size_bytes: number; created_at: number };
export type FileEntry = { name: string; path: string; type: 'file' | 'directory' | 'symlink'; size: number; permissions: string; owner: string; modified_at: number };
export type Host = {
	id: string;
	team_id: string | null;
	name: string;
	address: string;
	status: string;
	last_heartbeat_at: number | null;
	created_at: number;
	capacity: Record<string, number>;
	team_name?: string | null;
};
