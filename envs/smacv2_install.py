"""What SMACv2 needs outside Python, checked before anything starts: StarCraft II at $SC2PATH, the map, and the
smacv2 package (found without importing it). Every failure is envs.core.EnvUnavailableError with one line naming
what is missing and the fix (scripts/install_sc2.sh installs all three)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from envs.core import EnvUnavailableError

# Map file the 10gen_<race> capability scenarios play on (smacv2's map registry).
CAPABILITY_MAP_FILE = "32x32_flat"
# Prefix of smacv2's capability maps (they need a capability_config).
CAPABILITY_PREFIX = "10gen_"
# StarCraft II executables under $SC2PATH/Versions/Base<build>/ (Linux, macOS, Windows).
SC2_BINARIES = ("SC2_x64", "SC2.app", "SC2_x64.exe")
# The install script every unavailable-error message points to.
INSTALL_SCRIPT = "scripts/install_sc2.sh"


def map_file(map_name: str) -> str:
    """Name (without .SC2Map) of the map file smacv2 loads for `map_name`."""
    return CAPABILITY_MAP_FILE if map_name.startswith(CAPABILITY_PREFIX) else map_name


def check_sc2_game(sc2path: str | None) -> Path:
    """The StarCraft II folder $SC2PATH; EnvUnavailableError (one line: what is missing, and the fix) unless SC2PATH
    is set, is a directory and holds a binary under Versions/Base<build>/."""
    fix = (f"run {INSTALL_SCRIPT} (needs StarCraft II 4.10 for Linux) and "
           "export SC2PATH=<its --dir, default ~/StarCraftII>")
    if not sc2path:
        raise EnvUnavailableError(f"StarCraft II not found: SC2PATH is unset; {fix}")
    root = Path(sc2path).expanduser()
    if not root.is_dir():
        raise EnvUnavailableError(f"StarCraft II not found: SC2PATH={sc2path!r} is not a directory; {fix}")
    versions = root / "Versions"
    if not any((d / exe).exists() for d in versions.glob("Base*") for exe in SC2_BINARIES):
        raise EnvUnavailableError(
            f"StarCraft II binary not found under {versions} (expected Versions/Base<build>/SC2_x64); "
            f"run {INSTALL_SCRIPT} --dir {root} --accept-eula")
    return root


def check_sc2_install(map_name: str, sc2path: str | None) -> None:
    """Raise EnvUnavailableError (one line: what is missing, and the fix) unless StarCraft II and the map are there.

    Order: SC2PATH set and a directory, a binary under $SC2PATH/Versions (check_sc2_game), the map in
    $SC2PATH/Maps/SMAC_Maps.
    """
    root = check_sc2_game(sc2path)
    path = root / "Maps" / "SMAC_Maps" / f"{map_file(map_name)}.SC2Map"
    if not path.is_file():
        raise EnvUnavailableError(
            f"SMACv2 map not found: {path} (map_name={map_name!r}); run {INSTALL_SCRIPT} --dir {root} --skip-game")


def smacv2_installed() -> bool:
    """Whether the smacv2 package can be found (without importing it)."""
    return importlib.util.find_spec("smacv2") is not None


def check_smacv2_package() -> None:
    """Raise EnvUnavailableError unless the smacv2 package is installed."""
    if not smacv2_installed():
        raise EnvUnavailableError(
            "Python package smacv2 not importable: pip install the [smacv2] setup: see "
            f"{INSTALL_SCRIPT} (smacv2 from github.com/oxwhirl/smacv2, not PyPI's smac)")

