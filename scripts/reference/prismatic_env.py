"""Put a checkout of TRI-ML/prismatic-vlms on the import path, for the scripts that run it beside ours.

The checkout is found at `--prismatic PATH`, else `$VLMSWAP_PRISMATIC`, else `prismatic-vlms/`
beside the repository. Importing `prismatic` pulls in three packages that none of our reference
runs exercise (draccus for its config registry, wandb and jsonlines for metric logging); they are
replaced by empty stand-ins. Everything the scripts call (the sampler, the prompter, the finetune
dataset, the Llama-2 backbone, the FSDP strategy) is the reference's own code.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def add_prismatic(path: str | None = None) -> str:
    """Make `import prismatic` work; returns a description of the checkout (path and commit)."""
    root = Path(path or os.environ.get("VLMSWAP_PRISMATIC") or REPO.parent / "prismatic-vlms").resolve()
    if not (root / "prismatic" / "__init__.py").is_file():
        raise SystemExit(f"no prismatic-vlms checkout at {root}: clone https://github.com/TRI-ML/prismatic-vlms "
                         "there, or pass --prismatic PATH / set VLMSWAP_PRISMATIC")
    stand_ins = {name: types.ModuleType(name) for name in ("draccus", "wandb", "jsonlines")}
    for name, module in stand_ins.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # other packages probe find_spec()

    class ChoiceRegistry:  # only its class-level registration runs at import time
        @classmethod
        def register_subclass(cls, name, subclass=None):
            return subclass if subclass is not None else (lambda s: s)

    stand_ins["draccus"].ChoiceRegistry = ChoiceRegistry
    for name, module in stand_ins.items():
        sys.modules.setdefault(name, module)
    sys.path.insert(0, str(root))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("VLMSWAP_PRISMATIC_COMMIT", "unknown")
    return f"TRI-ML/prismatic-vlms@{commit}"
