"""Building C++ into a cached shared library: once per source and machine, never waiting on another build."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shaping.sim import native

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler on this machine")

ADD = 'extern "C" int add(int a, int b) { return a + b + OFFSET; }\n'


def _source(tmp_path: Path, text: str = ADD) -> Path:
    path = tmp_path / "add.cpp"
    path.write_text(text)
    return path


class _CountingRun:
    """subprocess.run, counting the compiles (calls that write an output file)."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if "-o" in argv:
            self.compiles += 1
        return subprocess.run(argv, **kwargs)


@needs_compiler
def test_builds_once_then_serves_the_cached_library(tmp_path) -> None:
    run = _CountingRun()
    first = native.build_library("add", _source(tmp_path), ["-O1", "-DOFFSET=1"], cache_dir=tmp_path / "c", run=run)
    again = native.build_library("add", _source(tmp_path), ["-O1", "-DOFFSET=1"], cache_dir=tmp_path / "c", run=run)
    assert first == again and run.compiles == 1
    assert ctypes.CDLL(str(first)).add(2, 3) == 6
    # Another flag or another source is another library.
    other = native.build_library("add", _source(tmp_path), ["-O1", "-DOFFSET=2"], cache_dir=tmp_path / "c", run=run)
    assert other != first and ctypes.CDLL(str(other)).add(2, 3) == 7
    edited = native.build_library("add", _source(tmp_path, ADD + "// edited\n"), ["-O1", "-DOFFSET=1"],
                                  cache_dir=tmp_path / "c", run=run)
    assert edited not in (first, other) and run.compiles == 3


@needs_compiler
def test_another_cpu_gets_its_own_build(tmp_path) -> None:
    src, flags = _source(tmp_path), ["-DOFFSET=0"]
    a = native.build_library("add", src, flags, cache_dir=tmp_path, cpu=lambda: "model name: A\nflags: avx2")
    b = native.build_library("add", src, flags, cache_dir=tmp_path, cpu=lambda: "model name: B\nflags: sse2")
    assert a != b


def test_cpu_identity_reads_model_and_flags(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2\n\n"
                    "processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu avx2\n")
    assert native.cpu_identity(info) == "flags: fpu avx2\nmodel name: Some CPU"
    assert native.cpu_identity(tmp_path / "missing")  # falls back to the platform's name


def test_no_compiler_says_what_to_install(tmp_path) -> None:
    with pytest.raises(native.BuildError, match=r"no C\+\+ compiler found.*apt-get install g\+\+"):
        native.build_library("add", _source(tmp_path), [], cache_dir=tmp_path, cxx="no-such-compiler-here")


@needs_compiler
def test_a_compile_error_is_reported_and_leaves_nothing_behind(tmp_path) -> None:
    src = _source(tmp_path, 'extern "C" int add(int a) { return a + ; }\n')
    cache = tmp_path / "c"
    with pytest.raises(native.BuildError, match=r"failed to build add\.cpp(?s:.*)error"):
        native.build_library("add", src, [], cache_dir=cache)
    assert list(cache.iterdir()) == []


@needs_compiler
def test_a_killed_build_blocks_no_one_and_its_leftovers_are_swept(tmp_path) -> None:
    # torch's loader left a lock file that made every later build wait forever; here a build killed
    # midway leaves only a scratch file, which later builds ignore and, once it is old, remove.
    cache = tmp_path / "c"
    cache.mkdir()
    old, fresh = cache / ".add-killed.so.tmp", cache / ".add-running.so.tmp"
    old.write_bytes(b"half a library")
    fresh.write_bytes(b"a build in progress")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    started = time.monotonic()
    path = native.build_library("add", _source(tmp_path), ["-DOFFSET=0"], cache_dir=cache)
    assert time.monotonic() - started < 60
    assert ctypes.CDLL(str(path)).add(1, 1) == 2
    assert not old.exists() and fresh.exists()


@needs_compiler
def test_builders_racing_each_other_all_get_a_whole_library(tmp_path) -> None:
    src, cache = _source(tmp_path), tmp_path / "c"
    paths: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            paths.append(native.build_library("add", src, ["-DOFFSET=0"], cache_dir=cache))
        except BaseException as err:  # handed to the test's thread
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(paths) == 4 and len(set(paths)) == 1
    assert ctypes.CDLL(str(paths[0])).add(20, 22) == 42
    assert [p.name for p in cache.iterdir()] == [paths[0].name]  # no scratch files left


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FEDSHAPE_CACHE_DIR", str(tmp_path / "f"))
    assert native.default_cache_dir() == tmp_path / "f" / "native"
    monkeypatch.delenv("FEDSHAPE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert native.default_cache_dir() == tmp_path / "x" / "fedshape" / "native"


def test_a_source_held_in_a_string_gets_one_file_per_content(tmp_path):
    first = native.source_file("k", "int f() { return 1; }\n", cache_dir=tmp_path)
    assert first.read_text() == "int f() { return 1; }\n"
    assert native.source_file("k", "int f() { return 1; }\n", cache_dir=tmp_path) == first  # the same path
    other = native.source_file("k", "int f() { return 2; }\n", cache_dir=tmp_path)
    assert other != first and first.read_text() == "int f() { return 1; }\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no scratch left
