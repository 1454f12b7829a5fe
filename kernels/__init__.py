"""Triton kernels of vpog, installed as the subpackage `vpog.kernels`.

Each op module holds one op's kernels, host launchers and autograd Function, ordered as the Triton
tutorials are: equation, kernels, launchers, Function, and the limits of what its kernels take
(`unsupported_reason`, the dtypes and head dims), which `vpog.ops` reads. Import them only through
`vpog.ops`, which checks inputs and picks a backend; they require `triton`. `launch` (the interpreter
switch and the launch record) does not, and depends on nothing in vpog: this package is the lowest
layer, `vpog._backend` and `vpog.ops` import from it, never the reverse.
"""
