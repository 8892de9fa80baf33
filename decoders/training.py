"""Training a decoder on latents: losses, a patch discriminator, EMA, the schedule and one step.

Pure torch (no Ray, no job code): `jobs/train/driver.py` runs `DecoderTrainer.step` inside Ray Train
workers, and anything else can run it in a plain loop. Images are [0, 1] floats (B, 3, H, W);
latents are diffusion-space latents, as encode outputs store them.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Decoder


class TrainableDecoder(nn.Module):
    """Diffusion-space latents -> [0, 1] pixels with gradients (Decoder.decode runs in inference mode).

    Output is not clamped, so the loss still sees (and corrects) overshoot.
    """

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.model = decoder.model
        self._decoder = [decoder]  # a list: not a submodule, so its weights are not counted twice

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = self._decoder[0].to_decoder_space(latents)
        return self.model.decode(z, return_dict=False)[0] * 0.5 + 0.5


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: one real/fake score per overlapping patch, so it judges texture, not layout."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers):
            nxt = channels * 2 ** min(i, 3)
            blocks += [nn.Conv2d(width, nxt, 4, 2, 1, bias=False), nn.GroupNorm(min(8, nxt), nxt), nn.LeakyReLU(0.2)]
            width = nxt
        blocks.append(nn.Conv2d(width, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


def hinge_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def pixel_loss(kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(output, target)
    if kind == "mse":
        return F.mse_loss(output, target)
    raise ValueError(f"pixel loss must be 'l1' or 'mse', got {kind!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up from 0, then cosine down to `min_ratio` at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - self.decay)

    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        model.load_state_dict({**state, **{k: v.to(state[k].dtype) for k, v in self.shadow.items()}})


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    pixel_loss: str = "l1"
    pixel_weight: float = 1.0
    lpips_weight: float = 0.0
    adversarial_weight: float = 0.0
    adversarial_start_step: int = 0
    discriminator_lr: float = 2e-4
    ema_decay: float | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on CUDA)
    # For a net that returns (output, kl), an autoencoder: the weight of its KL term.
    kl_weight: float = 0.0


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


class DecoderTrainer:
    """Owns the optimisers, schedules, EMA and loss terms; `step` does one optimisation step.

    `net` and `discriminator` may be DDP-wrapped (Ray Train's prepare_model); `lpips` is a
    `decoders.metrics.LPIPS` when the LPIPS weight is > 0.
    """

    def __init__(self, net: nn.Module, settings: TrainSettings, *, discriminator: nn.Module | None = None,
                 lpips: nn.Module | None = None, device: torch.device | str = "cpu"):
        self.net, self.settings, self.discriminator, self.lpips = net, settings, discriminator, lpips
        self.device = torch.device(device)
        if settings.lpips_weight > 0 and lpips is None:
            raise ValueError("an LPIPS weight > 0 needs an LPIPS module")
        if settings.adversarial_weight > 0 and discriminator is None:
            raise ValueError("an adversarial weight > 0 needs a discriminator")
        params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = lambda step: warmup_cosine(step, settings.warmup_steps, settings.steps, settings.min_lr_ratio)  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.d_optimizer = None
        if discriminator is not None:
            self.d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=settings.discriminator_lr, betas=(0.5, 0.9))
        self.ema = EMA(unwrap(net), settings.ema_decay) if settings.ema_decay else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
        if self.amp_dtype is not None and self.device.type != "cuda":
            raise ValueError(f"precision {settings.precision!r} (autocast) needs a CUDA device; use fp32 on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.step_count = 0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _backward_and_step(self, loss, optimizer, params, clip) -> float | None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        norm = None
        if clip:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        return norm

    def adversarial_active(self) -> bool:
        s = self.settings
        return s.adversarial_weight > 0 and self.step_count >= s.adversarial_start_step

    def step(self, inputs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """One step on a batch (`inputs`: latents for a decoder, images for an autoencoder); returns
        each weighted loss term, the total, lr and gradient norm."""
        s = self.settings
        inputs, target = inputs.to(self.device), target.to(self.device)
        self.net.train()
        with self._autocast():
            output = self.net(inputs)
            kl = None
            if isinstance(output, tuple):  # an autoencoder: (reconstruction, its posterior's KL term)
                output, kl = output
            output = output.float()
            terms = {"pixel": s.pixel_weight * pixel_loss(s.pixel_loss, output, target)}
            if kl is not None:
                terms["kl"] = s.kl_weight * kl.float()
            if s.lpips_weight > 0:  # with unverified trunk weights the term is not LPIPS, nor named so
                name = "lpips" if getattr(self.lpips, "verified", False) else "lpips_test_only"
                terms[name] = s.lpips_weight * self.lpips(target, output.clamp(0, 1)).mean()
            if self.adversarial_active():
                terms["adversarial"] = s.adversarial_weight * hinge_generator_loss(self.discriminator(output))
        total = sum(terms.values())
        params = [p for p in self.net.parameters() if p.requires_grad]
        # The decoder's loss also leaves gradients in the discriminator; its own step zeroes them first.
        norm = self._backward_and_step(total, self.optimizer, params, s.grad_clip)
        if self.scaler is not None:
            self.scaler.update()
        self.scheduler.step()
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        if self.adversarial_active():
            metrics["discriminator"] = self._discriminator_step(output.detach(), target)
        if self.ema is not None:
            self.ema.update(unwrap(self.net))
        self.step_count += 1
        metrics.update(total=float(total.detach()), lr=self.scheduler.get_last_lr()[0])
        if norm is not None:
            metrics["grad_norm"] = norm
        return metrics

    def _discriminator_step(self, fake: torch.Tensor, real: torch.Tensor) -> float:
        with self._autocast():
            # One forward for both halves: a DDP-wrapped module expects one forward per backward.
            real_scores, fake_scores = self.discriminator(torch.cat([real, fake])).float().chunk(2)
            loss = hinge_discriminator_loss(real_scores, fake_scores)
        self._backward_and_step(loss, self.d_optimizer, list(self.discriminator.parameters()), self.settings.grad_clip)
        if self.scaler is not None:
            self.scaler.update()
        return float(loss.detach())

    def final_model(self) -> nn.Module:
        """The weights to ship: the EMA average when EMA is on, else the trained weights."""
        model = unwrap(self.net)
        if self.ema is not None:
            self.ema.copy_to(model)
        return model

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything to resume: (tensors for one safetensors file, JSON-able rest)."""
        parts = {"model": unwrap(self.net).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.discriminator is not None:
            parts["discriminator"] = unwrap(self.discriminator).state_dict()
            parts["d_optimizer"] = self.d_optimizer.state_dict()
        if self.ema is not None:
            parts["ema"] = self.ema.shadow
        if self.scaler is not None:
            parts["scaler"] = self.scaler.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        skeleton = split_tensors(parts, "", tensors)
        return tensors, {"state": skeleton, "step": self.step_count}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        parts = join_tensors(meta["state"], tensors)
        unwrap(self.net).load_state_dict(parts["model"])
        self.optimizer.load_state_dict(parts["optimizer"])
        self.scheduler.load_state_dict(parts["scheduler"])
        if self.discriminator is not None and "discriminator" in parts:
            unwrap(self.discriminator).load_state_dict(parts["discriminator"])
            self.d_optimizer.load_state_dict(parts["d_optimizer"])
        if self.ema is not None and "ema" in parts:
            self.ema.shadow = {k: v.to(self.device) for k, v in parts["ema"].items()}
        if self.scaler is not None and "scaler" in parts:
            self.scaler.load_state_dict(parts["scaler"])
        self.step_count = int(meta["step"])


TENSOR_REF = "__tensor__"


def split_tensors(obj, prefix: str, out: dict[str, torch.Tensor]):
    """Nested state (dicts, lists, tensors, numbers) -> a JSON skeleton; tensors go to `out` by path.

    Optimiser states nest tensors inside dicts with integer keys; safetensors holds flat tensors
    only, and we never pickle, so the structure travels as JSON beside them.
    """
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().contiguous().cpu()
        return {TENSOR_REF: prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, split_tensors(v, f"{prefix}.{k}", out)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", out) for i, v in enumerate(obj)]
    json.dumps(obj)  # raises for anything that would not survive the round trip
    return obj


def join_tensors(skeleton, tensors: dict[str, torch.Tensor]):
    """The inverse of `split_tensors`."""
    if isinstance(skeleton, dict) and TENSOR_REF in skeleton:
        return tensors[skeleton[TENSOR_REF]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: join_tensors(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    return skeleton
