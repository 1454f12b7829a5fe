"""`python -m vpog.info`: versions, devices, and the backend each op would use.

Prints, for every registered op and every device type present, the backend that `backend="auto"`
picks and the state of each of the op's backends (available, or why not).
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys

import torch

from vpog import __version__
from vpog._backend import OPS, extension_has_kernel, extension_status, triton_interpreter, triton_status

OP_MODULES = (
    "vpog.ops.s2rope_attention",
    "vpog.ops.patch_flow_labels",
    "vpog.ops.pnp_solve",
    "vpog.ops.pnp_cost",
    "vpog.ops.pnp_amis",
)


def _load_ops() -> list[str]:
    """Import every op module (each registers its backends); return the import errors, if any."""
    errors = []
    for name in OP_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                errors.append(f"{name}: {exc}")
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return errors


def collect() -> dict:
    """Everything `vpog.info` reports, as a JSON-serialisable dict (also stored by benchmarks)."""
    errors = _load_ops()
    tri_ok, tri_info = triton_status()
    ext_ok, ext_info = extension_status()
    devices = [torch.device("cpu")]
    cuda = torch.cuda.is_available()
    if cuda:
        devices.insert(0, torch.device("cuda"))
    info = {
        "vpog": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": tri_info if tri_ok else None,
        "triton_error": None if tri_ok else tri_info,
        "triton_interpreter": triton_interpreter(),
        "extension": ext_info,
        "extension_loaded": ext_ok,
        "extension_cuda_kernels": bool(ext_ok and any(
            extension_has_kernel(op, "CUDA") for spec in OPS.values() for op in spec.extension_ops
        )),
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "device_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "cpu_threads": torch.get_num_threads(),
        "ops": {},
        "op_import_errors": errors,
    }
    for name, spec in sorted(OPS.items()):
        entry = {}
        for dev in devices:
            auto = spec.auto_choice(dev)
            entry[dev.type] = {
                "auto": auto,
                "auto_label": spec.label(auto, dev),
                "backends": {
                    b: (spec.unavailable_reason(b, dev) or "available") for b in spec.backends
                },
            }
        info["ops"][name] = entry
    return info


def format_report(info: dict) -> str:
    lines = [
        f"vpog {info['vpog']}  python {info['python']}  ({info['platform']})",
        f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'})",
        f"triton {info['triton'] or 'not available: ' + str(info['triton_error'])}"
        + ("  [TRITON_INTERPRET=1: kernels run in the interpreter]" if info["triton_interpreter"] else ""),
        f"extension vpog._C: {info['extension']}"
        + (" (with CUDA kernels)" if info["extension_cuda_kernels"] else ""),
        f"device: {info['device']}"
        + (f" (sm_{info['device_capability'].replace('.', '')})" if info["device_capability"] else "")
        + f", {info['cpu_threads']} CPU threads",
        "",
        "op backends (auto = what backend='auto' picks):",
    ]
    for name, per_dev in info["ops"].items():
        for dev, entry in per_dev.items():
            lines.append(f"  {name} [{dev}]: auto -> {entry['auto']} ({entry['auto_label']})")
            for b, state in entry["backends"].items():
                mark = "+" if state == "available" else "-"
                lines.append(f"      {mark} {b}: {state}")
    for err in info["op_import_errors"]:
        lines.append(f"  ! {err}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    info = collect()
    if "--json" in argv:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(format_report(info))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
