"""Loading a job's decoder: the model's own VAE by name, or anything `decoders.load` takes.

Every stage that decodes (decode, encode's round trip, video, the quality monitor) and the tools
that decode outside a job (eval, train-decoder's reference) load decoders here.
"""

from __future__ import annotations

import decoders
from decoders import references
from pipelines.config import MODEL_VAE
from pipelines.models.loading import load_model_vae, resolve_reference, torch_dtype


def load_decoder(decoder: str, model_reference: str, device: str, dtype: str):
    """`sdxl-vae` means the model's own VAE; anything else goes to `decoders.load`."""
    if decoder == MODEL_VAE:
        return load_model_vae(model_reference, device, dtype)
    # Remote directories are copied to the local cache once per machine, like models.
    reference = resolve_reference(decoder) if references.is_url(decoder) else decoder
    return decoders.load(reference, device=device, dtype=torch_dtype(dtype))
