"""The paper profile's per-architecture recipe, its defaults, and ``veil study --plan``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from study_data import make_dataset

from veil.cli import main
from veil.errors import VeilError
from veil.study.profiles import PAPER, resolve_recipe
from veil.study.run import StudyConfig, plan_study

SLOW_LR = {"alexnet", "vgg11", "vgg13", "vgg16", "vgg19"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_paper_profile_trains_alexnet_and_vgg_at_001_and_the_rest_at_01() -> None:
    assert len(PAPER.archs) == 15
    for arch in PAPER.archs:
        expected = 0.01 if arch in SLOW_LR else 0.1
        assert PAPER.lr_for(arch) == expected, arch
        assert PAPER.for_arch(arch).effective_lr == pytest.approx(expected)  # batch 256


def test_lr_for_overrides_one_arch_and_lr_overrides_all() -> None:
    recipe = resolve_recipe("paper", arch_lr={"alexnet": 0.02})
    assert recipe.lr_for("alexnet") == 0.02 and recipe.lr_for("vgg16") == 0.01
    assert recipe.lr_for("resnet50") == 0.1
    flat = resolve_recipe("paper", lr=0.05)
    assert flat.lr_for("alexnet") == 0.05 and flat.lr_for("resnet50") == 0.05
    with pytest.raises(VeilError, match="lr must be > 0"):
        resolve_recipe("paper", arch_lr={"alexnet": 0.0})


def test_paper_profile_defaults_to_three_seeds_blur_and_overlay(dataset: Path) -> None:
    plan = plan_study(StudyConfig(data=dataset, faces=dataset / "faces.json", out="",
                                  profile="paper", archs=["alexnet", "resnet18"],
                                  log=lambda m: None), measure=False)
    assert plan["seeds"] == [1, 2, 3] and plan["methods"] == ["blur", "overlay"]
    conditions = {(r["train"], r["eval"]) for r in plan["matrix"]}
    assert conditions == {("original", "original"), ("blur", "blur"), ("blur", "original"),
                          ("overlay", "overlay"), ("overlay", "original")}
    assert len(plan["matrix"]) == 2 * 3 * 5
    lrs = {r["arch"]: r["lr"] for r in plan["matrix"]}
    assert lrs == {"alexnet": 0.01, "resnet18": 0.1}


def test_plan_prints_the_matrix_faces_disk_and_time_and_trains_nothing(
        dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "study", "--data", str(dataset), "--faces", str(dataset / "faces.json"), "--plan",
        "--out", str(out), "--archs", "resnet18,alexnet", "--seeds", "2", "--img-size", "64",
        "--epochs", "3", "--methods", "blur,recompress_q75", "--lr-for", "alexnet=0.03",
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert not out.exists(), "--plan writes nothing"
    text = result.output
    assert "2 arch(s) x 2 seed(s)" in text and "12 trainings, 20 evaluations" in text
    rows = [line.split() for line in text.splitlines()
            if re.match(r"\s+(resnet18|alexnet)\s+\d\s", line)]
    assert len(rows) == 2 * 2 * 5  # arch x seed x (orig/orig + 2 methods x 2 evals)
    assert rows[-1][:5] == ["alexnet", "1", "recompress_q75", "original", "0.03"]
    assert re.search(r"train\s+24\s+9\s+24\s+24", text), "images, with faces, records, matched"
    assert re.search(r"val\s+15\s+6\s+15\s+15", text)
    cache = 3 * (24 + 15) * 73 * 73 * 3  # 3 conditions x images x 73 px squares
    assert f"disk: caches {cache / 1e6:.1f} MB" in text
    assert re.search(r"time on this machine .*: about \d+ (s|min|h)", text)
    assert re.search(r"alexnet\s+train\s+[\d.]+ ms/img", text), "measured per arch"


def test_plan_refuses_a_bad_lr_for(dataset: Path) -> None:
    result = CliRunner().invoke(main, [
        "study", "--data", str(dataset), "--faces", str(dataset / "faces.json"), "--plan",
        "--lr-for", "alexnet"])
    assert result.exit_code != 0  # VeilError: 2 once the CLI maps usage errors to 2
    assert "must look like ARCH=LR" in result.output
    result = CliRunner().invoke(main, ["study", "--data", str(dataset), "--faces",
                                       str(dataset / "faces.json")])
    assert result.exit_code == 2 and "--out is required" in result.output  # UsageError


def test_each_training_records_and_uses_its_arch_rate(dataset: Path) -> None:
    from veil.study.ddp import DistEnv
    from veil.study.run import Study

    study = Study(StudyConfig(data=dataset, faces=dataset / "faces.json", out="",
                              profile="paper", archs=["alexnet", "resnet18"],
                              overrides={"batch_size": 128}, log=lambda m: None), DistEnv())
    alexnet = study.run_config("alexnet", 1, "original")["hyper"]
    resnet = study.run_config("resnet18", 1, "blur")["hyper"]
    assert alexnet["lr"] == 0.01 and alexnet["effective_lr"] == pytest.approx(0.005)
    assert resnet["lr"] == 0.1 and resnet["effective_lr"] == pytest.approx(0.05)
