"""Finding dataset files on disk, and downloading them safely when they are missing.

Every dataset file is described by a ``RemoteFile``: its name, the folder it lives in
(``mnist``, ``fashion-mnist``, ...), the MD5 its authors publish, and a list of mirrors.
``fetch(remote)`` returns the path of a copy whose MD5 matches, looking in this order:

1. ``$MINIDL_DATA/<folder>/<name>``  (the environment variable names a folder, for example
   a copy of the original files made by hand; it also receives downloads when writable),
2. ``<cache>/<folder>/<name>`` where ``<cache>`` is ``$XDG_CACHE_HOME/minidl`` or
   ``~/.cache/minidl``,
3. a download from each mirror in turn.

A copy whose MD5 does not match is rejected and never read. A download is streamed into a
temporary file in the destination folder while its MD5 is computed, and ``os.replace``
moves it into place only after the checksum matches: ``os.replace`` is atomic on one file
system, so a half-written or corrupted download is never found under the real name.
When nothing works, one ``DataNotFoundError`` says which file is missing, where it
looked, why each download failed, and the folder to put the file in.
"""
import dataclasses
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request

__all__ = ["RemoteFile", "DataNotFoundError", "fetch", "find", "download", "md5sum",
           "data_home", "cache_home", "search_folders"]

_CHUNK = 1 << 20            # bytes read per step while hashing or downloading
_TIMEOUT = 60               # seconds urlopen waits for a mirror before trying the next
_verified = {}              # (path, size, mtime_ns) -> md5 already computed this session

# The URL opener; a module attribute so that tests can replace it (monkeypatch).
urlopen = urllib.request.urlopen


class DataNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk (with the right MD5) nor downloadable."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One published dataset file.

    Attributes:
        name: file name, as the authors publish it (``train-images-idx3-ubyte.gz``).
        folder: sub-folder of the data folders that holds it (``mnist``).
        md5: the published MD5, 32 hex digits.
        urls: mirrors of the file, tried in order.
        dataset: human-readable dataset name used in messages (``MNIST``).
    """
    name: str
    folder: str
    md5: str
    urls: tuple
    dataset: str = ""


def data_home():
    """The folder named by ``MINIDL_DATA``, or None when the variable is unset or empty."""
    value = os.environ.get("MINIDL_DATA", "").strip()
    return os.path.expanduser(value) if value else None


def cache_home():
    """The user cache folder: ``$XDG_CACHE_HOME/minidl``, else ``~/.cache/minidl``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "minidl")
    return os.path.join(os.path.expanduser("~"), ".cache", "minidl")


def search_folders(folder, data_dir=None):
    """The folders searched for a file of sub-folder ``folder``, in order, with labels.

    Args:
        folder: the dataset's sub-folder (``mnist``).
        data_dir: a data folder given explicitly (it replaces ``MINIDL_DATA``), or None.

    Returns:
        list of (path, label) pairs, ``data_dir/folder`` (else ``$MINIDL_DATA/folder``)
        first when there is one.
    """
    out = []
    if data_dir is not None:
        out.append((os.path.join(os.path.expanduser(os.fspath(data_dir)), folder),
                    "the data folder given"))
    elif data_home() is not None:
        out.append((os.path.join(data_home(), folder), "from MINIDL_DATA"))
    out.append((os.path.join(cache_home(), folder), "user cache"))
    return out


def md5sum(path):
    """The MD5 of a file as 32 hex digits, remembered per (path, size, mtime) this session."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        _verified[key] = h.hexdigest()
    return _verified[key]


def find(remote, rejected=None, data_dir=None):
    """The path of a local copy of ``remote`` with the published MD5, or None.

    Args:
        remote: the ``RemoteFile`` to look for.
        rejected: optional list; each copy found with a wrong MD5 is appended to it as a
            readable string (it is not used).
        data_dir: a data folder searched first instead of ``MINIDL_DATA``, or None.

    Returns:
        str path, or None when no folder holds a good copy.
    """
    for folder, _ in search_folders(remote.folder, data_dir):
        path = os.path.join(folder, remote.name)
        if not os.path.isfile(path):
            continue
        got = md5sum(path)
        if got == remote.md5:
            return path
        if rejected is not None:
            rejected.append(f"{path} (md5 {got}, expected {remote.md5}; not used)")
    return None


def _missing_root(data_dir=None):
    """The data folder given (``data_dir``, else ``MINIDL_DATA``) when it is not a folder
    (missing, a typo most likely, or a file), else None. It is never created: downloads
    then go to the cache."""
    root = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else data_home()
    return root if root is not None and not os.path.isdir(root) else None


def _download_folder(remote, data_dir=None):
    """The first folder (MINIDL_DATA's, then the cache) that exists or can be made, writable;
    a MINIDL_DATA (or ``data_dir``) that does not exist is skipped, not created."""
    missing = _missing_root(data_dir)
    for folder, _ in search_folders(remote.folder, data_dir):
        if missing is not None and os.path.dirname(folder) == missing:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return search_folders(remote.folder, data_dir)[-1][0]


def download(remote, folder, errors=None):
    """Download ``remote`` into ``folder``, trusting it only after the MD5 matches.

    Each mirror is streamed into a temporary file in ``folder``; on a matching MD5 the file
    is moved to ``folder/remote.name`` with ``os.replace``, otherwise (wrong MD5, network
    error midway, interruption) the temporary file is removed and the next mirror tried.

    Args:
        remote: the ``RemoteFile`` to download.
        folder: destination folder (created if needed).
        errors: optional list that receives one ``"url: reason"`` string per failed mirror.

    Returns:
        str path of the verified file, or None when every mirror failed.
    """
    errors = [] if errors is None else errors
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        errors.append(f"cannot create {folder}: {err}")
        return None
    dest = os.path.join(folder, remote.name)
    for url in remote.urls:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=folder)
        except OSError as err:
            errors.append(f"cannot write in {folder}: {err}")
            return None
        try:
            print(f"minidl.data: downloading {url}", file=sys.stderr)
            h = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=_TIMEOUT) as response:
                os.chmod(tmp, _new_file_mode())
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
            got = h.hexdigest()
            if got != remote.md5:
                errors.append(f"{url}: md5 {got} does not match the published {remote.md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError, http.client.HTTPException) as err:
            errors.append(f"{url}: {type(err).__name__}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return None


def _new_file_mode():
    """The mode ``open()`` gives a new file: 0o666 less the umask (``mkstemp`` gives 0o600,
    which left files readable by their owner only)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def fetch(remote, download_if_missing=True, data_dir=None):
    """The path of a verified copy of ``remote``, downloading it when no good copy exists.

    Args:
        remote: the ``RemoteFile`` wanted.
        download_if_missing: when False, never touch the network.
        data_dir: a data folder searched first instead of ``MINIDL_DATA``, or None.

    Returns:
        str path of a file whose MD5 is the published one.

    Raises:
        DataNotFoundError: no good local copy and the download failed (or was not allowed);
            the message names the file, the folders searched and the folder to put it in.
    """
    rejected = []
    path = find(remote, rejected, data_dir)
    if path is not None:
        return path
    errors = []
    if download_if_missing:
        target = _download_folder(remote, data_dir)
        path = download(remote, target, errors)
        if path is not None:
            return path
    else:
        target = search_folders(remote.folder, data_dir)[0][0]
        errors.append("not attempted (download=False)")
    looked = ", ".join(f"{p} ({label})" for p, label in search_folders(remote.folder, data_dir))
    if data_dir is None and data_home() is None:
        looked += "; MINIDL_DATA is not set"
    missing = _missing_root(data_dir)
    if missing is not None:
        which = "the data folder given" if data_dir is not None else "MINIDL_DATA"
        why = "is a file, not a folder" if os.path.exists(missing) else "does not exist (a typo?)"
        looked += f"; {which} {missing} {why}"
    lines = [f"{remote.dataset or remote.folder}: cannot find or download {remote.name!r}.",
             f"  looked in: {looked}"]
    if rejected:
        lines.append("  rejected:  " + "; ".join(rejected))
    lines.append("  download:  " + "; ".join(errors))
    relative = os.path.join(remote.folder, remote.name)
    lines.append(f"Put the original file {remote.name} (md5 {remote.md5}) in {target}, or "
                 f"set MINIDL_DATA to a folder that holds {relative}.")
    raise DataNotFoundError("\n".join(lines))
