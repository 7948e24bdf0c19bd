"""MANet training end to end on a real database: categories -> training set -> train ->
resume -> extract with the learned saliency -> derived variants -> eval --compare."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from manet.cli.main import cli
from manet.errors import ManetError
from manet.train.loop import TrainConfig
from manet.train.optimizer import warmup_cosine


@pytest.fixture(scope="module")
def prepared(training_catalogue):
    return training_catalogue


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Checkpoints live under MANET_HOME; one folder for the module so runs can resume."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def run(database_url, monkeypatch, home):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("MANET_DEVICE", "cpu")
    monkeypatch.setenv("MANET_HOME", str(home))

    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)

    return invoke


TINY = ["--backbone", "resnet18", "--weights", "none", "--image-size", "64", "--batch-size", "4", "--workers", "0"]


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)  # halfway through the cosine
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_train_resume_extract_compare(prepared, run):
    first = run("train", "--name", "m1", "--epochs", "1", *TINY, "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert [e["epoch"] for e in report["epochs"]] == [1]
    for key in ("loss", "ce", "dice", "train_accuracy", "val_accuracy", "val_map7"):
        assert report["epochs"][0][key] >= 0

    # An interrupted run (here: one that stopped after epoch 1) continues from the checkpoint.
    again = run("train", "--name", "m1", "--epochs", "2", *TINY, "--resume", "--json")
    assert again.exit_code == 0, again.output
    resumed = json.loads(again.output)
    assert resumed["resumed_from"] == 1 and [e["epoch"] for e in resumed["epochs"]] == [2]
    stored = prepared.model("m1")
    assert stored.config.manet is not None and stored.config.learned_saliency and stored.config.text_mask
    assert stored.config.manet["text_scale"] == "neutral"  # the default
    assert [e["epoch"] for e in stored.metrics["epochs"]] == [1, 2]

    baseline = run("train", "--name", "plain", "--epochs", "1", *TINY, "--no-saliency", "--no-text")
    assert baseline.exit_code == 0, baseline.output

    for args in (["m1-nosal", "--from", "m1", "--no-saliency"], ["m1-notext", "--from", "m1", "--no-text"],
                 ["plain-gem", "--from", "plain", "--pooling", "gem"]):
        assert run("models", "create", *args).exit_code == 0
    result = run("eval", "--compare", "m1", "m1-nosal", "m1-notext", "plain", "plain-gem", "--split", "val",
                 "--against", "plain", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["model"] for r in rows] == ["m1", "m1-nosal", "m1-notext", "plain", "plain-gem"]
    assert all({"map@7", "map", "recall@1"} <= set(r) for r in rows)
    assert len({r["queries"] for r in rows}) == 1  # the same queries for every pipeline
    # --against: each row minus the plain classifier on the same queries, with its interval
    plain_map = rows[3]["map@7"]
    for row in rows:
        margin = row["against"]
        assert margin["model"] == "plain" and margin["queries"] == row["queries"]
        assert margin["difference"] == pytest.approx(row["map@7"] - plain_map)
        assert margin["low"] <= margin["difference"] <= margin["high"]
    assert (rows[3]["against"]["low"], rows[3]["against"]["high"]) == (0.0, 0.0)
    table = run("eval", "--compare", "m1", "plain", "--split", "val", "--against", "plain")
    assert table.exit_code == 0 and "95% interval" in table.output and "not over training seeds" in table.output
    for bad, says in ((["--compare", "m1", "--against", "plain"], "not among the compared models"),
                      (["--model", "m1", "--against", "plain"], "use --compare")):
        refused = run("eval", *bad, "--split", "val")
        assert refused.exit_code == 2 and says in refused.output
    # --compare --split val extracts only what that evaluation needs: catalogue + val photos.
    counts = {m["name"]: m["descriptors"] for m in prepared.models()}
    assert counts["m1"] == 8 + 8 and counts["plain-gem"] == 8 + 8

    # The derived pipelines really differ from the trained one.
    image = prepared.search("m1", image_id=1, k=1)
    assert image and prepared.search("m1-nosal", image_id=1, k=1)


def test_a_resumed_run_repeats_the_uninterrupted_one_with_loader_workers(prepared, run, home):
    """Epoch 2 after a resume gets the same shuffle, augmentations (drawn in a loader worker) and
    dropout as in a run that never stopped, so both end with the same weights."""
    from manet.train.distributed import state_checksum

    workers = [*TINY[:-2], "--workers", "1"]
    assert run("train", "--name", "straight", "--epochs", "2", *workers).exit_code == 0
    assert run("train", "--name", "split", "--epochs", "1", *workers).exit_code == 0
    assert run("train", "--name", "split", "--epochs", "2", *workers, "--resume").exit_code == 0
    weights = [torch.load(home / "checkpoints" / name / "last.pt", map_location="cpu", weights_only=True)
               for name in ("straight", "split")]
    assert [w["epoch"] for w in weights] == [2, 2]
    assert state_checksum(weights[0]["model"]) == state_checksum(weights[1]["model"])
    assert weights[0]["history"][1]["loss"] == weights[1]["history"][1]["loss"]
    # the defaults: a cosine head with imprinted class weights, recorded in the checkpoint
    assert (weights[0]["manet"]["head"], weights[0]["config"]["head_init"]) == ("cosine", "imprint")
    other = run("train", "--name", "split", "--epochs", "3", *workers, "--resume", "--head", "linear")
    assert other.exit_code == 1 and "trained a cosine head, not linear; resume with --head cosine" in other.output


def test_a_damaged_or_unfitting_checkpoint_is_one_line(prepared, run, home):
    """Resuming from a file that is no checkpoint, or from one whose classes no longer fit, and a
    model whose checkpoint was replaced: one line, exit 1."""
    import shutil

    from manet.errors import WeightsError
    from manet.nn.pipeline import build_pipeline

    runs = home / "checkpoints"
    for name in ("m1-junk", "m1-sku"):
        shutil.copytree(runs / "m1", runs / name)
    (runs / "m1-junk" / "last.pt").write_text("not a checkpoint")
    junk = run("train", "--name", "m1-junk", "--epochs", "3", *TINY, "--resume")
    assert junk.exit_code == 1 and "not a torch file, or a damaged one" in junk.output, junk.output
    # m1 learned the categories; with --labels sku each of the 8 products is a class
    other = run("train", "--name", "m1-sku", "--epochs", "3", *TINY, "--resume", "--labels", "sku")
    assert other.exit_code == 1 and "does not fit this run's network" in other.output, other.output
    assert "Traceback" not in junk.output + other.output

    config = prepared.model("m1").config
    for content, says in ((b"text", "not a torch file, or a damaged one"), (None, "holds no network weights")):
        path = runs / "m1-junk" / "replaced.pt"
        if content is None:
            torch.save([1, 2], path)
        else:
            path.write_bytes(content)
        with pytest.raises(WeightsError, match=says):
            build_pipeline(dataclasses.replace(config, checkpoint=str(path)), prepared.registry)


def test_learned_saliency_pipeline_matches_training_network(prepared, run):
    from manet.nn.pipeline import build_pipeline

    record = prepared.model("m1")
    pipeline = build_pipeline(record.config, prepared.registry)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        out = pipeline(images)
    assert out.shape == (2, 512) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-4)


def test_residual_saliency_gate_reaches_extraction(prepared, run):
    from manet.nn.pipeline import build_pipeline

    result = run("train", "--name", "gated", "--epochs", "1", *TINY, "--saliency-gate", "residual",
                 "--text-scale", "paper", "--head", "cosine", "--head-init", "imprint")
    assert result.exit_code == 0, result.output
    assert "cosine head imprinted from" in result.output
    record = prepared.model("gated")
    assert (record.config.manet["saliency_gate"], record.config.manet["text_scale"],
            record.config.manet["head"]) == ("residual", "paper", "cosine")
    pipeline = build_pipeline(record.config, prepared.registry)
    # validation during training and extraction weight alike
    trained = pipeline.network.manet.config
    assert (trained.saliency_gate, trained.text_scale, trained.head) == ("residual", "paper", "cosine")
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        residual = pipeline(images)
        pipeline.network.manet.config = dataclasses.replace(trained, saliency_gate="multiply")
        multiply = pipeline(images)
    assert not torch.allclose(residual, multiply)
    bad = run("train", "--name", "bad-gate", "--epochs", "1", *TINY, "--saliency-gate", "sum")
    assert bad.exit_code == 2 and "'sum' is not one of 'multiply', 'residual'" in bad.output
    linear = run("train", "--name", "bad-init", "--epochs", "1", *TINY, "--head", "linear", "--head-init", "imprint")
    assert linear.exit_code == 1 and "add --head cosine or use --head-init random" in linear.output


def test_saliency_target_is_any_saliency_estimator(prepared, run):
    result = run("train", "--name", "ft-target", "--epochs", "1", *TINY, "--saliency-target", "frequency-tuned",
                 "--saliency-input", "detached")
    assert result.exit_code == 0, result.output
    record = prepared.model("ft-target")
    assert record.config.manet["saliency_input"] == "detached"
    # the Dice targets' estimator is recorded, and a derived model with the learned saliency
    # off falls back to the same estimator
    assert record.metrics["training"]["saliency_estimator"] == "frequency-tuned"
    assert record.config.saliency == "frequency-tuned"
    bad = run("train", "--name", "bad-target", "--epochs", "1", *TINY, "--saliency-target", "nope")
    assert bad.exit_code == 1
    assert "unknown saliency estimator 'nope'; known: frequency-tuned, spectral-residual" in bad.output
    assert "bad-target" not in {m["name"] for m in prepared.models()}


def test_resume_with_another_architecture(prepared, run):
    result = run("train", "--name", "m1", "--epochs", "3", "--backbone", "resnet34", "--weights", "none",
                 "--image-size", "64", "--batch-size", "4", "--workers", "0", "--resume")
    assert result.exit_code == 1 and "not a resnet34" in result.output


def test_bad_image_size(prepared, run):
    result = run("train", "--name", "odd", "--epochs", "1", "--backbone", "resnet18", "--weights", "none",
                 "--image-size", "50")
    assert result.exit_code == 1 and "image size 50" in result.output


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--lambda", "nan", "'nan' is not a finite number"),
    ("--lr", "inf", "'inf' is not a finite number"),
    ("--lr", "0", "0.0 is not in the range x>0"),
    ("--backbone-lr-scale", "-1", "-1.0 is not in the range x>=0"),
])
def test_bad_rates_fail_before_training(prepared, run, home, option, value, message):
    # nan used to train a whole run of nan weights and then fail to store its JSON row.
    result = run("train", "--name", "badrate", "--epochs", "1", "--backbone", "resnet18", "--weights", "none",
                 "--image-size", "64", option, value)
    assert result.exit_code == 2 and message in result.output
    assert not (home / "checkpoints" / "badrate").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lambda_dice", float("nan"), "--lambda nan is out of range; use a finite number >= 0"),
    ("lr", 0.0, "--lr 0.0 is out of range; use a finite number > 0"),
    ("weight_decay", float("inf"), "weight_decay inf is out of range"),
])
def test_bad_rates_through_the_api(prepared, field, value, message):
    from manet.train.loop import train

    cfg = TrainConfig(name="badrate", backbone="resnet18", weights="none", image_size=64, epochs=1, **{field: value})
    with pytest.raises(ManetError, match=message):
        train(prepared.db, prepared.registry, cfg, device="cpu")


def test_fewer_than_two_categories(prepared):
    import sqlalchemy as sa

    from manet.train.loop import train

    with prepared.db.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_sets (name) VALUES ('lonely')"))
        conn.execute(sa.text(
            "INSERT INTO training_images (set_id, image_id, category_id, split) "
            "SELECT (SELECT id FROM training_sets WHERE name = 'lonely'), ti.image_id, ti.category_id, ti.split "
            "FROM training_images ti JOIN training_sets s ON s.id = ti.set_id "
            "WHERE s.name = 'default' AND ti.category_id = (SELECT min(category_id) FROM training_images)"))
    cfg = TrainConfig(name="lonely", backbone="resnet18", weights="none", image_size=64, epochs=1,
                      training_set="lonely")
    with pytest.raises(ManetError, match="at least 2"):
        train(prepared.db, prepared.registry, cfg, device="cpu")


def test_resume_after_the_process_is_killed(prepared, run, database_url, home):
    env = {**os.environ, "MANET_DATABASE_URL": database_url, "MANET_HOME": str(home), "MANET_DEVICE": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "manet.cli", "-q", "train", "--name", "killed",
                                "--epochs", "50", *TINY], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    last = home / "checkpoints" / "killed" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.kill()  # SIGKILL mid-run: no clean-up code runs
    process.wait()
    finished = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= finished < 50

    result = run("train", "--name", "killed", "--epochs", str(finished + 1), *TINY, "--resume", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["resumed_from"] == finished and [e["epoch"] for e in report["epochs"]] == [finished + 1]
    history = [e["epoch"] for e in prepared.model("killed").metrics["epochs"]]
    assert history == list(range(1, finished + 2))


def test_derive_at_another_input_size(prepared, run):
    assert run("models", "create", "m1-96", "--from", "m1", "--image-size", "96").exit_code == 0
    derived, base = prepared.model("m1-96"), prepared.model("m1")
    assert derived.config.image_size == 96 and derived.config.checkpoint == base.config.checkpoint
    one_line = run("models", "create", "x", "--from", "does-not-exist")
    assert one_line.exit_code == 1 and "does not exist" in one_line.output


def test_derive_with_pooling_parameters(prepared, run):
    result = run("models", "create", "m1-gem4", "--from", "m1", "--pooling", "gem", "-p", "p=4", "--json")
    assert result.exit_code == 0, result.output
    assert prepared.model("m1-gem4").config.pooling_params == {"p": "4"}  # as given; validated on use
    assert run("models", "create", "m1-gem", "--from", "m1", "--pooling", "gem").exit_code == 0
    assert prepared.model("m1-gem").config.pooling_params == {}  # another pooling starts from its defaults
    bad = run("models", "create", "m1-bad", "--from", "m1", "-p", "nope=1")
    assert bad.exit_code == 1 and "nope" in bad.output


def test_sku_labels_frozen_stages_and_the_extraction_descriptors(prepared, run):
    """--labels sku learns products; --frozen-stages keeps the first stages as built; the val
    MAP@7 printed in training is the one extraction's stored descriptors give."""
    import numpy as np
    import sqlalchemy as sa

    from manet.catalog.trainset import training_images
    from manet.train.validation import retrieval_map7

    result = run("train", "--name", "sku1", "--epochs", "1", *TINY, "--no-text", "--labels", "sku",
                 "--frozen-stages", "2", "--json")
    assert result.exit_code == 0, result.output
    reported = json.loads(result.output)["epochs"][0]["val_map7"]
    record = prepared.model("sku1")
    train_rows, val_rows = (training_images(prepared.db, "default", split) for split in ("train", "val"))
    with prepared.db.begin() as conn:
        sku_of = dict(conn.execute(sa.text("SELECT i.id, p.sku FROM images i JOIN products p ON p.id = i.product_id"))
                      .all())
    assert record.metrics["classes"] == sorted({sku_of[r[0]] for r in train_rows + val_rows})

    state = torch.load(record.config.checkpoint, weights_only=True)["model"]
    built = prepared.registry.create("backbone", "resnet18").build_stages("none").state_dict()
    for key, value in built.items():
        if key.split(".")[0] in ("0", "1") and value.is_floating_point():
            assert torch.equal(state[f"stages.{key}"], value), key  # frozen: as built
    assert not all(torch.equal(state[f"stages.{k}"], v) for k, v in built.items() if k.startswith("3."))

    prepared.extract("sku1")
    with prepared.db.begin() as conn:
        vectors = {row.image_id: np.asarray(row.embedding, dtype=np.float32) for row in conn.execute(sa.text(
                       "SELECT image_id, embedding::real[] AS embedding FROM descriptors WHERE model_id = :m"),
                       {"m": record.id})}

    def stacked(rows):
        return torch.from_numpy(np.stack([vectors[r[0]] for r in rows]))

    with prepared.db.begin() as conn:
        product_of = dict(conn.execute(sa.text("SELECT id, product_id FROM images")).all())
    recomputed = retrieval_map7(stacked(val_rows), np.array([product_of[r[0]] for r in val_rows]),
                                stacked(train_rows), np.array([product_of[r[0]] for r in train_rows]))
    assert recomputed == pytest.approx(reported, abs=1e-6)
