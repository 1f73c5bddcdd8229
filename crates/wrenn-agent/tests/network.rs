//! Per-sandbox networking against the real kernel, with real packets. Every test builds its own
//! world of network namespaces named `<prefix>-*` (prefix unique per test process):
//!
//! - `<p>-host` stands in for the host (FORWARD policy accept, ip_forward=1); the code under
//!   test runs on a thread inside it, so the root namespace is never touched;
//! - `<p>-out` stands in for the internet (192.0.2.1, TEST-NET-1), the host's default route;
//! - `<p>-g<slot>` stands in for a VM: its `eth0` (169.254.0.21/30) is joined by a veth whose
//!   other end replaces the TAP `tap0` in the sandbox namespace (same name, same address, so the
//!   sandbox's rules apply unchanged).
//!
//! A Drop guard deletes every `<p>-*` namespace, so nothing is left even when a test fails.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use wrenn_agent::network::{Egress, Network, NetworkConfig, SandboxNet};

const ENVD_PORT: u16 = 49983;
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOST_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OUTSIDE_PORT: u16 = 8080;
const HOST_SERVICE_PORT: u16 = 8081;
/// Blocked traffic is dropped silently, so a refused connection shows as this timeout.
const BLOCKED_TIMEOUT: Duration = Duration::from_millis(800);

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Runs `f` on a thread inside the named namespace.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs async `f` inside the named namespace on a current-thread runtime.
fn in_ns_async<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    in_ns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// The test's world of namespaces; dropping it deletes them all.
struct World {
    prefix: String,
    host: String,
    outside: String,
}

impl World {
    fn new(tag: char) -> Self {
        // Unique among concurrently running test processes, and short enough for link names.
        let prefix = format!("t{tag}{}", std::process::id() % 100_000);
        let w = World {
            host: format!("{prefix}-host"),
            outside: format!("{prefix}-out"),
            prefix,
        };
        w.remove_all();
        ip(&["netns", "add", &w.host]);
        ip(&["netns", "add", &w.outside]);
        // A permissive host: forwarding on and an explicit FORWARD policy accept, so isolation
        // can only come from the rules under test. IPv6 off: its link-local addresses appear
        // asynchronously and would make the before/after snapshots racy.
        in_ns(&w.host, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward");
            for conf in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")
                    .expect("disable_ipv6");
            }
            nft_apply(
                "table inet hostfw {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n }\n}\n",
            );
        });
        for ns in [&w.host, &w.outside] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &w.host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns",
            &w.outside,
        ]);
        ip(&["-n", &w.host, "addr", "add", "192.0.2.2/24", "dev", "up0"]);
        ip(&["-n", &w.host, "link", "set", "up0", "up"]);
        ip(&[
            "-n",
            &w.outside,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &w.outside, "link", "set", "eth0", "up"]);
        ip(&["-n", &w.host, "route", "add", "default", "via", "192.0.2.1"]);
        w
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            prefix: self.prefix.clone(),
            max_slots: 64,
        }
    }

    /// Runs async `f` with a `Network` created inside the host namespace.
    fn with_net<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Network) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let cfg = self.config();
        in_ns_async(&self.host, move || f(Network::new(cfg)))
    }

    fn our_netns(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn remove_all(&self) {
        // `<prefix>x-*` belongs to the second prefix of the cleanup test.
        let other = format!("{}x-", self.prefix);
        let names = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&other))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for ns in self.our_netns().into_iter().chain(names) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }

    /// Everything setup/teardown may change, as seen from the host.
    fn snapshot(&self) -> Snapshot {
        let h = &self.host;
        Snapshot {
            netns: self.our_netns(),
            links: ip(&["-n", h, "-br", "link"]),
            routes: ip(&["-n", h, "-4", "route", "show", "table", "all"])
                + &ip(&["-n", h, "-6", "route", "show", "table", "all"]),
            nft: in_ns(h, || run("nft", &["list", "ruleset"])),
        }
    }

    /// Replaces the sandbox's TAP by a veth to a new "guest" namespace configured like the VM.
    fn attach_guest(&self, net: &SandboxNet) -> String {
        let g = format!("{}-g{}", self.prefix, net.slot);
        let ns = &net.netns;
        ip(&["netns", "add", &g]);
        ip(&["-n", ns, "link", "del", &net.tap]);
        ip(&[
            "-n", ns, "link", "add", &net.tap, "type", "veth", "peer", "name", "eth0", "netns", &g,
        ]);
        let gw = format!("{}/{}", net.guest_gateway, net.guest_prefix);
        ip(&["-n", ns, "addr", "add", &gw, "dev", &net.tap]);
        ip(&["-n", ns, "link", "set", &net.tap, "up"]);
        let addr = format!("{}/{}", net.guest_ip, net.guest_prefix);
        ip(&["-n", &g, "link", "set", "lo", "up"]);
        ip(&["-n", &g, "addr", "add", &addr, "dev", "eth0"]);
        ip(&["-n", &g, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &g,
            "route",
            "add",
            "default",
            "via",
            &net.guest_gateway.to_string(),
        ]);
        g
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.remove_all();
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    netns: Vec<String>,
    links: String,
    routes: String,
    nft: String,
}

fn nft_apply(ruleset: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ruleset.as_bytes())
        .expect("write ruleset");
    assert!(child.wait().expect("nft").success(), "nft -f failed");
}

/// A TCP server in a namespace answering every connection with "<tag> <peer ip>".
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, port: u16, tag: &str) -> Self {
        let path = format!("/run/netns/{ns}");
        let tag = tag.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            // Polls so the thread (which pins the namespace) ends promptly when stopped.
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{tag} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` and returns the server's greeting, or the error.
fn connect(ns: &str, ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<String, String> {
    in_ns(ns, move || {
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf.trim().to_owned())
    })
}

/// Internet on or off, nothing opened or closed on top.
fn internet(on: bool) -> Egress {
    Egress {
        internet: on,
        ..Egress::default()
    }
}

fn reachable(ns: &str, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    connect(ns, ip, port, Duration::from_secs(3))
}

fn blocked(ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    connect(ns, ip, port, BLOCKED_TIMEOUT).is_err()
}

#[test]
fn host_reaches_guests_and_guests_are_isolated() {
    let w = World::new('i');
    let (net1, net2) = w.with_net(|n| async move {
        let a = n.setup(1, &internet(false)).await.expect("setup slot 1");
        let b = n.setup(2, &internet(true)).await.expect("setup slot 2");
        (a, b)
    });
    let g1 = w.attach_guest(&net1);
    let g2 = w.attach_guest(&net2);
    let _envd1 = Server::start(&g1, ENVD_PORT, "guest-1");
    let _envd2 = Server::start(&g2, ENVD_PORT, "guest-2");
    let _internet = Server::start(&w.outside, OUTSIDE_PORT, "outside");
    let _host_service = Server::start(&w.host, HOST_SERVICE_PORT, "host");

    // Host → each guest at its host IP; the guest sees the host's veth address.
    assert_eq!(
        reachable(&w.host, net1.host_ip, ENVD_PORT),
        Ok("guest-1 10.12.0.2".into())
    );
    assert_eq!(
        reachable(&w.host, net2.host_ip, ENVD_PORT),
        Ok("guest-2 10.12.0.4".into())
    );
    // The test's plumbing itself works: the host reaches the "internet".
    assert_eq!(
        reachable(&w.host, OUTSIDE_IP, OUTSIDE_PORT),
        Ok("outside 192.0.2.2".into())
    );

    // Egress: off for slot 1; on for slot 2, masqueraded behind the host's uplink address.
    assert!(
        blocked(&g1, OUTSIDE_IP, OUTSIDE_PORT),
        "slot 1 reached the internet"
    );
    assert_eq!(
        reachable(&g2, OUTSIDE_IP, OUTSIDE_PORT),
        Ok(format!("outside {HOST_UPLINK_IP}"))
    );

    // No sandbox reaches another, even with internet access (host-side rules block it).
    assert!(
        blocked(&g1, net2.host_ip, ENVD_PORT),
        "slot 1 reached slot 2"
    );
    assert!(
        blocked(&g2, net1.host_ip, ENVD_PORT),
        "slot 2 reached slot 1"
    );
    assert!(
        blocked(&g2, net2.host_ip, ENVD_PORT),
        "slot 2 hairpinned to itself"
    );

    // Nor the host's own services, on any of its addresses.
    for g in [&g1, &g2] {
        for addr in [
            HOST_UPLINK_IP,
            Ipv4Addr::new(10, 12, 0, 2),
            Ipv4Addr::new(10, 12, 0, 4),
        ] {
            assert!(
                blocked(g, addr, HOST_SERVICE_PORT),
                "{g} reached the host at {addr}"
            );
        }
    }

    // Nothing from outside gets in through the host (even with a route to the sandbox).
    ip(&[
        "-n",
        &w.outside,
        "route",
        "add",
        "10.11.0.0/16",
        "via",
        "192.0.2.2",
    ]);
    assert!(
        blocked(&w.outside, net2.host_ip, ENVD_PORT),
        "outside reached slot 2"
    );

    // Still fine for the host after all that.
    assert_eq!(
        reachable(&w.host, net1.host_ip, ENVD_PORT),
        Ok("guest-1 10.12.0.2".into())
    );

    w.with_net(|n| async move {
        n.teardown(1).await.expect("teardown 1");
        n.teardown(2).await.expect("teardown 2");
    });
}

#[test]
fn egress_opens_and_closes_networks_per_sandbox() {
    let w = World::new('e');
    // Beyond the host: a private network (closed to guests unless opened) and a second public
    // one, both in the outside namespace next to OUTSIDE_IP.
    let private = Ipv4Addr::new(10, 99, 0, 1);
    let other = Ipv4Addr::new(198, 51, 100, 1);
    for a in ["10.99.0.1/32", "198.51.100.1/32"] {
        ip(&["-n", &w.outside, "addr", "add", a, "dev", "eth0"]);
    }
    let eg = |on, allow: &[&str], deny: &[&str]| Egress::parse(on, allow, deny).expect("egress");
    let specs = [
        eg(true, &[], &[]),
        eg(true, &["10.99.0.0/24"], &["198.51.100.0/24"]),
        eg(false, &["10.99.0.1"], &[]),
    ];
    let nets = w.with_net(move |n| async move {
        let mut made = Vec::new();
        for (slot, e) in (1..).zip(specs.iter()) {
            made.push(n.setup(slot, e).await.expect("setup"));
        }
        made
    });
    let g: Vec<String> = nets.iter().map(|n| w.attach_guest(n)).collect();
    let _outside = Server::start(&w.outside, OUTSIDE_PORT, "outside");
    let seen = Ok(format!("outside {HOST_UPLINK_IP}"));

    // Internet: public addresses, not the private network behind the host.
    assert_eq!(reachable(&g[0], OUTSIDE_IP, OUTSIDE_PORT), seen);
    assert_eq!(reachable(&g[0], other, OUTSIDE_PORT), seen);
    assert!(
        blocked(&g[0], private, OUTSIDE_PORT),
        "internet reached a private address"
    );
    // Internet with the private network opened and a public one closed.
    assert_eq!(reachable(&g[1], private, OUTSIDE_PORT), seen);
    assert!(
        blocked(&g[1], other, OUTSIDE_PORT),
        "a closed network was reached"
    );
    assert_eq!(reachable(&g[1], OUTSIDE_IP, OUTSIDE_PORT), seen);
    // No internet, one address opened: that address only.
    assert_eq!(reachable(&g[2], private, OUTSIDE_PORT), seen);
    for a in [OUTSIDE_IP, other] {
        assert!(
            blocked(&g[2], a, OUTSIDE_PORT),
            "allow-list sandbox reached {a}"
        );
    }

    w.with_net(|n| async move {
        for slot in 1..=3 {
            n.teardown(slot).await.expect("teardown");
        }
    });
}

#[test]
fn teardown_restores_host_state() {
    let w = World::new('t');
    let before = w.snapshot();
    for allow_internet in [false, true] {
        let net = w.with_net(move |n| async move {
            let net = n.setup(3, &internet(allow_internet)).await.expect("setup");
            assert!(n.exists(3).await);
            net
        });
        assert_eq!(net.netns, format!("{}-ns-3", w.prefix));
        assert_eq!(net.host_veth, format!("{}-v3", w.prefix));

        // The TAP is a real, persistent, root-owned TAP carrying the guest's gateway.
        let tap = ip(&["-n", &net.netns, "-j", "-d", "link", "show", &net.tap]);
        let tap: serde_json::Value = serde_json::from_str(&tap).expect("ip -j");
        let info = &tap[0]["linkinfo"];
        assert_eq!(info["info_kind"], "tun", "{tap}");
        assert_eq!(info["info_data"]["type"], "tap", "{tap}");
        assert_eq!(info["info_data"]["persist"], true, "{tap}");
        assert_eq!(info["info_data"]["pi"], false, "{tap}");
        assert_eq!(info["info_data"]["user"], "root", "{tap}");
        let addrs = ip(&["-n", &net.netns, "-4", "-br", "addr", "show", &net.tap]);
        assert!(addrs.contains("169.254.0.22/30"), "{addrs}");
        let forward = in_ns(&net.netns, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read ip_forward")
        });
        assert_eq!(forward.trim(), "1");

        let during = w.snapshot();
        assert!(during.links.contains(&net.host_veth), "{}", during.links);
        assert!(
            during.routes.contains("10.11.0.3 via 10.12.0.7"),
            "{}",
            during.routes
        );
        assert!(
            during
                .nft
                .contains(&format!("table inet {}-sbx-3", w.prefix)),
            "{}",
            during.nft
        );
        assert_eq!(during.nft.contains("masquerade"), allow_internet);

        w.with_net(|n| async move {
            n.teardown(3).await.expect("teardown");
            assert!(!n.exists(3).await);
            n.teardown(3).await.expect("teardown is idempotent");
        });
        assert_eq!(w.snapshot(), before, "allow_internet={allow_internet}");
    }
}

#[test]
fn failed_setup_leaves_nothing_behind() {
    let w = World::new('f');

    // Early failure: the host veth name is taken by something that is not ours to remove.
    let taken = format!("{}-v4", w.prefix);
    let taken_peer = format!("{}-q4", w.prefix);
    ip(&[
        "-n",
        &w.host,
        "link",
        "add",
        &taken,
        "type",
        "veth",
        "peer",
        "name",
        &taken_peer,
    ]);
    let before = w.snapshot();
    let err =
        w.with_net(|n| async move { n.setup(4, &internet(false)).await.expect_err("collision") });
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(w.snapshot(), before);

    // Late failure, after the namespace, veth, TAP and sandbox rules exist: the host route
    // for the sandbox's host IP collides.
    ip(&[
        "-n",
        &w.host,
        "route",
        "add",
        "10.11.0.5/32",
        "via",
        "192.0.2.1",
    ]);
    let before = w.snapshot();
    let err =
        w.with_net(|n| async move { n.setup(5, &internet(true)).await.expect_err("collision") });
    assert!(err.to_string().contains("route 10.11.0.5/32"), "{err}");
    assert_eq!(w.snapshot(), before);

    // A taken namespace name is not adopted, nor removed.
    let ns = format!("{}-ns-6", w.prefix);
    ip(&["netns", "add", &ns]);
    let before = w.snapshot();
    let err =
        w.with_net(|n| async move { n.setup(6, &internet(false)).await.expect_err("collision") });
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(w.snapshot(), before);

    // Invalid slots are refused before anything is made.
    let err =
        w.with_net(|n| async move { n.setup(0, &internet(false)).await.expect_err("slot 0") });
    assert!(err.to_string().contains("slot 0"), "{err}");
    assert_eq!(w.snapshot(), before);
}

#[test]
fn cleanup_stale_removes_leftovers_and_keeps_the_rest() {
    let w = World::new('c');
    let before = w.snapshot();

    // A "crashed" agent: three full setups forgotten, plus half-made leftovers of slots 7
    // (namespace only), 8 (veth pair never moved) and 9 (host table only).
    w.with_net(|n| async move {
        for slot in 1..=3 {
            n.setup(slot, &internet(slot == 2)).await.expect("setup");
        }
    });
    ip(&["netns", "add", &format!("{}-ns-7", w.prefix)]);
    ip(&[
        "-n",
        &w.host,
        "link",
        "add",
        &format!("{}-v8", w.prefix),
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}-p8", w.prefix),
    ]);
    let stray_table = format!("table inet {}-sbx-9 {{}}\n", w.prefix);
    in_ns(&w.host, move || nft_apply(&stray_table));
    // Another agent's sandbox (different prefix) in the same host must be left alone. Both
    // derive addresses from slots, so side by side in one namespace they need disjoint slots.
    let other = format!("{}x", w.prefix);
    let other_cfg = NetworkConfig {
        prefix: other.clone(),
        max_slots: 8,
    };
    let oc = other_cfg.clone();
    in_ns_async(&w.host, move || async move {
        Network::new(oc)
            .setup(5, &internet(false))
            .await
            .expect("other setup");
    });

    let start = Instant::now();
    let removed = w.with_net(|n| async move {
        let keep: HashSet<u32> = [2].into();
        n.cleanup_stale(&keep).await.expect("cleanup_stale")
    });
    eprintln!("cleanup_stale took {:?}", start.elapsed());
    assert_eq!(removed, vec![1, 3, 7, 8, 9]);

    // Slot 2 survived intact and still works; the other prefix's sandbox too.
    let net2 = w.with_net(|n| async move {
        assert!(n.exists(2).await);
        assert!(!n.exists(1).await && !n.exists(3).await && !n.exists(7).await);
        let again = n.cleanup_stale(&[2].into()).await.expect("second cleanup");
        assert!(again.is_empty(), "{again:?}");
        n.describe(2)
    });
    let g2 = w.attach_guest(&net2);
    let _envd2 = Server::start(&g2, ENVD_PORT, "guest-2");
    assert_eq!(
        reachable(&w.host, net2.host_ip, ENVD_PORT),
        Ok("guest-2 10.12.0.4".into())
    );
    assert!(
        Command::new("ip")
            .args(["netns", "pids", &format!("{other}-ns-5")])
            .status()
            .expect("ip")
            .success()
    );

    in_ns_async(&w.host, move || async move {
        let n = Network::new(other_cfg);
        n.teardown(5).await.expect("other teardown");
    });
    w.with_net(|n| async move {
        let removed = n.cleanup_stale(&HashSet::new()).await.expect("cleanup all");
        assert_eq!(removed, vec![2]);
    });
    // The guest stand-in is the test's own; remove it before comparing.
    drop(_envd2);
    ip(&["netns", "del", &g2]);
    assert_eq!(w.snapshot(), before);
}

#[test]
fn concurrent_setups_and_teardowns() {
    let w = World::new('p');
    let before = w.snapshot();
    let slots: Vec<u32> = (1..=8).collect();
    let s = slots.clone();
    let (nets, took) = w.with_net(move |n| async move {
        let start = Instant::now();
        let egress: Vec<Egress> = s.iter().map(|slot| internet(slot % 2 == 0)).collect();
        let nets =
            futures::future::join_all(s.iter().zip(&egress).map(|(&slot, e)| n.setup(slot, e)))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .expect("concurrent setups");
        (nets, start.elapsed())
    });
    eprintln!("8 concurrent setups took {took:?}");
    let routes = w.snapshot().routes;
    for net in &nets {
        assert!(
            routes.contains(&format!("{} via", net.host_ip)),
            "{net:?}\n{routes}"
        );
    }

    // QEMU is started inside the namespace this way; it must see the TAP there.
    let ns = nets[0].netns.clone();
    let links = in_ns_async(&w.host, move || async move {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["-br", "link"]);
        wrenn_agent::network::netns::command_in(&mut cmd, &ns).expect("command_in");
        let out = cmd.output().await.expect("ip in sandbox namespace");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    assert!(links.contains("tap0"), "{links}");
    assert!(!links.contains("up0"), "ran in the host namespace: {links}");

    w.with_net(move |n| async move {
        let start = Instant::now();
        for r in futures::future::join_all(slots.iter().map(|&slot| n.teardown(slot))).await {
            r.expect("concurrent teardown");
        }
        eprintln!("8 concurrent teardowns took {:?}", start.elapsed());
    });
    assert_eq!(w.snapshot(), before);
}
