"""`python -m experiments.make_suite`: check the committed suite, write a training suite elsewhere, list families."""

from __future__ import annotations

from experiments.make_suite import main
from shaping.sim.families import families
from shaping.sim.suite import load_suite, suite_index


def test_check_passes_on_the_committed_suite(capsys):
    assert main(["--check"]) == 0
    assert "match the generator" in capsys.readouterr().out


def test_training_suite_written_elsewhere_loads_and_a_stale_file_fails_the_check(tmp_path, capsys):
    out = tmp_path / "training"
    assert main(["--split", "training", "--seeds", "1", "--out", str(out)]) == 0
    suite = load_suite(str(out))
    assert [sc.family for sc in suite] == [f.name for f in families("training")]
    assert suite_index(str(out))["suite"] == "training"
    (out / "stray.yaml").write_text("name: stray\\n")
    first = out / f"{suite[0].name}.yaml"
    first.write_text(first.read_text().replace("episode_steps: 300", "episode_steps: 301"))
    assert main(["--split", "training", "--seeds", "1", "--out", str(out), "--check"]) == 1
    text = capsys.readouterr().out
    assert f"differs: {first}" in text and "extra:" in text and "stray.yaml" in text


def test_list_names_every_family_and_what_heldout_adds(capsys):
    assert main(["--list"]) == 0
    text = capsys.readouterr().out
    assert all(f.name in text for f in families("training") + families("heldout"))
    assert "beyond training: capacity_mbps" in text
