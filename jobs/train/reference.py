"""Whose decode `target: reference` distils: the VAE of the model that encoded the training data.

Data encoded by a teacher (`kind: train-vae`'s OUTPUT/vae, `model.reference` of the encode job) is
distilled from the teacher's decode; data encoded by a pipeline's VAE, from that VAE's. The encode
outputs' job records name the model, so a train-decoder spec need not repeat it.
"""

from __future__ import annotations

from pipelines.config import ModelConfig
from pipelines.errors import ConfigError
from pipelines.sinks.layout import OutputLayout


def encoding_model(spec) -> str:
    """The model that encoded `spec.data.urls` (from their job records). Data without a record uses
    `model.reference`; outputs that name different models, or a `model.reference` set to another
    one, are a spec error: that decode would not be of these latents."""
    recorded = {}
    for url in spec.data.urls:
        job = OutputLayout(url, spec.data.storage).read_job() or {}
        model = job.get("spec", {}).get("model", {}).get("reference")
        if model is not None:
            recorded[url] = model
    found = sorted(set(recorded.values()))
    if len(found) > 1:
        raise ConfigError("data.urls", "", detail="target: reference needs data of one encoder, but it was encoded by "
                          + ", ".join(f"{model} ({url})" for url, model in recorded.items()))
    if not found:
        return spec.model.reference
    if spec.model.reference not in (ModelConfig().reference, found[0]):
        raise ConfigError("model.reference", "", detail=f"{spec.model.reference!r}, but the data was encoded by "
                          f"{found[0]!r}; target: reference decodes with the encoder's VAE (leave model.reference out)")
    return found[0]
