"""download() and extract() against a real HTTP server on 127.0.0.1 (nothing else is contacted)."""
import hashlib
import io
import socket
import tarfile
import zipfile

import pytest

from minidiff.files import DataError, download, extract

PAYLOAD = bytes(range(256)) * 1000  # 256 kB: several read blocks, so "midway" is well defined


@pytest.fixture
def server(serve):
    with serve({"/data.bin": PAYLOAD}) as s:
        yield s


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_renames(server, tmp_path):
    dest = tmp_path / "sub" / "data.bin"
    out = download(server.url("/data.bin"), dest, sha256=sha256(PAYLOAD),
                   md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert server.requests == [("/data.bin", None)]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    server.cut_next = True
    with pytest.raises(DataError, match="are you online.*The partial file is kept in .*data.bin.part"):
        download(server.url("/data.bin"), dest, sha256=sha256(PAYLOAD), progress=False)
    assert not dest.exists()
    half = part.stat().st_size
    assert 0 < half < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:half]

    download(server.url("/data.bin"), dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/data.bin", f"bytes={half}-")


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes from some other file")
    server.ignore_range = True
    download(server.url("/data.bin"), dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=32-")]


def test_complete_part_is_verified_without_refetching_bytes(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)  # server answers 416: nothing left to send
    download(server.url("/data.bin"), tmp_path / "data.bin", sha256=sha256(PAYLOAD), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match=r"data\.bin downloaded from http://127\.0\.0\.1:\d+/data\.bin is corrupt"):
        download(server.url("/data.bin"), dest, md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_says_so(tmp_path):
    with socket.socket() as s:  # grab a free port, then close it: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(DataError, match=f"could not download {url} \\(are you online\\?\\)"):
        download(url, tmp_path / "data.bin", progress=False)
    assert not (tmp_path / "data.bin").exists()


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download(server.url("/nope.bin"), tmp_path / "nope.bin", progress=False)


def test_existing_valid_file_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url("/data.bin"), dest, sha256=sha256(PAYLOAD), progress=False)
    assert server.requests == []


def test_existing_corrupt_file_is_replaced(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"corrupt")
    download(server.url("/data.bin"), dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


# ---------------------------------------------------------------------------------------------------
# extract


def make_tar(path, members):
    """Write a .tar.gz holding ``{name: bytes}``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("make, name", [(make_tar, "a.tar.gz"), (make_zip, "a.zip")])
def test_extract_tar_and_zip(tmp_path, make, name):
    archive = make(tmp_path / name, {"top/x.txt": b"x", "top/deep/y.txt": b"y", "z.txt": b"z"})
    into = tmp_path / "out"
    assert extract(archive, into) == into
    assert (into / "top" / "x.txt").read_bytes() == b"x"
    assert (into / "top" / "deep" / "y.txt").read_bytes() == b"y"
    assert (into / "z.txt").read_bytes() == b"z"
    assert sorted(p.name for p in into.iterdir()) == ["top", "z.txt"]  # temp folder is gone


def test_extract_only_some_members_and_replace_old_copy(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"top/keep.txt": b"new", "top/skip.txt": b"s"})
    (tmp_path / "out" / "top").mkdir(parents=True)
    (tmp_path / "out" / "top" / "stale.txt").write_bytes(b"old")
    extract(archive, tmp_path / "out", only={"top/keep.txt"})
    assert sorted(p.name for p in (tmp_path / "out" / "top").iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("make, name", [(make_tar, "evil.tar.gz"), (make_zip, "evil.zip")])
@pytest.mark.parametrize("member", ["../evil.txt", "ok/../../evil.txt"])
def test_extract_rejects_path_traversal(tmp_path, make, name, member):
    archive = make(tmp_path / name, {"fine.txt": b"ok", member: b"gotcha"})
    with pytest.raises(DataError, match="outside the target folder"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-unpacked is left behind


def test_extract_rejects_absolute_paths_and_links(tmp_path):
    archive = make_tar(tmp_path / "abs.tar.gz", {"/tmp/evil.txt": b"gotcha"})
    with pytest.raises(DataError, match="outside the target folder"):
        extract(archive, tmp_path / "out")
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataError, match="not a plain file or folder"):
        extract(tmp_path / "link.tar.gz", tmp_path / "out")


def test_extract_corrupt_archive(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"bad\.zip is not a readable archive"):
        extract(tmp_path / "bad.zip", tmp_path / "out")


def test_a_write_killed_midway_leaves_nothing_the_next_write_does_not_remove(tmp_path):
    """``kill -9`` during ``write_atomic`` leaves its temporary file; the next write into that folder
    removes it, and never a temporary file whose writer is still alive."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from minidiff.files import write_atomic
    slow_writer = ("import sys, time; from minidiff.files import write_atomic\n"
                   "write_atomic(sys.argv[1], lambda tmp: (open(tmp, 'w').write('half'), time.sleep(60)))")
    child = subprocess.Popen([sys.executable, "-c", slow_writer, str(tmp_path / "samples.png")])
    for _ in range(200):  # until its temporary file exists
        if list(tmp_path.glob(".samples.png.*.tmp")):
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    orphan, = tmp_path.glob(".samples.png.*.tmp")
    live = tmp_path / f".other.png.{os.getpid()}.abcd1234.tmp"  # a writer that is still running: this test
    live.write_text("in progress")
    write_atomic(tmp_path / "next.png", lambda tmp: open(tmp, "w").write("whole"))
    assert not orphan.exists() and live.exists() and (tmp_path / "next.png").read_text() == "whole"
    assert not (tmp_path / "samples.png").exists()


def test_written_files_are_readable_by_others_whatever_the_writer_made(tmp_path):
    """mkstemp makes the temporary file private, and a writer may make its own (safetensors does): the file
    that lands is an ordinary data file (rw-r--r--), like one a student copies or commits."""
    import os
    import stat
    from pathlib import Path

    import torch

    from minidiff.files import save_safetensors_atomic, write_atomic

    def private(tmp):
        Path(tmp).unlink()
        Path(tmp).write_text("x")
        os.chmod(tmp, 0o600)

    for path in (write_atomic(tmp_path / "a.txt", private),
                 save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "b.safetensors")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
