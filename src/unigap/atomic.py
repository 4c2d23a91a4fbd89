"""Atomic writes: a reader (or a resumed job) sees the old file or the new one, never half of one.

Every result, checkpoint and figure goes through `write_atomically`: write a temporary file in the target's
directory, fsync it, then `os.replace` it over the target (every writer here puts a file on disk before its rename,
so not even a power loss leaves an empty file in place, or an index listing one). A folder of many files (a merged
checkpoint, a GenEval prompt folder) goes through `directory_atomically`: written into a temporary directory next to
the target, then renamed onto it, so a folder that exists is complete. Files that join a folder holding others (an
adapter beside its run's log and checkpoint) go through `files_atomically`, each renamed into place; files listed by
an index (a dataset's images and its samples.jsonl) through `indexed_files_atomically`, the index last. Kept free of
torch so light modules can use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from unigap.errors import STORAGE_REFUSED, UserError, first_line

FILE_MODE = 0o644  # mkstemp creates private (0600) files; results are meant to be shared


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's name and bytes (of every file of a folder, such as a `datasets` save_to_disk one, in name
    order): what a run read, so that a resumed run can tell it is still the same. The name counts (a renamed copy is
    another input), and stays counted: merged checkpoints and runs in progress carry these hashes."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def check_creatable(path: str | os.PathLike) -> Path:
    """`UserError` unless `path` can be created: its nearest existing ancestor must be a writable directory, and the
    path itself, where it exists, a file or a (writable) directory (an atomic rename would replace a device or a
    pipe). A folder on the way that cannot be searched is one too (Python 3.11's `exists` raises there)."""
    path = Path(path)
    try:
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise UserError(f"output path {path} exists and is neither a file nor a directory")
        blocking = next((p for p in path.parents if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise UserError(f"cannot create {path}: {blocking} is a file")
        for directory in (blocking, path if path.is_dir() else None):
            if directory is not None and not _writable(directory):
                raise UserError(f"cannot write {path}: {directory} is not writable")
    except PermissionError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror} ({exc.filename or path})") from None
    return path


# the most bytes a writer adds to a file's name for a temporary: an indexed folder's pending list, ".NAME.pending.tmp",
# written atomically (as "..NAME.pending.tmp.XXXXXXXX.tmp"); `write_atomically`'s own ".NAME.XXXXXXXX.tmp" adds 14
TEMPORARY_EXTRA = len("..") + len(".pending.tmp") + len(".12345678.tmp")


def check_name_fits(path: str | os.PathLike) -> None:
    """`UserError` where the name of a file to write fits the file system but not with the temporaries it is written
    through: the write would fail at the end of a run, its work lost (a longer name fails `check_creatable`)."""
    path = Path(path)
    existing = next((p for p in path.parents if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(path.name)) + TEMPORARY_EXTRA > limit:
        raise UserError(f"cannot create {path.name[:40]}… ({len(os.fsencode(path.name))} bytes): at most "
                        f"{limit - TEMPORARY_EXTRA} bytes fit in the name of a file written here (with the temporaries "
                        f"it is written through)")


PROBE_PREFIX = ".unigap-probe-"  # `_writable`'s trial entry, there for an instant (another process may see it)


def _writable(directory: Path) -> bool:
    """Whether an entry can be made in `directory`, tried (and undone): permissions alone miss a read-only mount,
    /proc, or root, whom they do not stop."""
    try:
        probe = tempfile.mkdtemp(dir=directory, prefix=PROBE_PREFIX)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary path)` next to `path` (its directory created if missing), then flush the result to disk
    and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        _on_disk(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _on_disk(file: Path) -> None:
    """fsync `file`: a file about to replace another (or to be listed by an index written after it) must be whole on
    disk before the rename, or a power loss can leave an empty file where the old one was. A kill alone loses
    nothing written; this is for the machine going down."""
    with file.open("rb") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object], sole: bool = False) -> None:
    """Call `write(handle)` on a binary file that replaces `path` atomically. `sole`: this process is the only writer
    of `path` (a checkpoint), so the temporaries a killed earlier write of it left (a checkpoint's size each, never
    removed by a kill) are deleted first."""
    def written(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            write(handle)

    if sole:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
    write_atomically(path, written)


def atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    """Replace a text file by `lines` (each without its newline), atomically."""
    write_text_atomically(path, "".join(line + "\n" for line in lines))


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8, newlines as given) into `path`, atomically."""
    atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode("utf-8")))
    return Path(path)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """`value` as indented JSON into `path`, atomically; NaN or infinity is refused (it is not JSON, and other
    readers than Python's reject the file)."""
    return write_text_atomically(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file, or a `UserError` naming it (a damaged or unreadable one is not a traceback)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:  # (JSON and UTF-8 decoding errors are ValueErrors)
        raise UserError(f"cannot read {path}: {first_line(exc)}") from None


def cached_json(path: str | os.PathLike, make: Callable[[], Any], write: bool = True) -> Any:
    """A resumable job's stage: the JSON in `path` when it exists, else `make()`, written there atomically (unless
    `write` is False: a data-parallel process other than the one that writes)."""
    path = Path(path)
    if path.is_file():
        return read_json(path)
    value = make()
    if write:
        write_json(path, value)
    return value


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable `key: saved → current` for every setting that differs (a missing one shown as absent, so that
    it is not mistaken for a saved null)."""
    def shown(settings: dict[str, Any], key: str) -> str:
        return json.dumps(settings[key]) if key in settings else "(absent)"

    return [f"{k}: {shown(saved, k)} → {shown(current, k)}" for k in sorted(set(saved) | set(current))
            if k not in saved or k not in current or saved[k] != current[k]]


PATH_WORDS = "unigap_path_words"  # (the metadata key)


def path_setting(words: Collection[str] = ()) -> dict[str, Any]:
    """A config field's `metadata`: its value may name a file or folder (or a judge's `kind:DIR`), which a resumed
    run may spell otherwise (`./p`, `p`, its absolute path); `words` are values that name no path (a split, `tiny`)."""
    return {PATH_WORDS: tuple(words)}


def path_settings(config: Any) -> dict[str, tuple[str, ...]]:
    """The fields of the dataclass (or instance) `config` marked with `path_setting`, with their words."""
    return {f.name: f.metadata[PATH_WORDS] for f in dataclasses.fields(config) if PATH_WORDS in f.metadata}


def _same_path(a: Any, b: Any, words: Collection[str]) -> bool:
    """Whether `a` and `b` spell one existing file or folder (after the same `kind:` prefix, if any)."""
    if not (isinstance(a, str) and isinstance(b, str)) or a in words or b in words:
        return False
    (kind_a, _, path_a), (kind_b, _, path_b) = (v.rpartition(":") for v in (a, b))
    try:
        return kind_a == kind_b and os.path.samefile(path_a, path_b)
    except OSError:  # (one of them is gone, or names nothing)
        return False


def differences_since(saved: dict[str, Any], settings: dict[str, Any], defaults: dict[str, Any],
                      paths: dict[str, Collection[str]] | None = None) -> list[str]:
    """`config_differences`, where a setting absent from the saved ones (added since they were written) counts as
    equal when it is at its value in `defaults`, and one of `paths` (`path_settings`) as equal where both spell the
    same file or folder."""
    added = {k for k, v in settings.items() if k not in saved and k in defaults and defaults[k] == v}
    spelled = {k for k, words in (paths or {}).items()
               if k in saved and k in settings and _same_path(saved[k], settings[k], words)}
    return config_differences(saved, {k: saved[k] if k in spelled else v for k, v in settings.items()
                                      if k not in added})


def claim_settings(path: str | os.PathLike, settings: dict[str, Any], what: str,
                   defaults: dict[str, Any] | None = None, write: bool = True, kind: str = "settings",
                   free: tuple[str, ...] = (), paths: dict[str, Collection[str]] | None = None) -> None:
    """Write a run's settings to `path` (unless `write` is False: a data-parallel process other than the one that
    writes), or refuse (`UserError` naming each difference) to continue a `what` run made under others, since its
    finished parts are only reusable under what produced them. A setting absent from the saved ones (added since)
    counts as equal when it has its value in `defaults`; a saved one that `settings` no longer has (removed since, or
    one the caller leaves free to change) is not compared, and is kept: a refused or other command into the same
    directory must not erase what its run recorded. The `free` ones are not compared and are written all the same;
    `paths` (`path_settings`) may be spelled otherwise."""
    path = Path(path)
    saved: dict[str, Any] = {}
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"--out {path.parent} is a file, not a directory")
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # (JSON and UTF-8 decoding errors are ValueErrors)
            raise UserError(f"cannot read {path}: {exc}") from None
        if not isinstance(saved, dict):
            raise UserError(f"cannot read {path}: it holds no JSON object; move it away or choose a new --out")
        compared = {k: v for k, v in settings.items() if k not in free}
        changed = differences_since({k: v for k, v in saved.items() if k in compared}, compared, defaults or {}, paths)
        if changed:
            raise UserError(f"{path.parent} holds a {what} run under other {kind} ({'; '.join(changed)}); rerun "
                            "with the same ones to resume it, or choose a new --out")
    if write:  # (again on a resume: a setting added since is recorded)
        write_text_atomically(path, json.dumps(saved | settings, indent=2) + "\n")


DIR_MODE = 0o755  # mkdtemp (and some writers' temporary files) are private; outputs are meant to be shared
TMP_SUFFIX = ".tmp"


@contextmanager
def directory_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to `path` (its parent created if missing); when the block ends
    without an error it becomes `path`, else it is removed. `UserError` when `path` is a non-empty directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}{TMP_SUFFIX}"):  # (a writer killed outright
        shutil.rmtree(stale, ignore_errors=True)  # left its own: a merged checkpoint's worth, at each kill)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        yield tmp
        for entry in [tmp, *tmp.rglob("*")]:
            if entry.is_file():
                _on_disk(entry)
            os.chmod(entry, DIR_MODE if entry.is_dir() else FILE_MODE)
        try:
            os.replace(tmp, path)
        except OSError as exc:  # a file, or a directory that filled up meanwhile (a refusing file system: passed on)
            if exc.errno in STORAGE_REFUSED:
                raise
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


FILES_PREFIX = ".files."  # `files_atomically`'s staging folder


@contextmanager
def files_atomically(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory inside `directory` (created if missing); when the block ends without an
    error, each file written there (subfolders kept) is fsynced and renamed over its namesake in `directory`. Each
    file is atomic, the set is not: a reader never meets a half-written file, and a kill between two renames leaves
    some new files beside old ones. Files of `directory` not written in the block stay."""
    directory = Path(directory)
    with _staging(directory) as tmp:
        yield tmp
        files = _staged(tmp)
        _check_targets(directory, tmp, files)
        for path in files:
            _on_disk(path)
        _move_into(directory, tmp, files)


@contextmanager
def _staging(directory: Path, tag: str = "") -> Iterator[Path]:
    """A temporary directory in `directory` (made with its parents where missing: those left empty are removed with
    it), removed at the end; those an earlier writer of the same `tag` left when killed outright go first (a tag
    keeps apart the writers that share a folder, such as two data files: the stale ones are matched by mkdtemp's 8
    random characters exactly, so no tag's pattern reaches a longer tag's folders)."""
    prefix = f"{FILES_PREFIX}{tag}"
    made = [folder for folder in (directory, *directory.parents) if not folder.exists()]  # (deepest first)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f"{glob.escape(prefix)}{'?' * 8}{TMP_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=prefix, suffix=TMP_SUFFIX))
    except OSError as exc:  # a file where the directory should be, or no permission
        raise UserError(f"cannot write {directory}: {exc.strerror or exc}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # an interrupted first write leaves no empty folders of its own behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # (only where empty)


def _staged(tmp: Path) -> list[Path]:
    return sorted(p for p in tmp.rglob("*") if p.is_file())


def _check_targets(directory: Path, tmp: Path, files: Iterable[Path]) -> None:
    """Raise before anything is replaced where a staged file could not be renamed into place: a directory at its
    name, or a file where one of its folders goes (the OSError a rename would raise halfway through the set)."""
    for path in files:
        target = directory / path.relative_to(tmp)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        if any(p.exists() and not p.is_dir() for p in target.parents if p.is_relative_to(directory)):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))


def _move_into(directory: Path, tmp: Path, files: list[Path]) -> None:
    """Rename each staged file (its target checked: `_check_targets`, put on disk: `_on_disk`) over its namesake in
    `directory`."""
    for path in files:
        os.chmod(path, FILE_MODE)
    for path in files:
        target = directory / path.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _pending(directory: Path, index: str) -> Path:
    """Where `indexed_files_atomically` lists, while it swaps a set, every file of the set it replaces and of the new
    one: what a kill during the swap may leave that no index lists."""
    return directory / f".{index}.pending{TMP_SUFFIX}"


def has_index(directory: str | os.PathLike, index: str) -> bool:
    """Whether `directory` holds a set `indexed_files_atomically` wrote under `index` (its last index), or was
    swapping when killed."""
    return (Path(directory) / index).is_file() or _pending(Path(directory), index).is_file()


@contextmanager
def indexed_files_atomically(directory: str | os.PathLike, indexes: dict[str, Collection[str]],
                             inside: str | os.PathLike | None = None, named: str | None = None) -> Iterator[Path]:
    """`files_atomically` for a set of files listed by index files (`indexes`: each index's name in `directory` and
    the columns naming its files, relative to `directory`): write the files and the new indexes into the yielded
    folder (the last index always: it marks the set complete). When the block ends, every rename is checked first;
    then every file the old set and the new one name is listed in a hidden file, the old indexes removed (the last
    one first), the files renamed into place, the new indexes written in the order given, and the files an old
    index listed that no new one lists removed (`remove_replaced`, within `inside` and `named`). An interrupted
    rerun thus leaves the earlier set whole, and no index ever lists another run's files under its own rows; a kill
    during the swap leaves no index but the hidden list, from which the next run removes what it does not list."""
    directory = Path(directory)
    for name in indexes:  # before the work, where it can be seen
        _check_targets(directory, directory, [directory / name])
    *_, last = indexes
    pending = _pending(directory, last)

    def listed() -> set[str]:
        return set().union(*(listed_files(directory / name, columns) for name, columns in indexes.items()))

    earlier = listed() | listed_files(pending, ["file"])
    with _staging(directory, tag=f"{next(iter(indexes))}.") as tmp:
        yield tmp
        if not (tmp / last).is_file():  # (unigap's own bug, or another process emptied the staging folder)
            raise RuntimeError(f"{tmp} holds no {last}: nothing was replaced")
        files = _staged(tmp)
        _check_targets(directory, tmp, files)
        for path in files:  # before the old indexes go: the window a kill leaves no index in is renames only
            _on_disk(path)
        new = {p.relative_to(tmp).as_posix(): p for p in files}
        listing = sorted(earlier | (set(new) - set(indexes)))
        atomic_write_lines(pending, [json.dumps({"file": name}) for name in listing])
        for name in reversed(indexes):  # the completeness mark goes first
            (directory / name).unlink(missing_ok=True)
        _move_into(directory, tmp, [p for name, p in new.items() if name not in indexes])
        _move_into(directory, tmp, [tmp / name for name in indexes if (tmp / name).is_file()])
    remove_replaced(directory, earlier, listed(), inside=inside, named=named)
    pending.unlink()


def entries(directory: str | os.PathLike) -> list[str]:
    """The names in `directory` (none where it is not a directory), less unigap's own transient ones: a writer's
    temporaries (`*.tmp`, left behind only by a kill) and another process's instant write test."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [e.name for e in directory.iterdir()
            if not e.name.startswith(PROBE_PREFIX) and not (e.name.startswith(".") and e.name.endswith(TMP_SUFFIX))]


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary directories a killed writer left in `directory` (for a resumed job)."""
    for stale in Path(directory).glob(f".*{TMP_SUFFIX}"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def listed_files(index: str | os.PathLike, columns: Collection[str]) -> set[str]:
    """The file names an index file (JSONL) lists in `columns` (a string or a list of strings per cell), relative
    to its folder; an unreadable index or line lists nothing. What an earlier run wrote, for `remove_replaced`."""
    try:
        lines = Path(index).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return files_in(rows, columns)


def files_in(rows: Iterable[Any], columns: Collection[str]) -> set[str]:
    """The file names rows list in `columns` (a string or a list of strings per cell): `listed_files` of rows
    still in memory."""
    names: set[str] = set()
    for row in rows:
        for column in columns if isinstance(row, dict) else ():
            cell = row.get(column)
            names.update(v for v in (cell if isinstance(cell, list) else [cell]) if isinstance(v, str))
    return names


def remove_replaced(directory: str | os.PathLike, before: Collection[str], after: Collection[str],
                    inside: str | os.PathLike | None = None, named: str | None = None) -> None:
    """Delete the files an earlier run's index listed (`before`, relative to `directory`) that this run's index
    no longer lists (`after`): a rerun with fewer items would otherwise leave the earlier run's files passing for
    this run's. Only files within `inside` (default `directory`), the folder the command owns, and named as the
    command names its files (`named`, a regular expression), are touched, so an index that was a user's own file
    costs no file of theirs. Call it once the new index is in place."""
    root = Path(directory).resolve()
    owned = Path(inside).resolve() if inside is not None else root
    for name in set(before) - set(after):
        path = (root / name).resolve()
        if named is not None and not re.fullmatch(named, path.name):
            continue
        if path.is_relative_to(owned) and path != owned and path.is_file():
            path.unlink()
