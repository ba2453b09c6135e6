"""Level unshare's view of the filesystem, made by one process inside the new mount namespace.

    python -I -S mountview.py OP ARG... -- COMMAND...

Run by the harness's own interpreter (isolated, no site: nothing beside this file or in the environment
is imported) as the first process of `unshare --mount`: it does the mounts isolation.Unshare._view lists, in
order, with mount(2) itself, then execs COMMAND. One interpreter start instead of a `mount` process per
mount (some thirty of them a phase). Any operation that fails ends the phase with exit 97 and one line
naming it: the command never runs in a view weaker than the one asked for.

Operations (fixed arity):
    rbind SRC DST        bind SRC's tree at DST (recursive)
    bind SRC DST         bind SRC at DST, writable
    robind SRC DST       bind SRC at DST, then make that bind read-only
    tmpfs DST OPTS       a tmpfs at DST with mount options OPTS (size=...,mode=...)
    devtmpfs DST OPTS    the same, nosuid (a /dev of its own)
    mkdir PATH           make PATH and its missing parents
    file PATH            make an empty file at PATH (its missing parents too)
    node SRC DST         copy a device node, link or folder of them (`cp -a` for /dev)
    devpts DST           a fresh devpts instance
    mqueue DST           a fresh mqueue, where DST is a folder
    mask PATH            /dev/null bound over PATH where PATH is a regular file
    ro PATH              make the mount at PATH read-only (its other flags kept)
    sysfs DST            a fresh read-only sysfs at DST; where one cannot be made, an empty read-only tmpfs
                         over DST/fs/cgroup and DST made read-only
    detach PATH          unmount PATH lazily
    move SRC DST         move the mount at SRC to DST
    link TARGET PATH     a symbolic link at PATH to TARGET (its missing parents made)
    remove PATH          remove the file PATH
    cd PATH              enter PATH
"""

import ctypes
import os
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 32, 4096, 8192, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags, data=None):
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def read_only(path):
    """Remount the mount at path read-only, keeping the flags it has: a mount made outside this user namespace
    has them locked, and a remount that would drop one is refused."""
    have = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NODIRATIME, MS_NODIRATIME)):
        if have & st:
            flags |= ms
    if have & os.ST_NOATIME:
        flags |= MS_NOATIME
    elif have & os.ST_RELATIME:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    mount(None, path, None, flags)


def copy_node(src, dst):
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        for name in sorted(os.listdir(src)):
            copy_node(os.path.join(src, name), os.path.join(dst, name))
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(dst, st.st_mode, st.st_rdev)
    else:
        return
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


def make_file(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))


def link(target, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


def detach(path):
    if _libc.umount2(_b(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def mqueue(path):
    if os.path.isdir(path):
        mount("none", path, "mqueue", 0)


def mask(path):
    if os.path.isfile(path):
        mount("/dev/null", path, None, MS_BIND)


def sysfs(path):
    try:
        mount("none", path, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # a user namespace sharing the host's network cannot make one
        if os.path.isdir(os.path.join(path, "fs", "cgroup")):
            mount("none", os.path.join(path, "fs", "cgroup"), "tmpfs", MS_RDONLY, "size=1m,mode=755")
        read_only(path)


OPS = {
    "rbind": lambda src, dst: mount(src, dst, None, MS_BIND | MS_REC),
    "bind": lambda src, dst: mount(src, dst, None, MS_BIND),
    "robind": lambda src, dst: (mount(src, dst, None, MS_BIND), read_only(dst)),
    "tmpfs": lambda dst, opts: mount("none", dst, "tmpfs", 0, opts),
    "devtmpfs": lambda dst, opts: mount("none", dst, "tmpfs", MS_NOSUID, opts),
    "mkdir": lambda path: os.makedirs(path, exist_ok=True),
    "file": make_file,
    "node": copy_node,
    "devpts": lambda dst: mount("devpts", dst, "devpts", 0, "newinstance,ptmxmode=0666,mode=620"),
    "mqueue": mqueue,
    "mask": mask,
    "ro": read_only,
    "sysfs": sysfs,
    "detach": detach,
    "move": lambda src, dst: mount(src, dst, None, MS_MOVE),
    "link": link,
    "remove": os.unlink,
    "cd": os.chdir,
}
ARITY = {"rbind": 2, "bind": 2, "robind": 2, "tmpfs": 2, "devtmpfs": 2, "node": 2, "move": 2, "link": 2}


def main(argv):
    end = argv.index("--")
    ops, command = argv[:end], argv[end + 1:]
    i = 0
    while i < len(ops):
        name = ops[i]
        n = ARITY.get(name, 1)
        args = ops[i + 1:i + 1 + n]
        try:
            if name not in OPS or len(args) != n:
                raise ValueError(f"unknown operation {name!r} or too few arguments")
            OPS[name](*args)
        except (OSError, ValueError) as exc:
            print(f"[ouroboros] could not make the sandbox mounts (masks, read-only binds): {name} "
                  f"{' '.join(args)}: {exc}", flush=True)
            os._exit(97)
        i += 1 + n
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
