"""Option sections shared by every training type: model, folders, dataset."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from trainer.families import SD_FAMILIES

from .spec import opt

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# sd-scripts' resize_interpolation names ("" = its default: area when shrinking, Lanczos when enlarging)
RESIZE_INTERPOLATIONS = ("", "lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")


class Options(BaseModel):
    """Base of every section: unknown keys are errors (reported with the nearest valid name)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelOptions(Options):
    pretrained_model_name_or_path: str = opt(
        DEFAULT_MODEL,
        "Base checkpoint: a .safetensors/.ckpt file, a diffusers folder, or a Hugging Face id "
        "such as stable-diffusion-v1-5/stable-diffusion-v1-5 (Kohya's old runwayml id was removed from the hub).",
        section="model", level="basic", kind="path", label="Pretrained model name or path")
    v2: bool = opt(False, "Force SD2.x. Normally detected from the weights; tick only if detection is wrong.",
                   section="model", label="SD2.x (v2)", families=SD_FAMILIES)
    v_parameterization: bool = opt(
        False, "Force v-prediction (SD2.x 768-v models). Detected where the file tells; tick to override.",
        section="model", label="v-parameterization", families=SD_FAMILIES)
    sdxl: bool = opt(False, "Force SDXL. Normally detected from the weights; tick only if detection is wrong.",
                     section="model", label="SDXL", families=SD_FAMILIES)
    vae: str = opt("", "Optional VAE to use instead of the checkpoint's own (file, diffusers folder or hub id).",
                   section="model", kind="path", label="VAE path")
    no_half_vae: bool = opt(False, "Keep the VAE in fp32 (the SDXL VAE produces NaNs in fp16).",
                            section="model", label="No half VAE", families=SD_FAMILIES)
    clip_skip: int = opt(1, "Use the output of the n-th last text-encoder layer (2 for anime/NovelAI-style "
                         "models). SD1.x/SD2.x only; SDXL always uses the penultimate layer.",
                         section="model", ge=1, le=12, families=SD_FAMILIES)
    save_model_as: Literal["safetensors", "ckpt", "pt"] = opt(
        "safetensors", "File format of the trained weights. safetensors loads everywhere and cannot carry code.",
        section="model", level="basic", label="Save trained model as")
    save_precision: Literal["fp16", "bf16", "float"] = opt(
        "fp16", "Precision of the saved weights (float = fp32, twice the size).", section="model", level="basic")


class FolderOptions(Options):
    train_data_dir: str = opt(
        "", "Parent folder of the concept folders named <repeats>_<name>, e.g. dataset/images "
        "holding 10_mychar/ with image001.png + image001.txt.",
        section="folders", level="basic", kind="dir", label="Image folder")
    output_dir: str = opt("", "Where the trained files, samples and run settings are written (created if missing).",
                          section="folders", level="basic", kind="dir", label="Output folder")
    output_name: str = opt("last", "File name of the result without extension: NAME.safetensors, "
                           "NAME-000004.safetensors for epoch 4.", section="folders", level="basic",
                           label="Output name")
    logging_dir: str = opt("", "Optional TensorBoard log folder (loss, learning rate, sample images).",
                           section="folders", kind="dir", label="Logging folder")
    dataset_config: str = opt("", "Optional Kohya dataset TOML ([general], [[datasets]], [[datasets.subsets]]); "
                              "when set it replaces the image and regularisation folders.",
                              section="folders", kind="file", label="Dataset config file")


class DatasetOptions(Options):
    resolution: str = opt("512,512", 'Training resolution "512" or "width,height"; with buckets it is the '
                          "maximum area. Each side must be a multiple of 8.", section="dataset", level="basic",
                          label="Max resolution")
    caption_extension: str = opt(".txt", "Extension of caption files next to the images (.txt or .caption).",
                                 section="dataset", level="basic")
    recursive: bool = opt(False, "Also read images in sub-folders of each concept folder.", section="dataset")
    enable_bucket: bool = opt(True, "Aspect-ratio buckets: train images near their own shape instead of "
                              "cropping everything square.", section="dataset", level="basic")
    min_bucket_reso: int = opt(256, "Smallest bucket side (multiple of bucket_reso_steps).", section="dataset",
                               ge=64, le=4096)
    max_bucket_reso: int = opt(2048, "Largest bucket side (multiple of bucket_reso_steps).", section="dataset",
                               ge=64, le=8192)
    bucket_reso_steps: int = opt(64, "Bucket side granularity in pixels (64 for SD1/2, 32 allowed for SDXL).",
                                 section="dataset", ge=8, le=256)
    bucket_no_upscale: bool = opt(True, "Never upscale small images to fill a bucket.", section="dataset")
    shuffle_caption: bool = opt(False, "Shuffle comma-separated tags each step (after keep_tokens).",
                                section="dataset")
    keep_tokens: int = opt(0, "Keep the first N tags in place when shuffling/dropping (e.g. the trigger word).",
                           section="dataset", ge=0, le=32)
    keep_tokens_separator: str = opt("", "Tags before this separator are kept in place instead of counting "
                                     "keep_tokens (e.g. '|||').", section="dataset")
    secondary_separator: str = opt("", "Separator that joins tags which are shuffled/dropped as one unit "
                                   "(e.g. ';;;').", section="dataset")
    caption_prefix: str = opt("", "Text put before every caption.", section="dataset")
    caption_suffix: str = opt("", "Text put after every caption.", section="dataset")
    caption_dropout_rate: float = opt(0.0, "Probability of training an image with an empty caption.",
                                      section="dataset", ge=0, le=1)
    caption_dropout_every_n_epochs: int = opt(0, "Drop all captions every N epochs (0 = never).",
                                              section="dataset", ge=0)
    caption_tag_dropout_rate: float = opt(0.0, "Probability of dropping each tag (not the kept ones).",
                                          section="dataset", ge=0, le=1)
    enable_wildcard: bool = opt(
        False, "Captions may vary: a caption file with several lines gives one line, drawn at random each time the "
        "image is used, and {red|blue|green} in a caption is replaced by one of its choices (sd-scripts' "
        "enable_wildcard). Not with cached text-encoder outputs.", section="dataset")
    token_warmup_min: int = opt(
        1, "With token_warmup_step: how many of the shuffle-able tags (after keep_tokens) a caption starts with.",
        section="dataset", ge=0)
    token_warmup_step: float = opt(
        0.0, "Token warm-up (sd-scripts): captions start with token_warmup_min tags and gain tags until this step, "
        "then are whole; below 1 it is a share of the run (0.1 = the first 10% of the steps). 0 = off. Not with "
        "cached text-encoder outputs.", section="dataset", ge=0)
    weighted_captions: bool = opt(
        False, "Read captions in A1111 prompt-weight syntax: (word) x1.1, [word] /1.1, (word:1.3), \\( for a "
        "literal bracket. The text encoder sees the words without the syntax; each token's output is scaled by "
        "its weight. Shuffling keeps a bracketed group such as (red hair, blue eyes:1.2) whole.",
        section="dataset", label="Weighted captions", families=SD_FAMILIES)
    max_token_length: Literal[75, 150, 225] = opt(
        75, "Caption length in tokens; 150/225 encode longer captions in 75-token chunks as Kohya does.",
        section="dataset", families=SD_FAMILIES)
    flip_aug: bool = opt(False, "Randomly mirror images (doubles the cached latents). Avoid for asymmetric "
                         "subjects.", section="dataset")
    color_aug: bool = opt(False, "Random hue shifts. Incompatible with cache_latents.", section="dataset")
    random_crop: bool = opt(False, "Random instead of centre crop. Incompatible with cache_latents.",
                            section="dataset")
    face_crop_aug_range: str = opt(
        "", 'Face crop "2.0,4.0": for images named name_X_Y_W_H.png (the face\'s centre X, Y and size W, H in pixels, '
        "as sd-scripts' tools/detect_face_rotate.py names them) each step crops around the face, zoomed so the crop's "
        "short side is 2 to 4 face sizes. Other images are used as they are. Incompatible with cache_latents.",
        section="dataset")
    resize_interpolation: Literal[RESIZE_INTERPOLATIONS] = opt(
        "", "How images are resized to their bucket (sd-scripts' --resize_interpolation): empty = area averaging "
        "when shrinking, Lanczos when enlarging (sd-scripts' default). area is PIL's box filter here.",
        section="dataset", label="Resize interpolation")
    alpha_mask: bool = opt(
        False, "Use each image's transparency (alpha channel) as its loss mask, as sd-scripts' --alpha_mask: "
        "transparent parts are not learned, half-transparent ones count half; an image without alpha counts "
        "everywhere. The colours under the transparency are fed to the model as stored (not put on white). "
        "Turns masked loss on; a dataset TOML can set it per subset.", section="dataset")
    cache_latents: bool = opt(True, "Encode images with the VAE once and keep the latents (much faster, "
                              "less VRAM).", section="dataset", level="basic")
    cache_latents_to_disk: bool = opt(False, "Keep latent caches on disk so the next run skips encoding; "
                                      "recomputed automatically when an image, bucket, flip or VAE changes.",
                                      section="dataset")
    latent_cache_dir: str = opt("", "Folder for on-disk latent caches (empty = next to the images).",
                                section="dataset", kind="dir")
    vae_batch_size: int = opt(1, "Images encoded per VAE call while caching.", section="dataset", ge=1, le=64)
    cache_text_encoder_outputs: bool = opt(
        False, "Encode captions once (saves VRAM on SDXL). Needs frozen text encoders and fixed captions "
        "(no shuffle or dropout).", section="dataset")
    @model_validator(mode="before")
    @classmethod
    def _disk_text_cache_caches(cls, data):
        """cache_text_encoder_outputs_to_disk turns cache_text_encoder_outputs on, as sd-scripts does."""
        if isinstance(data, dict) and data.get("cache_text_encoder_outputs_to_disk") is True:
            data = {**data, "cache_text_encoder_outputs": True}
        return data
    cache_text_encoder_outputs_to_disk: bool = opt(
        False, "Also keep the text-encoder outputs on disk (folder .text_encoder_cache in train_data_dir, or "
        "text_encoder_outputs in latent_cache_dir) so the next run skips encoding; recomputed when a caption, the T5 "
        "max token length or mask, or an encoder changes. Implies cache_text_encoder_outputs.", section="dataset")
    max_data_loader_n_workers: int = opt(0, "Loader worker processes (0 = load in the training process).",
                                         section="dataset", ge=0, le=64)
    persistent_data_loader_workers: bool = opt(False, "Keep loader workers between epochs (faster epochs, "
                                               "more RAM).", section="dataset")


class RegularizationOptions(Options):
    """What DreamBooth-style concept folders add (LoRA, DreamBooth, Textual Inversion; fine-tuning has none): class
    images and mask folders."""

    reg_data_dir: str = opt(
        "", "Optional regularization (class) images, same <repeats>_<name> layout.",
        section="folders", level="basic", kind="dir", label="Regularisation folder")
    prior_loss_weight: float = opt(1.0, "Loss weight of regularization images.", section="dataset", ge=0, le=10)
    conditioning_data_dir: str = opt(
        "", "Optional folder of mask images for masked loss (sd-scripts' conditioning_data_dir): each training image "
        "learns where its mask, the image with the same name (any image extension), is white and ignores where it is "
        "black (the red channel / 255). Holds one sub-folder per concept folder, named alike (10_mychar/ with "
        "image001.png), or the masks directly when there is no such sub-folder. Regularisation images count "
        "everywhere. Turns masked loss on; not with alpha_mask. A dataset TOML sets it per [[datasets.subsets]].",
        section="folders", kind="dir", label="Mask folder (conditioning_data_dir)")
