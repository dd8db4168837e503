"""The lazy-import rule of tests/test_import_deadlocks.py with Ray installed (`make test`'s
environment has no Ray, so its Ray imports are checked here): a thread importing a submodule
Ray's own `__init__` imports (ray.util) while another thread runs that `__init__` deadlocks."""

import importlib.util

from tests import test_import_deadlocks as rule


def test_lazy_imports_with_ray_installed():
    assert importlib.util.find_spec("ray") is not None  # (else the rule would skip Ray's imports)
    rule.test_no_lazy_import_of_a_submodule_its_package_imports_itself()
