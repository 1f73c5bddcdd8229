// The signed-in session. Only the token and the chosen team are kept in localStorage; who the
// user is, whether they are a platform admin, and the team's role and BYOC state are always
// read fresh from /v1/me (never decoded from the JWT).
import { goto } from '$app/navigation';
import { api, type AuthResponse, type Me, type Membership } from './api';

const TOKEN = 'wrenn_token';

class Session {
	token = $state<string | null>(null);
	me = $state<Me | null>(null);
	loading = $state(false);

	constructor() {
		if (typeof localStorage !== 'undefined') this.token = localStorage.getItem(TOKEN);
	}

	get team(): Membership | null {
		const me = this.me;
		return me?.teams.find((t) => t.id === me.team_id) ?? null;
	}

	get isAdmin(): boolean {
		return this.me?.user.is_admin ?? false;
	}

	get canManage(): boolean {
		const r = this.team?.role;
		return r === 'owner' || r === 'admin';
	}

	signedIn(r: AuthResponse) {
		this.token = r.token;
		localStorage.setItem(TOKEN, r.token);
		this.me = null;
	}

	async refresh(): Promise<Me | null> {
		if (!this.token) return null;
		this.loading = true;
		try {
			this.me = await api<Me>('/v1/me');
		} finally {
			this.loading = false;
		}
		return this.me;
	}

	async switchTeam(teamId: string) {
		const r = await api<AuthResponse>('/v1/auth/switch-team', { method: 'POST', body: { team_id: teamId } });
		this.signedIn(r);
		await this.refresh();
	}

	expire() {
		this.clear();
		void goto('/login');
	}

	clear() {
		this.token = null;
		this.me = null;
		localStorage.removeItem(TOKEN);
	}
}

export const session = new Session();
