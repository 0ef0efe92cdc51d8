import jax

jax.config.update("jax_enable_x64", True)


import pytest


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """One pytest process compiles hundreds of programs; drop them when the process nears the system's
    limit on memory mappings (see moe_estimation.study.release_compiled_if_needed)."""
    from moe_estimation.study import release_compiled_if_needed

    release_compiled_if_needed()
    yield
