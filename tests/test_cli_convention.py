"""One CLI convention (docs/cli.md): env vars for global options, --json, --yes, exit codes,
completion, quiet progress bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from manet.cli.main import cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

#: Commands that print one line and take no --json (docs/cli.md, "Output").
WITHOUT_JSON = {"db upgrade", "db downgrade", "db url", "db stop", "db grant-reader", "models delete", "serve"}
#: Commands that delete or replace stored data (docs/cli.md, "Destructive commands ask first").
DESTRUCTIVE = {"db downgrade", "models delete", "categories mine", "dataset build", "products delete",
               "images delete", "ingest"}


def leaf_commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            out.update(leaf_commands(command, path + " "))
        else:
            out[path] = command
    return out


def option_names(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_global_option_has_an_environment_variable_shown_in_help() -> None:
    result = subprocess.run([sys.executable, "-m", "manet.cli", "--help"], capture_output=True, text=True,
                            check=True)
    docs = DOCS.read_text()
    for param in cli.params:
        if not isinstance(param, click.Option) or param.is_flag or param.name in {"help"}:
            continue
        assert param.envvar and param.show_envvar, param.name
        assert f"env var: {param.envvar}" in " ".join(result.stdout.split()), param.envvar
        assert f"`{param.envvar}`" in docs, param.envvar
    for env in ("MANET_DATABASE_URL", "MANET_HOME", "MANET_DEVICE", "MANET_LOAD_PLUGINS", "MANET_EAST_MODEL"):
        assert env in result.stdout


def test_listing_search_and_eval_commands_take_json() -> None:
    commands = leaf_commands()
    assert {"plugins list", "models list", "search", "eval", "status"} <= set(commands)
    missing = sorted(path for path, command in commands.items()
                     if "--json" not in option_names(command) and path not in WITHOUT_JSON)
    assert not missing, f"add --json (JSON_OPTION) to: {missing}, or list them in docs/cli.md and WITHOUT_JSON"
    assert WITHOUT_JSON <= set(commands)


def test_destructive_commands_take_yes_and_are_documented() -> None:
    commands = leaf_commands()
    docs = DOCS.read_text()
    for path in DESTRUCTIVE:
        assert "--yes" in option_names(commands[path]), path
        assert f"`manet {path}" in docs, path


def test_unconfirmed_delete_changes_nothing(populated, run) -> None:
    populated.create_model("doomed", pooling="mac", backbone="resnet18", weights="none", image_size=64)
    result = run("models", "delete", "doomed")  # no terminal: nothing answers the question
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: not confirmed, nothing was changed; answer y at the prompt or pass --yes")
    assert "doomed" in [row["name"] for row in json.loads(run("models", "list", "--json").output)]
    assert run("models", "delete", "doomed", "--yes").exit_code == 0
    assert "doomed" not in [row["name"] for row in json.loads(run("models", "list", "--json").output)]


def test_exit_codes(run) -> None:
    assert run("models", "list", "--json").exit_code == 0
    assert run("search", "--model", "tiny", "--no-such-option").exit_code == 2
    result = run("search", "--image-id", "1", "--model", "no-such-model")
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert len(result.output.strip().splitlines()) == 1


def test_global_options_reach_the_code_that_reads_the_environment(populated, run, tmp_path: Path) -> None:
    before = dict(os.environ)
    result = run("--load-plugins", "", "plugins", "list", "--json")
    assert result.exit_code == 0
    assert {row["distribution"] for row in json.loads(result.output)} == {"manet-retrieval"}
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "photo.png")
    result = run("--max-pixels", "100", "search", str(tmp_path / "photo.png"), "--model", "tiny")
    assert result.exit_code == 1 and "MANET_MAX_PIXELS" in result.output, result.output
    assert run("search", str(tmp_path / "photo.png"), "--model", "tiny").exit_code == 0
    assert dict(os.environ) == before  # exported for the invocation only


def test_shell_completion_script() -> None:
    env = {**os.environ, "_MANET_COMPLETE": "bash_source"}
    result = subprocess.run([sys.executable, "-m", "manet.cli"], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "_MANET_COMPLETE=bash_complete" in result.stdout
    assert "_MANET_COMPLETE=bash_source manet" in DOCS.read_text()


def test_index_build_progress_bar_only_when_asked(populated, capsys) -> None:
    populated.progress = True
    try:
        populated.build_index("tiny")
    finally:
        populated.progress = False
    err = capsys.readouterr().err
    assert "index tiny" in err and "100%" in err
    populated.build_index("tiny")
    populated.evaluate("tiny")
    assert capsys.readouterr().err == ""
