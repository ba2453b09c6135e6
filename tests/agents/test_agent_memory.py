"""Memory and steering: bounded notes carried across experiments, guidance a person edits mid-run,
the artifacts folder; and the SEARCH/REPLACE edit format the API agent relies on."""

from __future__ import annotations

import pytest

from ouroboros.agents import edits
from ouroboros.agents.command import bound_notes
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import FakeOpenAI, cli, knob_edit


def test_notes_are_bounded_keeping_the_newest(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("".join(f"line {i}\n" for i in range(1000)))
    bound_notes(notes, 500)
    text = notes.read_text()
    assert len(text) <= 500 and text.startswith("[... older notes dropped") and text.endswith("line 999\n")
    assert "line 0\n" not in text
    bound_notes(notes, 500)
    assert notes.read_text() == text  # already within the bound: unchanged


def test_notes_and_guidance_reach_the_next_prompt(quadratic):
    run_dir = quadratic / ".ouroboros" / "runs" / "t"
    first = knob_edit("MOMENTUM", "0.5", "0.9")

    def reply_one(body):
        (run_dir / "guidance.md").write_text("Try fewer steps next.\n")  # a person edits it mid-run
        return first(body) + "<notes>\nmomentum 0.9 tried\n" + "x" * 5000 + "\n</notes>\n"

    with FakeOpenAI([reply_one, knob_edit("STEPS", "200", "150")]) as server:
        loop = Loop(load_task(quadratic), Options(agent="api:m", tag="t", max_experiments=2,
                                                  extra={"agent_options": {"base_url": server.base_url}}))
        loop.run()
    second = server.requests[1]["messages"][-1]["content"]
    assert "# Guidance from a person (guidance.md)\n\nTry fewer steps next." in second
    assert "# Your notes" in second and "x" * 100 in second
    assert len((run_dir / "notes.md").read_text()) <= load_task(quadratic).agent.notes_max_chars
    assert "MOMENTUM 0.5 -> 0.9" in second  # the results table


def test_command_agents_get_a_kept_artifacts_folder_and_bounded_notes(quadratic, tmp_path):
    script = tmp_path / "a.py"
    script.write_text(
        "import os, pathlib, re\n"
        "art = pathlib.Path(os.environ['OUROBOROS_ARTIFACTS'])\n"
        "(art / 'seen.txt').open('a').write('x')\n"
        "open(os.environ['OUROBOROS_NOTES'], 'a').write('n' * 3000 + '\\n')\n"
        "s = open('train.py').read()\n"
        "n = int(re.search(r'^STEPS = (\\d+)', s, re.M).group(1))\n"
        "open('train.py', 'w').write(re.sub(r'^STEPS = \\d+', f'STEPS = {n + 1}', s, flags=re.M))\n")
    cli("run", "-C", str(quadratic), "--agent", f"cmd:python {script}", "-n", "3", "--tag", "c", check=True)
    run_dir = quadratic / ".ouroboros" / "runs" / "c"
    assert (run_dir / "artifacts" / "seen.txt").read_text() == "xxx"  # survived three resets
    assert len((run_dir / "notes.md").read_text()) <= 4000
    assert all(e.status in ("keep", "discard") for e in Ledger(quadratic / ".ouroboros").experiments("c"))


def test_edit_blocks_parse_with_fences_and_apply_all_or_nothing(quadratic):
    task = load_task(quadratic)
    reply = ("DESCRIPTION: two edits\n\ntrain.py\n```python\n<<<<<<< SEARCH\nSTEPS = 200\n=======\nSTEPS = 300\n"
             ">>>>>>> REPLACE\n```\n\ntrain.py\n<<<<<<< SEARCH\nNOT THERE\n=======\nx\n>>>>>>> REPLACE\n")
    parsed = edits.parse(reply)
    assert [e.path for e in parsed] == ["train.py", "train.py"] and edits.description(reply) == "two edits"
    before = (quadratic / "train.py").read_text()
    with pytest.raises(edits.EditError, match="not found"):
        edits.apply(task, quadratic, parsed)
    assert (quadratic / "train.py").read_text() == before


@pytest.mark.parametrize("reply, message", [
    ("no blocks here", "no SEARCH/REPLACE"),
    ("train.py\n<<<<<<< SEARCH\nx\n", "not closed"),
    ("../x.py\n<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE\n", "relative to the task folder"),
    ("ouroboros.toml\n<<<<<<< SEARCH\n[task]\n=======\n>>>>>>> REPLACE\n", "not editable"),
    ("train.py\n<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE\n", "only creates new files"),
    ("train.py\n<<<<<<< SEARCH\nstrict=True)]\n=======\n)]\n>>>>>>> REPLACE\n", "occurs 3 times"),
])
def test_bad_edits_say_what_to_fix(quadratic, reply, message):
    task = load_task(quadratic)
    with pytest.raises(edits.EditError, match=message):
        edits.apply(task, quadratic, edits.parse(reply))


def test_log_shows_model_tokens_and_cost_and_resume_rebuilds_the_api_agent(quadratic):
    with FakeOpenAI([knob_edit("MOMENTUM", "0.5", "0.8"), knob_edit("STEPS", "200", "180")]) as server:
        cli("run", "-C", str(quadratic), "--agent", "api:gpt-4o-mini", "--base-url", server.base_url, "-n", "1",
            "--tag", "a", check=True)
        cli("run", "-C", str(quadratic), "--resume", "a", "-n", "2", check=True)  # same endpoint, from the record
    assert len(server.requests) == 2
    out = cli("log", "-C", str(quadratic), "--run", "a", check=True).stdout
    assert "gpt-4o-mini" in out and "tokens" in out and "cost $" in out
