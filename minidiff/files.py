"""Where data lives, how files are checked, and how they are fetched.

Every file minidiff reads from disk is verified against a known SHA-256 before use, and every file
it writes goes to a temporary name first and is renamed into place only once complete and verified,
so an interrupted run never leaves a half-written file where a good one is expected.

Downloads follow the same rule: bytes arrive in ``<dest>.part``, an interrupted download is resumed
from where it stopped (an HTTP Range request), and only a file whose checksum matches is renamed to
``dest``. Archives are unpacked into a temporary folder first and refuse members that would land
outside the target folder ("path traversal", e.g. a member named ``../../.bashrc``).
"""
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from safetensors.torch import save_file
from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

TIMEOUT = 60  # seconds a stalled connection may stay silent before we give up (and keep the .part)
BLOCK = 1 << 16  # bytes per read: small enough for a smooth progress bar, big enough to be fast


class DataError(RuntimeError):
    """A data file is missing, corrupt or not what was expected. The message says what to do."""


@contextlib.contextmanager
def folder_lock(folder, *, wait: bool, what: str):
    """Hold ``folder/.lock`` exclusively: one writer at a time (a training run, a manifest update). The
    operating system drops the lock when its process ends, however it ends, so no lock is left stuck;
    and whoever holds it removes the temporary files that writers killed mid-write left behind (no one
    else can be writing them). ``wait=False`` refuses at once, with one clear line, if it is taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        if fcntl is not None:  # POSIX; on Windows writes stay atomic but are not serialised
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise DataError(f"{folder} is in use by another {what}: wait for it to finish, or "
                                "choose another folder.") from None
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        yield


def project_dir() -> Path:
    """The repository minidiff runs from (the folder above the package), whatever the working directory."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The data cache: ``$MINIDIFF_DATA`` if set, else the repository's ``data/`` folder."""
    return Path(os.environ.get("MINIDIFF_DATA", project_dir() / "data"))


def _hexdigest(path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path, write) -> Path:
    """Call ``write(tmp_path)``, fsync the result, then rename it to ``path`` in one atomic step.

    Every file minidiff writes goes through here: a crash leaves the old file or the new one,
    never half of one. The temporary file sits in the same folder, so the rename cannot cross disks;
    its name carries the writer's process id (``.<name>.<pid>.<random>.tmp``), so the next write into
    that folder removes what writers killed mid-write left behind (``remove_orphans``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp (and some writers, safetensors') make files private; these are data files
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_orphans(folder) -> None:
    """Delete ``write_atomic``'s temporary files in ``folder`` whose writing process no longer exists
    (killed with ``kill -9``, or the machine lost power); files of live writers are left alone."""
    for tmp in Path(folder).glob(".*.*.*.tmp"):
        pid = tmp.name.rsplit(".", 3)[1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if os.name != "posix":  # Windows has no signal 0: keep every file rather than guess
        return True
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def sha256sum(path) -> str:
    return _hexdigest(path, "sha256")


def verify_sha256(path, expected: str, fix: str) -> Path:
    """Raise DataError naming ``path`` (and saying ``fix``) unless it exists and has this SHA-256."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing. {fix}")
    actual = sha256sum(path)
    if actual != expected:
        raise DataError(f"{path} is corrupt: sha256 {actual[:12]}… but expected {expected[:12]}…. {fix}")
    return path


def _checksum_mismatch(path, sha256, md5):
    """Describe the first checksum of ``path`` that differs from the expected one, or return None."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = _hexdigest(path, algorithm)
            if actual != expected.lower():
                return f"{algorithm} {actual} but expected {expected}"
    return None


# ---------------------------------------------------------------------------------------------------
# downloading


def download(url: str, dest, *, sha256: str = None, md5: str = None, progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest``, resuming an interrupted download, and verify it before use.

    Official datasets publish MD5 sums (CIFAR-10, COCO), our own files SHA-256; give whichever you
    have. If ``dest`` already exists and matches (or no checksum is given), nothing is downloaded.
    """
    dest = Path(dest)
    if dest.exists() and _checksum_mismatch(dest, sha256, md5) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch_into(url, part, progress)
    except urllib.error.HTTPError as e:
        raise DataError(f"could not download {url}: the server answered HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        kept = (f"The partial file is kept in {part} and the next call resumes." if part.exists()
                else "Nothing was saved.")
        raise DataError(f"could not download {url} (are you online?): {e}. {kept}") from e
    mismatch = _checksum_mismatch(part, sha256, md5)
    if mismatch is not None:
        part.unlink()  # a wrong file cannot be resumed into a right one: start over next time
        raise DataError(f"{dest.name} downloaded from {url} is corrupt: {mismatch}. It was deleted; "
                        "try again, and if it keeps failing the file on the server has changed.")
    os.replace(part, dest)  # atomic: dest is either absent, the old file, or the complete verified one
    return dest


def _fetch_into(url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (or write it from scratch); raise if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # "range not satisfiable": the .part already holds every byte
            return
        raise
    with response:
        if offset and response.status != 206:  # the server ignored Range and sends the whole file
            offset = 0
        remaining = response.headers.get("Content-Length")
        total = offset + int(remaining) if remaining is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.stem, disable=not progress,
        ) as bar:
            for block in iter(lambda: response.read(BLOCK), b""):
                f.write(block)
                bar.update(len(block))
        # http.client returns b"" rather than raising when a connection closes early, so check.
        size = part.stat().st_size
        if total is not None and size < total:
            raise ConnectionError(f"connection closed after {size:,} of {total:,} bytes")


# ---------------------------------------------------------------------------------------------------
# unpacking


def extract(archive, into, *, only=None) -> Path:
    """Unpack a .tar.gz/.tgz/.tar or .zip ``archive`` into the folder ``into`` and return it.

    ``only``, if given, is a collection of member names to unpack; the rest is skipped (COCO's
    annotation zip holds 800 MB of JSON of which the captions are 30 MB).

    Everything is unpacked into a temporary folder first; only when that succeeded is each top-level
    entry renamed into ``into`` (replacing an older copy), so a failure leaves no half-unpacked tree.
    Only plain files and folders are unpacked: links, devices and members whose path would end up
    outside ``into`` raise DataError.
    """
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=into))  # same disk as into: renames are cheap
    try:
        try:
            for name, is_dir, open_member in _members(archive):
                target = _inside(tmp, name, archive)
                if only is not None and name not in only:
                    continue
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open_member() as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, BLOCK)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise DataError(f"{archive} is not a readable archive ({e}); delete it and download it again") from e
        for entry in tmp.iterdir():
            old = into / entry.name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            os.replace(entry, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return into


def _members(archive: Path):
    """Yield ``(name, is_dir, open_member)`` for each member of a tar or zip archive."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                yield info.filename, info.is_dir(), lambda info=info: z.open(info)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as t:
            for member in t:
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive} holds {member.name!r}, which is not a plain file or folder; "
                                    "refusing to unpack it")
                yield member.name, member.isdir(), lambda member=member: t.extractfile(member)
    else:
        raise DataError(f"cannot unpack {archive}: only .tar.gz, .tgz, .tar and .zip are supported")


def _inside(root: Path, name: str, archive: Path) -> Path:
    """``root / name``, unless that escapes ``root`` (an absolute name, or one using ``..``)."""
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{archive} holds {name!r}, which would be written outside the target folder; "
                        "the archive is corrupt or malicious, refusing to unpack it")
    return target


def save_safetensors_atomic(tensors: dict, path, metadata: dict | None = None) -> Path:
    """Write ``tensors`` (name -> Tensor) and string ``metadata`` to a safetensors file, atomically."""
    # safetensors refuses views and tensors sharing memory (tied weights), so store plain copies
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_json_atomic(obj, path) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))
