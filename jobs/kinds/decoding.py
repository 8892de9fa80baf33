"""What the kinds that decode latents to images share (generate, redecode): the decode stage's
arguments, the optional quality monitor after it, and the checks of their decoder fields."""

from __future__ import annotations

import dataclasses

from jobs.checks import check_decoder, check_tiling_support
from pipelines.config import LATENT_FACTOR, MODEL_VAE, StageResources, require
from pipelines.errors import ConfigError
from pipelines.models.fingerprint import decoder_fingerprint
from pipelines.pipeline import StageDef


def monitor_resources() -> StageResources:
    # Runs only when the spec has a quality_monitor section; decodes only the monitored samples.
    return StageResources(num_cpus=0.25, batch_size=4)


def decode_kwargs(spec) -> dict:
    """The image decode stage's arguments, from the spec of a kind that decodes images."""
    return {
        "decoder": spec.decoder, "model_reference": spec.model.reference, "image_format": spec.output.image_format,
        "quality": spec.output.quality, "save_latents": spec.output.save_latents, "dtype": spec.model.dtype,
        "tiling": spec.decoder_tiling, "batch_size": spec.stages.decode.batch_size,
        "monitor_fraction": spec.quality_monitor.fraction if spec.quality_monitor else None,
        "channels_last": spec.model.channels_last, "compile": spec.model.compile,
    }


def monitor_stages(spec) -> list[StageDef]:
    """The quality monitor after decode, when the spec has one (pipelines/stages/quality.py)."""
    if spec.quality_monitor is None:
        return []
    kwargs = {"model_reference": spec.model.reference, "dtype": spec.model.dtype, "tiling": spec.decoder_tiling,
              "batch_size": spec.stages.monitor.batch_size}
    return [StageDef("monitor", "pipelines.stages.quality:QualityMonitor", kwargs, spec.stages.monitor)]


def decoder_weights(spec) -> dict:
    return {"decoder": decoder_fingerprint(spec.decoder)}


def monitor_identity(spec) -> dict:
    """The monitor's settings, when on: its fraction writes fields, its thresholds decide flags. Absent
    when off, so outputs made before the monitor existed resume as before."""
    if spec.quality_monitor is None:
        return {}
    return {"quality_monitor": dataclasses.asdict(spec.quality_monitor)}


def check_monitor(spec) -> None:
    if spec.quality_monitor is not None and spec.decoder == MODEL_VAE:
        raise ConfigError("quality_monitor", "", detail=(
            f"the monitor compares the decoder with the reference, {MODEL_VAE}, which is this job's decoder: "
            "nothing to compare; remove quality_monitor or choose a lighter decoder"))


def check_tiling(tiling) -> None:
    if not isinstance(tiling, bool):
        require(
            tiling > 0 and tiling % LATENT_FACTOR == 0,
            "decoder_tiling",
            f"true, false or a tile size in pixels (a positive multiple of {LATENT_FACTOR})",
            tiling,
        )


def check_image_decoder(spec) -> None:
    """The outside-world checks of `decoder` and `decoder_tiling` (jobs/checks.py)."""
    check_decoder(spec.decoder, spec.model.family, own=MODEL_VAE)
    if spec.decoder_tiling:
        check_tiling_support(spec.decoder)
