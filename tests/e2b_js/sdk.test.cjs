// The official E2B JavaScript SDK (npm `e2b`, pinned in scripts/lib.sh), unchanged, against a
// Wrenn control plane, with NODE_PATH pointing at the installed SDK. Run twice: by
// crates/wrenn/tests/e2b_sdk.rs with E2B_API_KEY / E2B_API_URL / E2B_SANDBOX_URL, and by
// crates/wrenn/tests/e2b_domain.rs with E2B_API_KEY / E2B_DOMAIN over HTTPS.
const test = require('node:test')
const assert = require('node:assert/strict')
const { Sandbox, CommandExitError, TimeoutError, NotFoundError } = require('e2b')

const byUrl = process.env.E2B_API_URL && process.env.E2B_SANDBOX_URL
if (!process.env.E2B_API_KEY || !(byUrl || process.env.E2B_DOMAIN)) {
  throw new Error('set E2B_API_KEY and E2B_API_URL + E2B_SANDBOX_URL or E2B_DOMAIN: run through cargo nextest -p wrenn --test e2b_sdk / e2b_domain')
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

test('create, run, files, info, list, kill', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: 'e2b-js' }, envs: { GREETING: 'hi' }, timeoutMs: 120_000 })
  try {
    const r = await sbx.commands.run('echo $GREETING && echo oops 1>&2')
    assert.equal(r.stdout, 'hi\n')
    assert.equal(r.stderr, 'oops\n')
    assert.equal(r.exitCode, 0)
    await assert.rejects(sbx.commands.run('exit 3'), (e) => e instanceof CommandExitError && e.exitCode === 3)
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 2000 }), TimeoutError)

    await sbx.files.write('/home/user/hello.txt', 'hi there')
    assert.equal(await sbx.files.read('/home/user/hello.txt'), 'hi there')
    assert.ok((await sbx.files.list('/home/user')).some((e) => e.name === 'hello.txt'))
    assert.equal(await sbx.files.exists('/home/user/hello.txt'), true)
    await sbx.files.remove('/home/user/hello.txt')
    assert.equal(await sbx.files.exists('/home/user/hello.txt'), false)

    const info = await sbx.getInfo()
    assert.equal(info.state, 'running')
    assert.deepEqual(info.metadata, { suite: 'e2b-js' })
    const listed = await Sandbox.list({ query: { metadata: { suite: 'e2b-js' } } }).nextItems()
    assert.ok(listed.some((s) => s.sandboxId === sbx.sandboxId))
  } finally {
    assert.equal(await sbx.kill(), true)
  }
  assert.equal(await sbx.isRunning(), false)
})

test('background command, connect, watchDir, timeout, metrics, pty', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 300_000 })
  try {
    const h = await sbx.commands.run('for i in 1 2 3; do echo tick $i; sleep 0.3; done', { background: true })
    const again = await sbx.commands.connect(h.pid)
    assert.match((await again.wait()).stdout, /tick 3/)

    await sbx.files.makeDir('/home/user/w')
    const seen = []
    const watch = await sbx.files.watchDir('/home/user/w', (ev) => seen.push(ev.name))
    await sbx.files.write('/home/user/w/a.txt', 'x')
    for (let i = 0; i < 100 && !seen.includes('a.txt'); i++) await sleep(200)
    await watch.stop()
    assert.ok(seen.includes('a.txt'), JSON.stringify(seen))

    const before = (await sbx.getInfo()).endAt
    await sbx.setTimeout(600_000)
    assert.ok((await sbx.getInfo()).endAt > before)
    const metrics = await sbx.getMetrics()
    assert.ok(metrics.length > 0 && metrics.at(-1).memTotal > 0)

    const out = []
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => out.push(Buffer.from(d)) })
    await sbx.pty.resize(pty.pid, { cols: 100, rows: 40 })
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; exit\n'))
    await pty.wait()
    assert.match(Buffer.concat(out).toString(), /40 100/)
  } finally {
    await sbx.kill()
  }
})

test('pause then connect keeps memory; snapshot; not found', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 300_000 })
  try {
    await sbx.commands.run('echo in-memory > /dev/shm/keep')
    assert.equal(await sbx.pause(), true)
    const resumed = await Sandbox.connect(sbx.sandboxId)
    assert.equal((await resumed.commands.run('cat /dev/shm/keep')).stdout, 'in-memory\n')
    const snap = await resumed.createSnapshot()
    const clone = await Sandbox.create(snap.snapshotId, { timeoutMs: 120_000 })
    try {
      assert.equal((await clone.commands.run('cat /dev/shm/keep')).stdout, 'in-memory\n')
    } finally {
      await clone.kill()
    }
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
  } finally {
    await sbx.kill()
  }
  await assert.rejects(Sandbox.connect('aaaaaaaaaaaaaaaaaaaa'), NotFoundError)
})
