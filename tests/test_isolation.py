"""isolation.py's claims, checked from inside each level's sandbox."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from ouroboros import isolation, sandbox
from ouroboros.errors import OuroborosError
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import commit_all

needs_bwrap = pytest.mark.skipif(not isolation.available("bwrap"), reason="bubblewrap missing or refused here")
needs_unshare = pytest.mark.skipif(not isolation.available("unshare"), reason="unshare missing or refused here")
# the claims both namespace levels make about the run's view of the filesystem
VIEWS = pytest.mark.parametrize("level", [pytest.param("bwrap", marks=needs_bwrap),
                                          pytest.param("unshare", marks=needs_unshare)])


def _loop(repo: Path, bound: str = "") -> Loop:
    if bound:
        toml = repo / "ouroboros.toml"
        toml.write_text(toml.read_text() + "\n[bound]\n" + bound + "\n")
        commit_all(repo, "bound")
    return Loop(load_task(repo), Options(agent="random", max_experiments=1, tag="iso"))


def _sh(loop: Loop, script: str, phase: str = "run", writable: list[Path] | None = None) -> tuple[int, str]:
    argv, level = loop.isolation.wrap(["bash", "-c", script], phase, writable)
    log = loop.records / f"iso-{uuid.uuid4().hex[:6]}.log"
    outcome = sandbox.run(argv, loop.ws.task_dir, 20, 1, log, env=sandbox.scrubbed_env(), isolation=level,
                          overhead=loop.isolation.overhead)
    return outcome.returncode or 0, log.read_text()


def test_auto_falls_back_from_bwrap_to_unshare_to_process(quadratic, monkeypatch):
    task = load_task(quadratic)
    for missing, expected in [((), "bwrap"), (("bwrap",), "unshare"), (("bwrap", "unshare"), "process")]:
        monkeypatch.setattr(isolation, "available", lambda level, m=missing: level not in m)
        assert isolation.choose(task, quadratic, quadratic / ".ouroboros").level == expected


def test_a_level_that_does_not_work_here_is_an_error(quadratic, monkeypatch):
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "bwrap"\n')
    monkeypatch.setattr(isolation, "available", lambda level: level == "process")
    with pytest.raises(OuroborosError, match="bubblewrap"):
        isolation.choose(load_task(quadratic), quadratic, quadratic / ".ouroboros")


def test_every_experiment_records_its_isolation(quadratic):
    loop = _loop(quadratic)
    loop.run()
    assert {e.isolation for e in loop.history} == {loop.isolation.level}
    assert loop.isolation.level == next(lv for lv in isolation.LEVELS if isolation.available(lv))


@VIEWS
def test_the_records_and_the_checkout_are_hidden(quadratic, level):
    loop = _loop(quadratic, f'isolation = "{level}"')
    assert loop.isolation.level == level
    loop.ledger.write_tsv(loop.tag)
    rc, out = _sh(loop, f"ls {loop.records}/ledger.sqlite; cat {quadratic}/evaluate.py; "
                        f"touch {quadratic}/planted; touch {loop.records}/planted; "
                        f"ls {loop.records}/runs/iso/results.tsv")
    assert "No such file" in out and "Read-only file system" in out and "def objective" not in out
    assert not (quadratic / "planted").exists() and not (loop.records / "planted").exists()


@VIEWS
def test_the_worktree_stays_writable_and_python_working(quadratic, level):
    loop = _loop(quadratic, f'isolation = "{level}"')
    rc, out = _sh(loop, "echo ok > made.txt && python -c 'import json, psutil; print(open(\"made.txt\").read())'")
    assert rc == 0 and "ok" in out
    assert (loop.ws.task_dir / "made.txt").read_text() == "ok\n"


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only a harness running as root drops to nobody")


@needs_bwrap
@needs_root
def test_under_a_root_harness_bwrap_runs_as_nobody_and_still_writes_its_worktree(quadratic, tmp_path):
    loop = _loop(quadratic)
    rc, out = _sh(loop, "id -u; id -g; echo 1 > made.txt && echo '# x' >> train.py && echo wrote; "
                        "echo 2 > $HOME/h && echo home-ok; echo 3 > /tmp/t && echo tmp-ok; "
                        "cat /etc/shadow 2>/dev/null | head -c 5; echo; echo 4 > /etc/planted || echo etc-refused")
    assert out.split()[:2] == [str(isolation.NOBODY)] * 2, out
    assert "wrote" in out and "home-ok" in out and "tmp-ok" in out and "etc-refused" in out, out
    assert "root:" not in out
    metrics = tmp_path / "metrics"
    metrics.mkdir(mode=0o700)  # like the evaluation's folder: made by the harness, private to root
    rc, out = _sh(loop, f"echo 1 > {metrics}/m.json && echo eval-ok", "evaluate", [metrics])
    assert "eval-ok" in out and (metrics / "m.json").read_text() == "1\n"
    # the harness (root) keeps using git on the worktree the run wrote into
    status = subprocess.run(["git", "status", "--porcelain"], cwd=loop.ws.task_dir, capture_output=True, text=True)
    assert status.returncode == 0 and "made.txt" in status.stdout and "train.py" in status.stdout, status.stderr


@needs_bwrap
@needs_root
def test_under_a_root_harness_a_repository_and_python_in_closed_folders_still_work(tmp_path, monkeypatch):
    import shutil

    from ouroboros.scaffold import from_template

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # so /root, where this machine's Python may live, is no mask
    (tmp_path / "home").mkdir()
    top = Path("/var/tmp") / f"ouroboros-{uuid.uuid4().hex}"
    try:
        (top / "locked").mkdir(parents=True)
        (top / "locked").chmod(0o700)  # like /root: nobody cannot cross it
        task = from_template(top / "locked" / "task", "quadratic")
        loop = _loop(task)
        rc, out = _sh(loop, "id -u; python -c 'import json; print(\"py-ok\")' && echo 1 > made.txt && echo made")
        assert rc == 0 and "py-ok" in out and "made" in out, out
        assert (loop.ws.task_dir / "made.txt").exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@VIEWS
def test_the_root_is_read_only_outside_the_worktree(quadratic, level):
    loop = _loop(quadratic, f'isolation = "{level}"')
    target = Path("/var/tmp") / f"ouroboros-{uuid.uuid4().hex}"
    rc, out = _sh(loop, f"touch {target}")
    assert rc != 0 and not target.exists()


@VIEWS
def test_hidden_data_is_masked_from_the_run_only(quadratic, tmp_path, level):
    (quadratic / "data").mkdir()
    (quadratic / "data" / "answer.json").write_text("42\n")
    loop = _loop(quadratic, f'hidden = ["data/answer.json"]\nisolation = "{level}"')
    rc, out = _sh(loop, "echo run:$(cat data/answer.json)")
    assert "run:\n" in out
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    rc, out = _sh(loop, f"echo eval:$(cat data/answer.json); echo 1 > {metrics}/m.json", "evaluate", [metrics])
    assert "eval:42" in out and (metrics / "m.json").exists()


@VIEWS
def test_a_relative_read_only_folder_of_the_checkout_shows_its_data_but_not_the_hidden_files(quadratic, tmp_path,
                                                                                              monkeypatch, level):
    (quadratic / "data").mkdir()
    (quadratic / "data" / "answer.json").write_text("42\n")
    (quadratic / "data" / "train.txt").write_text("seen\n")
    monkeypatch.chdir(tmp_path)  # relative paths are the task folder's, not the harness's cwd
    loop = _loop(quadratic, f'hidden = ["data/answer.json"]\nread_only = ["data"]\nisolation = "{level}"')
    assert loop.task.read_only_paths == [(quadratic / "data").resolve()]
    rc, out = _sh(loop, f"echo run:$(cat {quadratic}/data/train.txt):$(cat {quadratic}/data/answer.json):")
    assert "run:seen::" in out
    rc, out = _sh(loop, f"echo agent:$(cat {quadratic}/data/answer.json):", "agent")
    assert "agent::" in out


@pytest.mark.parametrize("inside", [".git/objects", ".ouroboros"])
def test_a_read_only_path_inside_the_git_dir_or_the_records_is_refused(quadratic, inside):
    (quadratic / ".ouroboros").mkdir(exist_ok=True)
    with pytest.raises(OuroborosError, match=r"read_only path .* is inside .*remove it from ouroboros.toml"):
        _loop(quadratic, f'read_only = ["{inside}"]')


@VIEWS
def test_home_and_the_harness_are_hidden(quadratic, tmp_path, monkeypatch, level):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine x password hunter2\n")
    monkeypatch.setenv("HOME", str(home))
    loop = _loop(quadratic, f'isolation = "{level}"')
    rc, out = _sh(loop, f"cat ~/.netrc; kill -0 {os.getpid()} 2>/dev/null && echo visible-$((6 * 7))")
    assert "hunter2" not in out and "visible-42" not in out


@VIEWS
def test_the_chain_key_and_the_hosts_tmp_are_out_of_reach(quadratic, tmp_path, monkeypatch, level):
    from ouroboros import chain

    config = Path("/var/tmp") / f"ouroboros-config-{uuid.uuid4().hex}"  # outside $HOME and /tmp: masked on its own
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    try:
        key = chain.key()
        loop = _loop(quadratic, f'isolation = "{level}"')
        mark = Path("/tmp") / f"ouroboros-mark-{uuid.uuid4().hex}"
        mark.write_text("host")
        rc, out = _sh(loop, f"od -An -tx1 {chain.config_dir() / chain.KEY_FILE} | tr -d ' \\n'; echo; "
                            f"cat {mark}; echo run > {mark}.2; ls {config}/ouroboros | wc -l")
        assert key.hex() not in out.replace("\n", ""), out
        assert "host" not in out and not Path(f"{mark}.2").exists(), out
    finally:
        import shutil

        shutil.rmtree(config, ignore_errors=True)
        for p in Path("/tmp").glob("ouroboros-mark-*"):
            p.unlink()


def _server() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.5)
    return srv


@pytest.mark.parametrize("level", [pytest.param("bwrap", marks=needs_bwrap),
                                   pytest.param("unshare", marks=needs_unshare)])
def test_no_network_unless_the_task_allows_it(quadratic, level):
    srv = _server()
    port = srv.getsockname()[1]
    loop = _loop(quadratic, f'isolation = "{level}"')
    probe = f"python -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=2)' && echo connected"
    rc, out = _sh(loop, probe)
    assert rc != 0 and "connected" not in out
    with pytest.raises(TimeoutError):
        srv.accept()
    srv.close()


@needs_bwrap
def test_network_true_shares_the_network(tmp_path):
    from ouroboros.scaffold import from_template

    repo = from_template(tmp_path / "q", "quadratic")
    srv = _server()
    loop = _loop(repo, "network = true")
    rc, out = _sh(loop, f"python -c 'import socket; socket.create_connection((\"127.0.0.1\", "
                        f"{srv.getsockname()[1]}), timeout=2)' && echo connected")
    assert "connected" in out
    srv.close()


@VIEWS
def test_network_true_keeps_a_resolv_conf_that_lies_under_the_masked_run(quadratic, monkeypatch, level):
    """systemd-resolved's and NetworkManager's /etc/resolv.conf lead into /run, which both levels mask."""
    folder = Path("/run") / f"ouroboros-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError:
        pytest.skip("/run is not writable here")
    try:
        (folder / "resolv.conf").write_text("nameserver 192.0.2.53\n")
        (folder / "other").write_text("host socket\n")
        monkeypatch.setattr(isolation, "_resolver", lambda: folder / "resolv.conf")
        loop = _loop(quadratic, f'network = true\nisolation = "{level}"')
        rc, out = _sh(loop, f"cat {folder}/resolv.conf; ls {folder}")
        loop.ledger.close()
        assert rc == 0, out
        assert "nameserver 192.0.2.53" in out
        assert "other" not in out  # the rest of /run stays masked
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


@VIEWS
def test_a_path_entry_through_a_link_in_the_masked_run_still_finds_its_programs(quadratic, monkeypatch, tmp_path,
                                                                                level):
    """NixOS puts /run/current-system/sw/bin on PATH: a link in /run, which both levels mask, to the system."""
    system = Path("/opt") / f"ouroboros-test-system-{uuid.uuid4().hex[:8]}"
    link = Path("/run") / f"ouroboros-test-current-{uuid.uuid4().hex[:8]}"
    try:
        (system / "sw" / "bin").mkdir(parents=True)
        link.symlink_to(system)
    except OSError:
        pytest.skip("/opt or /run is not writable here")
    try:
        tool = system / "sw" / "bin" / "ouroboros-hello"
        tool.write_text("#!/bin/sh\necho hello from the system profile\n")
        tool.chmod(0o755)
        monkeypatch.setenv("PATH", f"{link}/sw/bin:{os.environ['PATH']}")
        loop = _loop(quadratic, f'isolation = "{level}"')
        rc, out = _sh(loop, "ouroboros-hello; ls /run")
        loop.ledger.close()
        assert rc == 0 and "hello from the system profile" in out, out
        assert link.name in out.split()  # made again in the empty /run
    finally:
        link.unlink()
        tool.unlink()
        for d in (system / "sw" / "bin", system / "sw", system):
            d.rmdir()


@pytest.mark.parametrize("level", [pytest.param("bwrap", marks=needs_bwrap),
                                   pytest.param("unshare", marks=needs_unshare), "process"])
def test_a_daemon_dies_with_the_run_and_fails_it(quadratic, level):
    marker = f"d-{uuid.uuid4().hex[:8]}"
    loop = _loop(quadratic, f'isolation = "{level}"')
    argv, lv = loop.isolation.wrap(["bash", "-c", f"setsid bash -c 'exec -a {marker} sleep 30' & sleep 0.3; echo started"],
                                   "run")
    outcome = sandbox.run(argv, loop.ws.task_dir, 10, 1, loop.records / "d.log", env=sandbox.scrubbed_env(),
                          isolation=lv, overhead=loop.isolation.overhead)
    assert not outcome.ok and "left 1 process" in (outcome.killed or "")
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []


@needs_unshare
def test_unshare_masks_the_ledger_key_from_the_run(quadratic):
    from ouroboros import chain

    secret = chain.key().hex()  # made in this test's own config folder (conftest), as a user's would be
    loop = _loop(quadratic, 'isolation = "unshare"')
    rc, out = _sh(loop, f"cat {chain.config_dir()}/{chain.KEY_FILE}; ls -a {chain.config_dir()}; echo ok > made.txt")
    assert secret not in out and "No such file" in out, out
    assert (loop.ws.task_dir / "made.txt").read_text() == "ok\n"  # the run itself works as before
    assert chain.key().hex() == secret  # the harness's key is untouched


@needs_unshare
def test_unshare_masks_a_key_folder_holding_the_records_and_the_run_still_works(quadratic, monkeypatch):
    from ouroboros import chain

    monkeypatch.setenv("OUROBOROS_CONFIG_DIR", str(quadratic.parent))  # holds the checkout, its records, the worktree
    secret = chain.key().hex()
    loop = _loop(quadratic, 'isolation = "unshare"')
    rc, out = _sh(loop, f"od -An -tx1 {chain.config_dir() / chain.KEY_FILE} | tr -d ' \\n'; echo; "
                        "echo ok > made.txt && echo wrote")
    assert rc == 0 and "wrote" in out, out
    assert secret not in out.replace("\n", ""), out


def test_bwrap_args_get_a_dir_before_each_mount_whose_parent_lies_inside_a_tmpfs() -> None:
    args = ["--ro-bind", "/", "/", "--size", "5", "--tmpfs", "/tmp", "--bind", "/tmp/a/b", "/tmp/a/b",
            "--ro-bind", "/tmp/c", "/tmp/c", "--perms", "0777", "--tmpfs", "/tmp/a/b/", "--bind", "/x/y", "/tmp/a/b/d",
            "--ro-bind", "/usr", "/usr", "--bind", "/tmp", "/tmp//e/", "--chdir", "/tmp/a", "--", "bash"]
    assert isolation._open_parents(args) == [
        "--ro-bind", "/", "/", "--size", "5", "--tmpfs", "/tmp",
        "--dir", "/tmp/a", "--bind", "/tmp/a/b", "/tmp/a/b",  # its parent inside /tmp: made 0755, not 0700
        "--ro-bind", "/tmp/c", "/tmp/c",  # its parent is the tmpfs itself
        "--dir", "/tmp/a", "--perms", "0777", "--tmpfs", "/tmp/a/b/",  # --perms stays right before its op
        "--bind", "/x/y", "/tmp/a/b/d",  # its parent is a tmpfs (written with a trailing slash)
        "--ro-bind", "/usr", "/usr",
        "--bind", "/tmp", "/tmp//e/",  # /tmp/e: its parent is /tmp
        "--chdir", "/tmp/a", "--", "bash"]
