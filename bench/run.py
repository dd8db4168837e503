"""Run every benchmark in bench/ (files named bench_*.py); each prints ratios to a baseline
measured in the same run, never absolute pass/fail times."""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main():
    only = sys.argv[1:]
    for name in sorted(os.listdir(HERE)):
        if not (name.startswith("bench_") and name.endswith(".py")):
            continue
        if only and not any(o in name for o in only):
            continue
        spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(HERE, name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {name}")
        module.main()
        print()


if __name__ == "__main__":
    main()
