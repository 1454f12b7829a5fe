"""Build `vpog._C`, the C++/CUDA extension, with torch.utils.cpp_extension.

- The C++ CPU sources (`csrc/*.cpp`) are always compiled.
- The CUDA sources (`csrc/*.cu`) are compiled when torch has CUDA and nvcc is found (IEEE
  division and sqrt, no fast math: the kernels must match the reference paths to rounding).
  `VPOG_BUILD_CUDA=1` forces the CUDA part (and fails loudly if it cannot be built),
  `VPOG_BUILD_CUDA=0` skips it. `TORCH_CUDA_ARCH_LIST` is honoured (default: "9.0+PTX").
- `VPOG_BUILD_EXT=0` skips the extension entirely (pure Python install; ops use the reference paths).

Triton sources live in `kernels/` and are installed as the subpackage `vpog.kernels`.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() not in ("0", "false", "no", "off")


def _extensions():
    if _flag("VPOG_BUILD_EXT") is False:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("vpog setup: torch is not installed; building without the C++ extension. "
              "Install torch first, then `pip install --no-build-isolation -e .`", file=sys.stderr)
        return [], {}

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not cpp_sources:
        return [], {}

    force_cuda = _flag("VPOG_BUILD_CUDA")
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    can_cuda = torch.version.cuda is not None and bool(nvcc) and bool(cu_sources)
    if force_cuda and not can_cuda:
        raise RuntimeError(
            f"VPOG_BUILD_CUDA=1 but the CUDA part cannot be built: torch.version.cuda={torch.version.cuda}, "
            f"nvcc={'found' if nvcc else 'not found'}, csrc/*.cu files={len(cu_sources)}"
        )
    with_cuda = can_cuda if force_cuda is None else force_cuda

    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    define_macros = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
        define_macros.append(("VPOG_WITH_CUDA", None))
        ext = CUDAExtension(
            "vpog._C",
            cpp_sources + cu_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "vpog._C",
            cpp_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    print(f"vpog setup: building vpog._C ({'C++ + CUDA' if with_cuda else 'C++ CPU only'})", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=["vpog", "vpog.kernels"] + [
        "vpog." + p.replace(os.sep, ".")
        for p in sorted(
            os.path.relpath(d, "vpog") for d, _, files in os.walk("vpog") if "__init__.py" in files
        )
        if p != "."
    ],
    package_dir={"vpog": "vpog", "vpog.kernels": "kernels"},
    package_data={"vpog": ["config/*.yaml", "config/*/*.yaml", "assets/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
