from __future__ import annotations

from pathlib import Path

import pytest
import study_fixtures

from ouroboros.errors import OuroborosError
from ouroboros.study.spec import Limits, RunSpec, Study, load_study

study_file = study_fixtures.study_file  # the shared fixture


def test_study_round_trips_to_an_equal_object(study_file: Path) -> None:
    study = load_study(study_file)
    again = Study.model_validate_json(study.model_dump_json()).model_copy(update={"root": study.root})
    assert again == study
    spec = RunSpec(study="s", condition="random", tag="s-random-r0", agent="random", seed=3,
                   task_dir=Path("/x"), limits=Limits(max_experiments=2), log=Path("/x/log"))
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


def test_study_defaults_seeds_tags_and_baseline(study_file: Path) -> None:
    study = load_study(study_file)
    assert study.seed_list == [0, 1]
    assert study.baseline_condition == "random"
    assert study.tag(study.conditions[1], 1) == "s-tpe_fast-r1"
    assert study.conditions[1].knobs == {"STEPS": 50}


@pytest.mark.parametrize("edit, message", [
    ("repeats = 2", "repeatz = 2", ),
    ("max_experiments = 2", "hours = -1"),
    ('name = "s"', 'name = "a-b"'),
    ("repeats = 2", "repeats = 2\nseeds = [1]"),
])
def test_study_file_mistakes_are_one_line_errors(study_file: Path, edit: str, message: str) -> None:
    study_file.write_text(study_file.read_text().replace(edit, message, 1))
    with pytest.raises(OuroborosError) as info:
        load_study(study_file)
    assert str(study_file) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_names_the_key(study_file: Path) -> None:
    study_file.write_text(study_file.read_text().replace('agent = "random"', 'agent = "random"\nagnet = "x"'))
    with pytest.raises(OuroborosError, match=r"conditions\.0\.agnet.*unknown key"):
        load_study(study_file)


def test_a_run_needs_a_limit(study_file: Path) -> None:
    study_file.write_text(study_file.read_text().replace("max_experiments = 2", ""))
    with pytest.raises(OuroborosError, match="max_experiments or hours"):
        load_study(study_file)


@pytest.mark.parametrize("name", ["quadratic", "tinygpt"])
def test_the_example_studies_load_and_point_at_example_tasks(name: str) -> None:
    from ouroboros.task import load_task

    study = load_study(Path(__file__).parents[2] / "examples" / "studies" / f"{name}.toml")
    assert [c.agent for c in study.conditions] == ["random", "tpe"] and study.baseline_condition == "random"
    assert load_task(study.task_path(study.conditions[0])).name == name
