"""No monkey-patching: importing the service and building the face detector changes no
function or class attribute of bentoml, _bentoml_impl, _bentoml_sdk, starlette, uvicorn or
mtcnn, but the batching wait and the HTTP server's load (header timeout) in the one adapter
module (serving/bentoml_adapter.py). A fresh process, so that nothing else of the test session
has been imported before."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

PACKAGES = ("bentoml", "_bentoml_impl", "_bentoml_sdk", "starlette", "uvicorn", "mtcnn")
# What serving/bentoml_adapter.py changes, and nothing else may (both guarded by versions:
# tests/test_bentoml_adapter.py).
ALLOWED = {
    "bentoml._internal.marshal.dispatcher.Optimizer.trigger_refresh",
    "bentoml._internal.marshal.dispatcher.Optimizer._greedy",
    "uvicorn.config.Config.load",
    "uvicorn.config.Config._deepfake_adapted",
    "uvicorn.config.Config._header_timeout_s",
}

SNAPSHOT = """
import importlib, inspect, json, sys, types
import numpy as np
from PIL import Image

packages = {packages!r}
ours = ("service", "serving", "preprocessing", "modeling", "training")
# The packages as the service uses them, imported before it: what it could patch is loaded.
for name in (*packages, "_bentoml_impl.server.app", "_bentoml_impl.client", "_bentoml_impl.serde",
             "_bentoml_sdk.service", "_bentoml_sdk.service.openapi", "bentoml._internal.context",
             "bentoml._internal.marshal.dispatcher", "starlette.applications", "starlette.routing",
             "starlette.middleware.cors", "starlette.formparsers", "uvicorn.config",
             "uvicorn.protocols.http.h11_impl", "mtcnn.stages"):
    importlib.import_module(name)

def theirs():
    return [m for n, m in list(sys.modules.items()) if n.split(".")[0] in packages and m is not None]

def members(module):
    for attr, value in list(vars(module).items()):
        yield f"{{module.__name__}}.{{attr}}", value
        if inspect.isclass(value) and value.__module__ == module.__name__:
            for name, member in list(vars(value).items()):
                yield f"{{module.__name__}}.{{attr}}.{{name}}", member

before = {{key: id(value) for module in theirs() for key, value in members(module)}}
import service  # noqa: E402
from preprocessing.detectors import load_detector
for name in ("blazeface", "mtcnn"):
    load_detector(name).detect(Image.fromarray(np.zeros((64, 64, 3), np.uint8)))
after = {{key: value for module in theirs() for key, value in members(module)}}
# BentoML's lazy loaders swap a module proxy for the module on first use: not a patch.
changed = sorted(k for k, v in after.items() if k in before and before[k] != id(v)
                 and not isinstance(v, types.ModuleType))
# A new attribute on a class that was there before.
added = sorted(k for k in after if k not in before and k.rsplit(".", 1)[0] in before
               and inspect.isclass(after.get(k.rsplit(".", 1)[0])))
# Our own functions anywhere in their namespaces, modules loaded during the import included.
foreign = sorted(k for k, v in after.items() if isinstance(v, (types.FunctionType, types.MethodType))
                 and (getattr(v, "__module__", "") or "").split(".")[0] in ours)
print(json.dumps({{"changed": changed, "added": added, "foreign": foreign}}))
"""


def test_importing_the_service_patches_nothing_but_the_adapter(served_tag: str) -> None:
    env = {**os.environ, "DEEPFAKE_MODEL_TAG": served_tag}
    run = subprocess.run(
        [sys.executable, "-c", SNAPSHOT.format(packages=PACKAGES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # Classes of these packages: an attribute set on one after import is a patch too.
    added = [
        k for k in report["added"] if k.split(".")[0] in PACKAGES and not k.split(".")[-1].startswith("__")
    ]
    assert set(report["changed"]) <= ALLOWED, report["changed"]
    assert set(added) <= ALLOWED, added


def test_private_imports_live_in_the_adapter_alone() -> None:
    """`grep -rnE "_bentoml_impl|_bentoml_sdk|bentoml\\._internal" --include=*.py .` outside tests/."""
    found = []
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if (
            relative.parts[0] in ("tests", ".venv", ".venv-train", ".bentoml", ".cache")
            or relative.parts[0] == "wt"
        ):
            continue
        text = path.read_text(errors="replace")
        if any(token in text for token in ("_bentoml_impl", "_bentoml_sdk", "bentoml._internal")):
            found.append(str(relative))
    assert found == ["serving/bentoml_adapter.py"], found
