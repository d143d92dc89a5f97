"""Run the project's `all` workflow on a tiny slice in a sub-folder (the `smoke` workflow).

Copies project.yml and scripts/ into SMOKE_DIR and runs `spacy project run all SMOKE_DIR` there with
the `--vars.*` options given, so the smoke run has its own configs/, corpus/, pretrain/, training/,
metrics/ and project.lock and never touches the full run's outputs. The assets folder is passed on
as an absolute path, so the demo corpora are fetched once and shared.

    python scripts/smoke.py smoke --assets assets --vars.textcat_steps 8
"""

import shutil
import subprocess
import sys
from pathlib import Path

import typer

PROJECT_DIR = Path(__file__).resolve().parent.parent

app = typer.Typer(add_completion=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def main(
    ctx: typer.Context,
    smoke_dir: Path = typer.Argument(..., help="Folder for the smoke run, relative to the project"),
    assets: Path = typer.Option(..., "--assets", help="Folder the corpora are fetched into (vars.assets)"),
) -> None:
    """Copy the project into SMOKE_DIR and run its `all` workflow there; extra --vars.NAME VALUE
    options are passed on."""
    extra = list(ctx.args)
    if any(not arg.startswith("--vars.") for arg in extra[::2]) or len(extra) % 2:
        typer.secho(
            f"Expected pairs of --vars.NAME VALUE after the options, got {extra}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2)
    target = PROJECT_DIR / smoke_dir
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT_DIR / "project.yml", target / "project.yml")
    shutil.copytree(
        PROJECT_DIR / "scripts",
        target / "scripts",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    cmd = [
        sys.executable,
        "-m",
        "spacy",
        "project",
        "run",
        "all",
        str(target),
        "--vars.assets",
        str((PROJECT_DIR / assets).resolve()),
        *extra,
    ]
    typer.echo(f"Smoke run in {target}: {' '.join(cmd[1:])}")
    result = subprocess.run(cmd)
    if result.returncode != 0:
        typer.secho(
            f"The smoke run failed (exit code {result.returncode}); its outputs are in {target}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(result.returncode)


if __name__ == "__main__":
    app()
