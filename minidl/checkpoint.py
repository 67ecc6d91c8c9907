"""Checkpoints: model, optimizer, preconditioner and generator state in one ``.npz`` file.

``save(path, model, optimizer, precond, epoch=e, rng=loader_rng)`` writes everything a run
needs to continue exactly where it stopped; ``load(path, model, optimizer, precond,
rng=loader_rng)`` puts it back into freshly made objects, so that training 2 epochs
straight and training 1 epoch, saving, loading and training 1 more give the same weights
bit for bit.

The file is a plain NumPy ``.npz`` archive (a zip of ``.npy`` arrays) laid out as::

    __meta__              uint8 (n,)   UTF-8 JSON: format, version, epoch, class names,
                                       which entries were Python numbers, SHA-256 of every
                                       array, and the caller's ``extra`` (JSON-able)
    model/<name>          the model's ``state_dict()`` (qualified names, e.g. ``0.W``)
    optimizer/<name>      the optimizer's ``state_dict()``
    precond/<name>        the preconditioner's ``state_dict()``
    best/<name>           optional: the weights of the best epoch so far (a model
                          ``state_dict()``), so that ``fit(restore_best=True)`` keeps its
                          promise across a resume
    rng/<name>            uint64 (6,)  a PCG64 bit generator: state (hi, lo 64 bits),
                                       increment (hi, lo), has_uint32, uinteger

Safety. The file is read with ``allow_pickle=False``: an archive that holds an object array
(which NumPy can only read by unpickling, and unpickling can run arbitrary code) is
refused, so a stranger's checkpoint cannot run code. Metadata is JSON, never pickle.

Crashes. ``save`` writes a temporary file in the destination folder, flushes it to disk
and then ``os.replace``s it over the old file; the replacement is atomic on one file
system, so a crash mid-save leaves the previous checkpoint whole.

Damage. ``load`` reads and checks the whole file first (zip structure, every array against
its SHA-256, names and shapes against the model and the optimizer) and only then assigns.
A truncated or corrupted file raises ``CheckpointError`` naming the file and what is
wrong, and the model, optimizer, preconditioner and generators stay as they were.

Backends. Arrays are stored on the host; loading moves them to the device of the model's
parameters, so a checkpoint written on a GPU loads on a CPU and the other way round.
"""
import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
import zlib

from . import backend

__all__ = ["save", "load", "read", "check_writable", "Checkpoint", "CheckpointError", "FORMAT",
           "VERSION"]

FORMAT = "minidl-checkpoint"
VERSION = 1
_SECTIONS = ("model", "optimizer", "precond", "rng", "best")
_ZIP_MAGIC = b"PK\x03\x04"
_MASK64 = (1 << 64) - 1


class CheckpointError(ValueError):
    """A checkpoint cannot be written, or cannot be read into the given objects."""


@dataclasses.dataclass
class Checkpoint:
    """The checked contents of a checkpoint file (what ``read`` returns).

    Attributes:
        path: the file it came from.
        epoch: the number of epochs finished when it was saved.
        meta: the decoded JSON metadata.
        model, optimizer, precond: ``{name: host array or Python number}`` per section
            (empty dicts for sections the file does not have).
        rng: ``{name: bit generator state dict}`` as ``Generator.bit_generator.state``.
        extra: the ``extra`` passed to ``save`` (JSON-able data, e.g. a history).
        best: the ``best`` weights passed to ``save`` (``{name: host array}``; empty
            when none were saved).
    """
    path: str
    epoch: int
    meta: dict
    model: dict
    optimizer: dict
    precond: dict
    rng: dict
    extra: object
    best: dict = dataclasses.field(default_factory=dict)


# -- saving ------------------------------------------------------------------------------
def _digest(a):
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    np = backend.host()
    h = hashlib.sha256()
    h.update(a.dtype.str.encode())
    h.update(repr(tuple(a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _to_host(section, name, value, scalars):
    """One state entry as a host array; Python numbers are remembered in ``scalars``."""
    np = backend.host()
    if isinstance(value, bool):
        scalars[name] = "bool"
    elif isinstance(value, int):
        scalars[name] = "int"
    elif isinstance(value, float):
        scalars[name] = "float"
    elif isinstance(value, str):  # a setting such as damping_mode="eigen"
        scalars[name] = "str"
        return np.array(value)  # 0-d, dtype <U: NumPy reads it back without pickle
    elif not backend.is_array(value) and not isinstance(value, np.generic):
        raise CheckpointError(
            f"cannot store {section} entry {name!r} of type {type(value).__name__} in a "
            "checkpoint: only arrays, numbers and strings can be saved without pickle")
    a = np.array(backend.to_numpy(value))  # a host copy; 0-d for numbers
    if a.dtype.kind not in "biuf":
        raise CheckpointError(
            f"cannot store {section} entry {name!r} with dtype {a.dtype} in a checkpoint: "
            "only numeric arrays can be saved without pickle")
    return a


def _rng_state_array(name, gen):
    """The PCG64 state of ``gen`` as a uint64 array of 6 words."""
    np = backend.host()
    bitgen = getattr(gen, "bit_generator", gen)
    state = getattr(bitgen, "state", None)
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        kind = state.get("bit_generator") if isinstance(state, dict) else type(gen).__name__
        raise CheckpointError(
            f"rng {name!r}: only PCG64 generators (minidl.default_rng / "
            f"numpy.random.default_rng) can be checkpointed, got {kind}")
    s, inc = int(state["state"]["state"]), int(state["state"]["inc"])
    words = [s >> 64, s & _MASK64, inc >> 64, inc & _MASK64,
             int(state["has_uint32"]), int(state["uinteger"])]
    return np.array(words, dtype=np.uint64)  # (6,)


def _rng_dict(rng):
    """``{name: generator}`` from a generator, a dict of them, or None."""
    if rng is None:
        return {}
    if isinstance(rng, dict):
        return dict(rng)
    return {"default": rng}


def save(path, model, optimizer=None, precond=None, epoch=0, rng=None, extra=None,
         best=None):
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: the file to write (``.npz`` by convention; the name is used as given).
        model: the network; its ``state_dict()`` (parameters and buffers) is saved.
        optimizer: an optimizer with ``state_dict()``, or None.
        precond: a preconditioner with ``state_dict()``, or None.
        epoch: the number of epochs finished (an int >= 0).
        rng: a ``numpy.random.Generator`` (PCG64), or ``{name: generator}``, whose states
            are saved (the data loader's shuffling generator, a Dropout layer's, ...).
        extra: anything JSON can hold (numbers, strings, lists, dicts), e.g. a history.
        best: another ``model.state_dict()`` to keep beside the current weights (the best
            epoch's), or None.

    Returns:
        The path written.

    Raises:
        CheckpointError: an entry cannot be stored without pickle, or ``extra`` is not
            JSON-able. The previous file at ``path``, if any, is left as it was.
    """
    np = backend.host()
    path = os.fspath(path)
    if int(epoch) != epoch or epoch < 0:
        raise CheckpointError(f"save({path!r}): epoch must be an integer >= 0, got {epoch!r}")
    arrays = {}
    meta = {"format": FORMAT, "version": VERSION, "epoch": int(epoch),
            "backend": backend.get_backend(), "classes": {}, "scalars": {}}
    sources = {"model": model, "optimizer": optimizer, "precond": precond}
    for section, obj in sources.items():
        if obj is None:
            continue
        meta["classes"][section] = type(obj).__name__
        scalars = {}
        for name, value in obj.state_dict().items():
            arrays[f"{section}/{name}"] = _to_host(section, name, value, scalars)
        meta["scalars"][section] = scalars
    for name, value in (best or {}).items():
        arrays[f"best/{name}"] = _to_host("best", name, value, {})
    for name, gen in _rng_dict(rng).items():
        arrays[f"rng/{name}"] = _rng_state_array(name, gen)
    meta["digests"] = {key: _digest(a) for key, a in arrays.items()}
    try:
        meta["extra"] = json.loads(json.dumps(extra, allow_nan=True))
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"save({path!r}): extra must be JSON-able "
                              f"(numbers, strings, lists, dicts): {err}") from None
    arrays["__meta__"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)  # (n_bytes,)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, _new_file_mode())
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    return path


def _new_file_mode():
    """The mode ``open()`` gives a new file: 0o666 less the umask (``mkstemp`` gives 0o600,
    which left files readable by their owner only)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(path):
    """Make sure ``save(path, ...)`` will be able to write, before any training starts.

    Creates the folder if needed and writes (then removes) a temporary file in it, the
    way ``save`` does. The file at ``path`` itself is left alone; when it exists it must
    be a checkpoint (or empty), since ``save`` will replace it.

    Raises:
        CheckpointError: ``path`` is a folder, a file that is not a checkpoint, or its
            folder cannot be made or written; the message says which and why.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path!r} is a folder; give a file name, "
                              "e.g. run.npz")
    if os.path.isfile(path) and os.path.getsize(path) > 0 and not _looks_like_checkpoint(path):
        raise CheckpointError(f"checkpoint path {path!r} exists and is not a minidl "
                              "checkpoint, so saving would destroy it; give another file name")
    folder = os.path.dirname(os.path.abspath(path))
    above = folder
    while not os.path.exists(above):  # the nearest part of the path that exists
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise CheckpointError(f"cannot write the checkpoint {path!r}: {above!r} is a file, "
                              "not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise CheckpointError(f"cannot write the checkpoint {path!r}: "
                              f"{err.strerror or err} ({folder})") from None
    return path


def _looks_like_checkpoint(path):
    """True for an .npz archive holding the ``__meta__`` entry ``save`` writes (only the
    archive's list of entries is read)."""
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return False
    try:
        with backend.host().load(path, allow_pickle=False) as data:
            return "__meta__" in data.files
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError):
        return False


def _fsync_folder(folder):
    """Make the rename itself durable where the OS allows it (POSIX); ignore elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading -----------------------------------------------------------------------------
def _fail(path, what):
    return CheckpointError(f"checkpoint {path!r}: {what}")


def _read_arrays(path):
    """Every array in the archive, read with ``allow_pickle=False``; clear errors."""
    np = backend.host()
    if os.path.isdir(path):
        raise _fail(path, "is a folder; give the checkpoint file inside it (a .npz)")
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise _fail(path, "the file is empty (was the save interrupted?)")
    if head != _ZIP_MAGIC:
        raise _fail(path, f"not an .npz archive (it starts with bytes {head.hex()}, an .npz "
                          f"starts with {_ZIP_MAGIC.hex()}); is this a minidl checkpoint?")
    arrays = {}
    key = None
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                arrays[key] = data[key]
    except ValueError as err:
        if "pickle" in str(err) or "object" in str(err).lower():
            raise _fail(path, f"entry {key!r} is an object array, which NumPy can only read "
                              "by unpickling (and unpickling can run code); minidl "
                              "checkpoints hold numeric arrays only, so it was refused") from None
        raise _fail(path, f"corrupted entry {key!r} ({err})") from None
    # (zipfile raises NotImplementedError for a damaged header naming an unknown
    # compression method or zip version, RuntimeError for one whose "encrypted" flag is set)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError,
            NotImplementedError, RuntimeError) as err:
        where = f" while reading entry {key!r}" if key else ""
        raise _fail(path, f"truncated or corrupted archive{where} "
                          f"({type(err).__name__}: {err})") from None
    return arrays


def _decode_meta(path, arrays):
    if "__meta__" not in arrays:
        raise _fail(path, "no '__meta__' entry: this .npz was not written by "
                          "minidl.checkpoint.save")
    raw = arrays.pop("__meta__")
    if raw.dtype != backend.host().uint8 or raw.ndim != 1:
        raise _fail(path, f"'__meta__' must be a 1-D uint8 array, got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise _fail(path, f"the metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, f"the metadata does not say format {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise _fail(path, f"format version {meta.get('version')!r}; this minidl reads "
                          f"version {VERSION}")
    for field, kind in (("epoch", int), ("digests", dict), ("scalars", dict),
                        ("classes", dict)):
        if not isinstance(meta.get(field), kind):
            raise _fail(path, f"the metadata field {field!r} is missing or malformed")
    return meta


def _rng_state_from_array(path, name, a):
    np = backend.host()
    if a.dtype != np.uint64 or a.shape != (6,):
        raise _fail(path, f"rng/{name} must be uint64 of shape (6,), got {a.dtype} {a.shape}")
    w = [int(v) for v in a]
    return {"bit_generator": "PCG64",
            "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
            "has_uint32": w[4], "uinteger": w[5]}


def read(path):
    """Read and check a checkpoint without touching any model.

    Every array is compared with the SHA-256 recorded at save time, so a flipped bit is
    found here rather than in a strange training run.

    Args:
        path: the checkpoint file.

    Returns:
        A ``Checkpoint``.

    Raises:
        CheckpointError: missing, empty, truncated or corrupted file, pickled (object)
            entries, unknown format, or an array whose checksum does not match.
    """
    path = os.fspath(path)
    arrays = _read_arrays(path)
    meta = _decode_meta(path, arrays)
    digests = meta["digests"]
    missing = sorted(set(digests) - set(arrays))
    unexpected = sorted(set(arrays) - set(digests))
    if missing or unexpected:
        raise _fail(path, f"entries do not match the metadata: missing {missing}, "
                          f"unexpected {unexpected}")
    for key, a in arrays.items():
        if _digest(a) != digests[key]:
            raise _fail(path, f"entry {key!r} is corrupted (its SHA-256 does not match the "
                              "one recorded when it was saved)")
    sections = {s: {} for s in _SECTIONS}
    for key, a in arrays.items():
        section, _, name = key.partition("/")
        if section not in sections or not name:
            raise _fail(path, f"unknown entry {key!r}")
        kind = meta["scalars"].get(section, {}).get(name)
        if kind is not None:
            a = {"bool": bool, "int": int, "float": float, "str": str}[kind](a.item())
        sections[section][name] = a
    rng = {name: _rng_state_from_array(path, name, a) for name, a in sections["rng"].items()}
    return Checkpoint(path=path, epoch=meta["epoch"], meta=meta, model=sections["model"],
                      optimizer=sections["optimizer"], precond=sections["precond"], rng=rng,
                      extra=meta.get("extra"), best=sections["best"])


# -- loading into objects ----------------------------------------------------------------
def _check_model(ck, model):
    """Names, shapes and kinds of the model's entries (and best weights) against the file."""
    have = model.state_dict()
    for section, saved in (("model", ck.model), ("best", ck.best)):
        if section == "best" and not saved:
            continue
        missing = sorted(set(have) - set(saved))
        unexpected = sorted(set(saved) - set(have))
        if missing or unexpected:
            raise _fail(ck.path, f"it holds a different model (class "
                                 f"{ck.meta['classes'].get('model')}): missing {missing}, "
                                 f"unexpected {unexpected} in its {section} weights")
        for name, value in have.items():
            got = saved[name]
            if tuple(got.shape) != tuple(value.shape):
                raise _fail(ck.path, f"{section} entry {name!r} has shape "
                                     f"{tuple(got.shape)}, the model expects "
                                     f"{tuple(value.shape)}")
            if (got.dtype.kind == "f") != (value.dtype.kind == "f"):
                raise _fail(ck.path, f"{section} entry {name!r} has dtype {got.dtype}, the "
                                     f"model holds {value.dtype}")
    return have


def _check_section(ck, section, obj, strict):
    """Class name and presence of an optimizer or preconditioner section."""
    saved_class = ck.meta["classes"].get(section)
    if saved_class is None:
        if strict:
            raise _fail(ck.path, f"it holds no {section} state, but a {type(obj).__name__} "
                                 f"was passed to load(); pass {section}=None or "
                                 "strict=False")
        return False
    if saved_class != type(obj).__name__:
        raise _fail(ck.path, f"it holds {section} state of a {saved_class}, but a "
                             f"{type(obj).__name__} was passed")
    return True


def _generators(ck, rng, strict):
    gens = _rng_dict(rng)
    for name, gen in gens.items():
        if name not in ck.rng:
            if strict:
                raise _fail(ck.path, f"it holds no state for generator {name!r}; it has "
                                     f"{sorted(ck.rng)}")
            continue
        if getattr(gen, "bit_generator", None) is None or \
                gen.bit_generator.state.get("bit_generator") != "PCG64":
            raise _fail(ck.path, f"generator {name!r} to restore must be a PCG64 Generator")
    return {name: gen for name, gen in gens.items() if name in ck.rng}


def load(path, model, optimizer=None, precond=None, rng=None, strict=True):
    """Restore a checkpoint into existing objects (made the same way as when saving).

    Everything is read and checked before anything is assigned; if assigning still fails
    (an optimizer that rejects its state), what was already assigned is put back. Either
    way a failed load raises ``CheckpointError`` and leaves every object as it was.

    Args:
        path: the checkpoint file, or a ``Checkpoint`` already returned by ``read``.
        model: the network to fill (same architecture; any backend).
        optimizer: the optimizer to fill, or None to skip its state.
        precond: the preconditioner to fill, or None.
        rng: a generator, or ``{name: generator}`` as given to ``save``; their states are
            set in place.
        strict: with True (default), an object passed here whose state the file lacks is
            an error; with False it is left alone.

    Returns:
        The ``Checkpoint`` read (``.epoch`` to resume from, ``.extra``).

    Raises:
        CheckpointError: what is wrong, naming the file; nothing was changed.
    """
    ck = path if isinstance(path, Checkpoint) else read(path)
    snapshot = {"model": _check_model(ck, model)}
    targets = [("model", model, ck.model)]
    for section, obj, state in (("optimizer", optimizer, ck.optimizer),
                                ("precond", precond, ck.precond)):
        if obj is not None and _check_section(ck, section, obj, strict):
            snapshot[section] = obj.state_dict()
            targets.append((section, obj, state))
    gens = _generators(ck, rng, strict)
    done = []
    try:
        for section, obj, state in targets:
            obj.load_state_dict(dict(state))
            done.append((section, obj))
    except Exception as err:
        for section, obj in done + [(section, obj)]:
            try:
                obj.load_state_dict(snapshot[section])
            except Exception:  # the snapshot came from the object itself; keep going
                pass
        raise _fail(ck.path, f"its {section} state does not fit the {type(obj).__name__} "
                             f"({err}); nothing was changed") from None
    for name, gen in gens.items():
        gen.bit_generator.state = ck.rng[name]
    return ck
