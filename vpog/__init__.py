"""vpog: Visual Patch-wise Object pose estimation with Groups of templates.

A query crop of an unseen object is matched patch by patch against a group of rendered templates;
a flow head predicts where each template pixel lands in the query; a differentiable PnP layer
(EPro-PnP) turns those 2D-3D correspondences into a pose.

Importing `vpog` never fails because the C++/CUDA extension or Triton is missing: every op falls
back to its PyTorch reference path and says so once (see `python -m vpog.info`).
"""

__version__ = "0.1.0"


def _map_source_tree_kernels() -> None:
    """Make `vpog.kernels` importable when running from a source checkout without installing.

    Installed (editable or not), `kernels/` is the subpackage `vpog.kernels` through setup.py's
    package_dir; from a bare checkout (e.g. `setup.py build_ext --inplace` on a GPU machine with
    PYTHONPATH set) the same directory is registered here under that name.
    """
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    source = here.parent / "kernels" / "__init__.py"
    if "vpog.kernels" in sys.modules or (here / "kernels").is_dir() or not source.is_file():
        return
    if importlib.util.find_spec("vpog.kernels") is not None:  # an installed mapping exists
        return
    spec = importlib.util.spec_from_file_location(
        "vpog.kernels", source, submodule_search_locations=[str(source.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["vpog.kernels"] = module
    spec.loader.exec_module(module)


_map_source_tree_kernels()


def __getattr__(name: str):
    """`vpog.PoseEstimator` is imported on first use (it pulls in torch and the model)."""
    if name == "PoseEstimator":
        from vpog.estimator import PoseEstimator

        return PoseEstimator
    raise AttributeError(f"module 'vpog' has no attribute {name!r}")
