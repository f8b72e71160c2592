"""Options of the DiT families (FLUX.1, SD3), named as Kohya_ss / sd-scripts name them. `families=` says which
families each applies to: the page shows it only while the chosen family (a ticked checkbox, else the one
detected from the base model's weights) is one of them."""
from __future__ import annotations

from typing import Literal

from trainer.families import DIT_FAMILIES, FLUX_FAMILIES, SD3_FAMILIES

from .options_data import Options
from .spec import opt

FLUX, SD3, DIT = FLUX_FAMILIES, SD3_FAMILIES, DIT_FAMILIES


class DitModelOptions(Options):
    flux1_checkbox: bool = opt(
        False, "FLUX.1 (dev or schnell) base model: trains with flow matching and kohya's FLUX LoRA names. "
        "Detected from a .safetensors file's keys or a diffusers folder anyway; tick it to show the FLUX options.",
        section="model", label="FLUX.1")
    sd3_checkbox: bool = opt(
        False, "SD3 / SD3.5 (Medium, Large) base model: flow matching and kohya's SD3 LoRA names. Detected from the "
        "weights anyway; tick it to show the SD3 options.", section="model", label="SD3")
    model_type: Literal["flux", "chroma"] = opt(
        "flux", "FLUX.1-based model type (kohya's --model_type): flux (dev / schnell) or chroma (Chroma: T5-XXL only, "
        "no CLIP-L, the T5 attention mask always applied). Detected from the weights anyway.", section="model",
        families=FLUX, label="Model type")
    clip_l: str = opt("", "FLUX.1 / SD3: CLIP-L text-encoder file (clip_l.safetensors) for a model file that holds "
                      "only the transformer (as BFL publishes flux1-dev.safetensors).", section="model", kind="file",
                      label="CLIP-L", families=DIT)
    clip_g: str = opt("", "SD3: CLIP-G text-encoder file (clip_g.safetensors) for a model file without it.",
                      section="model", kind="file", families=SD3, label="CLIP-G")
    t5xxl: str = opt("", "FLUX.1 / SD3: T5-XXL text-encoder file (t5xxl_fp16.safetensors or an fp8 one) for a model "
                     "file without it.", section="model", kind="file", label="T5-XXL", families=DIT)
    ae: str = opt("", "FLUX.1 autoencoder file (ae.safetensors); empty = the one inside the model file/folder.",
                  section="model", kind="file", families=FLUX, label="AE")
    t5xxl_max_token_length: int = opt(
        0, "FLUX.1 / SD3: T5 tokens per caption; 0 = 512 for FLUX dev, 256 for schnell and SD3 (sd-scripts' "
        "defaults).", section="model", ge=0, le=512, label="T5-XXL max token length", families=DIT)
    apply_t5_attn_mask: bool = opt(
        False, "FLUX.1 / SD3: T5 ignores caption padding and padded positions reach the transformer as zeros.",
        section="model", label="Apply T5 attention mask", families=DIT)
    blocks_to_swap: int = opt(
        0, "FLUX.1 / SD3: keep the last N transformer blocks in (pinned) host memory and copy each to the GPU only "
        "while it runs: kohya's block swap for 8–16 GB cards (FLUX.1-dev has 57 blocks; kohya's guide uses 16 for "
        "12 GB, 28 for 8 GB). Slower; needs gradient_checkpointing to save memory.", section="training", ge=0,
        le=60, families=DIT)
    guidance_scale: float = opt(
        3.5, "Distilled guidance the dev model is trained at (schnell has no guidance input; ignored there).",
        section="training", ge=0, le=30, families=FLUX)
    timestep_sampling: Literal["sigma", "uniform", "sigmoid", "shift", "flux_shift"] = opt(
        "sigma", "How noise levels are drawn: sigma (the shifted discrete schedule), uniform, sigmoid "
        "(sigmoid of a normal), shift (sigmoid + discrete_flow_shift), flux_shift (resolution-dependent shift). "
        "kohya's FLUX guide uses shift with discrete_flow_shift 3.1.", section="training", families=FLUX)
    sigmoid_scale: float = opt(1.0, "Scale of the normal sample in sigmoid/shift/flux_shift sampling.",
                               section="training", ge=0.01, le=10, families=FLUX)
    discrete_flow_shift: float = opt(3.0, "FLUX.1 / SD3: shift of the flow-matching schedule (sigma and shift "
                                     "sampling; SD3 always samples this way).", section="training", ge=0.01, le=100,
                                     families=DIT)
    model_prediction_type: Literal["raw", "additive", "sigma_scaled"] = opt(
        "sigma_scaled", "How the model output is read: raw, additive (+ noisy input) or sigma_scaled (SD3 style; "
        "sd-scripts' default). kohya's FLUX guide recommends raw.", section="training", families=FLUX)
    weighting_scheme: Literal["uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap", "none"] = opt(
        "uniform", "FLUX.1 / SD3: noise-level density for sigma sampling (logit_normal, mode) and loss weighting for "
        "sigma_scaled (sigma_sqrt, cosmap); SD3 always predicts sigma_scaled.", section="training", families=DIT)
    logit_mean: float = opt(0.0, "Mean of logit_normal.", section="training", ge=-10, le=10,
                            visible_if={"weighting_scheme": ["logit_normal"]}, families=DIT)
    logit_std: float = opt(1.0, "Standard deviation of logit_normal.", section="training", ge=0.01, le=10,
                           visible_if={"weighting_scheme": ["logit_normal"]}, families=DIT)
    mode_scale: float = opt(1.29, "Scale of the mode density.", section="training", ge=-10, le=10,
                            visible_if={"weighting_scheme": ["mode"]}, families=DIT)


class DitNetworkOptions(Options):
    train_blocks: Literal["all", "single", "double"] = opt(
        "all", "FLUX.1 blocks that get a LoRA: all, only the single-stream or only the double-stream blocks.",
        section="network", families=FLUX)
    save_lora_format: Literal["kohya", "diffusers"] = opt(
        "kohya", "Key layout of the saved LoRA: kohya (lora_unet_… as ComfyUI, Forge, A1111 and sd-scripts read it) or "
        "diffusers (PEFT keys transformer.…lora_A/lora_B, what pipeline.load_lora_weights reads; diffusers' SD3 "
        "loader reads only this one). A diffusers-layout file cannot be resumed from with network_weights.",
        section="network")
    enable_all_linear: bool = opt(
        False, "Flux1 OFT: rotate every Linear of the double and single blocks (attention, MLP, modulation) instead "
        "of only the double blocks' attention (sd-scripts' oft_flux default).", section="network", families=FLUX,
        visible_if={"LoRA_type": ["Flux1 OFT"]}, label="Enable all linear (OFT)")
    train_t5xxl: bool = opt(False, "FLUX.1 / SD3: also put a LoRA on T5-XXL (needs text-encoder training, no text "
                            "cache).", section="network", label="Train T5-XXL", families=DIT)
