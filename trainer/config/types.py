"""One config model per training type, composed from the shared sections."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .options_dit import DitModelOptions, DitNetworkOptions
from .options_data import DatasetOptions, FolderOptions, ModelOptions, Options, RegularizationOptions
from .options_train import (AccelerateOptions, FrozenBaseOptions, FullTrainingOptions, LoggingOptions,
                            OptimizerOptions, SamplingOptions, SavingOptions, TrainingOptions,
                            ValidationOptions)
from .base_weights import text_of
from .spec import opt
from trainer.families import SD_FAMILIES
from trainer.networks.registry import KOHYA_BLOCK_BUILDERS, LORA_TYPES, LYCORIS_PRESETS, NETWORK_TYPES

CONFIG_VERSION = 1
# which LoRA_type values use which options (the registry in trainer.networks names every type)
LOCON = [t for t, k in NETWORK_TYPES.items() if k.uses_conv_dim]
LYCORIS = [t for t, k in NETWORK_TYPES.items() if k.builder == "lycoris"]
TUCKER = ["LyCORIS/LoCon", "LyCORIS/LoHa", "LyCORIS/LoKr", "LyCORIS/DyLoRA", "LyCORIS/GLoRA"]
DORA = ["LyCORIS/LoCon", "LyCORIS/LoHa", "LyCORIS/LoKr"]
OFT = ["LyCORIS/BOFT", "LyCORIS/Diag-OFT"]
KOHYA_LORA = [t for t, k in NETWORK_TYPES.items() if k.builder in KOHYA_BLOCK_BUILDERS]


def block_opt(help_text: str):
    """A per-block string option (kohya's block_dims, down_lr_weight…): kohya's own LoRA on the U-Net families."""
    return opt("", help_text, section="network", visible_if={"LoRA_type": KOHYA_LORA}, families=SD_FAMILIES)


class NetworkOptions(Options):
    LoRA_type: Literal[LORA_TYPES] = opt(
        "Standard", "Network type, kohya_ss's list: Standard (attention/MLP layers), Kohya LoCon (+3×3 "
        "convolutions), Kohya DyLoRA, LoRA-FA (lora_down frozen, only lora_up trains), and the LyCORIS types "
        "(LoCon, LoHa, LoKr, iA3, DyLoRA, GLoRA, BOFT, Diag-OFT, Native Fine-Tuning); FLUX.1 also Flux1 OFT. See "
        "docs/networks.md for what each is and which programs load it.",
        section="network", level="basic", label="LoRA type")
    network_dim: int = opt(8, "LoRA rank: capacity and file size (8–32 for a character).", section="network",
                           level="basic", ge=1, le=100000, label="Network rank (dimension)")
    network_alpha: float = opt(1.0, "Scale = alpha / rank; alpha 1 with rank 8 trains gently (raise the "
                               "learning rate) — alpha = rank gives scale 1. Flux1 OFT: the rotation's constraint "
                               "(about 1e-3).", section="network", level="basic", ge=1e-5, le=1024)
    conv_dim: int = opt(1, "Rank of the convolution LoRA (LoCon).", section="network", level="basic", ge=1,
                        le=512, visible_if={"LoRA_type": LOCON}, label="Convolution rank")
    conv_alpha: float = opt(1.0, "Alpha of the convolution LoRA (LoCon).", section="network", level="basic",
                            ge=1e-5, le=1024, visible_if={"LoRA_type": LOCON})
    LyCORIS_preset: Literal[LYCORIS_PRESETS] = opt(
        "full", "Which layers a LyCORIS type trains: full (attention, MLP, ResNet blocks), full-lin (no 3×3 "
        "convolutions), attn-mlp, attn-only, unet-transformer-only, unet-convblock-only.", section="network",
        visible_if={"LoRA_type": LYCORIS}, label="LyCORIS preset")
    use_tucker: bool = opt(False, "Tucker decomposition of the 3×3 convolutions (LoCon lora_mid, LoHa hada_t*, "
                           "LoKr lokr_t2): smaller files for the same conv rank.", section="network",
                           visible_if={"LoRA_type": TUCKER})
    use_scalar: bool = opt(False, "Train an extra scalar per module (LyCORIS use_scalar); starts the branch "
                           "at zero without zeroing a factor.", section="network", visible_if={"LoRA_type": TUCKER})
    rank_dropout_scale: bool = opt(False, "Rescale the kept ranks under rank_dropout (LyCORIS).",
                                   section="network", visible_if={"LoRA_type": LYCORIS})
    dora_wd: bool = opt(False, "DoRA: weight decomposition, trains each layer's direction and magnitude "
                        "separately (dora_scale key; A1111, ComfyUI and LyCORIS load it, diffusers drops it).",
                        section="network", visible_if={"LoRA_type": DORA}, label="DoRA (weight decomposition)")
    wd_on_output: bool = opt(True, "DoRA magnitude per output channel (LyCORIS ≥ 3.2 and ComfyUI read it). Off = "
                             "per input channel, the layout AUTOMATIC1111 reads (LyCORIS' loader then cannot).",
                             section="network", visible_if={"LoRA_type": DORA})
    bypass_mode: bool = opt(False, "Compute the LyCORIS branch beside the layer instead of rebuilding its weight "
                            "each step (needed for quantized base weights; same file).", section="network",
                            visible_if={"LoRA_type": DORA})
    factor: int = opt(-1, "LoKr: size of the small Kronecker factor (-1 = as balanced as the layer allows).",
                      section="network", ge=-1, le=1024, visible_if={"LoRA_type": ["LyCORIS/LoKr"]})
    decompose_both: bool = opt(False, "LoKr: also split the first factor into two low-rank matrices.",
                               section="network", visible_if={"LoRA_type": ["LyCORIS/LoKr"]})
    train_on_input: bool = opt(False, "iA3: scale the layers' inputs instead of their outputs.", section="network",
                               visible_if={"LoRA_type": ["LyCORIS/iA3"]})
    unit: int = opt(1, "DyLoRA: ranks trained together per step (network_dim must be a multiple).",
                    section="network", ge=1, le=512, visible_if={"LoRA_type": ["Kohya DyLoRA", "LyCORIS/DyLoRA"]})
    constrain: float = opt(0.0, "OFT: limit on how far the rotation may move (0 = none).", section="network",
                           ge=0, visible_if={"LoRA_type": OFT})
    rescaled: bool = opt(False, "OFT: also learn a per-channel rescale.", section="network",
                         visible_if={"LoRA_type": OFT})
    loraplus_lr_ratio: float = opt(0.0, "LoRA+: the up matrices (lora_up) learn this many times faster (16 is "
                                   "the paper's value; 0 = off).", section="network", ge=0, le=1000,
                                   label="LoRA+ LR ratio")
    loraplus_unet_lr_ratio: float = opt(0.0, "LoRA+ ratio for the U-Net only (0 = loraplus_lr_ratio).",
                                        section="network", ge=0, le=1000, label="LoRA+ U-Net LR ratio")
    loraplus_text_encoder_lr_ratio: float = opt(0.0, "LoRA+ ratio for the text encoder only (0 = "
                                                "loraplus_lr_ratio).", section="network", ge=0, le=1000,
                                                label="LoRA+ text encoder LR ratio")
    scale_weight_norms: float = opt(0.0, "Max-norm regularisation: after each step shrink modules whose ΔW norm "
                                    "exceeds this (1 is typical; 0 = off).", section="network", ge=0)
    block_dims: str = block_opt("Rank per U-Net block, 25 comma-separated values for SD1/SD2 (IN00-11, MID, "
                                "OUT00-11), 23 for SDXL; 0 leaves a block out. Empty = network_dim everywhere.")
    block_alphas: str = block_opt("Alpha per U-Net block (as block_dims); empty = network_alpha.")
    conv_block_dims: str = block_opt("Rank of the 3×3 convolutions per block (as block_dims).")
    conv_block_alphas: str = block_opt("Alpha of the 3×3 convolutions per block.")
    down_lr_weight: str = block_opt("Learning-rate multiplier per down (IN) block: 12 values (SDXL 9) or sine, "
                                    "cosine, linear, reverse_linear, zeros (+offset, e.g. cosine+.25).")
    mid_lr_weight: str = block_opt("Learning-rate multiplier of the middle block(s).")
    up_lr_weight: str = block_opt("Learning-rate multiplier per up (OUT) block, as down_lr_weight.")
    block_lr_zero_threshold: str = block_opt("Blocks whose lr multiplier is at or below this are not trained "
                                             "(and not saved).")

    @field_validator("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                     "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", mode="before")
    @classmethod
    def _number_as_text(cls, value):
        """kohya_ss writes these as text, sd-scripts TOMLs may hold a number (mid_lr_weight = 2)."""
        return format(value, "g") if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    unet_lr: Optional[float] = opt(None, "Learning rate of the UNet LoRA; empty = learning_rate, 0 = do not "
                                   "train the UNet.", section="network", level="basic", ge=0, le=10,
                                   label="UNet learning rate")
    text_encoder_lr: Optional[float] = opt(None, "Learning rate of the text-encoder LoRA; empty = "
                                           "learning_rate, 0 = do not train the text encoder.",
                                           section="network", level="basic", ge=0, le=10,
                                           label="Text encoder learning rate")
    network_train_unet_only: bool = opt(False, "Only train the UNet (no text-encoder keys in the file).",
                                        section="network")
    network_train_text_encoder_only: bool = opt(False, "Only train the text encoder.", section="network")
    network_dropout: float = opt(0.0, "Dropout on the LoRA down-projection output.", section="network",
                                 ge=0, le=1)
    rank_dropout: float = opt(0.0, "Dropout of whole ranks.", section="network", ge=0, le=1)
    module_dropout: float = opt(0.0, "Probability of skipping a LoRA module in a step.", section="network",
                                ge=0, le=1)
    network_weights: str = opt("", "Start from an existing LoRA file (continue training).", section="network",
                               kind="file")
    dim_from_weights: bool = opt(False, "Take ranks from network_weights instead of network_dim.",
                                 section="network")
    base_weights: str = opt(
        "", "LoRA files merged into the base model before training (sd-scripts' --base_weights): the new LoRA "
        "learns on top of a base with them baked in, without saving a merged checkpoint. One path per line (or "
        "comma-separated on one line); kohya LoRA/LoCon or LyCORIS files for this model family. The files are "
        "only read.", section="network", kind="text")
    base_weights_multiplier: str = opt(
        "", "Strength of each base_weights file, in the same order, separated by commas (e.g. 0.8, 1); "
        "empty = 1.0 each.", section="network", label="Base weights multipliers")

    @field_validator("base_weights", "base_weights_multiplier", mode="before")
    @classmethod
    def _list_as_text(cls, value, info):
        """sd-scripts' TOML holds lists (nargs): the files one per line, the strengths comma-separated."""
        return text_of(value, "\n" if info.field_name == "base_weights" else ", ")


class BaseConfig(ModelOptions, DitModelOptions, FolderOptions, DatasetOptions, TrainingOptions, OptimizerOptions,
                 SavingOptions, SamplingOptions, LoggingOptions, AccelerateOptions):
    config_version: int = Field(CONFIG_VERSION, description="Version of this file format.")
    training_type: str = "base"


class LoraConfig(BaseConfig, RegularizationOptions, NetworkOptions, DitNetworkOptions, FrozenBaseOptions,
                 ValidationOptions):
    training_type: Literal["lora"] = "lora"


class DreamboothConfig(BaseConfig, RegularizationOptions, FullTrainingOptions):
    training_type: Literal["dreambooth"] = "dreambooth"
    learning_rate: float = opt(1e-5, "UNet learning rate (full fine-tune: 1e-6 to 1e-5).", section="optimizer",
                               level="basic", ge=0, le=10)
    learning_rate_te: float = opt(1e-5, "Text-encoder learning rate (0 = keep the text encoder frozen).",
                                  section="optimizer", level="basic", ge=0, le=10,
                                  label="Text encoder learning rate")
    learning_rate_te2: Optional[float] = opt(None, "SDXL only: learning rate of the second text encoder "
                                             "(OpenCLIP bigG); empty = learning_rate_te, 0 = keep it frozen.",
                                             section="optimizer", ge=0, le=10, label="Text encoder 2 learning rate",
                                             families=("sdxl",))
    stop_text_encoder_training: int = opt(0, "Stop training the text encoder after this many steps "
                                          "(0 = train it the whole run).", section="training", ge=0)
    no_token_padding: bool = opt(False, "Pad each batch's captions only to its longest caption instead of 77 "
                                 "tokens, as Diffusers' DreamBooth does (sd-scripts train_db.py): the U-Net sees "
                                 "no padding tokens past the longest caption. SD1.x/SD2.x, max_token_length 75.",
                                 section="training", families=("sd1", "sd2"))
    save_model_as: Literal["safetensors", "ckpt", "diffusers", "diffusers_safetensors"] = opt(
        "safetensors", "safetensors/ckpt = one file in the original layout (A1111, ComfyUI); diffusers = a "
        "folder.", section="model", level="basic", label="Save trained model as")


class FinetuneConfig(BaseConfig, FullTrainingOptions):
    training_type: Literal["finetune"] = "finetune"
    learning_rate: float = opt(1e-5, "UNet learning rate (full fine-tune: 1e-6 to 1e-5).", section="optimizer",
                               level="basic", ge=0, le=10)
    save_model_as: Literal["safetensors", "ckpt", "diffusers", "diffusers_safetensors"] = opt(
        "safetensors", "safetensors/ckpt = one file in the original layout (A1111, ComfyUI); diffusers = a "
        "folder.", section="model", level="basic", label="Save trained model as")
    in_json: str = opt("", "Metadata JSON with captions (and buckets) built from the image folder; empty = "
                       "build it in the output folder before training.", section="folders", kind="file",
                       label="Metadata file")
    dataset_repeats: int = opt(1, "Repeats of the metadata dataset per epoch.", section="dataset", ge=1,
                               le=10000)
    train_text_encoder: bool = opt(False, "Also train the text encoder.", section="training")
    max_bucket_reso: int = opt(1024, "Largest bucket side.", section="dataset", ge=64, le=8192)
    learning_rate_te: float = opt(0.0, "Text-encoder learning rate when train_text_encoder is on (0 = the "
                                  "UNet's learning rate, as in sd-scripts).",
                                  section="optimizer", ge=0, le=10)
    learning_rate_te2: Optional[float] = opt(None, "SDXL only: learning rate of the second text encoder "
                                             "(OpenCLIP bigG); empty = learning_rate_te, 0 = keep it frozen.",
                                             section="optimizer", ge=0, le=10, label="Text encoder 2 learning rate",
                                             families=("sdxl",))


class TextualInversionConfig(BaseConfig, RegularizationOptions, FrozenBaseOptions):
    training_type: Literal["textual_inversion"] = "textual_inversion"
    output_name: str = opt("", "File name of the embedding; empty = the token_string, which is also the word "
                           "A1111 and ComfyUI use for it in prompts.", section="folders", level="basic",
                           label="Output name")

    @model_validator(mode="before")
    @classmethod
    def _name_after_token(cls, data):
        if isinstance(data, dict) and not data.get("output_name") and data.get("token_string"):
            data = {**data, "output_name": str(data["token_string"]).strip()}
        return data
    token_string: str = opt("", "The new token to learn, e.g. mychar (must not already be a word the "
                            "tokenizer knows).", section="embedding", level="basic")
    init_word: str = opt("*", "Existing word whose embedding starts the new token.", section="embedding",
                         level="basic")
    num_vectors_per_token: int = opt(1, "Vectors for the new token (more = more capacity, uses prompt "
                                     "length).", section="embedding", level="basic", ge=1, le=75,
                                     label="Vectors")
    template: Literal["caption", "object template", "style template"] = opt(
        "caption", "Use the captions, or generic object/style sentences with the token.",
        section="embedding", level="basic")
    weights: str = opt("", "Continue from an existing embedding file.", section="embedding", kind="file",
                       label="Resume TI weights")
    embedding_format: Literal["kohya", "a1111"] = opt(
        "kohya", "kohya = emb_params (sd-scripts); a1111 = string_to_param (A1111 .pt style keys).",
        section="embedding")
    learning_rate: float = opt(5e-3, "Embedding learning rate (sd-scripts examples use 5e-3; Kohya_ss's 1e-5 "
                               "barely moves an embedding).", section="optimizer", level="basic", ge=0, le=10)
    save_model_as: Literal["safetensors", "pt"] = opt("safetensors", "File format of the embedding.",
                                                      section="model", level="basic")


CONFIG_TYPES: dict[str, type[BaseConfig]] = {
    "lora": LoraConfig,
    "dreambooth": DreamboothConfig,
    "textual_inversion": TextualInversionConfig,
    "finetune": FinetuneConfig,
}
