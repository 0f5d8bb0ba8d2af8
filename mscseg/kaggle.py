"""What ``notebooks/kaggle_run_all.ipynb`` does, as functions the notebook's cells call.

Kaggle mounts the attached datasets and models read-only under ``/kaggle/input`` and saves
``/kaggle/working`` (20 GB) as the notebook's output. This module finds the project (an
attached code dataset, copied to ``working/mscseg``, or an attached wheel), the semantic
dataset, a Cell Tracking Challenge Fluo-C2DL-MSC folder for Study B and the SAM checkpoint
(``model.pth`` on Kaggle Models, or the release's file name); decides what to install from
what the image already has (its TensorFlow and torch are kept, only ``tf-keras`` matching
its TensorFlow and the missing pure-Python packages are added, CUDA wheels are pinned as
they are); checks, each framework in a subprocess of its own, that TensorFlow and torch see
the GPU (``mscseg.kaggle_gpu``); writes the run's config; and copies the results, less
checkpoints and caches, into the output folder.

Only the standard library is imported at module level (``packaging`` inside functions), so
the notebook can import it before anything is installed. Two variables serve tests and dry
runs: ``MSCSEG_KAGGLE_RECORD`` (a file: install commands are appended to it instead of run)
and ``MSCSEG_KAGGLE_PACKAGES`` (a JSON file ``{"python": "3.12", "packages": {distribution:
version or null}}`` describing an image, read instead of this Python and its distributions).
"""
from __future__ import annotations

import configparser
import fnmatch
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import RunError

RECORD_ENV = "MSCSEG_KAGGLE_RECORD"
PACKAGES_ENV = "MSCSEG_KAGGLE_PACKAGES"
SEMANTIC_NAMES = ("msu-smooth-1-20", "msu-smooth*")
CTC_NAMES = ("fluo-c2dl-msc",)
SAM_RELEASE_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
SAM_CHECKPOINT_KEYS = (("instance", "sam", "checkpoint"), ("instance", "sam_finetune", "checkpoint"))
EXTRAS = ("keras", "torch")
KEPT = ("tensorflow", "tensorflow-cpu", "torch", "torchvision", "numpy", "keras", "jax", "jaxlib")
PINNED_PREFIXES = ("nvidia-", "tensorflow", "torch", "triton", "jax")
HEAVY = ("*.weights.h5", "*.optimizer.npz", "*.pth", "*.pt")
MAX_DEPTH = 7


class KaggleError(RunError):
    """A notebook stop: an input, install or GPU problem, in one line."""


# ---------------------------------------------------------------- finding things under /kaggle/input

def walk(root: str | Path, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of ``root``, sorted, hidden folders skipped, at most ``max_depth`` levels deep."""
    root = Path(root)
    base = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=True):
        path = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if len(path.parts) - base < max_depth else []
        yield path, dirs, sorted(files)


def prepare_code(found: str | Path, working: str | Path) -> Path:
    """The project to run from: ``working/mscseg``, copied from a code dataset's folder or unpacked from its zip.

    A code dataset is read-only (``pip install -e`` writes into the project), so it is copied,
    replacing an older copy. A zip holds the project under ``mscseg/`` (``git archive
    --prefix=mscseg/``). A wheel, a folder under ``working`` and a clone outside ``input/`` are used as they are.
    """
    found, working = Path(found), Path(working)
    if found.suffix == ".whl" or found.resolve().is_relative_to(working.resolve()) or (found.is_dir() and not _under_input(found)):
        return found
    target = working / "mscseg"
    if found.suffix == ".zip":
        with zipfile.ZipFile(found) as archive:
            members = [name for name in archive.namelist() if name.startswith("mscseg/")]
            if "mscseg/mscseg/kaggle.py" not in members:
                raise KaggleError(f"{found}: not a project archive (no mscseg/mscseg/kaggle.py); make it with git archive --prefix=mscseg/")
            shutil.rmtree(target, ignore_errors=True)
            archive.extractall(working, members)
    else:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(found, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".git", "results"))
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return target


def _under_input(path: Path) -> bool:
    return "input" in path.resolve().parts


def find_semantic(input_dir: str | Path) -> Path | None:
    """The folder of the semantic study's dataset: named ``msu-smooth-1-20`` (Kaggle's slug) or ``msu-smooth*``."""
    for pattern in SEMANTIC_NAMES:
        for folder, _, _ in walk(input_dir):
            if fnmatch.fnmatch(folder.name.lower(), pattern):
                return folder
    return None


def is_ctc(folder: Path) -> bool:
    """A Cell Tracking Challenge training folder: ``NN/`` beside ``NN_GT/SEG/``."""
    try:
        return any(child.is_dir() and child.name.isdigit() and (folder / f"{child.name}_GT" / "SEG").is_dir()
                   for child in folder.iterdir())
    except OSError:
        return False


def find_ctc(input_dir: str | Path) -> Path | None:
    """A CTC folder for Study B: one named ``Fluo-C2DL-MSC`` first, else the first CTC layout found."""
    input_dir = Path(input_dir)
    layouts = [folder for folder, _, _ in walk(input_dir) if is_ctc(folder)]
    named = [folder for folder in layouts if any(n in str(folder.relative_to(input_dir)).lower() for n in CTC_NAMES)]
    return (named or layouts or [None])[0]


def sam_variant_of(path: str | Path) -> str | None:
    """The SAM variant a checkpoint's file name or Kaggle Models path names (``vit-h`` -> ``vit_h``), or None."""
    match = re.search(r"vit[-_]?(h|l|b|tiny)(?![a-z])", str(path).lower())
    return f"vit_{match.group(1)}" if match else None


def find_sam(input_dir: str | Path, variant: str | None = None) -> Path | None:
    """A SAM checkpoint: the release's file (``sam_vit_h_4b8939.pth``) or Kaggle Models' ``model.pth`` under a SAM path.

    Files naming ``variant`` come first, then the other release files, then other ``model.pth``.
    """
    found = []
    input_dir = Path(input_dir)
    for folder, _, files in walk(input_dir):
        for name in files:
            path = folder / name
            release = name in SAM_RELEASE_FILES.values()
            where = str(path.relative_to(input_dir)).lower()
            kaggle_model = name == "model.pth" and re.search(r"(segment[-_]?anything|(^|[/_-])sam([/_-]|$))", where)
            if release or kaggle_model:
                found.append((sam_variant_of(where) != variant, not release, str(path), path))
    return min(found)[-1] if found else None


@dataclass
class Inputs:
    """What the run reads: None where nothing was found (or None was asked for)."""

    semantic: Path | None
    instance: Path | None
    sam: Path | None
    lines: list[str] = field(default_factory=list)


def _choose(given: Any, finder, what: str, hint: str, lines: list[str]) -> Path | None:
    if given is None:
        lines.append(f"{what}: None -> the preset's own")
        return None
    if given != "auto":
        path = Path(str(given)).expanduser()
        if not path.exists():
            raise KaggleError(f"{path}: {what} not found; {hint}")
        lines.append(f"{what}: {path} (given)")
        return path
    path = finder()
    lines.append(f"{what}: {path} (found)" if path else f"{what}: none found; {hint}; the preset's own is used")
    return path


def find_inputs(kaggle_root: str | Path, dataset: Any = "auto", instance_dataset: Any = "auto",
                sam_checkpoint: Any = "auto", sam_variant: str | None = "vit_h") -> Inputs:
    """Each input as given (a path, or None for the preset's own) or, for ``"auto"``, found under ``<kaggle_root>/input``."""
    input_dir = Path(kaggle_root) / "input"
    lines: list[str] = []
    semantic = _choose(dataset, lambda: find_semantic(input_dir), "semantic dataset",
                       "attach the dataset maximsolopov/msu-smooth-1-20 (Add Input) or set DATASET", lines)
    instance = _choose(instance_dataset, lambda: find_ctc(input_dir), "instance dataset (CTC)",
                       "attach a Fluo-C2DL-MSC training folder (01/, 01_GT/SEG/) or set INSTANCE_DATASET", lines)
    sam = _choose(sam_checkpoint, lambda: find_sam(input_dir, sam_variant), "SAM checkpoint",
                  "attach the model segment-anything (PyTorch, vit-h) or set SAM_CHECKPOINT", lines)
    return Inputs(semantic, instance, sam, lines)


# ---------------------------------------------------------------- the run's config

def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``base`` with ``override`` merged in key by key at every depth (``override`` wins; neither is changed)."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) else value
    return merged


def _set(mapping: dict, keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        mapping = mapping.setdefault(key, {})
    mapping[keys[-1]] = value


def notebook_config(base: str, name: str, inputs: Inputs, overrides: Mapping | None = None, gpus: int | None = None) -> dict:
    """The config mapping: ``base`` preset, the found inputs, the SAM file in every checkpoint setting, the device count
    of both studies' training steps (``gpus``: the notebook's ``GPUS``; None leaves the preset's), then ``overrides``."""
    config: dict = {"base": base, "name": name}
    if gpus is not None:
        config["semantic"] = {"devices": int(gpus)}
        config["instance"] = {"devices": int(gpus)}
    if inputs.semantic is not None:
        config.setdefault("semantic", {})["dataset"] = {"path": str(inputs.semantic)}
    if inputs.instance is not None:
        entry = {"path": str(inputs.instance)}
        if is_ctc(inputs.instance):
            entry["format"] = "ctc"
        config.setdefault("instance", {})["dataset"] = entry
    if inputs.sam is not None:
        variant = sam_variant_of(inputs.sam)
        for keys in SAM_CHECKPOINT_KEYS:
            _set(config, keys, str(inputs.sam))
            if variant:
                _set(config, (*keys[:-1], "variant"), variant)
    return deep_merge(config, overrides or {})


def write_config(path: str | Path, config: Mapping) -> Path:
    """``config`` as JSON at ``path`` (its folder made); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def describe_settings(settings: Any, run_dir: str | Path, output: str | Path) -> list[str]:
    """One line each: the studies' data, the SAM checkpoints, what runs untrained, where the run writes and what is saved."""
    semantic, instance = settings.semantic, settings.instance
    lines = [f"semantic study: {semantic.dataset.label}; {', '.join(semantic.models)}, {_epochs(semantic.epochs)}" if semantic.enabled
             else "semantic study: off",
             f"instance study: {instance.dataset.label}; Mask R-CNN {_epochs(instance.epochs)}" if instance.enabled else "instance study: off"]
    if instance.enabled:
        finetune = instance.sam_finetune
        lines.append(f"SAM {instance.sam.variant}: {instance.sam.checkpoint or 'random weights'}; fine-tuning "
                     + (f"{finetune.variant} from {finetune.checkpoint or 'random weights'}" if finetune.enabled else "off"))
    lines.append("untrained: " + ("; ".join(settings.untrained) or "none"))
    lines.append(f"run folder: {run_dir} (checkpoints and caches, not saved); saved output: {output}")
    return lines


# ---------------------------------------------------------------- what to install

def image() -> tuple[tuple[int, int], dict[str, str | None]]:
    """((major, minor) of Python, {normalised distribution name: version}): this Python's, or ``MSCSEG_KAGGLE_PACKAGES``'s."""
    described = os.environ.get(PACKAGES_ENV)
    if described:
        data = json.loads(Path(described).read_text())
        major, minor = (int(part) for part in str(data["python"]).split(".")[:2])
        return (major, minor), {normalise(name): version for name, version in data["packages"].items()}
    versions = {normalise(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions() if dist.metadata["Name"]}
    return sys.version_info[:2], versions


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python_environment(python: tuple[int, int]) -> dict[str, str]:
    return {"python_version": f"{python[0]}.{python[1]}", "python_full_version": f"{python[0]}.{python[1]}.0"}


def project_requirements(code: str | Path, python: tuple[int, int]) -> list[Any]:
    """The project's requirements for ``python`` (install_requires and the keras and torch extras) from setup.cfg or a wheel."""
    from packaging.requirements import Requirement

    code = Path(code)
    environment = _python_environment(python)
    lines: list[tuple[str, str]] = []
    if code.is_file():
        with zipfile.ZipFile(code) as wheel:
            meta = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
            text = wheel.read(meta).decode()
        lines = [("", line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")]
    else:
        parser = configparser.ConfigParser()
        parser.read(code / "setup.cfg")
        lines = [("", line) for line in parser["options"]["install_requires"].splitlines()]
        for extra in EXTRAS:
            lines += [(extra, line) for line in parser["options.extras_require"][extra].splitlines()]
    chosen, seen = [], set()
    for extra, line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        wanted = [dict(environment, extra=e) for e in ([extra] if extra else ["", *EXTRAS])]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in wanted):
            key = normalise(requirement.name)
            if key not in seen:
                seen.add(key)
                requirement.marker = None
                chosen.append(requirement)
    return chosen


def locked_versions(code: str | Path, python: tuple[int, int]) -> dict[str, str]:
    """{name: version} pinned in the project's lock file for ``python`` (empty for a wheel)."""
    lock = Path(code) / "requirements" / ("current.txt" if python >= (3, 12) else "paper.txt")
    if not lock.is_file():
        return {}
    pins = {}
    for line in lock.read_text().splitlines():
        name, _, version = line.split(";")[0].split("#")[0].strip().partition("==")
        if version:
            pins[normalise(name.split("[")[0])] = version.strip()
    return pins


@dataclass
class InstallPlan:
    """Commands (argument lists) to run in order, one line per decision, and whether the kernel must restart."""

    commands: list[list[str]]
    lines: list[str]
    packages: list[str]
    constraints: str
    constraints_path: Path


def _major_minor(version: str) -> tuple[int, int]:
    from packaging.version import Version

    release = Version(version).release
    return release[0], release[1] if len(release) > 1 else 0


def _tensorflow_decisions(installed: Mapping[str, str | None], pins: Mapping[str, str], gpu: bool) -> tuple[list[str], list[str]]:
    """(packages to install, lines) for TensorFlow and tf-keras: Kaggle's TensorFlow kept from 2.15 on, tf-keras matched to it."""
    tf = installed.get("tensorflow") or installed.get("tensorflow-cpu")
    if tf and _major_minor(tf) >= (2, 15):
        if _major_minor(tf) < (2, 16):
            return [], [f"TensorFlow {tf}: kept (Keras 2 built in, no tf-keras needed)"]
        major, minor = _major_minor(tf)
        keras2 = installed.get("tf-keras")
        if keras2 and _major_minor(keras2) == (major, minor):
            return [], [f"TensorFlow {tf}: kept, with tf-keras {keras2} (Keras 2 for tf.keras)"]
        return [f"tf-keras~={major}.{minor}.0"], [f"TensorFlow {tf}: kept; adding tf-keras {major}.{minor} (Keras 2 for tf.keras, TF_USE_LEGACY_KERAS=1)"]
    version = pins.get("tensorflow") or pins.get("tensorflow-cpu")
    name = "tensorflow[and-cuda]" if gpu else "tensorflow"
    packages = [f"{name}=={version}" if version else f"{name}>=2.15"]
    if version is None or _major_minor(version) >= (2, 16):
        keras2 = pins.get("tf-keras")
        packages.append(f"tf-keras=={keras2}" if keras2 else "tf-keras")
    found = f"TensorFlow {tf} is older than 2.15" if tf else "TensorFlow is not installed"
    return packages, [f"{found}: installing {' '.join(packages)}" + (" (CUDA wheels: the GPU check below verifies torch still works)" if gpu else "")]


def install_plan(code: str | Path, installed: Mapping[str, str | None] | None = None, python: tuple[int, int] | None = None,
                 gpu: bool = True, constraints_path: str | Path = "/tmp/mscseg-constraints.txt") -> InstallPlan:
    """What to install on this image for the project at ``code`` (a folder or a wheel), never replacing a framework.

    TensorFlow (>= 2.15), torch, torchvision and numpy are kept as installed; tf-keras is added
    to match TensorFlow >= 2.16; other requirements are installed when missing or too old,
    with every framework and CUDA package pinned at its installed version (``-c constraints``).
    """
    from packaging.version import InvalidVersion, Version

    here_python, here = image() if installed is None or python is None else (python, installed)
    installed = {normalise(k): v for k, v in (here if installed is None else installed).items()}
    python = python or here_python
    pins = locked_versions(code, python) if Path(code).is_dir() else {}
    packages, lines = _tensorflow_decisions(installed, pins, gpu)
    for requirement in project_requirements(code, python):
        name = normalise(requirement.name)
        have = installed.get(name)
        try:
            fits = have is not None and (not requirement.specifier or Version(have) in requirement.specifier)
        except InvalidVersion:
            fits = True
        if name in ("tensorflow", "tf-keras") or fits:
            continue
        if have is not None and name in KEPT:
            lines.append(f"{name} {have}: kept although the project asks for {requirement.specifier} (frameworks are not replaced here)")
        elif name in KEPT:
            pinned = f"{name}=={pins[name]}" if name in pins else str(requirement)
            packages.append(pinned)
            lines.append(f"{name} is not installed: installing {pinned}")
        else:
            packages.append(str(requirement))
    pinned = sorted(f"{name}=={version.split('+')[0]}" for name, version in installed.items()
                    if version and (name in KEPT or name.startswith(PINNED_PREFIXES)))
    commands, pip = [], [sys.executable, "-m", "pip", "install", "-q"]
    if packages:
        commands.append([*pip, "-c", str(constraints_path), *packages])
        lines.append(f"installing {len(packages)} missing package(s): {' '.join(packages)}")
    else:
        lines.append("every package the project needs is installed")
    if Path(code).is_file():
        commands.append([*pip, "--no-deps", str(code)])
    else:
        commands.append([*pip, "--no-deps", "--no-build-isolation", "-e", str(code)])
    return InstallPlan(commands, lines, packages, "\n".join(pinned) + "\n", Path(constraints_path))


def restart_needed(packages: Sequence[str], modules: Mapping[str, Any] | None = None) -> list[str]:
    """The packages of ``packages`` (requirement strings) already imported in this process: a restart is needed to use them."""
    from packaging.requirements import Requirement

    modules = sys.modules if modules is None else modules
    providers = importlib.metadata.packages_distributions()
    imported = {normalise(dist) for module, dists in providers.items() if module in modules for dist in dists}
    imported |= {normalise(module) for module in modules if "." not in module}
    return [name for name in (normalise(Requirement(p).name) for p in packages) if name in imported or name.replace("-", "_") in imported]


def run_commands(commands: Sequence[Sequence[str]], record: str | None = None) -> None:
    """Run each command (its output shown), or append them to the file ``record`` (``MSCSEG_KAGGLE_RECORD``) without running."""
    record = record if record is not None else os.environ.get(RECORD_ENV)
    for command in commands:
        text = shlex.join(command)
        if record:
            with open(record, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
            print("recorded, not run:", text)
            continue
        print("$", text, flush=True)
        status = subprocess.run(list(command)).returncode
        if status != 0:
            raise KaggleError(f"{text}: failed with status {status} (its output is above)")
    importlib.invalidate_caches()


def install(code: str | Path, enabled: bool = True, work: str | Path = "/tmp/mscseg", gpu: bool | None = None) -> InstallPlan:
    """Decide and run (or record) the installs for ``code``; restarts the kernel and stops when one is needed."""
    gpu = shutil.which("nvidia-smi") is not None if gpu is None else gpu
    plan = install_plan(code, gpu=gpu, constraints_path=Path(work) / "constraints.txt")
    for line in plan.lines:
        print(line)
    if not enabled:
        print("INSTALL is off: nothing installed; the project is used from", code)
        return plan
    if plan.packages:
        plan.constraints_path.parent.mkdir(parents=True, exist_ok=True)
        plan.constraints_path.write_text(plan.constraints)
    stale = restart_needed(plan.packages)
    run_commands(plan.commands)
    if stale and not os.environ.get(RECORD_ENV):
        restart_kernel()
        raise KaggleError(f"installed {', '.join(stale)}, already imported by this kernel: the kernel restarts now; run all cells again")
    return plan


def restart_kernel() -> None:
    """Ask the IPython kernel running this code to restart (nothing outside a kernel)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.kernel.do_shutdown(restart=True)


def one_line_errors() -> None:
    """Show the project's errors (``MscsegError``) in a notebook as one line, without a traceback."""
    from data.errors import MscsegError

    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()

    def handler(shell, etype, value, tb, tb_offset=None):
        print(f"{etype.__name__}: {value}", file=sys.stderr)

    if shell is not None:
        shell.set_custom_exc((MscsegError,), handler)


# ---------------------------------------------------------------- the run and its outputs

def run_steps(project: str | Path | None, config: str | Path, out: str | Path, extra: Sequence[str] = ()) -> None:
    """``python -m mscseg.run --config CONFIG --out OUT`` with its output shown as it comes; a failure stops with one line."""
    command = [sys.executable, "-m", "mscseg.run", "--config", str(config), "--out", str(out), *extra]
    cwd = Path(project) if project is not None and Path(project).is_dir() else Path(out).parent
    cwd.mkdir(parents=True, exist_ok=True)
    print(shlex.join(command), flush=True)
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
    if process.returncode != 0:
        raise KaggleError(f"mscseg.run stopped with status {process.returncode}; the failed step's log is in {Path(out) / 'logs'}")


def is_heavy(path: str | Path) -> bool:
    """A checkpoint, optimizer state or embedding cache (``HEAVY`` patterns): kept out of Kaggle's output unless asked."""
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in HEAVY)


@dataclass
class Export:
    """What ``export_results`` copied and what it left in the work folder."""

    copied: int
    copied_bytes: int
    left: list[Path]
    left_bytes: int


def export_results(run_dir: str | Path, output: str | Path, keep_weights: bool = False, limit_bytes: float = 19e9) -> Export:
    """Copy the results folder ``run_dir`` to ``output`` (the saved output), less checkpoints and caches unless ``keep_weights``."""
    run_dir, output = Path(run_dir), Path(output)
    if not (run_dir / "report.html").is_file():
        raise KaggleError(f"{run_dir}: no report.html; run the cell above to the end first")
    files = sorted(path for path in run_dir.rglob("*") if path.is_file())
    left = [path for path in files if is_heavy(path) and not keep_weights]
    kept = [path for path in files if path not in set(left)]
    kept_bytes = sum(path.stat().st_size for path in kept)
    if kept_bytes > limit_bytes:
        raise KaggleError(f"{run_dir}: {kept_bytes / 1e9:.1f} GB would exceed Kaggle's output limit; set KEEP_WEIGHTS = False")
    for path in kept:
        target = output / path.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return Export(len(kept), kept_bytes, left, sum(path.stat().st_size for path in left))


def describe_export(export: Export, run_dir: str | Path, output: str | Path) -> str:
    text = f"saved as output: {output} ({export.copied} files, {export.copied_bytes / 1e6:.1f} MB: report.html, tables, figures, logs)"
    if export.left:
        text += (f"; not saved: {len(export.left)} checkpoint and cache files ({export.left_bytes / 1e9:.2f} GB) in {run_dir}, "
                 "lost when the session ends (KEEP_WEIGHTS = True saves them too)")
    return text


def show_report(results: str | Path) -> None:
    """Display ``report.html`` in a frame, then the two summary tables."""
    import html
    import warnings

    import pandas as pd
    from IPython.display import HTML, display

    results = Path(results)
    page = (results / "report.html").read_text()
    print(f"{results / 'report.html'} ({len(page) / 1e6:.1f} MB)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display(HTML(f'<iframe srcdoc="{html.escape(page)}" style="width:100%;height:900px;border:1px solid #ccc"></iframe>'))
    for table in ("semantic/sweep/table1.csv", "instance/instance_table.csv"):
        if (results / table).is_file():
            print(table)
            display(pd.read_csv(results / table))
