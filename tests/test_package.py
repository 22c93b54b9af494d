"""`import ddpm` is cheap and complete: every subpackage is `ddpm.<name>` in a fresh interpreter, `dir(ddpm)`
lists them, and neither `import ddpm` nor `ddpm --help` imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ddpm


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_every_room_of_the_package_is_listed():
    src = Path(ddpm.__file__).resolve().parent
    rooms = {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    rooms |= {p.stem for p in src.glob("*.py") if p.stem != "__init__"}
    assert rooms == set(ddpm.SUBPACKAGES)
    assert set(ddpm.__all__) == set(ddpm.SUBPACKAGES) | {"sample", "invert", "__version__"}
    assert set(ddpm.__all__) <= set(dir(ddpm))


def test_each_subpackage_is_an_attribute_in_a_fresh_interpreter():
    # Bottom room first: no room imports one above it (tests/test_layers.py), so each attribute is asked
    # for before anything else could have imported that subpackage.
    code = (
        "import sys, ddpm\n"
        "assert 'torch' not in sys.modules\n"
        "for name in reversed(ddpm.SUBPACKAGES):\n"
        "    assert f'ddpm.{name}' not in sys.modules, name\n"
        "    assert getattr(ddpm, name).__name__ == f'ddpm.{name}'\n"
        "print(ddpm.sample.__module__, ddpm.invert.__module__)\n"
    )
    assert _python(code) == "ddpm.sampling.api ddpm.sampling.inversion"


def test_the_cli_help_does_not_import_torch():
    code = (
        "import sys\nfrom ddpm.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['train', '--help'])\nprint('torch' in sys.modules)\n"
    )
    assert _python(code).splitlines()[-1] == "False"


def test_an_unknown_attribute_is_an_attribute_error():
    try:
        ddpm.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("ddpm.no_such_thing did not raise")
