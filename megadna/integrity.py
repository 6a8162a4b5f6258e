"""The one owner of how megadna reads back binary files it wrote: sha256 records, and torch.load that
never runs code.

    record = file_record(path)                    # {"size": bytes, "sha256": hex}
    check_file(path, record)                      # InputError naming the file if it differs
    state = torch_load_weights_only(path)         # torch.load(weights_only=True) + ALLOWED classes
    with weights_only(zero_to_fp32): ...          # a module's own torch.load calls made weights-only
    engine.checkpoint_engine = weights_only_checkpoint_engine(engine._config)   # DeepSpeed's loads too

`torch.load(weights_only=False)` (what DeepSpeed's loaders call) runs any code pickled into the file.
Here every load is `weights_only=True`: torch's restricted unpickler builds tensors, numbers, strings
and containers, plus the few plain data classes DeepSpeed pickles into its checkpoints (`ALLOWED`:
its loss scaler, the ZeRO stage enum, the fragment address of a parameter slice); any other global (a
function, a class, a `__reduce__` payload) is refused before it is called, as an InputError naming
the file. A file that cannot be read at all (truncated, not a torch file) is an InputError naming it
too. torch is imported lazily: the foundation layer stays importable without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import types
from pathlib import Path

from megadna.errors import InputError

CHUNK = 1 << 22

# DeepSpeed's plain data classes found in its checkpoint files (module, name), imported on first use.
ALLOWED = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),  # fp16 runs (z2_fp16.json)
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | Path) -> dict:
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def check_file(path: str | Path, record: dict, what: str = "file", hint: str = "") -> None:
    """The file at `path` has the recorded size and sha256, or an InputError naming it (size first: a
    truncated file is named without reading it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: the {what} is missing (recorded: {record.get('size')} bytes).{hint}")
    size = path.stat().st_size
    if size != record.get("size"):
        raise InputError(f"{path}: {size} bytes, but {record.get('size')} were recorded when it was written: the {what} "
                         f"is truncated or was replaced.{hint}")
    digest = sha256_file(path)
    if digest != record.get("sha256"):
        raise InputError(f"{path}: sha256 {digest[:16]}... differs from the {str(record.get('sha256'))[:16]}... recorded "
                         f"when it was written: the {what} was modified or corrupted.{hint}")


def allowed_globals() -> list:
    import importlib

    return [getattr(importlib.import_module(module), name) for module, name in ALLOWED]


def torch_load_weights_only(path, map_location=None, **kwargs):
    """torch.load(path, weights_only=True) allowing only ALLOWED classes; InputError naming the file when
    it holds anything else or cannot be read. Other torch.load options (mmap=...) pass through."""
    import torch

    kwargs.pop("weights_only", None)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ... for bad bytes
        raise _load_error(path, e) from None


def _load_error(path, e: Exception) -> InputError:
    text = str(e)
    if "Weights only load failed" in text or "Unsupported global" in text or "safe_globals" in text:
        detail = next((line.strip() for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line), text.splitlines()[0] if text else "")
        return InputError(f"{path}: refused to load: the file holds a Python object outside the allow-list of plain "
                          f"DeepSpeed data classes ({detail[:200]}). megadna never unpickles arbitrary code; "
                          "use a checkpoint from a trusted run")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return InputError(f"{path}: not a readable torch file ({type(e).__name__}: {first[:200]}); is it truncated or damaged?")


@contextlib.contextmanager
def weights_only(module):
    """Route `module`'s torch.load calls through torch_load_weights_only (for DeepSpeed's zero_to_fp32).

    Only the module's own reference to torch is swapped (for a namespace that forwards everything to
    torch but load), so torch.load elsewhere in the process is untouched.
    """
    real = module.torch

    def load(f, map_location=None, **kwargs):  # a weights_only=False among kwargs is overridden
        return torch_load_weights_only(f, map_location=map_location, **kwargs)

    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(real, name)  # module-level __getattr__ (PEP 562)
    proxy.load = load
    module.torch = proxy
    try:
        yield
    finally:
        module.torch = real


def weights_only_checkpoint_engine(config_params=None):
    """A DeepSpeed TorchCheckpointEngine whose load is torch_load_weights_only (save is DeepSpeed's)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return torch_load_weights_only(path, map_location=map_location)

    return WeightsOnlyCheckpointEngine(config_params)
