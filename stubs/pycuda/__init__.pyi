# Minimal stubs for the parts of pycuda okcell uses (pycuda ships no annotations).
VERSION: tuple[int, ...]
VERSION_TEXT: str
