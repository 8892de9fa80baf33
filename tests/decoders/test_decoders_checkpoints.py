"""Checkpoint safety: safetensors by default, pickles only through weights_only, strict loading."""

import json
import pathlib

import pytest
import torch

import decoders
from decoders.checkpoints import CheckpointMismatchError, UnsafeCheckpointError


class _TouchOnUnpickle:
    """Unpickling this calls Path.touch(marker): harmless, but proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _config(dec) -> dict:
    return json.loads(dec.model.to_json_string())


def test_malicious_pickle_is_refused_and_never_executed(tiny, tmp_path):
    marker = tmp_path / "code-ran"
    state = dict(tiny("taesd").model.state_dict())
    state["payload"] = _TouchOnUnpickle(str(marker))
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*evil.pt.*could run code"):
        decoders.load(str(evil), config=_config(tiny("taesd")))
    assert not marker.exists()

    # the file is genuinely malicious: a plain unpickle runs its payload
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_safe_pt_checkpoint_loads_through_weights_only(tiny, tmp_path, latents_for):
    dec = tiny("tae-192", seed=11)
    torch.save({"state_dict": dec.model.state_dict()}, tmp_path / "ckpt.pth")
    back = decoders.load(str(tmp_path / "ckpt.pth"), config=_config(dec), device="cpu")
    z = latents_for(dec)
    assert torch.equal(back.decode(z), dec.decode(z))


def test_checkpoint_of_another_architecture_is_a_shape_mismatch_error(tiny, tmp_path):
    wide = tiny("tae-192")  # 12-channel decoder
    wide.save_file(tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches .*checkpoint \(12, .* vs model \(8, "):
        decoders.load(str(tmp_path / "wide.safetensors"), config=_config(tiny("taesd")))


def test_missing_and_unexpected_keys_are_errors_not_partial_loads(tiny, tmp_path):
    from safetensors.torch import save_file

    dec = tiny("effvit")
    state = dict(dec.model.state_dict())
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=f"1 missing keys \\[{dropped}\\].*1 unexpected keys \\[extra.weight\\]"):
        decoders.load(str(tmp_path / "partial.safetensors"), config=_config(dec))


def test_directory_with_mismatched_weights_is_an_error(tiny, tmp_path):
    tiny("tae-192").save_pretrained(tmp_path)
    cfg = _config(tiny("taesd"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # config says 8 channels, weights have 12
    with pytest.raises(CheckpointMismatchError, match="does not match AutoencoderTiny"):
        decoders.load(str(tmp_path))


def test_unknown_checkpoint_format(tmp_path):
    p = tmp_path / "weights.npz"
    p.write_bytes(b"x")
    with pytest.raises(ValueError):
        decoders.load(str(p))
