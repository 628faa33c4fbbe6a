"""The wheels that a bare, offline GPU machine lacks for the GPU check (benchmarks/gpu_check.py), in one archive.

    python benchmarks/gpu_bundle.py -o .gpu_bundle                      # for the lent GPU machines (Python 3.12)
    python benchmarks/gpu_bundle.py -o /tmp/bundle --python-version 3.11  # to try it on this machine

Such a machine has torch, timm, numpy, scipy, scikit-image, scikit-learn, pandas and matplotlib (``IMAGE``),
nothing of nnU-Net's stack, no network, and takes at most 64 MiB per run, this repository included. The
bundle is what the check's imports need beyond ``IMAGE``: the requirements of ``ROOTS``, followed through the
installed packages' metadata, less what ``IMAGE`` brings and less what nnU-Net declares but the check never
imports (``NEVER_IMPORTED``; the dry run from the bundle, tests/test_gpu_check.py, is what shows it). Every
wheel is the version installed here, the one the tests ran with, plus this project's own wheel.

SimpleITK's wheel alone is 53 MB (deflate), and nnU-Net imports it, cc3d, blosc2 and nibabel before any
command runs: as wheels, the commands part would not fit one run beside the rest. So the wheels are stored
uncompressed inside one xz archive (SimpleITK's library: 53 MB deflated, 29 MB in xz), members that nothing
reads at run time (static libraries, headers, test suites) left out: every part of the check in one run.
OUT/README.md holds the device command.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from typing import Dict, Iterable, List, Set

from packaging.requirements import Requirement

ROOTS = ["nnunetv2", "dynamic-network-architectures", "batchgenerators", "batchgeneratorsv2", "acvl-utils",
         "blosc2", "nibabel", "tqdm"]
IMAGE = ["torch", "torchvision", "timm", "numpy", "scipy", "scikit-image", "scikit-learn", "pandas", "matplotlib"]
# declared by nnU-Net and its helpers, never imported on the check's paths. Not these, found by the dry run from
# the bundle: blosc2's httpx (nnUNetv2_plan_and_preprocess), pydantic and rich, nnU-Net's seaborn (nnUNetv2_train)
NEVER_IMPORTED = {"graphviz", "imagecodecs", "tifffile", "yacs", "requests", "unittest2", "future"}
READ_ONLY_BY_THE_COMMANDS = ["SimpleITK", "connected-components-3d"]  # nnU-Net imports them on every command
LIMIT_MIB = 60
# members of the large wheels that nothing reads at run time: static libraries, C headers, the test suites and
# their data (nibabel's alone is 6 MB)
UNUSED_AT_RUN_TIME = re.compile(r"(^|/)tests?/|\.a$|(^|/)include/|\.h$")
SLIMMED_ABOVE_MIB = 1
ARCHIVE = "bundle.tar.xz"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(name: str, python_version: str) -> List[str]:
    environment = {"python_version": python_version, "python_full_version": python_version + ".0", "extra": ""}
    needed = []
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            needed.append(canonical(requirement.name))
    return needed


def closure(roots: Iterable[str], python_version: str, stop: Set[str] = frozenset()) -> Set[str]:
    seen, todo = set(), [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        todo += requirements(name, python_version)
    return seen


def bundle_packages(python_version: str) -> Dict[str, str]:
    """name -> version installed here, for the packages the check needs beyond the GPU image."""
    image = closure(IMAGE, python_version)
    needed = closure(ROOTS, python_version, stop=image | NEVER_IMPORTED)
    return {name: metadata.version(name) for name in sorted(needed)}


def download(names: Dict[str, str], folder: str, python_version: str) -> None:
    """A wheel per package for the target Python; packages published only as source (acvl-utils,
    batchgenerators...) are built into a wheel here, which must then be pure Python."""
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + [
        "--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
    pip = [sys.executable, "-m", "pip"]
    for name, version in names.items():
        binary = subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:",
                                 f"--python-version={python_version}", "--implementation=cp", *platforms, "-d",
                                 folder, f"{name}=={version}"], capture_output=True, text=True)
        if binary.returncode == 0:
            continue
        before = set(os.listdir(folder))
        subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", folder, f"{name}=={version}"], check=True,
                       capture_output=True)
        built = set(os.listdir(folder)) - before
        if not all(w.endswith("-py3-none-any.whl") for w in built):
            raise RuntimeError(f"{name} {version} has no wheel for Python {python_version} and is not pure Python "
                               f"(built {sorted(built)}): build it on a machine with that Python")


def store(wheel: str) -> None:
    """Rewrite ``wheel`` uncompressed (xz compresses the archive), and, above ``SLIMMED_ABOVE_MIB``, without the
    members ``UNUSED_AT_RUN_TIME`` matches (and their RECORD lines)."""
    large = os.path.getsize(wheel) > SLIMMED_ABOVE_MIB * 2 ** 20
    with zipfile.ZipFile(wheel) as source:
        kept = [m for m in source.infolist() if not (large and UNUSED_AT_RUN_TIME.search(m.filename))]
        dropped = {m.filename for m in source.infolist()} - {m.filename for m in kept}
        slimmed = wheel + ".stored"
        with zipfile.ZipFile(slimmed, "w", zipfile.ZIP_STORED) as target:
            for member in kept:
                data = source.read(member)
                if member.filename.endswith(".dist-info/RECORD"):
                    data = "".join(line for line in data.decode().splitlines(keepends=True)
                                   if line.split(",")[0] not in dropped).encode()
                member.compress_type = zipfile.ZIP_STORED
                target.writestr(member, data)
    os.replace(slimmed, wheel)


def project_wheel(folder: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as build:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", build, root], check=True)
        for wheel in glob.glob(os.path.join(build, "*.whl")):
            shutil.copy(wheel, folder)




DEVICE_README = """# GPU check bundle ({python})

{size}

The device command (carry `.gpu_bundle`; about 10 minutes: 9 of parts, 1 to unpack and install):

    mkdir -p /tmp/wheels && tar -xJf .gpu_bundle/{archive} -C /tmp/wheels && \\
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl && \\
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 && \\
    python3 benchmarks/gpu_check.py -o $OUT
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help=f"folder for {ARCHIVE} and README.md")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    args = parser.parse_args()
    packages = bundle_packages(args.python_version)
    packages.update({canonical(name): metadata.version(name) for name in READ_ONLY_BY_THE_COMMANDS})
    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        download(packages, folder, args.python_version)
        project_wheel(folder)
        wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
        for wheel in wheels:
            store(wheel)
        archive = os.path.join(args.output, ARCHIVE)
        with tarfile.open(archive + ".partial", "w:xz", preset=6) as tar:
            for wheel in wheels:
                tar.add(wheel, arcname=os.path.basename(wheel))
        os.replace(archive + ".partial", archive)
    mib = os.path.getsize(archive) / 2 ** 20
    size = (f"{ARCHIVE}: {mib:.1f} MiB, {len(wheels)} wheels: "
            f"{', '.join(os.path.basename(w) for w in wheels)}")
    print(size)
    with open(os.path.join(args.output, "README.md"), "w") as f:
        f.write(DEVICE_README.format(python=f"Python {args.python_version}", size=size, archive=ARCHIVE))
    if mib > LIMIT_MIB:
        print(f"error: {archive} is {mib:.1f} MiB, over the {LIMIT_MIB} MiB a run may carry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
