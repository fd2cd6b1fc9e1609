#!/usr/bin/env bash
# Installs what the smacv2 env family (envs/smacv2.py, conf/env/smacv2_*.yaml) needs on a Linux machine:
#   1. StarCraft II 4.10 for Linux (Blizzard's headless build) into --dir (default ~/StarCraftII),
#   2. the SMAC and SMACv2 maps into <dir>/Maps/SMAC_Maps,
#   3. smacv2 from its public git repository, with pysc2 and this project, into a virtualenv.
# It ends by printing the `export SC2PATH=...` line to run. `--help` lists the options.
set -euo pipefail

SC2_URL="http://blzdistsc2-a.akamaihd.net/Linux/SC2.4.10.zip"
LICENSE_URL="http://blzdistsc2-a.akamaihd.net/AI_AND_MACHINE_LEARNING_LICENSE.html"
# Typing this password into unzip is how Blizzard's license is accepted (github.com/Blizzard/s2client-proto).
EULA_PASSWORD="iagreetotheeula"
SMAC_MAPS_URL="https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"
SMACV2_MAPS_URL="https://github.com/oxwhirl/smacv2/releases/download/maps/SMAC_Maps.zip"
SMACV2_GIT="https://github.com/oxwhirl/smacv2.git"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

SC2_DIR="${HOME}/StarCraftII"
ACCEPT_EULA=0
VENV="${REPO_ROOT}/.venv-sc2"
PYTHON="python3.10"
TORCH_VERSION="2.13.0"
SMACV2_REF="main"
PROTOBUF_WORKAROUND=0
DO_GAME=1
DO_MAPS=1
DO_PYTHON=1

usage() {
    cat <<EOF
Usage: scripts/install_sc2.sh [options]

Installs StarCraft II 4.10 for Linux, the SMAC + SMACv2 maps and smacv2 for CommFormer's smacv2 envs.
Needs curl and unzip, about 4 GB of download and 10 GB of free disk space for the game.

StarCraft II is licensed by Blizzard under the AI and Machine Learning License:
  ${LICENSE_URL}
Unpacking the game uses the password '${EULA_PASSWORD}', which means you accept that license. The script asks
for your agreement, or takes it from --accept-eula; it never accepts on its own.

Options:
  --dir DIR              where StarCraft II goes; becomes SC2PATH (default: ~/StarCraftII)
  --accept-eula          accept the Blizzard AI and Machine Learning License without being asked
  --venv DIR             virtualenv for smacv2 + this project, created when missing
                         (default: .venv-sc2 in the repository root)
  --python EXE           interpreter for a new virtualenv (default: python3.10: this project needs >= 3.10, and
                         protobuf < 3.21 has compiled wheels only up to 3.10; newer Pythons run it pure-Python)
  --torch VERSION        torch version for a new virtualenv (default: ${TORCH_VERSION})
  --smacv2-ref REF       git branch, tag or commit of ${SMACV2_GIT} (default: ${SMACV2_REF})
  --protobuf-workaround  keep the virtualenv's protobuf (e.g. the project's .venv on Python 3.11, whose wandb
                         needs protobuf >= 5) instead of installing protobuf < 3.21 for pysc2; pysc2 then only
                         imports with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (pure-Python protobuf, slower)
  --skip-game            do not install StarCraft II
  --skip-maps            do not install the maps
  --skip-python          do not touch any virtualenv
  -h, --help             show this help and exit

Without --protobuf-workaround the virtualenv gets smacv2's pin protobuf < 3.21, and pip picks a wandb release
that accepts it (do not install it with -c constraints.txt, whose wandb needs protobuf >= 5).

Afterwards:
  export SC2PATH=<DIR>
  . <VENV>/bin/activate
  python scripts/train.py env=smacv2_protoss_5_vs_5
EOF
}

die() {
    echo "install_sc2.sh: $*" >&2
    exit 2
}

say() {
    echo ">> $*"
}

need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not installed"
    done
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; SC2_DIR="$2"; shift 2 ;;
        --dir=*) SC2_DIR="${1#*=}"; shift ;;
        --accept-eula) ACCEPT_EULA=1; shift ;;
        --venv) [[ $# -ge 2 ]] || die "--venv needs a value"; VENV="$2"; shift 2 ;;
        --venv=*) VENV="${1#*=}"; shift ;;
        --python) [[ $# -ge 2 ]] || die "--python needs a value"; PYTHON="$2"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --torch) [[ $# -ge 2 ]] || die "--torch needs a value"; TORCH_VERSION="$2"; shift 2 ;;
        --torch=*) TORCH_VERSION="${1#*=}"; shift ;;
        --smacv2-ref) [[ $# -ge 2 ]] || die "--smacv2-ref needs a value"; SMACV2_REF="$2"; shift 2 ;;
        --smacv2-ref=*) SMACV2_REF="${1#*=}"; shift ;;
        --protobuf-workaround) PROTOBUF_WORKAROUND=1; shift ;;
        --skip-game) DO_GAME=0; shift ;;
        --skip-maps) DO_MAPS=0; shift ;;
        --skip-python) DO_PYTHON=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[[ -n "$SC2_DIR" ]] || die "--dir must not be empty"
[[ -n "$TORCH_VERSION" ]] || die "--torch must not be empty (an unpinned torch may pull a multi-GB build)"
mkdir -p "$(dirname "$SC2_DIR")"
SC2_DIR="$(cd "$(dirname "$SC2_DIR")" && pwd)/$(basename "$SC2_DIR")"

STAGE=""
cleanup() {
    if [[ -n "$STAGE" && -d "$STAGE" ]]; then
        rm -rf "$STAGE"
    fi
}
trap cleanup EXIT

has_game() {
    compgen -G "$SC2_DIR/Versions/Base*/SC2_x64" >/dev/null
}

accept_eula() {
    if [[ "$ACCEPT_EULA" -eq 1 ]]; then
        say "License accepted with --accept-eula: ${LICENSE_URL}"
        return
    fi
    if [[ ! -t 0 ]]; then
        die "StarCraft II needs the Blizzard AI and Machine Learning License accepted (${LICENSE_URL}):" \
            "pass --accept-eula (or --skip-game)"
    fi
    echo "StarCraft II is licensed under the Blizzard AI and Machine Learning License:"
    echo "  ${LICENSE_URL}"
    local answer
    read -r -p "Type 'yes' to accept it and install StarCraft II: " answer
    [[ "$answer" == "yes" ]] || die "license not accepted; nothing installed"
}

fetch() {  # fetch URL FILE: download to FILE.part, then rename (a finished FILE is reused)
    if [[ -s "$2" ]]; then
        say "Using the downloaded $2"
        return
    fi
    say "Downloading $1"
    curl -fL --retry 3 --retry-delay 5 -o "$2.part" "$1"
    mv "$2.part" "$2"
}

install_game() {
    if has_game; then
        say "StarCraft II already in $SC2_DIR (skipping; remove $SC2_DIR/Versions to reinstall)"
        return
    fi
    need curl unzip
    local zip
    zip="$(dirname "$SC2_DIR")/SC2.4.10.zip"
    fetch "$SC2_URL" "$zip"
    STAGE="$(mktemp -d "$(dirname "$SC2_DIR")/.sc2-unpack.XXXXXX")"
    say "Unpacking StarCraft II (the password accepts the license)"
    unzip -q -P "$EULA_PASSWORD" "$zip" -d "$STAGE"
    [[ -d "$STAGE/StarCraftII" ]] || die "$zip holds no StarCraftII folder"
    mkdir -p "$SC2_DIR"
    local entry
    for entry in "$STAGE/StarCraftII"/* "$STAGE/StarCraftII"/.[!.]*; do
        [[ -e "$entry" ]] || continue
        if [[ -e "$SC2_DIR/$(basename "$entry")" ]]; then
            cp -a "$entry/." "$SC2_DIR/$(basename "$entry")/"
        else
            mv "$entry" "$SC2_DIR/"
        fi
    done
    rm -rf "$STAGE"
    STAGE=""
    has_game || die "no Versions/Base*/SC2_x64 under $SC2_DIR after unpacking $zip"
    rm -f "$zip"
    say "StarCraft II 4.10 installed in $SC2_DIR"
}

install_maps() {
    need curl unzip
    local maps="$SC2_DIR/Maps/SMAC_Maps" url zip n
    mkdir -p "$maps"
    STAGE="$(mktemp -d)"
    # SMAC (classic maps) first, then SMACv2 (32x32_flat for the 10gen_<race> scenarios), which wins on a clash.
    for url in "$SMAC_MAPS_URL" "$SMACV2_MAPS_URL"; do
        zip="$STAGE/maps.zip"
        rm -rf "$STAGE/unpacked" "$zip"
        fetch "$url" "$zip"
        unzip -q -o "$zip" -d "$STAGE/unpacked"
        n=0
        while IFS= read -r -d '' map; do
            mv -f "$map" "$maps/"
            n=$((n + 1))
        done < <(find "$STAGE/unpacked" -name '*.SC2Map' -type f -print0)
        [[ "$n" -gt 0 ]] || die "no .SC2Map files in $url"
        say "$n maps from $url -> $maps"
    done
    rm -rf "$STAGE"
    STAGE=""
    [[ -f "$maps/32x32_flat.SC2Map" ]] || die "32x32_flat.SC2Map (the SMACv2 scenarios' map) missing in $maps"
}

install_python() {
    need git
    local py="$VENV/bin/python" version
    if [[ ! -x "$py" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found: install Python 3.10 or pass --python"
        say "Creating the virtualenv $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
        "$py" -m pip install --upgrade pip
        "$py" -m pip install "torch==${TORCH_VERSION}"
    fi
    version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [[ "$version" != "3.10" ]]; then
        echo "warning: $VENV has Python $version: protobuf for pysc2 will run pure-Python (slower than on 3.10)" >&2
    fi
    if [[ "$PROTOBUF_WORKAROUND" -eq 0 ]]; then
        say "Installing smacv2 (${SMACV2_REF}) with protobuf < 3.21, and this project, into $VENV"
        "$py" -m pip install "smacv2 @ git+${SMACV2_GIT}@${SMACV2_REF}"
        # numpy >= 2: smacv2 uses np.bool, which numpy 1.24-1.26 lack
        "$py" -m pip install -e "$REPO_ROOT" "protobuf<3.21" "numpy>=2"
        if "$py" -c 'import pysc2, smacv2.env' >/dev/null 2>&1; then
            say "smacv2 imports in $VENV"
            return
        fi
        die "smacv2 does not import in $VENV; see the error of: $py -c 'import smacv2.env'"
    fi
    local protobuf pins
    protobuf="$("$py" -c 'from importlib.metadata import version; print(version("protobuf"))' 2>/dev/null || true)"
    pins="$(mktemp)"
    if [[ -n "$protobuf" ]]; then
        echo "protobuf==${protobuf}" >"$pins"  # pip fails rather than downgrading protobuf under wandb
    fi
    say "Installing smacv2 (${SMACV2_REF}) into $VENV, keeping protobuf ${protobuf:-as pip chooses}"
    "$py" -m pip install --no-deps "smacv2 @ git+${SMACV2_GIT}@${SMACV2_REF}"
    "$py" -m pip install -c "$pins" "pysc2>=3.0.0" "s2clientprotocol>=4.10.1.75800.0" "absl-py>=0.1.0" "pygame>=2.0.0"
    if ! "$py" -c 'import commformer' >/dev/null 2>&1; then
        "$py" -m pip install -c "$pins" -e "$REPO_ROOT"
    fi
    rm -f "$pins"
    if PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "$py" -c 'import pysc2, smacv2.env' >/dev/null 2>&1; then
        say "smacv2 imports in $VENV with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python"
        return
    fi
    die "smacv2 does not import in $VENV; see: PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python $py -c 'import smacv2.env'"
}

if [[ "$DO_GAME" -eq 1 ]]; then
    accept_eula  # before anything is downloaded or created
    install_game
fi
if [[ "$DO_MAPS" -eq 1 ]]; then
    install_maps
fi
if [[ "$DO_PYTHON" -eq 1 ]]; then
    install_python
fi

echo
echo "Done. To train on SMACv2 (needs these exports in every shell):"
if [[ "$DO_PYTHON" -eq 1 ]]; then
    printf '  . %q/bin/activate\n' "$VENV"
    if [[ "$PROTOBUF_WORKAROUND" -eq 1 ]]; then
        echo "  export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python"
    fi
fi
echo "  python scripts/train.py env=smacv2_protoss_5_vs_5"
printf 'export SC2PATH=%q\n' "$SC2_DIR"
