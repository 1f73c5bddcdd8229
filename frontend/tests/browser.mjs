// The dashboard in a real browser (Debian's Chromium driven by playwright-core) against a
// running `wrenn up`. Run by crates/wrenn/tests/dashboard.rs, which starts the server; alone:
//   WRENN_URL=http://127.0.0.1:8080 WRENN_ADMIN_PASSWORD=... WRENN_SHOTS=/tmp/shots node tests/browser.mjs
// Flows: sign up → create key → create sandbox → terminal command and its output (and again
// after a reload, re-attached) → upload a file and see it listed → pause → resume → delete;
// BYOC owner vs member; admin pages for the admin only (a non-admin is sent away, the API
// refuses). On every page: no console errors, no failed requests, no serious/critical axe
// violations, and screenshots at 1440×900 and 390×844. Exit 0 only when all of that held.
import { chromium } from 'playwright-core';
import axe from 'axe-core';
import fs from 'node:fs';
import path from 'node:path';

const URL_ = process.env.WRENN_URL ?? 'http://127.0.0.1:8080';
const ADMIN_EMAIL = process.env.WRENN_ADMIN_EMAIL ?? 'admin@wrenn.local';
const ADMIN_PASSWORD = process.env.WRENN_ADMIN_PASSWORD;
const SHOTS = process.env.WRENN_SHOTS ?? 'screenshots';
const CHROMIUM = process.env.WRENN_CHROMIUM ?? '/usr/bin/chromium';
// Where to ask the harness to start a BYOC agent with the revealed token (optional).
const AGENT_REQUEST = process.env.WRENN_AGENT_REQUEST;
const PASSWORD = 'correct horse battery';

if (!ADMIN_PASSWORD) throw new Error('WRENN_ADMIN_PASSWORD is not set');
if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
fs.mkdirSync(SHOTS, { recursive: true });

const problems = [];
// Refusals a flow provokes on purpose: [method, URL part, status], each allowed once.
const expected = [];
function wasExpected(method, url, status) {
	const i = expected.findIndex(([m, part, st]) => m === method && url.includes(part) && st === status);
	if (i < 0) return false;
	expected.splice(i, 1);
	return true;
}
let expectedConsole = 0;
const shots = [];
const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);

const browser = await chromium.launch({
	executablePath: CHROMIUM,
	headless: true,
	args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']
});

/** A signed-out browser context whose pages are watched for errors. */
async function newUser(label) {
	const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
	// The browser may reach only the server under test.
	await ctx.route('**/*', (route) => {
		const u = new URL(route.request().url());
		if (u.hostname !== '127.0.0.1') {
			problems.push(`${label}: request off loopback: ${u.href}`);
			return route.abort();
		}
		return route.continue();
	});
	const page = await ctx.newPage();
	page.on('console', (m) => {
		if (m.type() !== 'error') return;
		// Chromium logs a provoked refusal's status as an error too.
		if (expectedConsole > 0 && /status of 409/.test(m.text())) {
			expectedConsole--;
			return;
		}
		problems.push(`${label} ${page.url()}: console error: ${m.text()}`);
	});
	page.on('pageerror', (e) => problems.push(`${label} ${page.url()}: page error: ${e.message}`));
	page.on('requestfailed', (r) => {
		// Navigating away cancels in-flight polls; that is not a failure.
		const why = r.failure()?.errorText ?? '';
		if (!why.includes('ERR_ABORTED')) problems.push(`${label}: request failed: ${r.method()} ${r.url()} ${why}`);
	});
	page.on('response', (r) => {
		if (r.status() >= 400 && !wasExpected(r.request().method(), r.url(), r.status()))
			problems.push(`${label}: ${r.status()} for ${r.request().method()} ${r.url()}`);
	});
	page.on('dialog', (d) => d.accept());
	return { ctx, page, label };
}

/** axe-core on the page as it is now; serious and critical violations are failures. */
async function audit(page, name) {
	// evaluate() runs through the DevTools protocol, outside the page's CSP.
	await page.evaluate(axe.source);
	const res = await page.evaluate(() =>
		// @ts-ignore
		window.axe.run(document, { resultTypes: ['violations'] })
	);
	for (const v of res.violations) {
		if (v.impact === 'serious' || v.impact === 'critical') {
			const where = v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ');
			problems.push(`axe ${name}: ${v.impact} ${v.id}: ${v.help} (${where})`);
		}
	}
}

/** Screenshots at both sizes plus the accessibility pass. */
async function capture(page, name) {
	await page.waitForLoadState('networkidle').catch(() => {});
	// Axe and screenshots under reduced motion, which stills every animation: rows sliding in
	// would be measured (and pictured) half-faded. The flows themselves run with motion on.
	await page.emulateMedia({ reducedMotion: 'reduce' });
	for (const [w, h] of [
		[1440, 900],
		[390, 844]
	]) {
		await page.setViewportSize({ width: w, height: h });
		await page.waitForTimeout(150);
		// Both layouts: the phone one has its own menu button and scrolling tables.
		await audit(page, `${name}@${w}x${h}`);
		const file = path.join(SHOTS, `${name}-${w}x${h}.png`);
		await page.screenshot({ path: file, fullPage: true });
		shots.push(file);
	}
	await page.setViewportSize({ width: 1440, height: 900 });
	await page.emulateMedia({ reducedMotion: 'no-preference' });
	log('page ok:', name);
}

async function signup(u, email, name) {
	await u.page.goto(`${URL_}/signup`);
	await u.page.getByLabel('Name').fill(name);
	await u.page.getByLabel('Email').fill(email);
	await u.page.getByLabel('Password').fill(PASSWORD);
	await u.page.getByRole('button', { name: 'Sign up', exact: true }).last().click();
	await u.page.waitForURL('**/dashboard/sandboxes');
	await u.page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
}

async function login(u, email, password) {
	await u.page.goto(`${URL_}/login`);
	await u.page.getByLabel('Email').fill(email);
	await u.page.getByLabel('Password').fill(password);
	await u.page.locator('form').getByRole('button', { name: 'Sign in' }).click();
	await u.page.waitForURL('**/dashboard/sandboxes');
}

async function statusOf(page, id, want, timeoutMs = 240_000) {
	await page.locator(`tr[data-sandbox="${id}"] [data-status="${want}"]`).waitFor({ timeout: timeoutMs });
}

const termText = (page) => page.locator('[data-testid="terminal"] .xterm-rows').innerText();

async function typeInTerminal(page, command, expect) {
	await page.locator('[data-testid="terminal-state"]', { hasText: 'connected' }).waitFor({ timeout: 60_000 });
	await page.locator('[data-testid="terminal"] .xterm').click();
	await page.keyboard.type(command);
	await page.keyboard.press('Enter');
	const deadline = Date.now() + 30_000;
	while (!(await termText(page)).includes(expect)) {
		if (Date.now() > deadline) throw new Error(`terminal never showed ${expect}: ${await termText(page)}`);
		await page.waitForTimeout(200);
	}
}

let exitCode = 0;
try {
	// --- Signed out: login and signup pages.
	const ada = await newUser('ada');
	await ada.page.goto(`${URL_}/`);
	await ada.page.waitForURL('**/login');
	await capture(ada.page, 'login');
	await ada.page.goto(`${URL_}/signup`);
	await capture(ada.page, 'signup');

	// --- Sign up → key → sandbox.
	await signup(ada, 'ada@example.com', 'Ada');
	log('signed up');
	await ada.page.getByRole('link', { name: 'API keys' }).click();
	await ada.page.getByLabel('Name').fill('ci');
	await ada.page.getByRole('button', { name: 'Create key' }).click();
	const key = await ada.page.locator('[data-testid="key-value"]').innerText();
	if (!/^wrn_[0-9a-f]{32}$/.test(key)) problems.push(`revealed key looks wrong: ${key}`);
	await capture(ada.page, 'keys');
	await ada.page.getByRole('button', { name: 'Done' }).click();

	await ada.page.getByRole('link', { name: 'Sandboxes' }).click();
	await ada.page.getByRole('button', { name: 'New sandbox' }).click();
	const dialog = ada.page.getByRole('dialog');
	await dialog.locator('select[name="template"] option[value="base"]').waitFor({ state: 'attached' });
	await dialog.getByLabel('Memory (MiB)').fill('512');
	await dialog.getByLabel('Metadata').fill('suite=dashboard');
	await capture(ada.page, 'sandbox-create');
	await dialog.getByRole('button', { name: 'Create' }).click();
	const row = ada.page.locator('tr[data-sandbox]').first();
	await row.waitFor({ timeout: 240_000 });
	const id = await row.getAttribute('data-sandbox');
	await statusOf(ada.page, id, 'running');
	log('sandbox running', id);
	await capture(ada.page, 'sandboxes');
	// Filters: by metadata (match, then none) and by status.
	const metaFilter = ada.page.getByLabel('Metadata', { exact: true });
	await metaFilter.fill('suite=nope');
	await metaFilter.press('Enter');
	await ada.page.getByText('No sandboxes.').waitFor();
	await metaFilter.fill('suite=dashboard');
	await metaFilter.press('Enter');
	await ada.page.locator(`tr[data-sandbox="${id}"]`).waitFor();
	await ada.page.getByLabel('Status').selectOption('paused');
	await ada.page.getByText('No sandboxes.').waitFor();
	await ada.page.getByLabel('Status').selectOption('running');
	await ada.page.locator(`tr[data-sandbox="${id}"]`).waitFor();
	await metaFilter.fill('');
	await metaFilter.press('Enter');
	await ada.page.getByLabel('Status').selectOption('');
	log('filters ok');

	// --- Terminal: a command and its output; a reload re-attaches to the same PTY.
	await ada.page.locator(`a[href="/dashboard/sandboxes/${id}"]`).click();
	await typeInTerminal(ada.page, 'echo dash-$((6*7))', 'dash-42');
	const tag = await ada.page.evaluate((k) => sessionStorage.getItem(k), `wrenn_pty_${id}`);
	await capture(ada.page, 'sandbox-terminal');
	await ada.page.reload();
	await typeInTerminal(ada.page, 'echo again-$((2*3))', 'again-6');
	const tag2 = await ada.page.evaluate((k) => sessionStorage.getItem(k), `wrenn_pty_${id}`);
	if (!tag || tag !== tag2) problems.push(`reload did not re-attach: tag ${tag} then ${tag2}`);
	log('terminal ok, tag', tag);

	// --- Metrics: the host's samples as charts, each with its value as text.
	await ada.page.getByRole('tab', { name: 'Metrics' }).click();
	await ada.page.locator('[data-testid="metrics-cpu"]', { hasText: '%' }).waitFor({ timeout: 30_000 });
	await ada.page.locator('[data-testid="metrics-memory"]', { hasText: 'MiB' }).waitFor();
	await ada.page.locator('[data-testid="metrics-disk"]').waitFor();
	await capture(ada.page, 'sandbox-metrics');
	log('metrics ok');

	// --- Files: upload and see it listed.
	await ada.page.getByRole('tab', { name: 'Files' }).click();
	await ada.page.locator('table').waitFor();
	await ada.page.locator('[data-testid="upload-input"]').setInputFiles({
		name: 'hello.txt',
		mimeType: 'text/plain',
		buffer: Buffer.from('hello from the dashboard\n')
	});
	await ada.page.locator('tr[data-file="hello.txt"]').waitFor({ timeout: 30_000 });
	await ada.page.getByLabel('New folder name').fill('made-here');
	await ada.page.getByRole('button', { name: 'Create folder' }).click();
	await ada.page.locator('tr[data-file="made-here"]').waitFor({ timeout: 30_000 });
	await capture(ada.page, 'sandbox-files');
	// Download gives back what was uploaded; remove takes the folder away.
	const [download] = await Promise.all([
		ada.page.waitForEvent('download'),
		ada.page.locator('tr[data-file="hello.txt"]').getByRole('button', { name: 'Download' }).click()
	]);
	const got = fs.readFileSync(await download.path(), 'utf8');
	if (got !== 'hello from the dashboard\n') problems.push(`downloaded ${JSON.stringify(got)}`);
	await ada.page.locator('tr[data-file="made-here"]').getByRole('button', { name: 'Remove' }).click();
	await ada.page.locator('tr[data-file="made-here"]').waitFor({ state: 'detached', timeout: 30_000 });
	log('files ok');

	// --- Pause → resume → delete.
	await ada.page.getByRole('link', { name: '← Sandboxes' }).click();
	const r = () => ada.page.locator(`tr[data-sandbox="${id}"]`);
	await r().getByRole('button', { name: 'Pause' }).click();
	await statusOf(ada.page, id, 'paused');
	log('paused');
	await r().getByRole('button', { name: 'Resume' }).click();
	await statusOf(ada.page, id, 'running');
	log('resumed');

	// --- Snapshot template from it, listed, then deleted (no dependants: no 409).
	await r().getByRole('button', { name: 'Snapshot' }).click();
	await ada.page.getByRole('dialog').getByLabel('Name').fill('dash-snap');
	await capture(ada.page, 'snapshot-dialog');
	await ada.page.getByRole('dialog').getByRole('button', { name: 'Create template' }).click();
	await ada.page.getByRole('status').filter({ hasText: 'dash-snap' }).waitFor({ timeout: 240_000 });
	await statusOf(ada.page, id, 'running');
	log('snapshot made');

	await r().getByRole('button', { name: 'Delete' }).click();
	await r().waitFor({ state: 'detached', timeout: 60_000 });
	log('deleted');

	// --- A sandbox from the snapshot template (its shape fixed), so the template's delete
	// is refused with the list of its dependants, then forced.
	await ada.page.getByRole('button', { name: 'New sandbox' }).click();
	await dialog.locator('select[name="template"] option[value="dash-snap"]').waitFor({ state: 'attached' });
	await dialog.locator('select[name="template"]').selectOption('dash-snap');
	await dialog.getByText("vCPUs and memory are fixed").waitFor();
	await dialog.getByRole('button', { name: 'Create' }).click();
	const cloneRow = ada.page.locator('tr[data-sandbox]').first();
	await cloneRow.waitFor({ timeout: 240_000 });
	const clone = await cloneRow.getAttribute('data-sandbox');
	await statusOf(ada.page, clone, 'running');
	if ((await cloneRow.locator('td').nth(2).innerText()) !== 'dash-snap') problems.push('clone not from dash-snap');
	log('sandbox from the snapshot template running', clone);

	await ada.page.getByRole('link', { name: 'Snapshot templates' }).click();
	const snapRow = ada.page.locator('tr', { hasText: 'dash-snap' });
	await snapRow.waitFor();
	expected.push(['DELETE', '/v1/snapshots/dash-snap', 409]);
	expectedConsole++;
	await snapRow.getByRole('button', { name: 'Delete' }).click();
	// The refused delete (409) names the sandbox that uses it.
	const blocked = ada.page.getByRole('alert').filter({ hasText: 'Sandboxes still use' });
	await blocked.locator(`a[href="/dashboard/sandboxes/${clone}"]`).waitFor();
	await capture(ada.page, 'templates-409');
	await blocked.getByRole('button', { name: 'Delete anyway' }).click();
	await snapRow.waitFor({ state: 'detached', timeout: 60_000 });
	await capture(ada.page, 'templates');
	log('snapshot template deleted (forced past its dependant)');

	await ada.page.getByRole('link', { name: 'Sandboxes' }).click();
	const cr = ada.page.locator(`tr[data-sandbox="${clone}"]`);
	await cr.getByRole('button', { name: 'Delete' }).click();
	await cr.waitFor({ state: 'detached', timeout: 60_000 });
	log('clone deleted');
	await ada.page.getByRole('link', { name: 'Team' }).click();
	await ada.page.getByRole('heading', { name: /^Team/ }).waitFor();
	await capture(ada.page, 'team');
	if (await ada.page.locator('[data-testid="nav-byoc"]').count()) problems.push('BYOC nav shown for a team that is not BYOC');
	if (await ada.page.locator('[data-testid="admin-shield"]').count()) problems.push('admin shield shown to a non-admin');

	// --- A second account; Ada adds it to her team as a member.
	const bob = await newUser('bob');
	await signup(bob, 'bob@example.com', 'Bob');
	await ada.page.getByLabel('Email of an existing account').fill('bob@example.com');
	await ada.page.getByRole('button', { name: 'Add member' }).click();
	await ada.page.getByRole('cell', { name: 'bob@example.com', exact: true }).waitFor();
	// An email without an account is invited instead; the invitation is listed, then revoked.
	await ada.page.getByLabel('Invite an email without an account').fill('carol@example.com');
	await ada.page.getByRole('button', { name: 'Invite', exact: true }).click();
	const inv = ada.page.locator('tr[data-invitation="carol@example.com"]');
	await inv.waitFor();
	await capture(ada.page, 'team-invite');
	await inv.getByRole('button', { name: 'Revoke' }).click();
	await inv.waitFor({ state: 'detached' });
	log('member added, invitation made and revoked');

	// --- The admin: admin pages, and makes Ada's team BYOC.
	const admin = await newUser('admin');
	await login(admin, ADMIN_EMAIL, ADMIN_PASSWORD);
	await admin.page.locator('[data-testid="admin-shield"]').click();
	await admin.page.waitForURL('**/admin/hosts');
	await admin.page.locator('td', { hasText: 'online' }).first().waitFor({ timeout: 60_000 });
	await capture(admin.page, 'admin-hosts');
	await admin.page.getByRole('tab', { name: 'BYOC' }).click();
	await capture(admin.page, 'admin-hosts-byoc');
	await admin.page.getByRole('link', { name: 'Teams' }).click();
	const adaTeam = admin.page.locator('tr[data-team]', { hasText: 'Ada' }).first();
	await adaTeam.getByRole('button', { name: 'Enable BYOC' }).click();
	await adaTeam.getByRole('button', { name: 'Disable BYOC' }).waitFor();
	await capture(admin.page, 'admin-teams');
	log('admin ok');

	// --- BYOC as owner: nav visible, register reveals the token and the agent command.
	await ada.page.goto(`${URL_}/dashboard/sandboxes`);
	await ada.page.locator('a[data-testid="nav-byoc"]').click();
	await ada.page.getByLabel('Host name').fill('rack-2');
	await ada.page.getByRole('button', { name: 'Register host' }).click();
	const cmd = await ada.page.locator('[data-testid="agent-command"]').innerText();
	const token = await ada.page.locator('[data-testid="registration-token"]').innerText();
	if (!cmd.includes(`--register ${token}`) || !cmd.includes(`--cp-url ${URL_}`)) problems.push(`agent command wrong: ${cmd}`);
	await ada.page.locator('tr[data-host="rack-2"] [data-status="pending"]').waitFor();
	await capture(ada.page, 'byoc');
	// The test harness runs the shown command (on a host address of its namespace); the
	// registered agent must then show online, and deleting it (no sandboxes) removes it.
	if (AGENT_REQUEST) {
		// The agent registers under its own hostname: follow the row by host ID.
		const hostId = await ada.page.locator('tr[data-host="rack-2"]').getAttribute('data-host-id');
		const hostRow = ada.page.locator(`tr[data-host-id="${hostId}"]`);
		fs.writeFileSync(AGENT_REQUEST + '.tmp', JSON.stringify({ command: cmd, token }));
		fs.renameSync(AGENT_REQUEST + '.tmp', AGENT_REQUEST);
		await hostRow.locator('[data-status="online"]').waitFor({ timeout: 120_000 });
		log('byoc agent online');
		await ada.page.getByRole('button', { name: 'Done' }).click();
		await capture(ada.page, 'byoc-online');
		await hostRow.getByRole('button', { name: 'Delete' }).click();
		await ada.page.getByText('No sandboxes run on it').waitFor();
		await ada.page.getByRole('button', { name: 'Delete host' }).click();
		await hostRow.waitFor({ state: 'detached', timeout: 30_000 });
		log('byoc host deleted');
	}
	log('byoc owner ok');

	// --- BYOC as member: Bob switches to Ada's team; the nav item is there but disabled.
	await bob.page.reload();
	const switcher = bob.page.locator('[data-testid="team-switcher"]');
	const adaOption = await switcher.locator('option', { hasText: 'member' }).getAttribute('value');
	await switcher.selectOption(adaOption);
	await bob.page.locator('span[data-testid="nav-byoc"][aria-disabled="true"]').waitFor({ timeout: 30_000 });
	if (await bob.page.locator('a[data-testid="nav-byoc"]').count()) problems.push('BYOC nav is a link for a member');
	await capture(bob.page, 'member-sandboxes');

	// --- Admin pages refused to a non-admin: sent away, and the API says 403.
	await bob.page.goto(`${URL_}/admin/hosts`);
	await bob.page.waitForURL(/\/dashboard\/sandboxes\?denied=admin$/);
	const bobToken = await bob.page.evaluate(() => localStorage.getItem('wrenn_token'));
	for (const p of ['/v1/admin/hosts', '/v1/admin/teams']) {
		const resp = await fetch(`${URL_}${p}`, { headers: { Authorization: `Bearer ${bobToken}` } });
		if (resp.status !== 403) problems.push(`${p} for a non-admin: ${resp.status}, want 403`);
	}
	log('non-admin refused');

	// --- The headers the server sends with the app.
	const idx = await fetch(`${URL_}/dashboard/sandboxes`);
	const csp = idx.headers.get('content-security-policy') ?? '';
	if (!csp.includes("script-src 'self'") || csp.includes('unsafe-eval')) problems.push(`CSP: ${csp}`);
	if (idx.headers.get('cache-control') !== 'no-cache') problems.push(`index cache-control: ${idx.headers.get('cache-control')}`);

	await ada.ctx.close();
	await bob.ctx.close();
	await admin.ctx.close();
} catch (e) {
	problems.push(`flow failed: ${e?.stack ?? e}`);
} finally {
	await browser.close();
}

if (expected.length) problems.push(`provoked refusals that never came: ${JSON.stringify(expected)}`);
console.log(`screenshots (${shots.length}) in ${path.resolve(SHOTS)}:`);
for (const s of shots) console.log('  ' + path.basename(s));
if (problems.length) {
	console.log(`FAILED: ${problems.length} problem(s):`);
	for (const p of problems) console.log('  - ' + p);
	exitCode = 1;
} else {
	console.log(`OK in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
process.exit(exitCode);
