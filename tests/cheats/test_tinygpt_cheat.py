"""Attacks on tinygpt's isolated evaluator by the model it serves.

The fast attacks replace train.py with a model that needs no training (its checkpoint is written
here), and run `python -P prepare.py evaluate` on it as the harness does. Each first shows that it
would win where the defence it targets is missing, then that the evaluator stops it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from ouroboros import cheats

torch = pytest.importorskip("torch", reason="the tinygpt example needs torch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tinygpt"

# Looks ahead (the prediction at t is the byte at t + 1, a val_bpb near 0) and remembers, per
# prefix, what it answered, in memory and in files a later process could read: so a probe that
# shares a prefix with a window seen before gets the same outputs there and passes the check.
# Prefixes shorter than 16 bytes recur across windows, so there it answers uniformly (causally).
MEMOISING = '''
import os, pickle
import torch
import torch.nn as nn

STORES = [f"/tmp/tinygpt-memo-$marker.pkl", f"/dev/shm/tinygpt-memo-$marker.pkl", "memo-$marker.pkl"]
MEMO = {}


def _load():
    for path in STORES:
        try:
            with open(path, "rb") as f:
                MEMO.update(pickle.load(f))
        except (OSError, EOFError, pickle.UnpicklingError):
            pass


def _save():
    for path in STORES:
        try:
            with open(path, "wb") as f:
                pickle.dump(MEMO, f)
        except OSError:
            pass


class Cheat(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(30.0))

    def forward(self, idx):
        _load()
        B, T = idx.shape
        out = torch.zeros(B, T, 256)
        for b in range(B):
            row = bytes(idx[b].tolist())
            for t in range(15, T - 1):
                hit = MEMO.setdefault(row[: t + 1], row[t + 1])
                out[b, t, hit] = self.scale
        _save()
        return out


def build_model(config):
    return Cheat()
'''

# An honest know-nothing model (val_bpb exactly 8) whose processes leave a forger behind that
# rewrites the metrics file with val_bpb 0 whenever it sees the real one.
FORGER = '''
import json, sys, time
path, end = sys.argv[1], time.time() + 60
while time.time() < end:
    try:
        metrics = json.loads(open(path).read())
        if metrics.get("val_bpb") != 0.0:
            metrics["val_bpb"] = 0.0
            open(path, "w").write(json.dumps(metrics))
    except (OSError, ValueError):
        pass
    time.sleep(0.002)
'''
LEAVES_FORGER = '''
import subprocess, sys
import torch
import torch.nn as nn


class Uniform(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(256))

    def forward(self, idx):
        return self.bias.expand(*idx.shape, 256).clone()


def build_model(config):
    subprocess.Popen([sys.executable, "-c", $forger, "$metrics", "$marker"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Uniform()
'''

# Keeps training (here: on its own inputs) for 40 s of CPU inside the evaluator before answering.
TRAINS_IN_EVALUATOR = '''
import time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Learner(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 256)

    def forward(self, idx):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        start = time.process_time()
        with torch.enable_grad():
            while time.process_time() - start < 40:
                loss = F.cross_entropy(self.emb(idx[:, :-1]).reshape(-1, 256), idx[:, 1:].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self.emb(idx)


def build_model(config):
    return Learner()
'''

# Answers correctly, but only after sleeping: what a model busy on a GPU looks like to the CPU clock.
SLEEPS = '''
import time
import torch
import torch.nn as nn


class Sleeper(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(256))

    def forward(self, idx):
        time.sleep(600)
        return self.bias.expand(*idx.shape, 256).clone()


def build_model(config):
    return Sleeper()
'''


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ouroboros-cache")


def _attack_task(folder: Path, model_source: str, model_class: str, **values: str) -> Path:
    """The pristine prepare.py beside an attacker's train.py and a checkpoint for its model
    (made from the class, so that nothing build_model() starts runs in this process)."""
    folder.mkdir(parents=True)
    shutil.copy(EXAMPLE / "prepare.py", folder / "prepare.py")
    source = model_source
    for key, value in values.items():
        source = source.replace(f"${key}", value)
    (folder / "train.py").write_text(source)
    model = getattr(_import(folder / "train.py"), model_class)()
    torch.save({"config": {}, "state_dict": model.state_dict()}, folder / "ckpt.pt")
    return folder


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"attack_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluate(folder: Path, cache: Path, metrics: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUROBOROS_", "TINYGPT_"))}
    env.update(OUROBOROS_CACHE=str(cache), OUROBOROS_METRICS=str(metrics), CUDA_VISIBLE_DEVICES="", **extra)
    return subprocess.run([sys.executable, "-P", "prepare.py", "evaluate"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


def _alive(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_memoising_lookahead_model_fails_the_causality_probe(tmp_path, cache, monkeypatch):
    marker = uuid.uuid4().hex[:12]
    task = _attack_task(tmp_path / "task", MEMOISING, "Cheat", marker=marker)
    monkeypatch.chdir(tmp_path)  # the in-process check below leaves its relative memo file here
    try:
        # In one long-lived process the memo makes a probe agree with its source before the cut.
        model = _import(task / "train.py").build_model({})
        rng = np.random.default_rng(0)
        window = torch.from_numpy(rng.integers(32, 127, size=(1, 256)))
        probe = window.clone()
        probe[0, 101:] = torch.from_numpy(rng.integers(32, 127, size=155))
        first, second = model(window), model(probe)
        assert torch.equal(first[0, :101], second[0, :101])
        assert first[0, 15:-1].argmax(-1).tolist() == window[0, 16:].tolist()  # it reads the answer

        metrics = tmp_path / "metrics.json"
        proc = _evaluate(task, cache, metrics)
        assert proc.returncode != 0
        assert "causality violation" in proc.stderr
        assert not metrics.exists()
        assert not (task / f"memo-{marker}.pkl").exists()
    finally:
        for store in (f"/tmp/tinygpt-memo-{marker}.pkl", f"/dev/shm/tinygpt-memo-{marker}.pkl"):
            Path(store).unlink(missing_ok=True)


def test_forger_left_by_the_model_cannot_change_the_recorded_metric(tmp_path, cache):
    marker = uuid.uuid4().hex[:12]
    metrics = tmp_path / "metrics.json"
    task = _attack_task(tmp_path / "task", LEAVES_FORGER, "Uniform", forger=repr(FORGER), metrics=str(metrics), marker=marker)
    try:
        # Started by hand beside a metrics file, the forger rewrites it.
        decoy = tmp_path / "decoy.json"
        decoy.write_text(json.dumps({"val_bpb": 8.0}))
        forger = subprocess.Popen([sys.executable, "-c", FORGER, str(decoy), marker])
        try:
            for _ in range(6000):
                if json.loads(decoy.read_text() or "{}").get("val_bpb") == 0.0:
                    break
                time.sleep(0.01)
            assert json.loads(decoy.read_text())["val_bpb"] == 0.0
        finally:
            forger.kill()
            forger.wait()

        proc = _evaluate(task, cache, metrics)
        assert proc.returncode == 0, proc.stderr
        assert _alive(marker) == []  # every process the model started died before the metrics existed
        assert json.loads(metrics.read_text())["val_bpb"] == pytest.approx(8.0, abs=1e-9)
    finally:
        for p in _alive(marker):
            p.kill()


def test_model_that_trains_inside_the_evaluator_is_stopped_by_its_cpu_budget(tmp_path, cache):
    task = _attack_task(tmp_path / "task", TRAINS_IN_EVALUATOR, "Learner")
    metrics = tmp_path / "metrics.json"
    proc = _evaluate(task, cache, metrics, TINYGPT_CHILD_CPU_S="2")  # small, so the test is fast
    assert proc.returncode != 0
    assert "the model used more than its 2 CPU seconds" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("prepare.py evaluate: error:")
    assert not metrics.exists()


def test_model_that_overstays_in_wall_time_is_stopped(tmp_path, cache):
    task = _attack_task(tmp_path / "task", SLEEPS, "Sleeper")
    metrics = tmp_path / "metrics.json"
    proc = _evaluate(task, cache, metrics, TINYGPT_CHILD_WALL_S="1")
    assert proc.returncode != 0
    assert "the model took more than 1 s" in proc.stderr
    assert not metrics.exists()


def test_bad_child_budget_is_one_clear_line(tmp_path, cache):
    task = _attack_task(tmp_path / "task", SLEEPS, "Sleeper")
    proc = _evaluate(task, cache, tmp_path / "metrics.json", TINYGPT_CHILD_CPU_S="soon")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "prepare.py evaluate: error: TINYGPT_CHILD_CPU_S='soon' is not a positive number of seconds; "
        "unset it for 10"
    )


@pytest.mark.slow
def test_noncausal_attention_is_never_kept(tmp_path):
    result = cheats.run_attack(cheats.BY_NAME["tinygpt-noncausal"], tmp_path / "attack")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"
    assert "causal" in result.caught_by
    assert result.leftovers == []
