"""A small kustomize renderer: exactly the kustomization features deploy/kubernetes uses.

The tests must run where no kustomize or kubectl binary exists (CI has only package
registries), so the overlays are rendered here. Supported, and nothing else (an
unknown field fails loudly rather than render something kustomize would not):

- ``resources``: YAML files (several documents each) and directories holding a
  ``kustomization.yaml``, rendered recursively;
- ``namespace``: set on every namespaced object (and renames a ``Namespace``);
- ``configMapGenerator`` / ``secretGenerator`` with ``files`` (``key=path`` or
  ``path``) and ``literals``, Secrets with an optional ``type``;
- ``generatorOptions.disableNameSuffixHash: true`` (required: name hashing is not
  implemented);
- ``patches`` with a ``target`` (``kind``/``name``/``namespace``) and an inline
  JSON 6902 ``patch`` (``add``, ``remove``, ``replace``, ``test``).

When kubectl (with its built-in kustomize) is on the machine, test_kubernetes.py
checks that this renderer's output equals ``kubectl kustomize``'s.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
}
GENERATOR_FIELDS = {"name", "files", "literals", "type"}
# Kinds this renderer treats as cluster-scoped (no metadata.namespace).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


class KustomizeError(Exception):
    pass


def render(directory: Path) -> list[Obj]:
    """The objects ``kustomize build directory`` would print (in no particular order)."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(path.read_text()) or {}
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")

    objects: list[Obj] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        elif target.is_file():
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
        else:
            raise KustomizeError(f"{path}: resource {entry!r} not found")

    options = k.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"} or (
        (k.get("configMapGenerator") or k.get("secretGenerator"))
        and options.get("disableNameSuffixHash") is not True
    ):
        raise KustomizeError(f"{path}: only generatorOptions.disableNameSuffixHash: true")
    for spec in k.get("configMapGenerator", []):
        objects.append(_generate(directory, spec, secret=False))
    for spec in k.get("secretGenerator", []):
        objects.append(_generate(directory, spec, secret=True))

    namespace = k.get("namespace")
    if namespace is not None:
        for obj in objects:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = namespace
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace

    for patch in k.get("patches", []):
        _apply_patch(path, objects, patch)
    return objects


def _generate(directory: Path, spec: Obj, *, secret: bool) -> Obj:
    unknown = set(spec) - GENERATOR_FIELDS
    if unknown or (spec.get("type") is not None and not secret):
        raise KustomizeError(f"generator {spec.get('name')!r}: unsupported {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, sep, rel = entry.partition("=")
        if not sep:
            key, rel = Path(entry).name, entry
        source = (directory / rel).resolve()
        if directory.resolve() not in source.parents:
            raise KustomizeError(f"{entry!r} is outside {directory}")
        if not source.is_file():
            raise KustomizeError(f"generator {spec['name']!r}: file {rel!r} not found")
        raw = source.read_bytes()
        data[key] = base64.b64encode(raw).decode() if secret else raw.decode()
    for entry in spec.get("literals", []):
        key, _, value = entry.partition("=")
        data[key] = base64.b64encode(value.encode()).decode() if secret else value
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Secret" if secret else "ConfigMap",
        "metadata": {"name": spec["name"]},
        "data": data,
    }
    if secret:
        obj["type"] = spec.get("type", "Opaque")
    return obj


def _apply_patch(path: Path, objects: list[Obj], patch: Obj) -> None:
    if set(patch) - {"target", "patch"} or set(patch.get("target", {})) - {
        "kind",
        "name",
        "namespace",
    }:
        raise KustomizeError(f"{path}: only patches with target kind/name/namespace and patch")
    target = patch["target"]
    ops = yaml.safe_load(patch["patch"])
    if not isinstance(ops, list):
        raise KustomizeError(f"{path}: only JSON 6902 patches (a list of operations)")
    matched = [
        obj
        for obj in objects
        if all(
            (obj["kind"] if key == "kind" else obj["metadata"].get(key)) == value
            for key, value in target.items()
        )
    ]
    if not matched:
        raise KustomizeError(f"{path}: patch target {target} matches nothing")
    for obj in matched:
        for op in ops:
            _json_patch_op(obj, op, f"{path} {target}")


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch_op(doc: Obj, op: Obj, where: str) -> None:
    kind = op.get("op")
    *parents, last = _pointer(op["path"])
    node: Any = doc
    try:
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
    except (KeyError, IndexError, ValueError) as exc:
        raise KustomizeError(f"{where}: {op['path']} does not exist") from exc

    def index(allow_end: bool) -> int:
        if last == "-" and allow_end:
            return len(node)
        i = int(last)
        if not 0 <= i < len(node) + (1 if allow_end else 0):
            raise KustomizeError(f"{where}: {op['path']}: index out of range")
        return i

    def current() -> Any:
        try:
            return node[index(False)] if isinstance(node, list) else node[last]
        except (KeyError, ValueError) as exc:
            raise KustomizeError(f"{where}: {op['path']} does not exist") from exc

    if kind == "test":
        if current() != op["value"]:
            raise KustomizeError(f"{where}: test failed at {op['path']}: {current()!r}")
    elif kind == "replace":
        current()
        if isinstance(node, list):
            node[index(False)] = copy.deepcopy(op["value"])
        else:
            node[last] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(node, list):
            node.insert(index(True), copy.deepcopy(op["value"]))
        else:
            node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        current()
        if isinstance(node, list):
            del node[index(False)]
        else:
            del node[last]
    else:
        raise KustomizeError(f"{where}: unsupported JSON patch op {kind!r}")
