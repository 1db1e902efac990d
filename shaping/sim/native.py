"""Build a C++ source into a shared library once per machine, with no lock that a killed build leaves behind.

Why not torch's C++ extension loader (what the CPU kernel used before): it serializes builders
with a lock file and waits for that file to disappear without a time limit, so a build killed midway
(a simulation's worker stopped, a run's timeout, SIGKILL) leaves every later process waiting forever.
It also needs ninja, for one source file. Here each builder compiles to a file of its own and renames
it into place atomically: builders that race do the work twice, and none ever waits on another.

The cache key covers the source, the compiler command, the compiler's version and, because the
flags may include `-march=native`, the CPU's model and feature flags: a cache shared between
machines (a home directory on NFS) never hands one CPU's build to another.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class BuildError(RuntimeError):
    """The library could not be built: no compiler, or the compiler failed (the message says which)."""


def default_cache_dir() -> Path:
    """`$FEDSHAPE_CACHE_DIR`, else `$XDG_CACHE_HOME/fedshape`, else `~/.cache/fedshape`, plus `native/`."""
    root = os.environ.get("FEDSHAPE_CACHE_DIR")
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedshape")
    return Path(root) / "native"


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first processor's model name and feature flags (what `-march=native` compiles for)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")  # x86 and ARM spell them differently
    keep: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in wanted and key not in keep:
            keep[key] = value.strip()
    return "\n".join(f"{k}: {v}" for k, v in sorted(keep.items()))


def _compiler_version(cxx: str, run: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    try:
        return run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError as err:  # not executable after all
        raise BuildError(f"the C++ compiler {cxx!r} could not run: {err}") from err


def _remove_stale_scratch(directory: Path, name: str, older_than_s: float = 3600.0) -> None:
    """Remove what builds killed midway left (a live build's scratch file is minutes old at most)."""
    for path in directory.glob(f".{name}-*.so.tmp"):
        try:
            if time.time() - path.stat().st_mtime > older_than_s:
                path.unlink()
        except OSError:  # another process removed it first
            pass


def source_file(name: str, text: str, *, cache_dir: Path | None = None) -> Path:
    """Write a C++ source held in a string to `cache_dir` (once per content) and return the file's path.

    The path depends only on the content, so build_library's cache key (which includes the path) stays
    the same from run to run. Written atomically, like the libraries: racing writers write the same bytes.
    """
    data = text.encode()
    directory = cache_dir or default_cache_dir()
    path = directory / f"{name}-{hashlib.sha256(data).hexdigest()[:20]}.cpp"
    if path.is_file() and path.read_bytes() == data:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{name}-", suffix=".cpp.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return path


def build_library(
    name: str,
    source: Path,
    flags: Sequence[str],
    ldflags: Sequence[str] = (),
    *,
    cache_dir: Path | None = None,
    cxx: str | None = None,
    cpu: Callable[[], str] = cpu_identity,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    timeout_s: float = 600.0,
) -> Path:
    """Return the path of `source` built with `flags` as a shared library, building it if not cached.

    `cxx` defaults to `$CXX`, else the first of c++, g++ and clang++ on the PATH. Raises BuildError
    naming what to install when there is no compiler, with the compiler's last lines when it fails.
    """
    cxx = cxx or os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None or shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler found ({cxx or 'c++, g++ or clang++'} is not on the PATH); "
                         "install one (Debian: apt-get install g++)")
    command = [cxx, *flags, "-shared", "-fPIC", str(source), *ldflags]
    digest = hashlib.sha256()
    for part in (source.read_bytes(), "\0".join(command).encode(), _compiler_version(cxx, run).encode(),
                 cpu().encode()):
        digest.update(hashlib.sha256(part).digest())
    directory = cache_dir or default_cache_dir()
    target = directory / f"{name}-{digest.hexdigest()[:20]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(directory, name)
    fd, scratch = tempfile.mkstemp(prefix=f".{name}-", suffix=".so.tmp", dir=directory)
    os.close(fd)
    try:
        try:
            proc = run([*command, "-o", scratch], capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as err:
            raise BuildError(f"building {source.name} took longer than {timeout_s:.0f} s") from err
        if proc.returncode != 0:
            # A compiler's complaint can run to pages: its last lines hold the error.
            detail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-12:])
            said = f":\n{detail}" if detail else ""
            raise BuildError(f"{cxx} failed to build {source.name} (exit {proc.returncode}){said}")
        os.replace(scratch, target)  # atomic: a reader sees no library or a whole one
    finally:
        Path(scratch).unlink(missing_ok=True)
    return target
