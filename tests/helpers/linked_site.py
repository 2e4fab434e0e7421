"""A fresh venv that sees, of this interpreter's installed distributions, exactly the closure of
some requirements: each one's files are symlinked into a folder that a ``.pth`` puts on the venv's
path, so pip finds those requirements satisfied instead of downloading and unpacking them again
(over 2 GB for torch, onnxruntime and transformers: minutes on CI), and what the closure leaves out
stays missing, as in a user's install."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import Requirement


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    try:
        return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})
    except UndefinedEnvironmentName:
        return False


def closure(
    requirements: list[str], extras: frozenset[str] = frozenset()
) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` (as a distribution's Requires-Dist, with
    ``extras`` asked for) need, theirs included, by normalised name; a requirement not installed
    here or at a version it excludes is an error."""
    found: dict[str, metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    pending = [(Requirement(r), set(extras)) for r in requirements]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = _name(requirement.name)
        extras = set(requirement.extras)
        if name in found and extras <= extras_seen[name]:
            continue
        dist = found.get(name) or metadata.distribution(requirement.name)
        assert requirement.specifier.contains(dist.version, prereleases=True), (
            str(requirement),
            dist.version,
        )
        found[name] = dist
        extras_seen[name] = extras_seen.get(name, set()) | extras
        pending += [(Requirement(r), extras) for r in dist.requires or []]
    return found


def link(dists: dict[str, metadata.Distribution], into: Path) -> None:
    """Symlinks each distribution's top-level entries (packages, modules, its .dist-info) into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        for file in dist.files or []:
            top = file.parts[0]
            if top == ".." or top.endswith(".pth") or top == "__pycache__":
                continue  # scripts in bin/, path hooks
            target = into / top
            if not target.exists():
                target.symlink_to(Path(dist.locate_file(top)).resolve())


def add_to_venv(venv: Path, folder: Path) -> None:
    """Puts ``folder`` on ``venv``'s path (after its own site-packages, so its installs win)."""
    [site_packages] = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "zz-linked-site.pth").write_text(f"{folder}\n")
