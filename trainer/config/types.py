"""One config model per training type, composed from the shared sections."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from .options_dit import DitModelOptions, DitNetworkOptions
from .options_data import DatasetOptions, FolderOptions, ModelOptions, Options, RegularizationOptions
from .options_train import (AccelerateOptions, FrozenBaseOptions, LoggingOptions, OptimizerOptions,
                            SamplingOptions, SavingOptions, TrainingOptions)
from .spec import opt

CONFIG_VERSION = 1
LOCON = ["Kohya LoCon"]


class NetworkOptions(Options):
    LoRA_type: Literal["Standard", "Kohya LoCon"] = opt(
        "Standard", "Standard LoRA (attention and MLP layers) or LoCon (also the 3×3 convolutions).",
        section="network", level="basic", label="LoRA type")
    network_dim: int = opt(8, "LoRA rank: capacity and file size (8–32 for a character).", section="network",
                           level="basic", ge=1, le=512, label="Network rank (dimension)")
    network_alpha: float = opt(1.0, "Scale = alpha / rank; alpha 1 with rank 8 trains gently (raise the "
                               "learning rate) — alpha = rank gives scale 1.", section="network", level="basic",
                               ge=1e-5, le=1024)
    conv_dim: int = opt(1, "Rank of the convolution LoRA (LoCon).", section="network", level="basic", ge=1,
                        le=512, visible_if={"LoRA_type": LOCON}, label="Convolution rank")
    conv_alpha: float = opt(1.0, "Alpha of the convolution LoRA (LoCon).", section="network", level="basic",
                            ge=1e-5, le=1024, visible_if={"LoRA_type": LOCON})
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


class BaseConfig(ModelOptions, DitModelOptions, FolderOptions, DatasetOptions, TrainingOptions, OptimizerOptions,
                 SavingOptions, SamplingOptions, LoggingOptions, AccelerateOptions):
    config_version: int = Field(CONFIG_VERSION, description="Version of this file format.")
    training_type: str = "base"


class LoraConfig(BaseConfig, RegularizationOptions, NetworkOptions, DitNetworkOptions, FrozenBaseOptions):
    training_type: Literal["lora"] = "lora"


class DreamboothConfig(BaseConfig, RegularizationOptions):
    training_type: Literal["dreambooth"] = "dreambooth"
    learning_rate: float = opt(1e-5, "UNet learning rate (full fine-tune: 1e-6 to 1e-5).", section="optimizer",
                               level="basic", ge=0, le=10)
    learning_rate_te: float = opt(1e-5, "Text-encoder learning rate (0 = keep the text encoder frozen).",
                                  section="optimizer", level="basic", ge=0, le=10,
                                  label="Text encoder learning rate")
    stop_text_encoder_training: int = opt(0, "Stop training the text encoder after this many steps "
                                          "(0 = train it the whole run).", section="training", ge=0)
    save_model_as: Literal["safetensors", "ckpt", "diffusers", "diffusers_safetensors"] = opt(
        "safetensors", "safetensors/ckpt = one file in the original layout (A1111, ComfyUI); diffusers = a "
        "folder.", section="model", level="basic", label="Save trained model as")


class FinetuneConfig(BaseConfig):
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
