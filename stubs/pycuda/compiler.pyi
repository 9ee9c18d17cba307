from typing import Sequence

from pycuda.driver import Function, Module

class SourceModule(Module):
    def __init__(
        self,
        source: str,
        nvcc: str = "nvcc",
        options: Sequence[str] | None = None,
        keep: bool = False,
        no_extern_c: bool = False,
        arch: str | None = None,
        code: str | None = None,
        cache_dir: str | None = None,
        include_dirs: Sequence[str] = (),
    ) -> None: ...
    def get_function(self, name: str) -> Function: ...
