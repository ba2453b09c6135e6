"""Escapes from the sandbox that no single experiment's verdict shows: state carried in the cache,
a daemon that re-forks, the git dir of a task in a linked worktree, host sockets, and the agent's
own process. Each is tried at every level that claims to stop it and that works here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from ouroboros import cheats, isolation, sandbox
from ouroboros.loop import Loop, Options
from ouroboros.scaffold import from_template
from ouroboros.task import load_task
from ouroboros.testing import commit_all

WORKING = [lv for lv in isolation.LEVELS if isolation.available(lv)]
STRONG = [lv for lv in ("bwrap", "unshare") if isolation.available(lv)]


def _loop(root: Path, bound: str = "", agent: str = "random") -> Loop:
    if bound:
        toml = root / "ouroboros.toml"
        toml.write_text(toml.read_text() + "\n[bound]\n" + bound + "\n")
        commit_all(root, "bound")
    loop = Loop(load_task(root), Options(agent=agent, max_experiments=0, tag="esc", allow_weak_isolation=True))
    return loop


def _sh(loop: Loop, script: str, phase: str = "run") -> tuple[int, str]:
    argv, level = loop.isolation.wrap(["bash", "-c", script], phase)
    log = loop.ledger.run_dir(loop.tag) / f"sh-{uuid.uuid4().hex[:6]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = sandbox.run(argv, loop.ws.task_dir, 30, 1, log, env=loop.experiment_env({}), isolation=level,
                      overhead=loop.isolation.overhead)
    return out.returncode or 0, log.read_text()


@pytest.mark.parametrize("level", [*STRONG, "process"])
def test_a_reforking_daemon_is_killed_at_every_level(level, tmp_path):
    result = cheats.run_attack(cheats.BY_NAME["reforking-daemon"], tmp_path / "attack", isolation=level)
    assert result.verdict in cheats.FAILED, result.reason
    assert "left" in result.reason and "process" in result.reason
    assert result.leftovers == [] and result.effects == []


@pytest.mark.parametrize("level", STRONG)
def test_the_cache_is_read_only_to_run_and_evaluate(level, tmp_path, monkeypatch):
    result = cheats.run_attack(cheats.BY_NAME["cache-carry"], tmp_path / "attack", isolation=level)
    assert result.verdict == "crash" and result.effects == []
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("OUROBOROS_CACHE", str(cache))
    loop = _loop(from_template(tmp_path / "q", "quadratic"), f'isolation = "{level}"')
    for phase in ("run", "evaluate"):
        rc, log = _sh(loop, f'cat {cache}/../cache >/dev/null 2>&1; echo carried > "$OUROBOROS_CACHE/{phase}"; '
                            f'echo "r""c=$?"', phase)
        assert "rc=0" not in log, log
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("level", STRONG)
def test_read_only_paths_are_visible_and_unwritable_even_under_a_private_home(level, tmp_path, monkeypatch):
    home = tmp_path / "home"
    data = home / ".cache" / "autoresearch"
    data.mkdir(parents=True)
    (data / "tokenizer.pkl").write_text("tokens")
    monkeypatch.setenv("HOME", str(home))
    loop = _loop(from_template(tmp_path / "q", "quadratic"),
                 f'isolation = "{level}"\nread_only = ["~/.cache/autoresearch"]')
    assert load_task(loop.task.root).read_only_paths == [data.resolve()]
    rc, log = _sh(loop, f'cat {data}/tokenizer.pkl; echo; echo x > {data}/tokenizer.pkl && echo "WR""OTE"')
    assert "tokens" in log and "WROTE" not in log
    assert (data / "tokenizer.pkl").read_text() == "tokens"


@pytest.mark.parametrize("level", STRONG)
def test_the_git_dir_of_a_task_in_a_linked_worktree_is_masked(level, tmp_path):
    main = from_template(tmp_path / "main", "quadratic")
    linked = tmp_path / "linked"
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", str(linked)], check=True)
    common = main / ".git"
    assert not str(common).startswith(str(linked))  # the common dir lies outside the task's repo folder
    loop = _loop(linked, f'isolation = "{level}"')
    rc, log = _sh(loop, f'ls {common}/config && echo "SE""EN"; echo x > {common}/hooks/post-checkout && echo "PLA""NTED"')
    assert "SEEN" not in log and "PLANTED" not in log, log
    assert not (common / "hooks" / "post-checkout").exists()


@pytest.mark.skipif(not STRONG, reason="needs bwrap or unshare")
@pytest.mark.skipif(not os.access("/run", os.W_OK), reason="/run is not writable here, so no socket can be put there")
@pytest.mark.parametrize("level", STRONG)
def test_host_sockets_are_out_of_reach(level, tmp_path):
    path = f"/run/ouroboros-test-{uuid.uuid4().hex[:8]}.sock"
    abstract = f"\0ouroboros-test-{uuid.uuid4().hex[:8]}"
    servers = []
    for addr in (path, abstract):
        s = socket.socket(socket.AF_UNIX)
        s.bind(addr)
        s.listen(1)
        servers.append(s)
    try:
        loop = _loop(from_template(tmp_path / "q", "quadratic"), f'isolation = "{level}"')
        probe = (f"import socket\nfor a in {(path, abstract)!r}:\n    s = socket.socket(socket.AF_UNIX)\n"
                 "    try:\n        s.connect(a); print('CONNECTED', repr(a))\n"
                 "    except OSError as e:\n        print('refused', e)\n")
        rc, log = _sh(loop, f"{sys.executable} -c {_q(probe)}")
        assert "refused" in log and "CONNECTED" not in log, log
    finally:
        for s in servers:
            s.close()
        os.unlink(path)


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


@pytest.mark.skipif(not isolation.available("bwrap"), reason="bubblewrap missing or refused here")
def test_a_cmd_agent_runs_confined_with_its_key(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text("private")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-agent-key")
    root = from_template(tmp_path / "q", "quadratic")
    script = tmp_path / "agent.py"
    script.write_text(
        "import os, re\n"
        "probes = " + repr({"ledger": str(root / ".ouroboros" / "ledger.sqlite"), "home": str(home / "secret.txt"),
                            "checkout": str(root / "train.py")}) + "\n"
        "seen = []\n"
        "for name, path in probes.items():\n"
        "    try:\n"
        "        if name == 'checkout':\n"
        "            open(path, 'a').close()\n"
        "        elif not open(path, 'rb').read():\n"
        "            continue\n"
        "        seen.append(name)\n"
        "    except OSError:\n"
        "        pass\n"
        "s = open('train.py').read()\n"
        "open('train.py', 'w').write(re.sub(r'^STEPS = \\d+', 'STEPS = 201', s, flags=re.M))\n"
        "key = 'key' if os.environ.get('OPENAI_API_KEY') == 'sk-agent-key' else 'nokey'\n"
        "open(os.environ['OUROBOROS_DESCRIPTION'], 'w').write(key + ' reached:' + ','.join(seen) + '\\n')\n")
    loop = Loop(load_task(root), Options(agent=f"cmd:{sys.executable} {script}", max_experiments=1, tag="conf"))
    loop.run()
    exp = loop.history[-1]
    assert exp.description == "key reached:", exp.description  # its key, and nothing it may not touch
    assert exp.status in ("keep", "discard")  # the worktree edit went through
    assert loop.run_rec.config["agent_confined"] is True
    assert (root / "train.py").read_text().count("STEPS = 200") == 1


def test_a_reforking_daemon_is_caught_at_level_process(tmp_path):
    """Without namespaces the subreaper and the sweep's repeated passes end the chain: nothing with
    the marker is left alive (the sweep used to stop after one pass that found no live generation,
    while the next one was being orphaned onto the harness: about 1 run in 10 escaped)."""
    marker = f"m-{uuid.uuid4().hex[:8]}"
    # a new generation every 20 ms: at level process the sweep catches one alive and freezes it
    code = ("import os, sys, time\nopen(sys.argv[2], 'w').close()\nend = time.time() + 20\n"
            "while time.time() < end:\n    time.sleep(0.02)\n    if os.fork():\n        os._exit(0)\n")
    log, started = tmp_path / "run.log", tmp_path / "started"
    # the command ends only once the daemon runs, however slowly a loaded machine starts Python
    out = sandbox.run(f"setsid {sys.executable} -c {_q(code)} {marker} {started} & "
                      f"while [ ! -e {started} ]; do sleep 0.05; done; sleep 0.1", tmp_path, 20, 1, log)
    assert out.stray >= 1 and "left" in (out.killed or "")
    alive = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert alive == []
