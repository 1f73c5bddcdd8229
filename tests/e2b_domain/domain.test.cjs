// The official E2B JavaScript SDK given only E2B_DOMAIN (and E2B_API_KEY,
// NODE_EXTRA_CA_CERTS for `wrenn up --domain`'s CA): run by crates/wrenn/tests/e2b_domain.rs,
// which makes the names resolve to the control plane.
const test = require('node:test')
const assert = require('node:assert/strict')
const { Sandbox } = require('e2b')

for (const v of ['E2B_API_URL', 'E2B_SANDBOX_URL', 'E2B_DEBUG']) {
  if (process.env[v]) throw new Error(`${v} must not be set: the domain alone is tested`)
}
for (const v of ['E2B_DOMAIN', 'E2B_API_KEY', 'NODE_EXTRA_CA_CERTS']) {
  if (!process.env[v]) throw new Error(`${v} is not set: run through cargo nextest -p wrenn --test e2b_domain`)
}
const domain = process.env.E2B_DOMAIN

test('create, run, kill by domain', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    assert.equal(sbx.sandboxDomain, domain)
    assert.equal(sbx.envdApiUrl, `https://49983-${sbx.sandboxId}.${domain}`)
    const r = await sbx.commands.run('echo hi')
    assert.equal(r.stdout, 'hi\n')
    assert.equal(r.exitCode, 0)
  } finally {
    assert.equal(await sbx.kill(), true)
  }
  assert.equal(await sbx.isRunning(), false)
})
