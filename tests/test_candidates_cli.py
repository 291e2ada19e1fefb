"""``sampref_candidates`` on a tiny model: PNGs and template per rated sample, the filled template trains a DPO run
through the printed command, a person's filled-in template is never overwritten, and ``--help`` teaches."""

from __future__ import annotations

import json
import shlex

import pytest
from PIL import Image

from sampref_bench.cli.candidates import main, template_holds_work
from sampref_bench.cli.train import _overrides
from sampref_bench.cli.train import build_parser as train_parser
from sampref_bench.planners.data import hidden_label_samples
from sampref_bench.trainers.dpo.annotators import FORMAT
from sampref_bench.trainers.registry import get_trainer
from tests.trainer_helpers import DPO_TINY, copy_roots, prepared_dpo_roots

TINY = DPO_TINY
SETS = [item for key, value in TINY.items() for item in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The planned phantoms with a finished stage-1 run, built once for this module."""
    return prepared_dpo_roots(tmp_path_factory.mktemp("candidates_prepared"))


@pytest.fixture
def dataset(prepared, sampref_roots):
    """This test's own copy of :func:`prepared`."""
    return copy_roots(prepared, sampref_roots)


def _args(dataset, trainer, *extra):
    return ["-d", dataset, "-t", trainer, "-f", "0", "--fraction", "0.5", *SETS, "--no-progress", *extra]


def test_template_fills_in_and_trains(dataset, capsys):
    assert main(_args(dataset, "DPORating")) == 0
    printed = capsys.readouterr().out
    reference = get_trainer("DPORating")(dataset, 0, 0.5, overrides=TINY, progress=False)
    out = reference.output_dir / "candidates"  # the default OUTDIR
    template = out / "preferences_template.json"
    content = json.loads(template.read_text())

    rated = hidden_label_samples(reference.data, reference.roles.rated, reference.labels)
    assert rated
    assert {k: content[k] for k in ("format", "dataset", "fold", "fraction", "trainer", "scale", "candidates",
                                    "thresholds")} == {
        "format": FORMAT, "dataset": reference.dataset_name, "fold": 0, "fraction": 0.5, "trainer": "DPORating",
        "scale": 4, "candidates": "thresholds", "thresholds": [0.3, 0.4, 0.5, 0.6]}
    assert "ratings" in content["instructions"] and "ranking" in content["instructions"]
    entries = content["entries"]
    assert [(e["case"], e["slice"], e["label"]) for e in entries] == [(s.case, s.slice, s.label) for s in rated]
    size = int(reference.plans["image_size"])
    for entry in entries:
        assert entry["ratings"] is None and entry["ranking"] is None and len(entry["candidates_sha"]) == 16
        assert len(entry["images"]) == 4
        for name in [*entry["images"], entry["overview"]]:
            assert (out / name).is_file() and not name.startswith("/")
            with Image.open(out / name) as png:
                assert png.format == "PNG"
                if name in entry["images"]:
                    assert png.size == (size, size)

    # the printed command is a sampref_train command line for the filled file
    line = next(s.strip() for s in printed.splitlines() if s.strip().startswith("sampref_train "))
    assert line == content["train_command"] and str(template.resolve()) in content["instructions"]
    parsed = train_parser().parse_args(shlex.split(line)[1:])
    overrides = _overrides(parsed.overrides)
    assert overrides == {**TINY, "annotator": "file", "ratings_file": str(template.resolve())}
    assert (parsed.dataset, parsed.trainer, parsed.fold, parsed.fraction) == (dataset, "DPORating", 0, 0.5)

    # a person fills it in; generating again now refuses to overwrite the work and leaves the file alone
    assert template_holds_work(template) is None
    for entry in entries:
        entry["ratings"] = [4, 3, 2, 1]
    entries[0]["ratings"] = [1, 2, 3, 4]
    template.write_text(json.dumps(content, indent=2))
    before = template.read_bytes()
    assert main(_args(dataset, "DPORating")) == 2
    error = capsys.readouterr().err
    assert "--force" in error and "hold ratings or a ranking" in error
    assert template.read_bytes() == before

    # the filled template trains through the printed command's options
    run = get_trainer(parsed.trainer)(parsed.dataset, parsed.fold, parsed.fraction, overrides=overrides,
                                      progress=False, run_name="human")
    folder = run.run_training()
    assert (folder / "checkpoint_final.pth").is_file()
    used = json.loads((folder / "preferences.json").read_text())
    assert [e["ratings"] for e in used["entries"]] == [e["ratings"] for e in entries]
    assert [e["candidates_sha"] for e in used["entries"]] == [e["candidates_sha"] for e in entries]


def test_output_folder_force_and_guards(dataset, tmp_path, capsys):
    template = tmp_path / "session" / "preferences_template.json"
    template.parent.mkdir()
    template.write_text("{not json")  # half-edited by hand: nobody can tell what it holds
    args = _args(dataset, "DPORanking", "-o", str(template.parent), "--no-overview")
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and template.read_text() == "{not json"

    assert main([*args, "--force"]) == 0
    assert str(template.resolve()) in capsys.readouterr().out
    content = json.loads(template.read_text())
    assert content["trainer"] == "DPORanking" and content["entries"]
    assert all("overview" not in e and e["ratings"] is None for e in content["entries"])
    assert all((template.parent / name).is_file() for e in content["entries"] for name in e["images"])
    assert template_holds_work(template) is None  # a blank template is simply rewritten

    assert main(_args(dataset, "SAMBaseline")) == 2
    assert "not a DPO trainer" in capsys.readouterr().err
    assert main(_args(dataset, "DPORanking", "--set", "annotator=file")) == 2
    assert "sampref_train command" in capsys.readouterr().err


def test_help_teaches_the_workflow(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("generate", "fill in", "train", "ratings", "ranking", "annotator=file", "ratings_file"):
        assert word in text
