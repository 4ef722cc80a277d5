"""Import a ``bench/*.py`` script as a module for its tests (bench/ is scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> Iterator[ModuleType]:
    """Yield ``bench/<name>.py`` loaded as module ``bench_<name>``; registered in ``sys.modules``
    while in use (dataclasses look their module up while the file executes), removed after."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
