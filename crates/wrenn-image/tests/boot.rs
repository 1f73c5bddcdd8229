//! Builds the base template into a temporary files root (reusing the debootstrap cache
//! under `$WRENN_CACHE`), checks that a second build is a cache hit, then boots it under
//! QEMU (microvm, TCG, user-mode network with `restrict=on`: the guest reaches nothing,
//! only the host forward reaches envd) and runs commands through envd's Connect API.
//!
//! Needs root (debootstrap, chroot) plus the build and boot prerequisites; it fails, never
//! skips, when they are missing.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_image::{BuildOptions, Manifest, ProgressMode, prereq};
use wrenn_proto::process::process_event::Event;
use wrenn_proto::process::process_event::data_event::Output;
use wrenn_proto::process::{ProcessClient, ProcessConfig, StartRequest};

const HEALTH_DEADLINE: Duration = Duration::from_secs(180);
const GUEST_IP: &str = "10.0.2.15";
const GATEWAY: &str = "10.0.2.2";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds this workspace's envd and returns the binary's path.
fn envd_binary() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "envd",
            "--bin",
            "envd",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build -p envd");
    assert!(out.status.success(), "cargo build -p envd failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "envd")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no envd executable")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("WRENN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| wrenn_image::layout::DEFAULT_CACHE.into())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A QEMU guest; dropping it kills QEMU (its overlay and log live in the test's temp root).
struct Vm {
    child: Child,
    serial: PathBuf,
}

impl Vm {
    fn serial_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.serial) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_argv(root: &Path, m: &Manifest, overlay: &Path, serial: &Path, port: u16) -> Vec<String> {
    let cmdline = format!("{} wrenn.net={GUEST_IP}/24,{GATEWAY}", m.kernel.cmdline);
    [
        "-M",
        "microvm,accel=tcg,pit=on,pic=on,rtc=on",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-kernel".into(),
        root.join(&m.kernel.vmlinuz).display().to_string(),
        "-initrd".into(),
        root.join(&m.kernel.initrd).display().to_string(),
        "-append".into(),
        cmdline,
        "-drive".into(),
        format!(
            "id=root,file={},format=qcow2,if=none,werror=report,rerror=report",
            overlay.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-netdev".into(),
        format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-{GUEST_IP}:49983"),
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
    ])
    .collect()
}

fn boot(root: &Path, m: &Manifest, port: u16) -> Vm {
    let vm_dir = root.join("test-vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let overlay = vm_dir.join("root.qcow2");
    let serial = vm_dir.join("serial.log");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(root.join(&m.rootfs.path))
        .arg(&overlay)
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img create failed");

    let argv = qemu_argv(root, m, &overlay, &serial, port);
    eprintln!("qemu-system-x86_64 {}", argv.join(" "));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; QEMU dies with the test process even when the
    // test is killed before Drop runs.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn qemu-system-x86_64");
    Vm { child, serial }
}

async fn wait_healthy(vm: &mut Vm, port: u16) -> Duration {
    let started = Instant::now();
    // Before envd listens, QEMU's user-mode forward accepts and then stalls or drops the
    // connection: keep each probe short so the measured time is close to the real one.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            assert_eq!(r.status(), 204, "/health answered {}", r.status());
            return started.elapsed();
        }
        if let Ok(Some(status)) = vm.child.try_wait() {
            panic!(
                "QEMU exited ({status}) before envd answered; serial log:\n{}",
                vm.serial_tail()
            );
        }
        if started.elapsed() > HEALTH_DEADLINE {
            panic!(
                "envd did not answer /health within {HEALTH_DEADLINE:?}; serial log:\n{}",
                vm.serial_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` with bash as the default user and returns (stdout, exit code).
async fn run(client: &ProcessClient<HttpClient>, script: &str) -> (String, i32) {
    let req = StartRequest {
        process: ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let mut stream = client.start(req).await.expect("process.Start");
    let mut stdout = Vec::new();
    let mut exit = None;
    while let Some(msg) = stream.message().await.expect("process stream") {
        let msg = msg.to_owned_message();
        match msg.event.as_option().and_then(|e| e.event.as_ref()) {
            Some(Event::Data(d)) => {
                if let Some(Output::Stdout(bytes)) = &d.output {
                    stdout.extend_from_slice(bytes);
                }
            }
            Some(Event::End(end)) => exit = Some(end.exit_code),
            _ => {}
        }
    }
    (
        String::from_utf8_lossy(&stdout).into_owned(),
        exit.expect("stream ended without an end event"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_cache_hit_then_boot_and_run_through_envd() {
    prereq::check(prereq::BUILD).expect("build prerequisites");
    prereq::check(prereq::BOOT).expect("boot prerequisites");
    let envd = envd_binary();
    let temp = tempfile::Builder::new()
        .prefix("wrenn-image-test-")
        .tempdir()
        .unwrap();
    let root = temp.path().to_path_buf();

    let mut opts = BuildOptions::base(&envd);
    opts.root = root.clone();
    opts.cache = cache_dir();
    opts.progress = ProgressMode::Plain;

    let built = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || wrenn_image::build(&opts)
    })
    .await
    .unwrap()
    .expect("first build");
    assert!(built.rebuilt.is_some(), "a fresh root must be built");
    eprintln!(
        "first build: {:.1}s (debootstrap {})",
        built.elapsed.as_secs_f64(),
        if built.debootstrapped {
            "ran"
        } else {
            "cached"
        }
    );

    let again = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || wrenn_image::build(&opts)
    })
    .await
    .unwrap()
    .expect("second build");
    assert_eq!(
        again.rebuilt, None,
        "an unchanged build must be a cache hit"
    );
    assert_eq!(again.manifest, built.manifest);
    assert!(
        again.elapsed < Duration::from_secs(5),
        "cache hit took {:?}",
        again.elapsed
    );

    let m = &built.manifest;
    assert_eq!(m.default_user, "user");
    let envd_version = Command::new(&envd)
        .arg("--version")
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        format!("envd {}", m.envd.version),
        String::from_utf8_lossy(&envd_version).trim(),
        "the manifest records the injected envd"
    );
    let image = root.join(&m.rootfs.path);
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 5 << 30, "default image size is 5 GiB");
    assert!(
        wrenn_image::fsutil::allocated_bytes(&image).unwrap() < 1 << 30,
        "the image must be sparse"
    );
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(root.join("images/base/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(&on_disk, m);

    let port = free_port();
    let mut vm = boot(&root, m, port);
    let boot_time = wait_healthy(&mut vm, port).await;
    eprintln!("boot to /health: {:.2}s", boot_time.as_secs_f64());

    let client = ProcessClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(format!("http://127.0.0.1:{port}").parse().unwrap()).json(),
    );
    let (out, code) = run(&client, "uname -r; id -un; cat /proc/1/comm").await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], m.kernel.release, "guest kernel");
    assert_ne!(
        lines[0],
        host_release.trim(),
        "must run the guest's own kernel"
    );
    assert_eq!(lines[1], "user", "default user");
    assert_eq!(lines[2], "envd", "PID 1");

    let (out, code) = run(
        &client,
        "sudo -n id -u; hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; \
         ip route show default | awk '{print $3}'; findmnt -no FSTYPE /; echo $HOME",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["0", "wrenn", "10.0.2.15/24", GATEWAY, "ext4", "/home/user"],
        "passwordless sudo, hostname, network from wrenn.net=, root fs, home"
    );
    drop(vm);
}
