import jax

jax.config.update("jax_enable_x64", True)


import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory):
    """The environment for a command-line subprocess: this checkout importable, its own compilation cache."""
    env = dict(os.environ)
    env["MOE_ESTIMATION_CACHE"] = str(tmp_path_factory.mktemp("jaxcache"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """One pytest process compiles hundreds of programs; drop them when the process nears the system's
    limit on memory mappings (see moe_estimation.study.release_compiled_if_needed)."""
    from moe_estimation.study import release_compiled_if_needed

    release_compiled_if_needed()
    yield
