"""Reading a file that something hostile may have written (an agent's notes or description, an
editable file a run may have replaced): a regular file only (a link is not followed, a FIFO or
device is not opened for reading), at most `cap` bytes, decoded as UTF-8 with bad bytes replaced.
None when there is no such regular file."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path


def read_regular(path: Path, cap: int = 1 << 20) -> str | None:
    data = read_regular_bytes(path, cap)
    return None if data is None else data.decode("utf-8", errors="replace")


def read_regular_bytes(path: Path, cap: int = 1 << 20, whole: bool = False) -> bytes | None:
    """The first `cap` bytes of a regular file; with whole=True, None for a file larger than `cap`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (whole and st.st_size > cap):
            return None
        chunks, left = [], cap
        while left > 0:
            data = os.read(fd, min(left, 1 << 16))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


MAX_DEPTH = 256  # folders nested deeper than this are not walked (walk) and count as over any disk cap (du)


class TooDeep(OSError):
    """A folder nested past MAX_DEPTH: no honest run makes one, and walking one would take a descriptor a level."""


def walk(root: Path, strict: bool = True, on_deep=None, max_bytes: int | None = None, on_special=None, visit=None):
    """(name relative to root, lstat) of every entry under root, folders before what they hold, links never
    followed, without recursion. Folders are opened by descriptor from their parent's, so no path grows
    with depth past PATH_MAX; only the folders on the way down are held open. A folder nested past
    MAX_DEPTH (or whose relative name is longer than max_bytes) is passed to on_deep(parent_fd, name,
    relative name) if given, else raises TooDeep (strict) or is skipped; it is not walked. An entry that is
    no file, folder or link goes to on_special(parent_fd, name) instead of the caller, if given. visit(parent_fd,
    name, relative name, lstat), if given, sees every entry first, before a folder is opened. An entry or folder
    that cannot be read raises OSError, or with strict=False is skipped."""
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        if strict:
            raise
        return
    stack = [(top, "", iter(sorted(os.listdir(top))))]
    try:
        while stack:
            fd, base, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            rel = f"{base}/{name}" if base else name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                if strict:
                    raise
                continue
            if visit is not None:
                visit(fd, name, rel, st)
            if on_special is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
                                               or stat.S_ISLNK(st.st_mode)):
                on_special(fd, name)
                continue
            yield rel, st
            if not stat.S_ISDIR(st.st_mode):
                continue
            if len(stack) >= MAX_DEPTH or (max_bytes is not None and len(os.fsencode(rel)) > max_bytes):
                if on_deep is not None:
                    on_deep(fd, name, rel)
                elif strict:
                    raise TooDeep(f"{rel[:200]}...: folders nested deeper than {MAX_DEPTH} levels")
                continue
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                stack.append((sub, rel, iter(sorted(os.listdir(sub)))))
            except OSError:
                if strict:
                    raise
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def reopen(root: Path | str) -> list[str]:
    """Give the harness back what an untrusted writer of the same uid (a non-root harness's agent or run) took
    off what it owns under root: u+rwx on folders, u+rw on files, root itself included. A folder of mode 000
    hides what it holds from git status and every walk; one the harness cannot enter stops git clean and
    the removal of the tree. Links are never followed; entries of another owner (a root harness's dropped
    run) are left; folders nested past MAX_DEPTH are not entered (the walkers count them as too deep).
    Nothing untrusted runs while this does. Returns the names (relative to root, "" for root) it opened again."""
    uid = os.geteuid()
    fixed: list[str] = []

    def fix(st: os.stat_result, name: str, fd: int | None, rel: str) -> None:
        need = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600 if stat.S_ISREG(st.st_mode) else 0
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == uid and need and mode & need != need:
            try:
                os.chmod(name, mode | need, dir_fd=fd)
                fixed.append(rel)
            except OSError:
                pass

    try:
        st = os.lstat(root)
    except OSError:
        return fixed
    fix(st, os.fspath(root), None, "")
    if stat.S_ISDIR(st.st_mode):  # each folder opened again before the walk enters it
        for _ in walk(root, strict=False, visit=lambda fd, name, rel, st: fix(st, name, fd, rel)):
            pass
    return fixed


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove the folder name under parent_fd and everything in it, however deep (GNU rm walks by
    descriptors; Python's own rmtree recurses and stops at the interpreter's recursion limit)."""
    subprocess.run(["rm", "-rf", "--", name], cwd=f"/proc/self/fd/{parent_fd}", pass_fds=(parent_fd,),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def clear(path: Path | str) -> None:
    """Remove whatever is at path (a folder however deep, a link itself), ignoring errors: shutil.rmtree in
    the process where it can (fast, descriptor-based), remove_path's GNU rm where the tree is deeper than
    Python's recursion limit (a tree the run, an agent or a candidate wrote: rmtree recurses)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except PermissionError:  # a folder its writer closed (mode 000): opened again, then removed
        reopen(path)
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except (RecursionError, OSError):
            remove_path(Path(path))
    except (RecursionError, OSError):
        reopen(path)
        remove_path(Path(path))


def remove_path(path: Path) -> None:
    """Remove whatever is at path, a link itself (never its target), a folder however deep."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        remove_tree(parent, path.name)
    finally:
        os.close(parent)
