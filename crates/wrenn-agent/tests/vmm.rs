//! The qemu driver against real microVMs (TCG) booting the tiny test guest. Runs in the
//! nextest group `vm` (at most 2 at a time: a boot costs ~4 CPU-seconds).

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{NetnsGuard, TEST_UID, VmGuard, pid_alive, rss_kib, serial, spec, wait_serial};
use tokio::sync::broadcast;
use wrenn_agent::storage::{allocated_bytes, create_overlay};
use wrenn_agent::vmm::{QemuVmm, StateKind, VmEvent, VmStatus, Vmm, VmmError};

const GUEST_BOOT: Duration = Duration::from_secs(120);

async fn overlay_in(dir: &Path, base_dir: &Path) -> std::path::PathBuf {
    let base = support::raw_base(base_dir, 64);
    let overlay = dir.join("root.qcow2");
    create_overlay(&base, &overlay, None).await.unwrap();
    overlay
}

async fn next_event(
    rx: &mut broadcast::Receiver<VmEvent>,
    timeout: Duration,
    pred: impl Fn(&VmEvent) -> bool,
) -> VmEvent {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("event channel ended: {e}"),
            Err(_) => panic!("no matching event within {timeout:?}"),
        }
    }
}

#[tokio::test]
async fn boot_serial_status_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let spec = spec("vmmboot", dir.path(), &overlay, "idle");
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new();

    let t0 = Instant::now();
    let vm = vmm.boot(&spec).await.expect("boot");
    let qmp_ready = t0.elapsed();
    assert!(pid_alive(vm.pid));
    assert_eq!(vm.sandbox_id, "vmmboot");
    assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Running);
    // QEMU was re-parented away from us (-daemonize): it is not our child.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", vm.pid)).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, std::process::id());
    // Set up as root, then running as its own user with no capability left.
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    let id = TEST_UID.to_string();
    let all = [id.as_str(); 4].join(" ");
    assert_eq!(field("Uid:"), all, "{status}");
    assert_eq!(field("Gid:"), all, "{status}");
    assert_eq!(field("Groups:"), id, "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");

    wait_serial(&vm.run_dir, GUEST_BOOT, |l| !l.is_empty()).await;
    let first_line = t0.elapsed();
    wait_serial(&vm.run_dir, GUEST_BOOT, |l| l.contains("WRENN-TEST-IDLE")).await;
    let init = t0.elapsed();
    let log = serial(&vm.run_dir);
    assert!(
        log.contains("WRENN-TEST-DISK-OK"),
        "root disk not seen:\n{log}"
    );
    let rss = rss_kib(vm.pid);
    eprintln!(
        "TIMING boot->QMP ready {qmp_ready:?}, ->first serial output {first_line:?}, \
         ->guest init done {init:?}; QEMU RSS {} MiB (256 MiB guest, TCG)",
        rss / 1024
    );
    let spec_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm.run_dir.join("spec.json")).unwrap()).unwrap();
    assert_eq!(spec_json["sandbox_id"], "vmmboot");
    assert_eq!(spec_json["accel"], "tcg");

    let mut events = vmm.events(&vm);
    let t1 = Instant::now();
    vmm.destroy(&vm).await.expect("destroy");
    eprintln!("TIMING destroy {:?}", t1.elapsed());
    assert!(!pid_alive(vm.pid), "QEMU still running after destroy");
    assert!(!vm.run_dir.join("vmm.pid").exists());
    assert!(!vm.run_dir.join("qmp.sock").exists());
    assert_eq!(
        next_event(&mut events, Duration::from_secs(5), |e| matches!(
            e,
            VmEvent::Shutdown { .. }
        ))
        .await,
        VmEvent::Shutdown { guest: false }
    );
    // Idempotent, and the status of a destroyed VM is Exited.
    vmm.destroy(&vm).await.expect("second destroy");
    assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Exited);
    // The serial log stays for post-mortems.
    assert!(serial(&vm.run_dir).contains("WRENN-TEST-INIT"));
}

#[tokio::test]
async fn guest_writes_land_in_the_overlay_and_poweroff_ends_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let before = allocated_bytes(&overlay).unwrap();
    let spec = spec("vmmwrite", dir.path(), &overlay, "write");
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new();
    let vm = vmm.boot(&spec).await.expect("boot");
    let mut events = vmm.events(&vm);

    let ev = next_event(&mut events, GUEST_BOOT, |e| {
        matches!(e, VmEvent::Shutdown { .. })
    })
    .await;
    assert_eq!(ev, VmEvent::Shutdown { guest: true });
    // QEMU exits after the guest's poweroff: the event channel closes.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Err(broadcast::error::RecvError::Closed)) => break,
            Ok(_) => continue,
            Err(_) => panic!("event channel still open after poweroff"),
        }
    }
    assert!(matches!(
        vmm.events(&vm).recv().await,
        Err(broadcast::error::RecvError::Closed)
    ));
    let start = Instant::now();
    while pid_alive(vm.pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "QEMU did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Exited);
    let log = serial(&vm.run_dir);
    assert!(log.contains("WRENN-TEST-WRITE-OK"), "{log}");
    let after = allocated_bytes(&overlay).unwrap();
    assert!(
        after >= before + 8 * 1024 * 1024,
        "overlay allocation {before} -> {after}"
    );
    vmm.destroy(&vm).await.expect("destroy after exit");
}

#[tokio::test]
async fn restarted_agent_adopts_the_running_vm() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let spec = spec("vmmadopt", dir.path(), &overlay, "idle");
    let _guard = VmGuard(spec.run_dir.clone());

    let pid = {
        let vmm = QemuVmm::new();
        let vm = vmm.boot(&spec).await.expect("boot");
        vm.pid
        // The "agent" goes away here: handle and driver dropped, QEMU untouched.
    };
    assert!(pid_alive(pid));

    let vmm = QemuVmm::new();
    let vm = vmm
        .adopt(&spec.run_dir)
        .await
        .expect("adopt")
        .expect("VM found");
    assert_eq!(vm.pid, pid);
    assert_eq!(vm.sandbox_id, "vmmadopt");
    assert_eq!(vm.spec.root_disk, overlay);
    assert_eq!(vm.spec.kernel_args, "wrenn.test=idle");
    assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Running);
    // The new QMP connection delivers events.
    let mut events = vmm.events(&vm);
    vm.qmp().execute("stop", None).await.unwrap();
    next_event(&mut events, Duration::from_secs(10), |e| {
        *e == VmEvent::Stop
    })
    .await;
    assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Paused);
    vm.qmp().execute("cont", None).await.unwrap();
    next_event(&mut events, Duration::from_secs(10), |e| {
        *e == VmEvent::Resume
    })
    .await;

    vmm.destroy(&vm).await.expect("destroy");
    assert!(!pid_alive(pid));
    assert!(vmm.adopt(&spec.run_dir).await.unwrap().is_none());
}

#[tokio::test]
async fn adopt_ignores_empty_dirs_dead_and_recycled_pids() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = QemuVmm::new();
    assert!(vmm.adopt(dir.path()).await.unwrap().is_none());
    // A pid file naming a live process that is not our QEMU (a recycled pid): not adopted,
    // and not killed either.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(dir.path().join("vmm.pid"), sleeper.id().to_string()).unwrap();
    assert!(vmm.adopt(dir.path()).await.unwrap().is_none());
    vmm.kill_run_dir(dir.path()).await.unwrap();
    assert!(pid_alive(sleeper.id() as i32));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // A dead pid.
    assert!(vmm.adopt(dir.path()).await.unwrap().is_none());
    std::fs::write(dir.path().join("vmm.pid"), "garbage").unwrap();
    assert!(vmm.adopt(dir.path()).await.unwrap().is_none());
}

#[tokio::test]
async fn qemu_startup_failure_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A raw file where a qcow2 overlay is expected: QEMU refuses to start.
    let not_qcow2 = support::raw_base(dir.path(), 16);
    let spec = spec("vmmfail", dir.path(), &not_qcow2, "idle");
    let _guard = VmGuard(spec.run_dir.clone());
    let err = QemuVmm::new().boot(&spec).await.unwrap_err();
    match &err {
        VmmError::QemuFailed { stderr, .. } => {
            assert!(stderr.contains("qcow2"), "stderr: {stderr}")
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!spec.run_dir.join("vmm.pid").exists());

    let err = QemuVmm::with_binary("/nonexistent/qemu")
        .boot(&spec)
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Spawn { .. }), "{err:?}");
}

#[tokio::test]
async fn qemu_runs_in_the_given_netns_with_its_tap() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let ns = NetnsGuard::new(&format!("wrnvmm{}", std::process::id()));
    let st = std::process::Command::new("ip")
        .args(["-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap"])
        .status()
        .unwrap();
    assert!(st.success(), "creating a TAP in the test netns failed");

    let mut spec = spec("vmmnet", dir.path(), &overlay, "idle");
    spec.netns = Some(ns.0.clone());
    spec.tap = Some("tap0".into());
    spec.guest_mac = Some("02:fc:00:00:00:05".into());
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new();
    let vm = vmm.boot(&spec).await.expect("boot in netns");

    let want = std::fs::metadata(format!("/run/netns/{}", ns.0))
        .unwrap()
        .ino();
    let got = std::fs::metadata(format!("/proc/{}/ns/net", vm.pid))
        .unwrap()
        .ino();
    assert_eq!(got, want, "QEMU is not in the sandbox netns");
    let nics = vm
        .qmp()
        .execute("query-rx-filter", None)
        .await
        .expect("query-rx-filter");
    assert_eq!(nics[0]["main-mac"], "02:fc:00:00:00:05", "{nics}");
    vmm.destroy(&vm).await.unwrap();

    let err = vmm
        .boot(&{
            let mut s = spec.clone();
            s.netns = Some("wrnvmm-does-not-exist".into());
            s
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Netns { .. }), "{err:?}");
}

/// A full host disk must surface as BLOCK_IO_ERROR (nospace) with the VM still running, not
/// as a silently paused VM. The overlay lives on a 4 MiB tmpfs mounted in a private mount
/// namespace of this test's thread, which QEMU inherits: nothing to unmount afterwards, the
/// mount dies with the namespace.
#[test]
fn full_disk_surfaces_as_block_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        use nix::mount::{MsFlags, mount};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make mounts private");
        let small = path.join("small");
        std::fs::create_dir(&small).unwrap();
        mount(
            Some("tmpfs"),
            &small,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=4m"),
        )
        .expect("mount tmpfs");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let overlay = overlay_in(&small, &path).await;
                let spec = spec("vmmfull", &path, &overlay, "fill");
                let _guard = VmGuard(spec.run_dir.clone());
                let vmm = QemuVmm::new();
                let vm = vmm.boot(&spec).await.expect("boot");
                let mut events = vmm.events(&vm);
                let ev = next_event(&mut events, GUEST_BOOT, |e| {
                    matches!(e, VmEvent::BlockIoError { .. })
                })
                .await;
                match ev {
                    VmEvent::BlockIoError {
                        device,
                        operation,
                        nospace,
                        reason,
                    } => {
                        assert_eq!(device, "root");
                        assert_eq!(operation, "write");
                        assert!(nospace, "nospace not set: {reason}");
                    }
                    other => panic!("{other:?}"),
                }
                // werror=report: the guest got the error and keeps running.
                assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Running);
                wait_serial(&vm.run_dir, Duration::from_secs(60), |l| {
                    l.contains("WRENN-TEST-FILL-DONE")
                })
                .await;
                assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Running);
                vmm.destroy(&vm).await.unwrap();
            });
    })
    .join()
    .expect("test thread panicked");
}

#[tokio::test]
async fn unresponsive_vm_is_killed_and_half_made_vm_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let spec = spec("vmmkill", dir.path(), &overlay, "idle");
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new().with_grace(Duration::from_millis(500));

    // A frozen QEMU ignores `quit`: destroy must escalate to SIGKILL and still wait it out.
    let vm = vmm.boot(&spec).await.expect("boot");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let t = Instant::now();
    vmm.destroy(&vm).await.expect("destroy frozen VM");
    assert!(!pid_alive(vm.pid));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A VM nobody holds a handle for (agent died mid-create): kill_run_dir removes it.
    let vm = vmm.boot(&spec).await.expect("second boot");
    let pid = vm.pid;
    drop(vm);
    vmm.kill_run_dir(&spec.run_dir).await.expect("kill_run_dir");
    assert!(!pid_alive(pid));
    assert!(vmm.adopt(&spec.run_dir).await.unwrap().is_none());
}

#[tokio::test]
async fn second_boot_into_a_busy_run_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let spec = spec("vmmbusy", dir.path(), &overlay, "idle");
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new();
    let vm = vmm.boot(&spec).await.expect("boot");
    let err = vmm.boot(&spec).await.unwrap_err();
    assert!(matches!(err, VmmError::InvalidSpec(_)), "{err:?}");
    // The refused boot touched nothing of the running VM.
    assert_eq!(vmm.status(&vm).await.unwrap(), VmStatus::Running);
    vmm.destroy(&vm).await.unwrap();
}

/// The guest's counter values in the serial log, in order.
fn counts(run_dir: &Path) -> Vec<u64> {
    serial(run_dir)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("WRENN-TEST-COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn saved_vm_is_gone_and_restores_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let spec = spec("vmmsave", dir.path(), &overlay, "count");
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new();
    let vm = vmm.boot(&spec).await.expect("boot");
    wait_serial(&vm.run_dir, GUEST_BOOT, |l| {
        l.contains("WRENN-TEST-COUNT 5")
    })
    .await;

    let state = dir.path().join("vm.state");
    let t0 = Instant::now();
    vmm.save(&vm, &state, StateKind::Full).await.expect("save");
    let saved_in = t0.elapsed();
    assert!(!pid_alive(vm.pid), "QEMU still runs after save");
    assert!(!vm.run_dir.join("vmm.pid").exists());
    assert!(state.is_file());
    assert!(!dir.path().join("vm.state.tmp").exists(), "temp file left");
    let before = counts(&vm.run_dir);
    let last = *before.last().expect("counted before the save");
    assert!(last >= 5);
    // Nothing counts while the VM is saved.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(counts(&vm.run_dir).last(), Some(&last));

    let t1 = Instant::now();
    let vm2 = vmm
        .restore(&spec, &state, StateKind::Full)
        .await
        .expect("restore");
    let restored_in = t1.elapsed();
    assert_eq!(vmm.status(&vm2).await.unwrap(), VmStatus::Running);
    let after = last + 3;
    wait_serial(&vm2.run_dir, GUEST_BOOT, |l| {
        l.contains(&format!("WRENN-TEST-COUNT {after}"))
    })
    .await;
    // The counter went on from its value in memory, without a reboot in between.
    let all = counts(&vm2.run_dir);
    let resumed = &all[before.len()..];
    assert_eq!(resumed.first(), Some(&(last + 1)), "{all:?}");
    assert_eq!(
        serial(&vm2.run_dir).matches("WRENN-TEST-INIT").count(),
        1,
        "the guest booted again"
    );
    eprintln!(
        "TIMING save {saved_in:?} ({} bytes), restore {restored_in:?} (256 MiB guest, TCG)",
        std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0)
    );
    vmm.destroy(&vm2).await.expect("destroy");
}

#[tokio::test]
async fn restore_from_a_missing_or_corrupt_state_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = overlay_in(dir.path(), dir.path()).await;
    let spec = spec("vmmbad", dir.path(), &overlay, "idle");
    let _guard = VmGuard(spec.run_dir.clone());
    let vmm = QemuVmm::new();
    let missing = dir.path().join("nothing.state");
    let err = vmm
        .restore(&spec, &missing, StateKind::Full)
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::BadState { .. }), "{err}");

    let corrupt = dir.path().join("corrupt.state");
    std::fs::write(&corrupt, b"QEVM but not really a migration stream").unwrap();
    let err = vmm
        .restore(&spec, &corrupt, StateKind::Full)
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::BadState { .. }), "{err}");
    assert!(
        !spec.run_dir.join("vmm.pid").exists(),
        "a QEMU is left after the failed restore"
    );
}
