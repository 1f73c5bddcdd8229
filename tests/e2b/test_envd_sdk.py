"""The official E2B Python SDK, unchanged, in debug mode against our envd."""

import threading
import time
import uuid

import pytest
from e2b import CommandExitException, FileType, FilesystemEventType, PtySize, Sandbox


@pytest.fixture()
def sbx():
    return Sandbox.create()


@pytest.fixture()
def home_dir(sbx):
    # A fresh directory per test inside the sandbox's private /home.
    d = f"/home/user/t-{uuid.uuid4().hex[:8]}"
    assert sbx.files.make_dir(d) is True
    return d


def test_id_prints_the_chosen_user(sbx):
    assert sbx.commands.run("id -un").stdout == "user\n"
    assert sbx.commands.run("id -un", user="root").stdout == "root\n"
    assert sbx.commands.run("echo $HOME").stdout == "/home/user\n"


def test_run_stdout_stderr_exit_code(sbx):
    r = sbx.commands.run("echo hello && echo oops 1>&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("hello\n", "oops\n", 0)
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo bad; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "bad\n"


def test_envs_and_cwd(sbx, home_dir):
    r = sbx.commands.run("echo $FOO-$BAR && pwd", envs={"FOO": "foo", "BAR": "bar"}, cwd=home_dir)
    assert r.stdout == f"foo-bar\n{home_dir}\n"


def test_background_command_then_kill(sbx):
    h = sbx.commands.run("sleep 60", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == -1
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False


def test_send_stdin(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello stdin\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "hello stdin\n"


def test_pty_create_input_resize_kill(sbx):
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    out = bytearray()
    lock = threading.Lock()

    def collect(data: bytes):
        with lock:
            out.extend(data)

    waiter = threading.Thread(target=lambda: _wait_quietly(h, collect), daemon=True)
    waiter.start()
    sbx.pty.send_stdin(h.pid, b"echo $((6*7))\n")
    sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(h.pid, b"stty size\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            text = out.decode(errors="replace")
        if "42" in text and "30 100" in text:
            break
        time.sleep(0.05)
    assert "42" in text, text
    assert "30 100" in text, text
    assert sbx.pty.kill(h.pid) is True
    waiter.join(timeout=10)
    assert not waiter.is_alive()


def _wait_quietly(h, on_pty):
    try:
        h.wait(on_pty=on_pty)
    except CommandExitException:
        pass


def test_files_write_read_text_and_bytes(sbx, home_dir):
    info = sbx.files.write(f"{home_dir}/hello.txt", "hi there")
    assert info.path == f"{home_dir}/hello.txt"
    assert sbx.files.read(f"{home_dir}/hello.txt") == "hi there"
    blob = bytes(range(256)) * 64
    sbx.files.write(f"{home_dir}/sub/blob.bin", blob)
    assert bytes(sbx.files.read(f"{home_dir}/sub/blob.bin", format="bytes")) == blob
    owner = sbx.commands.run(f"stat -c %U {home_dir}/sub/blob.bin {home_dir}/sub").stdout
    assert owner == "user\nuser\n"


def test_list_exists_make_dir_rename_remove(sbx, home_dir):
    sbx.files.write(f"{home_dir}/a.txt", "a")
    assert sbx.files.make_dir(f"{home_dir}/d/e") is True
    assert sbx.files.make_dir(f"{home_dir}/d/e") is False
    entries = {e.name: e for e in sbx.files.list(home_dir)}
    assert set(entries) == {"a.txt", "d"}
    assert entries["a.txt"].type == FileType.FILE
    assert entries["a.txt"].size == 1
    assert entries["d"].type == FileType.DIR
    assert sbx.files.exists(f"{home_dir}/a.txt") is True
    assert sbx.files.exists(f"{home_dir}/nope") is False
    moved = sbx.files.rename(f"{home_dir}/a.txt", f"{home_dir}/d/b.txt")
    assert moved.path == f"{home_dir}/d/b.txt"
    assert sbx.files.exists(f"{home_dir}/a.txt") is False
    assert sbx.files.read(f"{home_dir}/d/b.txt") == "a"
    sbx.files.remove(f"{home_dir}/d")
    assert sbx.files.exists(f"{home_dir}/d") is False


def test_watch_dir_sees_created_file(sbx, home_dir):
    w = sbx.files.watch_dir(home_dir)
    try:
        sbx.files.write(f"{home_dir}/new.txt", "x")
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline:
            seen += w.get_new_events()
            if any(e.name == "new.txt" and e.type == FilesystemEventType.CREATE for e in seen):
                break
            time.sleep(0.1)
        assert any(e.name == "new.txt" and e.type == FilesystemEventType.CREATE for e in seen), seen
    finally:
        w.stop()


def test_async_watch_dir_stream(home_dir):
    import asyncio

    from e2b import AsyncSandbox

    async def main():
        sbx = await AsyncSandbox.create()
        events = []
        got = asyncio.Event()

        def on_event(e):
            events.append(e)
            if e.name == "streamed.txt":
                got.set()

        h = await sbx.files.watch_dir(home_dir, on_event=on_event)
        try:
            await sbx.files.write(f"{home_dir}/streamed.txt", "y")
            await asyncio.wait_for(got.wait(), 10)
        finally:
            await h.stop()
        return events

    events = asyncio.run(main())
    assert any(e.name == "streamed.txt" for e in events)
