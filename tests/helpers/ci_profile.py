"""The CI profile's script, .ci/profile.py, as a module (it is a script, not in a package):

    from tests.helpers.ci_profile import profile
    profile.profile_params()                            # params.yaml with .ci/profile.yaml's keys
    project, archive = profile.prepare(scratch)         # a project copy and the generated stand-in
    profile.reproduce(project, archive, **env)          # `dvc repro` with the archive served from 127.0.0.1
    profile.regression_check(project)                   # `python -m stages.check --profile ci`

Loaded once, on first import, under the name `ci_profile`.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from wdlab.workspace import ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_profile", ROOT / ".ci" / "profile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ci_profile", module)
    spec.loader.exec_module(module)
    return module


profile = _load()
