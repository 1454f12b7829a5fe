"""Triton kernels of vpog, installed as the subpackage `vpog.kernels`.

Each module holds one op's kernels, host launchers and autograd Function, ordered as the Triton
tutorials are: equation, kernels, launchers, Function. Import them only through `vpog.ops`, which
checks inputs and picks a backend; importing this package requires `triton`.
"""
