"""Sample images during training (sd-scripts §1.6): prompts in Kohya's syntax, diffusers pipelines.

    a photo of mychar, smiling --n lowres, blurry --w 512 --h 768 --s 28 --l 7 --d 1234 --ss euler_a

Images go to output_dir/sample/NAME_<e000004 | 000500>_<prompt index>_<timestamp>_<seed>.png.
The LoRA stays applied (its patched forwards run inside the pipeline); training randomness is untouched.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.atomic import atomic_path
from trainer.models.dit import dit_family

logger = logging.getLogger(__name__)

SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}), "k_lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}), "k_euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}), "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}), "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}), "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # first-order dpmsolver cannot end on sigma 0 in diffusers; it stops at the last trained sigma
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None
    sampler: str | None = None
    guidance: float | None = None  # --g: FLUX.1 dev's distilled guidance (samples_dit)


_FLAGS = {
    "n": ("negative", str), "w": ("width", int), "h": ("height", int), "s": ("steps", int),
    "l": ("scale", float), "d": ("seed", int), "ss": ("sampler", str), "g": ("guidance", float),
}


def parse_prompt_line(line: str) -> SamplePrompt:
    """Kohya splits on " --": each flag must follow a space. Unknown flags are ignored with a warning."""
    parts = line.split(" --")
    sample = SamplePrompt(parts[0].strip())
    for part in parts[1:]:
        m = re.match(r"^(\w+)\s+(.*)$", part.strip(), re.S)
        if not m or m.group(1) not in _FLAGS:
            logger.warning("sample prompt: ignoring unknown option --%s", part.strip())
            continue
        name, kind = _FLAGS[m.group(1)]
        try:
            setattr(sample, name, kind(m.group(2).strip()))
        except ValueError:
            logger.warning("sample prompt: --%s needs a %s, got %r", m.group(1), kind.__name__, m.group(2))
    sample.steps = min(max(sample.steps, 1), 1000)
    for side in ("width", "height"):
        value = getattr(sample, side)
        if value is not None:
            setattr(sample, side, max(64, value // 8 * 8))
    return sample


def load_prompts(spec: str) -> list[SamplePrompt]:
    """`sample_prompts` is either a .txt/.toml/.json file or the prompt lines themselves."""
    if not spec or not spec.strip():
        return []
    path = Path(spec.strip()).expanduser()
    if "\n" not in spec and path.suffix.lower() in (".txt", ".toml", ".json") and path.is_file():
        if path.suffix.lower() == ".json":
            return [_from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
        if path.suffix.lower() == ".toml":
            from trainer import tomlio

            data = tomlio.loads(path.read_text(encoding="utf-8")).get("prompt", {})
            defaults = {k: v for k, v in data.items() if k != "subset"}
            return [_from_dict({**defaults, **d}) for d in data.get("subset", [])]
        spec = path.read_text(encoding="utf-8")
    lines = [ln.strip() for ln in spec.splitlines()]
    return [parse_prompt_line(ln) for ln in lines if ln and not ln.startswith("#")]


def _from_dict(d: dict) -> SamplePrompt:
    return SamplePrompt(d.get("prompt", ""), d.get("negative_prompt", ""), d.get("width"), d.get("height"),
                        int(d.get("sample_steps", d.get("steps", 30))), float(d.get("scale", 7.5)), d.get("seed"),
                        d.get("sample_sampler"))


def build_sampler(name: str, noise_scheduler):
    import diffusers

    cls_name, extra = SAMPLERS.get(name or "euler_a", SAMPLERS["euler_a"])
    cfg = {k: v for k, v in noise_scheduler.config.items() if k != "_use_default_values"}
    cfg.update(steps_offset=1, **extra)  # Kohya's sampling schedulers use steps_offset 1
    try:
        return getattr(diffusers, cls_name).from_config(cfg)
    except ImportError as exc:  # lms/k_lms integrate with scipy
        from .faults import TrainingFault

        raise TrainingFault(f"sample_sampler {name!r} needs a package that is not installed: {exc}",
                            "pip install scipy, or choose another sample_sampler such as euler_a.") from exc


def build_pipeline(base, text_encoders, sampler):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if base.family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=base.vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
                                         tokenizer=base.tokenizers[0], tokenizer_2=base.tokenizers[1], unet=base.unet,
                                         scheduler=sampler)
    else:
        pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=text_encoders[0], tokenizer=base.tokenizers[0],
                                       unet=base.unet, scheduler=sampler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write(image, out_dir: Path, output_name: str, index: int, p, p_seed: int, epoch, step: int, on_image) -> Path:
    path = out_dir / sample_name(output_name, index, p_seed, epoch, step)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    if on_image is not None:
        on_image(path, index, p, image)
    return path


def sample_name(output_name: str, index: int, seed: int, epoch: int | None, step: int) -> str:
    when = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{when}_{index:02d}_{time.strftime('%Y%m%d%H%M%S')}_{seed}.png"


@torch.no_grad()
def generate_samples(base, modules, prompts: list[SamplePrompt], *, sampler_name: str, out_dir: Path,
                     output_name: str, step: int, epoch: int | None, default_size: tuple[int, int], seed: int,
                     clip_skip: int, autocast_dtype, device, on_image=None, t5_length: int | None = None) -> list[Path]:
    """Generate one image per prompt; `on_image(path, index, prompt, image)` after each write."""
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()  # no dropout while sampling
    written = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for index, p in enumerate(prompts):
                p_seed = p.seed if p.seed is not None else seed + index
                if dit_family(base.family) is not None:  # FLUX.1 / SD3: their own pipelines
                    from .samples_dit import sample_dit

                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
                        image = sample_dit(base, p, default_size, torch.Generator(device=device).manual_seed(p_seed),
                                           t5_length)
                    written.append(_write(image, out_dir, output_name, index, p, p_seed, epoch, step, on_image))
                    continue
                sampler = build_sampler(p.sampler or sampler_name, base.noise_scheduler)
                pipe = build_pipeline(base, base.text_encoders, sampler)
                p_seed = p.seed if p.seed is not None else seed + index
                generator = torch.Generator(device=device).manual_seed(p_seed)
                kwargs = {}
                if base.family != "sdxl" and clip_skip > 1:
                    kwargs["clip_skip"] = clip_skip - 1  # diffusers counts skipped layers, Kohya the layer used
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
                    image = pipe(p.prompt, negative_prompt=p.negative or None, width=p.width or default_size[0],
                                 height=p.height or default_size[1], num_inference_steps=p.steps,
                                 guidance_scale=p.scale, generator=generator, **kwargs).images[0]
                path = out_dir / sample_name(output_name, index, p_seed, epoch, step)
                with atomic_path(path) as tmp:
                    image.save(tmp, format="PNG")
                written.append(path)
                if on_image is not None:
                    on_image(path, index, p, image)
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    return written
