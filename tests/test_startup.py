"""Start-up cost: the command line and the client import neither torch, scipy nor Ray until a
command that needs them runs (`volume --version` and `--help` return at once)."""

import subprocess
import sys

from volume import __version__

HEAVY = ("torch", "ray", "scipy")

_PROBE = ("import sys; {code}; "
          "print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")


def _heavy_after(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(code=code, heavy=HEAVY)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_client_imports_no_ray_torch_scipy():
    assert _heavy_after("import volume.client") == "[]"


def test_cli_parser_and_version_import_nothing_heavy():
    # building the whole parser registers every subcommand: none may import a heavy module
    assert _heavy_after("from volume.cli import build_parser; build_parser()") == "[]"
    code = "from volume.cli import main\ntry:\n main(['--version'])\nexcept SystemExit: pass"
    out = subprocess.run([sys.executable, "-c", code + "\n" + _PROBE.format(code="pass", heavy=HEAVY)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines() == [f"volume {__version__}", "[]"]
