"""Copy the installed ``tensorrt-stubs`` (tensorrt/, tensorrt_bindings/) into a mypy path, fixing what does not parse.

tensorrt-stubs 10.13 is generated from the bindings and has a few lines that are not valid Python (a parameter named
``in``, a non-default parameter after defaults). mypy stops on those, so ``make typecheck`` checks against this
corrected copy; every other line is TensorRT's own.

    python stubs/tensorrt_fixed.py build/typestubs
"""

from __future__ import annotations

import re
import shutil
import sys
import sysconfig
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
FIXES = (
    (re.compile(r"(\(self(?:: \w+)?, )in: "), r"\1in_: "),
    (re.compile(r"power: Weights = None, channel_axis: int\)"), "power: Weights = None, channel_axis: int = ...)"),
)


def main(destination: str) -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    for package in PACKAGES:
        source = site / package
        if not (source / "__init__.pyi").is_file():
            print(f"{source}: tensorrt-stubs not installed (pip install tensorrt-stubs==10.13.0.35.1)", file=sys.stderr)
            return 1
        target = Path(destination) / package
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for stub in source.glob("*.pyi"):
            text = stub.read_text()
            for pattern, replacement in FIXES:
                text = pattern.sub(replacement, text)
            (target / stub.name).write_text(text)
        (target / "py.typed").write_text("partial\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
