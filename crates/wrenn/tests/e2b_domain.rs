//! The official E2B SDKs with `E2B_DOMAIN` alone (no `E2B_API_URL` / `E2B_SANDBOX_URL`)
//! against `wrenn up --domain wrenn.test` on port 443: the SDKs call `https://api.wrenn.test`
//! and `https://49983-<id>.wrenn.test`, trusting `wrenn up`'s CA through `SSL_CERT_FILE`
//! (Python) and `NODE_EXTRA_CA_CERTS` (JS). It runs what is particular to the domain
//! (`tests/e2b_domain`: the URLs the SDKs derive, a guest port by host name) and then the
//! whole SDK suites of `e2b_sdk.rs` (`tests/e2b_sdk`, `tests/e2b_js`) the same way.
//!
//! Names: the test answers DNS itself on 127.0.0.1:53 inside its network namespace (A
//! 127.0.0.1 for anything under wrenn.test, NXDOMAIN otherwise), and runs the SDKs in a
//! private mount namespace whose /etc/resolv.conf is a bind mount of a temp file naming that
//! server; the machine's own /etc is never touched. Versions are pinned in scripts/lib.sh;
//! without them this test fails, it never skips.
mod agent;
#[path = "up_support/mod.rs"]
mod up_support;

use std::ffi::OsStr;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent::AgentEnv;
use up_support::{Up, other_team_key, prerequisite};

const DOMAIN: &str = "wrenn.test";

/// The DNS answer to `query`: A 127.0.0.1 for `DOMAIN` and names under it (no records of
/// other types), NXDOMAIN for the rest; `None` for what is not a one-question query.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes([*q.get(2)?, *q.get(3)?]);
    // Responses, and opcodes other than QUERY.
    if flags & 0x8000 != 0 || flags & 0x7800 != 0 || q.get(4..6)? != [0, 1] {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        // Questions are never compressed.
        if len & 0xc0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let (qtype, qclass) = (q.get(i..i + 2)?, q.get(i + 2..i + 4)?);
    let name = labels.join(".");
    let ours = name == DOMAIN || name.ends_with(&format!(".{DOMAIN}"));
    let answers = u16::from(ours && qtype == [0, 1] && qclass == [0, 1]);
    let mut r = Vec::with_capacity(i + 4 + 16);
    r.extend_from_slice(&q[..2]);
    // QR, AA, the query's RD, RA; NOERROR or NXDOMAIN.
    let rcode = if ours { 0 } else { 3 };
    r.extend_from_slice(&(0x8480 | (flags & 0x0100) | rcode).to_be_bytes());
    for count in [1, answers, 0, 0] {
        r.extend_from_slice(&count.to_be_bytes());
    }
    r.extend_from_slice(&q[12..i + 4]);
    if answers == 1 {
        // Name: pointer to the question's; A, IN, TTL 60, 4 bytes.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}

/// The test's DNS server on 127.0.0.1:53 of the calling thread's network namespace; stops
/// when dropped.
struct Dns {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        // Bound here, so in this thread's (the test's) network namespace.
        let sock = UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(r) = dns_answer(&buf[..n]) {
                    let _ = sock.send_to(&r, peer);
                }
            }
        });
        Dns {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `argv` in a private mount namespace where /etc/resolv.conf is `resolv`, with a clean
/// environment for the E2B variables: only `env` is set. The mount dies with the process.
fn in_resolver(resolv: &Path, argv: &[&OsStr], env: &[(&str, &OsStr)]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(resolv)
        .args(argv)
        .stdin(Stdio::null());
    for v in [
        "E2B_API_URL",
        "E2B_SANDBOX_URL",
        "E2B_DEBUG",
        "E2B_DOMAIN",
        "E2B_API_KEY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    // SAFETY: prctl only; the SDK process goes when the test does.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_sdks_work_with_the_domain_alone() {
    let venv = prerequisite("WRENN_VENV", "the E2B Python SDK venv (ensure_venv)");
    let js = prerequisite("WRENN_E2B_JS", "the npm e2b SDK (ensure_js_sdk)");
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2b_domain");
    // The test thread enters the host stand-in namespace: 443 and 53 are its own.
    let env = AgentEnv::without_agent(&[]);
    let _dns = Dns::start();
    let mut resolv = tempfile::NamedTempFile::new().expect("temp resolv.conf");
    std::io::Write::write_all(&mut resolv, b"nameserver 127.0.0.1\noptions timeout:2\n")
        .expect("write resolv.conf");
    let resolv = resolv.into_temp_path();

    let up = Up::start_with(&env, "127.0.0.1:443", &["--domain", DOMAIN]);
    assert_eq!(up.url, format!("https://api.{DOMAIN}:443"));
    let ca = env.root.path().join("tls/ca.pem");
    assert!(ca.exists(), "{} missing", ca.display());

    // The names resolve in the SDKs' world (and only there).
    let look = in_resolver(
        &resolv,
        &[
            "getent".as_ref(),
            "ahostsv4".as_ref(),
            "49983-x.wrenn.test".as_ref(),
        ],
        &[],
    )
    .output()
    .expect("getent");
    assert!(
        look.status.success() && text(&look).starts_with("127.0.0.1"),
        "{}",
        text(&look)
    );

    let other = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(other_team_key(&up.local));
    let common: [(&str, &OsStr); 3] = [
        ("E2B_API_KEY", up.key.as_ref()),
        ("E2B_DOMAIN", DOMAIN.as_ref()),
        ("WRENN_OTHER_TEAM_KEY", other.as_ref()),
    ];
    let python = venv.join("bin/python");
    let py_test = tests.join("test_domain.py");
    let mut py_env = common.to_vec();
    py_env.push(("SSL_CERT_FILE", ca.as_os_str()));
    let pytest = |path: &Path| {
        in_resolver(
            &resolv,
            &[
                python.as_os_str(),
                "-m".as_ref(),
                "pytest".as_ref(),
                "-q".as_ref(),
                "-p".as_ref(),
                "no:cacheprovider".as_ref(),
                "-rA".as_ref(),
                path.as_os_str(),
            ],
            &py_env,
        )
    };
    let py = pytest(&py_test);
    let py_suite = pytest(&tests.join("../e2b_sdk"));
    let js_test = tests.join("domain.test.cjs");
    let mut js_env = common.to_vec();
    js_env.push(("NODE_EXTRA_CA_CERTS", ca.as_os_str()));
    let node_path = js.join("node_modules");
    js_env.push(("NODE_PATH", node_path.as_os_str()));
    let node_test = |path: &Path| {
        in_resolver(
            &resolv,
            &["node".as_ref(), "--test".as_ref(), path.as_os_str()],
            &js_env,
        )
    };
    let node = node_test(&js_test);
    let node_suite = node_test(&tests.join("../e2b_js/sdk.test.cjs"));
    let mut failed = Vec::new();
    for (name, mut cmd) in [
        ("Python e2b (tests/e2b_domain/test_domain.py)", py),
        ("JavaScript e2b (tests/e2b_domain/domain.test.cjs)", node),
        ("Python e2b (tests/e2b_sdk) by domain", py_suite),
        ("JavaScript e2b (tests/e2b_js) by domain", node_suite),
    ] {
        let out = cmd.output().expect("run the suite");
        let ok = out.status.success();
        eprintln!(
            "===== {name}: {}\n{}",
            if ok { "passed" } else { "FAILED" },
            text(&out)
        );
        if !ok {
            failed.push(name);
        }
    }
    up.stop();
    assert!(
        failed.is_empty(),
        "failed suites: {failed:?} (output above)"
    );
    assert!(env.qemu_pids().is_empty(), "sandboxes left running");
}

#[test]
fn the_dns_answers() {
    // Query for api.wrenn.test A, RD set.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let name = |q: &mut Vec<u8>, n: &str| {
        for l in n.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
    };
    name(&mut q, "API.wrenn.test");
    q.extend_from_slice(&[0, 1, 0, 1]);
    let r = dns_answer(&q).expect("answer");
    assert_eq!(&r[..4], &[0x12, 0x34, 0x85, 0x80]);
    assert_eq!(&r[4..12], &[0, 1, 0, 1, 0, 0, 0, 0]);
    assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 1]);
    // AAAA: no records, no error.
    let mut aaaa = q.clone();
    let n = aaaa.len();
    aaaa[n - 3] = 28;
    let r = dns_answer(&aaaa).expect("answer");
    assert_eq!((r[3] & 0x0f, r[7]), (0, 0));
    // Elsewhere: NXDOMAIN.
    let mut other = q[..12].to_vec();
    name(&mut other, "example.com");
    other.extend_from_slice(&[0, 1, 0, 1]);
    let r = dns_answer(&other).expect("answer");
    assert_eq!((r[3] & 0x0f, r[7]), (3, 0));
    // Garbage and truncation: no answer, no panic.
    assert!(dns_answer(&q[..q.len() - 3]).is_none());
    assert!(dns_answer(&[0xff; 5]).is_none());
}
