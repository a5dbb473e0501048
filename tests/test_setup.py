"""``scripts/setup`` on a checkout from nothing, on a machine without ``uv`` on PATH.

The machine of the bug report had uv only as a pip-installed module of the system
``python3`` (``python3 -m uv``): setup then ran ``python3 -m uv pip install`` for
Superset, which ignores ``VIRTUAL_ENV`` and wrote into that system interpreter.
Here a stand-in "system" Python (a virtual environment of its own, reached as
``python3`` through a wrapper on PATH) has uv as a module and no ``uv`` command,
and the test checks that setup builds both of the checkout's environments and
changes nothing in any interpreter outside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _site_packages(python: Path | str) -> Path:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return Path(out.strip())


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _our_uv() -> str:
    done = subprocess.run([str(ROOT / "scripts" / "uv-path")], capture_output=True, text=True)
    assert done.returncode == 0, "scripts/setup has run, so this checkout has a uv"
    return done.stdout.strip()


def test_setup_without_uv_on_path_installs_only_into_the_checkout(tmp_path):
    # the checkout: every file git tracks or would track, as in the working tree
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    checkout = tmp_path / "checkout"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)

    # the "system" python3: uv importable as a module, no uv command on PATH
    system = tmp_path / "system-python"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(system)], check=True)
    uv = _our_uv()
    version = subprocess.run([uv, "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(system / "bin" / "python"),
                    f"uv=={version}"], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{system / "bin" / "python"}" "$@"\n')
    wrapper.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"])
    assert shutil.which("uv", path=path) is None

    outside = {"system python3": _site_packages(system / "bin" / "python"),
               "base interpreter": _site_packages(base),
               "user site": Path.home() / ".local" / "lib" /
               f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"}
    before = {name: _listing(folder) for name, folder in outside.items()}

    # the machine's own settings (certificates, package indexes), with that PATH
    env = {**{k: v for k, v in os.environ.items()
              if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH")},
           "PATH": path, "MFY_SETUP_NO_APT": "1"}
    done = subprocess.run([str(checkout / "scripts" / "setup")], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"using {system / 'bin' / 'uv'}" in done.stderr  # the module's own binary

    after = {name: _listing(folder) for name, folder in outside.items()}
    for name in outside:
        assert after[name] == before[name], (name, after[name] ^ before[name])
    # both environments are the checkout's own, and whole
    assert (checkout / ".venv-superset" / "bin" / "superset").is_file()
    for python, module in ((checkout / ".venv" / "bin" / "python", "moviesforyou"),
                           (checkout / ".venv-superset" / "bin" / "python", "superset")):
        probe = subprocess.run([str(python), "-c", f"import {module}, sys; print(sys.prefix)"],
                               capture_output=True, text=True, env={**env, "PATH": path},
                               timeout=300)
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert Path(probe.stdout.strip()) == python.parent.parent
    # and it runs again as a no-op
    again = subprocess.run([str(checkout / "scripts" / "setup")], cwd=checkout, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "installing Superset" not in again.stderr
