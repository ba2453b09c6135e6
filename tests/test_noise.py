from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ouroboros import noise
from ouroboros.errors import OuroborosError
from ouroboros.judge import gain
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import commit_all

NOISY = '''
import os
import random

_rng = random.Random(int(os.environ.get("OUROBOROS_SEED", "0")))
START = START + _rng.gauss(0.0, 0.05)  # seed-dependent start: the metric is noisy
'''


def noisy(quadratic: Path) -> Path:
    train = quadratic / "train.py"
    text = train.read_text()
    marker = "# The objective as train.py believes it to be"
    train.write_text(text.replace(marker, NOISY + "\n" + marker))
    commit_all(quadratic, "noisy start")
    return quadratic


def test_noise_measures_stores_and_new_runs_judge_with_it(quadratic: Path) -> None:
    task = load_task(noisy(quadratic))
    floor = noise.measure(task, 4, seed=0)
    assert len(floor.values) == 4 and floor.sigma > 0 and len(set(floor.values)) == 4
    assert floor.sigma == pytest.approx(noise.estimate(floor.values))
    assert noise.stored_sigma(quadratic / ".ouroboros", floor.commit) == floor.sigma
    loop = Loop(task, Options(agent="random", tag="after", max_experiments=6))
    assert loop.run_rec.noise_sigma == floor.sigma
    loop.run()
    need = noise.min_delta_for(task, floor.sigma)
    assert need == pytest.approx(task.judge.noise_z * floor.sigma)
    exps = Ledger(quadratic / ".ouroboros").experiments("after")
    best = exps[0].metric
    for e in exps[1:]:
        if e.status == "keep":
            assert gain(e.metric, best, True) > need
            best = e.metric
        elif e.status == "discard" and e.metric is not None and e.metric < best:
            assert "needs >" in e.reason  # better, but within the noise: not kept
    # the re-runs are recorded as a run of their own
    noise_run = Ledger(quadratic / ".ouroboros").run(floor.tag)
    assert noise_run is not None and noise_run.agent == "noise" and noise_run.noise_sigma == floor.sigma


def test_noise_needs_two_good_reruns() -> None:
    with pytest.raises(OuroborosError, match="at least 2"):
        noise.estimate([1.0])


def test_noise_cli(quadratic: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", "noise", "-C", str(noisy(quadratic)), "-R", "3"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "sigma" in proc.stdout and "over 3 re-runs" in proc.stdout


@pytest.mark.parametrize("data", [b"\xff\xfe not ours", b"[1, 2]", b'{"abc": {"x": 1}}', b"{"])
def test_a_noise_file_that_is_not_ours_holds_no_floor(tmp_path: Path, data: bytes) -> None:
    (tmp_path / noise.NOISE_FILE).write_bytes(data)
    assert noise.stored_sigma(tmp_path, "abc") is None
    floor = noise.NoiseFloor(commit="abc", sigma=0.7, mean=1.5, values=[1.0, 2.0], tag="n", measured=0.0)
    noise._store(tmp_path, floor)  # a measurement replaces it
    assert noise.stored_sigma(tmp_path, "abc") == 0.7
